//! Quotas and server-wide limits through the wire: a real server on 127.0.0.1:0 over a store with
//! per-namespace quotas, and with a watch-stream cap and a request rate.
//!
//! Quotas: exhaustion and recovery after delete (count and bytes), the exact Kubernetes-style
//! message, an update that grows past the bytes quota, concurrent creates that race for the last
//! places, and usage that is the same after a restart. Limits: the watch-stream cap (Watch and
//! WatchMany) and the rate limit, each refusing with RESOURCE_EXHAUSTED and recovering.

use coffer_testkit::engine as common;
use coffer_testkit::server as server_common;

use std::time::Duration;

use coffer_core::store::{QuotaLimits, Quotas, StoreConfig};
use coffer_server::proto::v1 as pb;
use coffer_server::proto::v1::secrets_client::SecretsClient;
use coffer_server::server::ServerOptions;
use coffer_server::server::limits::LimitOptions;
use common::{TestKms, open_store};
use server_common::*;
use tonic::Code;
use tonic::transport::Channel;

/// A value no message may ever contain.
const CANARY: &str = "canary-9f3c2e-do-not-echo";

/// A server over a store with `quotas`, and with `limits`.
async fn limited(quotas: Quotas, limits: LimitOptions) -> TestServer {
    TestServer::builder()
        .store_config(StoreConfig {
            quotas,
            ..StoreConfig::default()
        })
        .options(ServerOptions {
            limits,
            ..test_options()
        })
        .start()
        .await
}

fn count(n: u64) -> QuotaLimits {
    QuotaLimits {
        count: Some(n),
        bytes: None,
    }
}

fn bytes(n: u64) -> QuotaLimits {
    QuotaLimits {
        count: None,
        bytes: Some(n),
    }
}

/// A Secret whose one value is `len` bytes (the canary, padded).
fn sized(ns: &str, name: &str, len: usize) -> pb::Secret {
    let mut value = CANARY.repeat(len / CANARY.len() + 1);
    value.truncate(len);
    secret(ns, name, &[("v", &value)])
}

#[track_caller]
fn assert_exhausted(r: Result<pb::Secret, tonic::Status>, message: &str) {
    let e = r.expect_err("over quota");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(e.message(), message);
}

