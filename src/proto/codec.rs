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
//! The generated code names this codec through `tonic_prost_build`'s `codec_path` (build.rs).

use std::marker::PhantomData;

use prost::Message;
use prost::bytes::BufMut;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use zeroize::Zeroize;

use super::kms_v2 as kms;
use super::v1 as pb;

/// A message whose plaintext fields can be wiped in place (a no-op for messages without any).
pub trait Wipe {
    /// Zeroizes the plaintext this message holds (values become empty).
    fn wipe(&mut self) {}
}

impl Wipe for pb::Secret {
    fn wipe(&mut self) {
        for v in self.data.values_mut() {
            v.zeroize();
        }
        for v in self.string_data.values_mut() {
            v.zeroize();
        }
    }
}

impl<T: Wipe> Wipe for Option<T> {
    fn wipe(&mut self) {
        if let Some(t) = self {
            t.wipe();
        }
    }
}

impl Wipe for pb::CreateSecretRequest {
    fn wipe(&mut self) {
        self.secret.wipe();
    }
}

impl Wipe for pb::UpdateSecretRequest {
    fn wipe(&mut self) {
        self.secret.wipe();
    }
}

impl Wipe for pb::DeleteSecretResponse {
    fn wipe(&mut self) {
        self.secret.wipe();
    }
}

impl Wipe for pb::ListSecretsResponse {
    fn wipe(&mut self) {
        for s in &mut self.items {
            s.wipe();
        }
    }
}

impl Wipe for pb::WatchEvent {
    fn wipe(&mut self) {
        self.object.wipe();
    }
}

impl Wipe for pb::WatchManyEvent {
    fn wipe(&mut self) {
        self.event.wipe();
    }
}

impl Wipe for pb::GetSecretRequest {}
impl Wipe for pb::DeleteSecretRequest {}
impl Wipe for pb::ListSecretsRequest {}
impl Wipe for pb::WatchSecretsRequest {}
impl Wipe for pb::WatchManyRequest {}

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

    fn secret(value: &[u8]) -> pb::Secret {
        pb::Secret {
            metadata: Some(pb::ObjectMeta {
                name: "n".into(),
                namespace: "ns".into(),
                ..pb::ObjectMeta::default()
            }),
            data: [("k".to_owned(), value.to_vec())].into(),
            string_data: [("s".to_owned(), "t0ps3cret".to_owned())].into(),
            ..pb::Secret::default()
        }
    }

    #[test]
    fn encoding_wipes_the_message_but_not_what_was_encoded() {
        let original = secret(b"hunter2");
        let mut event = pb::WatchManyEvent {
            watch_id: 7,
            event: Some(pb::WatchEvent {
                r#type: 1,
                object: Some(original.clone()),
            }),
            ..pb::WatchManyEvent::default()
        };
        let mut buf = Vec::new();
        encode_then_wipe(&mut event, &mut buf);
        let decoded = pb::WatchManyEvent::decode(buf.as_slice()).expect("decode");
        assert_eq!(decoded.event.and_then(|e| e.object), Some(original));
        let wiped = event.event.and_then(|e| e.object).expect("object");
        assert!(wiped.data["k"].is_empty() && wiped.string_data["s"].is_empty());
        assert_eq!(wiped.metadata.map(|m| m.name).as_deref(), Some("n"));
    }

    #[test]
    fn every_plaintext_carrier_is_wiped() {
        let mut list = pb::ListSecretsResponse {
            items: vec![secret(b"a"), secret(b"b")],
            ..pb::ListSecretsResponse::default()
        };
        list.wipe();
        assert!(list.items.iter().all(|s| s.data["k"].is_empty()));
        let mut create = pb::CreateSecretRequest {
            secret: Some(secret(b"x")),
        };
        create.wipe();
        assert!(create.secret.is_some_and(|s| s.data["k"].is_empty()));
        let mut del = pb::DeleteSecretResponse {
            secret: Some(secret(b"x")),
        };
        del.wipe();
        assert!(del.secret.is_some_and(|s| s.data["k"].is_empty()));
        let mut seed = kms::EncryptRequest {
            plaintext: vec![9; 32],
            uid: "u".into(),
        };
        seed.wipe();
        assert!(seed.plaintext.is_empty());
        let mut unwrapped = kms::DecryptResponse {
            plaintext: vec![9; 32],
        };
        unwrapped.wipe();
        assert!(unwrapped.plaintext.is_empty());
    }
}
