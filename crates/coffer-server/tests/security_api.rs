//! Authentication, authorization, limits and audit through a real server (in process): every
//! way a client can be refused, WatchMany's per-watch authorization, per-connection limits,
//! audit records (allowed, denied, fail-closed, fail-open), unix peer uids, the refusal to
//! expose an unauthenticated server, and live reload.

use coffer_testkit::auth as auth_support;

use std::time::Duration;

use auth_support::*;
use coffer_server::auth::SecurityArgs;
use coffer_server::proto::v1 as pb;
use coffer_server::server::{ListenAddr, ServeError};
use tonic::Code;

const POLICY: &str = r#"
rules:
  - groups: [admins]
    verbs: ["*"]
    namespaces: ["*"]
  - users: [single]
    verbs: [get, list, watch]
    namespaces: [b]
    resourceNames: [target]
"#;

const TOKENS: &str = "tok-admin,root,1,admins\ntok-single,single,3\n";

fn tcp() -> Vec<ListenAddr> {
    vec![ListenAddr::Tcp("127.0.0.1:0".into())]
}

/// A server over a store in `dir` with `args`, listening on TCP 127.0.0.1:0 only.
async fn start_tcp(dir: &std::path::Path, args: SecurityArgs) -> Result<TestServer, ServeError> {
    TestServer::builder()
        .dir(dir)
        .security(args)
        .listen(tcp())
        .try_start()
        .await
}

/// A server with TLS, mutual TLS, tokens, the policy and (optionally) an audit log.
async fn secure_server(dir: &std::path::Path, pki: &Pki, audit: bool) -> TestServer {
    let mut args = pki.write(dir);
    args.token_file = Some(write_file(dir, "tokens.csv", TOKENS));
    args.authz_policy = Some(write_file(dir, "policy.yaml", POLICY));
    if audit {
        args.audit_log = Some(dir.join("audit.log"));
    }
    start_tcp(dir, args).await.expect("start")
}

/// A client certificate the server refuses: the handshake succeeds (the client proves it holds
/// the key), and the request is answered UNAUTHENTICATED with the reason; returns the message.
async fn certificate_refused(pki: &Pki, addr: std::net::SocketAddr, pair: &Pair) -> String {
    let ch = tls_channel(addr, &pki.ca_pem, Some(pair))
        .await
        .expect("the handshake accepts any certificate whose key the client holds");
    let mut c = client(ch, None);
    let s = get(&mut c, "b", "target").await.expect_err("refused");
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    assert!(
        !s.message().contains("BEGIN"),
        "no certificate in the message"
    );
    s.message().to_owned()
}

