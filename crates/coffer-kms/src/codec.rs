//! The gRPC codec of Coffer's own services: prost encoding that wipes the plaintext a message
//! carries (Secret data values, `string_data`, KMS plaintext seeds) as soon as it has been
//! encoded into tonic's send buffer.
//!
//! tonic hands each outgoing message to the encoder by value; [`WipingCodec`]'s encoder encodes
//! it, then zeroizes its plaintext fields before dropping it, so the message's own buffers are
//! wiped rather than freed with their content. This covers responses on the server (Get, Create,
//! Update, Delete, List, Watch and WatchMany events) and requests on the client (Create and
//! Update from the CLI, Encrypt requests to a KMS plugin, Decrypt responses in a plugin).
//!
//! What a codec cannot reach: the bytes tonic encoded into (its `BytesMut`, then frames in hyper
//! and h2, then the kernel's socket buffers) are freed without wiping, and on the receiving side
//! the decoder only gets a read-only view of tonic's receive buffer, so the encoded request is
//! not wiped either. Decoded messages themselves are moved, not copied, into zeroizing types by
//! their consumers (see `server::convert`). The README's "Memory hygiene" section says how the
//! design limits what stays behind.
//!
//! The generated code names this codec through `tonic_prost_build`'s `codec_path` (the build.rs
//! of this crate for the KMS v2 API, and of `coffer-server` for the Secret service, which
//! implements [`Wipe`] for its own messages).

use std::marker::PhantomData;

use prost::Message;
use prost::bytes::BufMut;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use zeroize::Zeroize;

use crate::proto as kms;

/// A message whose plaintext fields can be wiped in place (a no-op for messages without any).
pub trait Wipe {
    /// Zeroizes the plaintext this message holds (values become empty).
    fn wipe(&mut self) {}
}

impl<T: Wipe> Wipe for Option<T> {
    fn wipe(&mut self) {
        if let Some(t) = self {
            t.wipe();
        }
    }
}

impl Wipe for kms::EncryptRequest {
    fn wipe(&mut self) {
        self.plaintext.zeroize();
    }
}

impl Wipe for kms::DecryptResponse {
    fn wipe(&mut self) {
        self.plaintext.zeroize();
    }
}

impl Wipe for kms::StatusRequest {}
impl Wipe for kms::StatusResponse {}
impl Wipe for kms::EncryptResponse {}
impl Wipe for kms::DecryptRequest {}

/// Encodes `item` into `buf`, then wipes its plaintext.
pub fn encode_then_wipe<T: Message + Wipe>(item: &mut T, buf: &mut impl BufMut) {
    // Encoding only fails when the buffer is too small; tonic's grows as needed, so a failure
    // here cannot happen (and would leave the message unsent, which tonic reports).
    let _ = item.encode(buf);
    item.wipe();
}

/// prost encoding and decoding; the encoder wipes each message after encoding it.
#[derive(Debug)]
pub struct WipingCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for WipingCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for WipingCodec<T, U>
where
    T: Message + Wipe + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = WipingEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        WipingEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder(PhantomData)
    }
}

/// Encodes with prost, then wipes the message (see [`encode_then_wipe`]).
#[derive(Debug)]
pub struct WipingEncoder<T>(PhantomData<T>);

impl<T: Message + Wipe> Encoder for WipingEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, mut item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        encode_then_wipe(&mut item, buf);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Decodes with prost (tonic's receive buffer is read-only here: it cannot be wiped).
#[derive(Debug)]
pub struct ProstDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for ProstDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        Message::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kms_plaintext_carriers_are_wiped() {
        let mut seed = kms::EncryptRequest {
            plaintext: vec![9; 32],
            uid: "u".into(),
        };
        let mut buf = Vec::new();
        encode_then_wipe(&mut seed, &mut buf);
        assert!(seed.plaintext.is_empty());
        let decoded = kms::EncryptRequest::decode(buf.as_slice()).expect("decode");
        assert_eq!(decoded.plaintext, vec![9; 32]);
        let mut unwrapped = kms::DecryptResponse {
            plaintext: vec![9; 32],
        };
        unwrapped.wipe();
        assert!(unwrapped.plaintext.is_empty());
    }
}
