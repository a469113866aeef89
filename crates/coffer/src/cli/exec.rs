//! `coffer exec`: runs a command with Secrets as environment variables, as the kubelet builds a
//! container's environment from `envFrom` and `secretKeyRef` (see [`crate::mount::env`]).
//!
//! `--env-from NS/NAME` entries apply in order (a later one overrides an earlier one), each with
//! the `--prefix` that follows it; `--env NAME=NS/NAME:KEY` entries override them all. Keys that
//! are not valid variable names are skipped and reported on stderr, one line per Secret, with
//! the kubelet's `InvalidEnvironmentVariableNames` text. Keys that can change what the command
//! runs (`LD_PRELOAD`, `PATH`, `BASH_ENV`, ...; [`crate::mount::env::is_unsafe_name`]) are
//! skipped from `--env-from` the same way unless `--allow-unsafe-env` is given: writing a Secret
//! must not be enough to run code as the user of `coffer exec`. The program is resolved on
//! Coffer's own `PATH` before the environment is applied. The agent's copies of the values are
//! wiped before the command replaces the process (exec); the child's own copy
//! (`/proc/<pid>/environ`) is the child's to protect.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use clap::{Arg, ArgAction, ArgMatches, FromArgMatches, value_parser};
use tonic::Code;
use zeroize::Zeroizing;

use super::client::ServerAddr;
use super::error::CliError;
use crate::mount::config::{DEFAULT_NAMESPACE, parse_secret_ref};
use crate::mount::env::{EnvSet, NameRule, is_valid_name};
use coffer_server::proto::v1 as pb;

/// One `--env-from` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvFromArg {
    /// `NAMESPACE/NAME` or `NAME`.
    pub secret: String,
    /// The prefix of its variables (the `--prefix` right after it).
    pub prefix: String,
}

/// `coffer exec` (clap is implemented by hand: a `--prefix` belongs to the `--env-from` before
/// it).
#[derive(Debug, Clone, Default)]
pub struct ExecArgs {
    /// The `--env-from` entries, in order.
    pub env_from: Vec<EnvFromArg>,
    /// The `--env NAME=NS/NAME:KEY` entries, in order.
    pub env: Vec<String>,
    /// The namespace of references without one.
    pub namespace: Option<String>,
    /// Missing Secrets and keys are skipped instead of failing.
    pub optional: bool,
    /// Accept only C-identifier names.
    pub strict_names: bool,
    /// Also set names that can change what the command runs (`LD_PRELOAD`, `PATH`, ...; see
    /// [`crate::mount::env::is_unsafe_name`]) from `--env-from`; skipped by default.
    pub allow_unsafe_env: bool,
    /// The command and its arguments.
    pub command: Vec<OsString>,
}

