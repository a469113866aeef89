//! The `coffer` CLI and mount agent against a real `coffer serve` with authentication on: TLS,
//! mutual TLS and bearer tokens (`--server https://...`, `--ca-file`, `--client-cert`/
//! `--client-key`, `--token-file`, `COFFER_TOKEN`), and every way those credentials are refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coffer_testkit::cli as cli_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use cli_support::{Run, Server, coffer_env};
use coffer_testkit::auth::{Pair, Pki};

const TOKEN: &str = "tok-admin-0123456789";
const POLICY: &str = r#"
rules:
  - groups: [admins]
    verbs: ["*"]
    namespaces: ["*"]
"#;

/// Writes `pair` as `dir/NAME.crt` and `dir/NAME.key` (mode 0600); returns both paths.
fn write_pair(dir: &Path, name: &str, pair: &Pair) -> (String, String) {
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, &pair.cert).unwrap();
    std::fs::write(&k, &pair.key).unwrap();
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
    (
        c.to_string_lossy().into_owned(),
        k.to_string_lossy().into_owned(),
    )
}

/// A server with TLS, mutual TLS, a token file and the policy, and the client files.
struct Secure {
    server: Server,
    /// `https://localhost:PORT`
    url: String,
    ca: String,
    other_ca: String,
    client: (String, String),
    expired: (String, String),
    foreign: (String, String),
    token_file: String,
}

