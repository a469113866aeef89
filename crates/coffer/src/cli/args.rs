//! The command line's shape: every subcommand's flags (clap derives), the defaults, and the
//! small parsers the subcommands share. Kept apart from the dispatch in [`super`] so that the
//! subcommands depend on their flags, not on the module that runs them.

use clap::{Args, Parser, Subcommand};

use super::client::CredentialArgs;
use super::error::CliError;
use super::exec::ExecArgs;
use super::kms;
use super::migrate;
use super::mount::MountArgs;
use super::printer::{OutputFormat, parse_get_format, parse_write_format};
use coffer_server::server::ServeArgs;

/// The namespace used when none is given.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The server address used when neither `--server` nor `COFFER_SERVER` is set.
pub const DEFAULT_SERVER: &str = "127.0.0.1:7070";

/// `coffer`: an encrypted store for Kubernetes-style Secrets, and its kubectl-like client.
#[derive(Debug, Parser)]
#[command(name = "coffer", version, about, propagate_version = true)]
pub struct Cli {
    /// The Coffer server: HOST:PORT, http://HOST:PORT, https://HOST:PORT or
    /// unix:///path/to.sock; several replicas of one store separated by commas (a connection
    /// that fails moves on to the next; the mount agent resumes its watches there).
    #[arg(long, global = true, env = "COFFER_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// The credentials presented to the server.
    #[command(flatten)]
    pub credentials: CredentialArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
// Parsed once per run: the size of the `serve` flags does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the Coffer server (sled under ./coffer-data, local KEK, 127.0.0.1:7070 by default).
    Serve(ServeArgs),
    /// Create a Secret from literals, files, a TLS pair or registry credentials.
    Create(CreateArgs),
    /// Display one or many Secrets (a table by default), or watch them with -w.
    Get(GetArgs),
    /// List a Secret's kept versions, newest first (REVISION, AGE, CHANGE, DATA-KEYS).
    History(HistoryArgs),
    /// Write an earlier version of a Secret as its newest (re-creates a deleted Secret).
    Rollback(RollbackArgs),
    /// Create or update Secrets from Kubernetes manifests (YAML or JSON) or a kustomization (-k).
    Apply(ApplyArgs),
    /// Print the Secrets a kustomization directory builds, as `kubectl kustomize` does.
    Kustomize(KustomizeArgs),
    /// Delete Secrets by name, selector or manifest.
    Delete(DeleteArgs),
    /// Write Secrets into directories (the Kubernetes secret-volume layout) and keep them current.
    Mount(MountArgs),
    /// Run a command with Secrets as environment variables (`coffer exec --env-from NS/NAME -- CMD`).
    Exec(ExecArgs),
    /// KMS operations on a data directory (offline: stop the server first).
    Kms(kms::KmsArgs),
    /// Rewrite the records still under an old KEK (after a KMS key rotation), so the old KEK
    /// version can be removed (offline: stop the server first).
    Migrate(migrate::MigrateArgs),
    /// Check a data directory's integrity: record count, revision and every mismatch (offline:
    /// stop the server first). Exit code 1 on any mismatch.
    Verify(super::verify::VerifyArgs),
}

/// `coffer create ...`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The kind of object to create.
    #[command(subcommand)]
    pub what: CreateWhat,
}

/// The objects `create` makes.
#[derive(Debug, Subcommand)]
pub enum CreateWhat {
    /// Create a Secret.
    Secret(CreateSecretArgs),
}

/// `coffer create secret ...`.
#[derive(Debug, Args)]
pub struct CreateSecretArgs {
    /// The flavor of Secret.
    #[command(subcommand)]
    pub flavor: SecretFlavor,
}

/// The flavors of `create secret`, as kubectl has them.
#[derive(Debug, Subcommand)]
pub enum SecretFlavor {
    /// A Secret from local files, directories, literal values or env files.
    Generic(GenericArgs),
    /// A kubernetes.io/tls Secret from a PEM certificate and its private key.
    Tls(TlsArgs),
    /// A kubernetes.io/dockerconfigjson Secret for a container registry.
    DockerRegistry(DockerRegistryArgs),
}

