//! Hostile input over the network, against a real server on 127.0.0.1:0: malformed protobuf,
//! wrong wire types, strings that are not UTF-8, oversized and lying frames, thousands of data
//! keys and labels, selector bombs, huge and forged continue tokens, and random bytes on the
//! socket. Each gets a clear error (the gRPC code is asserted and the message names the field or
//! rule); a bystander client keeps being served throughout; and the memory of a `coffer serve`
//! child stays bounded over many rounds of all of it.
//!
//! Requests that a generated client cannot express go through [`RawCodec`] (a tonic client that
//! sends arbitrary bytes as the message) or through `h2` directly (a hand-built gRPC frame whose
//! length prefix may lie).

use coffer_testkit::server as server_common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::{Buf, BufMut, Bytes};
use coffer_server::proto::v1 as pb;
use prost::Message;
use server_common::{TestServer, create, get, list, secret, tcp_channel, with_labels};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::codec::{DecodeBuf, EncodeBuf};
use tonic::codegen::http;
use tonic::transport::Channel;

use coffer_testkit::process::{Proc, Serve};

// ---------------------------------------------------------------------------------------------
// Raw clients
// ---------------------------------------------------------------------------------------------

/// A codec whose messages are raw bytes: what is sent is exactly what the caller built.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut v = vec![0u8; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

/// Sends `body` as the request message of `method` (e.g. `Create`) of `coffer.v1.Secrets`.
async fn raw_call(
    channel: &Channel,
    method: &str,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone())
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?;
    let path =
        http::uri::PathAndQuery::try_from(format!("/coffer.v1.Secrets/{method}")).expect("path");
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// Sends `frames` (already framed, or not) as the whole request body of `method` over a fresh
/// HTTP/2 connection, and returns the gRPC status the server answers with.
async fn h2_call(addr: SocketAddr, method: &str, frames: Bytes) -> tonic::Status {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.expect("h2 ready");
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/coffer.v1.Secrets/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (resp, mut send) = client.send_request(req, false).expect("send request");
    send.reserve_capacity(frames.len());
    // The server may answer (ending the stream) before the body is all sent, e.g. on a frame
    // that declares more than the limit: then sending fails with an inactive stream, and the
    // answer below is what the test checks.
    if let Err(e) = send.send_data(frames, true) {
        assert!(
            format!("{e:?}").contains("InactiveStreamId"),
            "send data: {e:?}"
        );
    }
    let resp = tokio::time::timeout(Duration::from_secs(20), resp)
        .await
        .expect("the server answers in time")
        .expect("response");
    let (parts, mut body) = resp.into_parts();
    if let Some(s) = tonic::Status::from_header_map(&parts.headers) {
        return s;
    }
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body");
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.expect("trailers").unwrap_or_default();
    tonic::Status::from_header_map(&trailers).expect("a grpc-status in the trailers")
}

/// A gRPC frame: flag, big-endian length, then the bytes.
fn frame(flag: u8, declared_len: u32, payload: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(5 + payload.len());
    b.push(flag);
    b.extend_from_slice(&declared_len.to_be_bytes());
    b.extend_from_slice(payload);
    Bytes::from(b)
}

// ---------------------------------------------------------------------------------------------
// Protobuf building blocks
// ---------------------------------------------------------------------------------------------

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A length-delimited field.
fn ld(field: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(field << 3 | 2), &mut out);
    varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

/// A varint field.
fn vi(field: u32, v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(field << 3), &mut out);
    varint(v, &mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// The bystander
// ---------------------------------------------------------------------------------------------

/// A well-behaved client on its own connection that creates and reads Secrets in a loop while a
/// test is hostile; [`Bystander::finish`] checks that every one of its calls succeeded.
struct Bystander {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<u64, String>>,
}

impl Bystander {
    async fn start(ts: &TestServer, ns: &str) -> Self {
        let mut c = ts.client().await;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let ns = ns.to_owned();
        let task = tokio::spawn(async move {
            let mut ok = 0u64;
            let mut i = 0u64;
            while !flag.load(Ordering::Relaxed) || ok == 0 {
                let name = format!("b{i}");
                create(&mut c, secret(&ns, &name, &[("k", "v")]))
                    .await
                    .map_err(|e| format!("bystander create {name}: {e:?}"))?;
                let got = get(&mut c, &ns, &name)
                    .await
                    .map_err(|e| format!("bystander get {name}: {e:?}"))?;
                if got.data.get("k").map(Vec::as_slice) != Some(&b"v"[..]) {
                    return Err(format!("bystander read back wrong data for {name}"));
                }
                ok += 1;
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(ok)
        });
        Self { stop, task }
    }

    async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let served = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("bystander finishes")
            .expect("bystander task")
            .expect("every bystander call succeeds");
        assert!(served > 0);
    }
}

fn assert_invalid(e: &tonic::Status, starts: &str) {
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().starts_with(starts),
        "expected a message starting with {starts:?}, got {:?}",
        e.message()
    );
    assert!(e.message().len() <= 8 * 1024, "{}", e.message().len());
}

