//! `coffer kustomize`, `coffer apply -k` and `create secret ... --append-hash` against golden
//! outputs made with a real kubectl (kustomize v5.5) by `scripts/make-kustomize-goldens.sh`:
//! every directory under `tests/golden/kustomize/cases/` is built and compared byte for byte
//! with `out/NAME.yaml` (and its stderr with `out/NAME.warn`), or, for a failing build, its
//! error line with `error: ` and kubectl's message in `out/NAME.err` (`$DIR` is the case
//! directory, `$CASES` the directory of all cases). `apply -k` applies the same directories to
//! a real `coffer serve`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use coffer_testkit::cli::{Server, coffer};

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/kustomize")
}

fn case_dir(name: &str) -> PathBuf {
    golden().join("cases").join(name).canonicalize().unwrap()
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[test]
fn every_case_matches_kubectl() {
    let cases = golden().join("cases").canonicalize().unwrap();
    let out = golden().join("out");
    let mut names: Vec<String> = std::fs::read_dir(&cases)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 20, "cases: {names:?}");
    let mut checked = 0;
    for name in names {
        let dir = cases.join(&name);
        let dir_text = dir.to_string_lossy().into_owned();
        let run = coffer(&["kustomize", &dir_text], None, None);
        if let Some(want) = read(&out.join(format!("{name}.yaml"))) {
            assert_eq!(run.code, 0, "{name}: {run:#?}");
            assert_eq!(run.stdout, want, "{name}: stdout differs from kubectl's");
            let warn = read(&out.join(format!("{name}.warn"))).unwrap_or_default();
            assert_eq!(run.stderr, warn, "{name}: stderr differs from kubectl's");
        } else {
            let message = read(&out.join(format!("{name}.err")))
                .unwrap_or_else(|| panic!("no golden output for case {name}"))
                .replace("$DIR", &dir_text)
                .replace("$CASES", &cases.to_string_lossy());
            assert_eq!(run.code, 1, "{name}: {run:#?}");
            assert_eq!(run.stdout, "", "{name}");
            assert_eq!(
                run.stderr,
                format!("error: {message}\n"),
                "{name}: error differs from kubectl's"
            );
        }
        checked += 1;
    }
    assert!(checked >= 20);
}

#[test]
fn kustomize_defaults_to_the_current_directory() {
    let dir = case_dir("generators");
    let run = coffer(&["kustomize"], None, Some(&dir));
    assert_eq!(
        run.ok(),
        read(&golden().join("out/generators.yaml")).unwrap()
    );
}

#[test]
fn errors_never_show_secret_values() {
    // kubectl would print the literal sources with their values, and an env line that is not
    // UTF-8; Coffer names them without the values.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        "secretGenerator:\n- name: s\n  literals:\n  - password=hunter2-canary\n  - =also-canary\n",
    )
    .unwrap();
    let run = coffer(&["kustomize", &dir.path().to_string_lossy()], None, None);
    assert_eq!(run.code, 1);
    assert!(!run.stderr.contains("canary"), "{}", run.stderr);
    assert!(
        run.stderr.contains("literal sources [password=… =…]"),
        "{}",
        run.stderr
    );

    std::fs::write(
        dir.path().join("kustomization.yaml"),
        "secretGenerator:\n- name: s\n  envs:\n  - bad.env\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("bad.env"), b"TOKEN=canary-\xff\n").unwrap();
    let run = coffer(&["kustomize", &dir.path().to_string_lossy()], None, None);
    assert_eq!(run.code, 1);
    assert!(!run.stderr.contains("canary"), "{}", run.stderr);
    assert!(
        run.stderr.contains("line 1 has invalid utf8 bytes"),
        "{}",
        run.stderr
    );
}

#[test]
fn what_coffer_does_not_do_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_string_lossy().into_owned();
    let k = dir.path().join("kustomization.yaml");
    let build = |text: &str| {
        std::fs::write(&k, text).unwrap();
        coffer(&["kustomize", &path], None, None)
    };
    // A kustomize field Coffer does not implement.
    let run = build("namePrefix: p-\nsecretGenerator:\n- name: s\n");
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .starts_with("error: invalid Kustomization: the kustomization field \"namePrefix\" is not supported by Coffer"),
        "{}",
        run.stderr
    );
    // A resource that is not a Secret.
    std::fs::write(
        dir.path().join("cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n",
    )
    .unwrap();
    let run = build("resources:\n- cm.yaml\n");
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("kind \"ConfigMap\""), "{}", run.stderr);
    assert!(
        run.stderr.contains("Coffer stores only Secrets"),
        "{}",
        run.stderr
    );
    // A nested kustomization.
    std::fs::create_dir(dir.path().join("base")).unwrap();
    let run = build("resources:\n- base\n");
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("'base' is a directory"),
        "{}",
        run.stderr
    );
    // merge/replace against an existing Secret.
    std::fs::write(
        dir.path().join("s.yaml"),
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n",
    )
    .unwrap();
    let run = build("resources:\n- s.yaml\nsecretGenerator:\n- name: s\n  behavior: merge\n");
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("behavior \"merge\" is not supported by Coffer"),
        "{}",
        run.stderr
    );
    // labels[].fields.
    let run = build("labels:\n- pairs: {a: b}\n  fields:\n  - path: spec/x\n");
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("labels[].fields"), "{}", run.stderr);
    // A directory that does not exist.
    let run = coffer(&["kustomize", "/definitely/not/here"], None, None);
    assert_eq!(
        run.stderr,
        "error: must build at directory: not a valid directory: evalsymlink failure on '/definitely/not/here' : lstat /definitely: no such file or directory\n"
    );
}

