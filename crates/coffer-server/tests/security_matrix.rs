//! The authorization matrix through a real server: six identities (admin, namespace reader,
//! single-name reader, writer without read, an authenticated user with no rule, anonymous) x
//! every verb (get, list, list by name, watch, watch by name, create, update, delete) x three
//! namespaces, over mutual TLS and over bearer tokens. Every expected allow, deny, and
//! metadata-only answer (data stripped unless the caller holds `get`) is checked; the counts are
//! printed.

use coffer_testkit::auth as auth_support;

use auth_support::*;
use coffer_server::proto::v1 as pb;
use coffer_server::server::ListenAddr;
use tonic::Code;

const NAMESPACES: [&str; 3] = ["a", "b", "c"];

const POLICY: &str = r#"
rules:
  - groups: [admins]
    verbs: ["*"]
    namespaces: ["*"]
  - users: [reader]
    verbs: [list, watch]
    namespaces: [a, b]
  - users: [reader]
    verbs: [get]
    namespaces: [a]
  - users: [single]
    verbs: [get, list, watch, create]
    namespaces: [b]
    resourceNames: [target, new-single]
  - groups: [writers]
    verbs: [create, update, delete]
    namespaces: [a, c]
"#;

const TOKENS: &str = "tok-admin,root,1,\"admins\"\ntok-reader,reader,2\ntok-single,single,3\n\
                      tok-writer,wally,4,\"writers,other\"\ntok-nobody,nobody,5\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Admin,
    NsReader,
    NameReader,
    Writer,
    Nobody,
    Anonymous,
}

const WHO: [Who; 6] = [
    Who::Admin,
    Who::NsReader,
    Who::NameReader,
    Who::Writer,
    Who::Nobody,
    Who::Anonymous,
];

impl Who {
    fn user(self) -> &'static str {
        match self {
            Who::Admin => "root",
            Who::NsReader => "reader",
            Who::NameReader => "single",
            Who::Writer => "wally",
            Who::Nobody => "nobody",
            Who::Anonymous => "",
        }
    }
    fn groups(self) -> &'static [&'static str] {
        match self {
            Who::Admin => &["admins"],
            // rcgen keeps one value per DN attribute: one O per certificate here (the token
            // file gives this user two groups).
            Who::Writer => &["writers"],
            _ => &[],
        }
    }
    fn token(self) -> Option<&'static str> {
        match self {
            Who::Admin => Some("tok-admin"),
            Who::NsReader => Some("tok-reader"),
            Who::NameReader => Some("tok-single"),
            Who::Writer => Some("tok-writer"),
            Who::Nobody => Some("tok-nobody"),
            Who::Anonymous => None,
        }
    }
    fn slug(self) -> &'static str {
        match self {
            Who::Admin => "admin",
            Who::NsReader => "reader",
            Who::NameReader => "single",
            Who::Writer => "writer",
            Who::Nobody => "nobody",
            Who::Anonymous => "anon",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Get,
    List,
    ListName,
    Watch,
    WatchName,
    Create,
    Update,
    Delete,
}

const CHECKS: [Check; 8] = [
    Check::Get,
    Check::List,
    Check::ListName,
    Check::Watch,
    Check::WatchName,
    Check::Create,
    Check::Update,
    Check::Delete,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Allowed; whether Secret data came back.
    Allowed {
        data: bool,
    },
    Denied,
    Unauthenticated,
}

/// The expected outcome, written out from the policy above by hand.
fn expected(who: Who, check: Check, ns: &str) -> Outcome {
    use Check::*;
    use Outcome::*;
    match who {
        Who::Anonymous => Unauthenticated,
        Who::Admin => Allowed { data: true },
        Who::NsReader => match check {
            Get if ns == "a" => Allowed { data: true },
            // list/watch in b: allowed, but metadata only (no get there).
            List | ListName | Watch | WatchName if ns == "a" || ns == "b" => {
                Allowed { data: ns == "a" }
            }
            _ => Denied,
        },
        Who::NameReader => match check {
            Get | ListName | WatchName if ns == "b" => Allowed { data: true },
            // Without the exact name selector, and create (never restricted by names): denied.
            _ => Denied,
        },
        // Writes allowed, and their responses carry no data (no get).
        Who::Writer => match check {
            Create | Update | Delete if ns == "a" || ns == "c" => Allowed { data: false },
            _ => Denied,
        },
        Who::Nobody => Denied,
    }
}

