//! The one place where engine errors become gRPC statuses.
//!
//! | error | code |
//! | --- | --- |
//! | validation ([`StoreError::Invalid`]), bad parameter ([`StoreError::BadRequest`]) | `INVALID_ARGUMENT` |
//! | [`StoreError::AlreadyExists`] | `ALREADY_EXISTS` |
//! | [`StoreError::NotFound`] | `NOT_FOUND` |
//! | stale resource_version or uid ([`StoreError::Conflict`], [`StoreError::UidMismatch`]) | `ABORTED` |
//! | over a namespace quota ([`StoreError::QuotaExceeded`]), over a server limit ([`super::limits`]) | `RESOURCE_EXHAUSTED` |
//! | KMS unusable ([`StoreError::Unavailable`]), storage failed earlier or unreachable (etcd) | `UNAVAILABLE` |
//! | a record that fails to open ([`StoreError::DataLoss`]) | `DATA_LOSS` |
//! | any other storage error | `INTERNAL` |
//! | no or bad credentials ([`AuthError::Unauthenticated`]): a bad token, a client certificate that is expired or not from the client CA | `UNAUTHENTICATED` |
//! | not allowed by the policy ([`AuthError::Forbidden`]) | `PERMISSION_DENIED` |
//! | over a connection's request rate or watch streams | `RESOURCE_EXHAUSTED` |
//! | audit log unwritable with `--audit-fail-closed` ([`AuthError::AuditUnavailable`]) | `UNAVAILABLE` |
//! | a request that is not valid protobuf (tonic says `INTERNAL`) | `INVALID_ARGUMENT` |
//! | a request above the decoding limit (tonic says `OUT_OF_RANGE`) | `RESOURCE_EXHAUSTED` |
//!
//! Messages name the field (validation messages are those of the Kubernetes API server) and never
//! contain a data value: the engine's messages never do, and nothing here adds one. Every message
//! is capped (in errors listed and in bytes once percent-encoded for the `grpc-message` header) so
//! that one absurd request cannot produce response headers that a client refuses.

use tonic::{Code, Status};

use crate::auth::AuthError;
use coffer_core::model::validation::ValidationErrors;
use coffer_core::storage::StorageError;
use coffer_core::store::StoreError;

/// The most validation errors one status lists; the rest are counted.
pub const MAX_LISTED_ERRORS: usize = 32;

/// The longest `grpc-message` (after percent-encoding) a status carries, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024;

/// The prefix of tonic's own message for a request above the decoding limit.
const TONIC_DECODE_TOO_LARGE: &str = "Error, decoded message length too large";

/// The prefix of prost's message for bytes that are not the expected protobuf message (tonic
/// answers it with `INTERNAL`).
const PROST_DECODE_FAILED: &str = "failed to decode Protobuf message";

/// Maps an engine error to a gRPC status.
pub fn store_error(e: &StoreError) -> Status {
    match e {
        StoreError::Invalid(errs) => invalid_argument(validation_message(errs)),
        StoreError::BadRequest { .. } => invalid_argument(e.to_string()),
        StoreError::AlreadyExists { .. } => status(Code::AlreadyExists, e.to_string()),
        StoreError::NotFound { .. } => status(Code::NotFound, e.to_string()),
        StoreError::Conflict { .. } | StoreError::UidMismatch { .. } => {
            status(Code::Aborted, e.to_string())
        }
        StoreError::QuotaExceeded(_) => status(Code::ResourceExhausted, e.to_string()),
        StoreError::Unavailable(_) => status(Code::Unavailable, e.to_string()),
        StoreError::DataLoss { .. } => status(Code::DataLoss, e.to_string()),
        StoreError::TooOld { .. } | StoreError::TooLarge { .. } => {
            status(Code::OutOfRange, e.to_string())
        }
        StoreError::Lease(l) => etcd_lease_error(l).status(),
        StoreError::Storage(StorageError::Failed(_) | StorageError::Unavailable(_)) => {
            status(Code::Unavailable, e.to_string())
        }
        // Stored bytes that cannot be read back are lost data, whichever layer noticed.
        StoreError::Storage(StorageError::Corrupt(_)) => status(Code::DataLoss, e.to_string()),
        StoreError::Storage(_) => status(Code::Internal, e.to_string()),
    }
}