impl Secure {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let pki = Pki::new();
        let ca_path = p.join("ca.crt");
        std::fs::write(&ca_path, &pki.ca_pem).unwrap();
        let other_ca = p.join("other-ca.crt");
        std::fs::write(&other_ca, Pki::new().ca_pem).unwrap();
        let (srv_cert, srv_key) = write_pair(p, "server", &pki.server);
        let client = write_pair(p, "alice", &pki.client("alice", &["admins"]));
        let expired = write_pair(p, "expired", &pki.expired_client("alice"));
        let foreign = write_pair(p, "foreign", &Pki::foreign_client("alice"));
        std::fs::write(p.join("tokens.csv"), format!("{TOKEN},admin,1,admins\n")).unwrap();
        std::fs::set_permissions(p.join("tokens.csv"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::fs::write(p.join("policy.yaml"), POLICY).unwrap();
        let token_file = p.join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let (tokens, policy) = (s(&p.join("tokens.csv")), s(&p.join("policy.yaml")));
        let ca = s(&ca_path);
        let server = Server::start_with(
            dir,
            &[
                "--tls-cert",
                &srv_cert,
                "--tls-key",
                &srv_key,
                "--client-ca",
                &ca,
                "--token-file",
                &tokens,
                "--authz-policy",
                &policy,
            ],
        );
        let port = server.tcp_addr().rsplit(':').next().unwrap().to_owned();
        Self {
            url: format!("https://localhost:{port}"),
            ca,
            other_ca: s(&other_ca),
            client,
            expired,
            foreign,
            token_file: s(&token_file),
            server,
        }
    }

    /// Runs the CLI against the TLS port with `flags` (credentials) and `env`.
    fn run(&self, flags: &[&str], env: &[(&str, &str)], args: &[&str]) -> Run {
        let mut all = vec!["--server", self.url.as_str()];
        all.extend_from_slice(flags);
        all.extend_from_slice(args);
        coffer_env(&all, env, None, None)
    }

    fn mtls<'a>(&'a self, pair: &'a (String, String)) -> Vec<&'a str> {
        vec![
            "--ca-file",
            &self.ca,
            "--client-cert",
            &pair.0,
            "--client-key",
            &pair.1,
        ]
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

const GET: &[&str] = &["get", "secret", "db", "-o", "jsonpath={.data.password}"];

/// The line a refused command prints: exit 1, one `Unauthorized` line with `needle`, and never
/// the token.
#[track_caller]
fn unauthorized(run: &Run, needle: &str) {
    run.fails(1, "Error from server (Unauthorized)");
    assert!(run.stderr.contains(needle), "{run:#?}");
    assert!(!run.stderr.contains(TOKEN) && !run.stdout.contains(TOKEN));
}

#[test]
fn cli_with_tokens_and_client_certificates() {
    let s = Secure::start();
    let ca = ["--ca-file", s.ca.as_str()];

    // COFFER_TOKEN creates; --token-file reads back.
    s.run(
        &ca,
        &[("COFFER_TOKEN", TOKEN)],
        &[
            "create",
            "secret",
            "generic",
            "db",
            "--from-literal=password=s3cr3t",
        ],
    )
    .ok();
    let run = s.run(
        &[&ca[..], &["--token-file", &s.token_file]].concat(),
        &[],
        GET,
    );
    assert_eq!(run.ok(), "czNjcjN0");
    assert!(!run.stderr.contains("warning"), "{run:#?}");

    // Mutual TLS: the client certificate (CN alice, O admins) is enough.
    let run = s.run(&s.mtls(&s.client), &[], GET);
    assert_eq!(run.ok(), "czNjcjN0");

    // A bad token: UNAUTHENTICATED, exit 1, the token never echoed. --token-file wins over
    // COFFER_TOKEN.
    let bad = s.server.file("bad-token", "tok-wrong\n");
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    unauthorized(
        &s.run(&ca, &[("COFFER_TOKEN", "tok-wrong")], GET),
        "invalid bearer token",
    );
    let run = s.run(
        &[&ca[..], &["--token-file", &bad]].concat(),
        &[("COFFER_TOKEN", TOKEN)],
        GET,
    );
    unauthorized(&run, "invalid bearer token");

    // No credentials; an expired certificate; a certificate from another CA.
    unauthorized(&s.run(&ca, &[], GET), "no credentials");
    unauthorized(
        &s.run(&s.mtls(&s.expired), &[], GET),
        "client certificate rejected: expired",
    );
    unauthorized(
        &s.run(&s.mtls(&s.foreign), &[], GET),
        "client certificate rejected: not signed by the client CA",
    );

    // A server certificate the client does not trust: no connection.
    let run = s.run(&["--ca-file", &s.other_ca], &[("COFFER_TOKEN", TOKEN)], GET);
    run.fails(1, "cannot reach the Coffer server");

    // A token file others can read: a warning, and it still works.
    let loose = s.server.file("loose-token", TOKEN);
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = s.run(&[&ca[..], &["--token-file", &loose]].concat(), &[], GET);
    assert_eq!(run.ok(), "czNjcjN0");
    assert!(
        run.stderr.contains("can be read by other users"),
        "{run:#?}"
    );

    // Flag mistakes are client-side errors.
    s.run(&[], &[], GET).fails(1, "https:// needs --ca-file");
    let run = coffer_env(
        &[&["--server", "127.0.0.1:1"], &ca[..], GET].concat(),
        &[],
        None,
        None,
    );
    run.fails(1, "need an https:// --server");
    s.run(
        &[&ca[..], &["--client-cert", &s.client.0]].concat(),
        &[],
        GET,
    )
    .fails(1, "--client-cert and --client-key go together");
    s.run(
        &[&ca[..], &["--token-file", "/nonexistent/token"]].concat(),
        &[],
        GET,
    )
    .fails(1, "no such file");

    // `exec` sends the credentials too.
    let run = s.run(
        &ca,
        &[("COFFER_TOKEN", TOKEN)],
        &[
            "exec",
            "--env-from",
            "db",
            "--",
            "sh",
            "-c",
            "echo $password ${COFFER_TOKEN:-unset}",
        ],
    );
    // The command does not inherit the token.
    assert_eq!(run.ok().trim(), "s3cr3t unset");
    let run = s.run(
        &ca,
        &[("COFFER_TOKEN", "tok-wrong")],
        &["exec", "--env-from", "db", "--", "true"],
    );
    unauthorized(&run, "invalid bearer token");
}

#[test]
fn mount_agent_over_mtls_and_tokens() {
    let s = Secure::start();
    let ca = ["--ca-file", s.ca.as_str()];
    s.run(
        &ca,
        &[("COFFER_TOKEN", TOKEN)],
        &[
            "create",
            "secret",
            "generic",
            "db",
            "--from-literal=password=s3cr3t",
        ],
    )
    .ok();
    let out = tempfile::tempdir().unwrap();
    let mount = |dir: &Path| {
        vec![
            "mount".to_owned(),
            "--once".to_owned(),
            "--timeout".to_owned(),
            "3s".to_owned(),
            "--secret".to_owned(),
            "default/db".to_owned(),
            "--dir".to_owned(),
            dir.to_string_lossy().into_owned(),
        ]
    };

    // Over mutual TLS.
    let dir = out.path().join("mtls");
    let args = mount(&dir);
    s.run(&s.mtls(&s.client), &[], &strs(&args)).ok();
    assert_eq!(
        std::fs::read_to_string(dir.join("password")).unwrap(),
        "s3cr3t"
    );

    // With a token file.
    let dir = out.path().join("token");
    let args = mount(&dir);
    s.run(
        &[&ca[..], &["--token-file", &s.token_file]].concat(),
        &[],
        &strs(&args),
    )
    .ok();
    assert_eq!(
        std::fs::read_to_string(dir.join("password")).unwrap(),
        "s3cr3t"
    );

    // A bad token: nothing written, exit 1, the reason in the log, the token never shown.
    let dir = out.path().join("bad");
    let args = mount(&dir);
    let run = s.run(&ca, &[("COFFER_TOKEN", "tok-wrong")], &strs(&args));
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(run.stderr.contains("invalid bearer token"), "{run:#?}");
    assert!(!run.stderr.contains("tok-wrong"), "{run:#?}");
    assert!(!dir.join("password").exists());
}
