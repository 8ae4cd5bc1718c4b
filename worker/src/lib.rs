//! The worker: pulls tasks for its region, fetches inputs through the local content cache,
//! runs the renderer, uploads the outputs and commits them, and heartbeats.
//!
//! One fetch per free slot (never a prefetching stream, whose ack wait would run while a task
//! waits); while a task renders, in-progress acks every quarter of the ack wait keep it ours,
//! so a dead worker's task is redelivered within one ack wait, however long the render.
//! Only this crate spawns renderer processes.

pub mod builtin;
pub mod cache;
mod commit;
mod config;
mod control;
pub mod metrics;
pub mod policy;
mod presence;
pub mod render;
mod report;
pub mod resources;
mod run;
mod stage;
mod state;
mod task;

pub use config::Config;
pub use policy::RendererPolicy;
pub use run::run;
