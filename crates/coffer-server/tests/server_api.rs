//! The Secret service through the wire: a real server on 127.0.0.1:0 and a unix socket, driven
//! by the generated tonic client. Every unary RPC, every error code, the validation table,
//! preconditions, immutable rules, pagination and selectors.

use coffer_testkit::server as server_common;

use coffer_core::storage::{Backend, Batch};
use coffer_server::proto::v1 as pb;
use server_common::*;
use tonic::Code;

#[tokio::test]
async fn crud_over_tcp_and_unix_socket() {
    let ts = TestServer::start().await;
    let mut tcp = ts.client().await;
    let mut unix = ts.unix_client().await;

    let mut s = secret("ns", "db", &[("user", "admin")]);
    s.string_data.insert("password".into(), "hunter2".into());
    s.string_data.insert("user".into(), "root".into());
    let created = create(&mut tcp, s).await.expect("create");
    let m = meta(&created);
    assert_eq!(created.r#type, "Opaque");
    assert!(!m.uid.is_empty());
    assert!(m.creation_timestamp.is_some_and(|t| t.seconds > 0));
    assert_eq!(m.resource_version, 2, "a new store is at 1, as etcd's");
    assert!(created.string_data.is_empty(), "string_data is write-only");
    assert_eq!(created.data["password"], b"hunter2");
    assert_eq!(created.data["user"], b"root", "string_data wins on a clash");

    // Read back over the unix socket.
    let got = get(&mut unix, "ns", "db").await.expect("get");
    assert_eq!(got, created);

    let mut changed = got.clone();
    changed.data.insert("extra".into(), b"x".to_vec());
    let updated = update(&mut unix, changed).await.expect("update");
    assert_eq!(rv(&updated), 3);
    assert_eq!(meta(&updated).uid, m.uid);
    assert_eq!(meta(&updated).creation_timestamp, m.creation_timestamp);

    let listed = list(&mut tcp, pb::ListSecretsRequest::default())
        .await
        .expect("list");
    assert_eq!(names(&listed.items), ["ns/db"]);
    assert_eq!(listed.resource_version, 3);
    assert!(listed.continue_token.is_empty());

    let last = delete(&mut tcp, "ns", "db", 0).await.expect("delete");
    assert_eq!(rv(&last), 4, "the delete's revision");
    assert_eq!(last.data["extra"], b"x", "the last state");
    let err = get(&mut tcp, "ns", "db").await.expect_err("gone");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "secrets \"db\" not found");
}

#[tokio::test]
async fn missing_secret_field_and_not_found_and_already_exists() {
    let ts = TestServer::start().await;
    let mut c = ts.client().await;
    let err = c
        .create(pb::CreateSecretRequest { secret: None })
        .await
        .expect_err("no secret");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "secret: Required value");
    let err = c
        .update(pb::UpdateSecretRequest { secret: None })
        .await
        .expect_err("no secret");
    assert_eq!(err.code(), Code::InvalidArgument);

    create(&mut c, secret("ns", "a", &[]))
        .await
        .expect("create");
    let err = create(&mut c, secret("ns", "a", &[]))
        .await
        .expect_err("exists");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(err.message(), "secrets \"a\" already exists");

    for err in [
        get(&mut c, "ns", "b").await.expect_err("get"),
        update(&mut c, secret("ns", "b", &[]))
            .await
            .expect_err("update"),
        delete(&mut c, "ns", "b", 0).await.expect_err("delete"),
    ] {
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }
    // A bad name is INVALID_ARGUMENT even for reads.
    let err = get(&mut c, "ns", "Bad_Name").await.expect_err("bad name");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("metadata.name: Invalid value"),
        "{err:?}"
    );
}

fn typed(t: &str, data: &[(&str, &str)]) -> pb::Secret {
    let mut s = secret("ns", "s", data);
    s.r#type = t.into();
    s
}