/// Parses `exceeded quota: q, requested: r=A, used: r=B, limited: r=C` into (A, B, C).
fn numbers(message: &str, resource: &str) -> (u64, u64, u64) {
    let get = |label: &str| -> u64 {
        let start = message
            .find(&format!("{label}: {resource}="))
            .unwrap_or_else(|| panic!("{label} in {message}"))
            + label.len()
            + resource.len()
            + 3;
        message[start..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{label} number in {message}"))
    };
    (get("requested"), get("used"), get("limited"))
}

#[tokio::test]
async fn count_quota_is_exhausted_then_recovers_after_delete() {
    let quotas = Quotas::unlimited()
        .with_default(count(3))
        .with_namespace("team", count(1));
    let ts = limited(quotas, LimitOptions::default()).await;
    let mut c = ts.client().await;
    for i in 0..3 {
        create(&mut c, sized("a", &format!("s{i}"), 10))
            .await
            .expect("within quota");
    }
    assert_exhausted(
        create(&mut c, sized("a", "s3", 10)).await,
        "exceeded quota: default, requested: count/secrets=1, used: count/secrets=3, limited: count/secrets=3",
    );
    // The refused create wrote nothing.
    assert_eq!(
        get(&mut c, "a", "s3").await.expect_err("absent").code(),
        Code::NotFound
    );
    assert_eq!(ts.store.quota_usage("a").count, 3);
    // Each namespace has its own usage; an override replaces the default and names its quota.
    create(&mut c, sized("b", "s0", 10)).await.expect("ns b");
    create(&mut c, sized("team", "s0", 10)).await.expect("team");
    assert_exhausted(
        create(&mut c, sized("team", "s1", 10)).await,
        "exceeded quota: team, requested: count/secrets=1, used: count/secrets=1, limited: count/secrets=1",
    );
    // Updates need no count room.
    let mut s = sized("a", "s0", 12);
    meta_mut(&mut s).resource_version = 0;
    update(&mut c, s).await.expect("update within quota");
    // Delete, and the place is free again.
    delete(&mut c, "a", "s1", 0).await.expect("delete");
    assert_eq!(ts.store.quota_usage("a").count, 2);
    create(&mut c, sized("a", "s3", 10))
        .await
        .expect("room after delete");
    assert_exhausted(
        create(&mut c, sized("a", "s4", 10)).await,
        "exceeded quota: default, requested: count/secrets=1, used: count/secrets=3, limited: count/secrets=3",
    );
    // Over-quota rejections are counted as RESOURCE_EXHAUSTED in the RPC metrics.
    assert_eq!(
        ts.running
            .metrics()
            .requests("Create", Code::ResourceExhausted),
        3
    );
}

#[tokio::test]
async fn bytes_quota_is_exhausted_then_recovers_after_delete() {
    let limit = 2600;
    let ts = limited(
        Quotas::unlimited().with_namespace("a", bytes(limit)),
        LimitOptions::default(),
    )
    .await;
    let mut c = ts.client().await;
    create(&mut c, sized("a", "one", 1000)).await.expect("one");
    let one = ts.store.quota_usage("a").bytes;
    assert!(
        one > 1000 && one < 1300,
        "a record is its data plus overhead: {one}"
    );
    create(&mut c, sized("a", "two", 1000)).await.expect("two");
    let used = ts.store.quota_usage("a").bytes;
    let e = create(&mut c, sized("a", "three", 1000))
        .await
        .expect_err("over the bytes quota");
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(
        e.message()
            .starts_with("exceeded quota: a, requested: bytes/secrets="),
        "{e:?}"
    );
    assert!(!e.message().contains(CANARY), "no data in the message");
    let (requested, u, limited) = numbers(e.message(), "bytes/secrets");
    assert_eq!((u, limited), (used, limit));
    assert!(requested > 1000 && used + requested > limit, "{e:?}");
    // Another namespace has no quota.
    create(&mut c, sized("free", "big", 100_000))
        .await
        .expect("unlimited namespace");
    delete(&mut c, "a", "one", 0).await.expect("delete");
    assert_eq!(ts.store.quota_usage("a").bytes, used - one);
    create(&mut c, sized("a", "three", 1000))
        .await
        .expect("room after delete");
}

#[tokio::test]
async fn an_update_that_grows_past_the_bytes_quota_is_rejected() {
    let limit = 2000;
    let ts = limited(
        Quotas::unlimited().with_default(bytes(limit)),
        LimitOptions::default(),
    )
    .await;
    let mut c = ts.client().await;
    let created = create(&mut c, sized("a", "s", 500)).await.expect("create");
    let used = ts.store.quota_usage("a").bytes;
    let e = update(&mut c, sized("a", "s", 1900))
        .await
        .expect_err("grows past the quota");
    assert_eq!(e.code(), Code::ResourceExhausted);
    let (requested, u, limited) = numbers(e.message(), "bytes/secrets");
    assert_eq!((u, limited), (used, limit));
    assert!(requested >= 1400, "the growth is requested: {e:?}");
    assert!(!e.message().contains(CANARY));
    // Nothing changed.
    let now = get(&mut c, "a", "s").await.expect("get");
    assert_eq!(rv(&now), rv(&created));
    assert_eq!(now.data["v"].len(), 500);
    assert_eq!(ts.store.quota_usage("a").bytes, used);
    // Growing within the quota, and shrinking, pass.
    update(&mut c, sized("a", "s", 1000))
        .await
        .expect("grow within");
    update(&mut c, sized("a", "s", 10)).await.expect("shrink");
    assert!(ts.store.quota_usage("a").bytes < used);
}

/// Concurrent Creates of one name land in one group commit: each passes the check of the key
/// against the store before the group, one is written, the others fail their condition. Only
/// the one written counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creates_of_one_name_count_once() {
    let ts = limited(
        Quotas::unlimited().with_namespace("same", count(1000)),
        LimitOptions::default(),
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..32 {
        clients.push(ts.client().await);
    }
    for round in 0..40 {
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(clients.len()));
        let mut tasks = Vec::new();
        for c in &clients {
            let (mut c, start) = (c.clone(), start.clone());
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                create(&mut c, sized("same", &format!("s{round}"), 100))
                    .await
                    .map_err(|e| e.code())
            }));
        }
        let mut created = 0;
        for t in tasks {
            match t.await.expect("task") {
                Ok(_) => created += 1,
                Err(code) => assert_eq!(code, Code::AlreadyExists),
            }
        }
        assert_eq!(created, 1, "round {round}");
        let usage = ts.store.quota_usage("same");
        assert_eq!(usage.count, round + 1, "round {round}: {usage:?}");
    }
}

