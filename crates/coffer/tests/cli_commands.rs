//! The `coffer` binary against a real `coffer serve`: each `create secret` flavor, `get` golden
//! output, the `-o yaml` round trip through `apply -f`, delete, watch, and error lines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coffer_testkit::cli as cli_support;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cli_support::{Lines, Server, coffer, normalize_age};

fn tls_pair(alg: &'static rcgen::SignatureAlgorithm) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["example.com".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

fn decode(b64: &str) -> Vec<u8> {
    STANDARD.decode(b64.trim()).unwrap()
}

/// Replaces the store-assigned metadata values in `get -o yaml` output with placeholders.
fn normalize_yaml(y: &str) -> String {
    y.lines()
        .map(|l| {
            let t = l.trim_start();
            let indent = &l[..l.len() - t.len()];
            if t.starts_with("uid: ") {
                format!("{indent}uid: <uid>")
            } else if t.starts_with("resourceVersion: \"") && t != "resourceVersion: \"\"" {
                format!("{indent}resourceVersion: <rv>")
            } else if let Some(ts) = t.strip_prefix("creationTimestamp: ") {
                assert!(
                    ts.len() == 22
                        && ts.starts_with('"')
                        && ts.ends_with("Z\"")
                        && ts.contains('T'),
                    "not RFC 3339: {ts}"
                );
                format!("{indent}creationTimestamp: <ts>")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[test]
fn create_flavors_and_get_table_golden() {
    let s = Server::start();
    let env = s.file(
        "app.env",
        "# settings\n\nLOG_LEVEL=debug\nURL=http://x/?a=b\n",
    );
    let cfg = s.file("config.json", "{\"k\": 1}\n");
    assert_eq!(
        s.run(&[
            "create",
            "secret",
            "generic",
            "app-config",
            "-n",
            "golden",
            "--from-literal=password=s3cr3t",
            &format!("--from-file={cfg}"),
            &format!("--from-file=renamed.json={cfg}"),
            &format!("--from-env-file={env}"),
            "--label",
            "app=web",
        ])
        .ok(),
        "secret/app-config created\n"
    );
    let (cert, key) = tls_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let (cert_path, key_path) = (s.file("tls.crt", &cert), s.file("tls.key", &key));
    assert_eq!(
        s.run(&[
            "create",
            "secret",
            "tls",
            "web-tls",
            "-n",
            "golden",
            &format!("--cert={cert_path}"),
            &format!("--key={key_path}"),
        ])
        .ok(),
        "secret/web-tls created\n"
    );
    assert_eq!(
        s.run(&[
            "create",
            "secret",
            "docker-registry",
            "regcred",
            "-n",
            "golden",
            "--docker-server=registry.example.com",
            "--docker-username=bob",
            "--docker-password=hunter2",
            "--docker-email=bob@example.com",
        ])
        .ok(),
        "secret/regcred created\n"
    );

    let table = s.run(&["get", "secrets", "-n", "golden"]);
    assert_eq!(
        normalize_age(table.ok()),
        "NAME         TYPE                             DATA   AGE\n\
         app-config   Opaque                           5      Ns\n\
         regcred      kubernetes.io/dockerconfigjson   1      Ns\n\
         web-tls      kubernetes.io/tls                2      Ns\n"
    );
    // -o wide adds nothing for Secrets; `get secret NAME` prints one row.
    assert_eq!(
        s.run(&["get", "secrets", "-n", "golden", "-o", "wide"])
            .ok()
            .lines()
            .count(),
        4
    );
    assert_eq!(
        normalize_age(s.run(&["get", "secret", "web-tls", "-n", "golden"]).ok()),
        "NAME      TYPE                DATA   AGE\nweb-tls   kubernetes.io/tls   2      Ns\n"
    );
    assert_eq!(
        normalize_age(s.run(&["get", "secrets", "-A", "--show-labels"]).ok()),
        "NAMESPACE   NAME         TYPE                             DATA   AGE   LABELS\n\
         golden      app-config   Opaque                           5      Ns    app=web\n\
         golden      regcred      kubernetes.io/dockerconfigjson   1      Ns    <none>\n\
         golden      web-tls      kubernetes.io/tls                2      Ns    <none>\n",
        "LABELS column",
    );
    assert_eq!(
        s.run(&["get", "secrets", "-n", "golden", "-o", "name"])
            .ok(),
        "secret/app-config\nsecret/regcred\nsecret/web-tls\n"
    );
    assert_eq!(
        s.run(&[
            "get", "secrets", "-n", "golden", "-l", "app=web", "-o", "name"
        ])
        .ok(),
        "secret/app-config\n"
    );
    assert_eq!(
        s.run(&[
            "get",
            "secrets",
            "-A",
            "--field-selector",
            "type=kubernetes.io/tls",
            "-o",
            "name"
        ])
        .ok(),
        "secret/web-tls\n"
    );
    assert_eq!(
        s.run(&[
            "get",
            "secrets",
            "-n",
            "golden",
            "-o",
            "jsonpath={.items[*].metadata.name}"
        ])
        .ok(),
        "app-config regcred web-tls"
    );

    // generic: literal, file (basename key and explicit key), env file.
    let jp = |name: &str, expr: &str| {
        s.run(&[
            "get",
            "secret",
            name,
            "-n",
            "golden",
            "-o",
            &format!("jsonpath={expr}"),
        ])
        .ok()
        .to_owned()
    };
    assert_eq!(decode(&jp("app-config", "{.data.password}")), b"s3cr3t");
    assert_eq!(
        decode(&jp("app-config", "{.data.config\\.json}")),
        b"{\"k\": 1}\n"
    );
    assert_eq!(
        decode(&jp("app-config", "{.data.renamed\\.json}")),
        b"{\"k\": 1}\n"
    );
    assert_eq!(decode(&jp("app-config", "{.data.LOG_LEVEL}")), b"debug");
    assert_eq!(decode(&jp("app-config", "{.data.URL}")), b"http://x/?a=b");
    assert_eq!(jp("app-config", "{.metadata.labels.app}"), "web");
    // tls: the files, byte for byte.
    assert_eq!(decode(&jp("web-tls", "{.data.tls\\.crt}")), cert.as_bytes());
    assert_eq!(decode(&jp("web-tls", "{.data.tls\\.key}")), key.as_bytes());
    // docker-registry: exactly what kubectl writes.
    assert_eq!(jp("regcred", "{.type}"), "kubernetes.io/dockerconfigjson");
    assert_eq!(
        String::from_utf8(decode(&jp("regcred", "{.data.\\.dockerconfigjson}"))).unwrap(),
        r#"{"auths":{"registry.example.com":{"username":"bob","password":"hunter2","email":"bob@example.com","auth":"Ym9iOmh1bnRlcjI="}}}"#
    );
}

#[test]
fn tls_pairs_are_checked() {
    let s = Server::start();
    for (i, alg) in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ED25519]
        .into_iter()
        .enumerate()
    {
        let (cert, key) = tls_pair(alg);
        let c = s.file(&format!("c{i}.pem"), &cert);
        let k = s.file(&format!("k{i}.pem"), &key);
        s.run(&[
            "create",
            "secret",
            "tls",
            &format!("ok{i}"),
            "--cert",
            &c,
            "--key",
            &k,
        ])
        .ok();
    }
    let (cert_a, _) = tls_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let (_, key_b) = tls_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let (_, key_ed) = tls_pair(&rcgen::PKCS_ED25519);
    let c = s.file("a.crt", &cert_a);
    let kb = s.file("b.key", &key_b);
    let ked = s.file("ed.key", &key_ed);
    let junk = s.file("junk.txt", "this is not PEM\n");

    let e = s.run(&["create", "secret", "tls", "bad", "--cert", &c, "--key", &kb]);
    e.fails(1, "error: tls: private key does not match public key");
    assert!(!e.stderr.contains("PRIVATE KEY-----"), "{e:?}");
    s.run(&[
        "create", "secret", "tls", "bad", "--cert", &c, "--key", &ked,
    ])
    .fails(1, "tls: private key type does not match public key type");
    s.run(&[
        "create", "secret", "tls", "bad", "--cert", &junk, "--key", &kb,
    ])
    .fails(1, "tls: failed to find any PEM data in certificate input");
    s.run(&[
        "create", "secret", "tls", "bad", "--cert", &c, "--key", &junk,
    ])
    .fails(1, "tls: failed to find any PEM data in key input");
    s.run(&["create", "secret", "tls", "bad", "--cert", &kb, "--key", &c])
        .fails(1, "PEM inputs may have been switched");
    s.run(&[
        "create",
        "secret",
        "tls",
        "bad",
        "--cert",
        "/nonexistent.crt",
        "--key",
        &kb,
    ])
    .fails(
        1,
        "error: cannot read /nonexistent.crt: no such file or directory",
    );
    // Nothing was stored for the failures.
    assert_eq!(
        s.run(&["get", "secrets", "-o", "name"]).ok(),
        "secret/ok0\nsecret/ok1\n"
    );
}

#[test]
fn yaml_round_trip_through_apply() {
    let s = Server::start();
    s.run(&[
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal=user=admin",
        "--from-literal=password=p@ss: word",
        "--label",
        "app=web",
        "--label",
        "tier=yes",
    ])
    .ok();
    let yaml = s
        .run(&["get", "secret", "db", "-o", "yaml"])
        .ok()
        .to_owned();
    assert_eq!(
        normalize_yaml(&yaml),
        "apiVersion: v1\n\
         data:\n  password: cEBzczogd29yZA==\n  user: YWRtaW4=\n\
         kind: Secret\n\
         metadata:\n  creationTimestamp: <ts>\n  labels:\n    app: web\n    tier: \"yes\"\n  name: db\n  namespace: default\n  resourceVersion: <rv>\n  uid: <uid>\n\
         type: Opaque\n"
    );
    let rv = s
        .run(&[
            "get",
            "secret",
            "db",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
        .ok()
        .to_owned();

    // Back in unchanged: no write happens.
    let f = s.file("db.yaml", &yaml);
    assert_eq!(s.run(&["apply", "-f", &f]).ok(), "secret/db unchanged\n");
    assert_eq!(
        s.run_stdin(&["apply", "-f", "-"], yaml.as_bytes()).ok(),
        "secret/db unchanged\n"
    );
    assert_eq!(
        s.run(&[
            "get",
            "secret",
            "db",
            "-o",
            "jsonpath={.metadata.resourceVersion}"
        ])
        .ok(),
        rv
    );
    // JSON too.
    let json = s
        .run(&["get", "secret", "db", "-o", "json"])
        .ok()
        .to_owned();
    assert!(
        json.starts_with("{\n    \"apiVersion\": \"v1\",\n    \"data\": {"),
        "{json}"
    );
    assert_eq!(
        s.run_stdin(&["apply", "-f", "-"], json.as_bytes()).ok(),
        "secret/db unchanged\n"
    );

    // A changed label is `configured`; the stale resourceVersion in the file is no precondition.
    let edited = yaml.replace("app: web", "app: api");
    assert_eq!(
        s.run_stdin(&["apply", "-f", "-"], edited.as_bytes()).ok(),
        "secret/db configured\n"
    );
    assert_eq!(
        s.run(&[
            "get",
            "secret",
            "db",
            "-o",
            "jsonpath={.metadata.labels.app}"
        ])
        .ok(),
        "api"
    );
    assert_eq!(
        s.run_stdin(&["apply", "-f", "-"], edited.as_bytes()).ok(),
        "secret/db unchanged\n"
    );

    // The List of `get secrets -o yaml` round-trips as well.
    s.run(&[
        "create",
        "secret",
        "generic",
        "other",
        "-n",
        "ns2",
        "--from-literal=k=v",
    ])
    .ok();
    let list = s
        .run(&["get", "secrets", "-A", "-o", "yaml"])
        .ok()
        .to_owned();
    assert!(
        list.starts_with("apiVersion: v1\nitems:\n- apiVersion: v1\n"),
        "{list}"
    );
    assert!(
        list.ends_with("kind: List\nmetadata:\n  resourceVersion: \"\"\n"),
        "{list}"
    );
    assert_eq!(
        s.run_stdin(&["apply", "-f", "-"], list.as_bytes()).ok(),
        "secret/db unchanged\nsecret/other unchanged\n"
    );
    let jlist = s
        .run(&["get", "secrets", "-A", "-o", "json"])
        .ok()
        .to_owned();
    assert_eq!(
        s.run_stdin(&["apply", "-f", "-"], jlist.as_bytes()).ok(),
        "secret/db unchanged\nsecret/other unchanged\n"
    );
}

#[test]
fn apply_creates_from_multi_document_yaml_and_lists() {
    let s = Server::start();
    let manifest = "\
# two Secrets and a List
apiVersion: v1
kind: Secret
metadata:
  name: plain
stringData:
  token: abc
---
apiVersion: v1
kind: Secret
metadata:
  name: basic
  namespace: apps
type: kubernetes.io/basic-auth
data:
  username: YWRtaW4=
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Secret
  metadata:
    name: listed
    namespace: apps
  immutable: true
  data:
    k: dg==
";
    let f = s.file("m.yaml", manifest);
    assert_eq!(
        s.run(&["apply", "-f", &f]).ok(),
        "secret/plain created\nsecret/basic created\nsecret/listed created\n"
    );
    assert_eq!(
        s.run(&["apply", "-f", &f]).ok(),
        "secret/plain unchanged\nsecret/basic unchanged\nsecret/listed unchanged\n"
    );
    assert_eq!(
        s.run(&["get", "secret", "plain", "-o", "jsonpath={.data.token}"])
            .ok(),
        "YWJj"
    );
    assert_eq!(
        normalize_age(s.run(&["get", "secrets", "-n", "apps"]).ok()),
        "NAME     TYPE                       DATA   AGE\n\
         basic    kubernetes.io/basic-auth   1      Ns\n\
         listed   Opaque                     1      Ns\n"
    );
    assert_eq!(
        s.run(&[
            "get",
            "secret",
            "listed",
            "-n",
            "apps",
            "-o",
            "jsonpath={.immutable}"
        ])
        .ok(),
        "true"
    );
    // -n applies to manifests without a namespace; a conflicting one is refused.
    let plain = s.file(
        "p.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: p}\n",
    );
    assert_eq!(
        s.run(&["apply", "-f", &plain, "-n", "apps"]).ok(),
        "secret/p created\n"
    );
    s.run(&["apply", "-f", &f, "-n", "other"])
        .fails(1, "does not match the namespace \"other\"");

    // Immutable data cannot change: the server's validation message names the field.
    let changed = manifest.replace("k: dg==", "k: dw==");
    let e = s.run_stdin(&["apply", "-f", "-"], changed.as_bytes());
    assert_eq!(e.code, 1, "{e:?}");
    assert!(
        e.stderr.contains("The Secret \"listed\" is invalid: data"),
        "{e:?}"
    );
    assert!(e.stdout.contains("secret/plain unchanged"), "{e:?}");

    // Dry run: nothing is written.
    let new = s.file(
        "n.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: dry}\n",
    );
    assert_eq!(
        s.run(&["apply", "-f", &new, "--dry-run=client"]).ok(),
        "secret/dry created (dry run)\n"
    );
    s.run(&["get", "secret", "dry"])
        .fails(1, "Error from server (NotFound): secrets \"dry\" not found");
}

#[test]
fn apply_rejects_bad_files_with_one_clear_line() {
    let s = Server::start();
    let cases: [(&str, &str, &str); 6] = [
        ("missing", "", "cannot read"),
        (
            "bad.yaml",
            "apiVersion: v1\nkind: Secret\nmetadata: [\n",
            "invalid YAML",
        ),
        (
            "cm.yaml",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n",
            "document 2: kind \"ConfigMap\" \"cm\" is not supported",
        ),
        (
            "b64.yaml",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: a}\ndata:\n  password: \"not*base64-TOPSECRET\"\n",
            "data[password]: the value is not valid base64",
        ),
        (
            "num.yaml",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: a}\nstringData:\n  port: 5432\n",
            "stringData[port]: expected a string",
        ),
        ("empty.yaml", "# nothing\n", "no objects passed to apply"),
    ];
    for (name, content, needle) in cases {
        let path = if name == "missing" {
            s.dir
                .path()
                .join("missing.yaml")
                .to_string_lossy()
                .into_owned()
        } else {
            s.file(name, content)
        };
        let r = s.run(&["apply", "-f", &path]);
        r.fails(1, needle);
        assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
        assert!(!r.stderr.contains("TOPSECRET"), "{r:?}");
        assert!(r.stdout.is_empty(), "{r:?}");
    }
    // Nothing was applied from the partly valid file.
    s.run(&["get", "secret", "a"]).fails(1, "NotFound");
}

#[test]
fn server_errors_are_one_line() {
    let s = Server::start();
    s.run(&["create", "secret", "generic", "x", "--from-literal=a=1"])
        .ok();
    s.run(&["create", "secret", "generic", "x", "--from-literal=a=1"])
        .fails(
            1,
            "Error from server (AlreadyExists): secrets \"x\" already exists",
        );
    s.run(&["create", "secret", "generic", "y", "--from-literal=a*b=1"])
        .fails(
            1,
            "The Secret \"y\" is invalid: data[a*b]: Invalid value: \"a*b\"",
        );
    s.run(&["create", "secret", "generic", "Bad_Name"])
        .fails(1, "The Secret \"Bad_Name\" is invalid: metadata.name");
    s.run(&[
        "create",
        "secret",
        "generic",
        "z",
        "--from-literal=a=1",
        "--from-literal=a=2",
    ])
    .fails(
        1,
        "cannot add key \"a\", another key by that name already exists",
    );
    s.run(&["get", "secret", "nope"]).fails(
        1,
        "Error from server (NotFound): secrets \"nope\" not found",
    );
    let both = s.run(&["get", "secret", "x", "nope"]);
    both.fails(1, "secrets \"nope\" not found");
    assert!(both.stdout.starts_with("NAME"), "{both:?}");
    s.run(&["get", "secrets", "-l", "app in (x"])
        .fails(1, "Error from server (BadRequest)");
    s.run(&["get", "secrets", "--field-selector", "spec.a=b"])
        .fails(1, "field label not supported");
    s.run(&["get", "pods"])
        .fails(1, "doesn't have a resource type \"pods\"");
    let empty = s.run(&["get", "secrets", "-n", "void"]);
    assert_eq!(empty.ok(), "");
    assert_eq!(empty.stderr, "No resources found in void namespace.\n");
    for r in [
        s.run(&["get", "secret", "nope"]),
        s.run(&["get", "secrets", "-l", "a in (b"]),
    ] {
        assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
        assert!(!r.stderr.contains("Status {"), "{r:?}");
    }
}

#[test]
fn delete_secrets() {
    let s = Server::start();
    for n in ["a", "b", "c"] {
        s.run(&[
            "create",
            "secret",
            "generic",
            n,
            "--label",
            &format!("n={n}"),
        ])
        .ok();
    }
    assert_eq!(
        s.run(&["delete", "secret", "a"]).ok(),
        "secret \"a\" deleted\n"
    );
    s.run(&["delete", "secret", "a"])
        .fails(1, "Error from server (NotFound): secrets \"a\" not found");
    assert_eq!(
        s.run(&["delete", "secret", "a", "--ignore-not-found"]).ok(),
        ""
    );
    assert_eq!(
        s.run(&["delete", "secret/b"]).ok(),
        "secret \"b\" deleted\n"
    );
    assert_eq!(
        s.run(&["delete", "secrets", "-l", "n=c"]).ok(),
        "secret \"c\" deleted\n"
    );
    let r = s.run(&["get", "secrets"]);
    assert_eq!(r.ok(), "");
    s.run(&["delete", "secret"])
        .fails(1, "no name was specified");
}

#[test]
fn watch_prints_one_line_per_event() {
    let s = Server::start();
    s.run(&[
        "create",
        "secret",
        "generic",
        "before",
        "--from-literal=a=1",
    ])
    .ok();
    let mut child = s.spawn(&["get", "secrets", "-w", "--output-watch-events"]);
    // The header and the initial list arrive first.
    let reader = Lines::new(&mut child);
    let first = reader.next(2, Duration::from_secs(10));
    let mut lines = first.clone();
    assert_eq!(first.len(), 2, "{first:?}");
    s.run(&["create", "secret", "generic", "w", "--from-literal=a=1"])
        .ok();
    s.run_stdin(
        &["apply", "-f", "-"],
        b"apiVersion: v1\nkind: Secret\nmetadata: {name: w}\ndata: {a: Mg==}\n",
    )
    .ok();
    s.run(&["delete", "secret", "w"]).ok();
    lines.extend(reader.next(3, Duration::from_secs(10)));
    let _ = child.kill();
    let _ = child.wait();
    let got = normalize_age(&(lines.join("\n") + "\n"));
    assert_eq!(
        got,
        "EVENT      NAME     TYPE     DATA   AGE\n\
         ADDED      before   Opaque   1      Ns\n\
         ADDED      w        Opaque   1      Ns\n\
         MODIFIED   w        Opaque   1      Ns\n\
         DELETED    w        Opaque   1      Ns\n"
    );
}

#[test]
fn server_address_forms() {
    let s = Server::start();
    let tcp = s.tcp_addr();
    s.run(&["create", "secret", "generic", "x"]).ok();
    for server in [tcp.clone(), format!("http://{tcp}")] {
        let r = coffer(
            &["--server", &server, "get", "secrets", "-o", "name"],
            None,
            None,
        );
        assert_eq!(r.ok(), "secret/x\n");
    }
    // COFFER_SERVER, when no flag is given.
    let out = std::process::Command::new(cli_support::coffer_bin())
        .args(["get", "secrets", "-o", "name"])
        .env("COFFER_SERVER", &s.socket)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "secret/x\n");
}
