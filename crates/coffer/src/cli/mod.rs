//! The `coffer` command line: `coffer serve`, and kubectl-like client commands for Secrets
//! (`create secret generic|tls|docker-registry`, `get`, `apply -f`, `delete`, `get -w`), and the
//! offline KMS operations `coffer kms status` and `coffer migrate` (see [`kms`]), and the
//! offline integrity check `coffer verify` (see [`verify`]).
//!
//! The commands are thin: they parse flags, build a [`Secret`](coffer_core::model::Secret) or a
//! request, call the gRPC API, and print what kubectl would print. Errors are one line on stderr
//! and exit code 1; flag errors are clap's, with exit code 2.

mod apply;
mod args;
mod client;
mod convert;
mod create;
mod delete;
mod error;
mod exec;
mod get;
mod hasher;
mod history;
pub mod jsonpath;
pub mod kms;
mod kustomize;
pub mod migrate;
mod mount;
pub mod printer;
mod rollback;
mod serve;
mod tls;
pub mod verify;

use std::process::ExitCode;

use clap::Parser;

pub use self::args::{
    ApplyArgs, Cli, Command, CreateArgs, CreateCommon, CreateSecretArgs, CreateWhat,
    DEFAULT_NAMESPACE, DEFAULT_SERVER, DeleteArgs, DockerRegistryArgs, GenericArgs, GetArgs,
    HistoryArgs, KustomizeArgs, RollbackArgs, SecretFlavor, TlsArgs,
};
pub use self::client::{CredentialArgs, ServerAddr, TOKEN_ENV};
pub use self::error::CliError;
pub use self::exec::{EnvFromArg, ExecArgs};
pub use self::mount::MountArgs;

/// Runs the `coffer` command line and returns its exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    // Commands that hold keys or Secret values get serve's memory hygiene: no core dumps and
    // memory locked where the system allows it (issue 18). `exec`'s child inherits the core
    // limit of 0; its own copy of the values (its environment) is its to protect.
    if matches!(
        cli.command,
        Command::Kms(_)
            | Command::Migrate(_)
            | Command::Verify(_)
            | Command::Mount(_)
            | Command::Exec(_)
    ) {
        coffer_kms::hygiene::apply(&coffer_kms::hygiene::HygieneOptions::default());
    }
    let cli = match cli.command {
        Command::Serve(args) => return serve::serve(args).map(|()| ExitCode::SUCCESS),
        Command::Kms(args) => return offline(kms::run(args)),
        Command::Migrate(args) => return offline(migrate::run(args)),
        Command::Verify(args) => return offline(verify::run(args)),
        Command::Kustomize(args) => return print_kustomization(&args),
        command => Cli { command, ..cli },
    };
    let server = ServerAddr::parse(&cli.server)?
        .with_credentials(&cli.credentials, std::env::var(TOKEN_ENV).ok())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::msg(format_args!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(_)
            | Command::Kms(_)
            | Command::Migrate(_)
            | Command::Verify(_)
            | Command::Kustomize(_) => Ok(ExitCode::SUCCESS),
            Command::Create(args) => match args.what {
                CreateWhat::Secret(s) => self::create_cmd::run(&server, s.flavor).await,
            },
            Command::Get(args) => get::run(&server, args).await,
            Command::History(args) => history::run(&server, args).await,
            Command::Rollback(args) => rollback::run(&server, args).await,
            Command::Apply(args) => apply::run(&server, args).await,
            Command::Delete(args) => delete::run(&server, args).await,
            Command::Mount(args) => mount::run(&server, args).await,
            Command::Exec(args) => exec::run(&server, args).await,
        }
    })
}

/// `coffer kustomize DIR`: prints the build (no server involved).
fn print_kustomization(args: &KustomizeArgs) -> Result<ExitCode, CliError> {
    let build = kustomize::build(&args.dir)?;
    for w in &build.warnings {
        eprintln!("{w}");
    }
    let _ = printer::Out::new().print(&build.to_yaml());
    Ok(ExitCode::SUCCESS)
}

