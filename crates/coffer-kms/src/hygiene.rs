//! Process-wide memory hygiene for the processes that hold keys and plaintext (`coffer serve`,
//! the local KMS plugin): no core dumps, and memory locked so that it is never swapped out.
//!
//! - Core dumps: `RLIMIT_CORE` soft and hard limits set to 0, and `PR_SET_DUMPABLE` 0 (which
//!   also keeps other processes of the same user from attaching with ptrace or reading
//!   `/proc/<pid>/mem`). Skipped with `--allow-core-dumps`.
//! - Memory locking, as Vault does: `mlockall(MCL_CURRENT | MCL_FUTURE)` (with `MCL_ONFAULT`
//!   where the kernel has it, so that reserved but untouched memory is not populated). It is
//!   only attempted when it cannot starve the process later: with `CAP_IPC_LOCK`, or with an
//!   unlimited `RLIMIT_MEMLOCK`. Under a finite limit and without the capability, locking all
//!   future memory would make allocations fail once the limit is reached, so the process warns
//!   once and goes on unlocked. Skipped with `--disable-mlock`.
//!
//! Everything here goes through rustix's safe wrappers; the crate stays free of `unsafe`.

/// What [`apply`] does; the KMS plugins take these as their own `serve` flags, `coffer serve`
/// also from its config file's `[limits]` table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::Args, serde::Deserialize)]
#[serde(default)]
pub struct HygieneOptions {
    /// Leave core dumps on (by default they are off: a core file would hold keys and
    /// plaintext).
    #[arg(long)]
    pub allow_core_dumps: bool,
    /// Do not lock the process's memory (mlockall); by default it tries, and warns once if the
    /// system does not allow it.
    #[arg(long)]
    pub disable_mlock: bool,
}

/// How memory locking went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MlockOutcome {
    /// All current and future memory is locked.
    Locked,
    /// Turned off by the operator.
    Disabled,
    /// Not attempted or refused by the system; the reason is logged.
    NotLocked(String),
}

/// What [`apply`] achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HygieneReport {
    /// Core dumps are off (limit 0 and not dumpable).
    pub core_dumps_off: bool,
    /// Memory locking.
    pub mlock: MlockOutcome,
}

/// Mode bits that let group or other users read, write or run a file.
pub const GROUP_OTHER_ACCESS: u32 = 0o077;
/// Mode bits that let group or other users write a file.
pub const GROUP_OTHER_WRITE: u32 = 0o022;

/// Refuses the file `file` (the open file at `path`, described as `what`, e.g. "token file")
/// when its mode has any of the `forbidden` bits ([`GROUP_OTHER_ACCESS`] for files holding
/// secrets such as tokens and PINs, [`GROUP_OTHER_WRITE`] for files that grant access, such as
/// a policy). The message names the file, its mode and the fix, never its content.
pub fn check_file_mode(
    file: &std::fs::File,
    path: &std::path::Path,
    what: &str,
    forbidden: u32,
) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = file
        .metadata()
        .map_err(|e| format!("cannot stat the {what} {}: {e}", path.display()))?
        .permissions()
        .mode()
        & 0o7777;
    if mode & forbidden == 0 {
        return Ok(());
    }
    let (rule, fix) = if forbidden == GROUP_OTHER_WRITE {
        (
            "writable by group or others",
            format!("chmod go-w {}", path.display()),
        )
    } else {
        (
            "readable or writable by group or others",
            format!("chmod 600 {}", path.display()),
        )
    };
    Err(format!(
        "the {what} {} has mode {mode:04o}: it must not be {rule} ({fix})",
        path.display()
    ))
}

/// Reads the file at `path` after [`check_file_mode`]; the bytes are wiped when dropped.
pub fn read_checked(
    path: &std::path::Path,
    what: &str,
    forbidden: u32,
) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    check_file_mode(&file, path, what, forbidden)?;
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    file.read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    Ok(bytes)
}

/// The capability bit of `CAP_IPC_LOCK` in `/proc/self/status`'s `CapEff`.
const CAP_IPC_LOCK: u32 = 14;