// ---------------------------------------------------------------------------------------------
// Malformed protobuf, wrong wire types, non-UTF-8
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_is_invalid_argument() {
    let ts = TestServer::start().await;
    let by = Bystander::start(&ts, "bystander").await;
    let ch = ts.channel().await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // A truncated varint tag.
        ("Create", vec![0x80]),
        // Field 1 says 100 bytes follow; 3 do.
        ("Create", vec![0x0a, 100, 1, 2, 3]),
        // A length whose varint never ends (11 continuation bytes).
        ("Get", [vec![0x0a], vec![0xff; 11]].concat()),
        // Field number 0 is invalid.
        ("List", vec![0x00, 0x01]),
        // Wire types 3/4 (groups) and 6/7 (unassigned).
        ("Get", vec![0x0b]),
        ("Get", vec![0x0e, 0x01]),
        ("Delete", vec![0x0f]),
        // Garbage.
        ("Update", vec![0xff; 64]),
        ("Watch", vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]),
    ];
    for (method, body) in cases {
        let e = raw_call(&ch, method, body.clone())
            .await
            .expect_err("malformed");
        assert_invalid(&e, "request is not a valid protobuf message: ");
    }
    // The server still answers well-formed calls on the same connection.
    let ok = raw_call(
        &ch,
        "Create",
        pb::CreateSecretRequest {
            secret: Some(secret("ns", "fine", &[("a", "b")])),
        }
        .encode_to_vec(),
    )
    .await
    .expect("well-formed create");
    let s = pb::Secret::decode(&ok[..]).expect("a Secret");
    assert_eq!(s.metadata.unwrap_or_default().name, "fine");
    assert_eq!(
        ts.running
            .metrics()
            .requests("Create", Code::InvalidArgument),
        2
    );
    assert_eq!(ts.running.metrics().requests("Create", Code::Internal), 0);
    by.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_wire_types_name_the_field() {
    let ts = TestServer::start().await;
    let by = Bystander::start(&ts, "bystander").await;
    let ch = ts.channel().await;
    // GetSecretRequest.namespace (a string) sent as a varint.
    let e = raw_call(&ch, "Get", vi(1, 7)).await.expect_err("wire type");
    assert_invalid(
        &e,
        "request is not a valid protobuf message: GetSecretRequest.namespace: invalid wire type",
    );
    // ListSecretsRequest.limit (a uint32) sent as bytes.
    let e = raw_call(&ch, "List", ld(4, b"ten"))
        .await
        .expect_err("wire type");
    assert_invalid(
        &e,
        "request is not a valid protobuf message: ListSecretsRequest.limit: invalid wire type",
    );
    // CreateSecretRequest.secret (a message) sent as a varint.
    let e = raw_call(&ch, "Create", vi(1, 1))
        .await
        .expect_err("wire type");
    assert_invalid(
        &e,
        "request is not a valid protobuf message: CreateSecretRequest.secret: invalid wire type",
    );
    // Deep inside: Secret.immutable (a bool) as bytes, inside the Secret inside the request.
    let e = raw_call(&ch, "Create", ld(1, &ld(5, b"yes")))
        .await
        .expect_err("wire type");
    assert_invalid(
        &e,
        "request is not a valid protobuf message: Secret.immutable: CreateSecretRequest.secret: invalid wire type",
    );
    // ObjectMeta.resource_version as a 64-bit fixed field.
    let mut fixed = Vec::new();
    varint(u64::from(4u32 << 3 | 1), &mut fixed);
    fixed.extend_from_slice(&[0u8; 8]);
    let e = raw_call(&ch, "Update", ld(1, &ld(1, &fixed)))
        .await
        .expect_err("wire type");
    assert_invalid(
        &e,
        "request is not a valid protobuf message: ObjectMeta.resource_version: ",
    );
    // Unknown fields of any wire type are skipped, as protobuf requires.
    let mut body = pb::GetSecretRequest {
        namespace: "ns".into(),
        name: "missing".into(),
        resource_version: 0,
    }
    .encode_to_vec();
    body.extend(vi(99, 5));
    body.extend(ld(100, b"ignored"));
    let e = raw_call(&ch, "Get", body).await.expect_err("not found");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    by.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strings_that_are_not_utf8_name_the_field() {
    let ts = TestServer::start().await;
    let by = Bystander::start(&ts, "bystander").await;
    let ch = ts.channel().await;
    let bad = [0x66, 0x6f, 0xff, 0xfe, 0x80];
    let e = raw_call(&ch, "Get", [ld(1, b"ns"), ld(2, &bad)].concat())
        .await
        .expect_err("utf-8");
    assert_invalid(
        &e,
        "request is not a valid protobuf message: GetSecretRequest.name: invalid string value: data is not UTF-8 encoded",
    );
    // ObjectMeta.name inside Secret inside CreateSecretRequest.
    let e = raw_call(
        &ch,
        "Create",
        ld(1, &ld(1, &[ld(1, &bad), ld(2, b"ns")].concat())),
    )
    .await
    .expect_err("utf-8");
    assert_invalid(
        &e,
        "request is not a valid protobuf message: ObjectMeta.name: Secret.metadata: CreateSecretRequest.secret: invalid string value",
    );
    // A label key (a map<string,string> entry) that is not UTF-8.
    let entry = [ld(1, &bad), ld(2, b"v")].concat();
    let e = raw_call(
        &ch,
        "Create",
        ld(
            1,
            &ld(1, &[ld(1, b"x"), ld(2, b"ns"), ld(6, &entry)].concat()),
        ),
    )
    .await
    .expect_err("utf-8");
    assert_invalid(
        &e,
        "request is not a valid protobuf message: ObjectMeta.labels: ",
    );
    // A data key (map<string,bytes>): the key must be UTF-8, the value need not be.
    let entry = [ld(1, &bad), ld(2, b"v")].concat();
    let e = raw_call(
        &ch,
        "Create",
        ld(
            1,
            &[ld(1, &[ld(1, b"x"), ld(2, b"ns")].concat()), ld(3, &entry)].concat(),
        ),
    )
    .await
    .expect_err("utf-8");
    assert_invalid(&e, "request is not a valid protobuf message: Secret.data: ");
    let entry = [ld(1, b"k"), ld(2, &bad)].concat();
    raw_call(
        &ch,
        "Create",
        ld(
            1,
            &[ld(1, &[ld(1, b"x"), ld(2, b"ns")].concat()), ld(3, &entry)].concat(),
        ),
    )
    .await
    .expect("binary data values are fine");
    // Selectors and continue tokens that are not UTF-8.
    let e = raw_call(&ch, "List", ld(2, &bad)).await.expect_err("utf-8");
    assert_invalid(
        &e,
        "request is not a valid protobuf message: ListSecretsRequest.label_selector: ",
    );
    let e = raw_call(&ch, "List", ld(5, &bad)).await.expect_err("utf-8");
    assert_invalid(
        &e,
        "request is not a valid protobuf message: ListSecretsRequest.continue_token: ",
    );
    by.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Oversized and lying frames
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_lying_frames() {
    let ts = TestServer::start().await;
    let by = Bystander::start(&ts, "bystander").await;
    let addr = ts.running.tcp_addr().expect("tcp");
    let ch = ts.channel().await;

    // 5 MiB of garbage through a normal client: refused by size before any decoding.
    let e = raw_call(&ch, "Create", vec![0xff; 5 << 20])
        .await
        .expect_err("too large");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("larger than the server accepts"),
        "{e:?}"
    );

    // A frame that declares 4 GiB - 1 and carries 3 bytes: refused on the header alone.
    let s = h2_call(addr, "Create", frame(0, u32::MAX, b"abc")).await;
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(
        s.message().contains("larger than the server accepts"),
        "{s:?}"
    );

    // A frame that declares 100 bytes and ends after 10.
    let s = h2_call(addr, "Get", frame(0, 100, &[0u8; 10])).await;
    assert_ne!(s.code(), Code::Ok, "{s:?}");
    assert!(!s.message().is_empty(), "{s:?}");

    // Half a frame header.
    let s = h2_call(addr, "Get", Bytes::from_static(&[0, 0, 0])).await;
    assert_ne!(s.code(), Code::Ok, "{s:?}");

    // A compressed flag with no grpc-encoding, and an undefined flag.
    for flag in [1u8, 2, 0xff] {
        let s = h2_call(addr, "Get", frame(flag, 2, &[0x0a, 0x00])).await;
        assert_ne!(s.code(), Code::Ok, "flag {flag}: {s:?}");
        assert!(!s.message().is_empty(), "flag {flag}: {s:?}");
    }

    // Two messages for a unary method.
    let one = pb::GetSecretRequest {
        namespace: "ns".into(),
        name: "a".into(),
        resource_version: 0,
    }
    .encode_to_vec();
    let two = [
        frame(0, one.len() as u32, &one).to_vec(),
        frame(0, one.len() as u32, &one).to_vec(),
    ]
    .concat();
    let s = h2_call(addr, "Get", Bytes::from(two)).await;
    assert_ne!(s.code(), Code::Ok, "{s:?}");

    // An empty body (no message at all) for a unary method.
    let s = h2_call(addr, "Get", Bytes::new()).await;
    assert_ne!(s.code(), Code::Ok, "{s:?}");

    // A method that does not exist.
    let s = h2_call(addr, "Explode", frame(0, 0, &[])).await;
    assert_eq!(s.code(), Code::Unimplemented, "{s:?}");

    // An empty message is a valid GetSecretRequest with empty fields.
    let s = h2_call(addr, "Get", frame(0, 0, &[])).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("namespace"), "{s:?}");
    by.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Big but well-formed objects
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_data_keys() {
    let ts = TestServer::start().await;
    let by = Bystander::start(&ts, "bystander").await;
    let mut c = ts.client().await;

    // 5000 valid keys: stored and read back whole.
    let mut s = secret("ns", "many-keys", &[]);
    for i in 0..5000 {
        s.data
            .insert(format!("key-{i:05}"), format!("{i}").into_bytes());
    }
    create(&mut c, s).await.expect("5000 keys");
    let got = get(&mut c, "ns", "many-keys").await.expect("get");
    assert_eq!(got.data.len(), 5000);
    assert_eq!(
        got.data.get("key-04999").map(Vec::as_slice),
        Some(&b"4999"[..])
    );

    // 20,000 invalid keys: one clear, capped message naming the first ones.
    let mut s = secret("ns", "bad-keys", &[]);
    for i in 0..20_000 {
        s.data.insert(format!("bad key {i:05}"), b"v".to_vec());
    }
    let e = create(&mut c, s).await.expect_err("invalid keys");
    assert_invalid(&e, "data[bad key 00000]: Invalid value");
    assert!(!e.message().contains("bad key 19999"), "{e:?}");

    // Keys at the length limit pass; one over fails and names the rule.
    let mut s = secret("ns", "long-key", &[]);
    s.data.insert("k".repeat(253), b"v".to_vec());
    create(&mut c, s).await.expect("253-char key");
    let mut s = secret("ns", "too-long-key", &[]);
    s.data.insert("k".repeat(254), b"v".to_vec());
    let e = create(&mut c, s).await.expect_err("254-char key");
    assert_invalid(&e, "data[kkk");
    assert!(e.message().contains("must be no more than 253"), "{e:?}");

    // Many keys whose values add up to more than 1 MiB.
    let mut s = secret("ns", "too-much-data", &[]);
    for i in 0..2000 {
        s.data.insert(format!("k{i}"), vec![b'x'; 600]);
    }
    let e = create(&mut c, s).await.expect_err("over 1 MiB");
    assert_invalid(&e, "data: Too long");
    by.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_labels() {
    let ts = TestServer::start().await;
    let by = Bystander::start(&ts, "bystander").await;
    let mut c = ts.client().await;
    let labels: Vec<(String, String)> = (0..10_000)
        .map(|i| (format!("example.com/label-{i:05}"), format!("value-{i}")))
        .collect();
    let refs: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    // Valid labels: Kubernetes has no count limit, nor does Coffer.
    create(&mut c, with_labels(secret("ns", "labelled", &[]), &refs))
        .await
        .expect("10,000 valid labels");
    let got = get(&mut c, "ns", "labelled").await.expect("get");
    assert_eq!(got.metadata.unwrap_or_default().labels.len(), 10_000);
    let page = list(
        &mut c,
        pb::ListSecretsRequest {
            namespace: "ns".into(),
            label_selector: "example.com/label-09999=value-9999,!missing".into(),
            ..Default::default()
        },
    )
    .await
    .expect("list by label");
    assert_eq!(page.items.len(), 1);

    // 10,000 invalid labels: a capped message naming metadata.labels.
    let bad: Vec<(String, String)> = (0..10_000)
        .map(|i| (format!("bad label {i}"), "v".to_owned()))
        .collect();
    let refs: Vec<(&str, &str)> = bad.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let e = create(&mut c, with_labels(secret("ns", "bad-labels", &[]), &refs))
        .await
        .expect_err("invalid labels");
    assert_invalid(&e, "metadata.labels: Invalid value");
    assert!(!e.message().contains("bad label 9999"), "{e:?}");
    by.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Selectors
// ---------------------------------------------------------------------------------------------

fn sel(labels: &str, fields: &str) -> pb::ListSecretsRequest {
    pb::ListSecretsRequest {
        label_selector: labels.into(),
        field_selector: fields.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_long_and_invalid_selectors() {
    let ts = TestServer::start().await;
    let by = Bystander::start(&ts, "bystander").await;
    let mut c = ts.client().await;
    create(
        &mut c,
        with_labels(secret("ns", "a", &[]), &[("app", "web"), ("tier", "gold")]),
    )
    .await
    .expect("create");

    // At the limits: 256 requirements, one long value list.
    let reqs: Vec<String> = (0..256).map(|i| format!("!k{i}")).collect();
    let page = list(&mut c, sel(&reqs.join(","), ""))
        .await
        .expect("256 terms");
    assert!(
        page.items
            .iter()
            .any(|s| s.metadata.as_ref().is_some_and(|m| m.name == "a"))
    );
    let values: Vec<String> = (0..1000).map(|i| format!("v{i}")).collect();
    let in_list = format!("app in (web,{})", values.join(","));
    assert!(in_list.len() < 16 * 1024);
    let page = list(&mut c, sel(&in_list, "")).await.expect("long in-list");
    assert_eq!(page.items.len(), 1);

    // Over the limits, deep and long: each refused with the field and the rule.
    let long_labels: Vec<(String, &str)> = vec![
        (format!("{},!k256", reqs.join(",")), "too many requirements"),
        (format!("a={}", "x".repeat(1 << 20)), "too long"),
        (format!("app in ({})", "(".repeat(10_000)), ""),
        ("(".repeat(16_000), ""),
        ("!".repeat(16_000), ""),
        (",".repeat(16_000), ""),
        ("a in (".repeat(2_000), ""),
        (format!("app in ({}", "x,".repeat(8_000)), ""),
        ("a=b".repeat(5_000), ""),
        ("=".repeat(16_000), ""),
    ];
    for (s, rule) in &long_labels {
        let e = list(&mut c, sel(s, ""))
            .await
            .expect_err("bad label selector");
        assert_invalid(&e, "labelSelector: ");
        assert!(e.message().contains(rule), "{rule}: {e:?}");
    }
    let long_fields: Vec<(String, &str)> = vec![
        (vec!["type=x"; 257].join(","), "too many requirements"),
        (format!("metadata.name={}", "x".repeat(1 << 20)), "too long"),
        ("\\".repeat(16_000), ""),
        (format!("metadata.name={}", "\\".repeat(15_001)), ""),
        ("=".repeat(16_000), ""),
    ];
    for (s, rule) in &long_fields {
        let e = list(&mut c, sel("", s))
            .await
            .expect_err("bad field selector");
        assert_invalid(&e, "fieldSelector: ");
        assert!(e.message().contains(rule), "{rule}: {e:?}");
    }

    // Invalid selectors, short ones.
    for s in [
        "tier in (gold",
        "tier in gold)",
        "in (x)",
        "a!=b!=c",
        "a in (b) c",
        "-bad-=x",
        "a=-bad-",
        "a b",
        "a>b",
        "a<x>",
        "a=b,,c",
        "example.com/=x",
        "/a=x",
        "a\u{0}=b",
        "ключ=значение",
    ] {
        let e = list(&mut c, sel(s, "")).await.expect_err(s);
        assert_invalid(&e, "labelSelector: ");
    }
    for s in [
        "metadata.uid=x",
        "metadata.labels=x",
        "data.password=x",
        "type",
        "type<x",
        "=x",
        "metadata.name=a\\",
        "metadata.name=a\\q",
    ] {
        let e = list(&mut c, sel("", s)).await.expect_err(s);
        assert_invalid(&e, "fieldSelector: ");
    }
    let e = list(&mut c, sel("", "metadata.uid=x"))
        .await
        .expect_err("unsupported");
    assert!(e.message().contains("field label not supported"), "{e:?}");

    // The same selectors through Watch and WatchMany are refused as clearly.
    let e = c
        .watch(pb::WatchSecretsRequest {
            label_selector: "(".repeat(16_000),
            ..Default::default()
        })
        .await
        .expect_err("watch with a bad selector");
    assert_invalid(&e, "labelSelector: ");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::WatchManyRequest {
        op: Some(pb::watch_many_request::Op::Create(pb::WatchCreate {
            watch_id: 7,
            watch: Some(pb::WatchSecretsRequest {
                field_selector: "metadata.uid=x".into(),
                ..Default::default()
            }),
        })),
    })
    .await
    .expect("send");
    let mut events = c
        .watch_many(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("watch many")
        .into_inner();
    let ev = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("answer in time")
        .expect("stream")
        .expect("an event");
    assert_eq!(ev.watch_id, 7);
    assert!(ev.canceled, "{ev:?}");
    assert_eq!(ev.error_code, Code::InvalidArgument as i32, "{ev:?}");
    assert!(ev.error_message.contains("fieldSelector"), "{ev:?}");
    drop(tx);
    by.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Continue tokens
// ---------------------------------------------------------------------------------------------

fn token(json: &str) -> String {
    URL_SAFE_NO_PAD.encode(json.as_bytes())
}

fn page(ns: &str, continue_token: String) -> pb::ListSecretsRequest {
    pb::ListSecretsRequest {
        namespace: ns.into(),
        limit: 2,
        continue_token,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_and_forged_continue_tokens() {
    let ts = TestServer::start().await;
    let by = Bystander::start(&ts, "bystander").await;
    let mut c = ts.client().await;
    for ns in ["team-a", "team-b"] {
        for i in 0..5 {
            create(&mut c, secret(ns, &format!("s{i}"), &[("k", "v")]))
                .await
                .expect("create");
        }
    }
    let first = list(&mut c, page("team-a", String::new()))
        .await
        .expect("page 1");
    assert!(!first.continue_token.is_empty());
    let rv = first.resource_version;

    // Huge: refused before decoding, in a short message.
    for len in [4097usize, 1 << 20, 3 << 20] {
        let e = list(&mut c, page("team-a", "A".repeat(len)))
            .await
            .expect_err("huge token");
        assert_invalid(&e, "continue: invalid continue token: too long");
    }

    // Forged: valid base64url of crafted content.
    let cases: Vec<(String, &str)> = vec![
        ("!!!not base64!!!".into(), "not base64url"),
        (URL_SAFE_NO_PAD.encode([0xffu8, 0xfe, 0x00]), "malformed"),
        (token("null"), "malformed"),
        (token("[]"), "malformed"),
        (token("{}"), "malformed"),
        (token(r#"{"v":1,"rv":1}"#), "malformed"),
        (
            token(r#"{"v":1,"rv":-1,"start":"s/team-a/s0"}"#),
            "malformed",
        ),
        (
            token(r#"{"v":1,"rv":1e400,"start":"s/team-a/s0"}"#),
            "malformed",
        ),
        (
            token(r#"{"v":1,"rv":18446744073709551616,"start":"s/team-a/s0"}"#),
            "malformed",
        ),
        (
            token(r#"{"v":256,"rv":1,"start":"s/team-a/s0"}"#),
            "malformed",
        ),
        (token(r#"{"v":1,"rv":1,"start":7}"#), "malformed"),
        (
            token(&format!("{}1{}", "[".repeat(1000), "]".repeat(1000))),
            "malformed",
        ),
        (
            token(r#"{"v":2,"rv":1,"start":"s/team-a/s0"}"#),
            "unknown version",
        ),
        // Another namespace's keys from a namespaced list: never widens the scope.
        (
            token(r#"{"v":1,"rv":1,"start":"s/team-b/s0"}"#),
            "does not belong",
        ),
        (
            token(r#"{"v":1,"rv":1,"start":"s/team-a"}"#),
            "does not belong",
        ),
        (token(r#"{"v":1,"rv":1,"start":"x"}"#), "does not belong"),
        (token(r#"{"v":1,"rv":1,"start":""}"#), "does not belong"),
        // A revision from the future.
        (
            token(&format!(
                r#"{{"v":1,"rv":{},"start":"s/team-a/s0"}}"#,
                u64::MAX
            )),
            "newer than the store",
        ),
    ];
    for (t, rule) in &cases {
        let e = list(&mut c, page("team-a", t.clone()))
            .await
            .expect_err("forged token");
        assert_invalid(&e, "continue: invalid continue token: ");
        assert!(e.message().contains(rule), "{t}: {rule}: {e:?}");
    }

    // A well-formed token inside the caller's scope only moves where the list starts.
    let t = token(&format!(r#"{{"v":1,"rv":{rv},"start":"s/team-a/s2"}}"#));
    let p = list(&mut c, page("team-a", t))
        .await
        .expect("forged but in scope");
    assert_eq!(server_common::names(&p.items), ["team-a/s3", "team-a/s4"]);
    // Past the end: an empty last page.
    let t = token(&format!(
        "{{\"v\":1,\"rv\":{rv},\"start\":\"s/team-a/\u{10ffff}\"}}"
    ));
    let p = list(&mut c, page("team-a", t)).await.expect("past the end");
    assert!(p.items.is_empty() && p.continue_token.is_empty(), "{p:?}");
    // A real token from team-a used for team-b is refused.
    let e = list(&mut c, page("team-b", first.continue_token.clone()))
        .await
        .expect_err("other namespace");
    assert_invalid(&e, "continue: invalid continue token: does not belong");
    by.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Bytes on the socket
// ---------------------------------------------------------------------------------------------

/// Writes `bytes` on a fresh TCP connection and reads until the server closes it (or `wait`
/// passes); returns whether the server closed it.
async fn raw_socket(addr: SocketAddr, bytes: &[u8], wait: Duration) -> bool {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may close before reading everything; a reset is a close too.
    let _ = s.write_all(bytes).await;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), so that a failure can be replayed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_on_the_socket() {
    let ts = TestServer::start().await;
    let by = Bystander::start(&ts, "bystander").await;
    let addr = ts.running.tcp_addr().expect("tcp");
    let wait = Duration::from_secs(10);

    // Garbage instead of a preface: closed at once.
    for seed in 1..=20u64 {
        let len = [1usize, 24, 100, 4096, 65_536][(seed % 5) as usize];
        assert!(
            raw_socket(addr, &noise(seed, len), wait).await,
            "seed {seed}"
        );
    }
    // HTTP/1.1 to an HTTP/2-only port.
    assert!(raw_socket(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", wait).await);
    // A full preface followed by garbage frames: a protocol error, the connection closed.
    for seed in 100..110u64 {
        let bytes = [PREFACE, &noise(seed, 4096)].concat();
        assert!(raw_socket(addr, &bytes, wait).await, "seed {seed}");
    }
    // A preface and a frame header that declares a 16 MiB frame.
    let bytes = [PREFACE, &[0xff, 0xff, 0xff, 0x00, 0x00, 0, 0, 0, 0][..]].concat();
    assert!(raw_socket(addr, &bytes, wait).await);

    // Half a preface, then silence, from many connections at once: the server keeps serving
    // others meanwhile, and closes the silent ones after its handshake timeout.
    let mut silent = Vec::new();
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(&PREFACE[..10]).await.expect("write");
        silent.push(s);
    }
    let mut c = ts.client().await;
    create(&mut c, secret("ns", "during-silence", &[]))
        .await
        .expect("served while 50 connections hang");
    let started = Instant::now();
    for mut s in silent {
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a half-open connection was not closed");
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    by.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------------

/// `coffer serve` as a child process (so that its memory is its own), also on a free TCP port;
/// returns it and that address.
fn serve_child(dir: &Path) -> (Proc, SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let serve = Serve::new(dir)
        .listen_tcp(addr)
        .env("RUST_LOG", "warn")
        .log_file("serve.log")
        .start();
    (serve, addr)
}

/// One round of everything above, against `addr`.
async fn hostile_round(addr: SocketAddr, ch: &Channel, round: u64) {
    let _ = raw_call(ch, "Create", vec![0xff; 5 << 20]).await;
    let _ = h2_call(addr, "Create", frame(0, u32::MAX, b"abc")).await;
    let _ = raw_call(ch, "Create", noise(round, 4096)).await;
    let _ = raw_call(ch, "Get", [ld(1, b"ns"), ld(2, &[0xff, 0xfe])].concat()).await;
    let mut c = coffer_server::proto::v1::secrets_client::SecretsClient::new(ch.clone())
        .max_encoding_message_size(64 << 20);
    let mut s = secret("ns", &format!("bad-{round}"), &[]);
    for i in 0..2000 {
        s.data.insert(format!("bad key {i}"), b"v".to_vec());
    }
    let _ = create(&mut c, s).await;
    let labels: Vec<(String, String)> = (0..2000)
        .map(|i| (format!("l{i}"), format!("v{round}")))
        .collect();
    let refs: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    // Valid labels on an invalid name: decoded, validated and refused. (Accepted writes are
    // left out: the watch window and sled's cache legitimately grow with them, up to their
    // configured bounds, which would hide what hostile requests cost.)
    let _ = create(&mut c, with_labels(secret("ns", "Not_A_Name", &[]), &refs)).await;
    let _ = list(&mut c, sel(&"(".repeat(16_000), "")).await;
    let _ = list(&mut c, sel(&format!("a={}", "x".repeat(1 << 20)), "")).await;
    let _ = list(&mut c, page("ns", "A".repeat(3 << 20))).await;
    let _ = list(
        &mut c,
        page("ns", token(r#"{"v":1,"rv":1,"start":"s/other/x"}"#)),
    )
    .await;
    let _ = raw_socket(addr, &noise(round + 1000, 8192), Duration::from_secs(5)).await;
    let _ = raw_socket(
        addr,
        &[PREFACE, &noise(round + 2000, 4096)].concat(),
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_under_hostile_rounds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, addr) = serve_child(dir.path());
    let ch = tcp_channel(addr).await;
    // A bystander on its own connection throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let by = {
        let ch = tcp_channel(addr).await;
        let (stop, served) = (stop.clone(), served.clone());
        tokio::spawn(async move {
            let mut c = coffer_server::proto::v1::secrets_client::SecretsClient::new(ch);
            create(&mut c, secret("bystander", "b", &[("k", "v")]))
                .await
                .expect("bystander create");
            while !stop.load(Ordering::Relaxed) {
                let got = get(&mut c, "bystander", "b").await.expect("bystander get");
                assert_eq!(got.data.get("k").map(Vec::as_slice), Some(&b"v"[..]));
                served.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    // Warm up: allocator arenas, sled caches, connection buffers.
    for round in 0..5 {
        hostile_round(addr, &ch, round).await;
    }
    let before = server.rss_kib();
    // HOSTILE_ROUNDS=N for a longer run (the README's long run uses 1000).
    let rounds: u64 = std::env::var("HOSTILE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let mut peak = before;
    for round in 5..5 + rounds {
        hostile_round(addr, &ch, round).await;
        let rss = server.rss_kib();
        peak = peak.max(rss);
        if round % 20 == 0 {
            eprintln!("round {round}: RSS {rss} KiB");
        }
    }
    let after = server.rss_kib();
    stop.store(true, Ordering::Relaxed);
    by.await.expect("bystander");
    assert!(served.load(Ordering::Relaxed) > 0);
    eprintln!(
        "coffer serve RSS over {rounds} hostile rounds: {before} KiB -> {after} KiB (peak {peak} KiB)"
    );
    // Generous: a round sends about 12 MiB of hostile bytes; a leak of even a fraction of
    // them per round would pass this bound many times over.
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB over {rounds} rounds"
    );
    assert!(peak < 512 * 1024, "peak RSS {peak} KiB");
}