/// The annotation `kubectl apply` leaves, a copy of the object with its values.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A Secret as the matrix writes it: `data` (`k`), `string_data` (`s`, merged into `data`) and
/// the last-applied annotation, which holds a copy of the values.
fn full_secret(ns: &str, name: &str, value: &[u8]) -> pb::Secret {
    let mut s = secret(ns, name, &[("k", value)]);
    s.string_data.insert("s".into(), "matrix-string".into());
    if let Some(m) = s.metadata.as_mut() {
        m.annotations.insert(
            LAST_APPLIED.into(),
            r#"{"stringData":{"s":"matrix-string"}}"#.into(),
        );
    }
    s
}

/// Whether Secret data came back; an answer without it must carry no copy of the values
/// either (no `string_data`, which is write-only, and no last-applied annotation), and one
/// with it keeps the annotation.
fn has_data(s: &pb::Secret) -> bool {
    let data = !s.data.is_empty();
    assert!(s.string_data.is_empty(), "string_data returned: {s:?}");
    let annotated = s
        .metadata
        .as_ref()
        .is_some_and(|m| m.annotations.contains_key(LAST_APPLIED));
    assert_eq!(
        annotated, data,
        "the last-applied annotation must go exactly when data does: {s:?}"
    );
    data
}

async fn run_check(
    c: &mut Client,
    who: Who,
    check: Check,
    ns: &str,
    transport: &str,
) -> Result<bool, tonic::Status> {
    let canary = b"matrix-value".as_slice();
    let by_name = "metadata.name=target".to_owned();
    match check {
        Check::Get => get(c, ns, "target").await.map(|s| has_data(&s)),
        Check::List | Check::ListName => {
            let resp = c
                .list(pb::ListSecretsRequest {
                    namespace: ns.into(),
                    field_selector: if check == Check::ListName {
                        by_name
                    } else {
                        String::new()
                    },
                    ..pb::ListSecretsRequest::default()
                })
                .await?
                .into_inner();
            assert!(!resp.items.is_empty(), "{who:?} {check:?} {ns}: no items");
            let with: Vec<bool> = resp.items.iter().map(has_data).collect();
            assert!(
                with.iter().all(|d| *d == with[0]),
                "{who:?} {check:?} {ns}: data on some items only"
            );
            Ok(with[0])
        }
        Check::Watch | Check::WatchName => {
            let ev = first_watch_event(
                c,
                pb::WatchSecretsRequest {
                    namespace: ns.into(),
                    field_selector: if check == Check::WatchName {
                        by_name
                    } else {
                        String::new()
                    },
                    send_initial_events: true,
                    ..pb::WatchSecretsRequest::default()
                },
            )
            .await?;
            assert_eq!(ev.r#type, pb::watch_event::Type::Added as i32);
            Ok(ev.object.as_ref().is_some_and(has_data))
        }
        Check::Create => {
            let name = if who == Who::NameReader {
                "new-single".to_owned()
            } else {
                format!("new-{}-{transport}", who.slug())
            };
            create(c, full_secret(ns, &name, canary))
                .await
                .map(|s| has_data(&s))
        }
        Check::Update => c
            .update(pb::UpdateSecretRequest {
                secret: Some(full_secret(ns, "target", canary)),
            })
            .await
            .map(|r| has_data(&r.into_inner())),
        Check::Delete => c
            .delete(pb::DeleteSecretRequest {
                namespace: ns.into(),
                name: format!("del-{}-{transport}", who.slug()),
                resource_version: 0,
            })
            .await
            .map(|r| r.into_inner().secret.as_ref().is_some_and(has_data)),
    }
}

/// Runs the whole matrix with clients from `connect`; returns (checks, allowed, denied).
async fn matrix(
    transport: &str,
    admin: &mut Client,
    clients: &mut [(Who, Client)],
) -> (usize, usize, usize) {
    // The objects the checks act on.
    for ns in NAMESPACES {
        let _ = create(admin, full_secret(ns, "target", b"matrix-value")).await;
        for who in WHO {
            create(
                admin,
                full_secret(ns, &format!("del-{}-{transport}", who.slug()), b"v"),
            )
            .await
            .expect("victim");
        }
    }
    let (mut total, mut allowed, mut denied) = (0, 0, 0);
    let mut wrong = Vec::new();
    for (who, c) in clients.iter_mut() {
        for ns in NAMESPACES {
            for check in CHECKS {
                let want = expected(*who, check, ns);
                let got = match run_check(c, *who, check, ns, transport).await {
                    Ok(data) => Outcome::Allowed { data },
                    Err(s) if s.code() == Code::PermissionDenied => {
                        let user = format!("User \"{}\"", who.user());
                        assert!(
                            s.message().contains(&user) && s.message().contains(ns),
                            "the denial names the user and namespace: {}",
                            s.message()
                        );
                        Outcome::Denied
                    }
                    Err(s) if s.code() == Code::Unauthenticated => Outcome::Unauthenticated,
                    Err(s) => {
                        wrong.push(format!("{who:?} {check:?} {ns}: unexpected {s:?}"));
                        continue;
                    }
                };
                total += 1;
                match got {
                    Outcome::Allowed { .. } => allowed += 1,
                    _ => denied += 1,
                }
                if got != want {
                    wrong.push(format!(
                        "{who:?} {check:?} {ns}: got {got:?}, want {want:?}"
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{transport}: {} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    (total, allowed, denied)
}

#[tokio::test]
async fn authz_matrix_over_mtls_and_tokens() {
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki::new();
    let mut args = pki.write(dir.path());
    args.token_file = Some(write_file(dir.path(), "tokens.csv", TOKENS));
    args.authz_policy = Some(write_file(dir.path(), "policy.yaml", POLICY));
    let server = TestServer::builder()
        .dir(dir.path())
        .security(args)
        .listen(vec![ListenAddr::Tcp("127.0.0.1:0".into())])
        .try_start()
        .await
        .expect("start");
    let addr = server.addr();

    // Over mutual TLS: each identity is a client certificate (CN = user, O = groups).
    let mut clients = Vec::new();
    for who in WHO {
        let pair = (who != Who::Anonymous).then(|| pki.client(who.user(), who.groups()));
        let ch = tls_channel(addr, &pki.ca_pem, pair.as_ref())
            .await
            .expect("tls");
        clients.push((who, client(ch, None)));
    }
    let mut admin = clients[0].1.clone();
    let (n, a, d) = matrix("mtls", &mut admin, &mut clients).await;
    println!("authz matrix over mTLS: {n} checks, {a} allowed, {d} denied, all as expected");
    assert_eq!(n, WHO.len() * CHECKS.len() * NAMESPACES.len());

    // Over bearer tokens (TLS without a client certificate).
    let mut clients = Vec::new();
    for who in WHO {
        let ch = tls_channel(addr, &pki.ca_pem, None).await.expect("tls");
        clients.push((who, client(ch, who.token())));
    }
    let mut admin = clients[0].1.clone();
    let (n2, a2, d2) = matrix("token", &mut admin, &mut clients).await;
    println!(
        "authz matrix over bearer tokens: {n2} checks, {a2} allowed, {d2} denied, all as expected"
    );
    assert_eq!((n2, a2, d2), (n, a, d));
    server.running.shutdown().await.expect("shutdown");
}