#[tokio::test]
async fn kubernetes_validation_table_through_the_wire() {
    let ts = TestServer::start().await;
    let mut c = ts.client().await;
    const CANARY: &str = "CANARY-VALUE-91f2";
    let big = |n: usize| -> pb::Secret {
        let mut s = secret("ns", "big", &[]);
        s.data.insert("k".into(), vec![b'x'; n]);
        s
    };
    // (secret, Ok or the start of the message)
    let bad_ns = secret("Bad_NS", "s", &[]);
    let mut with_rv = secret("ns", "s", &[]);
    meta_mut(&mut with_rv).resource_version = 5;
    let rows: Vec<(pb::Secret, Option<&str>)> = vec![
        (
            secret("ns", "s", &[("a*b", CANARY)]),
            Some(
                "data[a*b]: Invalid value: \"a*b\": a valid key must consist of alphanumeric characters, '-', '_' or '.'",
            ),
        ),
        (
            secret("ns", "s", &[("..x", "v")]),
            Some("data[..x]: Invalid value"),
        ),
        (secret("ns", "s", &[(".key", "v")]), None),
        (
            bad_ns,
            Some("metadata.namespace: Invalid value: \"Bad_NS\""),
        ),
        (secret("ns", "", &[]), Some("metadata.name: Required value")),
        (
            with_labels(secret("ns", "s", &[]), &[("tier", "-bad")]),
            Some("metadata.labels: Invalid value: \"-bad\""),
        ),
        (
            typed("kubernetes.io/tls", &[]),
            Some("data[tls.crt]: Required value, data[tls.key]: Required value"),
        ),
        (
            typed("kubernetes.io/tls", &[("tls.crt", ""), ("tls.key", "")]),
            None,
        ),
        (
            typed("kubernetes.io/basic-auth", &[]),
            Some("data[username]: Required value"),
        ),
        (
            typed("kubernetes.io/basic-auth", &[("password", "p")]),
            None,
        ),
        (
            typed("kubernetes.io/ssh-auth", &[("ssh-privatekey", "")]),
            Some("data[ssh-privatekey]: Required value"),
        ),
        (
            typed(
                "kubernetes.io/dockerconfigjson",
                &[(".dockerconfigjson", "[]")],
            ),
            Some(
                "data[.dockerconfigjson]: Invalid value: \"<secret contents redacted>\": must be a valid JSON object",
            ),
        ),
        (
            typed("kubernetes.io/dockercfg", &[(".dockercfg", CANARY)]),
            Some("data[.dockercfg]: Invalid value: \"<secret contents redacted>\""),
        ),
        (
            typed(
                "kubernetes.io/dockerconfigjson",
                &[(".dockerconfigjson", "{}")],
            ),
            None,
        ),
        (
            typed("bootstrap.kubernetes.io/token", &[("expiration", "x")]),
            None,
        ),
        (
            typed("kubernetes.io/service-account-token", &[]),
            Some("metadata.annotations[kubernetes.io/service-account.name]: Required value"),
        ),
        (with_rv, Some("metadata.resourceVersion: Invalid value")),
        (big(1_048_576), None),
        (
            big(1_048_577),
            Some("data: Too long: may not be more than 1048576 bytes"),
        ),
    ];
    for (i, (s, want)) in rows.into_iter().enumerate() {
        let name = meta(&s).name;
        let got = create(&mut c, s).await;
        match want {
            None => {
                got.unwrap_or_else(|e| panic!("row {i}: {e:?}"));
                // Free the name for the next row.
                delete(&mut c, "ns", &name, 0).await.expect("cleanup");
            }
            Some(prefix) => {
                let e = got.expect_err("invalid");
                assert_eq!(e.code(), Code::InvalidArgument, "row {i}: {e:?}");
                assert!(
                    e.message().starts_with(prefix),
                    "row {i}: {:?} does not start with {prefix:?}",
                    e.message()
                );
                assert!(!e.message().contains(CANARY), "row {i} leaks data");
            }
        }
    }
}

#[tokio::test]
async fn error_messages_stay_bounded_for_absurd_requests() {
    let ts = TestServer::start().await;
    let mut c = ts.client().await;
    let mut s = secret("ns", "s", &[]);
    if let Some(m) = s.metadata.as_mut() {
        for i in 0..5000 {
            m.labels.insert(format!("bad key {i} é"), "v".into());
        }
    }
    let e = create(&mut c, s).await.expect_err("invalid");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("metadata.labels: Invalid value"));
    assert!(e.message().len() <= 8 * 1024, "{}", e.message().len());
    // The connection is fine afterwards.
    create(&mut c, secret("ns", "ok", &[]))
        .await
        .expect("create");
}

