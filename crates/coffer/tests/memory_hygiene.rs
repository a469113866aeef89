//! Memory hygiene of the processes that hold keys: `coffer serve` and `coffer-kms-local serve`,
//! spawned for real and inspected through `/proc/<pid>`: core dumps off (`Max core file size`
//! 0 in `/proc/<pid>/limits`, not dumpable), memory locked (`VmLck` above 0 in
//! `/proc/<pid>/status`) or, where the system does not allow it, one warning and a server that
//! works anyway; the opt-out flags; and the quota file end to end through `--quota-file`.
#![cfg(target_os = "linux")]

use coffer_testkit::kms as kms_support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use kms_support::*;
use tonic::Code;

/// `/proc/<pid>/<file>` as text.
fn proc_file(pid: u32, file: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).expect("read /proc")
}

/// The soft and hard core file size limits, as `/proc/<pid>/limits` shows them.
fn core_limit(pid: u32) -> (String, String) {
    let limits = proc_file(pid, "limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core line");
    let mut fields = line["Max core file size".len()..].split_whitespace();
    let soft = fields.next().unwrap_or_default().to_owned();
    let hard = fields.next().unwrap_or_default().to_owned();
    (soft, hard)
}

/// `VmLck` in kB.
fn locked_kb(pid: u32) -> u64 {
    proc_file(pid, "status")
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmLck")
}

/// Whether this (test) process holds CAP_IPC_LOCK; its children do too.
fn we_hold_cap_ipc_lock() -> bool {
    proc_file(std::process::id(), "status")
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 14) != 0)
}

