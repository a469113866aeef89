//! The etcd door against a real etcd (Debian's etcd-server 3.4): the same scripted calls go to a
//! fresh etcd member and to a fresh Coffer, and the answers must be equal once the ids that
//! differ by nature (cluster and member id, raft term) are zeroed. The script covers the call
//! shapes of kube-apiserver's etcd3 store (shared/ETCD-DOOR.md): create, GuaranteedUpdate,
//! conditional and legacy delete, paginated lists pinned at a revision, count and keys-only
//! reads, watches with prev_kv from history, compaction through `compact_rev_key`; and every
//! error etcd answers to them (compacted and future revisions, empty and duplicate keys, too
//! many operations, missing leases, ignore_value/ignore_lease misuse).

use std::time::Duration;

use coffer_server::proto::etcd::etcdserverpb as pb;
use coffer_server::proto::etcd::mvccpb;
use coffer_testkit::etcd::{Clients, RealEtcd};
use coffer_testkit::server::TestServer;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::request_op::Request as Op;

const PREFIX: &[u8] = b"/registry/secrets/";
const PREFIX_END: &[u8] = b"/registry/secrets0";

fn zero(h: &mut Option<pb::ResponseHeader>) {
    if let Some(h) = h {
        h.cluster_id = 0;
        h.member_id = 0;
        h.raft_term = 0;
    }
}

fn zero_ops(ops: &mut [pb::ResponseOp]) {
    use pb::response_op::Response;
    for r in ops {
        match &mut r.response {
            Some(Response::ResponseRange(x)) => zero(&mut x.header),
            Some(Response::ResponsePut(x)) => zero(&mut x.header),
            Some(Response::ResponseDeleteRange(x)) => zero(&mut x.header),
            Some(Response::ResponseTxn(x)) => {
                zero(&mut x.header);
                zero_ops(&mut x.responses);
            }
            None => {}
        }
    }
}

fn outcome<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    fix: impl FnOnce(&mut T),
) -> String {
    match r {
        Ok(resp) => {
            let mut m = resp.into_inner();
            fix(&mut m);
            format!("{m:?}")
        }
        Err(s) => format!("error {:?}: {}", s.code(), s.message()),
    }
}

fn put(key: &[u8], value: &[u8]) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Op::RequestPut(pb::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..Default::default()
        })),
    }
}

fn get(key: &[u8]) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Op::RequestRange(pb::RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

fn del(key: &[u8]) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Op::RequestDeleteRange(pb::DeleteRangeRequest {
            key: key.to_vec(),
            prev_kv: true,
            ..Default::default()
        })),
    }
}

fn cmp(
    key: &[u8],
    target: CompareTarget,
    result: CompareResult,
    value: TargetUnion,
) -> pb::Compare {
    pb::Compare {
        key: key.to_vec(),
        target: target as i32,
        result: result as i32,
        target_union: Some(value),
        range_end: Vec::new(),
    }
}

fn mod_eq(key: &[u8], rev: i64) -> pb::Compare {
    cmp(
        key,
        CompareTarget::Mod,
        CompareResult::Equal,
        TargetUnion::ModRevision(rev),
    )
}

fn secret_key(ns: &str, name: &str) -> Vec<u8> {
    format!("/registry/secrets/{ns}/{name}").into_bytes()
}