#[tokio::test]
async fn bad_expired_foreign_certificates_and_bad_or_missing_tokens_are_rejected() {
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki::new();
    let server = secure_server(dir.path(), &pki, false).await;
    let addr = server.addr();
    let mut admin = client(
        tls_channel(addr, &pki.ca_pem, Some(&pki.client("root", &["admins"])))
            .await
            .expect("tls"),
        None,
    );
    create(&mut admin, secret("b", "target", &[("k", b"v")]))
        .await
        .expect("create");

    // A certificate the CA signed but with no CN: UNAUTHENTICATED.
    let no_cn = pki.client_without_cn();
    let mut c = client(
        tls_channel(addr, &pki.ca_pem, Some(&no_cn))
            .await
            .expect("tls"),
        None,
    );
    let s = get(&mut c, "b", "target").await.expect_err("no CN");
    assert_eq!(s.code(), Code::Unauthenticated);
    assert!(s.message().contains("common name"), "{}", s.message());

    // An expired certificate and one from another CA: UNAUTHENTICATED, saying why (as
    // kube-apiserver: the chain is checked per request, not at the handshake).
    let expired = certificate_refused(&pki, addr, &pki.expired_client("root")).await;
    assert_eq!(expired, "client certificate rejected: expired");
    let foreign = certificate_refused(&pki, addr, &Pki::foreign_client("root")).await;
    assert_eq!(
        foreign,
        "client certificate rejected: not signed by the client CA"
    );
    // A foreign certificate with a good token: the token decides (it is checked first).
    let ch = tls_channel(addr, &pki.ca_pem, Some(&Pki::foreign_client("root")))
        .await
        .expect("tls");
    let mut c = client(ch, Some("tok-single"));
    get(&mut c, "b", "target").await.expect("token wins");

    // A client that does not trust the server's CA cannot connect either.
    let other = Pki::new();
    let e = tls_channel(addr, &other.ca_pem, None).await;
    assert!(
        e.is_err(),
        "a server certificate from an untrusted CA is refused"
    );

    // Plaintext to the TLS port: no answer.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(ch) = plain {
        let mut c = client(ch, Some("tok-admin"));
        assert!(get(&mut c, "b", "target").await.is_err());
    }

    // Tokens: bad, missing, malformed; every one UNAUTHENTICATED.
    let anon_channel = tls_channel(addr, &pki.ca_pem, None).await.expect("tls");
    for (token, want) in [
        (Some("tok-wrong"), "invalid bearer token"),
        (None, "no credentials"),
        (Some(""), "no credentials"),
    ] {
        let mut c = client(anon_channel.clone(), token);
        let s = get(&mut c, "b", "target").await.expect_err("refused");
        assert_eq!(s.code(), Code::Unauthenticated, "{token:?}");
        if token != Some("") {
            assert!(s.message().contains(want), "{}", s.message());
        }
        assert!(!s.message().contains("tok-"), "the token is not echoed");
    }
    let mut raw =
        coffer_server::proto::v1::secrets_client::SecretsClient::new(anon_channel.clone());
    let mut req = tonic::Request::new(pb::GetSecretRequest {
        namespace: "b".into(),
        name: "target".into(),
        resource_version: 0,
    });
    req.metadata_mut().insert(
        "authorization",
        "Basic dXNlcjpwYXNz".parse().expect("value"),
    );
    let s = raw.get(req).await.expect_err("basic auth");
    assert_eq!(s.code(), Code::Unauthenticated);
    assert!(
        s.message().contains("not a bearer token"),
        "{}",
        s.message()
    );
    // A header value that is not visible ASCII.
    let mut req = tonic::Request::new(pb::GetSecretRequest {
        namespace: "b".into(),
        name: "target".into(),
        resource_version: 0,
    });
    let value = tonic::metadata::MetadataValue::try_from(&b"Bearer \xfa\xfb"[..])
        .expect("opaque bytes are a valid header value");
    req.metadata_mut().insert("authorization", value);
    let s = raw.get(req).await.expect_err("malformed");
    assert_eq!(s.code(), Code::Unauthenticated);
    assert!(s.message().contains("malformed"), "{}", s.message());
    // The same tokens work.
    let mut ok = client(anon_channel, Some("tok-single"));
    assert!(get(&mut ok, "b", "target").await.is_ok());
    server.running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn tokens_are_refused_by_a_server_without_a_token_file() {
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki::new();
    let mut args = pki.write(dir.path());
    args.authz_policy = Some(write_file(dir.path(), "policy.yaml", POLICY));
    let server = start_tcp(dir.path(), args).await.expect("start");
    let ch = tls_channel(server.addr(), &pki.ca_pem, None)
        .await
        .expect("tls");
    let mut c = client(ch, Some("tok-admin"));
    let s = get(&mut c, "b", "x").await.expect_err("no token file");
    assert_eq!(s.code(), Code::Unauthenticated);
    assert!(
        s.message().contains("does not accept bearer tokens"),
        "{}",
        s.message()
    );
    // No certificate and no token: UNAUTHENTICATED.
    let ch = tls_channel(server.addr(), &pki.ca_pem, None)
        .await
        .expect("tls");
    let s = get(&mut client(ch, None), "b", "x")
        .await
        .expect_err("no credentials");
    assert_eq!(s.code(), Code::Unauthenticated);
    assert!(s.message().contains("no credentials"), "{}", s.message());
    server.running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn watch_many_authorizes_each_watch() {
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki::new();
    let server = secure_server(dir.path(), &pki, true).await;
    let ch = tls_channel(server.addr(), &pki.ca_pem, None)
        .await
        .expect("tls");
    let mut admin = client(ch.clone(), Some("tok-admin"));
    create(&mut admin, secret("b", "target", &[("k", b"v")]))
        .await
        .expect("create");
    create(&mut admin, secret("a", "other", &[("k", b"v")]))
        .await
        .expect("create");

    let mut single = client(ch, Some("tok-single"));
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let watch = |id: u64, ns: &str, fields: &str| pb::WatchManyRequest {
        op: Some(pb::watch_many_request::Op::Create(pb::WatchCreate {
            watch_id: id,
            watch: Some(pb::WatchSecretsRequest {
                namespace: ns.into(),
                field_selector: fields.into(),
                send_initial_events: true,
                ..pb::WatchSecretsRequest::default()
            }),
        })),
    };
    tx.send(watch(1, "a", "")).await.expect("send");
    tx.send(watch(2, "b", "metadata.name=target"))
        .await
        .expect("send");
    tx.send(watch(3, "b", "")).await.expect("send");
    let mut stream = single
        .watch_many(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let mut denied = Vec::new();
    let mut created = false;
    let mut got_data = false;
    while denied.len() < 2 || !created || !got_data {
        let ev = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("event in time")
            .expect("stream ok")
            .expect("open");
        if ev.canceled {
            assert_eq!(ev.error_code, Code::PermissionDenied as i32, "{ev:?}");
            assert!(ev.error_message.contains("User \"single\""), "{ev:?}");
            denied.push(ev.watch_id);
        } else if ev.created {
            assert_eq!(ev.watch_id, 2);
            created = true;
        } else if let Some(e) = ev.event
            && e.r#type == pb::watch_event::Type::Added as i32
        {
            assert_eq!(ev.watch_id, 2);
            got_data = e.object.is_some_and(|o| o.data.contains_key("k"));
        }
    }
    denied.sort_unstable();
    assert_eq!(
        denied,
        [1, 3],
        "denied watches are canceled, the stream goes on"
    );
    drop(tx);
    let audit = read_audit(&dir.path().join("audit.log"));
    let watches: Vec<_> = audit
        .iter()
        .filter(|r| r["verb"] == "watch" && r["user"] == "single")
        .map(|r| {
            (
                r["watch_id"].as_u64(),
                r["code"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert!(
        watches.contains(&(Some(1), Some("PermissionDenied".into()))),
        "{watches:?}"
    );
    assert!(
        watches.contains(&(Some(2), Some("Ok".into()))),
        "{watches:?}"
    );
    server.running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn per_connection_watch_streams_and_request_rate_are_capped() {
    let dir = tempfile::tempdir().expect("dir");
    let args = SecurityArgs {
        max_watch_streams_per_connection: Some(2),
        ..SecurityArgs::default()
    };
    let server = start_tcp(dir.path(), args).await.expect("start");
    let ch = tcp_channel(server.addr()).await;
    let mut c = client(ch.clone(), None);
    let req = pb::WatchSecretsRequest::default();
    let w1 = c.watch(req.clone()).await.expect("1").into_inner();
    let _w2 = c.watch(req.clone()).await.expect("2").into_inner();
    let s = c.watch(req.clone()).await.expect_err("3rd");
    assert_eq!(s.code(), Code::ResourceExhausted);
    assert!(s.message().contains("at most 2"), "{}", s.message());
    let s = c
        .watch_many(tokio_stream::empty::<pb::WatchManyRequest>())
        .await
        .expect_err("WatchMany counts too");
    assert_eq!(s.code(), Code::ResourceExhausted);
    // Another connection has its own slots.
    let mut other = client(tcp_channel(server.addr()).await, None);
    let _w3 = other.watch(req.clone()).await.expect("other connection");
    // Closing a stream frees its slot.
    drop(w1);
    assert!(
        common_eventually(|| {
            let mut c = c.clone();
            let req = req.clone();
            async move { c.watch(req).await.is_ok() }
        })
        .await,
        "a slot frees when a stream closes"
    );
    server.running.shutdown().await.expect("shutdown");

    // Request rate: 1 per second, burst 3.
    let dir = tempfile::tempdir().expect("dir");
    let args = SecurityArgs {
        max_requests_per_second_per_connection: Some(1.0),
        request_burst_per_connection: Some(3),
        ..SecurityArgs::default()
    };
    let server = start_tcp(dir.path(), args).await.expect("start");
    let mut c = client(tcp_channel(server.addr()).await, None);
    for _ in 0..3 {
        let s = get(&mut c, "ns", "x").await.expect_err("not found");
        assert_eq!(s.code(), Code::NotFound);
    }
    let s = get(&mut c, "ns", "x").await.expect_err("limited");
    assert_eq!(s.code(), Code::ResourceExhausted);
    assert!(s.message().contains("too many requests"), "{}", s.message());
    let mut fresh = client(tcp_channel(server.addr()).await, None);
    assert_eq!(
        get(&mut fresh, "ns", "x").await.expect_err("nf").code(),
        Code::NotFound,
        "another connection has its own budget"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        get(&mut c, "ns", "x").await.expect_err("nf").code(),
        Code::NotFound,
        "the bucket refills"
    );
    server.running.shutdown().await.expect("shutdown");
}

async fn common_eventually<F, Fut>(mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

#[tokio::test]
async fn audit_records_allowed_and_denied_requests_without_data() {
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki::new();
    let server = secure_server(dir.path(), &pki, true).await;
    let canary = format!("canary-{}", uuid::Uuid::new_v4());
    let ch = tls_channel(server.addr(), &pki.ca_pem, None)
        .await
        .expect("tls");
    let mut admin = client(ch.clone(), Some("tok-admin"));
    let created = create(
        &mut admin,
        secret("b", "target", &[("k", canary.as_bytes())]),
    )
    .await
    .expect("create");
    let rv = created.metadata.as_ref().map_or(0, |m| m.resource_version);
    get(&mut admin, "b", "target").await.expect("get");
    admin
        .list(pb::ListSecretsRequest {
            namespace: "b".into(),
            label_selector: "team=canary-label".into(),
            ..pb::ListSecretsRequest::default()
        })
        .await
        .expect("list");
    let mut single = client(ch.clone(), Some("tok-single"));
    let s = get(&mut single, "a", "target").await.expect_err("denied");
    assert_eq!(s.code(), Code::PermissionDenied);
    let mut bad = client(ch, Some("tok-bogus"));
    let _ = get(&mut bad, "b", "target")
        .await
        .expect_err("unauthenticated");

    let path = dir.path().join("audit.log");
    let text = std::fs::read_to_string(&path).expect("audit log");
    assert!(!text.contains(&canary), "no Secret data in the audit log");
    assert!(!text.contains("canary-label"), "label selectors are HMAC'd");
    assert!(!text.contains("tok-"), "no token in the audit log");
    let records = read_audit(&path);
    let find = |verb: &str, user: &str| {
        records
            .iter()
            .find(|r| r["verb"] == verb && r["user"] == user)
            .cloned()
            .unwrap_or_else(|| panic!("no {verb} record for {user:?}: {records:?}"))
    };
    let c = find("create", "root");
    assert_eq!(c["code"], "Ok");
    assert_eq!(c["namespace"], "b");
    assert_eq!(c["name"], "target");
    assert_eq!(c["resource_version"], rv);
    assert_eq!(c["auth"], "token");
    assert!(c["credential"].as_str().is_some_and(|h| h.len() == 32));
    assert!(
        c["groups"]
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g == "admins"))
    );
    assert!(
        c["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("127.0.0.1:"))
    );
    assert!(c["connection"].as_u64().is_some_and(|n| n > 0));
    assert!(c["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    let l = find("list", "root");
    assert!(
        l["label_selector_hmac"]
            .as_str()
            .is_some_and(|h| h.len() == 32)
    );
    let d = find("get", "single");
    assert_eq!(d["code"], "PermissionDenied");
    assert_eq!(d["namespace"], "a");
    let u = find("get", "");
    assert_eq!(u["code"], "Unauthenticated");
    // The same token is correlated by the same HMAC.
    let creds: Vec<_> = records
        .iter()
        .filter(|r| r["user"] == "root")
        .map(|r| r["credential"].clone())
        .collect();
    assert!(creds.windows(2).all(|w| w[0] == w[1]), "{creds:?}");
    server.running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn audit_fail_closed_refuses_requests_and_fail_open_counts_errors() {
    // The audit path is a directory: fail closed -> UNAVAILABLE, nothing written to the store.
    let dir = tempfile::tempdir().expect("dir");
    let bad = dir.path().join("audit-dir");
    std::fs::create_dir(&bad).expect("mkdir");
    let args = SecurityArgs {
        audit_log: Some(bad.clone()),
        audit_fail_closed: true,
        ..SecurityArgs::default()
    };
    let server = start_tcp(dir.path(), args).await.expect("start");
    let mut c = client(tcp_channel(server.addr()).await, None);
    let s = create(&mut c, secret("ns", "x", &[("k", b"v")]))
        .await
        .expect_err("unaudited");
    assert_eq!(s.code(), Code::Unavailable);
    assert!(
        s.message().contains("audit log unavailable"),
        "{}",
        s.message()
    );
    assert_eq!(
        server.running.store().revision(),
        1,
        "the refused write did not run"
    );
    assert!(server.metrics().audit_errors() > 0);
    server.running.shutdown().await.expect("shutdown");

    // Fail open: the request goes on, the error is counted.
    let dir = tempfile::tempdir().expect("dir");
    let bad = dir.path().join("audit-dir");
    std::fs::create_dir(&bad).expect("mkdir");
    let args = SecurityArgs {
        audit_log: Some(bad),
        ..SecurityArgs::default()
    };
    let server = start_tcp(dir.path(), args).await.expect("start");
    let mut c = client(tcp_channel(server.addr()).await, None);
    let before = server.metrics().audit_errors();
    create(&mut c, secret("ns", "x", &[("k", b"v")]))
        .await
        .expect("fail open");
    assert!(server.metrics().audit_errors() > before);
    server.running.shutdown().await.expect("shutdown");

    // A writable log whose directory disappears; a reopen (SIGHUP) fails: requests are refused
    // until the directory is back.
    let dir = tempfile::tempdir().expect("dir");
    let sub = dir.path().join("logs");
    std::fs::create_dir(&sub).expect("mkdir");
    let args = SecurityArgs {
        audit_log: Some(sub.join("audit.log")),
        audit_fail_closed: true,
        ..SecurityArgs::default()
    };
    let server = start_tcp(dir.path(), args).await.expect("start");
    let mut c = client(tcp_channel(server.addr()).await, None);
    create(&mut c, secret("ns", "x", &[("k", b"v")]))
        .await
        .expect("audited");
    std::fs::remove_dir_all(&sub).expect("rm");
    assert!(server.running.security().reload().is_err());
    let s = get(&mut c, "ns", "x").await.expect_err("unaudited");
    assert_eq!(s.code(), Code::Unavailable);
    std::fs::create_dir(&sub).expect("mkdir");
    get(&mut c, "ns", "x").await.expect("audited again");
    let records = read_audit(&sub.join("audit.log"));
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0]["event"], "audit log writable");
    assert_eq!(records[1]["verb"], "get");
    server.running.shutdown().await.expect("shutdown");

    // A log that opens but cannot be written (/dev/full): the write's answer is UNAVAILABLE.
    if std::path::Path::new("/dev/full").exists() {
        let dir = tempfile::tempdir().expect("dir");
        let args = SecurityArgs {
            audit_log: Some("/dev/full".into()),
            audit_fail_closed: true,
            ..SecurityArgs::default()
        };
        let server = start_tcp(dir.path(), args).await.expect("start");
        let mut c = client(tcp_channel(server.addr()).await, None);
        let s = get(&mut c, "ns", "x").await.expect_err("unaudited");
        assert_eq!(s.code(), Code::Unavailable);
        // Once a write has failed, requests are refused before they run.
        let s = create(&mut c, secret("ns", "x", &[("k", b"v")]))
            .await
            .expect_err("unaudited");
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(
            server.running.store().revision(),
            1,
            "the create did not run (a new store is at 1)"
        );
        server.running.shutdown().await.expect("shutdown");
    }
}

#[tokio::test]
async fn unix_peer_uid_maps_to_a_user() {
    let dir = tempfile::tempdir().expect("dir");
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir.path()).expect("stat"));
    let socket = dir.path().join("coffer.sock");
    let args = SecurityArgs {
        unix_peer_users: vec![format!("{uid}=peeruser:admins")],
        authz_policy: Some(write_file(dir.path(), "policy.yaml", POLICY)),
        audit_log: Some(dir.path().join("audit.log")),
        ..SecurityArgs::default()
    };
    let server = TestServer::builder()
        .dir(dir.path())
        .security(args)
        .listen(vec![
            ListenAddr::Tcp("127.0.0.1:0".into()),
            ListenAddr::Unix(socket.clone()),
        ])
        .try_start()
        .await
        .expect("start");
    let mut c = client(unix_channel(&socket).await, None);
    create(&mut c, secret("ns", "x", &[("k", b"v")]))
        .await
        .expect("the peer uid is peeruser, an admin");
    // Over TCP there is no peer uid: no credentials.
    let mut t = client(tcp_channel(server.addr()).await, None);
    assert_eq!(
        get(&mut t, "ns", "x").await.expect_err("tcp").code(),
        Code::Unauthenticated
    );
    let records = read_audit(&dir.path().join("audit.log"));
    assert_eq!(records[0]["user"], "peeruser");
    assert_eq!(records[0]["auth"], "unix-peer");
    assert_eq!(records[0]["source"], format!("unix:uid={uid}"));
    server.running.shutdown().await.expect("shutdown");

    // Another uid mapped: this caller is nobody.
    let dir = tempfile::tempdir().expect("dir");
    let socket = dir.path().join("coffer.sock");
    let args = SecurityArgs {
        unix_peer_users: vec![format!("{}=someone", uid.wrapping_add(1))],
        ..SecurityArgs::default()
    };
    let server = TestServer::builder()
        .dir(dir.path())
        .security(args)
        .listen(vec![ListenAddr::Unix(socket.clone())])
        .try_start()
        .await
        .expect("start");
    let mut c = client(unix_channel(&socket).await, None);
    assert_eq!(
        get(&mut c, "ns", "x").await.expect_err("unmapped").code(),
        Code::Unauthenticated
    );
    server.running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn non_loopback_bind_without_auth_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let err = TestServer::builder()
        .dir(dir.path())
        .security(SecurityArgs::default())
        .listen(vec![ListenAddr::Tcp("0.0.0.0:0".into())])
        .try_start()
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, ServeError::Config(_)), "{err}");
    assert!(
        err.to_string().contains("refusing to listen on 0.0.0.0:"),
        "{err}"
    );
    assert!(
        err.to_string().contains("--insecure-allow-unauthenticated"),
        "{err}"
    );

    // With the escape hatch, or with authentication, it starts.
    let dir = tempfile::tempdir().expect("dir");
    let args = SecurityArgs {
        insecure_allow_unauthenticated: true,
        ..SecurityArgs::default()
    };
    let s = TestServer::builder()
        .dir(dir.path())
        .security(args)
        .listen(vec![ListenAddr::Tcp("0.0.0.0:0".into())])
        .try_start()
        .await
        .expect("insecure");
    s.running.shutdown().await.expect("shutdown");
    let dir = tempfile::tempdir().expect("dir");
    let args = SecurityArgs {
        token_file: Some(write_file(dir.path(), "tokens.csv", TOKENS)),
        ..SecurityArgs::default()
    };
    let s = TestServer::builder()
        .dir(dir.path())
        .security(args)
        .listen(vec![ListenAddr::Tcp("0.0.0.0:0".into())])
        .try_start()
        .await
        .expect("authenticated");
    s.running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn reload_swaps_tokens_and_policy_without_dropping_connections() {
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki::new();
    let server = secure_server(dir.path(), &pki, false).await;
    let ch = tls_channel(server.addr(), &pki.ca_pem, None)
        .await
        .expect("tls");
    let mut admin = client(ch.clone(), Some("tok-admin"));
    create(&mut admin, secret("b", "target", &[("k", b"v")]))
        .await
        .expect("create");
    // A watch open across the reload.
    let mut w = admin
        .watch(pb::WatchSecretsRequest {
            namespace: "b".into(),
            ..pb::WatchSecretsRequest::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let mut newbie = client(ch.clone(), Some("tok-new"));
    assert_eq!(
        get(&mut newbie, "b", "target")
            .await
            .expect_err("unknown")
            .code(),
        Code::Unauthenticated
    );
    write_file(
        dir.path(),
        "tokens.csv",
        &format!("{TOKENS}tok-new,newbie,9\n"),
    );
    write_file(
        dir.path(),
        "policy.yaml",
        &format!("{POLICY}  - users: [newbie]\n    verbs: [get]\n    namespaces: [b]\n"),
    );
    server.running.security().reload().expect("reload");
    get(&mut newbie, "b", "target")
        .await
        .expect("allowed after reload");
    // A bad policy keeps the current one.
    write_file(dir.path(), "policy.yaml", "rules: [\n");
    assert!(server.running.security().reload().is_err());
    get(&mut newbie, "b", "target")
        .await
        .expect("still allowed");
    // The watch opened before the reloads still delivers.
    create(&mut admin, secret("b", "after", &[("k", b"v")]))
        .await
        .expect("create");
    let ev = tokio::time::timeout(Duration::from_secs(5), w.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("open");
    assert_eq!(
        ev.object.and_then(|o| o.metadata).map(|m| m.name),
        Some("after".into())
    );
    server.running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn bad_security_files_fail_the_start() {
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki::new();
    let base = pki.write(dir.path());
    let tokens = write_file(dir.path(), "tokens.csv", TOKENS);
    let cases: Vec<(SecurityArgs, &str)> = vec![
        (
            SecurityArgs {
                token_file: Some(tokens.clone()),
                authz_policy: Some(write_file(
                    dir.path(),
                    "bad.yaml",
                    "rules:\n  - users: [a]\n    verbs: [get]\n",
                )),
                ..SecurityArgs::default()
            },
            "policy file",
        ),
        (
            SecurityArgs {
                token_file: Some(dir.path().join("missing.csv")),
                ..SecurityArgs::default()
            },
            "cannot read token file",
        ),
        (
            SecurityArgs {
                token_file: Some(write_file(dir.path(), "bad.csv", "only-a-token\n")),
                ..SecurityArgs::default()
            },
            "token file",
        ),
        (
            SecurityArgs {
                tls_key: Some(dir.path().join("missing.key")),
                ..base.clone()
            },
            "cannot read --tls-key",
        ),
        (
            SecurityArgs {
                token_file: Some(tokens.clone()),
                audit_log: Some(dir.path().join("audit.log")),
                audit_hmac_key_file: Some(write_file(dir.path(), "short.key", "short")),
                ..SecurityArgs::default()
            },
            "at least 16 bytes",
        ),
    ];
    for (i, (args, want)) in cases.into_iter().enumerate() {
        let sub = dir.path().join(format!("s{i}"));
        std::fs::create_dir(&sub).expect("mkdir");
        let err = start_tcp(&sub, args).await.err().expect(want);
        assert!(err.to_string().contains(want), "{want}: {err}");
        assert!(!err.to_string().contains("tok-"), "{err}");
    }
    // A certificate file that is not PEM: the TLS setup fails at start.
    let sub = dir.path().join("garbage");
    std::fs::create_dir(&sub).expect("mkdir");
    let args = SecurityArgs {
        tls_cert: Some(write_file(&sub, "garbage.crt", "not a certificate")),
        ..base
    };
    assert!(start_tcp(&sub, args).await.is_err());
}

/// Presents `cert_pem` with the private key `key_pem` (which may not be the certificate's) and
/// returns how many bytes the server answers to an HTTP/2 preface (its SETTINGS), or the error.
async fn h2_answer(
    pki: &Pki,
    addr: std::net::SocketAddr,
    cert_pem: &str,
    key_pem: &str,
) -> std::io::Result<usize> {
    use std::sync::Arc;

    use rustls::sign::CertifiedKey;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Always presents one certificate and key: rustls does not check that they match here.
    #[derive(Debug)]
    struct Fixed(Arc<CertifiedKey>);
    impl rustls::client::ResolvesClientCert for Fixed {
        fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
        fn has_certs(&self) -> bool {
            true
        }
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).expect("ca"))
        .expect("root");
    let chain = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("cert")];
    let key = provider
        .key_provider
        .load_private_key(PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key"))
        .expect("signing key");
    let resolver = Fixed(Arc::new(CertifiedKey::new(chain, key)));
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    tls.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await?; // an empty SETTINGS frame
    tls.flush().await?;
    let mut buf = [0u8; 64];
    tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("no answer"))?
}

#[tokio::test]
async fn the_handshake_checks_that_the_client_holds_its_certificates_key() {
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki::new();
    let server = secure_server(dir.path(), &pki, false).await;
    let alice = pki.client("alice", &["admins"]);
    let mallory = pki.client("mallory", &[]);

    // The certificate with its own key: the server speaks HTTP/2.
    let n = h2_answer(&pki, server.addr(), &alice.cert, &alice.key)
        .await
        .expect("answer");
    assert!(n > 0);
    // Alice's certificate with another key: the CertificateVerify signature is checked at the
    // handshake (the chain is checked later, per request), and the connection is refused.
    let r = h2_answer(&pki, server.addr(), &alice.cert, &mallory.key).await;
    assert!(!matches!(r, Ok(n) if n > 0), "{r:?}");
    println!("a certificate without its key: {r:?}");
    server.running.shutdown().await.expect("shutdown");
}

/// Issue 18, item 3: for a caller with `update` but not `get`, an update answers the same
/// whether or not the data it sends matches: an immutable Secret refuses both with one error,
/// a mutable one is rewritten (a new resource_version) both times. A caller with `get` keeps
/// the Kubernetes no-op.
#[tokio::test]
async fn update_is_no_value_oracle_for_callers_without_get() {
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki::new();
    let mut args = pki.write(dir.path());
    args.token_file = Some(write_file(
        dir.path(),
        "tokens.csv",
        "tok-admin,root,1,admins\ntok-blind,blind,7\n",
    ));
    let policy = "rules:\n  - groups: [admins]\n    verbs: [\"*\"]\n    namespaces: [\"*\"]\n  \
                  - users: [blind]\n    verbs: [update]\n    namespaces: [w]\n";
    args.authz_policy = Some(write_file(dir.path(), "policy.yaml", policy));
    let server = start_tcp(dir.path(), args).await.expect("start");
    let ch = tls_channel(server.addr(), &pki.ca_pem, None)
        .await
        .expect("tls");
    let mut admin = client(ch.clone(), Some("tok-admin"));
    let mut blind = client(ch, Some("tok-blind"));
    let mut imm = secret("w", "imm", &[("k", b"right")]);
    imm.immutable = true;
    admin
        .create(pb::CreateSecretRequest { secret: Some(imm) })
        .await
        .expect("create imm");
    let created = admin
        .create(pb::CreateSecretRequest {
            secret: Some(secret("w", "mut", &[("k", b"right")])),
        })
        .await
        .expect("create mut")
        .into_inner();
    let rv = |s: &pb::Secret| s.metadata.as_ref().map_or(0, |m| m.resource_version);

    let update = |name: &str, value: &[u8], immutable: bool| {
        let mut s = secret("w", name, &[("k", value)]);
        if immutable {
            s.immutable = true;
        }
        pb::UpdateSecretRequest { secret: Some(s) }
    };
    let right = blind
        .update(update("imm", b"right", true))
        .await
        .expect_err("a right guess is refused");
    let wrong = blind
        .update(update("imm", b"wrong", true))
        .await
        .expect_err("a wrong guess is refused");
    assert_eq!(right.code(), Code::InvalidArgument, "{right:?}");
    assert_eq!(
        (right.code(), right.message()),
        (wrong.code(), wrong.message())
    );
    assert!(right.message().contains("data"), "{}", right.message());

    let mut last = rv(&created);
    for value in [&b"right"[..], b"wrong", b"wrong"] {
        let got = blind
            .update(update("mut", value, false))
            .await
            .expect("update")
            .into_inner();
        assert!(rv(&got) > last, "a new resource_version every time");
        assert!(got.data.is_empty(), "no data for a caller without get");
        last = rv(&got);
    }
    // With `get`, an update that changes nothing keeps its resource_version (Kubernetes).
    let same = admin
        .update(update("mut", b"wrong", false))
        .await
        .expect("update")
        .into_inner();
    assert_eq!(rv(&same), last);
    admin
        .update(update("imm", b"right", true))
        .await
        .expect("a no-op update of an immutable Secret, by a reader");
    server.running.shutdown().await.expect("shutdown");
}

/// Issue 18, item 5: a connection pays for its calls before they are authenticated (a flood of
/// unauthenticated calls is cut off by its own connection's budget), refusals of that kind are
/// sampled in the audit log but all counted in the metrics, and unauthenticated calls never
/// spend the server-wide budget that authenticated callers need.
#[tokio::test]
async fn unauthenticated_floods_pay_per_connection_and_leave_the_server_budget_alone() {
    use coffer_server::server::limits::LimitOptions;
    const FLOOD: usize = 60;
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki::new();
    let mut args = pki.write(dir.path());
    args.token_file = Some(write_file(dir.path(), "tokens.csv", TOKENS));
    args.authz_policy = Some(write_file(dir.path(), "policy.yaml", POLICY));
    args.audit_log = Some(dir.path().join("audit.log"));
    args.max_requests_per_second_per_connection = Some(0.01);
    args.request_burst_per_connection = Some(3);
    let server = TestServer::builder()
        .dir(dir.path())
        .security(args)
        .listen(tcp())
        .options(coffer_server::server::ServerOptions {
            limits: LimitOptions {
                // Nothing refills while the test runs.
                max_request_rate: Some(0.01),
                request_burst: Some(4),
                ..LimitOptions::default()
            },
            ..coffer_testkit::server::test_options()
        })
        .try_start()
        .await
        .expect("start");
    let channel = || tls_channel(server.addr(), &pki.ca_pem, None);

    // One connection floods with a bad token: 3 reach authentication, the rest are refused by
    // the connection's own budget.
    let mut flood = client(channel().await.expect("tls"), Some("tok-wrong"));
    let mut codes = Vec::new();
    for _ in 0..FLOOD {
        codes.push(
            get(&mut flood, "b", "target")
                .await
                .expect_err("refused")
                .code(),
        );
    }
    assert!(
        codes[..3].iter().all(|c| *c == Code::Unauthenticated),
        "{codes:?}"
    );
    assert!(
        codes[3..].iter().all(|c| *c == Code::ResourceExhausted),
        "{codes:?}"
    );
    // More anonymous connections, each spending its own burst.
    for _ in 0..3 {
        let mut c = client(channel().await.expect("tls"), None);
        for _ in 0..3 {
            let e = get(&mut c, "b", "target")
                .await
                .expect_err("no credentials");
            assert_eq!(e.code(), Code::Unauthenticated);
        }
    }
    // 12 unauthenticated calls reached authentication; the server's budget of 4 is intact.
    let mut admin = client(channel().await.expect("tls"), Some("tok-admin"));
    for _ in 0..3 {
        let e = get(&mut admin, "b", "target").await.expect_err("absent");
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
    }
    let mut single = client(channel().await.expect("tls"), Some("tok-single"));
    let e = get(&mut single, "b", "target").await.expect_err("absent");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = get(&mut single, "b", "target")
        .await
        .expect_err("server budget spent");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("rate limit exceeded"), "{e:?}");

    // Audit: the refusals are sampled (at most the burst of lines, and a count of those left
    // out); the metrics count every one.
    let records = read_audit(&dir.path().join("audit.log"));
    let refusals = records
        .iter()
        .filter(|r| r["code"] == "Unauthenticated" || r["code"] == "ResourceExhausted")
        .count();
    assert!(
        refusals <= coffer_server::audit::REFUSAL_LINE_BURST as usize + 2,
        "{refusals} refusal lines"
    );
    assert!(refusals >= 10, "{refusals}");
    let text = server.running.metrics().render(None);
    let metric = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    assert_eq!(metric("coffer_unauthenticated_requests_total "), 12);
    assert_eq!(
        metric("coffer_limit_rejections_total{limit=\"connection_request_rate\"}"),
        (FLOOD - 3) as u64
    );
    let sampled_out = metric("coffer_audit_refusals_sampled_out_total ");
    assert_eq!(
        refusals as u64 + sampled_out,
        (FLOOD + 9 + 1) as u64,
        "every refusal is written or counted as sampled out"
    );
    server.running.shutdown().await.expect("shutdown");
}

/// A WatchMany create of one Secret by name.
fn create_watch(id: u64, name: &str) -> pb::WatchManyRequest {
    pb::WatchManyRequest {
        op: Some(pb::watch_many_request::Op::Create(pb::WatchCreate {
            watch_id: id,
            watch: Some(pb::WatchSecretsRequest {
                namespace: "b".into(),
                field_selector: format!("metadata.name={name}"),
                ..pb::WatchSecretsRequest::default()
            }),
        })),
    }
}

/// The next created or canceled answer of a WatchMany stream (events skipped).
async fn next_answer(stream: &mut tonic::Streaming<pb::WatchManyEvent>) -> pb::WatchManyEvent {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("answer in time")
            .expect("stream ok")
            .expect("open");
        if ev.created || ev.canceled {
            return ev;
        }
    }
}

/// Issue 18, item 6: watches are capped per connection (Watch streams and WatchMany watches
/// alike, given back on cancel) and, with authentication on, per identity over all its
/// connections; WatchMany creates pay the connection's request rate.
#[tokio::test]
async fn watches_are_capped_per_connection_and_identity_and_creates_pay_the_rate() {
    // Per connection, no authentication.
    let dir = tempfile::tempdir().expect("dir");
    let args = SecurityArgs {
        max_watches_per_connection: Some(3),
        ..SecurityArgs::default()
    };
    let server = start_tcp(dir.path(), args).await.expect("start");
    let ch = tcp_channel(server.addr()).await;
    let mut c = client(ch.clone(), None);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut stream = c
        .watch_many(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    for id in 1..=3 {
        tx.send(create_watch(id, "x")).await.expect("send");
        assert!(next_answer(&mut stream).await.created, "watch {id}");
    }
    tx.send(create_watch(4, "x")).await.expect("send");
    let refused = next_answer(&mut stream).await;
    assert!(refused.canceled, "{refused:?}");
    assert_eq!(refused.error_code, Code::ResourceExhausted as i32);
    assert!(
        refused
            .error_message
            .contains("--max-watches-per-connection"),
        "{refused:?}"
    );
    // A Watch stream is a watch too.
    let e = c
        .watch(pb::WatchSecretsRequest::default())
        .await
        .expect_err("over the cap");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // Another connection has its own cap.
    let mut other = client(tcp_channel(server.addr()).await, None);
    let _w = other
        .watch(pb::WatchSecretsRequest::default())
        .await
        .expect("another connection");
    // A cancel gives its place back.
    tx.send(pb::WatchManyRequest {
        op: Some(pb::watch_many_request::Op::Cancel(2)),
    })
    .await
    .expect("send");
    assert!(next_answer(&mut stream).await.canceled);
    tx.send(create_watch(5, "x")).await.expect("send");
    assert!(next_answer(&mut stream).await.created);
    // Closing the stream gives back all of its watches.
    drop((tx, stream));
    assert!(
        common_eventually(|| {
            let mut c = c.clone();
            async move { c.watch(pb::WatchSecretsRequest::default()).await.is_ok() }
        })
        .await
    );
    server.running.shutdown().await.expect("shutdown");

    // Per identity, over two connections; and creates pay the connection's rate.
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki::new();
    let mut args = pki.write(dir.path());
    args.token_file = Some(write_file(dir.path(), "tokens.csv", TOKENS));
    args.authz_policy = Some(write_file(dir.path(), "policy.yaml", POLICY));
    args.max_watches_per_identity = Some(2);
    args.max_requests_per_second_per_connection = Some(0.01);
    args.request_burst_per_connection = Some(3);
    let server = start_tcp(dir.path(), args).await.expect("start");
    let channel = || tls_channel(server.addr(), &pki.ca_pem, None);
    let mut a = client(channel().await.expect("tls"), Some("tok-single"));
    let _w1 = a
        .watch(pb::WatchSecretsRequest {
            namespace: "b".into(),
            field_selector: "metadata.name=target".into(),
            ..pb::WatchSecretsRequest::default()
        })
        .await
        .expect("first watch");
    let mut b = client(channel().await.expect("tls"), Some("tok-single"));
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut stream = b
        .watch_many(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream (one request of b's 3)")
        .into_inner();
    tx.send(create_watch(1, "target")).await.expect("send");
    assert!(
        next_answer(&mut stream).await.created,
        "second watch (two of 3)"
    );
    tx.send(create_watch(2, "target")).await.expect("send");
    let refused = next_answer(&mut stream).await;
    assert_eq!(refused.error_code, Code::ResourceExhausted as i32);
    assert!(
        refused.error_message.contains("--max-watches-per-identity"),
        "{refused:?}"
    );
    // b's connection has spent its 3 requests: the next create is over its rate.
    tx.send(create_watch(3, "target")).await.expect("send");
    let refused = next_answer(&mut stream).await;
    assert_eq!(refused.error_code, Code::ResourceExhausted as i32);
    assert!(
        refused.error_message.contains("too many requests"),
        "{refused:?}"
    );
    // The admin is another identity.
    let mut admin = client(channel().await.expect("tls"), Some("tok-admin"));
    let _w = admin
        .watch(pb::WatchSecretsRequest::default())
        .await
        .expect("another identity");
    server.running.shutdown().await.expect("shutdown");
}

/// Issue 18, item 6: a list opens at most `list_scan_rows` records per call; a selector that
/// matches nothing gets empty pages with continue tokens, never one call over everything.
#[tokio::test]
async fn a_list_opens_a_bounded_number_of_records_per_call() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::builder()
        .dir(dir.path())
        .listen(tcp())
        .store_config(coffer_core::store::StoreConfig {
            list_scan_rows: 3,
            ..coffer_core::store::StoreConfig::default()
        })
        .start()
        .await;
    let mut c = client(tcp_channel(server.addr()).await, None);
    for i in 0..7 {
        let mut s = secret("ns", &format!("s{i}"), &[("k", b"v")]);
        if i == 5 {
            s.metadata.as_mut().expect("meta").labels = [("app".to_owned(), "x".to_owned())].into();
        }
        create(&mut c, s).await.expect("create");
    }
    let opens_before = server.store.open_count();
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list(pb::ListSecretsRequest {
                namespace: "ns".into(),
                label_selector: "app=x".into(),
                continue_token: token,
                ..pb::ListSecretsRequest::default()
            })
            .await
            .expect("list")
            .into_inner();
        pages.push(page.items.len());
        token = page.continue_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(pages, [0, 1, 0], "3 + 3 + 1 records opened");
    assert_eq!(server.store.open_count() - opens_before, 7);
    server.running.shutdown().await.expect("shutdown");
}

/// Issue 18, item 9: a client certificate with two CNs names nobody; token and policy files
/// open to others, and an audit log that is a symbolic link or open to others, fail the start
/// with a message naming the file, its mode and the fix.
#[tokio::test]
async fn two_cns_and_loose_security_files_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki::new();
    let server = secure_server(dir.path(), &pki, false).await;
    let pair = pki.client_with_two_cns("single", "root");
    let message = certificate_refused(&pki, server.addr(), &pair).await;
    assert!(
        message.contains("exactly one subject common name"),
        "{message}"
    );
    server.running.shutdown().await.expect("shutdown");

    let chmod = |p: &std::path::Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    let starts = std::sync::atomic::AtomicUsize::new(0);
    let fails = |args: SecurityArgs| {
        // A data directory of its own for each start.
        let n = starts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = dir.path().join(format!("start{n}"));
        std::fs::create_dir(&dir).expect("mkdir");
        async move {
            match start_tcp(&dir, args).await {
                Ok(_) => panic!("the start should fail"),
                Err(e) => e.to_string(),
            }
        }
    };
    let tokens = write_file(dir.path(), "loose-tokens.csv", TOKENS);
    chmod(&tokens, 0o644);
    let e = fails(SecurityArgs {
        token_file: Some(tokens.clone()),
        ..pki.write(dir.path())
    })
    .await;
    assert!(
        e.contains("token file") && e.contains("mode 0644") && e.contains("chmod 600"),
        "{e}"
    );
    assert!(!e.contains("tok-admin"), "no token in the message: {e}");
    chmod(&tokens, 0o600);

    let policy = write_file(dir.path(), "loose-policy.yaml", POLICY);
    chmod(&policy, 0o666);
    let e = fails(SecurityArgs {
        token_file: Some(tokens.clone()),
        authz_policy: Some(policy.clone()),
        ..pki.write(dir.path())
    })
    .await;
    assert!(e.contains("policy file") && e.contains("chmod go-w"), "{e}");
    // Readable by others is fine for a policy (it holds no secret).
    chmod(&policy, 0o644);

    let target = write_file(dir.path(), "elsewhere.log", "");
    let link = dir.path().join("audit-link.log");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let e = fails(SecurityArgs {
        token_file: Some(tokens.clone()),
        authz_policy: Some(policy.clone()),
        audit_log: Some(link),
        ..pki.write(dir.path())
    })
    .await;
    assert!(e.contains("symbolic link"), "{e}");
    let open_log = write_file(dir.path(), "open-audit.log", "");
    chmod(&open_log, 0o644);
    let e = fails(SecurityArgs {
        token_file: Some(tokens.clone()),
        authz_policy: Some(policy.clone()),
        audit_log: Some(open_log.clone()),
        ..pki.write(dir.path())
    })
    .await;
    assert!(e.contains("mode 0644") && e.contains("audit"), "{e}");
    chmod(&open_log, 0o640);
    let last = dir.path().join("last");
    std::fs::create_dir(&last).expect("mkdir");
    let server = start_tcp(
        &last,
        SecurityArgs {
            token_file: Some(tokens),
            authz_policy: Some(policy),
            audit_log: Some(open_log),
            ..pki.write(dir.path())
        },
    )
    .await
    .expect("0600 tokens, 0644 policy and a 0640 audit log start");
    server.running.shutdown().await.expect("shutdown");
}

/// Issue 18, item 9: TLS handshakes in progress are bounded (`max_tls_handshakes`): while a
/// silent client holds the only place, a real client's handshake waits; when the silent one
/// goes, it completes.
#[tokio::test]
async fn tls_handshakes_in_progress_are_bounded() {
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki::new();
    let mut args = pki.write(dir.path());
    args.token_file = Some(write_file(dir.path(), "tokens.csv", TOKENS));
    let server = TestServer::builder()
        .dir(dir.path())
        .security(args)
        .listen(tcp())
        .options(coffer_server::server::ServerOptions {
            max_tls_handshakes: 1,
            ..coffer_testkit::server::test_options()
        })
        .try_start()
        .await
        .expect("start");
    let silent = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect");
    let addr = server.addr();
    let ca = pki.ca_pem.clone();
    let mut real = tokio::spawn(async move { tls_channel(addr, &ca, None).await });
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut real)
            .await
            .is_err(),
        "the handshake waits while the silent client holds the only place"
    );
    drop(silent);
    let ch = real
        .await
        .expect("task")
        .expect("handshake once the place is free");
    // Served: authenticated, then denied by the (empty) policy.
    let mut admin = client(ch, Some("tok-admin"));
    let e = get(&mut admin, "b", "x").await.expect_err("no policy");
    assert_eq!(e.code(), Code::PermissionDenied);
    server.running.shutdown().await.expect("shutdown");
}
