//! `coffer delete secret NAME...`, `delete secrets -l SELECTOR|--all`, `delete -f FILE`.

use std::process::ExitCode;

use super::args::{DEFAULT_NAMESPACE, DeleteArgs, parse_resource};
use super::client::ServerAddr;
use super::create::read_file;
use super::error::CliError;
use super::get::list_all;
use super::printer::Out;
use coffer_core::model::manifest;
use coffer_server::proto::v1 as pb;

pub(super) async fn run(server: &ServerAddr, args: DeleteArgs) -> Result<ExitCode, CliError> {
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    // (namespace, name) pairs to delete.
    let mut targets: Vec<(String, String)> = Vec::new();
    let by_selector = args.selector.is_some() || args.all;

    if !args.files.is_empty() {
        if args.resource.is_some() || by_selector {
            return Err(CliError::msg(
                "give either -f FILE or a resource with names or a selector, not both",
            ));
        }
        for f in &args.files {
            let bytes = read_file(f)?;
            let text = std::str::from_utf8(&bytes).map_err(|_| {
                CliError::msg(format_args!(
                    "error parsing {f}: the file is not UTF-8 text"
                ))
            })?;
            let parsed = manifest::parse_manifests(text)
                .map_err(|e| CliError::msg(format_args!("error parsing {f}: {e}")))?;
            for p in parsed {
                let m = &p.secret.metadata;
                let ns = if m.namespace.is_empty() {
                    namespace.clone()
                } else {
                    m.namespace.clone()
                };
                targets.push((ns, m.name.clone()));
            }
        }
    } else {
        let Some(resource) = &args.resource else {
            return Err(CliError::msg(
                "you must specify the type of resource to delete (secret) or -f FILE",
            ));
        };
        let mut names = Vec::new();
        if let Some(n) = parse_resource(resource)? {
            names.push(n);
        }
        names.extend(args.names.iter().cloned());
        if by_selector && !names.is_empty() {
            return Err(CliError::msg(
                "names cannot be given with --selector or --all",
            ));
        }
        if !by_selector && names.is_empty() {
            return Err(CliError::msg(
                "resource(s) were provided, but no name was specified (give names, -l SELECTOR or --all)",
            ));
        }
        targets.extend(names.into_iter().map(|n| (namespace.clone(), n)));
    }

    let mut client = server.connect().await?;
    if by_selector {
        let selector = args.selector.clone().unwrap_or_default();
        let (items, _) = list_all(server, &mut client, &namespace, &selector, "", 500, 0).await?;
        if items.is_empty() {
            eprintln!("No resources found");
            return Ok(ExitCode::SUCCESS);
        }
        targets.extend(
            items
                .into_iter()
                .map(|s| (s.metadata.namespace.clone(), s.metadata.name.clone())),
        );
    }

    let mut out = Out::new();
    let mut failed = false;
    for (ns, name) in targets {
        match client
            .delete(pb::DeleteSecretRequest {
                namespace: ns,
                name: name.clone(),
                resource_version: 0,
            })
            .await
        {
            Ok(_) => {
                if out.print(&format!("secret {name:?} deleted\n")).is_err() {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            Err(s) if s.code() == tonic::Code::NotFound && args.ignore_not_found => {}
            Err(s) => {
                eprintln!("{}", CliError::status(&server.display, &s, Some(&name)));
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
