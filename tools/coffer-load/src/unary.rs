//! `coffer-load unary`: timed Create, Get and Update phases.
//!
//! Each phase runs M callers (tokio tasks) for the phase's warm-up plus its measured duration;
//! caller `i` uses connection `i % N`. A call that *starts* inside the measured window is
//! recorded (latency in the histogram, success or error in the counts); throughput is the
//! measured successes over the time from the window's start to the last caller's end.
//!
//! Create writes uniquely named Secrets (`load-<run tag>-<caller>-<seq>`); the names it
//! created become the key set of Get and Update, which pick names uniformly at random. When the
//! create phase is not run, `--seed-keys` Secrets are created first, unmeasured. Update is
//! unconditional (resource_version 0) and always changes the value (a per-call counter in its
//! first 8 bytes), so every update is a real, durable write.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer::cli::{CliError, ServerAddr};
use coffer::credentials::Client;
use coffer_core::crypto::Algorithm;
use coffer_core::model::validation::validate_namespace;
use coffer_core::storage::Durability;
use coffer_server::proto::v1 as pb;
use futures::StreamExt;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tokio::task::JoinSet;

use crate::report::{self, PhaseReport, RunInfo, SpawnInfo};
use crate::spawn::Spawned;
use crate::{Op, Target, UnaryArgs};

/// The data key each Secret's value is stored under.
const VALUE_KEY: &str = "value";
/// How many error messages a phase keeps to report.
const MAX_ERROR_SAMPLES: usize = 5;
/// The largest latency the histograms track (longer calls are recorded as this), in µs.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Runs `coffer-load unary` and prints its report.
pub(crate) async fn run(args: UnaryArgs) -> Result<ExitCode, String> {
    args.target.check_built()?;
    if args.target == Target::Etcd && args.spawn {
        return Err("--spawn starts a Coffer server: with --target etcd give --server".into());
    }
    validate_namespace(&args.namespace).map_err(|e| format!("--namespace: {e}"))?;
    let algorithm: Algorithm = args
        .aead
        .parse()
        .map_err(|e| format!("--aead {:?}: {e}", args.aead))?;
    let mut ops = args.ops.clone();
    ops.sort();
    ops.dedup();

    let durability = if args.relaxed {
        Durability::Relaxed
    } else {
        Durability::Sync
    };
    let spawned = if args.spawn {
        Some(Spawned::start(args.data_dir.as_deref(), durability, algorithm).await?)
    } else {
        None
    };
    let server = match &spawned {
        Some(s) => s.addr()?,
        None => args.server(),
    };
    let info = RunInfo {
        target: args.target.name(),
        server: server.clone(),
        spawn: spawned.as_ref().map(|s| SpawnInfo {
            durable: durability == Durability::Sync,
            data_dir: s.data_dir().display().to_string(),
            temporary: s.is_temporary(),
            aead: algorithm.to_string(),
        }),
        connections: args.connections,
        concurrency: args.concurrency,
        value_size: args.value_size,
        duration: args.duration,
        warmup: args.phase_warmup,
        namespace: args.namespace.clone(),
    };

    let result = drive(&args, &ops, &server).await;
    let stopped = match spawned {
        Some(s) => s.stop().await,
        None => Ok(()),
    };
    let reports = result?;
    stopped?;

    if args.json {
        println!("{}", report::json(&info, &reports));
    } else {
        print!("{}", report::table(&info, &reports));
    }
    let clean = reports.iter().all(|r| r.errors == 0);
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The replicas of a `--server a,b,c` list, each parsed on its own.
fn replicas(server: &str) -> Result<Vec<ServerAddr>, String> {
    ServerAddr::parse(server).map_err(cli_error)?;
    server
        .split(',')
        .map(|one| ServerAddr::parse(one.trim()).map_err(cli_error))
        .collect()
}

/// Connects, runs the phases, and cleans up if asked.
async fn drive(args: &UnaryArgs, ops: &[Op], server: &str) -> Result<Vec<PhaseReport>, String> {
    let mut clients = Vec::new();
    match args.target {
        Target::Coffer => {
            let replicas = replicas(server)?;
            for i in 0..args.connections as usize {
                // Each connect opens its own HTTP/2 connection; with several replicas
                // (`--server a,b,c`) connection i goes to replica i % N, so the load is spread
                // evenly over them (not failed over: a replica that is down is an error).
                let addr = &replicas[i % replicas.len()];
                clients.push(Conn::Coffer(addr.connect().await.map_err(cli_error)?));
            }
        }
        #[cfg(feature = "etcd")]
        Target::Etcd => {
            for _ in 0..args.connections {
                clients.push(Conn::Etcd(Box::new(
                    crate::etcd::connect(server).await?.kv_client(),
                )));
            }
        }
        #[cfg(not(feature = "etcd"))]
        Target::Etcd => return Err("built without the etcd feature".into()),
    }
    let clients: Arc<[Conn]> = clients.into();

    let mut rng = StdRng::from_entropy();
    let mut value = vec![0u8; usize::try_from(args.value_size).unwrap_or(0)];
    rng.fill_bytes(&mut value);
    let setup = Arc::new(Setup {
        namespace: args.namespace.clone(),
        run_tag: format!("load-{:08x}", rng.r#gen::<u32>()),
        value,
        call_timeout: args.call_timeout,
    });

    let mut names: Vec<String> = Vec::new();
    let mut reports = Vec::new();
    for &op in ops {
        if op != Op::Create && names.is_empty() {
            eprintln!(
                "seeding {} Secrets for the {} phase (not measured)...",
                args.seed_keys,
                op.name()
            );
            names = seed(&setup, &clients, args.seed_keys, args.concurrency).await?;
        }
        eprintln!(
            "{}: {:.1} s{} with {} callers over {} connections...",
            op.name(),
            args.duration.as_secs_f64(),
            if args.phase_warmup.is_zero() {
                String::new()
            } else {
                format!(" (after {:.1} s warm-up)", args.phase_warmup.as_secs_f64())
            },
            args.concurrency,
            args.connections
        );
        let keys: Arc<[String]> = std::mem::take(&mut names).into();
        let (report, created) = run_phase(
            op,
            &setup,
            &clients,
            &keys,
            args.concurrency,
            args.phase_warmup,
            args.duration,
        )
        .await?;
        names = keys.to_vec();
        names.extend(created);
        reports.push(report);
    }
    if args.cleanup && !names.is_empty() {
        eprintln!("deleting the {} Secrets this run created...", names.len());
        cleanup(&setup, &clients, names, args.concurrency).await;
    }
    Ok(reports)
}

/// The message of a CLI error, without the `error: ` that `main` adds itself.
fn cli_error(e: CliError) -> String {
    let message = e.to_string();
    match message.strip_prefix("error: ") {
        Some(rest) => rest.to_owned(),
        None => message,
    }
}

/// One connection to the store loaded.
#[derive(Clone)]
enum Conn {
    /// A Coffer server.
    Coffer(Client),
    /// An etcd member's KV service (boxed: it is much larger than a tonic client).
    #[cfg(feature = "etcd")]
    Etcd(Box<etcd_client::KvClient>),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Conn::Coffer(_) => f.write_str("Conn::Coffer"),
            #[cfg(feature = "etcd")]
            Conn::Etcd(_) => f.write_str("Conn::Etcd"),
        }
    }
}