impl clap::Args for ExecArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.arg(
            Arg::new("env_from")
                .long("env-from")
                .value_name("NAMESPACE/NAME")
                .action(ArgAction::Append)
                .help("Every key of a Secret as a variable (repeatable; later ones override earlier ones)"),
        )
        .arg(
            Arg::new("prefix")
                .long("prefix")
                .value_name("PREFIX")
                .action(ArgAction::Append)
                .help("A prefix for the variables of the --env-from right before it"),
        )
        .arg(
            Arg::new("env")
                .long("env")
                .short('e')
                .value_name("NAME=NAMESPACE/NAME:KEY")
                .action(ArgAction::Append)
                .help("One variable from one key of a Secret (repeatable; overrides --env-from)"),
        )
        .arg(
            Arg::new("namespace")
                .long("namespace")
                .short('n')
                .value_name("NAMESPACE")
                .help("The namespace of Secret references without one [default: default]"),
        )
        .arg(
            Arg::new("optional")
                .long("optional")
                .action(ArgAction::SetTrue)
                .help("Skip missing Secrets and keys instead of failing"),
        )
        .arg(
            Arg::new("strict_names")
                .long("strict-names")
                .action(ArgAction::SetTrue)
                .help("Accept only C identifiers ([A-Za-z_][A-Za-z0-9_]*) as names"),
        )
        .arg(
            Arg::new("allow_unsafe_env")
                .long("allow-unsafe-env")
                .action(ArgAction::SetTrue)
                .help("Also set --env-from keys that can change what the command runs (LD_*, PATH, BASH_ENV, ENV, IFS, NODE_OPTIONS, PERL5OPT, PYTHON*, ...); skipped by default"),
        )
        .arg(
            Arg::new("command")
                .value_name("CMD")
                .num_args(1..)
                .last(true)
                .required(true)
                .value_parser(value_parser!(OsString))
                .help("The command to run, after --"),
        )
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for ExecArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let indexed = |id: &str| -> Vec<(usize, String)> {
            match (m.indices_of(id), m.get_many::<String>(id)) {
                (Some(i), Some(v)) => i.zip(v.cloned()).collect(),
                _ => Vec::new(),
            }
        };
        let mut env_from: Vec<(usize, EnvFromArg, bool)> = indexed("env_from")
            .into_iter()
            .map(|(i, secret)| {
                (
                    i,
                    EnvFromArg {
                        secret,
                        prefix: String::new(),
                    },
                    false,
                )
            })
            .collect();
        for (i, prefix) in indexed("prefix") {
            let Some(entry) = env_from.iter_mut().rev().find(|(j, _, _)| *j < i) else {
                return Err(clap::Error::raw(
                    clap::error::ErrorKind::ArgumentConflict,
                    "--prefix applies to the --env-from before it, and none comes before it\n",
                ));
            };
            if entry.2 {
                return Err(clap::Error::raw(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!("--env-from {} has two --prefix values\n", entry.1.secret),
                ));
            }
            entry.1.prefix = prefix;
            entry.2 = true;
        }
        Ok(Self {
            env_from: env_from.into_iter().map(|(_, e, _)| e).collect(),
            env: m
                .get_many::<String>("env")
                .map(|v| v.cloned().collect())
                .unwrap_or_default(),
            namespace: m.get_one::<String>("namespace").cloned(),
            optional: m.get_flag("optional"),
            strict_names: m.get_flag("strict_names"),
            allow_unsafe_env: m.get_flag("allow_unsafe_env"),
            command: m
                .get_many::<OsString>("command")
                .map(|v| v.cloned().collect())
                .unwrap_or_default(),
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

/// A parsed `--env NAME=NS/NAME:KEY`.
struct EnvRef {
    var: String,
    namespace: String,
    name: String,
    key: String,
}

fn parse_env(s: &str, default_ns: &str, rule: NameRule) -> Result<EnvRef, CliError> {
    let bad = || {
        CliError::msg(format_args!(
            "--env {s:?}: expected NAME=NAMESPACE/NAME:KEY or NAME=NAME:KEY"
        ))
    };
    let (var, rest) = s.split_once('=').ok_or_else(bad)?;
    let (secret, key) = rest.rsplit_once(':').ok_or_else(bad)?;
    if key.is_empty() {
        return Err(bad());
    }
    if !is_valid_name(var, rule) {
        return Err(CliError::msg(format_args!(
            "--env {s:?}: {var:?} is not a valid environment variable name"
        )));
    }
    let (namespace, name) = parse_secret_ref(secret, default_ns)
        .map_err(|e| CliError::msg(format_args!("--env: {e}")))?;
    Ok(EnvRef {
        var: var.to_owned(),
        namespace,
        name,
        key: key.to_owned(),
    })
}

/// A fetched Secret's data, wiped on drop.
type Data = BTreeMap<String, Zeroizing<Vec<u8>>>;

/// Runs `coffer exec`. Returns only when the command could not be started.
pub(super) async fn run(server: &ServerAddr, args: ExecArgs) -> Result<ExitCode, CliError> {
    let rule = if args.strict_names {
        NameRule::Strict
    } else {
        NameRule::Kubernetes
    };
    let default_ns = args.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    let sources = args
        .env_from
        .iter()
        .map(|e| {
            parse_secret_ref(&e.secret, default_ns)
                .map(|(ns, name)| (ns, name, e.prefix.clone()))
                .map_err(|err| CliError::msg(format_args!("--env-from: {err}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let refs = args
        .env
        .iter()
        .map(|e| parse_env(e, default_ns, rule))
        .collect::<Result<Vec<_>, _>>()?;
    let Some((program, program_args)) = args.command.split_first() else {
        return Err(CliError::msg("no command given (put it after --)"));
    };

    let mut env = EnvSet::new();
    {
        let mut client = None;
        let mut secrets: HashMap<(String, String), Option<Data>> = HashMap::new();
        let mut wanted: Vec<(String, String)> = sources
            .iter()
            .map(|(ns, n, _)| (ns.clone(), n.clone()))
            .collect();
        wanted.extend(refs.iter().map(|r| (r.namespace.clone(), r.name.clone())));
        for (ns, name) in wanted {
            if secrets.contains_key(&(ns.clone(), name.clone())) {
                continue;
            }
            let c = match &mut client {
                Some(c) => c,
                None => client.insert(server.connect().await?),
            };
            let got = c
                .get(pb::GetSecretRequest {
                    namespace: ns.clone(),
                    name: name.clone(),
                    resource_version: 0,
                })
                .await;
            let data = match got {
                Ok(resp) => Some(
                    resp.into_inner()
                        .data
                        .into_iter()
                        .map(|(k, v)| (k, Zeroizing::new(v)))
                        .collect::<Data>(),
                ),
                Err(s) if s.code() == Code::NotFound && args.optional => None,
                Err(s) => return Err(CliError::status(&server.display, &s, None)),
            };
            secrets.insert((ns, name), data);
        }
        for (ns, name, prefix) in &sources {
            let Some(Some(data)) = secrets.get(&(ns.clone(), name.clone())) else {
                continue;
            };
            let pairs = data.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
            for warning in
                env.add_env_from_checked(ns, name, prefix, pairs, rule, args.allow_unsafe_env)
            {
                eprintln!("warning: {warning}");
            }
        }
        for r in &refs {
            let Some(Some(data)) = secrets.get(&(r.namespace.clone(), r.name.clone())) else {
                continue;
            };
            match data.get(&r.key) {
                Some(v) => env.set(&r.var, v),
                None if args.optional => {}
                None => {
                    return Err(CliError::msg(format_args!(
                        "couldn't find key {} in Secret {}/{}",
                        r.key, r.namespace, r.name
                    )));
                }
            }
        }
        // `secrets` is dropped (wiped) here.
    }

    // The program is found on Coffer's own PATH, before the command's environment is applied:
    // a PATH from a Secret must not choose which binary runs.
    let Some(resolved) = resolve_program(program) else {
        eprintln!(
            "error: cannot run {}: no such file or directory",
            program.to_string_lossy()
        );
        return Ok(ExitCode::from(127));
    };
    let mut cmd = std::process::Command::new(resolved);
    cmd.arg0(program);
    cmd.args(program_args);
    // The command gets the Secrets it asked for, not Coffer's own credential (a Secret key
    // named COFFER_TOKEN is still set below).
    cmd.env_remove(super::TOKEN_ENV);
    for (name, value) in env.vars() {
        if value.contains(&0) {
            return Err(CliError::msg(format_args!(
                "the value of {name} contains a NUL byte and cannot be an environment variable"
            )));
        }
        cmd.env(name, OsStr::from_bytes(value));
    }
    // Our copies are wiped before the process image is replaced.
    drop(env);
    let err = cmd.exec();
    let code = if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    };
    eprintln!(
        "error: cannot run {}: {}",
        program.to_string_lossy(),
        err.to_string()
            .split(" (os error")
            .next()
            .unwrap_or_default()
            .to_lowercase()
    );
    Ok(ExitCode::from(code))
}

/// The path of `program`: itself when it names a path (holds a `/`), else the first executable
/// file of that name in the directories of this process's `PATH` (as `execvp` searches; an
/// unset `PATH` searches nothing). `None` when there is none.
fn resolve_program(program: &OsStr) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if program.as_bytes().contains(&b'/') {
        return Some(program.into());
    }
    if program.is_empty() {
        return None;
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| {
            if dir.as_os_str().is_empty() {
                std::path::PathBuf::from(".").join(program)
            } else {
                dir.join(program)
            }
        })
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