/// Flags every `create secret` flavor has.
#[derive(Debug, Args)]
pub struct CreateCommon {
    /// The namespace.
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// A label KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Make the Secret immutable.
    #[arg(long)]
    pub immutable: bool,
    /// Append a hash of the Secret's content to its name (as kubectl and Kustomize do), so
    /// that a changed Secret gets a new name and the workloads using it roll.
    #[arg(long)]
    pub append_hash: bool,
    /// `client`: print the object that would be sent, without sending it.
    #[arg(long, value_name = "none|client", num_args = 0..=1, require_equals = true,
          default_missing_value = "client", value_parser = ["none", "client", "server"])]
    pub dry_run: Option<String>,
    /// Output format: yaml, json, name or jsonpath=TEMPLATE.
    #[arg(short, long, value_parser = parse_write_format)]
    pub output: Option<OutputFormat>,
}

/// `coffer create secret generic`.
#[derive(Debug, Args)]
pub struct GenericArgs {
    /// The Secret's name.
    pub name: String,
    /// KEY=VALUE: a key and its literal value (repeatable).
    #[arg(long = "from-literal", value_name = "KEY=VALUE")]
    pub from_literal: Vec<String>,
    /// [KEY=]PATH: a file's content under KEY (default: the file's name); a directory adds
    /// each regular file in it (repeatable).
    #[arg(long = "from-file", value_name = "[KEY=]PATH")]
    pub from_file: Vec<String>,
    /// A file of KEY=VALUE lines (repeatable).
    #[arg(long = "from-env-file", value_name = "PATH")]
    pub from_env_file: Vec<String>,
    /// The Secret type (default Opaque).
    #[arg(long = "type")]
    pub type_: Option<String>,
    /// Common flags.
    #[command(flatten)]
    pub common: CreateCommon,
}

/// `coffer create secret tls`.
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// The Secret's name.
    pub name: String,
    /// The PEM certificate (chain) file.
    #[arg(long, value_name = "PATH")]
    pub cert: String,
    /// The PEM private key file matching the certificate.
    #[arg(long, value_name = "PATH")]
    pub key: String,
    /// Common flags.
    #[command(flatten)]
    pub common: CreateCommon,
}

/// `coffer create secret docker-registry`.
#[derive(Debug, Args)]
pub struct DockerRegistryArgs {
    /// The Secret's name.
    pub name: String,
    /// The registry server.
    #[arg(long, default_value = "https://index.docker.io/v1/")]
    pub docker_server: String,
    /// The registry user name.
    #[arg(long)]
    pub docker_username: String,
    /// The registry password.
    #[arg(long)]
    pub docker_password: String,
    /// The registry email (optional).
    #[arg(long, default_value = "")]
    pub docker_email: String,
    /// Common flags.
    #[command(flatten)]
    pub common: CreateCommon,
}

/// `coffer get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// `secret`, `secrets` or `secret/NAME`.
    pub resource: String,
    /// Secret names (none: all of them).
    pub names: Vec<String>,
    /// The namespace.
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// List across all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Label selector, e.g. `app=web,tier!=db`.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Field selector: metadata.name, metadata.namespace, type.
    #[arg(long)]
    pub field_selector: Option<String>,
    /// Output format: wide, yaml, json, name or jsonpath=TEMPLATE.
    #[arg(short, long, value_parser = parse_get_format)]
    pub output: Option<OutputFormat>,
    /// After listing, watch for changes.
    #[arg(short, long)]
    pub watch: bool,
    /// Watch for changes without listing first.
    #[arg(long)]
    pub watch_only: bool,
    /// With --watch: print the event type (ADDED, MODIFIED, DELETED) first.
    #[arg(long)]
    pub output_watch_events: bool,
    /// Add a LABELS column.
    #[arg(long)]
    pub show_labels: bool,
    /// Do not print the header row.
    #[arg(long)]
    pub no_headers: bool,
    /// List page size.
    #[arg(long, default_value_t = 500)]
    pub chunk_size: u32,
    /// Show the Secret(s) exactly as they were at store revision N (from history; 0: latest).
    #[arg(long, value_name = "N", conflicts_with_all = ["watch", "watch_only"])]
    pub revision: Option<u64>,
}

/// `coffer history secret NAME`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// `secret` or `secret/NAME`.
    pub resource: String,
    /// The Secret's name (unless given as `secret/NAME`).
    pub name: Option<String>,
    /// The namespace.
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// At most this many versions, newest first (0: the server's cap, 1000).
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
    /// Do not print the header row.
    #[arg(long)]
    pub no_headers: bool,
}

