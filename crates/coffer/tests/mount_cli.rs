//! `coffer mount` as a user runs it, against a real `coffer serve`: `--once` (flags and a
//! YAML/TOML config), its exit codes and error lines, the tmpfs warning, and the long-running
//! agent following an update and stopping cleanly on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coffer_testkit::cli as cli_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cli_support::Server;

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn once_with_flags_and_config_files() {
    let s = Server::start();
    s.run(&[
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal=user=admin",
        "--from-literal=password=s3cr3t",
    ])
    .ok();
    s.run(&[
        "create",
        "secret",
        "generic",
        "api",
        "-n",
        "web",
        "--from-literal=token=t0k",
    ])
    .ok();
    let out = tempfile::tempdir().unwrap();

    // The one-mount shorthand, with items and modes.
    let dir = out.path().join("db");
    let run = s.run(&[
        "mount",
        "--once",
        "--secret",
        "default/db",
        "--dir",
        dir.to_str().unwrap(),
        "--item",
        "password=creds/password:0400",
        "--item",
        "user=user",
        "--default-mode",
        "0440",
    ]);
    run.ok();
    assert_eq!(read(&dir.join("creds/password")), "s3cr3t");
    assert_eq!(read(&dir.join("user")), "admin");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.join("creds/password")), 0o400);
    assert_eq!(mode(&dir.join("user")), 0o440);
    assert!(std::fs::read_link(dir.join("..data")).is_ok());
    // /tmp is not tmpfs here, so the agent says plaintext goes to disk (unless it is).
    let on_tmpfs = coffer::mount::fsinfo::backing(out.path())
        .unwrap()
        .in_memory;
    assert_eq!(
        run.stderr.contains("is not on tmpfs or ramfs"),
        !on_tmpfs,
        "{}",
        run.stderr
    );

    // A YAML file with two mounts (one optional and missing), and a TOML file.
    let yaml = s.file(
        "mounts.yaml",
        format!(
            "mounts:\n  - secret: web/api\n    dir: {}\n    defaultMode: 0600\n  - secret: nothing\n    dir: {}\n    optional: true\n",
            out.path().join("api").display(),
            out.path().join("nothing").display()
        ),
    );
    let toml = s.file(
        "mounts.toml",
        format!(
            "[[mounts]]\nsecret = \"db\"\ndir = \"{}\"\nitems = [{{ key = \"user\", path = \"u\" }}]\n",
            out.path().join("toml").display()
        ),
    );
    s.run(&["mount", "--once", "--config", &yaml, "--config", &toml])
        .ok();
    assert_eq!(read(&out.path().join("api/token")), "t0k");
    assert_eq!(mode(&out.path().join("api/token")), 0o600);
    assert!(out.path().join("nothing/..data").exists());
    assert_eq!(
        std::fs::read_dir(out.path().join("nothing"))
            .unwrap()
            .count(),
        2
    );
    assert_eq!(read(&out.path().join("toml/u")), "admin");

    // Modes are exact whatever the umask.
    let strict = out.path().join("umask");
    let script = format!(
        "umask 0777 && exec {} --server {} mount --once --secret db --dir {} --item user=a/user",
        cli_support::coffer_bin().display(),
        s.socket,
        strict.display()
    );
    let run = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert!(run.status.success(), "{run:?}");
    assert_eq!(mode(&strict.join("a/user")), 0o644);
    // Directories the agent creates are owner-only (issue 18).
    assert_eq!(mode(&strict.join("a")), 0o700);
    let data = std::fs::read_link(strict.join("..data")).unwrap();
    assert_eq!(mode(&strict.join(data)), 0o700);
    assert_eq!(mode(&strict), 0o700);
}

#[test]
fn once_failures_exit_1_with_a_clear_line() {
    let s = Server::start();
    s.run(&[
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal=user=admin",
    ])
    .ok();
    let out = tempfile::tempdir().unwrap();
    let dir = |n: &str| out.path().join(n).to_str().unwrap().to_owned();

    let run = s.run(&["mount", "--once", "--secret", "absent", "--dir", &dir("a")]);
    run.fails(1, "secret default/absent not found");
    assert!(
        run.stderr.contains("1 of 1 mounts could not be written"),
        "{}",
        run.stderr
    );
    assert!(!out.path().join("a/..data").exists());

    let run = s.run(&[
        "mount",
        "--once",
        "--secret",
        "db",
        "--dir",
        &dir("b"),
        "--item",
        "user=../escape",
    ]);
    run.fails(1, "must not contain '..'");
    assert!(!out.path().join("b").exists());

    let run = s.run(&[
        "mount",
        "--once",
        "--secret",
        "db",
        "--dir",
        &dir("c"),
        "--item",
        "nope=nope",
    ]);
    run.fails(1, "references non-existent secret key: nope");
    assert!(!out.path().join("c/..data").exists());

    // --optional skips the missing key.
    s.run(&[
        "mount",
        "--once",
        "--optional",
        "--secret",
        "db",
        "--dir",
        &dir("d"),
        "--item",
        "nope=nope",
        "--item",
        "user=user",
    ])
    .ok();
    assert_eq!(read(&out.path().join("d/user")), "admin");

    // No mount at all, and an unreachable server.
    s.run(&["mount", "--once"]).fails(1, "nothing to mount");
    let run = cli_support::coffer(
        &[
            "--server",
            "unix:///nonexistent/coffer.sock",
            "mount",
            "--once",
            "--secret",
            "db",
            "--dir",
            &dir("e"),
        ],
        None,
        None,
    );
    run.fails(1, "cannot reach the server");
}

