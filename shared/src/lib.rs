//! Suanli's shared protocol crate: wire types, task hashing, validated names, NATS names and
//! set-up, the object-store layout and the storage adapter. Every type that crosses a process
//! boundary is defined here; policy (what to retry, where to place) lives in the roles.

pub mod access;
pub mod chunks;
pub mod fold;
pub mod frames;
pub mod hash;
pub mod image;
pub mod layout;
pub mod ledger;
pub mod names;
pub mod nats;
pub mod protocol;
pub mod regions;
pub mod scrape;
pub mod store;
pub mod studios;
pub mod sys;
pub mod transfer;

pub use frames::{FrameChunk, FrameSpec};
pub use hash::ContentHash;
pub use names::{JobId, Region, Studio, WorkerId};
