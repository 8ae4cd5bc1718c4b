//! The `suanli` binary's library: the CLI and its commands, what they print and how they exit,
//! the API client, job-file resolution, input gathering and upload, the local farm used by `up`, `demo`
//! and the integration tests, the demo itself, and the TUI's farm access.
//!
//! Dependencies run one way: `cli` → `commands` → {`print`, `exit`, `client`, `jobfile`,
//! `localfarm`, `demo`}; nothing points back at `cli` or `commands`.

pub mod auth;
pub mod cli;
pub mod client;
pub mod commands;
pub mod demo;
pub mod events;
pub mod exit;
pub mod hash_cache;
pub mod inputs;
pub mod jobfile;
pub mod localfarm;
pub mod print;
pub mod progress;
pub mod tui_api;
