//! Issue 17 on etcd storage (items 3 and 5): an older ciphertext of a Secret put back with
//! `etcdctl put` is answered DATA_LOSS (Get and List) by a real `coffer serve --storage`
//! replica, which logs it, and `coffer verify --storage` reports it (the record and the state
//! digest) and exits 1; a clean store verifies; the digest kept in etcd stays exact while two
//! replicas write the same keys at once.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use coffer_core::kms::LocalKek;
use coffer_core::model::Secret;
use coffer_core::store::{Store, StoreConfig, StoreError};
use coffer_server::proto::v1 as pb;
use coffer_server::proto::v1::secrets_client::SecretsClient;
use coffer_testkit::etcd::{EtcdCluster, etcd_store, pb as etcdpb, require};
use coffer_testkit::process::{Proc, Serve, coffer_bin, run};
use coffer_testkit::server::{create, get, list, secret, unix_channel};

fn replica(dir: &Path, url: &str, kek: &Path) -> Proc {
    std::fs::create_dir_all(dir).expect("dir");
    Serve::new(dir)
        .args(&["--storage", url, "--kek-file", &kek.display().to_string()])
        .start()
}

/// `coffer verify --storage URL --kek-file KEK [-o json]`.
fn verify(url: &str, kek: &Path, extra: &[&str]) -> coffer_testkit::process::Run {
    let kek = kek.display().to_string();
    let mut args = vec!["verify", "--storage", url, "--kek-file", &kek];
    args.extend_from_slice(extra);
    run(coffer_bin(), &args, &[])
}