/// Runs the script against one server; returns one normalized line per answer. `base` is the
/// revision before the script (0 on a fresh store, whose first write gets revision 1 + 1): the
/// revisions it names are relative to it.
async fn script(c: &mut Clients, base: i64) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    macro_rules! record {
        ($name:expr, $call:expr, $fix:expr) => {
            out.push(($name.to_string(), outcome($call.await, $fix)));
        };
    }
    let range_fix = |r: &mut pb::RangeResponse| zero(&mut r.header);
    let txn_fix = |r: &mut pb::TxnResponse| {
        zero(&mut r.header);
        zero_ops(&mut r.responses);
    };
    let put_fix = |r: &mut pb::PutResponse| zero(&mut r.header);
    let del_fix = |r: &mut pb::DeleteRangeResponse| zero(&mut r.header);

    // GetCurrentResourceVersion on an empty store: header.revision 1.
    record!(
        "empty get",
        c.kv.range(pb::RangeRequest {
            key: b"/registry/secrets".to_vec(),
            ..Default::default()
        }),
        range_fix
    );
    // store.Create: OptimisticPut at revision 0, twice (the second fails, no responses).
    for (i, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        let k = secret_key("ns1", name);
        let v = format!("k8s\0value-{i}").into_bytes();
        record!(
            format!("create {name}"),
            c.kv.txn(pb::TxnRequest {
                compare: vec![mod_eq(&k, 0)],
                success: vec![put(&k, &v)],
                failure: vec![]
            }),
            txn_fix
        );
    }
    let a = secret_key("ns1", "a");
    record!(
        "create a again",
        c.kv.txn(pb::TxnRequest {
            compare: vec![mod_eq(&a, 0)],
            success: vec![put(&a, b"again")],
            failure: vec![]
        }),
        txn_fix
    );
    // Get (limit 1) and at a revision.
    record!(
        "get a",
        c.kv.range(pb::RangeRequest {
            key: a.clone(),
            limit: 1,
            ..Default::default()
        }),
        range_fix
    );
    record!(
        "get a at 2",
        c.kv.range(pb::RangeRequest {
            key: a.clone(),
            revision: base + 2,
            ..Default::default()
        }),
        range_fix
    );
    record!(
        "get a at 1",
        c.kv.range(pb::RangeRequest {
            key: a.clone(),
            revision: base + 1,
            ..Default::default()
        }),
        range_fix
    );
    // GuaranteedUpdate: right and stale revisions (the failure branch returns the current kv).
    record!(
        "update a",
        c.kv.txn(pb::TxnRequest {
            compare: vec![mod_eq(&a, base + 2)],
            success: vec![put(&a, b"k8s\0v2")],
            failure: vec![get(&a)]
        }),
        txn_fix
    );
    record!(
        "update a stale",
        c.kv.txn(pb::TxnRequest {
            compare: vec![mod_eq(&a, base + 2)],
            success: vec![put(&a, b"k8s\0v3")],
            failure: vec![get(&a)]
        }),
        txn_fix
    );
    // Paginated list, pinned at the first page's revision.
    record!(
        "list page 1",
        c.kv.range(pb::RangeRequest {
            key: PREFIX.to_vec(),
            range_end: PREFIX_END.to_vec(),
            limit: 2,
            ..Default::default()
        }),
        range_fix
    );
    let b = secret_key("ns1", "b");
    record!(
        "update b between pages",
        c.kv.put(pb::PutRequest {
            key: b.clone(),
            value: b"k8s\0b2".to_vec(),
            prev_kv: true,
            ..Default::default()
        }),
        put_fix
    );
    let mut next = secret_key("ns1", "b");
    next.push(0);
    record!(
        "list page 2 pinned",
        c.kv.range(pb::RangeRequest {
            key: next,
            range_end: PREFIX_END.to_vec(),
            limit: 2,
            revision: base + 7,
            ..Default::default()
        }),
        range_fix
    );
    record!(
        "count",
        c.kv.range(pb::RangeRequest {
            key: PREFIX.to_vec(),
            range_end: PREFIX_END.to_vec(),
            count_only: true,
            ..Default::default()
        }),
        range_fix
    );
    record!(
        "keys only limit 3",
        c.kv.range(pb::RangeRequest {
            key: PREFIX.to_vec(),
            range_end: PREFIX_END.to_vec(),
            keys_only: true,
            limit: 3,
            ..Default::default()
        }),
        range_fix
    );
    record!(
        "from key",
        c.kv.range(pb::RangeRequest {
            key: secret_key("ns1", "c"),
            range_end: vec![0],
            ..Default::default()
        }),
        range_fix
    );
    record!(
        "all keys",
        c.kv.range(pb::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            keys_only: true,
            ..Default::default()
        }),
        range_fix
    );
    record!(
        "sort by mod desc",
        c.kv.range(pb::RangeRequest {
            key: PREFIX.to_vec(),
            range_end: PREFIX_END.to_vec(),
            sort_order: 2,
            sort_target: 3,
            keys_only: true,
            ..Default::default()
        }),
        range_fix
    );
    record!(
        "sort by value",
        c.kv.range(pb::RangeRequest {
            key: PREFIX.to_vec(),
            range_end: PREFIX_END.to_vec(),
            sort_order: 1,
            sort_target: 4,
            ..Default::default()
        }),
        range_fix
    );
    record!(
        "min mod filter",
        c.kv.range(pb::RangeRequest {
            key: PREFIX.to_vec(),
            range_end: PREFIX_END.to_vec(),
            min_mod_revision: base + 7,
            keys_only: true,
            ..Default::default()
        }),
        range_fix
    );
    // Conditional delete: stale, then right; legacy delete; a delete of nothing.
    let c_key = secret_key("ns1", "c");
    record!(
        "delete c stale",
        c.kv.txn(pb::TxnRequest {
            compare: vec![mod_eq(&c_key, 99)],
            success: vec![del(&c_key)],
            failure: vec![get(&c_key)]
        }),
        txn_fix
    );
    record!(
        "delete c",
        c.kv.txn(pb::TxnRequest {
            compare: vec![mod_eq(&c_key, base + 4)],
            success: vec![del(&c_key)],
            failure: vec![get(&c_key)]
        }),
        txn_fix
    );
    let d_key = secret_key("ns1", "d");
    record!(
        "legacy delete d",
        c.kv.txn(pb::TxnRequest {
            compare: vec![],
            success: vec![get(&d_key), del(&d_key)],
            failure: vec![]
        }),
        txn_fix
    );
    record!(
        "delete nothing",
        c.kv.delete_range(pb::DeleteRangeRequest {
            key: b"/nothing".to_vec(),
            ..Default::default()
        }),
        del_fix
    );
    // Create after delete: create_revision and version start over.
    record!(
        "recreate c",
        c.kv.txn(pb::TxnRequest {
            compare: vec![mod_eq(&c_key, 0)],
            success: vec![put(&c_key, b"k8s\0c-again")],
            failure: vec![]
        }),
        txn_fix
    );
    record!(
        "get c",
        c.kv.range(pb::RangeRequest {
            key: c_key.clone(),
            ..Default::default()
        }),
        range_fix
    );
    // Every compare target and operator; a nested transaction; reads inside see the writes.
    let e = secret_key("ns1", "e");
    record!(
        "compare all",
        c.kv.txn(pb::TxnRequest {
            compare: vec![
                cmp(
                    &e,
                    CompareTarget::Version,
                    CompareResult::Equal,
                    TargetUnion::Version(1)
                ),
                cmp(
                    &e,
                    CompareTarget::Create,
                    CompareResult::Less,
                    TargetUnion::CreateRevision(base + 100)
                ),
                cmp(
                    &e,
                    CompareTarget::Mod,
                    CompareResult::Greater,
                    TargetUnion::ModRevision(base + 1)
                ),
                cmp(
                    &e,
                    CompareTarget::Value,
                    CompareResult::NotEqual,
                    TargetUnion::Value(b"x".to_vec())
                ),
                cmp(
                    &e,
                    CompareTarget::Lease,
                    CompareResult::Equal,
                    TargetUnion::Lease(0)
                ),
            ],
            success: vec![
                put(&e, b"k8s\0e2"),
                get(&e),
                pb::RequestOp {
                    request: Some(Op::RequestTxn(pb::TxnRequest {
                        compare: vec![cmp(
                            &e,
                            CompareTarget::Value,
                            CompareResult::Equal,
                            TargetUnion::Value(b"k8s\0e2".to_vec())
                        )],
                        success: vec![put(b"/other/nested", b"yes")],
                        failure: vec![put(b"/other/nested", b"no")],
                    }))
                }
            ],
            failure: vec![],
        }),
        txn_fix
    );
    record!(
        "compare value absent",
        c.kv.txn(pb::TxnRequest {
            compare: vec![cmp(
                b"/absent",
                CompareTarget::Value,
                CompareResult::NotEqual,
                TargetUnion::Value(b"x".to_vec())
            )],
            success: vec![get(b"/absent")],
            failure: vec![get(b"/other/nested")]
        }),
        txn_fix
    );
    record!(
        "compare range",
        c.kv.txn(pb::TxnRequest {
            compare: vec![pb::Compare {
                range_end: PREFIX_END.to_vec(),
                ..cmp(
                    PREFIX,
                    CompareTarget::Version,
                    CompareResult::Greater,
                    TargetUnion::Version(0)
                )
            }],
            success: vec![get(&a)],
            failure: vec![]
        }),
        txn_fix
    );
    // Errors, byte for byte.
    record!(
        "empty key",
        c.kv.range(pb::RangeRequest::default()),
        range_fix
    );
    record!(
        "empty key put",
        c.kv.put(pb::PutRequest::default()),
        put_fix
    );
    record!(
        "duplicate key",
        c.kv.txn(pb::TxnRequest {
            compare: vec![],
            success: vec![put(b"/dup", b"1"), put(b"/dup", b"2")],
            failure: vec![]
        }),
        txn_fix
    );
    record!(
        "put in deleted range",
        c.kv.txn(pb::TxnRequest {
            compare: vec![],
            success: vec![
                pb::RequestOp {
                    request: Some(Op::RequestDeleteRange(pb::DeleteRangeRequest {
                        key: b"/d".to_vec(),
                        range_end: b"/e".to_vec(),
                        ..Default::default()
                    }))
                },
                put(b"/dup", b"1")
            ],
            failure: vec![]
        }),
        txn_fix
    );
    record!(
        "too many ops",
        c.kv.txn(pb::TxnRequest {
            compare: vec![],
            success: (0..129)
                .map(|i| put(format!("/many/{i}").as_bytes(), b"x"))
                .collect(),
            failure: vec![]
        }),
        txn_fix
    );
    record!(
        "ignore_value absent",
        c.kv.put(pb::PutRequest {
            key: b"/absent".to_vec(),
            ignore_value: true,
            ..Default::default()
        }),
        put_fix
    );
    record!(
        "ignore_value with value",
        c.kv.put(pb::PutRequest {
            key: a.clone(),
            value: b"v".to_vec(),
            ignore_value: true,
            ..Default::default()
        }),
        put_fix
    );
    record!(
        "ignore_lease with lease",
        c.kv.put(pb::PutRequest {
            key: a.clone(),
            lease: 5,
            ignore_lease: true,
            ..Default::default()
        }),
        put_fix
    );
    record!(
        "missing lease",
        c.kv.put(pb::PutRequest {
            key: a.clone(),
            value: b"v".to_vec(),
            lease: 12345,
            ..Default::default()
        }),
        put_fix
    );
    record!(
        "ignore_value keeps value",
        c.kv.put(pb::PutRequest {
            key: e.clone(),
            ignore_value: true,
            prev_kv: true,
            ..Default::default()
        }),
        put_fix
    );
    record!(
        "future revision",
        c.kv.range(pb::RangeRequest {
            key: a.clone(),
            revision: 1000,
            ..Default::default()
        }),
        range_fix
    );
    record!(
        "bad sort",
        c.kv.range(pb::RangeRequest {
            key: a.clone(),
            sort_order: 9,
            ..Default::default()
        }),
        range_fix
    );
    // Leases with chosen ids (etcd picks random ones).
    record!(
        "lease grant",
        c.lease
            .lease_grant(pb::LeaseGrantRequest { id: 777, ttl: 60 }),
        |r: &mut pb::LeaseGrantResponse| zero(&mut r.header)
    );
    record!(
        "lease grant again",
        c.lease
            .lease_grant(pb::LeaseGrantRequest { id: 777, ttl: 60 }),
        |r: &mut pb::LeaseGrantResponse| zero(&mut r.header)
    );
    record!(
        "lease too long",
        c.lease.lease_grant(pb::LeaseGrantRequest {
            id: 778,
            ttl: 9_000_000_001
        }),
        |r: &mut pb::LeaseGrantResponse| zero(&mut r.header)
    );
    record!(
        "put with lease",
        c.kv.put(pb::PutRequest {
            key: b"/leased/1".to_vec(),
            value: b"v".to_vec(),
            lease: 777,
            ..Default::default()
        }),
        put_fix
    );
    record!(
        "put with lease 2",
        c.kv.put(pb::PutRequest {
            key: b"/leased/2".to_vec(),
            value: b"v".to_vec(),
            lease: 777,
            ..Default::default()
        }),
        put_fix
    );
    record!(
        "lease ttl",
        c.lease.lease_time_to_live(pb::LeaseTimeToLiveRequest {
            id: 777,
            keys: true
        }),
        |r: &mut pb::LeaseTimeToLiveResponse| {
            zero(&mut r.header);
            r.ttl = i64::from(r.ttl > 50);
            // etcd lists a lease's keys in no set order (a Go map): compared as a set.
            r.keys.sort();
        }
    );
    record!(
        "lease ttl missing",
        c.lease
            .lease_time_to_live(pb::LeaseTimeToLiveRequest { id: 1, keys: true }),
        |r: &mut pb::LeaseTimeToLiveResponse| zero(&mut r.header)
    );
    record!(
        "leases",
        c.lease.lease_leases(pb::LeaseLeasesRequest {}),
        |r: &mut pb::LeaseLeasesResponse| {
            zero(&mut r.header);
            // In no set order in etcd either (a Go map).
            r.leases.sort_by_key(|l| l.id);
        }
    );
    record!(
        "revoke",
        c.lease.lease_revoke(pb::LeaseRevokeRequest { id: 777 }),
        |r: &mut pb::LeaseRevokeResponse| zero(&mut r.header)
    );
    record!(
        "revoke missing",
        c.lease.lease_revoke(pb::LeaseRevokeRequest { id: 777 }),
        |r: &mut pb::LeaseRevokeResponse| zero(&mut r.header)
    );
    record!(
        "leased keys gone",
        c.kv.range(pb::RangeRequest {
            key: b"/leased/".to_vec(),
            range_end: b"/leased0".to_vec(),
            ..Default::default()
        }),
        range_fix
    );
    // The apiserver's compactor: CAS on compact_rev_key's version, then Compact.
    let ck = b"compact_rev_key".to_vec();
    let version_eq = |v: i64| {
        cmp(
            &ck,
            CompareTarget::Version,
            CompareResult::Equal,
            TargetUnion::Version(v),
        )
    };
    record!(
        "compactor cas",
        c.kv.txn(pb::TxnRequest {
            compare: vec![version_eq(0)],
            success: vec![put(&ck, b"10")],
            failure: vec![get(&ck)]
        }),
        txn_fix
    );
    record!(
        "compactor cas lost",
        c.kv.txn(pb::TxnRequest {
            compare: vec![version_eq(0)],
            success: vec![put(&ck, b"11")],
            failure: vec![get(&ck)]
        }),
        txn_fix
    );
    record!(
        "compact",
        c.kv.compact(pb::CompactionRequest {
            revision: base + 10,
            physical: true
        }),
        |r: &mut pb::CompactionResponse| zero(&mut r.header)
    );
    record!(
        "compact again",
        c.kv.compact(pb::CompactionRequest {
            revision: base + 10,
            physical: false
        }),
        |r: &mut pb::CompactionResponse| zero(&mut r.header)
    );
    record!(
        "compact future",
        c.kv.compact(pb::CompactionRequest {
            revision: 1000,
            physical: false
        }),
        |r: &mut pb::CompactionResponse| zero(&mut r.header)
    );
    record!(
        "read compacted",
        c.kv.range(pb::RangeRequest {
            key: a.clone(),
            revision: base + 9,
            ..Default::default()
        }),
        range_fix
    );
    record!(
        "read at compaction",
        c.kv.range(pb::RangeRequest {
            key: PREFIX.to_vec(),
            range_end: PREFIX_END.to_vec(),
            revision: base + 10,
            keys_only: true,
            ..Default::default()
        }),
        range_fix
    );
    record!(
        "list after compaction",
        c.kv.range(pb::RangeRequest {
            key: PREFIX.to_vec(),
            range_end: PREFIX_END.to_vec(),
            ..Default::default()
        }),
        range_fix
    );
    out
}