/// Checks the hygiene of a running process by its log and `/proc`.
#[track_caller]
fn assert_hygienic(what: &str, pid: u32, log: &str) {
    assert_eq!(
        core_limit(pid),
        ("0".to_owned(), "0".to_owned()),
        "{what}: RLIMIT_CORE"
    );
    assert!(
        log.contains("core dumps off (RLIMIT_CORE 0, not dumpable)"),
        "{what}: {log}"
    );
    // A process that is not dumpable has its /proc entries owned by root.
    let owner = std::fs::metadata(format!("/proc/{pid}/status"))
        .expect("stat")
        .uid();
    assert_eq!(owner, 0, "{what}: not dumpable");
    let vm_lck = locked_kb(pid);
    if log.contains("memory locked (mlockall)") {
        assert!(vm_lck > 0, "{what}: VmLck {vm_lck} kB");
    } else {
        assert_eq!(
            log.matches("memory not locked:").count(),
            1,
            "{what}: {log}"
        );
        assert_eq!(vm_lck, 0, "{what}");
        // Here the test would be vacuous: with CAP_IPC_LOCK the lock must succeed.
        assert!(!we_hold_cap_ipc_lock(), "{what}: mlockall failed: {log}");
    }
    assert!(!log.contains("ERROR"), "{what}: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_the_local_plugin_turn_core_dumps_off_and_lock_memory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    local_plugin_cmd(dir, "init", &[]).ok();
    let plugin = local_plugin(dir);
    let quota = dir.join("quota.toml");
    std::fs::write(
        &quota,
        "[default]\n\"count/secrets\" = 100\n\n[namespaces.small]\nname = \"small-quota\"\nsecrets = 1\n",
    )
    .expect("quota file");
    let serve = Serve::new(dir)
        .kms(&plugin.socket)
        .args(&["--quota-file", &quota.display().to_string()])
        .start();
    // Keys are in use (a seed unwrapped by the plugin) before looking.
    let mut c = secrets_client(&serve.socket).await;
    create(&mut c, "small", "one", "v1").await.expect("create");
    let e = create(&mut c, "small", "two", "v2")
        .await
        .expect_err("over quota");
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert_eq!(
        e.message(),
        "exceeded quota: small-quota, requested: count/secrets=1, used: count/secrets=1, limited: count/secrets=1"
    );
    assert_hygienic("coffer serve", serve.child.id(), &serve.log_text());
    assert_hygienic("coffer-kms-local", plugin.child.id(), &plugin.log_text());
    drop(c);
    serve.stop();
    plugin.stop();
}

/// Raises this process's soft core limit to its hard limit (children inherit it), so that a
/// child that leaves core dumps alone shows a limit other than 0. `None` if the hard limit is 0.
fn allow_core_dumps_here() -> Option<String> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let hard = getrlimit(Resource::Core).maximum;
    if hard == Some(0) {
        return None;
    }
    setrlimit(
        Resource::Core,
        Rlimit {
            current: hard,
            maximum: hard,
        },
    )
    .ok()?;
    Some(hard.map_or_else(|| "unlimited".to_owned(), |h| h.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opt_out_flags_leave_core_dumps_and_memory_alone() {
    let expected_core = allow_core_dumps_here();
    let tmp = tempfile::tempdir().expect("tempdir");
    let serve = Serve::new(tmp.path())
        .args(&["--allow-core-dumps", "--disable-mlock"])
        .start();
    let mut c = secrets_client(&serve.socket).await;
    create(&mut c, "ns", "s", "v").await.expect("serves");
    let pid = serve.child.id();
    let log = serve.log_text();
    assert!(
        log.contains("core dumps allowed (--allow-core-dumps)"),
        "{log}"
    );
    assert!(
        log.contains("memory locking disabled (--disable-mlock)"),
        "{log}"
    );
    assert_eq!(locked_kb(pid), 0);
    match expected_core {
        Some(limit) => assert_eq!(core_limit(pid).0, limit),
        None => coffer_testkit::require::skip(
            "the hard core limit is 0 here: an allowed core dump cannot be told apart",
        ),
    }
    drop(c);
    serve.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cap_ipc_lock_mlock_warns_once_and_the_server_still_works() {
    let memlock = rustix::process::getrlimit(rustix::process::Resource::Memlock).current;
    let setpriv = Path::new("/usr/bin/setpriv");
    let root = rustix::process::geteuid().is_root();
    if memlock.is_none() || !setpriv.exists() || !root {
        // Without a finite RLIMIT_MEMLOCK the lock is allowed; without setpriv (or root) this
        // test cannot take CAP_IPC_LOCK away from the child.
        // `.ci/run` runs as root with setpriv and a finite `ulimit -l`: there this fails.
        coffer_testkit::require::skip(&format!(
            "memlock {memlock:?} (needs a finite RLIMIT_MEMLOCK), setpriv {}, root {root}",
            setpriv.exists()
        ));
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let serve = Serve::new(tmp.path())
        .through(
            setpriv,
            &["--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock", "--"],
        )
        .start();
    let mut c = secrets_client(&serve.socket).await;
    create(&mut c, "ns", "s", "v")
        .await
        .expect("serves unlocked");
    let pid = serve.child.id();
    let log = serve.log_text();
    assert_eq!(log.matches("memory not locked:").count(), 1, "{log}");
    assert!(log.contains("lacks CAP_IPC_LOCK"), "{log}");
    assert!(
        log.contains("--disable-mlock"),
        "the warning says how to silence it: {log}"
    );
    assert_eq!(locked_kb(pid), 0);
    // Core dumps are off all the same.
    assert_eq!(core_limit(pid), ("0".to_owned(), "0".to_owned()));
    drop(c);
    serve.stop();
}

#[test]
fn a_bad_quota_file_stops_serve_with_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let quota = tmp.path().join("quota.toml");
    std::fs::write(&quota, "[default]\nsecrets = \"many\"\n").expect("write");
    let out = Command::new(coffer_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--disable-mlock",
            "--data-dir",
        ])
        .arg(tmp.path().join("data"))
        .arg("--quota-file")
        .arg(&quota)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--quota-file") && err.contains("quota.toml"),
        "{err}"
    );
}

/// "Not dumpable", told apart from "runs as root": the server runs as an unprivileged user
/// (65534, through setpriv), where a dumpable process's `/proc` entries belong to that user and
/// a non-dumpable one's to root. With `--allow-core-dumps` they belong to 65534, so the check
/// sees the difference (as root, both would be owned by root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_dumpable_is_seen_on_a_server_run_as_an_unprivileged_user() {
    use std::os::unix::fs::PermissionsExt;
    let setpriv = Path::new("/usr/bin/setpriv");
    if !setpriv.exists() || !rustix::process::geteuid().is_root() {
        coffer_testkit::require::skip("needs root and /usr/bin/setpriv to run serve as 65534");
        return;
    }
    let dumps_off: &[&str] = &["--disable-mlock"];
    let dumps_on: &[&str] = &["--disable-mlock", "--allow-core-dumps"];
    for (flags, owner) in [(dumps_off, 0), (dumps_on, 65534)] {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let serve = Serve::new(tmp.path())
            .through(
                setpriv,
                &["--reuid=65534", "--regid=65534", "--clear-groups", "--"],
            )
            .args(flags)
            .start();
        let mut c = secrets_client(&serve.socket).await;
        create(&mut c, "ns", "s", "v").await.expect("serves");
        let pid = serve.child.id();
        let status = proc_file(pid, "status");
        assert!(
            status
                .lines()
                .any(|l| l.starts_with("Uid:") && l.contains("65534")),
            "{status}"
        );
        let found = std::fs::metadata(format!("/proc/{pid}/status"))
            .expect("stat")
            .uid();
        assert_eq!(found, owner, "{flags:?}: /proc/{pid} owner");
        drop(c);
        serve.stop();
    }
}