#[tokio::test]
async fn preconditions_on_update_and_delete() {
    let ts = TestServer::start().await;
    let mut c = ts.client().await;
    let v1 = create(&mut c, secret("ns", "a", &[("k", "1")]))
        .await
        .expect("create");
    let mut s = v1.clone();
    s.data.insert("k".into(), b"2".to_vec());
    let v2 = update(&mut c, s.clone()).await.expect("update at v1");
    assert_eq!(rv(&v2), rv(&v1) + 1);

    // Stale: still names v1.
    let e = update(&mut c, s.clone()).await.expect_err("stale update");
    assert_eq!(e.code(), Code::Aborted);
    assert!(
        e.message().contains("the object has been modified"),
        "{e:?}"
    );
    // 0 = unconditional.
    meta_mut(&mut s).resource_version = 0;
    s.data.insert("k".into(), b"3".to_vec());
    let v3 = update(&mut c, s).await.expect("unconditional update");
    assert_eq!(v3.data["k"], b"3");

    let e = delete(&mut c, "ns", "a", rv(&v2))
        .await
        .expect_err("stale delete");
    assert_eq!(e.code(), Code::Aborted);
    delete(&mut c, "ns", "a", rv(&v3))
        .await
        .expect("delete at current");
}

#[tokio::test]
async fn immutable_rules() {
    let ts = TestServer::start().await;
    let mut c = ts.client().await;
    let mut s = secret("ns", "frozen", &[("k", "v")]);
    s.immutable = true;
    let stored = create(&mut c, s).await.expect("create");

    let mut data_change = stored.clone();
    data_change.data.insert("k".into(), b"other".to_vec());
    let e = update(&mut c, data_change).await.expect_err("data");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "data: Forbidden: field is immutable when `immutable` is set"
    );

    let mut unfreeze = stored.clone();
    unfreeze.immutable = false;
    let e = update(&mut c, unfreeze).await.expect_err("unset");
    assert_eq!(
        e.message(),
        "immutable: Forbidden: field is immutable when `immutable` is set"
    );

    let mut retype = stored.clone();
    retype.r#type = "kubernetes.io/basic-auth".into();
    let e = update(&mut c, retype).await.expect_err("type");
    assert!(
        e.message()
            .starts_with("type: Invalid value: \"kubernetes.io/basic-auth\": field is immutable"),
        "{e:?}"
    );

    // Labels and annotations may still change.
    let mut relabel = with_labels(stored.clone(), &[("tier", "gold")]);
    meta_mut(&mut relabel)
        .annotations
        .insert("note".into(), "hi".into());
    let relabeled = update(&mut c, relabel).await.expect("labels may change");
    assert_eq!(meta(&relabeled).labels["tier"], "gold");
    assert!(relabeled.immutable);
}

#[tokio::test]
async fn list_pagination_with_continue_tokens() {
    let ts = TestServer::start().await;
    let mut c = ts.client().await;
    for i in 0..25 {
        let ns = if i % 2 == 0 { "even" } else { "odd" };
        create(&mut c, secret(ns, &format!("s{i:02}"), &[]))
            .await
            .expect("create");
    }
    let mut all = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    let mut revision = None;
    loop {
        let page = list(
            &mut c,
            pb::ListSecretsRequest {
                limit: 10,
                continue_token: token.clone(),
                ..Default::default()
            },
        )
        .await
        .expect("list");
        pages += 1;
        assert!(page.items.len() <= 10);
        assert_eq!(
            *revision.get_or_insert(page.resource_version),
            page.resource_version
        );
        all.extend(names(&page.items));
        if page.continue_token.is_empty() {
            break;
        }
        token = page.continue_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(all.len(), 25);
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "pages come in (namespace, name) order");

    let e = list(
        &mut c,
        pb::ListSecretsRequest {
            continue_token: "garbage!".into(),
            ..Default::default()
        },
    )
    .await
    .expect_err("bad token");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("continue: invalid continue token"),
        "{e:?}"
    );

    // A namespace-scoped list.
    let odd = list(
        &mut c,
        pb::ListSecretsRequest {
            namespace: "odd".into(),
            ..Default::default()
        },
    )
    .await
    .expect("list odd");
    assert_eq!(odd.items.len(), 12);
}

#[tokio::test]
async fn list_pages_of_large_secrets_fit_a_default_client() {
    let ts = TestServer::start().await;
    let mut big = ts.client().await;
    for i in 0..5 {
        let mut s = secret("ns", &format!("big{i}"), &[]);
        s.data.insert("blob".into(), vec![b'x'; 900 * 1024]);
        create(&mut big, s).await.expect("create");
    }
    // A client with tonic's default 4 MiB receive limit reads every page.
    let mut c = pb::secrets_client::SecretsClient::new(ts.channel().await);
    let mut seen = 0;
    let mut token = String::new();
    loop {
        let page = list(
            &mut c,
            pb::ListSecretsRequest {
                continue_token: token.clone(),
                ..Default::default()
            },
        )
        .await
        .expect("list");
        assert!(
            !page.items.is_empty() && page.items.len() <= 3,
            "{}",
            page.items.len()
        );
        seen += page.items.len();
        if page.continue_token.is_empty() {
            break;
        }
        token = page.continue_token;
    }
    assert_eq!(seen, 5);
}