/// etcd's own errors, as the etcd door answers them: code and message exactly etcd's
/// (`api/v3rpc/rpctypes/error.go`), because etcd's Go client turns a status back into its typed
/// error by the message, and kube-apiserver compares against those errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdError {
    /// A request without a key.
    EmptyKey,
    /// A put with `ignore_value` or `ignore_lease` on an absent key.
    KeyNotFound,
    /// A put with `ignore_value` and a value.
    ValueProvided,
    /// A put with `ignore_lease` and a lease.
    LeaseProvided,
    /// A transaction with more operations than `--etcd-max-txn-ops`.
    TooManyOps,
    /// A transaction writing one key twice.
    DuplicateKey,
    /// A read, watch or compaction at a compacted revision.
    Compacted,
    /// A read or compaction at a revision not reached yet.
    FutureRev,
    /// A lease id that does not exist.
    LeaseNotFound,
    /// A grant of a lease id in use.
    LeaseExist,
    /// A grant above the largest TTL.
    LeaseTtlTooLarge,
    /// A request above `--etcd-max-request-bytes`.
    RequestTooLarge,
}

impl EtcdError {
    /// The status etcd sends.
    pub fn status(self) -> Status {
        let (code, message) = match self {
            EtcdError::EmptyKey => (Code::InvalidArgument, "etcdserver: key is not provided"),
            EtcdError::KeyNotFound => (Code::InvalidArgument, "etcdserver: key not found"),
            EtcdError::ValueProvided => (Code::InvalidArgument, "etcdserver: value is provided"),
            EtcdError::LeaseProvided => (Code::InvalidArgument, "etcdserver: lease is provided"),
            EtcdError::TooManyOps => (
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            EtcdError::DuplicateKey => (
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            EtcdError::Compacted => (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            EtcdError::FutureRev => (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            EtcdError::LeaseNotFound => (Code::NotFound, "etcdserver: requested lease not found"),
            EtcdError::LeaseExist => (Code::FailedPrecondition, "etcdserver: lease already exists"),
            EtcdError::LeaseTtlTooLarge => (Code::OutOfRange, "etcdserver: too large lease TTL"),
            EtcdError::RequestTooLarge => {
                (Code::InvalidArgument, "etcdserver: request is too large")
            }
        };
        Status::new(code, message)
    }
}

fn etcd_lease_error(e: &coffer_core::store::lease::LeaseError) -> EtcdError {
    use coffer_core::store::lease::LeaseError;
    match e {
        LeaseError::NotFound => EtcdError::LeaseNotFound,
        LeaseError::Exists => EtcdError::LeaseExist,
        LeaseError::TtlTooLarge => EtcdError::LeaseTtlTooLarge,
    }
}

/// Maps an engine error to the status the etcd door answers: etcd's own for what etcd has
/// (compacted and future revisions, leases), else as on the Secret service.
pub fn etcd_store_error(e: &StoreError) -> Status {
    match e {
        StoreError::TooOld { .. } => EtcdError::Compacted.status(),
        StoreError::TooLarge { .. } => EtcdError::FutureRev.status(),
        StoreError::Lease(l) => etcd_lease_error(l).status(),
        other => store_error(other),
    }
}

/// Maps a refusal by the security gate to a gRPC status.
pub fn auth_error(e: &AuthError) -> Status {
    let code = match e {
        AuthError::Unauthenticated(_) => Code::Unauthenticated,
        AuthError::Forbidden { .. } => Code::PermissionDenied,
        AuthError::RateLimited { .. }
        | AuthError::TooManyWatchStreams { .. }
        | AuthError::TooManyWatches { .. } => Code::ResourceExhausted,
        AuthError::AuditUnavailable(_) => Code::Unavailable,
    };
    status(code, e.to_string())
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        auth_error(&e)
    }
}

/// `INVALID_ARGUMENT` with a capped message.
pub fn invalid_argument(message: impl Into<String>) -> Status {
    status(Code::InvalidArgument, message)
}

/// `INVALID_ARGUMENT` for a required request field that is missing, as Kubernetes words it:
/// `<field>: Required value`.
pub fn required(field: &str) -> Status {
    invalid_argument(format!("{field}: Required value"))
}

/// `OUT_OF_RANGE` for a watch that asks for (or has fallen behind to) a revision the server no
/// longer keeps: the message contains "too old resource version", and the client re-lists.
pub fn too_old(requested: u64, oldest: u64) -> Status {
    status(
        Code::OutOfRange,
        format!("too old resource version: {requested} ({oldest})"),
    )
}

/// `UNAVAILABLE` for streams ended by a shutdown.
pub fn shutting_down() -> Status {
    status(Code::Unavailable, "server shutting down")
}

/// A status with its message capped to [`MAX_MESSAGE_BYTES`] once encoded.
pub fn status(code: Code, message: impl Into<String>) -> Status {
    Status::new(code, cap_message(message.into()))
}

/// Rewrites tonic's answers to a request it could not decode, which blame the server, into
/// codes that blame the request: one above the decoding limit (`OUT_OF_RANGE`, "decoded message
/// length too large") becomes a clear `RESOURCE_EXHAUSTED`, and bytes that are not the expected
/// protobuf message (`INTERNAL`, "failed to decode Protobuf message", with prost's path to the
/// bad field) become `INVALID_ARGUMENT`. Any other status is returned as it is.
pub fn fix_decode_limit(s: Status) -> Status {
    if s.code() == Code::Internal && s.message().starts_with(PROST_DECODE_FAILED) {
        // prost's message names the field path and the rule (a wire type, UTF-8, a length),
        // never field contents.
        let detail = s
            .message()
            .strip_prefix(PROST_DECODE_FAILED)
            .unwrap_or_default()
            .trim_start_matches(':')
            .trim();
        return invalid_argument(format!("request is not a valid protobuf message: {detail}"));
    }
    if s.code() == Code::OutOfRange && s.message().starts_with(TONIC_DECODE_TOO_LARGE) {
        let detail = s
            .message()
            .strip_prefix(TONIC_DECODE_TOO_LARGE)
            .unwrap_or_default()
            .trim_start_matches(':')
            .trim();
        return status(
            Code::ResourceExhausted,
            format!("request message is larger than the server accepts: {detail}"),
        );
    }
    s
}

/// The Kubernetes-style message for validation errors, listing at most [`MAX_LISTED_ERRORS`].
fn validation_message(errs: &ValidationErrors) -> String {
    let all = errs.errors();
    let mut msg = String::new();
    for (i, e) in all.iter().take(MAX_LISTED_ERRORS).enumerate() {
        if i > 0 {
            msg.push_str(", ");
        }
        msg.push_str(&e.to_string());
        if msg.len() > MAX_MESSAGE_BYTES {
            break;
        }
    }
    if all.len() > MAX_LISTED_ERRORS {
        msg.push_str(&format!(
            " (and {} more errors)",
            all.len() - MAX_LISTED_ERRORS
        ));
    }
    msg
}

/// The bytes a character costs in a percent-encoded `grpc-message` (tonic's encoding set).
fn encoded_len(c: char) -> usize {
    match c {
        ' ' | '"' | '#' | '%' | '<' | '>' | '`' | '?' | '{' | '}' => 3,
        c if c.is_ascii_control() => 3,
        c if c.is_ascii() => 1,
        c => 3 * c.len_utf8(),
    }
}

/// Cuts `message` (at a character boundary) so that it encodes to at most
/// [`MAX_MESSAGE_BYTES`], marking the cut.
fn cap_message(mut message: String) -> String {
    const MARK: &str = "... (truncated)";
    let budget = MAX_MESSAGE_BYTES - MARK.len() * 3;
    let mut total = 0usize;
    let mut cut = None;
    for (i, c) in message.char_indices() {
        total += encoded_len(c);
        if total > budget && cut.is_none() {
            cut = Some(i);
        }
        if total > MAX_MESSAGE_BYTES {
            break;
        }
    }
    if total > MAX_MESSAGE_BYTES
        && let Some(i) = cut
    {
        message.truncate(i);
        message.push_str(MARK);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_core::model::validation::FieldError;

    #[test]
    fn codes() {
        let nf = StoreError::NotFound {
            namespace: "ns".into(),
            name: "a".into(),
        };
        assert_eq!(store_error(&nf).code(), Code::NotFound);
        assert_eq!(store_error(&nf).message(), "secrets \"a\" not found");
        let c = StoreError::Conflict {
            name: "a".into(),
            expected: 1,
            current: 2,
        };
        assert_eq!(store_error(&c).code(), Code::Aborted);
        let u = StoreError::Unavailable("down".into());
        assert_eq!(store_error(&u).code(), Code::Unavailable);
        let f = StoreError::Storage(StorageError::Failed("x".into()));
        assert_eq!(store_error(&f).code(), Code::Unavailable);
        let d = StoreError::DataLoss {
            key: "ns/a".into(),
            reason: "integrity".into(),
        };
        assert_eq!(store_error(&d).code(), Code::DataLoss);
    }

    #[test]
    fn auth_codes() {
        use crate::auth::Verb;
        let cases = [
            (
                AuthError::Unauthenticated("x".into()),
                Code::Unauthenticated,
            ),
            (
                AuthError::Forbidden {
                    user: "u".into(),
                    verb: Verb::Get,
                    namespace: "n".into(),
                    name: Some("a".into()),
                },
                Code::PermissionDenied,
            ),
            (
                AuthError::RateLimited {
                    rate: 1.0,
                    burst: 1.0,
                },
                Code::ResourceExhausted,
            ),
            (
                AuthError::TooManyWatchStreams { max: 1 },
                Code::ResourceExhausted,
            ),
            (AuthError::AuditUnavailable("x".into()), Code::Unavailable),
        ];
        for (e, code) in cases {
            assert_eq!(auth_error(&e).code(), code, "{e}");
        }
    }

    #[test]
    fn messages_are_capped_in_errors_and_bytes() {
        let errs = ValidationErrors(
            (0..1000)
                .map(|i| FieldError::invalid(format!("data[k{i} {}]", "é".repeat(300)), "v", "bad"))
                .collect(),
        );
        let s = store_error(&StoreError::Invalid(errs));
        assert_eq!(s.code(), Code::InvalidArgument);
        let encoded: usize = s.message().chars().map(encoded_len).sum();
        assert!(encoded <= MAX_MESSAGE_BYTES, "{encoded}");
        assert!(s.message().starts_with("data[k0 "));
        assert!(s.message().ends_with("(truncated)"));

        let few = ValidationErrors(
            (0..40)
                .map(|i| FieldError::required(format!("data[k{i}]"), ""))
                .collect(),
        );
        let m = store_error(&StoreError::Invalid(few)).message().to_owned();
        assert!(m.ends_with("(and 8 more errors)"), "{m}");
    }

    #[test]
    fn decode_limit_becomes_resource_exhausted() {
        let s = Status::out_of_range(
            "Error, decoded message length too large: found 5000000 bytes, the limit is: 4194304 bytes",
        );
        let fixed = fix_decode_limit(s);
        assert_eq!(fixed.code(), Code::ResourceExhausted);
        assert!(fixed.message().contains("found 5000000 bytes"), "{fixed:?}");
        let other = fix_decode_limit(too_old(1, 5));
        assert_eq!(other.code(), Code::OutOfRange);
    }

    #[test]
    fn undecodable_request_becomes_invalid_argument() {
        let s = Status::internal(
            "failed to decode Protobuf message: ObjectMeta.name: Secret.metadata: \
             invalid string value: data is not UTF-8 encoded",
        );
        let fixed = fix_decode_limit(s);
        assert_eq!(fixed.code(), Code::InvalidArgument);
        assert!(
            fixed
                .message()
                .starts_with("request is not a valid protobuf message: ObjectMeta.name: "),
            "{fixed:?}"
        );
        let other = fix_decode_limit(Status::internal("storage failed"));
        assert_eq!(other.code(), Code::Internal);
    }
}
