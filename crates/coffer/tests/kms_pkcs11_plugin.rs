//! End to end with the `coffer-kms-pkcs11` plugin against SoftHSM2 (Debian package `softhsm2`,
//! which `.ci/run` installs): real plugin and `coffer serve` processes over real unix sockets.
//! Without SoftHSM2 the test says so and passes without running, except under
//! `COFFER_TEST_NO_SKIP=1` (set by `.ci/run`), where that is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coffer_testkit::kms as kms_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use coffer_kms::proto as kpb;
use kms_support::*;
use tonic::Code;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "1234-coffer";

/// A SoftHSM2 token in a temp dir, or `None` (with a message) when SoftHSM2 is not installed.
struct Token {
    conf: PathBuf,
    pin_file: PathBuf,
}

impl Token {
    fn new(dir: &Path) -> Option<Self> {
        if !Path::new(MODULE).exists() {
            coffer_testkit::require::skip(&format!(
                "the SoftHSM2 module {MODULE} is missing; `apt-get install -y softhsm2` \
                 (which .ci/run does) to run the PKCS#11 plugin tests"
            ));
            return None;
        }
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let out = Command::new("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                "coffer",
                "--so-pin",
                "5678-so",
                "--pin",
                PIN,
            ])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .expect("softhsm2-util (package softhsm2) must be installed with the module");
        assert!(out.status.success(), "{out:?}");
        let pin_file = dir.join("pin");
        std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
        std::fs::set_permissions(
            &pin_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        Some(Self { conf, pin_file })
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SOFTHSM2_CONF", self.conf.display().to_string()),
            (
                "COFFER_PKCS11_PIN_FILE",
                self.pin_file.display().to_string(),
            ),
            ("COFFER_PKCS11_MODULE", MODULE.to_owned()),
            ("COFFER_PKCS11_TOKEN_LABEL", "coffer".to_owned()),
        ]
    }

    fn cmd(&self, args: &[&str]) -> Run {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run(&workspace_bin("coffer-kms-pkcs11"), args, &env)
    }

    fn serve(&self, dir: &Path) -> Proc {
        let socket = dir.join("kms.sock");
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Proc::spawn(
            &workspace_bin("coffer-kms-pkcs11"),
            &[
                "serve".into(),
                "--listen".into(),
                format!("unix://{}", socket.display()),
            ],
            &env,
            &socket,
            &dir.join("plugin.log"),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs11_plugin_end_to_end_with_rotation_and_bad_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some(token) = Token::new(dir) else {
        return;
    };
    // No PIN: a clear refusal (the PIN is never a flag).
    let no_pin = run(
        &workspace_bin("coffer-kms-pkcs11"),
        &["list", "--token-label", "coffer"],
        &[("SOFTHSM2_CONF", token.conf.to_str().unwrap())],
    );
    assert_eq!(no_pin.code, 1, "{no_pin:?}");
    assert!(no_pin.stderr.contains("no PIN"), "{no_pin:?}");
    let first = token.cmd(&["rotate"]);
    assert!(first.ok().starts_with("version 1 is current"), "{first:?}");

    let plugin = token.serve(dir);
    let server = Serve::new(dir)
        .kms(&plugin.socket)
        .args(&["--kms-poll-interval", "200ms"])
        .start();
    let mut c = secrets_client(&server.socket).await;
    for i in 0..10 {
        create(&mut c, "ns", &format!("s{i}"), &format!("v{i}"))
            .await
            .unwrap();
    }
    server.stop();
    // Restart Coffer: one Decrypt in the token, everything opens.
    let server = Serve::new(dir)
        .kms(&plugin.socket)
        .args(&["--kms-poll-interval", "200ms"])
        .start();
    let mut c = secrets_client(&server.socket).await;
    for i in 0..10 {
        assert_eq!(
            get_value(&mut c, "ns", &format!("s{i}")).await.unwrap(),
            format!("v{i}")
        );
    }

    // Bad requests get clear errors from the plugin.
    let mut k = kms_client(&plugin.socket).await;
    let status = k.status(kpb::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (status.version.as_str(), status.healthz.as_str()),
        ("v2", "ok")
    );
    assert!(status.key_id.starts_with("pkcs11-"), "{status:?}");
    let wrapped = k
        .encrypt(kpb::EncryptRequest {
            plaintext: vec![5; 32],
            uid: "u".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(wrapped.key_id, status.key_id);
    let req = |ciphertext: Vec<u8>, key_id: &str| kpb::DecryptRequest {
        ciphertext,
        uid: "u".into(),
        key_id: key_id.into(),
        annotations: Default::default(),
    };
    let back = k
        .decrypt(req(wrapped.ciphertext.clone(), &wrapped.key_id))
        .await
        .unwrap();
    assert_eq!(back.into_inner().plaintext, vec![5; 32]);
    let mut tampered = wrapped.ciphertext.clone();
    tampered[14] ^= 1;
    for (r, needle) in [
        (req(vec![], &wrapped.key_id), "ciphertext is empty"),
        (
            req(vec![0; 2000], &wrapped.key_id),
            "ciphertext is 2000 bytes",
        ),
        (
            req(wrapped.ciphertext.clone(), "pkcs11-nope"),
            "unknown key_id",
        ),
        (req(tampered, &wrapped.key_id), "integrity"),
    ] {
        let e = k.decrypt(r).await.expect_err(needle);
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(needle), "{e:?}");
    }

    // Rotate in the token; Coffer picks the new key up; migrate; destroy the old key; restart.
    let second = token.cmd(&["rotate"]);
    assert!(
        second.ok().starts_with("version 2 is current"),
        "{second:?}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    create(&mut c, "ns", "after-rotation", "r").await.unwrap();
    server.stop();
    let data = dir.join("data").display().to_string();
    let kms = format!("unix://{}", plugin.socket.display());
    let migrated = coffer(&["migrate", "--data-dir", &data, "--kms", &kms]);
    assert!(
        migrated.ok().contains("rewrote 10 of 11 records"),
        "{migrated:?}"
    );
    token.cmd(&["destroy", "--version", "1"]).ok();
    let listed = token.cmd(&["list"]);
    assert_eq!(listed.ok().lines().count(), 2, "{listed:?}");
    let server = Serve::new(dir).kms(&plugin.socket).start();
    let mut c = secrets_client(&server.socket).await;
    for i in 0..10 {
        assert_eq!(
            get_value(&mut c, "ns", &format!("s{i}")).await.unwrap(),
            format!("v{i}")
        );
    }
    assert_eq!(
        get_value(&mut c, "ns", "after-rotation").await.unwrap(),
        "r"
    );
    server.stop();
}