#[test]
fn agent_follows_updates_and_stops_on_sigterm() {
    let s = Server::start();
    s.run(&["create", "secret", "generic", "live", "--from-literal=k=v1"])
        .ok();
    // /dev/shm is tmpfs: no warning there.
    let base = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let dir = base.path().join("live");
    let mut child = s.spawn(&["mount", "--secret", "live", "--dir", dir.to_str().unwrap()]);
    let wait_for = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while read(&dir.join("k")) != want {
            assert!(Instant::now() < deadline, "k never became {want}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for("v1");
    // The agent holds plaintext: no core dumps, as serve (issue 18).
    if let Ok(limits) = std::fs::read_to_string(format!("/proc/{}/limits", child.id())) {
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .expect("core line");
        let fields: Vec<&str> = line["Max core file size".len()..]
            .split_whitespace()
            .collect();
        assert_eq!(&fields[..2], ["0", "0"], "{line}");
    }
    let applied = s.file(
        "live.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: live\nstringData:\n  k: v2\n",
    );
    s.run(&["apply", "-f", &applied]).ok();
    wait_for("v2");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
    if Path::new("/dev/shm").is_dir() {
        assert!(!stderr.contains("not on tmpfs"), "{stderr}");
    }
    assert!(
        !stderr.contains("v1") && !stderr.contains("v2"),
        "plaintext in logs: {stderr}"
    );
}

/// Issue 18, item 4: what the agent creates is 0700 (0750 and the group with --group, owned by
/// --owner when root); an existing target open to others gets a warning; --owner is refused
/// to non-root users.
#[test]
fn mount_directories_are_owner_only_with_group_and_owner_options() {
    use std::os::unix::fs::MetadataExt;
    let s = Server::start();
    s.run(&[
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal=user=admin",
    ])
    .ok();
    let out = tempfile::tempdir().unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let data_dir = |t: &Path| t.join(std::fs::read_link(t.join("..data")).unwrap());

    let plain = out.path().join("plain/nested");
    let run = s.run(&[
        "mount",
        "--once",
        "--secret",
        "db",
        "--dir",
        plain.to_str().unwrap(),
    ]);
    run.ok();
    assert_eq!(mode(&plain), 0o700);
    assert_eq!(mode(&data_dir(&plain)), 0o700);
    assert_eq!(
        mode(&plain.join("user")),
        0o644,
        "the file's own mode, inside"
    );
    assert!(
        !run.stderr.contains("other users can enter"),
        "{}",
        run.stderr
    );

    // An existing target readable by others: left as it is, with a warning.
    let open = out.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = s.run(&[
        "mount",
        "--once",
        "--secret",
        "db",
        "--dir",
        open.to_str().unwrap(),
    ]);
    run.ok();
    assert!(
        run.stderr
            .contains("has mode 0755: other users can enter it"),
        "{}",
        run.stderr
    );
    assert_eq!(mode(&open), 0o755);
    assert_eq!(mode(&data_dir(&open)), 0o700);

    // --group: 0750 and that group, on directories and files.
    let gid = std::fs::metadata(out.path()).unwrap().gid();
    let grouped = out.path().join("grouped");
    let gid_s = gid.to_string();
    let run = s.run(&[
        "mount",
        "--once",
        "--secret",
        "db",
        "--dir",
        grouped.to_str().unwrap(),
        "--group",
        &gid_s,
        "--default-mode",
        "0440",
    ]);
    run.ok();
    assert_eq!(mode(&grouped), 0o750);
    assert_eq!(mode(&data_dir(&grouped)), 0o750);
    assert_eq!(std::fs::metadata(data_dir(&grouped)).unwrap().gid(), gid);
    assert_eq!(std::fs::metadata(grouped.join("user")).unwrap().gid(), gid);

    // --owner: root only.
    let owned = out.path().join("owned");
    let run = s.run(&[
        "mount",
        "--once",
        "--secret",
        "db",
        "--dir",
        owned.to_str().unwrap(),
        "--owner",
        "4242",
        "--group",
        "4243",
    ]);
    if rustix::process::geteuid().is_root() {
        run.ok();
        for p in [owned.clone(), data_dir(&owned), owned.join("user")] {
            let m = std::fs::metadata(&p).unwrap();
            assert_eq!((m.uid(), m.gid()), (4242, 4243), "{}", p.display());
        }
    } else {
        run.fails(1, "--owner: only root");
        assert!(!owned.exists());
    }
}