/// `coffer rollback secret NAME --to-revision N`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// `secret` or `secret/NAME`.
    pub resource: String,
    /// The Secret's name (unless given as `secret/NAME`).
    pub name: Option<String>,
    /// The namespace.
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// The revision whose version (data, labels, annotations, type) becomes the newest.
    #[arg(long, value_name = "N")]
    pub to_revision: u64,
}

/// `coffer apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Manifest file, directory (its .yaml, .yml and .json files) or `-` for stdin (repeatable).
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE",
        required_unless_present = "kustomize",
        conflicts_with = "kustomize"
    )]
    pub files: Vec<String>,
    /// A kustomization directory: apply the Secrets `coffer kustomize DIR` prints.
    #[arg(short = 'k', long = "kustomize", value_name = "DIR")]
    pub kustomize: Option<String>,
    /// The namespace for manifests that name none.
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// `client`: report what would happen, without writing.
    #[arg(long, value_name = "none|client", num_args = 0..=1, require_equals = true,
          default_missing_value = "client", value_parser = ["none", "client", "server"])]
    pub dry_run: Option<String>,
    /// Output format: yaml, json, name or jsonpath=TEMPLATE.
    #[arg(short, long, value_parser = parse_write_format)]
    pub output: Option<OutputFormat>,
}

/// `coffer kustomize [DIR]`.
#[derive(Debug, Args)]
pub struct KustomizeArgs {
    /// The directory holding kustomization.yaml (default: the current directory).
    #[arg(default_value = ".")]
    pub dir: String,
}

/// `coffer delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// `secret`, `secrets` or `secret/NAME` (omit with -f).
    pub resource: Option<String>,
    /// Secret names.
    pub names: Vec<String>,
    /// The namespace.
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Delete the Secrets a manifest names.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub files: Vec<String>,
    /// Delete the Secrets matching this label selector.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Delete every Secret in the namespace.
    #[arg(long)]
    pub all: bool,
    /// Treat a missing Secret as deleted.
    #[arg(long)]
    pub ignore_not_found: bool,
}

/// Parses the resource argument: `secret`, `secrets` or `secret/NAME` (`secrets/NAME`).
pub(super) fn parse_resource(s: &str) -> Result<Option<String>, CliError> {
    let (kind, name) = match s.split_once('/') {
        Some((k, n)) => (k, Some(n)),
        None => (s, None),
    };
    let kind = kind.to_ascii_lowercase();
    if !matches!(
        kind.as_str(),
        "secret" | "secrets" | "secret.v1" | "secrets.v1"
    ) {
        return Err(CliError::msg(format_args!(
            "the server doesn't have a resource type {kind:?} (Coffer serves only secrets)"
        )));
    }
    match name {
        Some("") => Err(CliError::msg(format_args!(
            "arguments in resource/name form must have a single resource and name: {s:?}"
        ))),
        Some(n) => Ok(Some(n.to_owned())),
        None => Ok(None),
    }
}

/// The one Secret name a command takes as `secret NAME` or `secret/NAME`.
pub(super) fn one_name(resource: &str, name: Option<&String>) -> Result<String, CliError> {
    match (parse_resource(resource)?, name.cloned()) {
        (Some(n), None) | (None, Some(n)) => Ok(n),
        (Some(_), Some(_)) => Err(CliError::msg(
            "there is no need to specify a resource type as a separate argument when passing arguments in resource/name form",
        )),
        (None, None) => Err(CliError::msg("a Secret name is required")),
    }
}

/// Whether `--dry-run` asks for a client-side dry run (server-side is not supported).
pub(super) fn dry_run(v: Option<&str>) -> Result<bool, CliError> {
    match v {
        None | Some("none") => Ok(false),
        Some("client") => Ok(true),
        Some(_) => Err(CliError::msg(
            "--dry-run=server is not supported by Coffer; use --dry-run=client",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn resources() {
        assert_eq!(parse_resource("secrets").ok(), Some(None));
        assert_eq!(parse_resource("Secret").ok(), Some(None));
        assert_eq!(
            parse_resource("secret/db").ok(),
            Some(Some("db".to_owned()))
        );
        assert!(parse_resource("pods").is_err());
        assert!(parse_resource("secret/").is_err());
    }
}
