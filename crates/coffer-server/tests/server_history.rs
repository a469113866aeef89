//! History through the wire: Get and List at a revision, the History RPC, its codes, its
//! authorization (`get`) and audit record, the history metrics, and watches (Watch and
//! WatchMany) resumed from history across a restart.

use coffer_testkit::auth as auth_support;
use coffer_testkit::server as server_common;

use std::time::Duration;

use coffer_server::auth::SecurityArgs;
use coffer_server::proto::v1 as pb;
use coffer_server::server::ListenAddr;
use server_common::*;
use tonic::Code;

async fn history(
    c: &mut pb::secrets_client::SecretsClient<tonic::transport::Channel>,
    name: &str,
) -> Result<pb::HistoryResponse, tonic::Status> {
    c.history(pb::HistoryRequest {
        namespace: "ns".into(),
        name: name.into(),
        limit: 0,
    })
    .await
    .map(tonic::Response::into_inner)
}

async fn get_at(
    c: &mut pb::secrets_client::SecretsClient<tonic::transport::Channel>,
    name: &str,
    rv: u64,
) -> Result<pb::Secret, tonic::Status> {
    c.get(pb::GetSecretRequest {
        namespace: "ns".into(),
        name: name.into(),
        resource_version: rv,
    })
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn reads_at_a_revision_history_and_their_codes() {
    let ts = TestServer::start().await;
    let mut c = ts.client().await;
    let v1 = create(&mut c, secret("ns", "a", &[("k", "1")]))
        .await
        .expect("create");
    create(&mut c, secret("ns", "b", &[("k", "1")]))
        .await
        .expect("create b");
    let mut v3 = v1.clone();
    v3.data.insert("k".into(), b"3".to_vec());
    update(&mut c, v3).await.expect("update");
    delete(&mut c, "ns", "a", 0).await.expect("delete");

    // A new store is at 1: a=2, b=3, a updated=4, a deleted=5.
    assert_eq!(get_at(&mut c, "a", 2).await.expect("a@2").data["k"], b"1");
    assert_eq!(get_at(&mut c, "a", 4).await.expect("a@4").data["k"], b"3");
    assert_eq!(
        get_at(&mut c, "a", 5).await.expect_err("deleted").code(),
        Code::NotFound
    );
    let s = get_at(&mut c, "a", 9).await.expect_err("future");
    assert_eq!(s.code(), Code::OutOfRange);
    assert_eq!(s.message(), "too large resource version: 9 (current 5)");

    // A list at a revision, paged: every page at that revision.
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list(pb::ListSecretsRequest {
                namespace: "ns".into(),
                limit: 1,
                continue_token: token,
                resource_version: 3,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        assert_eq!(page.resource_version, 3);
        items.extend(page.items);
        token = page.continue_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(names(&items), ["ns/a", "ns/b"]);

    let h = history(&mut c, "a").await.expect("history");
    let summary: Vec<_> = h
        .versions
        .iter()
        .map(|v| (v.revision, v.deleted, v.created, v.written_at.is_some()))
        .collect();
    assert_eq!(
        summary,
        [
            (5, true, false, true),
            (4, false, false, true),
            (2, false, true, true)
        ]
    );
    let removed = h.versions[0]
        .secret
        .as_ref()
        .expect("the state the delete removed");
    assert_eq!((removed.data["k"].as_slice(), rv(removed)), (&b"3"[..], 5));
    assert_eq!(
        history(&mut c, "never").await.expect_err("absent").code(),
        Code::NotFound
    );
    let bad = history(&mut c, "Bad_Name").await.expect_err("invalid");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("metadata.name"), "{}", bad.message());

    // Compaction: below it, OUT_OF_RANGE "too old resource version".
    ts.running.store().compact(4).await.expect("compact");
    let s = get_at(&mut c, "a", 3).await.expect_err("compacted");
    assert_eq!(s.code(), Code::OutOfRange);
    assert_eq!(s.message(), "too old resource version: 3 (4)");
    let s = c
        .list(pb::ListSecretsRequest {
            resource_version: 2,
            ..Default::default()
        })
        .await
        .expect_err("compacted");
    assert_eq!(s.code(), Code::OutOfRange);
    let s = c
        .watch(pb::WatchSecretsRequest {
            resource_version: 1,
            ..Default::default()
        })
        .await;
    let code = match s {
        Err(s) => s.code(),
        Ok(r) => r.into_inner().message().await.expect_err("too old").code(),
    };
    assert_eq!(code, Code::OutOfRange);
    let metrics = ts.metrics().render(Some(ts.running.store()));
    assert!(metrics.contains("coffer_compact_revision 4\n"), "{metrics}");
    assert!(metrics.contains("coffer_history_versions "), "{metrics}");
    assert!(metrics.contains("coffer_history_bytes "), "{metrics}");
    ts.running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn history_needs_get_and_is_audited() {
    use auth_support::{Pki, client, read_audit, tls_channel, write_file};
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki::new();
    let mut args: SecurityArgs = pki.write(dir.path());
    args.token_file = Some(write_file(
        dir.path(),
        "tokens.csv",
        "tok-admin,root,1,admins\ntok-lister,lister,2\n",
    ));
    args.authz_policy = Some(write_file(
        dir.path(),
        "policy.yaml",
        "rules:\n  - groups: [admins]\n    verbs: [\"*\"]\n    namespaces: [\"*\"]\n  - users: [lister]\n    verbs: [list, watch]\n    namespaces: [ns]\n",
    ));
    args.audit_log = Some(dir.path().join("audit.log"));
    let server = TestServer::builder()
        .dir(dir.path())
        .security(args)
        .listen(vec![ListenAddr::Tcp("127.0.0.1:0".into())])
        .try_start()
        .await
        .expect("start");
    let ch = tls_channel(server.addr(), &pki.ca_pem, None)
        .await
        .expect("tls");
    let mut admin = client(ch.clone(), Some("tok-admin"));
    let mut lister = client(ch, Some("tok-lister"));
    create(&mut admin, secret("ns", "a", &[("k", "v")]))
        .await
        .expect("create");
    let req = || pb::HistoryRequest {
        namespace: "ns".into(),
        name: "a".into(),
        limit: 0,
    };
    assert_eq!(
        lister.history(req()).await.expect_err("no get").code(),
        Code::PermissionDenied
    );
    let old = pb::GetSecretRequest {
        namespace: "ns".into(),
        name: "a".into(),
        resource_version: 1,
    };
    assert_eq!(
        lister.get(old).await.expect_err("no get").code(),
        Code::PermissionDenied
    );
    let h = admin.history(req()).await.expect("admin").into_inner();
    assert_eq!(h.versions.len(), 1);
    let records = read_audit(&dir.path().join("audit.log"));
    let verbs: Vec<(String, String, String)> = records
        .iter()
        .filter(|r| r["verb"] == "history")
        .map(|r| {
            (
                r["user"].as_str().unwrap_or("").to_owned(),
                r["name"].as_str().unwrap_or("").to_owned(),
                r["code"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(verbs.len(), 2, "{records:?}");
    assert_eq!(verbs[0].0, "lister");
    assert_eq!(verbs[1], ("root".into(), "a".into(), verbs[1].2.clone()));
    assert!(
        !std::fs::read_to_string(dir.path().join("audit.log"))
            .expect("audit")
            .contains("\"v\"")
    );
    server.running.shutdown().await.expect("shutdown");
}

/// The revisions of the next `n` events of a watch stream.
async fn next_revisions(
    stream: &mut tonic::Streaming<pb::WatchEvent>,
    n: usize,
) -> Vec<(i32, u64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("in time")
            .expect("event")
            .expect("open");
        out.push((ev.r#type, ev.object.as_ref().map_or(0, rv)));
    }
    out
}

#[tokio::test]
async fn watches_resume_from_history_after_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let ts = TestServer::builder().dir(dir.path()).start().await;
        let mut c = ts.client().await;
        for i in 0..5 {
            create(&mut c, secret("ns", &format!("s{i}"), &[("k", "v")]))
                .await
                .expect("create");
        }
        let mut s = get(&mut c, "ns", "s0").await.expect("get");
        s.data.insert("k".into(), b"w".to_vec());
        update(&mut c, s).await.expect("update");
        delete(&mut c, "ns", "s1", 0).await.expect("delete");
        ts.running.shutdown().await.expect("shutdown");
    }
    // After the restart the window is empty: revisions 4..=8 come from history (a new store
    // is at 1: the creates are 2..=6).
    let ts = TestServer::builder().dir(dir.path()).start().await;
    let mut c = ts.client().await;
    let mut watch = c
        .watch(pb::WatchSecretsRequest {
            namespace: "ns".into(),
            resource_version: 3,
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let added = pb::watch_event::Type::Added as i32;
    let modified = pb::watch_event::Type::Modified as i32;
    let deleted = pb::watch_event::Type::Deleted as i32;
    assert_eq!(
        next_revisions(&mut watch, 5).await,
        [
            (added, 4),
            (added, 5),
            (added, 6),
            (modified, 7),
            (deleted, 8)
        ]
    );
    // Then live, without a gap.
    create(&mut c, secret("ns", "live", &[("k", "v")]))
        .await
        .expect("create");
    assert_eq!(next_revisions(&mut watch, 1).await, [(added, 9)]);

    // WatchMany: a watch resumed from history on a multiplexed stream, filtered by name.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::WatchManyRequest {
        op: Some(pb::watch_many_request::Op::Create(pb::WatchCreate {
            watch_id: 7,
            watch: Some(pb::WatchSecretsRequest {
                namespace: "ns".into(),
                field_selector: "metadata.name=s0".into(),
                resource_version: 2,
                ..Default::default()
            }),
        })),
    })
    .await
    .expect("send");
    let mut many = c
        .watch_many(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("watch many")
        .into_inner();
    let mut got = Vec::new();
    while got.is_empty() {
        let ev = tokio::time::timeout(Duration::from_secs(10), many.message())
            .await
            .expect("in time")
            .expect("event")
            .expect("open");
        if let Some(e) = ev.event {
            got.push((ev.watch_id, e.r#type, e.object.as_ref().map_or(0, rv)));
        }
    }
    assert_eq!(
        got,
        [(7, modified, 7)],
        "s0's change after revision 2, from history"
    );
    drop(tx);
    ts.running.shutdown().await.expect("shutdown");
}
