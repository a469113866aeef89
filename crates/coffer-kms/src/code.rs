//! The one table of gRPC status code names.
//!
//! A code has three spellings in the wild, and Coffer prints each in one place only:
//!
//! | column | example | where |
//! | --- | --- | --- |
//! | canonical (the gRPC spec's) | `INVALID_ARGUMENT`, `CANCELLED` | what people read: CLI and mount agent messages, KMS errors, logs |
//! | label (grpc-go's, Prometheus exporters') | `InvalidArgument`, `Canceled` | the `code` label of `coffer_grpc_requests_total` |
//! | audit (tonic's) | `InvalidArgument`, `Cancelled`, `Ok` | the `code` field of audit lines |
//!
//! The label and audit columns differ only for `OK`/`Ok` and `Canceled`/`Cancelled`; both are
//! kept as they were published, so that dashboards and audit readers need no change.

use tonic::Code;

/// `(code, canonical, label, audit)` for every code, in code order.
const TABLE: [(Code, &str, &str, &str); 17] = [
    (Code::Ok, "OK", "OK", "Ok"),
    (Code::Cancelled, "CANCELLED", "Canceled", "Cancelled"),
    (Code::Unknown, "UNKNOWN", "Unknown", "Unknown"),
    (
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "InvalidArgument",
        "InvalidArgument",
    ),
    (
        Code::DeadlineExceeded,
        "DEADLINE_EXCEEDED",
        "DeadlineExceeded",
        "DeadlineExceeded",
    ),
    (Code::NotFound, "NOT_FOUND", "NotFound", "NotFound"),
    (
        Code::AlreadyExists,
        "ALREADY_EXISTS",
        "AlreadyExists",
        "AlreadyExists",
    ),
    (
        Code::PermissionDenied,
        "PERMISSION_DENIED",
        "PermissionDenied",
        "PermissionDenied",
    ),
    (
        Code::ResourceExhausted,
        "RESOURCE_EXHAUSTED",
        "ResourceExhausted",
        "ResourceExhausted",
    ),
    (
        Code::FailedPrecondition,
        "FAILED_PRECONDITION",
        "FailedPrecondition",
        "FailedPrecondition",
    ),
    (Code::Aborted, "ABORTED", "Aborted", "Aborted"),
    (Code::OutOfRange, "OUT_OF_RANGE", "OutOfRange", "OutOfRange"),
    (
        Code::Unimplemented,
        "UNIMPLEMENTED",
        "Unimplemented",
        "Unimplemented",
    ),
    (Code::Internal, "INTERNAL", "Internal", "Internal"),
    (
        Code::Unavailable,
        "UNAVAILABLE",
        "Unavailable",
        "Unavailable",
    ),
    (Code::DataLoss, "DATA_LOSS", "DataLoss", "DataLoss"),
    (
        Code::Unauthenticated,
        "UNAUTHENTICATED",
        "Unauthenticated",
        "Unauthenticated",
    ),
];

fn row(code: Code) -> (Code, &'static str, &'static str, &'static str) {
    TABLE
        .iter()
        .copied()
        .find(|(c, ..)| *c == code)
        .unwrap_or(TABLE[2])
}

/// The canonical name (`INVALID_ARGUMENT`): the one people read.
pub fn name(code: Code) -> &'static str {
    row(code).1
}

/// The metric label (`InvalidArgument`, `Canceled`, `OK`).
pub fn label(code: Code) -> &'static str {
    row(code).2
}

/// The audit log's name (`InvalidArgument`, `Cancelled`, `Ok`).
pub fn audit_name(code: Code) -> &'static str {
    row(code).3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_in_order_with_its_three_spellings() {
        for (i, (code, canonical, label, audit)) in TABLE.iter().enumerate() {
            assert_eq!(*code as usize, i, "{canonical}");
            assert_eq!(Code::from_i32(i as i32), *code);
            // The canonical name is the label in upper snake case, but for CANCELLED.
            if *code != Code::Cancelled {
                let mut snake = String::new();
                for (j, ch) in label.chars().enumerate() {
                    if ch.is_ascii_uppercase() && j > 0 && *code != Code::Ok {
                        snake.push('_');
                    }
                    snake.push(ch.to_ascii_uppercase());
                }
                assert_eq!(&snake, canonical);
            }
            // The audit column is tonic's own Debug name.
            assert_eq!(format!("{code:?}"), *audit);
        }
        assert_eq!(name(Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(label(Code::Cancelled), "Canceled");
        assert_eq!(audit_name(Code::Ok), "Ok");
        assert_eq!(name(Code::from_i32(99)), "UNKNOWN");
    }
}