#[test]
fn append_hash_matches_kubectl() {
    let cases = read(&golden().join("create.cases")).unwrap();
    let cwd = golden().join("create");
    let mut n = 0;
    for line in cases.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, args) = line.split_once('|').unwrap();
        let name = name.trim();
        let mut argv = vec!["create", "secret"];
        argv.extend(args.split_whitespace());
        let run = coffer(&argv, None, Some(&cwd));
        let want = read(&golden().join(format!("out/create-{name}.out"))).unwrap();
        let got = run.ok();
        if args.contains("-o json") {
            // kubectl prints a typed object's JSON in Go field order; Coffer's `-o json` printer
            // (coffer-core's manifest module) sorts keys. The names and values must agree.
            let want: serde_json::Value = serde_json::from_str(&want).unwrap();
            let got: serde_json::Value = serde_json::from_str(got).unwrap();
            assert_eq!(got, want, "{name}");
        } else {
            assert_eq!(got, want, "{name}: differs from kubectl's");
        }
        n += 1;
    }
    assert!(n >= 8);
}

#[test]
fn apply_k_applies_to_a_running_server() {
    let s = Server::start();
    let dir = case_dir("generators");
    let dir_text = dir.to_string_lossy().into_owned();
    let want = read(&golden().join("out/generators.yaml")).unwrap();
    let names: Vec<&str> = want
        .lines()
        .filter_map(|l| l.strip_prefix("  name: "))
        .collect();
    assert_eq!(names, ["db-cmk849hh69", "tls"]);

    let run = s.run(&["apply", "-k", &dir_text]);
    assert_eq!(
        run.ok(),
        "secret/db-cmk849hh69 created\nsecret/tls created\n"
    );
    // The deprecation warning goes to stderr, as kubectl's does.
    assert!(
        run.stderr.contains("'commonLabels' is deprecated"),
        "{run:#?}"
    );
    let got = s.run(&[
        "get",
        "secret",
        "db-cmk849hh69",
        "-n",
        "prod",
        "-o",
        "jsonpath={.data.user} {.metadata.labels.team} {.metadata.annotations.owner}",
    ]);
    assert_eq!(got.ok(), "YWRtaW4= payments team-a");
    let tls = s.run(&["get", "secret", "tls", "-n", "prod", "-o", "yaml"]);
    assert!(tls.ok().contains("immutable: true"), "{tls:#?}");

    // Applying again changes nothing.
    let run = s.run(&["apply", "-k", &dir_text]);
    assert_eq!(
        run.ok(),
        "secret/db-cmk849hh69 unchanged\nsecret/tls unchanged\n"
    );

    // A changed value gives the generated Secret a new name (a new object), as kustomize's
    // hash suffix is meant to.
    let copy = tempfile::tempdir().unwrap();
    for f in ["kustomization.yaml", "password.txt", "app.env"] {
        std::fs::copy(dir.join(f), copy.path().join(f)).unwrap();
    }
    std::fs::write(copy.path().join("password.txt"), "rotated").unwrap();
    let copy_text = copy.path().to_string_lossy().into_owned();
    let printed = coffer(&["kustomize", &copy_text], None, None);
    let new_name = printed
        .ok()
        .lines()
        .find_map(|l| l.strip_prefix("  name: db-"))
        .unwrap()
        .to_owned();
    assert_ne!(new_name, "cmk849hh69");
    let run = s.run(&["apply", "-k", &copy_text, "--dry-run=client"]);
    assert_eq!(
        run.ok(),
        format!("secret/db-{new_name} created (dry run)\nsecret/tls unchanged (dry run)\n")
    );
    let run = s.run(&["apply", "-k", &copy_text]);
    assert_eq!(
        run.ok(),
        format!("secret/db-{new_name} created\nsecret/tls unchanged\n")
    );
    let list = s.run(&["get", "secrets", "-n", "prod", "-o", "name"]);
    assert_eq!(
        list.ok(),
        format!("secret/db-cmk849hh69\nsecret/db-{new_name}\nsecret/tls\n")
    );
}

#[test]
fn apply_k_errors() {
    let s = Server::start();
    // A build error: nothing is applied, kustomize's message, exit 1.
    let dir = case_dir("missing-file");
    let run = s.run(&["apply", "-k", &dir.to_string_lossy()]);
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(
        run.stderr.starts_with(
            "error: loading KV pairs: file sources: [nope.txt]: evalsymlink failure on '"
        ),
        "{}",
        run.stderr
    );
    // A Secret the server rejects (kustomize does not check keys; the API server does).
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(
        bad.path().join("kustomization.yaml"),
        "secretGenerator:\n- name: s\n  literals:\n  - a*b=1\n  options:\n    disableNameSuffixHash: true\n",
    )
    .unwrap();
    let run = s.run(&["apply", "-k", &bad.path().to_string_lossy()]);
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(
        run.stderr.starts_with("The Secret \"s\" is invalid: "),
        "{}",
        run.stderr
    );
    // -f and -k together is a usage error, as in kubectl.
    let run = s.run(&["apply", "-k", "x", "-f", "y"]);
    assert_eq!(run.code, 2, "{run:#?}");
    // Neither is one too.
    let run = s.run(&["apply"]);
    assert_eq!(run.code, 2, "{run:#?}");
}
