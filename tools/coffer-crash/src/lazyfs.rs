//! LazyFS, a power-loss simulator, mounted for one run of the harness.
//!
//! LazyFS (Jepsen's; `third_party/lazyfs`, built by `scripts/build-lazyfs.sh`) is a FUSE file
//! system with its own page cache: written data stays in that cache until the application
//! fsyncs it, and the command `lazyfs::clear-cache`, written to its fault FIFO, drops every
//! unsynced byte. SIGKILL plus clear-cache is what a power failure does to a process; a SIGKILL
//! alone leaves the kernel's page cache, so a missing fsync goes unseen.
//!
//! LazyFS opens its completion FIFO for writing before it reads any command (the open blocks
//! until a reader exists) and then writes `finished::clear-cache` to it after each clear. This
//! side keeps the FIFO open read-write for the whole run: the open never blocks, and LazyFS
//! never writes into a FIFO without a reader (which would kill it with SIGPIPE).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long mounting and one clear-cache may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A mounted LazyFS; unmounted and stopped when dropped.
pub(crate) struct LazyFs {
    child: Option<Child>,
    mnt: PathBuf,
    fifo: PathBuf,
    log: PathBuf,
    /// The completion FIFO, held open read-write (see the module doc); `None` while a read
    /// is under way on the blocking pool.
    done: Option<BufReader<File>>,
}

impl LazyFs {
    /// Mounts `binary` at `dir/mnt` over `dir/root` and waits until it takes commands.
    pub(crate) async fn mount(binary: &Path, dir: &Path) -> Result<Self, String> {
        let root = dir.join("root");
        let mnt = dir.join("mnt");
        for d in [&root, &mnt] {
            std::fs::create_dir_all(d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        let fifo = dir.join("faults.fifo");
        let completed = dir.join("completed.fifo");
        for f in [&fifo, &completed] {
            let _ = std::fs::remove_file(f);
            let status = Command::new("mkfifo")
                .arg(f)
                .status()
                .map_err(|e| format!("cannot run mkfifo: {e}"))?;
            if !status.success() {
                return Err(format!("mkfifo {} failed ({status})", f.display()));
            }
        }
        let log = dir.join("lazyfs.log");
        let config = dir.join("lazyfs.toml");
        // 256 MiB of cache: the harness's data directory stays far below it (no eviction, so
        // nothing unsynced reaches the disk before a clear).
        std::fs::write(
            &config,
            format!(
                "[faults]\nfifo_path=\"{}\"\nfifo_path_completed=\"{}\"\n[cache]\n\
                 apply_eviction=false\n[cache.simple]\ncustom_size=\"256mb\"\nblocks_per_page=1\n\
                 [filesystem]\nlog_all_operations=false\nlogfile=\"{}\"\n",
                fifo.display(),
                completed.display(),
                log.display()
            ),
        )
        .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let done = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&completed)
            .map_err(|e| format!("cannot open {}: {e}", completed.display()))?;
        let out = File::create(dir.join("lazyfs.out"))
            .map_err(|e| format!("cannot create lazyfs.out: {e}"))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("cannot clone a file handle: {e}"))?;
        let child = Command::new(binary)
            .arg(&mnt)
            .arg("--config-path")
            .arg(&config)
            .args(["-o", "allow_other", "-o", "modules=subdir", "-o"])
            .arg(format!("subdir={}", root.display()))
            .arg("-f")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start LazyFS {}: {e}", binary.display()))?;
        let mut me = Self {
            child: Some(child),
            mnt,
            fifo,
            log,
            done: Some(BufReader::new(done)),
        };
        // Files written before the mount is active would be hidden under it: wait for both the
        // mount and the fault worker.
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(child) = me.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                me.child = None;
                return Err(format!(
                    "LazyFS exited while mounting ({status}); is /dev/fuse usable? output:\n{}",
                    std::fs::read_to_string(dir.join("lazyfs.out")).unwrap_or_default()
                ));
            }
            let mounted = std::fs::read_to_string("/proc/self/mounts")
                .unwrap_or_default()
                .lines()
                .any(|l| l.split(' ').nth(1) == Some(&*me.mnt.to_string_lossy()));
            let ready = std::fs::read_to_string(&me.log)
                .unwrap_or_default()
                .contains("waiting for fault commands");
            if mounted && ready {
                return Ok(me);
            }
            if Instant::now() > deadline {
                return Err(format!("LazyFS did not mount within {TIMEOUT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The mount point: what is kept here is lost unless fsynced.
    pub(crate) fn path(&self) -> &Path {
        &self.mnt
    }

    /// Drops every byte not yet fsynced, as a power failure would, and waits until done.
    pub(crate) async fn clear_cache(&mut self) -> Result<(), String> {
        let mut done = self
            .done
            .take()
            .ok_or_else(|| "an earlier clear-cache did not finish".to_owned())?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.fifo)
            .and_then(|mut f| f.write_all(b"lazyfs::clear-cache\n"))
            .map_err(|e| format!("cannot write to the LazyFS fault FIFO: {e}"))?;
        let read = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            let r = done.read_line(&mut line);
            (done, r.map(|_| line))
        });
        match tokio::time::timeout(TIMEOUT, read).await {
            Ok(Ok((done, Ok(line)))) => {
                self.done = Some(done);
                if line.trim() == "finished::clear-cache" {
                    Ok(())
                } else {
                    Err(format!("LazyFS answered {line:?} to clear-cache"))
                }
            }
            Ok(Ok((_, Err(e)))) => Err(format!("cannot read the LazyFS completion FIFO: {e}")),
            Ok(Err(e)) => Err(format!("the clear-cache task failed: {e}")),
            Err(_) => Err(format!("LazyFS did not clear its cache within {TIMEOUT:?}")),
        }
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        // A lazy unmount does not fail on a busy mount; then the process can stop.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
