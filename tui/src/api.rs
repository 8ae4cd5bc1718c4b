//! What the terminal needs from the farm, as a trait. The root package implements it over the
//! typed API client (it owns `Client`, and this crate must not depend on it); tests and the
//! benchmark implement it in memory. Every call may fail or hang: the runtime wraps each one in
//! a timeout and turns failures into actions, so nothing here can block the screen.

use std::collections::BTreeMap;
use std::future::Future;

use futures::stream::BoxStream;
use suanli_shared::protocol::api::TasksPage;
use suanli_shared::protocol::{JobStatus, OutputFile, WorkerInfo};
use suanli_shared::regions::RegionProfile;
use suanli_shared::{ContentHash, JobId, Region, Studio, WorkerId};

/// Whether a failed call means the farm is out of reach (show the banner, keep retrying) or
/// that the coordinator answered and said no (show the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FarmErrorKind {
    /// NATS is down, no coordinator answered, or the call timed out.
    Unreachable,
    /// The coordinator answered with an error (unknown job, bad request, …).
    Refused,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct FarmError {
    pub kind: FarmErrorKind,
    pub message: String,
}

impl FarmError {
    pub fn unreachable(message: impl Into<String>) -> Self {
        Self {
            kind: FarmErrorKind::Unreachable,
            message: message.into(),
        }
    }

    pub fn refused(message: impl Into<String>) -> Self {
        Self {
            kind: FarmErrorKind::Refused,
            message: message.into(),
        }
    }
}

/// A live event from `SUANLI_EVENTS` subjects (read with a core subscription, not a consumer:
/// the terminal only needs what happens while it looks), decoded by the farm's one decoder
/// (`suanli_shared::nats::decode_event`).
pub use suanli_shared::protocol::Event as FarmEvent;

/// The coordinator API and stores as the terminal uses them. Reads and operator actions only:
/// the terminal never writes farm state itself.
pub trait FarmApi: Send + Sync + 'static {
    /// Every job's status (failures left out), newest first.
    fn jobs(&self) -> impl Future<Output = Result<Vec<JobStatus>, FarmError>> + Send;
    /// Every known worker, with lost ones marked `Lost`.
    fn workers(&self) -> impl Future<Output = Result<Vec<WorkerInfo>, FarmError>> + Send;
    /// One page of a job's task records.
    fn tasks(
        &self,
        job: &JobId,
        offset: u32,
        limit: u32,
    ) -> impl Future<Output = Result<TasksPage, FarmError>> + Send;
    /// The region catalog (prices, PUE). A coordinator without one answers with an error: the
    /// terminal then shows "—" for every figure that needs it.
    fn regions(&self) -> impl Future<Output = Result<Vec<RegionProfile>, FarmError>> + Send;
    /// Tasks released to each region's queue and not yet taken by a worker.
    fn queue_depths(
        &self,
        regions: &[Region],
    ) -> impl Future<Output = Result<BTreeMap<Region, u64>, FarmError>> + Send;
    fn cancel(&self, job: &JobId) -> impl Future<Output = Result<JobStatus, FarmError>> + Send;
    fn retry(&self, job: &JobId) -> impl Future<Output = Result<JobStatus, FarmError>> + Send;
    fn drain(
        &self,
        region: &Region,
        worker: &WorkerId,
    ) -> impl Future<Output = Result<WorkerInfo, FarmError>> + Send;
    /// A live stream of task and job events; it ends when the subscription is lost.
    fn events(
        &self,
    ) -> impl Future<Output = Result<BoxStream<'static, FarmEvent>, FarmError>> + Send;
    /// The bytes of one output file of a task of `studio`'s (for the frame preview). The
    /// caller checks the hash.
    fn read_output(
        &self,
        studio: &Studio,
        task_key: &ContentHash,
        file: &OutputFile,
    ) -> impl Future<Output = Result<Vec<u8>, FarmError>> + Send;
}