/// What every caller shares.
#[derive(Debug)]
struct Setup {
    namespace: String,
    /// Prefix of every name this run creates.
    run_tag: String,
    /// The value written by Create (Update changes its first bytes).
    value: Vec<u8>,
    call_timeout: Duration,
}

impl Setup {
    /// A Secret named `name` holding `value`.
    fn secret(&self, name: String, value: Vec<u8>) -> pb::Secret {
        pb::Secret {
            metadata: Some(pb::ObjectMeta {
                name,
                namespace: self.namespace.clone(),
                ..Default::default()
            }),
            r#type: "Opaque".into(),
            data: HashMap::from([(VALUE_KEY.to_owned(), value)]),
            ..Default::default()
        }
    }

    /// The value an update writes: the Create value with `counter` in its first 8 bytes (or
    /// just the counter when the value is shorter), so that no update is a no-op.
    fn updated_value(&self, counter: u64) -> Vec<u8> {
        let mut v = self.value.clone();
        let stamp = counter.to_le_bytes();
        if v.len() >= stamp.len() {
            v[..stamp.len()].copy_from_slice(&stamp);
        } else {
            v = stamp.to_vec();
        }
        v
    }

    /// Does one call of `op`; returns the created name for a successful Create.
    async fn call(
        &self,
        conn: &mut Conn,
        op: Op,
        name: String,
        counter: u64,
    ) -> Result<Option<String>, String> {
        #[allow(clippy::infallible_destructuring_match)]
        let client = match conn {
            Conn::Coffer(c) => c,
            #[cfg(feature = "etcd")]
            Conn::Etcd(kv) => return self.call_etcd(kv, op, name, counter).await,
        };
        let fut = async {
            match op {
                Op::Create => {
                    let secret = self.secret(name.clone(), self.value.clone());
                    client
                        .create(pb::CreateSecretRequest {
                            secret: Some(secret),
                        })
                        .await?;
                    Ok(Some(name))
                }
                Op::Get => {
                    let got = client
                        .get(pb::GetSecretRequest {
                            namespace: self.namespace.clone(),
                            name,
                            resource_version: 0,
                        })
                        .await?
                        .into_inner();
                    if got.data.contains_key(VALUE_KEY) {
                        Ok(None)
                    } else {
                        Err(tonic::Status::data_loss(
                            "the response does not hold the value written",
                        ))
                    }
                }
                Op::Update => {
                    let secret = self.secret(name, self.updated_value(counter));
                    client
                        .update(pb::UpdateSecretRequest {
                            secret: Some(secret),
                        })
                        .await?;
                    Ok(None)
                }
            }
        };
        match tokio::time::timeout(self.call_timeout, fut).await {
            Ok(Ok(created)) => Ok(created),
            Ok(Err(status)) => Err(describe_status(&status)),
            Err(_) => Err(format!(
                "no answer within {:.1} s (--call-timeout)",
                self.call_timeout.as_secs_f64()
            )),
        }
    }
}

