//! Writers through the etcd v3 door (`coffer serve --etcd-listen`) and their check after a
//! restart.
//!
//! Each writer owns its keys (`/crash/etcd-<w>/key-<k>`), puts and deletes them, and records
//! every acknowledged write with the revision in the answer's header. After a restart each key
//! must hold its acknowledged value with that mod_revision, or the one write in doubt (sent,
//! answer lost to the kill). The door's writes share the store's revision with the Secret
//! service's: the harness's Secret watch skips their revisions, and a skipped revision that no
//! acknowledged door write explains must be an in-doubt door write found applied.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use coffer_server::proto::etcd::etcdserverpb as epb;
use epb::kv_client::KvClient;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tonic::transport::Channel;

use crate::rpc::RPC_TIMEOUT;

/// The prefix of every key the door's writers use.
const PREFIX: &[u8] = b"/crash/";

/// What the harness knows of one door key.
#[derive(Debug, Clone)]
pub(crate) struct EtcdKey {
    pub(crate) key: Vec<u8>,
    /// The acknowledged value and its mod_revision (`None`: absent).
    pub(crate) acked: Option<(Vec<u8>, u64)>,
    /// The revision of the last acknowledged write (a delete's too).
    pub(crate) acked_rv: u64,
    /// A write whose answer was lost: `Some(None)` a delete, `Some(Some(v))` a put of `v`.
    pub(crate) doubt: Option<Option<Vec<u8>>>,
}

impl EtcdKey {
    pub(crate) fn new(writer: u32, key: u32) -> Self {
        Self {
            key: format!("/crash/etcd-{writer}/key-{key:03}").into_bytes(),
            acked: None,
            acked_rv: 0,
            doubt: None,
        }
    }
}

/// One acknowledged door write.
#[derive(Debug, Clone)]
pub(crate) struct EtcdAck {
    pub(crate) key: usize,
    pub(crate) rv: u64,
    pub(crate) value: Option<Vec<u8>>,
}

/// What one door writer produced in a cycle.
#[derive(Debug, Default)]
pub(crate) struct EtcdWriterResult {
    pub(crate) acks: Vec<EtcdAck>,
    pub(crate) doubt: Option<(usize, Option<Vec<u8>>)>,
    pub(crate) violations: Vec<String>,
}

pub(crate) fn client(addr: SocketAddr) -> Result<KvClient<Channel>, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_lazy();
    Ok(KvClient::new(channel))
}