/// Opens a watch, reads until it has seen an event at `until` (or a cancel), returns the
/// normalized responses with the events flattened (etcd batches a catch-up differently).
async fn watch(c: &mut Clients, create: pb::WatchCreateRequest, until: i64) -> Vec<String> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
    })
    .await
    .expect("send");
    let mut stream = c
        .watch
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("watch")
        .into_inner();
    let mut out = Vec::new();
    let mut events: Vec<mvccpb::Event> = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.message()).await;
        let Ok(Ok(Some(mut r))) = next else {
            out.push("watch ended or timed out".to_owned());
            break;
        };
        zero(&mut r.header);
        let done = r.canceled
            || r.events
                .last()
                .and_then(|e| e.kv.as_ref())
                .is_some_and(|kv| kv.mod_revision >= until);
        if r.events.is_empty() {
            // Created / canceled responses: the header revision of a created response is the
            // store's revision at creation (equal on both).
            out.push(format!("{r:?}"));
        }
        events.append(&mut r.events);
        if done {
            break;
        }
    }
    drop(tx);
    out.extend(events.iter().map(|e| format!("{e:?}")));
    out
}

async fn watches(c: &mut Clients, base: i64) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let current =
        c.kv.range(pb::RangeRequest {
            key: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner()
        .header
        .expect("header")
        .revision;
    let cases = [
        (
            "prefix from compaction with prev_kv",
            pb::WatchCreateRequest {
                key: PREFIX.to_vec(),
                range_end: PREFIX_END.to_vec(),
                start_revision: base + 10,
                prev_kv: true,
                ..Default::default()
            },
        ),
        (
            "all keys from compaction",
            pb::WatchCreateRequest {
                key: vec![0],
                range_end: vec![0],
                start_revision: base + 10,
                ..Default::default()
            },
        ),
        (
            "no deletes",
            pb::WatchCreateRequest {
                key: vec![0],
                range_end: vec![0],
                start_revision: base + 10,
                filters: vec![1],
                ..Default::default()
            },
        ),
        (
            "compacted start",
            pb::WatchCreateRequest {
                key: PREFIX.to_vec(),
                range_end: PREFIX_END.to_vec(),
                start_revision: base + 5,
                ..Default::default()
            },
        ),
    ];
    for (name, create) in cases {
        for (i, line) in watch(c, create, current).await.into_iter().enumerate() {
            out.push((format!("watch {name} #{i}"), line));
        }
    }
    out
}

/// Fails with every answer that differs.
fn assert_same(expected: &[(String, String)], got: &[(String, String)], what: &str) {
    let mut mismatches = Vec::new();
    for ((name, want), (_, have)) in expected.iter().zip(got) {
        if want != have {
            mismatches.push(format!("{name}:\n  etcd:   {want}\n  coffer: {have}"));
        }
    }
    assert_eq!(expected.len(), got.len(), "as many answers");
    assert!(
        mismatches.is_empty(),
        "{} of {} answers differ ({what}):\n{}",
        mismatches.len(),
        expected.len(),
        mismatches.join("\n")
    );
    eprintln!("{} answers equal to etcd 3.4's ({what})", expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_door_answers_as_etcd_does() {
    let etcd = RealEtcd::start().await;
    let coffer = TestServer::builder().etcd().start().await;
    let mut e = etcd.clients().await;
    let mut d = coffer.etcd().await;
    let mut expected = script(&mut e, 0).await;
    let mut got = script(&mut d, 0).await;
    expected.extend(watches(&mut e, 0).await);
    got.extend(watches(&mut d, 0).await);
    assert_same(&expected, &got, "the door on sled");
}

/// The current revision through `c` (a Range's header).
async fn revision_of(c: &mut Clients) -> i64 {
    c.kv.range(pb::RangeRequest {
        key: b"x".to_vec(),
        ..Default::default()
    })
    .await
    .expect("range")
    .into_inner()
    .header
    .expect("header")
    .revision
}

/// The same script through a door on etcd storage (issue 16 item 6). What legitimately
/// differs is normalized: Coffer writes keys of its own to the etcd under it (the replica
/// election, the wrapped seed made by the first sealed write), which take revisions. So the
/// door is warmed up first (a put and a delete: the seed and the election are then done), and
/// the reference etcd is brought to the same revision with writes of its own to a key the
/// script never reads; the script's revisions are relative to that base.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_door_on_etcd_storage_answers_as_etcd_does() {
    use coffer_core::kms::LocalKek;
    use coffer_core::store::StoreConfig;
    use coffer_testkit::etcd::{EtcdCluster, etcd_store};

    let under = EtcdCluster::start(1).await;
    let kek_dir = tempfile::tempdir().expect("tempdir");
    let kek = kek_dir.path().join("kek.key");
    LocalKek::create_new(&kek).expect("kek");
    let store = etcd_store(&under, "/coffer", &kek, StoreConfig::default()).await;
    let coffer = TestServer::builder().store(store).etcd().start().await;
    let mut d = coffer.etcd().await;
    let warm = b"/warmup".to_vec();
    d.kv.put(pb::PutRequest {
        key: warm.clone(),
        value: b"w".to_vec(),
        ..Default::default()
    })
    .await
    .expect("warm-up put");
    d.kv.delete_range(pb::DeleteRangeRequest {
        key: warm.clone(),
        ..Default::default()
    })
    .await
    .expect("warm-up delete");
    let base = revision_of(&mut d).await;

    let etcd = RealEtcd::start().await;
    let mut e = etcd.clients().await;
    assert!(base >= 3, "the door's base revision {base}");
    while revision_of(&mut e).await < base - 1 {
        e.kv.put(pb::PutRequest {
            key: warm.clone(),
            value: b"w".to_vec(),
            ..Default::default()
        })
        .await
        .expect("offset put");
    }
    e.kv.delete_range(pb::DeleteRangeRequest {
        key: warm.clone(),
        ..Default::default()
    })
    .await
    .expect("offset delete");
    assert_eq!(
        revision_of(&mut e).await,
        base,
        "the reference at the door's base"
    );

    // Revisions 0 and 1 of the script are the base.
    let base = base - 1;
    let mut expected = script(&mut e, base).await;
    let mut got = script(&mut d, base).await;
    expected.extend(watches(&mut e, base).await);
    got.extend(watches(&mut d, base).await);
    assert_same(&expected, &got, "the door on etcd storage");
}