#[tokio::test]
async fn concurrent_creates_never_exceed_the_quota() {
    let ts = limited(
        Quotas::unlimited()
            .with_namespace("race", count(10))
            .with_namespace("bytes", bytes(12_000)),
        LimitOptions::default(),
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        let mut c = ts.client().await;
        tasks.push(tokio::spawn(async move {
            let (ns, len) = if i % 2 == 0 {
                ("race", 10)
            } else {
                ("bytes", 1000)
            };
            create(&mut c, sized(ns, &format!("s{i}"), len))
                .await
                .map_err(|e| e.code())
        }));
    }
    let mut ok = [0usize; 2];
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.expect("task") {
            Ok(_) => ok[i % 2] += 1,
            Err(code) => assert_eq!(code, Code::ResourceExhausted),
        }
    }
    assert_eq!(ok[0], 10, "exactly the quota's count");
    let usage = ts.store.quota_usage("bytes");
    assert!(usage.bytes <= 12_000, "{usage:?}");
    assert_eq!(ok[1] as u64, usage.count);
    assert!(ok[1] >= 9, "about 11 records of ~1.1 KB fit: {}", ok[1]);
    let mut c = ts.client().await;
    for (ns, n) in [("race", ok[0]), ("bytes", ok[1])] {
        let page = list(
            &mut c,
            pb::ListSecretsRequest {
                namespace: ns.into(),
                ..pb::ListSecretsRequest::default()
            },
        )
        .await
        .expect("list");
        assert_eq!(page.items.len(), n, "{ns}");
    }
}

#[tokio::test]
async fn quota_usage_is_the_same_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kms = TestKms::open(dir.path(), 1);
    let config = || StoreConfig {
        quotas: Quotas::unlimited().with_default(QuotaLimits {
            count: Some(3),
            bytes: Some(1_000_000),
        }),
        ..StoreConfig::default()
    };
    let before = {
        let (store, _backend) = open_store(dir.path(), kms.clone(), config()).await;
        for i in 0..3 {
            store
                .create(coffer_server::server::convert::secret_from_proto(sized(
                    "a",
                    &format!("s{i}"),
                    100 * (i + 1),
                )))
                .await
                .expect("create");
        }
        store
            .update(coffer_server::server::convert::secret_from_proto(sized(
                "a", "s0", 700,
            )))
            .await
            .expect("update");
        store.delete("a", "s1", 0).await.expect("delete");
        store
            .create(coffer_server::server::convert::secret_from_proto(sized(
                "b", "x", 50,
            )))
            .await
            .expect("create b");
        store.sync().await.expect("sync");
        (store.quota_usage("a"), store.quota_usage("b"))
    };
    assert_eq!(before.0.count, 2);
    // Reopen: usage is recomputed from the records and matches exactly.
    let (store, _backend) = open_store(dir.path(), kms, config()).await;
    assert_eq!((store.quota_usage("a"), store.quota_usage("b")), before);
    store
        .create(coffer_server::server::convert::secret_from_proto(sized(
            "a", "s3", 10,
        )))
        .await
        .expect("third place");
    let e = store
        .create(coffer_server::server::convert::secret_from_proto(sized(
            "a", "s4", 10,
        )))
        .await
        .expect_err("full after restart");
    assert_eq!(
        e.to_string(),
        "exceeded quota: default, requested: count/secrets=1, used: count/secrets=3, limited: count/secrets=3"
    );
}

async fn open_watch(
    c: &mut SecretsClient<Channel>,
) -> Result<tonic::Streaming<pb::WatchEvent>, tonic::Status> {
    c.watch(pb::WatchSecretsRequest {
        namespace: "a".into(),
        ..pb::WatchSecretsRequest::default()
    })
    .await
    .map(tonic::Response::into_inner)
}

async fn open_watch_many(
    c: &mut SecretsClient<Channel>,
) -> Result<
    (
        tokio::sync::mpsc::Sender<pb::WatchManyRequest>,
        tonic::Streaming<pb::WatchManyEvent>,
    ),
    tonic::Status,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let stream = c
        .watch_many(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, stream))
}

