//! List continue tokens: opaque to clients, checked strictly on the way back in.
//!
//! A token is base64url(JSON `{"v":1,"rv":<list revision>,"start":"<last key returned>"}`). It only
//! says where the next page starts, so a forged token can at worst start a list elsewhere in the
//! caller's own scope (the prefix is checked), never widen it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::StoreError;

/// Longest token accepted; anything longer is refused before decoding.
const MAX_TOKEN_LEN: usize = 4096;

#[derive(serde::Serialize, serde::Deserialize)]
struct Token {
    v: u8,
    rv: u64,
    start: String,
}

/// Encodes a token.
pub fn encode(revision: u64, last_key: &str) -> String {
    let json = serde_json::to_vec(&Token {
        v: 1,
        rv: revision,
        start: last_key.to_owned(),
    })
    .unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

/// Decodes a token into (list revision, last key), checking it lies under `prefix` (the list's
/// storage-key prefix, such as `s/` for all namespaces or `s/team-a/` for one). Public for the
/// fuzz target; callers go through [`super::Store::list`].
pub fn decode(token: &str, prefix: &str) -> Result<(u64, String), StoreError> {
    let bad = |why: &str| StoreError::BadRequest {
        field: "continue",
        message: format!("invalid continue token: {why}"),
    };
    if token.len() > MAX_TOKEN_LEN {
        return Err(bad("too long"));
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad("not base64url"))?;
    let t: Token = serde_json::from_slice(&bytes).map_err(|_| bad("malformed"))?;
    if t.v != 1 {
        return Err(bad("unknown version"));
    }
    if !t.start.starts_with(prefix) {
        return Err(bad("does not belong to this list's namespace"));
    }
    Ok((t.rv, t.start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let t = encode(7, "s/ns/a");
        assert_eq!(decode(&t, "s/ns/").expect("ok"), (7, "s/ns/a".to_owned()));
        assert!(decode(&t, "s/other/").is_err());
        assert!(decode("!!!", "s/").is_err());
        assert!(decode(&"A".repeat(5000), "s/").is_err());
        assert!(
            decode(
                &URL_SAFE_NO_PAD.encode(b"{\"v\":2,\"rv\":1,\"start\":\"s/\"}"),
                "s/"
            )
            .is_err()
        );
        assert!(decode(&URL_SAFE_NO_PAD.encode(b"[]"), "s/").is_err());
    }
}
