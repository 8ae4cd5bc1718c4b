//! What the parts of a running worker share: its connections, its settings, the tasks it is
//! rendering now and its totals. It exists so that the pull loop, the heartbeats, the control
//! listeners and each task read and change one value, and none of them owns another's state.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::{Arc, Mutex, MutexGuard};

use suanli_shared::nats::Farm;
use suanli_shared::protocol::CurrentTask;
use suanli_shared::store::Store;
use suanli_shared::JobId;
use tokio_util::sync::CancellationToken;

use crate::cache::Cache;
use crate::config::Config;
use crate::render::sandbox::Confinement;
use crate::resources::Pool;

/// A task being rendered here.
pub(crate) struct Running {
    /// Stops this render: its job was canceled, or the drain grace ran out.
    pub cancel: CancellationToken,
    pub current: CurrentTask,
    /// The render's progress as `f32` bits, written by the renderer, read by heartbeats.
    pub fraction: Arc<AtomicU32>,
}

/// The worker's state, shared by its background tasks and every task it runs.
pub(crate) struct Shared {
    pub farm: Farm,
    pub store: Store,
    pub cache: Cache,
    pub config: Config,
    /// Renderer kind to the version this machine runs, reported in the worker record.
    pub renderers: BTreeMap<String, String>,
    /// How renders are confined, resolved at start.
    pub confinement: Arc<Confinement>,
    /// Tasks rendering now, by (job, task).
    pub running: Mutex<HashMap<(JobId, u32), Running>>,
    /// Tasks completed and core-seconds spent since the worker started.
    pub totals: Mutex<(u64, f64)>,
    /// Set once shutdown began: the record says so and no new task is fetched.
    pub draining: AtomicBool,
    /// Set when the drain grace ran out: canceled renders go back to the queue.
    pub handing_back: AtomicBool,
    pub started_ms: u64,
    /// The worker's cores, memory and GPUs, and what running tasks hold of them.
    pub pool: Arc<Pool>,
    /// The Prometheus series this worker serves.
    pub metrics: Arc<crate::metrics::WorkerMetrics>,
}

/// Locks a mutex, carrying on through poisoning: every critical section here leaves its value
/// consistent, so a panic elsewhere must not stop the worker from reporting.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
