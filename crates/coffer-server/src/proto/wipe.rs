//! [`Wipe`] for the Secret service's messages: what [`coffer_kms::codec::WipingCodec`] zeroizes
//! once a message is encoded (Secret data values and `string_data`).

use coffer_kms::codec::Wipe;
use zeroize::Zeroize;

use super::v1 as pb;

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

impl Wipe for pb::SecretVersion {
    fn wipe(&mut self) {
        self.secret.wipe();
    }
}

impl Wipe for pb::HistoryResponse {
    fn wipe(&mut self) {
        for v in &mut self.versions {
            v.wipe();
        }
    }
}

impl Wipe for pb::HistoryRequest {}
impl Wipe for pb::GetSecretRequest {}
impl Wipe for pb::DeleteSecretRequest {}
impl Wipe for pb::ListSecretsRequest {}
impl Wipe for pb::WatchSecretsRequest {}
impl Wipe for pb::WatchManyRequest {}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_kms::codec::encode_then_wipe;
    use prost::Message;

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
    }
}
