//! README ("Dependencies", `vendor/sled/COFFER-PATCH.md`): Coffer runs a patched sled 0.34.7
//! whose segment truncation is synchronous, because upstream's truncation on sled's threadpool
//! deadlocks every writer under sustained batch writes. The deadlock takes minutes of load to
//! show, too slow and too timing-dependent for CI, so this checks what keeps the fix in force:
//! the workspace patches sled with the vendored copy, the lock file resolves sled to it (no
//! registry source), and the patched function truncates inline rather than spawning.

use std::path::Path;

fn read(rel: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

#[test]
fn the_workspace_builds_the_patched_sled() {
    let manifest = read("Cargo.toml");
    assert!(
        manifest.contains("[patch.crates-io]")
            && manifest.contains(r#"sled = { path = "vendor/sled" }"#),
        "Cargo.toml must patch sled with vendor/sled"
    );
    let lock = read("Cargo.lock");
    let sled = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"sled\"\n"))
        .expect("sled in Cargo.lock");
    assert!(sled.contains("version = \"0.34.7\""), "{sled}");
    assert!(
        !sled.contains("source ="),
        "sled must come from vendor/sled, not a registry: {sled}"
    );
}

#[test]
fn the_patched_truncation_is_synchronous() {
    let segment = read("vendor/sled/src/pagecache/segment.rs");
    let start = segment
        .find("COFFER PATCH")
        .expect("the COFFER PATCH marker");
    // From the line after the marker (the marker's own line is a comment).
    let body = &segment[start..];
    let body = &body[body.find('\n').expect("a line after the marker")..];
    let body: String = body[..body.find("\n    }\n").expect("the function's end")]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        body.contains("config.file.set_len(at)?") && body.contains("config.file.sync_all()?"),
        "truncation inline: {body}"
    );
    assert!(
        !body.contains("spawn") && !body.contains("OneShot"),
        "no truncation job on sled's threadpool: {body}"
    );
}
