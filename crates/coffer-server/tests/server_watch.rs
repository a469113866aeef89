//! Watch and WatchMany through the wire: event kinds, selectors, initial events and their
//! bookmark, periodic bookmarks, resume within the window, too-old resumes, slow watchers,
//! multiplexed watches, and streams ended by shutdown.

use coffer_testkit::server as server_common;

use std::time::Duration;

use coffer_server::proto::v1 as pb;
use coffer_server::proto::v1::watch_event::Type;
use coffer_server::proto::v1::watch_many_request::Op;
use coffer_server::server::ServerOptions;
use futures::StreamExt;
use server_common::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

const WAIT: Duration = Duration::from_secs(5);

async fn next<T>(s: &mut Streaming<T>) -> Result<T, tonic::Status> {
    match tokio::time::timeout(WAIT, s.message()).await {
        Ok(Ok(Some(m))) => Ok(m),
        Ok(Ok(None)) => panic!("stream ended"),
        Ok(Err(e)) => Err(e),
        Err(_) => panic!("no message within {WAIT:?}"),
    }
}

async fn next_event(s: &mut Streaming<pb::WatchEvent>) -> (Type, pb::Secret) {
    let ev = next(s).await.expect("event");
    (
        Type::try_from(ev.r#type).unwrap_or(Type::Unspecified),
        ev.object.unwrap_or_default(),
    )
}

/// A store that keeps no history: a resume from before the window is "too old" (what these
/// tests check of the window itself), not replayed from history (server_history covers that).
fn without_history() -> coffer_core::store::StoreConfig {
    coffer_core::store::StoreConfig {
        history_retention: Duration::ZERO,
        ..coffer_core::store::StoreConfig::default()
    }
}

/// Waits until the server's window no longer reaches back to `old`: a watch from it is too old.
async fn wait_too_old(ts: &TestServer, old: u64) -> tonic::Status {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let req = pb::WatchSecretsRequest {
            resource_version: old,
            ..Default::default()
        };
        if let Err(e) = watch(ts, req).await {
            return e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the window never moved past {old}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn watch(
    ts: &TestServer,
    req: pb::WatchSecretsRequest,
) -> Result<Streaming<pb::WatchEvent>, tonic::Status> {
    let mut c = ts.client().await;
    c.watch(req).await.map(tonic::Response::into_inner)
}

#[tokio::test]
async fn added_modified_deleted_with_selectors() {
    let ts = TestServer::start().await;
    let mut c = ts.client().await;
    let mut stream = watch(
        &ts,
        pb::WatchSecretsRequest {
            namespace: "ns".into(),
            label_selector: "app=web".into(),
            ..Default::default()
        },
    )
    .await
    .expect("watch");
    // Not matching: other namespace, other labels.
    create(
        &mut c,
        with_labels(secret("other", "a", &[]), &[("app", "web")]),
    )
    .await
    .expect("create");
    create(&mut c, secret("ns", "nolabel", &[]))
        .await
        .expect("create");
    let created = create(
        &mut c,
        with_labels(secret("ns", "a", &[("k", "v1")]), &[("app", "web")]),
    )
    .await
    .expect("create");
    let mut s = created.clone();
    s.data.insert("k".into(), b"v2".to_vec());
    let updated = update(&mut c, s).await.expect("update");
    delete(&mut c, "ns", "a", 0).await.expect("delete");

    let (t, obj) = next_event(&mut stream).await;
    assert_eq!((t, &obj), (Type::Added, &created));
    let (t, obj) = next_event(&mut stream).await;
    assert_eq!((t, &obj), (Type::Modified, &updated));
    let (t, obj) = next_event(&mut stream).await;
    assert_eq!(t, Type::Deleted);
    assert_eq!(obj.data["k"], b"v2", "DELETED carries the last state");
    assert_eq!(rv(&obj), rv(&updated) + 1);
}

#[tokio::test]
async fn field_selector_watch_and_bad_requests() {
    let ts = TestServer::start().await;
    let mut c = ts.client().await;
    let mut stream = watch(
        &ts,
        pb::WatchSecretsRequest {
            field_selector: "metadata.name=target".into(),
            ..Default::default()
        },
    )
    .await
    .expect("watch");
    create(&mut c, secret("a", "other", &[]))
        .await
        .expect("create");
    create(&mut c, secret("b", "target", &[]))
        .await
        .expect("create");
    let (t, obj) = next_event(&mut stream).await;
    assert_eq!(t, Type::Added);
    assert_eq!(meta(&obj).namespace, "b");

    let e = watch(
        &ts,
        pb::WatchSecretsRequest {
            field_selector: "spec.x=y".into(),
            ..Default::default()
        },
    )
    .await
    .expect_err("unsupported");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "fieldSelector: field label not supported: spec.x"
    );
    let e = watch(
        &ts,
        pb::WatchSecretsRequest {
            namespace: "Bad_NS".into(),
            ..Default::default()
        },
    )
    .await
    .expect_err("bad namespace");
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn initial_events_then_annotated_bookmark_then_changes() {
    let ts = TestServer::start().await;
    let mut c = ts.client().await;
    for name in ["a", "b"] {
        create(
            &mut c,
            with_labels(secret("ns", name, &[("k", name)]), &[("w", "1")]),
        )
        .await
        .expect("create");
    }
    create(&mut c, secret("ns", "unlabeled", &[]))
        .await
        .expect("create");
    let revision = ts.store.revision();
    let mut stream = watch(
        &ts,
        pb::WatchSecretsRequest {
            label_selector: "w".into(),
            send_initial_events: true,
            allow_bookmarks: true,
            ..Default::default()
        },
    )
    .await
    .expect("watch");
    let mut initial = Vec::new();
    for _ in 0..2 {
        let (t, obj) = next_event(&mut stream).await;
        assert_eq!(t, Type::Added);
        initial.push(meta(&obj).name);
    }
    assert_eq!(initial, ["a", "b"]);
    let (t, obj) = next_event(&mut stream).await;
    assert_eq!(t, Type::Bookmark);
    let m = meta(&obj);
    assert_eq!(m.resource_version, revision);
    assert_eq!(m.annotations["k8s.io/initial-events-end"], "true");
    assert!(m.name.is_empty() && obj.data.is_empty() && obj.r#type.is_empty());

    create(&mut c, with_labels(secret("ns", "c", &[]), &[("w", "2")]))
        .await
        .expect("create");
    let (t, obj) = next_event(&mut stream).await;
    assert_eq!((t, meta(&obj).name.as_str()), (Type::Added, "c"));
}

#[tokio::test]
async fn periodic_bookmarks_carry_only_the_revision() {
    let ts = TestServer::start().await; // bookmark interval 200 ms
    let mut c = ts.client().await;
    let mut stream = watch(
        &ts,
        pb::WatchSecretsRequest {
            namespace: "quiet".into(),
            allow_bookmarks: true,
            ..Default::default()
        },
    )
    .await
    .expect("watch");
    // A change elsewhere moves the bookmark's revision on.
    let other = create(&mut c, secret("busy", "x", &[]))
        .await
        .expect("create");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (t, obj) = next_event(&mut stream).await;
        assert_eq!(t, Type::Bookmark);
        let m = meta(&obj);
        assert!(m.name.is_empty() && m.annotations.is_empty() && obj.data.is_empty());
        if m.resource_version == rv(&other) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bookmark never advanced"
        );
    }
    // Without allow_bookmarks nothing comes.
    let mut silent = watch(&ts, pb::WatchSecretsRequest::default())
        .await
        .expect("watch");
    let r = tokio::time::timeout(Duration::from_millis(600), silent.message()).await;
    assert!(r.is_err(), "no bookmark without allow_bookmarks: {r:?}");
}

#[tokio::test]
async fn resume_within_the_window_and_too_old_outside_it() {
    let options = ServerOptions {
        watch_window_events: 4,
        ..test_options()
    };
    let ts = TestServer::builder()
        .store_config(without_history())
        .options(options)
        .start()
        .await;
    let mut c = ts.client().await;
    let a = create(&mut c, secret("ns", "a", &[("k", "1")]))
        .await
        .expect("create");
    let mut s = a.clone();
    s.data.insert("k".into(), b"2".to_vec());
    let a2 = update(&mut c, s).await.expect("update");
    let b = create(&mut c, secret("ns", "b", &[]))
        .await
        .expect("create");

    // Resume after `a`: its update and `b` follow, nothing before.
    let mut stream = watch(
        &ts,
        pb::WatchSecretsRequest {
            resource_version: rv(&a),
            ..Default::default()
        },
    )
    .await
    .expect("resume");
    let (t, obj) = next_event(&mut stream).await;
    assert_eq!((t, rv(&obj)), (Type::Modified, rv(&a2)));
    let (t, obj) = next_event(&mut stream).await;
    assert_eq!((t, rv(&obj)), (Type::Added, rv(&b)));

    // Push the window past `a`.
    for i in 0..6 {
        create(&mut c, secret("ns", &format!("n{i}"), &[]))
            .await
            .expect("create");
    }
    let current = ts.store.revision();
    assert!(
        eventually(5, || async {
            let e = wait_too_old(&ts, rv(&a)).await;
            e.message() == format!("too old resource version: {} ({})", rv(&a), current - 4)
        })
        .await
    );
    let e = wait_too_old(&ts, rv(&a)).await;
    assert_eq!(e.code(), Code::OutOfRange);
    // The oldest revision still served works.
    watch(
        &ts,
        pb::WatchSecretsRequest {
            resource_version: current - 4,
            ..Default::default()
        },
    )
    .await
    .expect("oldest in window");
    let e = watch(
        &ts,
        pb::WatchSecretsRequest {
            resource_version: current + 100,
            ..Default::default()
        },
    )
    .await
    .expect_err("too large");
    assert_eq!(e.code(), Code::OutOfRange);
}

#[tokio::test]
async fn a_watcher_that_falls_behind_is_ended_resumably_while_others_continue() {
    let ts = TestServer::start().await;
    let c = ts.client().await;
    // A client with small HTTP/2 windows, so little is buffered in flow control.
    let addr = ts.running.tcp_addr().expect("addr");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(64 * 1024)
        .connect()
        .await
        .expect("connect");
    let mut stalled = pb::secrets_client::SecretsClient::new(channel)
        .watch(pb::WatchSecretsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    // A healthy watcher of the same events, reading all along.
    let mut healthy = watch(&ts, pb::WatchSecretsRequest::default())
        .await
        .expect("watch");
    let total = 320;
    let reader = tokio::spawn(async move {
        let mut seen = 0;
        while seen < total {
            let ev = next(&mut healthy)
                .await
                .expect("healthy watcher keeps going");
            assert_eq!(ev.r#type, Type::Added as i32);
            seen += 1;
        }
        seen
    });
    // The stalled client does not read while 320 x 16 KiB of events go by: its stream buffer,
    // HTTP/2 flow control and then its hub queue fill, and the hub ends it.
    let blob = "x".repeat(16 * 1024);
    for batch in 0..total / 8 {
        // Eight at a time: concurrent writers share syncs.
        let writes = (0..8).map(|j| {
            let mut c = c.clone();
            let s = secret("ns", &format!("s{batch:02}-{j}"), &[("k", &blob)]);
            async move { create(&mut c, s).await.expect("create") }
        });
        futures::future::join_all(writes).await;
    }
    assert_eq!(reader.await.expect("reader"), total);
    let mut added = 0;
    let mut last = 0;
    let err = loop {
        match tokio::time::timeout(WAIT, stalled.message()).await {
            Ok(Ok(Some(ev))) => {
                added += 1;
                last = rv(&ev.object.unwrap_or_default());
            }
            Ok(Ok(None)) => panic!("ended without a status after {added} events"),
            Ok(Err(e)) => break e,
            Err(_) => panic!("stalled after {added} events"),
        }
    };
    assert!(added < total, "{added}");
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert!(
        err.message()
            .ends_with(&format!("resume from resource version {last}")),
        "{err:?} after {last}"
    );
    // Resuming from there gives the rest, in order, without gaps.
    let mut resumed = watch(
        &ts,
        pb::WatchSecretsRequest {
            resource_version: last,
            ..Default::default()
        },
    )
    .await
    .expect("resume");
    // Every remaining event, each once, in order, up to the last write.
    let end = ts.store.revision();
    assert!(end > last, "{end} {last}");
    for expected in last + 1..=end {
        let (t, obj) = next_event(&mut resumed).await;
        assert_eq!((t, rv(&obj)), (Type::Added, expected));
    }
    assert_eq!(
        added + (end - last) as usize,
        total,
        "{added} + {end} - {last}"
    );
}

#[tokio::test]
async fn watch_many_created_events_cancel_and_per_watch_errors() {
    let options = ServerOptions {
        watch_window_events: 4,
        ..test_options()
    };
    let ts = TestServer::builder()
        .store_config(without_history())
        .options(options)
        .start()
        .await;
    let mut c = ts.client().await;
    for i in 0..6 {
        create(&mut c, secret("old", &format!("o{i}"), &[]))
            .await
            .expect("create");
    }
    wait_too_old(&ts, 1).await;
    let (tx, rx) = mpsc::channel(16);
    let mut events = c
        .watch_many(ReceiverStream::new(rx))
        .await
        .expect("watch_many")
        .into_inner();
    let create_op = |id: u64, req: pb::WatchSecretsRequest| pb::WatchManyRequest {
        op: Some(Op::Create(pb::WatchCreate {
            watch_id: id,
            watch: Some(req),
        })),
    };
    tx.send(create_op(
        1,
        pb::WatchSecretsRequest {
            namespace: "a".into(),
            ..Default::default()
        },
    ))
    .await
    .expect("send");
    tx.send(create_op(
        2,
        pb::WatchSecretsRequest {
            field_selector: "metadata.name=solo".into(),
            ..Default::default()
        },
    ))
    .await
    .expect("send");
    tx.send(create_op(
        3,
        pb::WatchSecretsRequest {
            field_selector: "bogus=1".into(),
            ..Default::default()
        },
    ))
    .await
    .expect("send");
    tx.send(create_op(
        4,
        pb::WatchSecretsRequest {
            resource_version: 1,
            ..Default::default()
        },
    ))
    .await
    .expect("send");
    tx.send(create_op(1, pb::WatchSecretsRequest::default()))
        .await
        .expect("send");

    let ev = next(&mut events).await.expect("ack 1");
    assert!(ev.watch_id == 1 && ev.created && !ev.canceled, "{ev:?}");
    let ev = next(&mut events).await.expect("ack 2");
    assert!(ev.watch_id == 2 && ev.created, "{ev:?}");
    let ev = next(&mut events).await.expect("refusal 3");
    assert!(ev.watch_id == 3 && ev.canceled && !ev.created, "{ev:?}");
    assert_eq!(ev.error_code, Code::InvalidArgument as i32);
    assert_eq!(
        ev.error_message,
        "fieldSelector: field label not supported: bogus"
    );
    let ev = next(&mut events).await.expect("refusal 4");
    assert!(ev.watch_id == 4 && ev.canceled, "{ev:?}");
    assert_eq!(ev.error_code, Code::OutOfRange as i32);
    assert!(
        ev.error_message.starts_with("too old resource version: 1 "),
        "{ev:?}"
    );
    let ev = next(&mut events).await.expect("duplicate id");
    assert!(ev.watch_id == 1 && ev.canceled, "{ev:?}");
    assert_eq!(ev.error_code, Code::InvalidArgument as i32);

    // Events, tagged with their watch.
    create(&mut c, secret("a", "x", &[])).await.expect("create");
    create(&mut c, secret("b", "solo", &[]))
        .await
        .expect("create");
    let ev = next(&mut events).await.expect("event");
    assert_eq!(ev.watch_id, 1);
    assert_eq!(
        meta(
            &ev.event
                .clone()
                .unwrap_or_default()
                .object
                .unwrap_or_default()
        )
        .name,
        "x"
    );
    let ev = next(&mut events).await.expect("event");
    assert_eq!(ev.watch_id, 2);

    // Cancel watch 1: acknowledged, and it gets nothing more; watch 2 goes on.
    tx.send(pb::WatchManyRequest {
        op: Some(Op::Cancel(1)),
    })
    .await
    .expect("send");
    let ev = next(&mut events).await.expect("cancel ack");
    assert!(
        ev.watch_id == 1 && ev.canceled && ev.error_code == 0,
        "{ev:?}"
    );
    create(&mut c, secret("a", "y", &[])).await.expect("create");
    let mut s = get(&mut c, "b", "solo").await.expect("get");
    s.data.insert("k".into(), b"v".to_vec());
    update(&mut c, s).await.expect("update");
    let ev = next(&mut events).await.expect("event");
    assert_eq!(ev.watch_id, 2, "{ev:?}");
    assert_eq!(ev.event.unwrap_or_default().r#type, Type::Modified as i32);
    // Cancelling an unknown watch is refused for that id only.
    tx.send(pb::WatchManyRequest {
        op: Some(Op::Cancel(99)),
    })
    .await
    .expect("send");
    let ev = next(&mut events).await.expect("unknown");
    assert!(ev.watch_id == 99 && ev.canceled, "{ev:?}");
    assert_eq!(ev.error_code, Code::NotFound as i32);
    // A server-assigned id when the client gives 0.
    tx.send(create_op(0, pb::WatchSecretsRequest::default()))
        .await
        .expect("send");
    let ev = next(&mut events).await.expect("auto id");
    assert!(ev.created && ev.watch_id != 0 && ev.watch_id != 2, "{ev:?}");
}

#[tokio::test]
async fn shutdown_ends_watch_streams_with_unavailable() {
    let ts = TestServer::start().await;
    let mut c = ts.client().await;
    let mut single = watch(&ts, pb::WatchSecretsRequest::default())
        .await
        .expect("watch");
    let (tx, rx) = mpsc::channel(4);
    let mut many = c
        .watch_many(ReceiverStream::new(rx))
        .await
        .expect("watch_many")
        .into_inner();
    tx.send(pb::WatchManyRequest {
        op: Some(Op::Create(pb::WatchCreate {
            watch_id: 7,
            watch: Some(pb::WatchSecretsRequest::default()),
        })),
    })
    .await
    .expect("send");
    assert!(next(&mut many).await.expect("ack").created);
    assert!(
        eventually(5, || async {
            ts.running.metrics().watch_streams_open() == 2
        })
        .await
    );

    let TestServer { running, .. } = ts;
    let started = std::time::Instant::now();
    running.shutdown().await.expect("shutdown");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    for e in [
        next(&mut single).await.expect_err("ended"),
        next(&mut many).await.expect_err("ended"),
    ] {
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert_eq!(e.message(), "server shutting down");
    }
    drop(tx);
}

/// A resume from further back than a watch can queue at once catches up in steps (waiting for
/// its client), then goes live: every change once, in order, for Watch and for WatchMany.
#[tokio::test]
async fn a_resume_from_far_back_catches_up_then_goes_live_without_gaps_or_duplicates() {
    let ts = TestServer::start().await;
    let mut c = ts.client().await;
    let first = create(&mut c, secret("far", "s0", &[]))
        .await
        .expect("create");
    let from = rv(&first);
    // More changes than a Watch stream's queue holds (128).
    let n = 300u64;
    for batch in 0..n / 20 {
        let writes = (0..20).map(|j| {
            let mut c = c.clone();
            let s = secret("far", &format!("s{batch}-{j}"), &[]);
            async move { create(&mut c, s).await.expect("create") }
        });
        futures::future::join_all(writes).await;
    }
    let req = || pb::WatchSecretsRequest {
        namespace: "far".into(),
        resource_version: from,
        ..Default::default()
    };
    let mut single = watch(&ts, req()).await.expect("resume");
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::WatchManyRequest {
        op: Some(Op::Create(pb::WatchCreate {
            watch_id: 7,
            watch: Some(req()),
        })),
    })
    .await
    .expect("send");
    let mut many = c
        .watch_many(ReceiverStream::new(rx))
        .await
        .expect("watch_many")
        .into_inner();
    let ack = next(&mut many).await.expect("ack");
    assert!(ack.created && ack.watch_id == 7, "{ack:?}");
    // A change made while they catch up, and after.
    let late = create(&mut c, secret("far", "late", &[]))
        .await
        .expect("create");
    let want: Vec<u64> = (from + 1..=rv(&late)).collect();
    let mut got_single = Vec::new();
    while got_single.len() < want.len() {
        let (t, obj) = next_event(&mut single).await;
        assert_eq!(t, Type::Added);
        got_single.push(rv(&obj));
    }
    assert_eq!(got_single, want, "Watch: each change once, in order");
    let mut got_many = Vec::new();
    while got_many.len() < want.len() {
        let ev = next(&mut many).await.expect("event");
        assert_eq!(ev.watch_id, 7, "{ev:?}");
        got_many.push(rv(&ev.event.unwrap_or_default().object.unwrap_or_default()));
    }
    assert_eq!(got_many, want, "WatchMany: each change once, in order");
    // Live now: the next change arrives on both.
    let next_one = create(&mut c, secret("far", "next", &[]))
        .await
        .expect("create");
    let (_, obj) = next_event(&mut single).await;
    assert_eq!(rv(&obj), rv(&next_one));
    let ev = next(&mut many).await.expect("event");
    assert_eq!(
        rv(&ev.event.unwrap_or_default().object.unwrap_or_default()),
        rv(&next_one)
    );
    // Cancelling the live watch is acknowledged; with the client done sending and no watch
    // left, the stream ends cleanly.
    tx.send(pb::WatchManyRequest {
        op: Some(Op::Cancel(7)),
    })
    .await
    .expect("send");
    let ev = next(&mut many).await.expect("cancel ack");
    assert!(
        ev.watch_id == 7 && ev.canceled && ev.error_code == 0,
        "{ev:?}"
    );
    drop(tx);
    let end = tokio::time::timeout(WAIT, many.message()).await;
    assert!(matches!(end, Ok(Ok(None))), "{end:?}");
    // No watch is left registered.
    assert!(
        eventually(5, || async {
            ts.running.metrics().watch_streams_open() == 1
        })
        .await,
        "only the single Watch stream is open"
    );
}

/// The window also ages: a change older than `watch_window_age` can no longer be resumed from,
/// even on a store that is not written to.
#[tokio::test]
async fn the_window_forgets_changes_older_than_its_age_limit() {
    let options = ServerOptions {
        watch_window_age: Some(Duration::from_millis(300)),
        ..test_options()
    };
    let ts = TestServer::builder()
        .store_config(without_history())
        .options(options)
        .start()
        .await;
    let mut c = ts.client().await;
    let a = create(&mut c, secret("aged", "a", &[]))
        .await
        .expect("create");
    let b = create(&mut c, secret("aged", "b", &[]))
        .await
        .expect("create");
    // Fresh: a resume from `a` gets `b`.
    let mut s = watch(
        &ts,
        pb::WatchSecretsRequest {
            resource_version: rv(&a),
            ..Default::default()
        },
    )
    .await
    .expect("resume");
    let (_, obj) = next_event(&mut s).await;
    assert_eq!(rv(&obj), rv(&b));
    // Later, with nothing written: too old.
    let e = wait_too_old(&ts, rv(&a)).await;
    assert_eq!(e.code(), Code::OutOfRange);
    assert!(
        e.message()
            .starts_with(&format!("too old resource version: {}", rv(&a))),
        "{e:?}"
    );
    // The current revision is always a valid place to resume from.
    watch(
        &ts,
        pb::WatchSecretsRequest {
            resource_version: rv(&b),
            ..Default::default()
        },
    )
    .await
    .expect("resume from the current revision");
}

/// README ("Watching at scale"): a WatchMany watch whose change does not fit the stream's queue
/// is canceled alone, with ABORTED and where to resume; the stream and its other watches go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_watch_many_watch_is_canceled_alone() {
    let ts = TestServer::start().await;
    let c = ts.client().await;
    // A client with small HTTP/2 windows, so little is buffered in flow control.
    let addr = ts.running.tcp_addr().expect("addr");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .initial_stream_window_size(16 * 1024)
        .initial_connection_window_size(16 * 1024)
        .connect()
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(4);
    let mut events = pb::secrets_client::SecretsClient::new(channel)
        .watch_many(ReceiverStream::new(rx))
        .await
        .expect("watch_many")
        .into_inner();
    for (id, namespace) in [(1, "bulk"), (2, "quiet")] {
        tx.send(pb::WatchManyRequest {
            op: Some(Op::Create(pb::WatchCreate {
                watch_id: id,
                watch: Some(pb::WatchSecretsRequest {
                    namespace: namespace.into(),
                    ..Default::default()
                }),
            })),
        })
        .await
        .expect("send");
        let ev = next(&mut events).await.expect("ack");
        assert!(ev.watch_id == id && ev.created, "{ev:?}");
    }
    // Not reading while more changes than the stream's queue (4096) go by in "bulk".
    let total = 4600;
    let blob = "x".repeat(512);
    futures::stream::iter(0..total)
        .map(|i| {
            let mut c = c.clone();
            let s = secret("bulk", &format!("b{i:05}"), &[("k", &blob)]);
            async move { create(&mut c, s).await.expect("create") }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    // Watch 1's queued events, then its cancel.
    let mut delivered = 0;
    let canceled = loop {
        let ev = next(&mut events).await.expect("the stream goes on");
        assert_eq!(ev.watch_id, 1, "{ev:?}");
        if ev.canceled {
            break ev;
        }
        delivered += 1;
    };
    assert!(delivered < total, "{delivered}");
    assert_eq!(canceled.error_code, Code::Aborted as i32, "{canceled:?}");
    assert!(
        canceled.error_message.contains("fell behind")
            && canceled
                .error_message
                .contains("resume from resource version"),
        "{canceled:?}"
    );
    // Watch 2, on the same stream, still gets its change, and watch 1 nothing more.
    create(&mut c.clone(), secret("quiet", "q", &[]))
        .await
        .expect("create");
    let ev = next(&mut events).await.expect("the stream goes on");
    assert_eq!(ev.watch_id, 2, "{ev:?}");
    let inner = ev.event.unwrap_or_default();
    assert_eq!(inner.r#type, Type::Added as i32);
    assert_eq!(
        inner.object.and_then(|o| o.metadata).map(|m| m.name),
        Some("q".to_owned())
    );
}
