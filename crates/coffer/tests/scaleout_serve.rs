//! `coffer serve --storage etcd://...` as real processes (issue 16): refused without a shared
//! KEK, three replicas over a 3-member etcd, one SIGKILLed under concurrent writers and started
//! again: every acknowledged write is on every replica with the revision it was acknowledged
//! at, and `coffer --server a,b,c` reaches the store while one replica is down.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coffer_core::kms::LocalKek;
use coffer_server::proto::v1::secrets_client::SecretsClient;
use coffer_testkit::etcd::EtcdCluster;
use coffer_testkit::process::{Proc, Serve, coffer_bin, run};
use coffer_testkit::server::{create, get, rv, secret, unix_channel};

fn replica(dir: &Path, url: &str, kek: &Path, tcp: std::net::SocketAddr) -> Proc {
    std::fs::create_dir_all(dir).expect("dir");
    Serve::new(dir)
        .listen_tcp(tcp)
        .args(&["--storage", url, "--kek-file", &kek.display().to_string()])
        .start()
}

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_as_processes_survive_a_sigkill_and_clients_fail_over() {
    let etcd = EtcdCluster::start(3).await;
    let url = etcd.storage_url("/coffer");
    let tmp = tempfile::tempdir().expect("tempdir");
    let kek = tmp.path().join("kek.key");

    // Without a shared KEK, or with a key file that does not exist, nothing starts.
    let sock = format!("unix://{}", tmp.path().join("never.sock").display());
    run(
        coffer_bin(),
        &["serve", "--storage", &url, "--listen", &sock],
        &[],
    )
    .fails(1, "--kek-file PATH (the same key file on every replica)");
    let kek_s = kek.display().to_string();
    run(
        coffer_bin(),
        &[
            "serve",
            "--storage",
            &url,
            "--kek-file",
            &kek_s,
            "--listen",
            &sock,
        ],
        &[],
    )
    .fails(1, "--kek-file");
    LocalKek::create_new(&kek).expect("kek");

    let dirs: Vec<_> = (0..3).map(|i| tmp.path().join(format!("r{i}"))).collect();
    let tcp: Vec<_> = (0..3).map(|_| free_addr()).collect();
    let mut procs: Vec<Option<Proc>> = dirs
        .iter()
        .zip(&tcp)
        .map(|(d, a)| Some(replica(d, &url, &kek, *a)))
        .collect();
    let addrs: Vec<String> = tcp.iter().map(ToString::to_string).collect();

    // Two writers, on replicas 0 and 1, until told to stop.
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut writers = Vec::new();
    for (w, dir) in dirs.iter().take(2).enumerate() {
        let mut c = SecretsClient::new(unix_channel(&dir.join("coffer.sock")).await);
        let (acked, stop) = (acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.is_cancelled() {
                let name = format!("w{w}-{i}");
                match create(&mut c, secret("ns", &name, &[("k", "v")])).await {
                    Ok(s) => {
                        acked.lock().expect("lock").insert(name, rv(&s));
                        i += 1;
                    }
                    Err(s) if s.code() == tonic::Code::AlreadyExists => i += 1,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }));
    }
    let wait_for = |n: usize| {
        let acked = acked.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while acked.lock().expect("lock").len() < n {
                assert!(tokio::time::Instant::now() < deadline, "writes stalled");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(20).await;
    // Replica 2 is SIGKILLed mid-stream; the CLI, given all three, still reaches the store.
    if let Some(p) = procs[2].take() {
        p.kill();
    }
    let servers = format!("{},{},{}", addrs[2], addrs[0], addrs[1]);
    let out = run(
        coffer_bin(),
        &[
            "--server", &servers, "get", "secret", "w0-0", "-n", "ns", "-o", "yaml",
        ],
        &[],
    );
    assert!(out.ok().contains("w0-0"), "{out:?}");
    wait_for(40).await;
    procs[2] = Some(replica(&dirs[2], &url, &kek, tcp[2]));
    wait_for(50).await;
    stop.cancel();
    for w in writers {
        w.await.expect("writer");
    }
    let acked = acked.lock().expect("lock").clone();
    for dir in &dirs {
        let mut c = SecretsClient::new(unix_channel(&dir.join("coffer.sock")).await);
        for (name, want) in &acked {
            let got = get(&mut c, "ns", name)
                .await
                .expect("an acknowledged write");
            assert_eq!(rv(&got), *want, "{name} on {}", dir.display());
        }
    }
}
