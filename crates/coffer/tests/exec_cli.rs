//! `coffer exec` against a real `coffer serve`: variables set from Secrets, precedence
//! (later --env-from over earlier, --env over all), prefixes, invalid names reported in the
//! kubelet's one-line text, --strict-names, --optional, and the command really exec'd (its exit
//! code is the process's).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coffer_testkit::cli as cli_support;

use std::collections::BTreeMap;

use cli_support::Server;

/// The variables `env` printed, as a map.
fn vars(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn setup() -> Server {
    let s = Server::start();
    s.run(&[
        "create",
        "secret",
        "generic",
        "base",
        "--from-literal=DB_USER=admin",
        "--from-literal=DB_PASS=one",
        "--from-literal=SHARED=base",
    ])
    .ok();
    s.run(&[
        "create",
        "secret",
        "generic",
        "over",
        "-n",
        "team",
        "--from-literal=DB_PASS=two",
        "--from-literal=SHARED=over",
        "--from-literal=1st=x",
        "--from-literal=a.b-c=dotted",
        "--from-literal=2nd=y",
    ])
    .ok();
    s
}

#[test]
fn variables_precedence_and_prefixes() {
    let s = setup();
    let run = s.run(&[
        "exec",
        "--env-from",
        "base",
        "--env-from",
        "team/over",
        "--env-from",
        "base",
        "--prefix",
        "B_",
        "--env",
        "SHARED=team/over:DB_PASS",
        "--env",
        "ONLY=base:DB_USER",
        "--",
        "env",
    ]);
    let v = vars(run.ok());
    assert_eq!(v["DB_USER"], "admin");
    // Later --env-from wins over earlier.
    assert_eq!(v["DB_PASS"], "two");
    // --env wins over all.
    assert_eq!(v["SHARED"], "two");
    assert_eq!(v["ONLY"], "admin");
    // A prefix applies to the --env-from before it only.
    assert_eq!(v["B_DB_PASS"], "one");
    assert_eq!(v["B_SHARED"], "base");
    // Relaxed (Kubernetes) names: dots and dashes are fine.
    assert_eq!(v["a.b-c"], "dotted");
    assert!(!v.contains_key("1st"));
    // The parent's environment is inherited.
    assert!(v.contains_key("PATH"));
}

#[test]
fn invalid_names_reported_in_one_line() {
    let s = setup();
    let run = s.run(&["exec", "--env-from", "team/over", "--", "env"]);
    let v = vars(run.ok());
    assert_eq!(v["DB_PASS"], "two");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(
        lines,
        [
            "warning: Keys [1st, 2nd] from the EnvFrom secret team/over were skipped since they \
          are considered invalid environment variable names."
        ],
        "{}",
        run.stderr
    );
    // --strict-names: C identifiers only.
    let run = s.run(&[
        "exec",
        "--strict-names",
        "--env-from",
        "team/over",
        "--",
        "env",
    ]);
    let v = vars(run.ok());
    assert!(!v.contains_key("a.b-c"));
    assert!(
        run.stderr
            .contains("Keys [1st, 2nd, a.b-c] from the EnvFrom secret team/over"),
        "{}",
        run.stderr
    );
    // A prefix can make a key valid.
    let run = s.run(&[
        "exec",
        "--env-from",
        "team/over",
        "--prefix",
        "P_",
        "--",
        "env",
    ]);
    let v = vars(run.ok());
    assert_eq!(v["P_1st"], "x");
    assert_eq!(v["P_2nd"], "y");
    assert!(run.stderr.is_empty(), "{}", run.stderr);
}

#[test]
fn missing_secrets_keys_and_command_errors() {
    let s = setup();
    s.run(&["exec", "--env-from", "absent", "--", "true"])
        .fails(1, "Error from server (NotFound)");
    s.run(&["exec", "--env", "X=base:NOPE", "--", "true"])
        .fails(1, "couldn't find key NOPE in Secret default/base");
    let run = s.run(&[
        "exec",
        "--optional",
        "--env-from",
        "absent",
        "--env",
        "X=base:NOPE",
        "--env",
        "Y=base:DB_USER",
        "--",
        "env",
    ]);
    let v = vars(run.ok());
    assert!(!v.contains_key("X"));
    assert_eq!(v["Y"], "admin");
    s.run(&["exec", "--env", "1BAD=base:DB_USER", "--", "true"])
        .fails(1, "not a valid environment variable name");
    s.run(&["exec", "--prefix", "P", "--env-from", "base", "--", "true"])
        .fails(2, "--prefix applies to the --env-from before it");
    // The command replaces the process: its exit code is ours.
    let run = s.run(&["exec", "--env-from", "base", "--", "sh", "-c", "exit 7"]);
    assert_eq!(run.code, 7, "{run:?}");
    let run = s.run(&["exec", "--env-from", "base", "--", "/nonexistent/cmd"]);
    assert_eq!(run.code, 127, "{run:?}");
    assert!(
        run.stderr.contains("cannot run /nonexistent/cmd"),
        "{}",
        run.stderr
    );
}

/// Issue 18, item 2: keys that can change what the command runs are skipped from --env-from
/// with one stderr line naming them; --allow-unsafe-env sets them; the program is found on
/// Coffer's own PATH, not on one from a Secret; an explicit --env may still name them.
#[test]
fn unsafe_keys_are_skipped_unless_allowed_and_the_program_is_resolved_first() {
    let s = setup();
    s.run(&[
        "create",
        "secret",
        "generic",
        "evil",
        "--from-literal=LD_PRELOAD=/tmp/evil.so",
        "--from-literal=LD_LIBRARY_PATH=/tmp",
        "--from-literal=PATH=/nonexistent",
        "--from-literal=BASH_ENV=/tmp/evil.sh",
        "--from-literal=ENV=/tmp/evil.sh",
        "--from-literal=NODE_OPTIONS=--require=/tmp/evil.js",
        "--from-literal=PERL5OPT=-Mevil",
        "--from-literal=PYTHONSTARTUP=/tmp/evil.py",
        "--from-literal=IFS=x",
        "--from-literal=GOOD=fine",
    ])
    .ok();
    let run = s.run(&["exec", "--env-from", "evil", "--", "env"]);
    let v = vars(run.ok());
    assert_eq!(v["GOOD"], "fine");
    // Not from the Secret (the test's own environment may hold some of these names).
    for (k, secret_value) in [
        ("LD_PRELOAD", "/tmp/evil.so"),
        ("LD_LIBRARY_PATH", "/tmp"),
        ("BASH_ENV", "/tmp/evil.sh"),
        ("ENV", "/tmp/evil.sh"),
        ("NODE_OPTIONS", "--require=/tmp/evil.js"),
        ("PERL5OPT", "-Mevil"),
        ("PYTHONSTARTUP", "/tmp/evil.py"),
        ("IFS", "x"),
    ] {
        assert_ne!(v.get(k).map(String::as_str), Some(secret_value), "{k} set");
    }
    assert_ne!(v["PATH"], "/nonexistent", "the parent's PATH is kept");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(
        lines,
        [
            "warning: Keys [BASH_ENV, ENV, IFS, LD_LIBRARY_PATH, LD_PRELOAD, NODE_OPTIONS, \
             PATH, PERL5OPT, PYTHONSTARTUP] from the EnvFrom secret default/evil were skipped \
             since they can change what the command runs (pass --allow-unsafe-env to set them)."
        ],
        "{}",
        run.stderr
    );
    // A prefix makes them ordinary names.
    let run = s.run(&[
        "exec",
        "--env-from",
        "evil",
        "--prefix",
        "APP_",
        "--",
        "env",
    ]);
    let v = vars(run.ok());
    assert_eq!(v["APP_LD_PRELOAD"], "/tmp/evil.so");
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    // Allowed: set as given; `env` is still found, on Coffer's PATH (LD_PRELOAD of a missing
    // file only makes the loader print a warning).
    let run = s.run(&[
        "exec",
        "--allow-unsafe-env",
        "--env-from",
        "evil",
        "--",
        "env",
    ]);
    let v = vars(run.ok());
    assert_eq!(v["PATH"], "/nonexistent");
    assert_eq!(v["BASH_ENV"], "/tmp/evil.sh");
    assert!(!run.stderr.contains("were skipped"), "{}", run.stderr);
    // An explicit --env names the variable itself: allowed.
    let run = s.run(&["exec", "--env", "PATH=evil:PATH", "--", "env"]);
    assert_eq!(vars(run.ok())["PATH"], "/nonexistent");
    // A program missing from Coffer's PATH is not looked up on the Secret's.
    let run = s.run(&[
        "exec",
        "--allow-unsafe-env",
        "--env-from",
        "evil",
        "--",
        "no-such-program-coffer",
    ]);
    assert_eq!(run.code, 127, "{run:?}");
    assert!(
        run.stderr.contains("cannot run no-such-program-coffer"),
        "{}",
        run.stderr
    );
}

/// Issue 18, item 9: `exec` gets serve's memory hygiene: no core dumps (the limit is 0, and the
/// command inherits it).
#[cfg(target_os = "linux")]
#[test]
fn exec_runs_without_core_dumps() {
    let s = setup();
    let run = s.run(&[
        "exec",
        "--env-from",
        "base",
        "--",
        "cat",
        "/proc/self/limits",
    ]);
    let limits = run.ok();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core line");
    let fields: Vec<&str> = line["Max core file size".len()..]
        .split_whitespace()
        .collect();
    assert_eq!(&fields[..2], ["0", "0"], "{line}");
}