#[cfg(feature = "etcd")]
impl Setup {
    /// The etcd key of the Secret `name`: `/<namespace>/<name>`, as a Kubernetes API server
    /// lays out its keys (without its `/registry/secrets` prefix).
    fn etcd_key(&self, name: &str) -> String {
        format!("/{}/{name}", self.namespace)
    }

    /// One call of `op` against etcd: Create and Update are Puts (etcd's writes are durable:
    /// its WAL is fsync'd before a Put is acknowledged), Get is a Range of the one key.
    async fn call_etcd(
        &self,
        kv: &mut etcd_client::KvClient,
        op: Op,
        name: String,
        counter: u64,
    ) -> Result<Option<String>, String> {
        let key = self.etcd_key(&name);
        let fut = async {
            match op {
                Op::Create => {
                    kv.put(key, self.value.clone(), None).await?;
                    Ok(Some(name))
                }
                Op::Get => {
                    let got = kv.get(key, None).await?;
                    match got.kvs().first() {
                        Some(v) if v.value().len() == self.value.len() => Ok(None),
                        _ => Err(etcd_client::Error::InvalidArgs(
                            "the response does not hold the value written".into(),
                        )),
                    }
                }
                Op::Update => {
                    kv.put(key, self.updated_value(counter), None).await?;
                    Ok(None)
                }
            }
        };
        match tokio::time::timeout(self.call_timeout, fut).await {
            Ok(Ok(created)) => Ok(created),
            Ok(Err(e)) => Err(format!("etcd: {e}")),
            Err(_) => Err(format!(
                "no answer within {:.1} s (--call-timeout)",
                self.call_timeout.as_secs_f64()
            )),
        }
    }
}

/// `Code: message` of a failed call.
fn describe_status(status: &tonic::Status) -> String {
    let mut s = format!("{:?}: {}", status.code(), status.message());
    if let Some(source) = std::error::Error::source(status) {
        s.push_str(&format!(" ({source})"));
    }
    s
}

/// What one caller measured.
#[derive(Debug)]
struct CallerResult {
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    error_samples: Vec<String>,
    /// When its last call ended.
    finished: Instant,
    /// Names it created (Create phase only), whether inside the measured window or not.
    created: Vec<String>,
}