/// Applies the options to this process and logs the outcome (one line each; a failure is a
/// warning, never fatal). Call it once, early, before keys are loaded.
pub fn apply(options: &HygieneOptions) -> HygieneReport {
    let core_dumps_off = if options.allow_core_dumps {
        tracing::warn!(
            "core dumps allowed (--allow-core-dumps): a core file may hold keys and Secrets"
        );
        false
    } else {
        match disable_core_dumps() {
            Ok(()) => {
                tracing::info!("core dumps off (RLIMIT_CORE 0, not dumpable)");
                true
            }
            Err(e) => {
                tracing::warn!("cannot turn core dumps off: {e}");
                false
            }
        }
    };
    let mlock = if options.disable_mlock {
        tracing::info!("memory locking disabled (--disable-mlock)");
        MlockOutcome::Disabled
    } else {
        match lock_memory() {
            Ok(()) => {
                tracing::info!("memory locked (mlockall): keys and Secrets are never swapped out");
                MlockOutcome::Locked
            }
            Err(why) => {
                tracing::warn!(
                    "memory not locked: {why}; keys and Secrets may be swapped to disk. Grant \
                     CAP_IPC_LOCK or set an unlimited RLIMIT_MEMLOCK (systemd: \
                     LimitMEMLOCK=infinity), or pass --disable-mlock to accept this"
                );
                MlockOutcome::NotLocked(why)
            }
        }
    };
    HygieneReport {
        core_dumps_off,
        mlock,
    }
}

#[cfg(target_os = "linux")]
fn disable_core_dumps() -> Result<(), String> {
    use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .map_err(|e| format!("setrlimit(RLIMIT_CORE, 0): {e}"))?;
    set_dumpable_behavior(DumpableBehavior::NotDumpable)
        .map_err(|e| format!("prctl(PR_SET_DUMPABLE, 0): {e}"))
}

#[cfg(not(target_os = "linux"))]
fn disable_core_dumps() -> Result<(), String> {
    Err("not supported on this platform".into())
}

#[cfg(target_os = "linux")]
fn lock_memory() -> Result<(), String> {
    use rustix::io::Errno;
    use rustix::mm::{MlockAllFlags, mlockall};
    use rustix::process::{Resource, getrlimit};
    let limit = getrlimit(Resource::Memlock).current;
    let capable = has_capability(CAP_IPC_LOCK);
    if let Some(why) = mlock_refusal(limit, capable) {
        return Err(why);
    }
    let all = MlockAllFlags::CURRENT | MlockAllFlags::FUTURE;
    match mlockall(all | MlockAllFlags::ONFAULT) {
        Ok(()) => Ok(()),
        // Kernels before 4.4 do not know MCL_ONFAULT.
        Err(Errno::INVAL) => mlockall(all).map_err(|e| format!("mlockall: {e}")),
        Err(e) => Err(format!("mlockall: {e}")),
    }
}

#[cfg(not(target_os = "linux"))]
fn lock_memory() -> Result<(), String> {
    Err("mlockall is not supported on this platform".into())
}

/// Why locking all memory must not be tried, if it must not: a finite `RLIMIT_MEMLOCK` (in
/// bytes) without `CAP_IPC_LOCK` would let later allocations fail.
pub fn mlock_refusal(memlock_limit: Option<u64>, capable: bool) -> Option<String> {
    match memlock_limit {
        Some(limit) if !capable => Some(format!(
            "RLIMIT_MEMLOCK is {limit} bytes and the process lacks CAP_IPC_LOCK (locking all \
             memory under a finite limit would make later allocations fail)"
        )),
        _ => None,
    }
}

/// Whether this process holds the effective capability `bit` (from `/proc/self/status`).
#[cfg(target_os = "linux")]
fn has_capability(bit: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| capability_set(&s, "CapEff:"))
        .is_some_and(|caps| caps & (1u64 << bit) != 0)
}

/// The capability mask of the line `field` in a `/proc/<pid>/status` text.
fn capability_set(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_mlockall_under_a_finite_limit_without_the_capability() {
        assert!(mlock_refusal(None, false).is_none());
        assert!(mlock_refusal(Some(8 << 20), true).is_none());
        let why = mlock_refusal(Some(65536), false).expect("refused");
        assert!(
            why.contains("65536 bytes") && why.contains("CAP_IPC_LOCK"),
            "{why}"
        );
    }

    #[test]
    fn reads_capability_masks() {
        let status = "Name:\tcoffer\nCapPrm:\t0000000000000000\nCapEff:\t0000000000004000\n";
        let caps = capability_set(status, "CapEff:").expect("CapEff");
        assert_ne!(caps & (1 << CAP_IPC_LOCK), 0);
        assert_eq!(capability_set(status, "CapPrm:"), Some(0));
        assert_eq!(capability_set("nothing", "CapEff:"), None);
    }
}
