//! `coffer get --revision`, `coffer history` and `coffer rollback` against a real `coffer serve`
//! (restart included).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coffer_testkit::cli as cli_support;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cli_support::Server;

fn password_at(s: &Server, revision: u64) -> String {
    let out = s
        .run(&[
            "get",
            "secret",
            "db",
            "--revision",
            &revision.to_string(),
            "-o",
            "jsonpath={.data.password}",
        ])
        .ok()
        .to_owned();
    String::from_utf8(STANDARD.decode(out.trim()).unwrap()).unwrap()
}

fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

#[test]
fn get_at_a_revision_history_and_rollback() {
    let s = Server::start();
    s.run(&[
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal=password=one",
        "--from-literal=user=u",
    ])
    .ok();
    s.run(&["create", "secret", "generic", "other", "--from-literal=k=v"])
        .ok();
    let yaml = s
        .run(&["get", "secret", "db", "-o", "yaml"])
        .ok()
        .to_owned();
    let updated = yaml.replace(&STANDARD.encode("one"), &STANDARD.encode("two"));
    s.run_stdin(&["apply", "-f", "-"], updated.as_bytes()).ok();
    s.run(&["delete", "secret", "db"]).ok();

    // Revisions (a new store is at 1, as etcd's): 2 create db, 3 create other, 4 update db,
    // 5 delete db.
    assert_eq!(password_at(&s, 2), "one");
    assert_eq!(password_at(&s, 3), "one");
    assert_eq!(password_at(&s, 4), "two");
    // Every output format reads the old version.
    let name = s
        .run(&["get", "secret", "db", "--revision", "4", "-o", "name"])
        .ok()
        .to_owned();
    assert_eq!(name.trim(), "secret/db");
    let json = s
        .run(&["get", "secret", "db", "--revision", "2", "-o", "json"])
        .ok()
        .to_owned();
    assert!(json.contains("\"resourceVersion\": \"2\""), "{json}");
    let table = s
        .run(&["get", "secrets", "--revision", "3"])
        .ok()
        .to_owned();
    assert_eq!(
        rows(&table).len(),
        3,
        "header, db and other at revision 3: {table}"
    );
    s.run(&["get", "secret", "db", "--revision", "5"])
        .fails(1, "Error from server (NotFound): secrets \"db\" not found");
    s.run(&["get", "secret", "db", "--revision", "99"])
        .fails(1, "too large resource version: 99");

    let history = s.run(&["history", "secret", "db"]).ok().to_owned();
    let table = rows(&history);
    assert_eq!(table[0], ["REVISION", "AGE", "CHANGE", "DATA-KEYS"]);
    let summary: Vec<_> = table[1..]
        .iter()
        .map(|r| (r[0].as_str(), r[2].as_str(), r[3].as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("5", "deleted", "password,user"),
            ("4", "updated", "password,user"),
            ("2", "created", "password,user"),
        ]
    );
    assert!(
        !history.contains("one") && !history.contains("two"),
        "{history}"
    );
    s.run(&["history", "secret", "nope"]).fails(1, "not found");

    // Rollback re-creates the deleted Secret from revision 2.
    let out = s
        .run(&["rollback", "secret/db", "--to-revision", "2"])
        .ok()
        .to_owned();
    assert_eq!(
        out.trim(),
        "secret/db rolled back to revision 2 (now revision 6)"
    );
    assert_eq!(password_at(&s, 6), "one");
    // And rolls an existing Secret forward to another version.
    let out = s
        .run(&["rollback", "secret", "db", "--to-revision", "4"])
        .ok()
        .to_owned();
    assert_eq!(
        out.trim(),
        "secret/db rolled back to revision 4 (now revision 7)"
    );
    assert_eq!(password_at(&s, 7), "two");
    s.run(&[
        "rollback",
        "secret",
        "db",
        "--to-revision",
        "3",
        "-n",
        "elsewhere",
    ])
    .fails(1, "secret \"db\" did not exist at revision 3");
    s.run(&["rollback", "secret", "db", "--to-revision", "0"])
        .fails(1, "--to-revision must name a revision");
}

#[test]
fn rollback_of_an_immutable_secret_is_refused_with_kubernetes_words() {
    let s = Server::start();
    s.run(&[
        "create",
        "secret",
        "generic",
        "frozen",
        "--from-literal=k=a",
    ])
    .ok();
    s.run(&["delete", "secret", "frozen"]).ok();
    s.run(&[
        "create",
        "secret",
        "generic",
        "frozen",
        "--from-literal=k=b",
        "--immutable",
    ])
    .ok();
    s.run(&["rollback", "secret", "frozen", "--to-revision", "2"])
        .fails(1, "field is immutable when `immutable` is set");
}

#[test]
fn history_survives_a_restart() {
    let s = Server::start();
    s.run(&[
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal=password=one",
    ])
    .ok();
    let yaml = s
        .run(&["get", "secret", "db", "-o", "yaml"])
        .ok()
        .to_owned();
    let updated = yaml.replace(&STANDARD.encode("one"), &STANDARD.encode("two"));
    s.run_stdin(&["apply", "-f", "-"], updated.as_bytes()).ok();
    let s = s.restart();
    assert_eq!(password_at(&s, 2), "one");
    assert_eq!(rows(s.run(&["history", "secret", "db"]).ok()).len(), 3);
}
