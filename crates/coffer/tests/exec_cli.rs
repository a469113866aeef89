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
