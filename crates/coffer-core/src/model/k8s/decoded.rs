//! What decoding a stored value gives.

use crate::model::Secret;

/// Why a value is not a Secret Coffer can show (no content is ever quoted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotASecret(pub &'static str);

/// What a stored value is.
#[derive(Debug)]
pub enum Decoded {
    /// A `v1` Secret (namespace and name from its key, `resource_version` unset).
    Secret(Box<Secret>),
    /// Anything else: kept and served through the door only.
    Opaque(NotASecret),
}
