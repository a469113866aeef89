//! The CLI's error: one human sentence, printed as kubectl prints its errors, exit code 1.

use std::fmt;

use tonic::Code;

/// A failed command. `Display` is the whole line printed to stderr (kubectl style:
/// `error: ...` or `Error from server (NotFound): ...`); it never holds a secret value.
#[derive(Debug)]
pub struct CliError {
    message: String,
}

impl CliError {
    /// An error found on the client side: printed as `error: MESSAGE`.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self {
            message: format!("error: {message}"),
        }
    }

    /// A line printed exactly as given.
    pub fn raw(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// A file could not be read.
    pub fn file(path: &str, e: &std::io::Error) -> Self {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file or directory".to_owned(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            _ => io_message(e),
        };
        Self::msg(format_args!("cannot read {path}: {why}"))
    }

    /// The server could not be reached.
    pub fn connect(server: &str, cause: &(dyn std::error::Error + 'static)) -> Self {
        let root = root_cause(cause);
        let hint = if root.to_ascii_lowercase().contains("refused")
            || root.to_ascii_lowercase().contains("no such file")
        {
            " (is `coffer serve` running there? set --server or COFFER_SERVER)"
        } else {
            ""
        };
        Self::raw(format!(
            "error: cannot reach the Coffer server at {server}: {root}{hint}"
        ))
    }

    /// A gRPC status returned by a call. `object` names the Secret a write was about, so that
    /// validation failures read as kubectl's `The Secret "NAME" is invalid: ...`.
    pub fn status(server: &str, status: &tonic::Status, object: Option<&str>) -> Self {
        let msg = status.message();
        // A status the client made up from a transport failure carries its cause.
        if let Some(source) = std::error::Error::source(status) {
            return Self::raw(format!(
                "error: lost the connection to the Coffer server at {server}: {}",
                root_cause(source)
            ));
        }
        let line = match status.code() {
            Code::NotFound => format!("Error from server (NotFound): {msg}"),
            Code::AlreadyExists => format!("Error from server (AlreadyExists): {msg}"),
            Code::InvalidArgument => match object {
                Some(name) => format!("The Secret {name:?} is invalid: {msg}"),
                None => format!("Error from server (BadRequest): {msg}"),
            },
            Code::Aborted => format!("Error from server (Conflict): {msg}"),
            Code::FailedPrecondition => format!("Error from server (BadRequest): {msg}"),
            Code::PermissionDenied => format!("Error from server (Forbidden): {msg}"),
            Code::Unauthenticated => format!("Error from server (Unauthorized): {msg}"),
            Code::ResourceExhausted => {
                format!("Error from server (RequestEntityTooLarge): {msg}")
            }
            Code::Unavailable => format!("Error from server (ServiceUnavailable): {msg}"),
            Code::OutOfRange => format!("Error from server (Expired): {msg}"),
            Code::DeadlineExceeded => format!("Error from server (Timeout): {msg}"),
            Code::Unimplemented => format!(
                "error: the server at {server} does not implement this call (is it a Coffer server?): {msg}"
            ),
            Code::Cancelled => format!("error: the call was cancelled: {msg}"),
            _ => format!("Error from server (InternalError): {msg}"),
        };
        Self::raw(line)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// An io error's message without Rust's ` (os error N)` suffix.
fn io_message(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

/// The innermost error of a chain, which is the one that says what went wrong.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    if let Some(io) = cur.downcast_ref::<std::io::Error>() {
        return io_message(io).to_lowercase();
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        let s = tonic::Status::not_found("secrets \"x\" not found");
        assert_eq!(
            CliError::status("a", &s, None).to_string(),
            "Error from server (NotFound): secrets \"x\" not found"
        );
        let s = tonic::Status::invalid_argument("data[a*b]: Invalid value: \"a*b\": bad");
        assert_eq!(
            CliError::status("a", &s, Some("x")).to_string(),
            "The Secret \"x\" is invalid: data[a*b]: Invalid value: \"a*b\": bad"
        );
    }

    #[test]
    fn connect_refused() {
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let line = CliError::connect("127.0.0.1:1", &e).to_string();
        assert!(
            line.starts_with(
                "error: cannot reach the Coffer server at 127.0.0.1:1: connection refused"
            ),
            "{line}"
        );
    }
}
