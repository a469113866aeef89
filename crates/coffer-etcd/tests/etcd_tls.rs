//! `--storage-ca-file/--storage-cert-file/--storage-key-file`: a store over an etcd member that
//! serves clients over TLS and requires a client certificate signed by its CA.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use coffer_core::storage::mvcc::{Condition, Mvcc, Txn, Write};
use coffer_etcd::{EtcdClient, EtcdError, EtcdMvcc, StorageTls, StorageUrl};
use coffer_testkit::auth::{Pki, write_file};
use coffer_testkit::etcd::EtcdCluster;

fn client(url: &StorageUrl, tls: &StorageTls) -> Result<EtcdClient, EtcdError> {
    EtcdClient::with_timeout(url, tls, Duration::from_secs(3))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_over_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new();
    let ca = write_file(dir.path(), "ca.pem", &pki.ca_pem);
    let server_cert = write_file(dir.path(), "etcd.pem", &pki.server.cert);
    let server_key = write_file(dir.path(), "etcd-key.pem", &pki.server.key);
    let me = pki.client("coffer-replica", &[]);
    let cert = write_file(dir.path(), "client.pem", &me.cert);
    let key = write_file(dir.path(), "client-key.pem", &me.key);
    let cluster = EtcdCluster::start_tls(1, ca.clone(), server_cert, server_key).await;
    let url: StorageUrl = cluster.storage_url("/tls").parse().expect("url");
    let tls = StorageTls {
        ca_file: Some(ca.clone()),
        cert_file: Some(cert.clone()),
        key_file: Some(key.clone()),
    };
    let good = client(&url, &tls).expect("client");
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = good.check() {
        assert!(
            Instant::now() < deadline,
            "etcd over TLS never answered: {e}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m = EtcdMvcc::open(good).await.expect("open over TLS");
    let committed = m
        .commit(Txn {
            conditions: vec![Condition {
                key: b"s/ns/a".to_vec(),
                mod_revision: 0,
            }],
            writes: vec![Write::Put {
                key: b"s/ns/a".to_vec(),
                value: b"sealed".to_vec(),
                lease: 0,
            }],
            meta: Vec::new(),
        })
        .expect("commit");
    m.read_barrier().await.expect("barrier");
    assert_eq!(
        m.get(b"s/ns/a", None).expect("get").map(|v| v.mod_revision),
        Some(committed.revision)
    );

    // Without a client certificate, or trusting another CA, etcd cannot be used.
    let no_cert = StorageTls {
        ca_file: Some(ca.clone()),
        ..StorageTls::default()
    };
    assert!(client(&url, &no_cert).expect("client").check().is_err());
    let other = write_file(dir.path(), "other-ca.pem", &Pki::new().ca_pem);
    let wrong_ca = StorageTls {
        ca_file: Some(other),
        cert_file: Some(cert.clone()),
        key_file: Some(key.clone()),
    };
    assert!(client(&url, &wrong_ca).expect("client").check().is_err());

    // Incomplete or unreadable TLS settings are refused before dialling, naming the flag.
    for (tls, flag) in [
        (
            StorageTls {
                cert_file: Some(cert.clone()),
                key_file: Some(key.clone()),
                ..StorageTls::default()
            },
            "--storage-ca-file",
        ),
        (
            StorageTls {
                ca_file: Some(ca.clone()),
                cert_file: Some(cert.clone()),
                ..StorageTls::default()
            },
            "--storage-key-file",
        ),
        (
            StorageTls {
                ca_file: Some(ca.clone()),
                key_file: Some(key.clone()),
                ..StorageTls::default()
            },
            "--storage-cert-file",
        ),
        (
            StorageTls {
                ca_file: Some(PathBuf::from("/nonexistent/ca.pem")),
                ..StorageTls::default()
            },
            "--storage-ca-file",
        ),
    ] {
        let e = client(&url, &tls).expect_err(flag).to_string();
        assert!(e.starts_with(flag), "{e}");
    }
}
