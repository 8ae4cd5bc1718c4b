//! The coordinator: accepts jobs, splits them into content-hashed tasks, keeps the backlog and
//! releases tasks onto each region's queue as that region has free slots, and folds the
//! workers' events into job and task state.
//!
//! One actor owns all state (the `actor` module); API requests, task events, worker
//! heartbeats and a timer are its inputs, handled one at a time, so there are no locks. Every state change is
//! written to KV with a revision check before it is acknowledged; KV plus the durable event
//! consumer are the lasting truth, the actor's maps a mirror. The pure rules (the job index in
//! [`state`], release planning in [`dispatch`] and [`release`], region loss in
//! [`region_loss`], placement's memory in [`learned`]) do no I/O, so they are unit-tested and
//! benchmarked without NATS.

mod actor;
mod api;
pub mod budgets;
mod control;
pub mod dispatch;
mod events;
pub mod index;
mod kv;
pub mod learned;
pub mod lease;
pub mod licenses;
pub mod metrics;
pub mod placement;
pub mod recovery;
pub mod region_loss;
pub mod release;
pub mod sim;
pub mod stage;
pub mod state;
pub mod submit;
pub mod webhooks;

use std::net::SocketAddr;
use std::time::Duration;

use suanli_shared::access::Access;
use suanli_shared::regions::RegionCatalog;
use suanli_shared::studios::StudioCatalog;

pub use actor::run;

/// Coordinator settings, resolved once by the binary.
#[derive(Debug, Clone)]
pub struct Config {
    pub nats_url: String,
    /// Identity and CA on a secure farm (a coordinator identity).
    pub access: Access,
    pub store_url: String,
    /// Tasks released to a region beyond its free slots, so a worker finishing a task finds the
    /// next one already queued.
    pub prefetch: u32,
    /// A worker whose last heartbeat is older than this holds no slots.
    pub worker_lost_after: Duration,
    /// How long a silent lease holder keeps the lease before a standby takes over.
    pub lease_ttl: Duration,
    /// Prices, PUE, carbon and links of the regions; placement and the ledger use it.
    pub catalog: RegionCatalog,
    /// Each studio's contract: weight, quotas, priority ceiling, regions, budget.
    pub studios: StudioCatalog,
    /// A region with no live worker for this long loses its queued and running tasks to the
    /// other regions.
    pub region_lost_after: Duration,
    /// Where to serve Prometheus metrics (`GET /metrics`); none by default.
    pub metrics_listen: Option<SocketAddr>,
    /// Take back a restarted (or, on this host, dead) worker's tasks at once instead of
    /// waiting for the queue's ack wait (`recovery`). Off only to measure the difference.
    pub fast_recovery: bool,
    /// Where job state changes are posted (`--webhook`), and how.
    pub webhooks: webhooks::WebhookConfig,
    /// Ask the regions placement chose for a job to fetch its inputs before its tasks start
    /// (`stage`). Off only to measure the difference.
    pub prestage: bool,
}

impl Config {
    pub fn new(nats_url: impl Into<String>, store_url: impl Into<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            access: Access::none(),
            store_url: store_url.into(),
            prefetch: 1,
            worker_lost_after: Duration::from_secs(10),
            lease_ttl: Duration::from_secs(10),
            catalog: RegionCatalog::default(),
            studios: StudioCatalog::default(),
            region_lost_after: Duration::from_secs(60),
            metrics_listen: None,
            fast_recovery: true,
            webhooks: webhooks::WebhookConfig::default(),
            prestage: true,
        }
    }
}
