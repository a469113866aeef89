//! The protobuf wire format, field by field: enough to read the fields Coffer knows and to copy
//! every other field byte for byte (the Kubernetes protobuf values the API server stores carry
//! fields Coffer's model lacks, and an edit must not lose them).

use prost::encoding::{decode_varint, encode_varint};

/// A value that is not well-formed protobuf.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not protobuf: {0}")]
pub(super) struct WireError(pub &'static str);

/// One field as it appears in a message.
#[derive(Debug, Clone, Copy)]
pub(super) struct Field<'a> {
    /// The field number.
    pub(super) tag: u32,
    /// The whole field, key included (what an edit copies).
    pub(super) raw: &'a [u8],
    /// What the field carries: a varint's value, or a length-delimited field's bytes.
    pub(super) value: FieldValue<'a>,
}

/// A field's payload.
#[derive(Debug, Clone, Copy)]
pub(super) enum FieldValue<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 2.
    Bytes(&'a [u8]),
    /// Wire types 1 and 5 (copied, never read).
    Fixed,
}

impl<'a> Field<'a> {
    /// The payload of a length-delimited field.
    pub(super) fn bytes(&self) -> Result<&'a [u8], WireError> {
        match self.value {
            FieldValue::Bytes(b) => Ok(b),
            _ => Err(WireError("a length-delimited field has another wire type")),
        }
    }

    /// The payload of a string field.
    pub(super) fn string(&self) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| WireError("a string is not UTF-8"))
    }

    /// The payload of a varint field.
    pub(super) fn varint(&self) -> Result<u64, WireError> {
        match self.value {
            FieldValue::Varint(v) => Ok(v),
            _ => Err(WireError("a varint field has another wire type")),
        }
    }
}

/// Splits a message into its fields, in order.
pub(super) fn fields(mut buf: &[u8]) -> Result<Vec<Field<'_>>, WireError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let start = buf;
        let key = decode_varint(&mut buf).map_err(|_| WireError("a field key is cut short"))?;
        let tag = u32::try_from(key >> 3).map_err(|_| WireError("a field number is too large"))?;
        if tag == 0 {
            return Err(WireError("field number 0"));
        }
        let value = match key & 7 {
            0 => FieldValue::Varint(
                decode_varint(&mut buf).map_err(|_| WireError("a varint is cut short"))?,
            ),
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                if buf.len() < n {
                    return Err(WireError("a fixed-size field is cut short"));
                }
                buf = &buf[n..];
                FieldValue::Fixed
            }
            2 => {
                let len =
                    decode_varint(&mut buf).map_err(|_| WireError("a length is cut short"))?;
                let len = usize::try_from(len).map_err(|_| WireError("a length is too large"))?;
                if buf.len() < len {
                    return Err(WireError("a length-delimited field is cut short"));
                }
                let (payload, rest) = buf.split_at(len);
                buf = rest;
                FieldValue::Bytes(payload)
            }
            _ => return Err(WireError("a group or unknown wire type")),
        };
        let used = start.len() - buf.len();
        out.push(Field {
            tag,
            raw: &start[..used],
            value,
        });
    }
    Ok(out)
}

/// Appends a length-delimited field (always written, even when empty: Go's generated
/// marshallers write non-pointer strings and set bytes that way).
pub(super) fn put_bytes(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    encode_varint(u64::from(tag) << 3 | 2, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// Appends a varint field (an int64 is written as its two's complement, as Go does).
pub(super) fn put_varint(out: &mut Vec<u8>, tag: u32, value: u64) {
    encode_varint(u64::from(tag) << 3, out);
    encode_varint(value, out);
}

/// Appends a map<string, string|bytes> entry field.
pub(super) fn put_map_entry(out: &mut Vec<u8>, tag: u32, key: &str, value: &[u8]) {
    let mut entry = zeroize::Zeroizing::new(Vec::with_capacity(key.len() + value.len() + 8));
    put_bytes(&mut entry, 1, key.as_bytes());
    put_bytes(&mut entry, 2, value);
    put_bytes(out, tag, &entry);
}

/// The entry of a map field: (key, value).
pub(super) fn map_entry(f: &Field<'_>) -> Result<(String, Vec<u8>), WireError> {
    let mut key = String::new();
    let mut value = Vec::new();
    for e in fields(f.bytes()?)? {
        match e.tag {
            1 => key = e.string()?.to_owned(),
            2 => value = e.bytes()?.to_vec(),
            _ => {}
        }
    }
    Ok((key, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_byte_for_byte() {
        let mut m = Vec::new();
        put_bytes(&mut m, 1, b"name");
        put_varint(&mut m, 7, 300);
        put_bytes(&mut m, 99, b"");
        // A fixed64 (wire type 1) and a fixed32 (5) of a field Coffer does not know.
        m.extend_from_slice(&[0x41, 1, 2, 3, 4, 5, 6, 7, 8, 0x4d, 1, 2, 3, 4]);
        let fs = fields(&m).expect("parse");
        assert_eq!(fs.len(), 5);
        assert_eq!(fs[0].string().expect("string"), "name");
        assert_eq!(fs[1].varint().expect("varint"), 300);
        assert_eq!(fs[2].tag, 99);
        let joined: Vec<u8> = fs.iter().flat_map(|f| f.raw.iter().copied()).collect();
        assert_eq!(joined, m);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in [
            &[0x0a, 0x05, b'a'][..],
            &[0x08],
            &[0x0b],
            &[0x00, 0x01],
            &[0x41, 1, 2],
            &[
                0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ] {
            assert!(fields(bad).is_err(), "{bad:?}");
        }
    }
}
