//! The `coffer` binary without a server: flag errors (clap, exit 2), client-side dry runs,
//! unreachable servers, and files rejected before anything is sent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coffer_testkit::cli as cli_support;

use cli_support::coffer;

fn run(args: &[&str]) -> cli_support::Run {
    coffer(args, None, None)
}

#[test]
fn bad_flags_are_usage_errors() {
    for args in [
        &["get", "secrets", "--bogus"][..],
        &["get", "secrets", "-o", "xml"],
        &["get", "secrets", "-o", "jsonpath={.a"],
        &["create", "secret", "tls", "x", "--cert", "c.pem"],
        &["create", "secret", "generic"],
        &["create", "secret", "opaque", "x"],
        &["create", "secret", "generic", "x", "-o", "wide"],
        &["create", "secret", "generic", "x", "--dry-run=maybe"],
        &[
            "create",
            "secret",
            "docker-registry",
            "x",
            "--docker-username=u",
        ],
        &["apply"],
        &["frobnicate"],
    ] {
        let r = run(args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(r.stderr.starts_with("error: "), "{args:?}: {r:?}");
        assert!(r.stdout.is_empty(), "{args:?}: {r:?}");
    }
    let help = run(&["get", "--help"]);
    assert_eq!(help.code, 0);
    assert!(help.stdout.contains("--all-namespaces"), "{help:?}");
}

#[test]
fn dry_run_prints_the_manifest_kubectl_would() {
    let r = run(&[
        "create",
        "secret",
        "generic",
        "my-secret",
        "--from-literal=user=admin",
        "--from-literal=pw=s3cr3t",
        "--dry-run=client",
        "-o",
        "yaml",
    ]);
    assert_eq!(
        r.ok(),
        "apiVersion: v1\ndata:\n  pw: czNjcjN0\n  user: YWRtaW4=\nkind: Secret\nmetadata:\n  creationTimestamp: null\n  name: my-secret\n"
    );
    let r = run(&[
        "create",
        "secret",
        "generic",
        "s",
        "-n",
        "prod",
        "--type=kubernetes.io/basic-auth",
        "--from-literal=username=u",
        "--label",
        "a=b",
        "--immutable",
        "--dry-run",
        "-o",
        "json",
    ]);
    assert_eq!(
        r.ok(),
        "{\n    \"apiVersion\": \"v1\",\n    \"data\": {\n        \"username\": \"dQ==\"\n    },\n    \"immutable\": true,\n    \"kind\": \"Secret\",\n    \"metadata\": {\n        \"creationTimestamp\": null,\n        \"labels\": {\n            \"a\": \"b\"\n        },\n        \"name\": \"s\",\n        \"namespace\": \"prod\"\n    },\n    \"type\": \"kubernetes.io/basic-auth\"\n}\n"
    );
    assert_eq!(
        run(&["create", "secret", "generic", "s", "--dry-run"]).ok(),
        "secret/s created (dry run)\n"
    );
    let r = run(&[
        "create",
        "secret",
        "docker-registry",
        "reg",
        "--docker-username=u",
        "--docker-password=p",
        "--dry-run=client",
        "-o",
        "jsonpath={.data.\\.dockerconfigjson}",
    ]);
    let json = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, r.ok()).unwrap();
    assert_eq!(
        String::from_utf8(json).unwrap(),
        r#"{"auths":{"https://index.docker.io/v1/":{"username":"u","password":"p","auth":"dTpw"}}}"#
    );
    run(&["create", "secret", "generic", "s", "--dry-run=server"])
        .fails(1, "--dry-run=server is not supported");
}

#[test]
fn unreachable_server_is_one_sentence() {
    // Port 1 on loopback: nothing listens there.
    let r = run(&["--server", "127.0.0.1:1", "get", "secrets"]);
    r.fails(
        1,
        "error: cannot reach the Coffer server at 127.0.0.1:1: connection refused",
    );
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    let dir = tempfile::tempdir().unwrap();
    let sock = format!("unix://{}/none.sock", dir.path().display());
    run(&["--server", &sock, "get", "secrets"])
        .fails(1, "cannot reach the Coffer server at unix://");
    run(&["--server", "https://x:1", "get", "secrets"]).fails(1, "https:// needs --ca-file");
    run(&["--server", "localhost", "get", "secrets"]).fails(1, "the port is missing");
}

#[test]
fn bad_local_input_fails_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("bad.env");
    std::fs::write(&env, "GOOD=1\n1BAD=2\n").unwrap();
    let unreachable = ["--server", "127.0.0.1:1"];
    let with = |rest: &[&str]| {
        let mut a = unreachable.to_vec();
        a.extend_from_slice(rest);
        run(&a)
    };
    with(&[
        "create",
        "secret",
        "generic",
        "x",
        &format!("--from-env-file={}", env.display()),
    ])
    .fails(1, "\"1BAD\" is not a valid key name");
    with(&[
        "create",
        "secret",
        "generic",
        "x",
        "--from-file=/no/such/file",
    ])
    .fails(
        1,
        "error: cannot read /no/such/file: no such file or directory",
    );
    with(&[
        "create",
        "secret",
        "generic",
        "x",
        "--from-literal=novalue-TOPSECRET",
    ])
    .fails(1, "expected KEY=VALUE")
    .contains("TOPSECRET")
    .then(|| panic!("the literal was echoed"));
    with(&["apply", "-f", "/no/such.yaml"]).fails(1, "cannot read /no/such.yaml");
    with(&["get", "secret", "a", "-A"])
        .fails(1, "cannot be retrieved by name across all namespaces");
}
