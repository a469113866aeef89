//! Golden values built by hand from the rules of Kubernetes' generated marshallers
//! (k8s.io/api core/v1 `Secret.MarshalToSizedBuffer`, apimachinery meta/v1 `ObjectMeta`,
//! `Timestamp`, runtime `Unknown` and `TypeMeta`; `metav1.Time.ProtoTime` drops nanoseconds)
//! and of `encoding/json`.

use super::*;
use crate::model::SecretValue;

/// A varint, as protobuf writes it.
fn varint(mut n: u64) -> Vec<u8> {
    let mut v = Vec::new();
    while n >= 0x80 {
        v.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    v.push(n as u8);
    v
}

/// A length-delimited field: key, length, bytes.
fn ld(tag: u64, bytes: &[u8]) -> Vec<u8> {
    cat(&[&varint(tag << 3 | 2), &varint(bytes.len() as u64), bytes])
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// `default/s`, uid `u`, created at 1700000000, label app=web, data k=v, type Opaque: what
/// kube-apiserver stores for it.
fn golden() -> Vec<u8> {
    let meta = cat(&[
        &ld(1, b"s"),       // name
        &ld(2, b""),        // generateName: a non-pointer string, always written
        &ld(3, b"default"), // namespace
        &ld(4, b""),        // selfLink
        &ld(5, b"u"),       // uid
        &ld(6, b""),        // resourceVersion: empty in etcd
        &[0x38, 0x00],      // generation = 0, always written
        // creationTimestamp {seconds = 1700000000 (varint 80 e2 cf aa 06), nanos = 0}
        &ld(8, &[0x08, 0x80, 0xe2, 0xcf, 0xaa, 0x06, 0x10, 0x00]),
        &ld(11, &cat(&[&ld(1, b"app"), &ld(2, b"web")])), // labels entry
    ]);
    let secret = cat(&[
        &ld(1, &meta),
        &ld(2, &cat(&[&ld(1, b"k"), &ld(2, b"v")])), // data entry
        &ld(3, b"Opaque"),
    ]);
    cat(&[
        b"k8s\0",
        &ld(1, &cat(&[&ld(1, b"v1"), &ld(2, b"Secret")])), // typeMeta
        &ld(2, &secret),                                   // raw
        &ld(3, b""),                                       // contentEncoding
        &ld(4, b""),                                       // contentType
    ])
}

fn golden_secret() -> Secret {
    let mut s = Secret::new("default", "s")
        .with_label("app", "web")
        .with_data("k", "v")
        .with_type("Opaque");
    s.metadata.uid = "u".into();
    s.metadata.creation_timestamp = Some(1_700_000_000);
    s
}

fn decoded(value: &[u8]) -> Secret {
    match decode("default", "s", value) {
        Decoded::Secret(s) => *s,
        Decoded::Opaque(e) => panic!("opaque: {e}"),
    }
}

#[test]
fn encode_gives_the_api_servers_bytes() {
    assert_eq!(encode(&golden_secret()).as_slice(), golden().as_slice());
}

#[test]
fn decode_reads_the_api_servers_bytes() {
    assert_eq!(decoded(&golden()), golden_secret());
}

#[test]
fn immutable_and_empty_values_round_trip() {
    let mut s = golden_secret().with_data("empty", "");
    s.immutable = true;
    let bytes = encode(&s);
    // An empty value is still written (a set []byte); immutable is field 5 = 1.
    let empty = ld(2, &cat(&[&ld(1, b"empty"), &ld(2, b"")]));
    assert!(bytes.windows(empty.len()).any(|w| w == empty.as_slice()));
    let tail = cat(&[&ld(3, b"Opaque"), &[0x28, 0x01]]);
    assert!(bytes.windows(tail.len()).any(|w| w == tail.as_slice()));
    let back = decoded(&bytes);
    assert!(back.immutable);
    assert_eq!(back.data["empty"].expose(), b"");
    assert_eq!(back, s);
}

/// A Secret as the API server writes it with every field Coffer's model lacks set, and a field
/// number no version of Kubernetes uses yet (a newer API server's field).
fn rich() -> Vec<u8> {
    let owner = cat(&[
        &ld(1, b"Deployment"),
        &ld(3, b"web"),
        &ld(4, b"owner-uid"),
        &ld(5, b"apps/v1"),
        &[0x30, 0x01], // controller = true
    ]);
    let managed = cat(&[
        &ld(1, b"kubectl"),
        &ld(2, b"Update"),
        &ld(3, b"v1"),
        &ld(6, b"FieldsV1"),
        &ld(7, &ld(1, br#"{"f:data":{}}"#)),
    ]);
    let meta = cat(&[
        &ld(1, b"s"),
        &ld(2, b"gen-"),
        &ld(3, b"default"),
        &ld(4, b""),
        &ld(5, b"u"),
        &ld(6, b""),
        &[0x38, 0x03], // generation = 3
        &ld(8, &[0x08, 0x80, 0xe2, 0xcf, 0xaa, 0x06, 0x10, 0x00]),
        &ld(9, &[0x08, 0x81, 0xe2, 0xcf, 0xaa, 0x06, 0x10, 0x00]), // deletionTimestamp
        &[0x50, 0x1e], // deletionGracePeriodSeconds = 30
        &ld(11, &cat(&[&ld(1, b"app"), &ld(2, b"web")])),
        &ld(12, &cat(&[&ld(1, b"note"), &ld(2, b"x")])),
        &ld(13, &owner),
        &ld(14, b"example.com/keep"),
        &ld(17, &managed),
    ]);
    let secret = cat(&[
        &ld(1, &meta),
        &ld(2, &cat(&[&ld(1, b"k"), &ld(2, b"v")])),
        &ld(3, b"Opaque"),
        &[0x28, 0x00],                         // immutable = false, set
        &[0xfa, 0x06, 0x03, b'n', b'e', b'w'], // field 111, unknown to Coffer
    ]);
    cat(&[
        b"k8s\0",
        &ld(1, &cat(&[&ld(1, b"v1"), &ld(2, b"Secret")])),
        &ld(2, &secret),
        &ld(3, b""),
        &ld(4, b""),
    ])
}

#[test]
fn an_edit_keeps_every_field_the_model_lacks() {
    let original = rich();
    let mut s = decoded(&original);
    assert_eq!(s.metadata.annotations["note"], "x");
    assert!(!s.immutable);
    // Unchanged: the bytes come back as given.
    assert_eq!(
        edit(&original, &s).expect("edit").as_slice(),
        original.as_slice()
    );
    s.data.insert("k".into(), SecretValue::from("v2"));
    s.metadata.labels.insert("tier".into(), "db".into());
    let edited = edit(&original, &s).expect("edit");
    let back = decoded(&edited);
    assert_eq!(back, s);
    // Everything but the labels and data is byte for byte where it was.
    for kept in [
        &ld(2, b"gen-")[..],
        &[0x38, 0x03],
        &ld(9, &[0x08, 0x81, 0xe2, 0xcf, 0xaa, 0x06, 0x10, 0x00]),
        &[0x50, 0x1e],
        &ld(12, &cat(&[&ld(1, b"note"), &ld(2, b"x")])),
        &ld(14, b"example.com/keep"),
        &[0x28, 0x00],
        &[0xfa, 0x06, 0x03, b'n', b'e', b'w'],
    ] {
        assert!(
            edited.windows(kept.len()).any(|w| w == kept),
            "lost {kept:02x?}"
        );
    }
    let owner_uid = b"owner-uid";
    assert!(edited.windows(owner_uid.len()).any(|w| w == owner_uid));
    let fields_v1 = br#"{"f:data":{}}"#;
    assert!(edited.windows(fields_v1.len()).any(|w| w == fields_v1));
    // The labels are written in key order, in field-number order among the metadata.
    let labels = cat(&[
        &ld(11, &cat(&[&ld(1, b"app"), &ld(2, b"web")])),
        &ld(11, &cat(&[&ld(1, b"tier"), &ld(2, b"db")])),
        &ld(12, &cat(&[&ld(1, b"note"), &ld(2, b"x")])),
    ]);
    assert!(edited.windows(labels.len()).any(|w| w == labels.as_slice()));
}

#[test]
fn making_immutable_sets_field_five() {
    let original = golden();
    let mut s = decoded(&original);
    s.immutable = true;
    let edited = edit(&original, &s).expect("edit");
    assert!(decoded(&edited).immutable);
    let tail = cat(&[&ld(3, b"Opaque"), &[0x28, 0x01]]);
    assert!(edited.windows(tail.len()).any(|w| w == tail.as_slice()));
}

const JSON: &str = concat!(
    r#"{"kind":"Secret","apiVersion":"v1","metadata":{"name":"s","generateName":"gen-","namespace":"default","uid":"u","#,
    r#""generation":3,"creationTimestamp":"2023-11-14T22:13:20Z","labels":{"app":"web"},"#,
    r#""ownerReferences":[{"apiVersion":"apps/v1","kind":"Deployment","name":"web","uid":"owner-uid","controller":true}],"#,
    r#""finalizers":["example.com/keep"],"managedFields":[{"manager":"kubectl","operation":"Update","apiVersion":"v1","fieldsType":"FieldsV1","fieldsV1":{"f:data":{}}}]},"#,
    r#""data":{"k":"dg=="},"type":"Opaque","futureField":{"x":1}}"#,
    "\n"
);

#[test]
fn json_decodes() {
    let s = decoded(JSON.as_bytes());
    assert_eq!(s.metadata.uid, "u");
    assert_eq!(s.metadata.creation_timestamp, Some(1_700_000_000));
    assert_eq!(s.metadata.labels["app"], "web");
    assert_eq!(s.data["k"].expose(), b"v");
    assert_eq!(s.type_, "Opaque");
    assert_eq!(json::timestamp(1_700_000_000), "2023-11-14T22:13:20Z");
}

#[test]
fn a_json_edit_keeps_every_member_the_model_lacks() {
    let original = JSON.as_bytes();
    let mut s = decoded(original);
    assert_eq!(edit(original, &s).expect("edit").as_slice(), original);
    s.data.insert("a<b".into(), SecretValue::from("\u{1}"));
    s.metadata.annotations.insert("n".into(), "x&y".into());
    s.immutable = true;
    let edited = edit(original, &s).expect("edit");
    let text = std::str::from_utf8(&edited).expect("utf-8");
    assert_eq!(
        text,
        concat!(
            r#"{"kind":"Secret","apiVersion":"v1","metadata":{"name":"s","generateName":"gen-","namespace":"default","uid":"u","#,
            r#""generation":3,"creationTimestamp":"2023-11-14T22:13:20Z","labels":{"app":"web"},"annotations":{"n":"x\u0026y"},"#,
            r#""ownerReferences":[{"apiVersion":"apps/v1","kind":"Deployment","name":"web","uid":"owner-uid","controller":true}],"#,
            r#""finalizers":["example.com/keep"],"managedFields":[{"manager":"kubectl","operation":"Update","apiVersion":"v1","fieldsType":"FieldsV1","fieldsV1":{"f:data":{}}}]},"#,
            r#""immutable":true,"data":{"a\u003cb":"AQ==","k":"dg=="},"type":"Opaque","futureField":{"x":1}}"#,
            "\n"
        )
    );
    assert_eq!(decoded(&edited), s);
}

#[test]
fn what_is_not_a_secret_stays_opaque() {
    let cases: Vec<(&[u8], &str)> = vec![
        (b"k8s:enc:kms:v2:key:\x00\x01canary", "k8s:enc"),
        (b"plain canary text", "neither"),
        (b"k8s\0\xff\xff", "protobuf"),
        (br#"{"kind":"ConfigMap","apiVersion":"v1"}"#, "v1 Secret"),
        (
            br#"{"kind":"Secret","apiVersion":"v1","data":{"k":"not base64!"}}"#,
            "base64",
        ),
        (b"{canary", "JSON"),
    ];
    for (value, why) in cases {
        match decode("default", "s", value) {
            Decoded::Opaque(e) => {
                let msg = e.to_string();
                assert!(!msg.contains("canary"), "{msg}");
                assert!(
                    msg.contains(why) || why == "protobuf" || why == "JSON",
                    "{value:?}: {msg}"
                );
            }
            Decoded::Secret(_) => panic!("{value:?} decoded as a Secret"),
        }
    }
    let mut not_a_secret = golden();
    let at = not_a_secret
        .windows(6)
        .position(|w| w == b"Secret")
        .expect("kind");
    not_a_secret[at..at + 6].copy_from_slice(b"Secreu");
    assert!(matches!(
        decode("default", "s", &not_a_secret),
        Decoded::Opaque(_)
    ));
}

#[test]
fn with_two_raw_fields_the_last_counts_and_only_it_is_edited() {
    // Found by the k8s_value fuzz target: an earlier `raw` that is not a Secret is ignored by
    // decoders (a bytes field: the last occurrence wins), so an edit must leave it alone.
    let mut value = golden();
    value.extend_from_slice(&ld(2, &cat(&[&ld(1, &ld(1, b"s")), &[0x0b]])));
    value.extend_from_slice(&ld(2, &ld(3, b"Opaque")));
    let mut s = decoded(&value);
    assert!(s.data.is_empty());
    s.data.insert("k".into(), SecretValue::from("v"));
    let edited = edit(&value, &s).expect("edit");
    assert_eq!(decoded(&edited), s);
    assert!(edited.starts_with(&golden()[..golden().len() - 4]));
}

#[test]
fn a_secret_without_metadata_gets_one_for_new_labels() {
    // Found by the k8s_value fuzz target.
    let value = cat(&[
        b"k8s\0",
        &ld(1, &cat(&[&ld(1, b"v1"), &ld(2, b"Secret")])),
        &ld(2, &cat(&[&ld(9, b"unknown"), &ld(3, b"Opaque")])),
    ]);
    let mut s = decoded(&value);
    s.metadata.labels.insert("a".into(), "b".into());
    let edited = edit(&value, &s).expect("edit");
    assert_eq!(decoded(&edited), s);
    assert!(contains_bytes(&edited, &ld(9, b"unknown")));
}

fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_json_secret_with_null_metadata_gets_labels() {
    let value = br#"{"kind":"Secret","apiVersion":"v1","metadata":null,"type":"Opaque"}"#;
    let mut s = decoded(value);
    s.metadata.labels.insert("a".into(), "b".into());
    let edited = edit(value, &s).expect("edit");
    assert_eq!(decoded(&edited), s);
}
