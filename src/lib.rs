//! The `suanli` binary's library: the CLI, the API client, job-file resolution, the local farm
//! used by `up`, `demo` and the integration tests, and the demo itself.

pub mod cli;
pub mod client;
pub mod demo;
pub mod jobfile;
pub mod localfarm;
pub mod tui_api;