/// Runs a command that opens the data directory itself (no server involved).
fn offline(
    command: impl std::future::Future<Output = Result<ExitCode, CliError>>,
) -> Result<ExitCode, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::msg(format_args!("cannot start the async runtime: {e}")))?
        .block_on(command)
}

mod create_cmd {
    //! Dispatch of `create secret` flavors.

    use std::process::ExitCode;

    use super::args::{CreateCommon, DEFAULT_NAMESPACE, SecretFlavor, dry_run};
    use super::client::ServerAddr;
    use super::convert;
    use super::create;
    use super::error::CliError;
    use super::printer::{Out, OutputFormat, render_one};
    use coffer_core::model::Secret;
    use coffer_server::proto::v1 as pb;

    pub(super) async fn run(
        server: &ServerAddr,
        flavor: SecretFlavor,
    ) -> Result<ExitCode, CliError> {
        let (secret, common) = build(flavor)?;
        let dry = dry_run(common.dry_run.as_deref())?;
        let mut out = Out::new();
        if dry {
            let text = match &common.output {
                None => format!("secret/{} created (dry run)\n", secret.metadata.name).into(),
                Some(f) => render_one(f, &secret),
            };
            let _ = out.print(&text);
            return Ok(ExitCode::SUCCESS);
        }
        let mut request = secret.duplicate();
        if request.metadata.namespace.is_empty() {
            request.metadata.namespace = DEFAULT_NAMESPACE.to_owned();
        }
        let mut client = server.connect().await?;
        let created = client
            .create(pb::CreateSecretRequest {
                secret: Some(convert::to_proto(&request)),
            })
            .await
            .map_err(|s| CliError::status(&server.display, &s, Some(&secret.metadata.name)))?
            .into_inner();
        let created = convert::from_proto(created);
        let text = match &common.output {
            None => format!("secret/{} created\n", created.metadata.name).into(),
            Some(OutputFormat::Name) => format!("secret/{}\n", created.metadata.name).into(),
            Some(f) => render_one(f, &created),
        };
        let _ = out.print(&text);
        Ok(ExitCode::SUCCESS)
    }

    /// Builds the Secret a `create secret` command describes (no server involved).
    fn build(flavor: SecretFlavor) -> Result<(Secret, CreateCommon), CliError> {
        let (name, common) = match &flavor {
            SecretFlavor::Generic(a) => (a.name.clone(), &a.common),
            SecretFlavor::Tls(a) => (a.name.clone(), &a.common),
            SecretFlavor::DockerRegistry(a) => (a.name.clone(), &a.common),
        };
        // As kubectl: the namespace appears in the object only when given.
        let mut secret = Secret::new(common.namespace.clone().unwrap_or_default(), name);
        secret.metadata.labels = create::parse_labels(&common.labels)?;
        secret.immutable = common.immutable;
        let common = match flavor {
            SecretFlavor::Generic(a) => {
                // kubectl's order: files, then literals, then env files.
                for f in &a.from_file {
                    create::add_from_file(&mut secret, f)?;
                }
                for l in &a.from_literal {
                    create::add_literal(&mut secret, l)?;
                }
                for e in &a.from_env_file {
                    create::add_from_env_file(&mut secret, e)?;
                }
                secret.type_ = a.type_.unwrap_or_default();
                a.common
            }
            SecretFlavor::Tls(a) => {
                create::add_tls(&mut secret, &a.cert, &a.key)?;
                a.common
            }
            SecretFlavor::DockerRegistry(a) => {
                create::add_docker_config(
                    &mut secret,
                    &a.docker_server,
                    &a.docker_username,
                    &a.docker_password,
                    &a.docker_email,
                )?;
                a.common
            }
        };
        if common.append_hash {
            // kubectl hashes the Secret as built (name without suffix, type as given).
            let suffix = super::hasher::kubectl_secret_suffix(&secret);
            secret.metadata.name = format!("{}-{suffix}", secret.metadata.name);
        }
        Ok((secret, common))
    }
}
