//! The bodies of the `suanli` subcommands, one module per kind of work, each with the clap
//! arguments it takes. `cli` parses and dispatches to them; these run and return an exit code,
//! printing through [`crate::print`] and naming failures with [`crate::exit`].

pub mod events;
pub mod farm;
pub mod jobs;
pub mod local;
pub mod roles;

use std::path::Path;

use suanli_shared::regions::RegionCatalog;
use suanli_shared::studios::StudioCatalog;
use tokio_util::sync::CancellationToken;

use crate::exit::BadInput;

/// A token cancelled on Ctrl-C or SIGTERM: the shutdown signal of the long-running roles.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
        }
        t.cancel();
    });
    token
}

/// Reads a studio catalog; a bad one is the operator's input error (exit 2).
fn load_studios(path: &Path) -> anyhow::Result<StudioCatalog> {
    StudioCatalog::load(path).map_err(|e| BadInput(e.to_string()).into())
}

/// Reads a region catalog; a bad one is the operator's input error (exit 2).
fn load_catalog(path: &Path) -> anyhow::Result<RegionCatalog> {
    RegionCatalog::load(path).map_err(|e| BadInput(e.to_string()).into())
}