/// One door writer: random puts and deletes on its own keys until the kill (an error).
pub(crate) async fn writer(
    addr: SocketAddr,
    base: usize,
    mut keys: Vec<EtcdKey>,
    killed: Arc<AtomicBool>,
    seed: u64,
) -> EtcdWriterResult {
    let mut out = EtcdWriterResult::default();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kv = match client(addr) {
        Ok(c) => c,
        Err(e) => {
            out.violations.push(format!("etcd writer: {e}"));
            return out;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut generation = rng.next_u64() % 1_000_000 * 1000;
    while Instant::now() < deadline {
        let i = rng.gen_range(0..keys.len());
        generation += 1;
        let key = &keys[i];
        let name = String::from_utf8_lossy(&key.key).into_owned();
        let put = key.acked.is_none() || rng.gen_bool(0.8);
        let next = if put {
            let mut v = format!("{name}#{generation}:").into_bytes();
            let mut blob = vec![0u8; rng.gen_range(0..2000)];
            rng.fill_bytes(&mut blob);
            v.extend(blob);
            Some(v)
        } else {
            None
        };
        let answer = match &next {
            Some(v) => tokio::time::timeout(
                RPC_TIMEOUT,
                kv.put(epb::PutRequest {
                    key: key.key.clone(),
                    value: v.clone(),
                    ..Default::default()
                }),
            )
            .await
            .map(|r| r.map(|r| (r.into_inner().header, 1))),
            None => tokio::time::timeout(
                RPC_TIMEOUT,
                kv.delete_range(epb::DeleteRangeRequest {
                    key: key.key.clone(),
                    ..Default::default()
                }),
            )
            .await
            .map(|r| {
                r.map(|r| {
                    let r = r.into_inner();
                    (r.header, r.deleted)
                })
            }),
        };
        match answer {
            Ok(Ok((header, changed))) => {
                let rv = header.map_or(0, |h| h.revision).max(0) as u64;
                if changed != 1 {
                    out.violations.push(format!(
                        "{name}#{generation}: the delete of an acknowledged key deleted {changed}"
                    ));
                }
                let key = &mut keys[i];
                if rv <= key.acked_rv {
                    out.violations.push(format!(
                        "{name}#{generation}: acknowledged at revision {rv}, not above the key's \
                         previous {}",
                        key.acked_rv
                    ));
                }
                key.acked = next.clone().map(|v| (v, rv));
                key.acked_rv = rv;
                out.acks.push(EtcdAck {
                    key: base + i,
                    rv,
                    value: next,
                });
            }
            Ok(Err(status)) => {
                if !killed.load(Ordering::SeqCst) {
                    out.violations.push(format!(
                        "{name}#{generation}: failed while the server was up: {:?} {}",
                        status.code(),
                        status.message()
                    ));
                }
                out.doubt = Some((base + i, next));
                return out;
            }
            Err(_) => {
                out.violations.push(format!(
                    "{name}#{generation}: no answer within {RPC_TIMEOUT:?}"
                ));
                out.doubt = Some((base + i, next));
                return out;
            }
        }
    }
    out
}

/// Folds a cycle's door acknowledgements into the model; returns their revisions (which the
/// Secret watch skips).
pub(crate) fn apply(
    keys: &mut [EtcdKey],
    results: &[EtcdWriterResult],
    acked: &mut u64,
) -> BTreeSet<u64> {
    let mut revisions = BTreeSet::new();
    for r in results {
        for a in &r.acks {
            *acked += 1;
            let k = &mut keys[a.key];
            k.acked = a.value.clone().map(|v| (v, a.rv));
            k.acked_rv = a.rv;
            revisions.insert(a.rv);
        }
        if let Some((key, value)) = &r.doubt {
            keys[*key].doubt = Some(value.clone());
        }
    }
    revisions
}

/// Counts of the check after a restart.
#[derive(Debug, Default)]
pub(crate) struct Checked {
    pub(crate) keys: u64,
    pub(crate) doubt_applied: u64,
    pub(crate) doubt_absent: u64,
}

/// Checks every door key after a restart against the model, resolves the doubts, and explains
/// the Secret watch's unexplained skipped revisions (`gaps`) by in-doubt door writes found
/// applied. Returns the recovered revision as the door reports it.
pub(crate) async fn verify(
    addr: SocketAddr,
    keys: &mut [EtcdKey],
    gaps: &mut Vec<u64>,
    checked: &mut Checked,
    bad: &mut impl FnMut(String),
) -> u64 {
    let mut kv = match client(addr) {
        Ok(c) => c,
        Err(e) => {
            bad(format!("etcd door: {e}"));
            return 0;
        }
    };
    let mut range_end = PREFIX.to_vec();
    if let Some(last) = range_end.last_mut() {
        *last += 1;
    }
    let all = match tokio::time::timeout(
        RPC_TIMEOUT,
        kv.range(epb::RangeRequest {
            key: PREFIX.to_vec(),
            range_end,
            ..Default::default()
        }),
    )
    .await
    {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(e)) => {
            bad(format!(
                "etcd door: range after restart failed: {:?} {}",
                e.code(),
                e.message()
            ));
            return 0;
        }
        Err(_) => {
            bad("etcd door: range after restart hung".into());
            return 0;
        }
    };
    let revision = all.header.map_or(0, |h| h.revision).max(0) as u64;
    let mut found: HashMap<Vec<u8>, (Vec<u8>, u64)> = all
        .kvs
        .into_iter()
        .map(|kv| (kv.key, (kv.value, kv.mod_revision.max(0) as u64)))
        .collect();
    let mut applied_puts = BTreeSet::new();
    let mut applied_deletes = Vec::new();
    for k in keys.iter_mut() {
        let name = String::from_utf8_lossy(&k.key).into_owned();
        let actual = found.remove(&k.key);
        if let Some((_, rv)) = &actual
            && *rv > revision
        {
            bad(format!(
                "etcd {name} has mod_revision {rv} above the revision {revision}"
            ));
        }
        let matches_acked = actual == k.acked;
        let matches_doubt = match (&k.doubt, &actual) {
            (Some(None), None) => true,
            (Some(Some(v)), Some((av, arv))) => v == av && *arv > k.acked_rv,
            _ => false,
        };
        if matches_doubt && !matches_acked {
            checked.doubt_applied += 1;
            match &actual {
                Some((_, rv)) => {
                    applied_puts.insert(*rv);
                }
                None => applied_deletes.push(k.acked_rv),
            }
        } else if matches_acked && k.doubt.is_some() {
            checked.doubt_absent += 1;
        }
        if !matches_acked && !matches_doubt {
            let show = |s: &Option<(Vec<u8>, u64)>| match s {
                None => "absent".to_owned(),
                Some((v, rv)) => format!(
                    "{:?} at {rv}",
                    String::from_utf8_lossy(v.split(|b| *b == b':').next().unwrap_or_default())
                ),
            };
            bad(format!(
                "etcd {name}: found {}, expected the acknowledged {}{}",
                show(&actual),
                show(&k.acked),
                match &k.doubt {
                    Some(None) => " or the in-doubt delete".to_owned(),
                    Some(Some(_)) => " or the in-doubt put".to_owned(),
                    None => String::new(),
                }
            ));
        }
        checked.keys += 1;
        if let Some((_, rv)) = &actual {
            k.acked_rv = k.acked_rv.max(*rv);
        }
        k.acked = actual;
        k.doubt = None;
    }
    for key in found.keys() {
        bad(format!(
            "etcd door shows {}, which was never written",
            String::from_utf8_lossy(key)
        ));
    }
    // Each skipped revision is an in-doubt door write found applied: a put at exactly that
    // revision, or a delete (whose revision a range cannot show) above the key's acknowledged
    // one.
    applied_deletes.sort_unstable();
    for gap in gaps.drain(..) {
        if applied_puts.remove(&gap) {
            continue;
        }
        if let Some(i) = applied_deletes.iter().position(|&after| after < gap) {
            applied_deletes.remove(i);
            continue;
        }
        bad(format!(
            "the Secret watch skipped revision {gap}, which no door write explains"
        ));
    }
    revision
}
