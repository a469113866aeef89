//! `coffer apply -f FILE|DIR|-` and `coffer apply -k DIR`: create or update Secrets from
//! manifests, or from what a kustomization builds (see [`super::kustomize`]).
//!
//! For each Secret: get it; create it when missing; otherwise compare it with the manifest and
//! report `unchanged`, or replace its labels, annotations, type, data and immutability with the
//! manifest's (an unconditional update: a `resourceVersion` in the manifest is not a
//! precondition). Server-managed fields in the manifest are ignored, so `get -o yaml` output
//! applies back as `unchanged`.

use std::process::ExitCode;

use super::args::{ApplyArgs, DEFAULT_NAMESPACE, dry_run};
use super::client::ServerAddr;
use super::convert;
use super::create::read_file;
use super::error::CliError;
use super::printer::{Out, OutputFormat, render_one};
use coffer_core::model::manifest::{self, ParsedSecret};
use coffer_core::model::{DEFAULT_SECRET_TYPE, Secret};
use coffer_server::proto::v1 as pb;

/// What applying one Secret did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Created,
    Configured,
    Unchanged,
}

impl Outcome {
    fn verb(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        }
    }
}

pub(super) async fn run(server: &ServerAddr, args: ApplyArgs) -> Result<ExitCode, CliError> {
    let dry = dry_run(args.dry_run.as_deref())?;
    let secrets = match &args.kustomize {
        Some(dir) => read_kustomization(dir)?,
        None => read_manifests(&args.files)?,
    };
    if secrets.is_empty() {
        return Err(CliError::msg("no objects passed to apply"));
    }
    let mut client = server.connect().await?;
    let mut out = Out::new();
    let mut failed = false;
    for (source, parsed) in secrets {
        let mut desired = parsed.secret;
        let manifest_ns = desired.metadata.namespace.clone();
        match (&args.namespace, manifest_ns.is_empty()) {
            (Some(flag), false) if *flag != manifest_ns => {
                eprintln!(
                    "error: the namespace from the provided object {manifest_ns:?} does not match the namespace {flag:?}. You must pass '--namespace={manifest_ns}' to perform this operation."
                );
                failed = true;
                continue;
            }
            (_, false) => {}
            (Some(flag), true) => desired.metadata.namespace = flag.clone(),
            (None, true) => desired.metadata.namespace = DEFAULT_NAMESPACE.to_owned(),
        }
        let name = desired.metadata.name.clone();
        let result = apply_one(server, &mut client, desired, dry).await;
        match result {
            Ok((outcome, object)) => {
                let text = match &args.output {
                    None => {
                        let suffix = if dry { " (dry run)" } else { "" };
                        format!("secret/{name} {}{suffix}\n", outcome.verb()).into()
                    }
                    Some(OutputFormat::Name) => format!("secret/{name}\n").into(),
                    Some(f) => render_one(f, &object),
                };
                if out.print(&text).is_err() {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            Err(e) => {
                eprintln!("{e} (applying {source}, {})", parsed.location_text);
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// A parsed Secret with its location text kept after the Secret is moved out.
struct Located {
    secret: Secret,
    location_text: String,
}

/// Reads and parses every manifest; any unreadable or invalid file fails the whole apply before
/// anything is written, naming the file and document.
fn read_manifests(files: &[String]) -> Result<Vec<(String, Located)>, CliError> {
    let mut out = Vec::new();
    for f in files {
        for path in expand(f)? {
            let bytes = read_file(&path)?;
            let text = std::str::from_utf8(&bytes).map_err(|_| {
                CliError::msg(format_args!(
                    "error parsing {path}: the file is not UTF-8 text"
                ))
            })?;
            let parsed = manifest::parse_manifests(text)
                .map_err(|e| CliError::msg(format_args!("error parsing {path}: {e}")))?;
            let shown = if path == "-" {
                "standard input".to_owned()
            } else {
                path.clone()
            };
            for p in parsed {
                let location_text = p.location();
                let ParsedSecret { secret, .. } = p;
                out.push((
                    shown.clone(),
                    Located {
                        secret,
                        location_text,
                    },
                ));
            }
        }
    }
    Ok(out)
}

/// Builds a kustomization (`apply -k`), failing before anything is written.
fn read_kustomization(dir: &str) -> Result<Vec<(String, Located)>, CliError> {
    let build = super::kustomize::build(dir)?;
    for w in &build.warnings {
        eprintln!("{w}");
    }
    Ok(build
        .secrets()?
        .into_iter()
        .enumerate()
        .map(|(i, secret)| {
            (
                dir.to_owned(),
                Located {
                    secret,
                    location_text: format!("document {}", i + 1),
                },
            )
        })
        .collect())
}

/// A file, or the `.yaml`/`.yml`/`.json` files of a directory (sorted), as kubectl does.
fn expand(f: &str) -> Result<Vec<String>, CliError> {
    if f == "-" {
        return Ok(vec![f.to_owned()]);
    }
    let meta = std::fs::metadata(f).map_err(|e| CliError::file(f, &e))?;
    if !meta.is_dir() {
        return Ok(vec![f.to_owned()]);
    }
    let mut paths: Vec<String> = std::fs::read_dir(f)
        .map_err(|e| CliError::file(f, &e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|x| x.to_str())
                    .is_some_and(|x| matches!(x, "yaml" | "yml" | "json"))
        })
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    paths.sort();
    Ok(paths)
}

async fn apply_one(
    server: &ServerAddr,
    client: &mut crate::credentials::Client,
    desired: Secret,
    dry: bool,
) -> Result<(Outcome, Secret), CliError> {
    let name = desired.metadata.name.clone();
    let existing = match client
        .get(pb::GetSecretRequest {
            namespace: desired.metadata.namespace.clone(),
            name: name.clone(),
            resource_version: 0,
        })
        .await
    {
        Ok(r) => Some(convert::from_proto(r.into_inner())),
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => return Err(CliError::status(&server.display, &s, Some(&name))),
    };
    let Some(existing) = existing else {
        if dry {
            return Ok((Outcome::Created, desired));
        }
        let created = client
            .create(pb::CreateSecretRequest {
                secret: Some(convert::to_proto(&desired)),
            })
            .await
            .map_err(|s| CliError::status(&server.display, &s, Some(&name)))?
            .into_inner();
        return Ok((Outcome::Created, convert::from_proto(created)));
    };
    if same_content(&existing, &desired) {
        return Ok((Outcome::Unchanged, existing));
    }
    if dry {
        return Ok((Outcome::Configured, desired));
    }
    let mut update = desired;
    // Unconditional: the manifest's resourceVersion (already dropped) is no precondition.
    update.metadata.resource_version = 0;
    let updated = client
        .update(pb::UpdateSecretRequest {
            secret: Some(convert::to_proto(&update)),
        })
        .await
        .map_err(|s| CliError::status(&server.display, &s, Some(&name)))?
        .into_inner();
    Ok((Outcome::Configured, convert::from_proto(updated)))
}

/// Whether applying `desired` over `existing` would change nothing.
fn same_content(existing: &Secret, desired: &Secret) -> bool {
    let desired_type = if desired.type_.is_empty() {
        DEFAULT_SECRET_TYPE
    } else {
        desired.type_.as_str()
    };
    existing.type_ == desired_type
        && existing.data == desired.data
        && existing.metadata.labels == desired.metadata.labels
        && existing.metadata.annotations == desired.metadata.annotations
        && existing.immutable == desired.immutable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_detection() {
        let mut existing = Secret::new("default", "a")
            .with_type("Opaque")
            .with_data("k", "v")
            .with_label("x", "y");
        existing.metadata.resource_version = 5;
        existing.metadata.uid = "u".into();
        let desired = Secret::new("default", "a")
            .with_data("k", "v")
            .with_label("x", "y");
        assert!(same_content(&existing, &desired));
        assert!(!same_content(
            &existing,
            &desired.duplicate().with_data("k", "w")
        ));
        assert!(!same_content(
            &existing,
            &desired.duplicate().with_label("z", "1")
        ));
        assert!(!same_content(
            &existing,
            &desired.duplicate().with_type("other")
        ));
        let mut imm = desired.duplicate();
        imm.immutable = true;
        assert!(!same_content(&existing, &imm));
    }
}
