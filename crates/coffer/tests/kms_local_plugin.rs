//! End to end with the `coffer-kms-local` plugin: real plugin and `coffer serve` processes over
//! real unix sockets. Restart, rotation + migration + removal of the old KEK, and an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coffer_testkit::kms as kms_support;

use std::time::{Duration, Instant};

use kms_support::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_survive_a_restart_of_coffer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    local_plugin_cmd(dir, "init", &[]).ok();
    let plugin = local_plugin(dir);
    let server = Serve::new(dir).kms(&plugin.socket).start();
    let mut c = secrets_client(&server.socket).await;
    for i in 0..10 {
        create(&mut c, "ns", &format!("s{i}"), &format!("value-{i}"))
            .await
            .expect("create");
    }
    server.stop();

    let server = Serve::new(dir).kms(&plugin.socket).start();
    let mut c = secrets_client(&server.socket).await;
    for i in 0..10 {
        assert_eq!(
            get_value(&mut c, "ns", &format!("s{i}"))
                .await
                .expect("get"),
            format!("value-{i}")
        );
    }
    assert!(
        server.log_text().contains("KMS v2 plugin at unix://"),
        "{}",
        server.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_migrate_remove_the_old_kek_and_everything_still_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data").display().to_string();
    local_plugin_cmd(dir, "init", &[]).ok();
    let plugin = local_plugin(dir);
    let kms = format!("unix://{}", plugin.socket.display());
    let server = Serve::new(dir)
        .kms(&plugin.socket)
        .args(&["--kms-poll-interval", "200ms"])
        .start();
    let mut c = secrets_client(&server.socket).await;
    for i in 0..20 {
        create(&mut c, "ns", &format!("old{i}"), &format!("o{i}"))
            .await
            .unwrap();
    }

    // Rotate in the plugin; the poller picks the new key_id up and the next write makes a new
    // seed under it.
    let rotated = local_plugin_cmd(dir, "rotate", &[]);
    let new_key_id = rotated
        .ok()
        .split_whitespace()
        .last()
        .expect("key_id printed")
        .to_owned();
    tokio::time::sleep(Duration::from_millis(800)).await;
    for i in 0..5 {
        create(&mut c, "ns", &format!("new{i}"), &format!("n{i}"))
            .await
            .unwrap();
    }
    server.stop();

    let status = coffer(&[
        "kms",
        "status",
        "--data-dir",
        &data,
        "--kms",
        &kms,
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(status.ok()).expect("json");
    assert_eq!(v["keyId"], new_key_id.as_str(), "{v}");
    let seeds = v["seeds"].as_array().expect("seeds");
    assert_eq!(seeds.len(), 2, "{v}");
    assert_eq!(seeds[0]["records"], 20, "{v}");
    assert_eq!(seeds[0]["currentKeyId"], false, "{v}");
    assert_eq!(seeds[1]["records"], 5, "{v}");
    assert_eq!(seeds[1]["keyId"], new_key_id.as_str(), "{v}");
    assert_eq!(v["recordsUnderOldKeyIds"], 20, "{v}");
    let table = coffer(&["kms", "status", "--data-dir", &data, "--kms", &kms]);
    assert!(table.ok().contains("run `coffer migrate`"), "{table:?}");

    // Migrate, then remove the old KEK version from the plugin.
    let migrated = coffer(&[
        "migrate",
        "--data-dir",
        &data,
        "--kms",
        &kms,
        "--batch-size",
        "7",
    ]);
    let out = migrated.ok();
    assert!(out.contains("rewrote 20 of 25 records"), "{out}");
    assert!(out.contains("retired seeds no record uses: 1"), "{out}");
    assert!(out.contains("can be removed"), "{out}");
    // A second run finds nothing left (a crashed run resumes the same way).
    let again = coffer(&["migrate", "--data-dir", &data, "--kms", &kms]);
    assert!(again.ok().contains("nothing to migrate"), "{again:?}");
    local_plugin_cmd(dir, "remove", &["--version", "1"]).ok();
    // The plugin refuses the old key_id at once.
    let mut k = kms_client(&plugin.socket).await;
    let old_key_id = seeds[0]["keyId"].as_str().unwrap().to_owned();
    let e = k
        .decrypt(coffer_kms::proto::DecryptRequest {
            ciphertext: vec![1; 40],
            uid: "u".into(),
            key_id: old_key_id,
            annotations: Default::default(),
        })
        .await
        .expect_err("removed key");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("unknown key_id"), "{e:?}");

    // Restart Coffer: every Secret opens, with one seed left.
    let server = Serve::new(dir).kms(&plugin.socket).start();
    let mut c = secrets_client(&server.socket).await;
    for i in 0..20 {
        assert_eq!(
            get_value(&mut c, "ns", &format!("old{i}")).await.unwrap(),
            format!("o{i}")
        );
    }
    for i in 0..5 {
        assert_eq!(
            get_value(&mut c, "ns", &format!("new{i}")).await.unwrap(),
            format!("n{i}")
        );
    }
    server.stop();
    let status = coffer(&[
        "kms",
        "status",
        "--data-dir",
        &data,
        "--kms",
        &kms,
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(status.ok()).expect("json");
    let seeds = v["seeds"].as_array().expect("seeds");
    assert_eq!(seeds.len(), 1, "{v}");
    assert_eq!(seeds[0]["records"], 25, "{v}");
    assert_eq!(seeds[0]["unwrapped"], true, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_reads_go_on_writes_last_the_grace_period_and_recover_without_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    local_plugin_cmd(dir, "init", &[]).ok();
    let plugin = local_plugin(dir);
    let server = Serve::new(dir)
        .kms(&plugin.socket)
        .args(&["--kms-grace", "3s", "--kms-poll-interval", "250ms"])
        .start();
    let mut c = secrets_client(&server.socket).await;
    create(&mut c, "ns", "before", "b").await.expect("create");
    assert_eq!(health(&server.socket).await, 1, "SERVING");

    // The plugin dies.
    plugin.kill();
    let killed = Instant::now();
    assert_eq!(get_value(&mut c, "ns", "before").await.expect("read"), "b");
    create(&mut c, "ns", "within-grace", "w")
        .await
        .expect("a write within the grace period works");

    // Past the grace period writes fail with UNAVAILABLE; reads still work.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    let refused = loop {
        n += 1;
        match create(&mut c, "ns", &format!("t{n}"), "x").await {
            Ok(_) => {
                assert!(Instant::now() < deadline, "writes never failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => break e,
        }
    };
    let e = refused;
    assert!(
        killed.elapsed() >= Duration::from_millis(2500),
        "writes failed {:?} after the kill, before the 3s grace",
        killed.elapsed()
    );
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("KMS unreachable"), "{e:?}");
    assert!(e.message().contains("grace"), "{e:?}");
    assert_eq!(get_value(&mut c, "ns", "before").await.expect("read"), "b");
    assert_eq!(
        get_value(&mut c, "ns", "within-grace").await.expect("read"),
        "w"
    );
    let sock = server.socket.clone();
    assert!(
        eventually(5, || {
            let sock = sock.clone();
            async move { health(&sock).await == 2 }
        })
        .await,
        "health should be NOT_SERVING"
    );

    // The plugin comes back: writes work again at once, without restarting Coffer.
    let _plugin = local_plugin(dir);
    create(&mut c, "ns", "after", "a")
        .await
        .expect("write after the plugin is back");
    assert_eq!(get_value(&mut c, "ns", "after").await.expect("read"), "a");
    assert!(
        eventually(5, || {
            let sock = sock.clone();
            async move { health(&sock).await == 1 }
        })
        .await,
        "health should be SERVING again"
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_while_the_plugin_is_down_is_not_ready_until_it_comes_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    local_plugin_cmd(dir, "init", &[]).ok();
    // First life: a Secret under a seed the plugin must unwrap at the next start.
    let plugin = local_plugin(dir);
    let server = Serve::new(dir).kms(&plugin.socket).start();
    let mut c = secrets_client(&server.socket).await;
    create(&mut c, "ns", "a", "1").await.unwrap();
    server.stop();
    let socket = plugin.socket.clone();
    plugin.kill();

    let server = Serve::new(dir)
        .kms(&socket)
        .args(&["--kms-poll-interval", "200ms"])
        .start();
    assert_eq!(
        health(&server.socket).await,
        2,
        "NOT_SERVING while the KMS is down"
    );
    let mut c = secrets_client(&server.socket).await;
    let e = create(&mut c, "ns", "b", "2").await.expect_err("no KMS");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("KMS unreachable"), "{e:?}");
    let e = get_value(&mut c, "ns", "a")
        .await
        .expect_err("seed not unwrapped yet");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");

    let _plugin = local_plugin(dir);
    let sock = server.socket.clone();
    assert!(
        eventually(10, || {
            let sock = sock.clone();
            async move { health(&sock).await == 1 }
        })
        .await,
        "health should become SERVING: {}",
        server.log_text()
    );
    assert_eq!(get_value(&mut c, "ns", "a").await.expect("read"), "1");
    create(&mut c, "ns", "b", "2").await.expect("write");
    server.stop();
}

/// Issue 18, item 1: a data directory made with a KMS plugin, started without `--kms`, is
/// refused (non-zero exit, a message naming the flag and the plugin) and no key file appears
/// beside the data; `kms status` and `migrate` refuse it the same way; with `--kms` it still
/// starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_store_started_without_kms_is_refused_and_gets_no_key_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    let data_s = data.display().to_string();
    local_plugin_cmd(dir, "init", &[]).ok();
    let plugin = local_plugin(dir);
    let server = Serve::new(dir).kms(&plugin.socket).start();
    let mut c = secrets_client(&server.socket).await;
    create(&mut c, "ns", "a", "1").await.unwrap();
    server.stop();
    let recorded = std::fs::read_to_string(data.join("kms")).expect("record");
    assert!(recorded.starts_with("plugin unix://"), "{recorded}");

    let socket = dir.join("other.sock").display().to_string();
    let listen = format!("unix://{socket}");
    let refused = coffer(&["serve", "--data-dir", &data_s, "--listen", &listen]);
    let err = refused.fails(1, "uses a KMS v2 plugin");
    assert!(
        err.contains(&format!("--kms unix://{}", plugin.socket.display())),
        "{err}"
    );
    assert!(
        !data.join("kek.key").exists(),
        "no key file beside the data"
    );
    assert!(!std::path::Path::new(&socket).exists(), "never listened");
    for cmd in [
        &["kms", "status", "--data-dir", &data_s][..],
        &["migrate", "--data-dir", &data_s][..],
    ] {
        let run = coffer(cmd);
        assert_ne!(run.code, 0, "{cmd:?}: {run:?}");
        assert!(!data.join("kek.key").exists(), "{cmd:?}");
    }

    // A store made before the record existed: a db/ and no key file is refused too.
    std::fs::remove_file(data.join("kms")).unwrap();
    let refused = coffer(&["serve", "--data-dir", &data_s, "--listen", &listen]);
    refused.fails(1, "holds a store but no local key file");
    assert!(!data.join("kek.key").exists());

    let server = Serve::new(dir).kms(&plugin.socket).start();
    let mut c = secrets_client(&server.socket).await;
    assert_eq!(get_value(&mut c, "ns", "a").await.unwrap(), "1");
    server.stop();
}

/// Issue 18, item 9: `--kms-peer-uid` checks who serves the plugin's socket: the right uid
/// works; another uid is refused on connection (no KMS call reaches the impostor) and says
/// why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kms_socket_peer_uid_is_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data").display().to_string();
    local_plugin_cmd(dir, "init", &[]).ok();
    let plugin = local_plugin(dir);
    let kms = format!("unix://{}", plugin.socket.display());
    let me = rustix::process::geteuid().as_raw().to_string();
    let other = (rustix::process::geteuid().as_raw() + 4242).to_string();
    let server = Serve::new(dir)
        .kms(&plugin.socket)
        .args(&["--kms-peer-uid", &me])
        .start();
    let mut c = secrets_client(&server.socket).await;
    create(&mut c, "ns", "a", "1")
        .await
        .expect("the plugin runs as this uid");
    server.stop();

    let server = Serve::new(dir)
        .kms(&plugin.socket)
        .args(&["--kms-peer-uid", &other])
        .start();
    let mut c = secrets_client(&server.socket).await;
    let e = create(&mut c, "ns", "b", "2").await.expect_err("impostor");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(health(&server.socket).await, 2, "NOT_SERVING");
    let log = server.log_text();
    assert!(
        log.contains(&format!("expected={other}")) && log.contains("--kms-peer-uid"),
        "{log}"
    );
    server.stop();
    let status = coffer(&[
        "kms",
        "status",
        "--data-dir",
        &data,
        "--kms",
        &kms,
        "--kms-peer-uid",
        &other,
    ]);
    assert!(
        status.stdout.contains(&format!("not {other}"))
            || status.stderr.contains(&format!("not {other}")),
        "{status:?}"
    );
    let run = coffer(&["kms", "status", "--data-dir", &data, "--kms-peer-uid", &me]);
    run.fails(1, "--kms-peer-uid needs --kms");
}