#[tokio::test]
async fn label_and_field_selectors() {
    let ts = TestServer::start().await;
    let mut c = ts.client().await;
    let mk = |ns: &str, name: &str, labels: &[(&str, &str)], t: &str| {
        let mut s = with_labels(secret(ns, name, &[("username", "u")]), labels);
        s.r#type = t.into();
        s
    };
    for s in [
        mk("a", "one", &[("tier", "gold"), ("app", "web")], "Opaque"),
        mk(
            "a",
            "two",
            &[("tier", "silver")],
            "kubernetes.io/basic-auth",
        ),
        mk("b", "one", &[("tier", "gold")], "Opaque"),
        mk("b", "three", &[], "Opaque"),
    ] {
        create(&mut c, s).await.expect("create");
    }
    let sel = |labels: &str, fields: &str| pb::ListSecretsRequest {
        label_selector: labels.into(),
        field_selector: fields.into(),
        ..Default::default()
    };
    let cases = [
        (sel("tier=gold", ""), vec!["a/one", "b/one"]),
        (sel("tier in (gold,silver),app", ""), vec!["a/one"]),
        (sel("!tier", ""), vec!["b/three"]),
        (sel("tier!=gold", ""), vec!["a/two", "b/three"]),
        (sel("", "metadata.name=one"), vec!["a/one", "b/one"]),
        (
            sel("", "metadata.namespace=b,metadata.name!=one"),
            vec!["b/three"],
        ),
        (sel("", "type=kubernetes.io/basic-auth"), vec!["a/two"]),
        (sel("tier=gold", "metadata.namespace=a"), vec!["a/one"]),
    ];
    for (req, want) in cases {
        let desc = format!("{:?} {:?}", req.label_selector, req.field_selector);
        let got = list(&mut c, req).await.expect("list");
        assert_eq!(names(&got.items), want, "{desc}");
    }
    let e = list(&mut c, sel("", "data.password=x"))
        .await
        .expect_err("unsupported field");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "fieldSelector: field label not supported: data.password"
    );
    let e = list(&mut c, sel("tier in (gold", ""))
        .await
        .expect_err("bad label selector");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("labelSelector: "), "{e:?}");
}

#[tokio::test]
async fn oversize_request_is_resource_exhausted() {
    let ts = TestServer::start().await;
    let mut c = ts.client().await;
    let mut s = secret("ns", "huge", &[]);
    s.data.insert("blob".into(), vec![b'x'; 5 << 20]);
    let e = create(&mut c, s).await.expect_err("too large");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("larger than the server accepts"),
        "{e:?}"
    );
    // The channel still works.
    create(&mut c, secret("ns", "small", &[]))
        .await
        .expect("create");
    assert_eq!(
        ts.running
            .metrics()
            .requests("Create", Code::ResourceExhausted),
        1
    );
}

#[tokio::test]
async fn tampered_record_is_data_loss() {
    let ts = TestServer::start().await;
    let mut c = ts.client().await;
    create(&mut c, secret("ns", "victim", &[("k", "v")]))
        .await
        .expect("create");
    // The current version's stored entry; its last byte is the sealed record's.
    let key = coffer_core::storage::mvcc::layout::current_key(b"s/ns/victim");
    let key = key.as_slice();
    let mut record = ts.backend().get(key).expect("get").expect("record");
    let last = record.len() - 1;
    record[last] ^= 1;
    let mut batch = Batch::new();
    batch.put(key.to_vec(), record);
    ts.backend().apply(batch).expect("tamper");
    let e = get(&mut c, "ns", "victim").await.expect_err("tampered");
    assert_eq!(e.code(), Code::DataLoss, "{e:?}");
    assert!(e.message().contains("ns/victim"), "{e:?}");
    let e = list(&mut c, pb::ListSecretsRequest::default())
        .await
        .expect_err("list hits it too");
    assert_eq!(e.code(), Code::DataLoss);
}

#[tokio::test]
async fn kms_down_is_unavailable_and_recovers_without_restart() {
    let ts = TestServer::builder().kms_down().start().await;
    let mut c = ts.client().await;
    let e = create(&mut c, secret("ns", "a", &[("k", "v")]))
        .await
        .expect_err("KMS down");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("KMS"), "{e:?}");
    ts.kms()
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    create(&mut c, secret("ns", "a", &[("k", "v")]))
        .await
        .expect("KMS back");
}
