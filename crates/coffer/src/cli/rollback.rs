//! `coffer rollback secret NAME --to-revision N`: writes an earlier version as the newest.
//!
//! The version at revision N gives the data, labels, annotations and type; the write is an
//! update conditioned on the current resource_version (so a concurrent change is not
//! overwritten: ABORTED, try again), or a create when the Secret has been deleted since. The
//! server's own rules apply: an immutable Secret refuses with Kubernetes' message, and so does
//! a change of type.

use std::process::ExitCode;

use super::args::{DEFAULT_NAMESPACE, RollbackArgs, one_name};
use super::client::ServerAddr;
use super::convert;
use super::error::CliError;
use super::printer::Out;
use coffer_server::proto::v1 as pb;

pub(super) async fn run(server: &ServerAddr, args: RollbackArgs) -> Result<ExitCode, CliError> {
    let name = one_name(&args.resource, args.name.as_ref())?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    if args.to_revision == 0 {
        return Err(CliError::msg("--to-revision must name a revision (N > 0)"));
    }
    let status = |s: tonic::Status| CliError::status(&server.display, &s, Some(&name));
    let mut client = server.connect().await?;
    let target = client
        .get(pb::GetSecretRequest {
            namespace: namespace.clone(),
            name: name.clone(),
            resource_version: args.to_revision,
        })
        .await
        .map_err(|s| {
            if s.code() == tonic::Code::NotFound {
                CliError::msg(format_args!(
                    "secret \"{name}\" did not exist at revision {}",
                    args.to_revision
                ))
            } else {
                status(s)
            }
        })?
        .into_inner();
    let target = convert::from_proto(target);
    let current = match client
        .get(pb::GetSecretRequest {
            namespace: namespace.clone(),
            name: name.clone(),
            resource_version: 0,
        })
        .await
    {
        Ok(r) => Some(convert::from_proto(r.into_inner())),
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => return Err(status(s)),
    };
    let written = match current {
        Some(mut current) => {
            current.data = target.data;
            current.type_ = target.type_;
            current.metadata.labels = target.metadata.labels;
            current.metadata.annotations = target.metadata.annotations;
            let request = pb::UpdateSecretRequest {
                secret: Some(convert::to_proto(&current)),
            };
            client.update(request).await.map_err(status)?.into_inner()
        }
        None => {
            let mut recreated = target;
            recreated.metadata.uid.clear();
            recreated.metadata.resource_version = 0;
            recreated.metadata.creation_timestamp = None;
            let request = pb::CreateSecretRequest {
                secret: Some(convert::to_proto(&recreated)),
            };
            client.create(request).await.map_err(status)?.into_inner()
        }
    };
    let revision = written.metadata.map_or(0, |m| m.resource_version);
    let _ = Out::new().print(&format!(
        "secret/{name} rolled back to revision {} (now revision {revision})\n",
        args.to_revision
    ));
    Ok(ExitCode::SUCCESS)
}