/// Runs one phase; returns its report and the names created.
async fn run_phase(
    op: Op,
    setup: &Arc<Setup>,
    clients: &Arc<[Conn]>,
    keys: &Arc<[String]>,
    concurrency: u32,
    warmup: Duration,
    duration: Duration,
) -> Result<(PhaseReport, Vec<String>), String> {
    let start = Instant::now();
    let measure_start = start + warmup;
    let end = measure_start + duration;
    let mut callers = JoinSet::new();
    for i in 0..concurrency {
        let setup = setup.clone();
        let keys = keys.clone();
        let mut client = clients[i as usize % clients.len()].clone();
        let mut hist = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3)
            .map_err(|e| format!("histogram: {e}"))?;
        callers.spawn(async move {
            let mut rng = StdRng::from_entropy();
            let mut r = CallerResult {
                hist: Histogram::new_from(&hist),
                ok: 0,
                errors: 0,
                error_samples: Vec::new(),
                finished: Instant::now(),
                created: Vec::new(),
            };
            let mut seq: u64 = 0;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                seq += 1;
                let name = match op {
                    Op::Create => format!("{}-{i}-{seq}", setup.run_tag),
                    Op::Get | Op::Update => keys[rng.gen_range(0..keys.len())].clone(),
                };
                let counter = (u64::from(i) << 40) | seq;
                let result = setup.call(&mut client, op, name, counter).await;
                let t1 = Instant::now();
                let measured = t0 >= measure_start;
                match result {
                    Ok(created) => {
                        r.created.extend(created);
                        if measured {
                            r.ok += 1;
                        }
                    }
                    Err(e) => {
                        if measured {
                            r.errors += 1;
                        }
                        if r.error_samples.len() < MAX_ERROR_SAMPLES {
                            r.error_samples.push(e);
                        }
                    }
                }
                if measured {
                    let us = u64::try_from((t1 - t0).as_micros()).unwrap_or(u64::MAX);
                    hist.saturating_record(us.max(1));
                }
                r.finished = t1;
            }
            r.hist = hist;
            r
        });
    }
    let mut report = PhaseReport {
        op,
        ok: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
            .map_err(|e| format!("histogram: {e}"))?,
        error_samples: Vec::new(),
    };
    let mut created = Vec::new();
    let mut last = measure_start;
    while let Some(joined) = callers.join_next().await {
        let r = joined.map_err(|e| format!("a caller task failed: {e}"))?;
        report.ok += r.ok;
        report.errors += r.errors;
        report
            .latency_us
            .add(&r.hist)
            .map_err(|e| format!("histogram: {e}"))?;
        for e in r.error_samples {
            if report.error_samples.len() < MAX_ERROR_SAMPLES {
                report.error_samples.push(e);
            }
        }
        last = last.max(r.finished);
        created.extend(r.created);
    }
    report.elapsed = last.saturating_duration_since(measure_start);
    Ok((report, created))
}

/// Creates `count` Secrets (unmeasured) for Get/Update to read; fails if none could be.
async fn seed(
    setup: &Arc<Setup>,
    clients: &Arc<[Conn]>,
    count: u32,
    concurrency: u32,
) -> Result<Vec<String>, String> {
    let results: Vec<Result<Option<String>, String>> = futures::stream::iter(0..count)
        .map(|seq| {
            let mut client = clients[seq as usize % clients.len()].clone();
            let name = format!("{}-seed-{seq}", setup.run_tag);
            async move { setup.call(&mut client, Op::Create, name, 0).await }
        })
        .buffer_unordered(concurrency as usize)
        .collect()
        .await;
    let mut names = Vec::new();
    let mut first_error = None;
    for r in results {
        match r {
            Ok(name) => names.extend(name),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) if names.is_empty() => Err(format!("cannot create the seed Secrets: {e}")),
        _ => Ok(names),
    }
}

/// Deletes `names` (unmeasured), reporting failures on stderr.
async fn cleanup(setup: &Arc<Setup>, clients: &Arc<[Conn]>, names: Vec<String>, concurrency: u32) {
    let failures: usize = futures::stream::iter(names.into_iter().enumerate())
        .map(|(i, name)| {
            let mut client = clients[i % clients.len()].clone();
            let namespace = setup.namespace.clone();
            async move {
                let deleted = match &mut client {
                    Conn::Coffer(c) => {
                        let req = pb::DeleteSecretRequest {
                            namespace,
                            name,
                            resource_version: 0,
                        };
                        tokio::time::timeout(setup.call_timeout, c.delete(req))
                            .await
                            .is_ok_and(|r| r.is_ok())
                    }
                    #[cfg(feature = "etcd")]
                    Conn::Etcd(kv) => {
                        let key = setup.etcd_key(&name);
                        tokio::time::timeout(setup.call_timeout, kv.delete(key, None))
                            .await
                            .is_ok_and(|r| r.is_ok())
                    }
                };
                usize::from(!deleted)
            }
        })
        .buffer_unordered(concurrency as usize)
        .fold(0, |acc, failed| async move { acc + failed })
        .await;
    if failures > 0 {
        eprintln!("warning: {failures} Secrets could not be deleted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updated_values_differ() {
        let setup = Setup {
            namespace: "ns".into(),
            run_tag: "load-0".into(),
            value: vec![7; 16],
            call_timeout: Duration::from_secs(1),
        };
        let a = setup.updated_value(1);
        let b = setup.updated_value(2);
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
        assert_ne!(a, setup.value);
        let short = Setup {
            value: Vec::new(),
            ..setup
        };
        assert_eq!(short.updated_value(3).len(), 8);
    }
}
