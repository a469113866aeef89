//! Secrets as files and environment variables, kept current: the part the kubelet plays in
//! Kubernetes.
//!
//! - [`atomic_writer`]: the Kubernetes atomic-writer layout (`..data`, timestamped directories,
//!   top-level links) and its swap.
//! - [`config`]: mounts (Secret, target directory, items, modes, optional) from flags or a
//!   YAML/TOML file, and the projection of a Secret's data onto a mount's files.
//! - [`agent`]: the agent that keeps many mounts current over one WatchMany stream.
//! - [`env`]: environment variables from Secrets (`coffer exec`), with the kubelet's rules.
//! - [`fsinfo`]: whether a target is on tmpfs or ramfs.

pub mod agent;
pub mod atomic_writer;
pub mod config;
pub mod env;
pub mod fsinfo;

pub use self::agent::{Agent, AgentEvent, AgentOptions, AgentReport, Connector};
pub use self::atomic_writer::{AtomicWriter, FileProjection, Payload, WriteOutcome};
pub use self::config::{KeyToPath, MountSpec};