/// The raw etcd value of `key`.
async fn etcd_value(etcd: &EtcdCluster, key: &str) -> Vec<u8> {
    let mut kv = etcd.clients(0).kv;
    let resp = kv
        .range(etcdpb::RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    resp.kvs.into_iter().next().expect("the key exists").value
}

/// `etcdctl put KEY` with `value` on stdin (binary-safe): what an attacker with etcd access
/// does.
fn etcdctl_put(etcd: &EtcdCluster, key: &str, value: &[u8]) {
    let mut child = Command::new(require("etcdctl"))
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", etcd.addr(0)))
        .arg("put")
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run etcdctl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(value)
        .expect("write stdin");
    let out = child.wait_with_output().expect("etcdctl");
    assert!(
        out.status.success(),
        "etcdctl put failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcdctl_replay_is_data_loss_and_verify_reports_it() {
    let etcd = EtcdCluster::start(1).await;
    let url = etcd.storage_url("/coffer");
    let tmp = tempfile::tempdir().expect("tempdir");
    let kek = tmp.path().join("kek.key");
    LocalKek::create_new(&kek).expect("kek");
    let dir = tmp.path().join("r0");
    let server = replica(&dir, &url, &kek);
    let mut c = SecretsClient::new(unix_channel(&dir.join("coffer.sock")).await);
    create(&mut c, secret("ns", "a", &[("password", "v1")]))
        .await
        .expect("create a");
    create(&mut c, secret("ns", "b", &[("password", "b1")]))
        .await
        .expect("create b");

    // A clean store verifies, while the replica runs.
    let clean = verify(&url, &kek, &[]);
    let out = clean.ok();
    assert!(out.contains("ok, no mismatch"), "{clean:?}");
    assert!(out.contains("(2 Secrets)"), "{clean:?}");
    let json = verify(&url, &kek, &["-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(json.ok()).expect("json");
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["revision"].as_u64().unwrap_or(0) > 0, "{v}");

    // The attacker keeps the first ciphertext of ns/a; the Secret moves on to v2.
    let key = "/coffer/v/s/ns/a";
    let old = etcd_value(&etcd, key).await;
    let mut a = get(&mut c, "ns", "a").await.expect("get a");
    a.data.insert("password".into(), b"v2".to_vec());
    c.update(pb::UpdateSecretRequest { secret: Some(a) })
        .await
        .expect("update a");

    // ... and puts the old ciphertext back.
    etcdctl_put(&etcd, key, &old);
    let sock = dir.join("coffer.sock");
    let refused = coffer_testkit::server::eventually(10, || {
        let sock = sock.clone();
        async move {
            let mut c = SecretsClient::new(unix_channel(&sock).await);
            matches!(get(&mut c, "ns", "a").await, Err(s) if s.code() == tonic::Code::DataLoss)
        }
    })
    .await;
    assert!(
        refused,
        "the replayed record was served: {}",
        server.log_text()
    );
    let e = get(&mut c, "ns", "a").await.expect_err("replayed");
    assert_eq!(e.code(), tonic::Code::DataLoss, "{e:?}");
    assert!(e.message().contains("etcd version 3"), "{e:?}");
    let e = list(
        &mut c,
        pb::ListSecretsRequest {
            namespace: "ns".into(),
            ..Default::default()
        },
    )
    .await
    .expect_err("a list over the replayed record");
    assert_eq!(e.code(), tonic::Code::DataLoss, "{e:?}");
    // The other Secret is untouched.
    get(&mut c, "ns", "b").await.expect("b still opens");
    let log = server.log_text();
    assert!(log.contains("older ciphertext was put back"), "{log}");

    // The verifier reports the record and the digest, and exits 1.
    let bad = verify(&url, &kek, &[]);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(
        bad.stdout
            .contains("MISMATCH: record ns/a (etcd version 3, mod_revision"),
        "{bad:?}"
    );
    assert!(bad.stdout.contains("MISMATCH: state digest"), "{bad:?}");
    assert!(!bad.stdout.contains("record ns/b"), "{bad:?}");
    server.stop();
}

/// Two replicas write the same keys at once (creates that race, updates that conflict): the
/// digest shards, compared by mod_revision in every Txn and planned again on a lost race, end
/// exactly the digest of what etcd holds; a shard copied over another or deleted is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_digest_stays_exact_with_two_replicas_writing() {
    let etcd = EtcdCluster::start(1).await;
    let url = etcd.storage_url("/coffer");
    let tmp = tempfile::tempdir().expect("tempdir");
    let kek = tmp.path().join("kek.key");
    LocalKek::create_new(&kek).expect("kek");
    let (s0, s1) = tokio::join!(
        etcd_store(&etcd, "/coffer", &kek, StoreConfig::default()),
        etcd_store(&etcd, "/coffer", &kek, StoreConfig::default())
    );
    let stores = [Arc::new(s0), Arc::new(s1)];
    let mut tasks = Vec::new();
    for (w, store) in stores.iter().enumerate() {
        let store = store.clone();
        tasks.push(tokio::spawn(async move { write_a_lot(&store, w).await }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let report = verify(&url, &kek, &["-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&report.stdout).expect("json");
    assert_eq!(v["ok"], true, "{report:?}");
    assert_eq!(v["secrets"], 10, "{v}");

    // The digest lives in shards, each bound to its number: a shard's value copied over
    // another's is refused, and a deleted shard key is reported.
    let shard0 = etcd_value(&etcd, "/coffer/u/i/digest/00").await;
    etcdctl_put(&etcd, "/coffer/u/i/digest/01", &shard0);
    let mut kv = etcd.clients(0).kv;
    kv.delete_range(etcdpb::DeleteRangeRequest {
        key: b"/coffer/u/i/digest/02".to_vec(),
        ..Default::default()
    })
    .await
    .expect("delete a shard key");
    let bad = verify(&url, &kek, &[]);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(
        bad.stdout
            .contains("the state digest key of shard 01 does not authenticate"),
        "{bad:?}"
    );
    assert!(
        bad.stdout
            .contains("state digest shard 02: the digest key is missing"),
        "{bad:?}"
    );
    assert!(!bad.stdout.contains("shard 00"), "{bad:?}");
}

/// Creates `k0..k9` (both writers race for each) and updates each a few times (conflicts
/// retried).
async fn write_a_lot(store: &Store, w: usize) {
    for i in 0..10 {
        let name = format!("k{i}");
        let s = Secret::new("ns", &name).with_data("w", format!("{w}"));
        match store.create(s).await {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => panic!("create {name}: {e}"),
        }
        for round in 0..3 {
            loop {
                let s = store
                    .get("ns", &name)
                    .await
                    .expect("get")
                    .with_data("w", format!("{w}-{round}"));
                match store.update(s).await {
                    Ok(_) => break,
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => panic!("update {name}: {e}"),
                }
            }
        }
    }
}

/// What `coffer verify --storage` and `coffer serve --storage` refuse, each naming the flag:
/// no shared KEK, an anchor (a data directory's), etcd flags without `--storage`, and a prefix
/// no Coffer with integrity has opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_integrity_refusals_name_the_flag() {
    let etcd = EtcdCluster::start(1).await;
    let url = etcd.storage_url("/never-opened");
    let tmp = tempfile::tempdir().expect("tempdir");
    let kek = tmp.path().join("kek.key");
    LocalKek::create_new(&kek).expect("kek");
    let kek_s = kek.display().to_string();
    let anchor = tmp.path().join("anchor").display().to_string();
    run(coffer_bin(), &["verify", "--storage", &url], &[])
        .fails(1, "--kek-file PATH (the same key file on every replica)");
    run(
        coffer_bin(),
        &[
            "verify",
            "--storage",
            &url,
            "--kek-file",
            &kek_s,
            "--anchor-file",
            &anchor,
        ],
        &[],
    )
    .fails(1, "--anchor-file is for a data directory");
    run(coffer_bin(), &["verify", "--kek-file", &kek_s], &[]).fails(1, "go with --storage etcd://");
    verify(&url, &kek, &[]).fails(1, "no integrity row");
    let sock = format!("unix://{}", tmp.path().join("never.sock").display());
    run(
        coffer_bin(),
        &[
            "serve",
            "--storage",
            &url,
            "--kek-file",
            &kek_s,
            "--anchor-file",
            &anchor,
            "--listen",
            &sock,
        ],
        &[],
    )
    .fails(1, "--anchor-file/--accept-rollback with --storage etcd://");
}