#[tokio::test]
async fn the_watch_stream_cap_refuses_then_recovers_when_streams_close() {
    let ts = limited(
        Quotas::unlimited(),
        LimitOptions {
            max_watch_streams: Some(2),
            ..LimitOptions::default()
        },
    )
    .await;
    let mut c = ts.client().await;
    let first = open_watch(&mut c).await.expect("first stream");
    let (many_tx, many) = open_watch_many(&mut c).await.expect("second stream");
    let message = "too many watch streams: the server's limit of 2 concurrent Watch and WatchMany \
                   streams is reached; retry later, or multiplex watches over one WatchMany stream";
    let e = open_watch(&mut c).await.expect_err("third Watch");
    assert_eq!((e.code(), e.message()), (Code::ResourceExhausted, message));
    let e = open_watch_many(&mut c).await.expect_err("third WatchMany");
    assert_eq!((e.code(), e.message()), (Code::ResourceExhausted, message));
    // Unary calls are not watch streams.
    create(&mut c, sized("a", "s", 10)).await.expect("create");
    // A watch refused by the service (bad selector) does not keep a place: after it, still one.
    drop(first);
    for _ in 0..5 {
        let e = c
            .watch(pb::WatchSecretsRequest {
                label_selector: "a in (".into(),
                ..pb::WatchSecretsRequest::default()
            })
            .await;
        let code = match e {
            Err(s) => s.code(),
            Ok(r) => {
                let mut s = r.into_inner();
                match s.message().await {
                    Err(s) => s.code(),
                    Ok(_) => Code::Ok,
                }
            }
        };
        // INVALID_ARGUMENT once the closed stream's place is back; never a leak of places.
        assert!(
            matches!(code, Code::InvalidArgument | Code::ResourceExhausted),
            "{code:?}"
        );
    }
    // The first stream's place comes back once the server sees it closed; then the cap holds
    // again, and closing the WatchMany stream frees its place too.
    let mut c2 = ts.client().await;
    let _held = open_eventually(&mut c2).await;
    let e = open_watch(&mut c2).await.expect_err("at the cap again");
    assert_eq!(e.code(), Code::ResourceExhausted);
    drop((many_tx, many));
    let _held_too = open_eventually(&mut c2).await;
    assert_eq!(
        open_watch(&mut c2).await.expect_err("at the cap").code(),
        Code::ResourceExhausted
    );
    let text = ts.running.metrics().render(None);
    assert!(
        text.contains("coffer_limit_rejections_total{limit=\"watch_streams\"}"),
        "{text}"
    );
    let rejected: u64 = text
        .lines()
        .find(|l| l.starts_with("coffer_limit_rejections_total{limit=\"watch_streams\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(rejected >= 4, "{text}");
}

/// Opens a Watch, retrying for up to 10 s while the cap refuses it.
async fn open_eventually(c: &mut SecretsClient<Channel>) -> tonic::Streaming<pb::WatchEvent> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match open_watch(c).await {
            Ok(s) => return s,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "a closed stream's place was never given back"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test]
async fn the_rate_limit_refuses_then_recovers() {
    let ts = limited(
        Quotas::unlimited(),
        LimitOptions {
            // One token every 5 s: nothing refills while the test makes its calls, even on a
            // loaded machine.
            max_request_rate: Some(0.2),
            request_burst: Some(3),
            ..LimitOptions::default()
        },
    )
    .await;
    let mut c = ts.client().await;
    for _ in 0..3 {
        let e = get(&mut c, "a", "missing").await.expect_err("absent");
        assert_eq!(e.code(), Code::NotFound, "admitted: {e:?}");
    }
    let e = get(&mut c, "a", "missing").await.expect_err("limited");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(
        e.message(),
        "rate limit exceeded: the server accepts at most 0.2 requests per second (burst 3); retry later"
    );
    // Watch streams are calls too.
    let e = open_watch(&mut c).await.expect_err("limited watch");
    assert_eq!(e.code(), Code::ResourceExhausted);
    // Health checks are never limited.
    let mut health = tonic_health::pb::health_client::HealthClient::new(ts.channel().await);
    for _ in 0..20 {
        health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .expect("health is not rate limited");
    }
    // A token comes back after 5 s.
    tokio::time::sleep(Duration::from_millis(5200)).await;
    let e = get(&mut c, "a", "missing").await.expect_err("absent");
    assert_eq!(e.code(), Code::NotFound, "admitted again: {e:?}");
    assert!(
        ts.running
            .metrics()
            .render(None)
            .contains("coffer_limit_rejections_total{limit=\"request_rate\"} 2")
    );
}
