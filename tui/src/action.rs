//! The terminal's whole vocabulary: every key press, tick, poll result and NATS event becomes
//! one [`Action`]; [`crate::state::update`] folds it into the state and answers with the
//! [`Effect`]s the runtime must carry out (API calls, a preview download, quitting).
//! Background tasks only ever post actions: they never see the state.

use std::collections::BTreeMap;

use suanli_shared::protocol::api::TasksPage;
use suanli_shared::protocol::{JobStatus, OutputFile, WorkerInfo};
use suanli_shared::regions::RegionProfile;
use suanli_shared::{ContentHash, JobId, Region, Studio, WorkerId};

use crate::api::FarmEvent;
use crate::preview::Thumb;
use crate::view::View;

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    // Operator input (see `input::map_key`).
    Up,
    Down,
    Left,
    Right,
    PageUp,
    PageDown,
    Home,
    End,
    NextView,
    PrevView,
    ShowView(View),
    /// Open the selected job.
    Enter,
    /// Close the overlay, or go back to the overview.
    Back,
    ToggleHelp,
    /// Ask to cancel the selected job (a confirmation follows).
    CancelJob,
    /// Ask to retry the selected job's failed tasks (a confirmation follows).
    RetryJob,
    /// Ask to drain the selected worker (a confirmation follows).
    DrainWorker,
    /// The answer to a confirmation: `y` or `n`.
    Confirm(bool),
    Quit,
    Resize {
        width: u16,
        height: u16,
    },

    /// The clock moved (once a second): ages, ETAs and utilization samples follow it.
    Tick {
        now_ms: u64,
    },

    // From the farm.
    /// A successful poll of the coordinator.
    Polled(Box<Snapshot>),
    /// A poll failed with the farm out of reach: show the banner, keep the last data.
    PollFailed {
        error: String,
        at_ms: u64,
    },
    /// The region catalog, or `None` when the coordinator has none to give.
    Catalog(Option<Vec<RegionProfile>>),
    /// A page of the open job's task records.
    Tasks {
        job: JobId,
        page: TasksPage,
    },
    /// A live event, stamped with the time it was received here.
    Event {
        received_ms: u64,
        event: Box<FarmEvent>,
    },
    /// The live event subscription is (back) up.
    EventsUp,
    /// The live event subscription failed; it is retried.
    EventsDown(String),
    /// An operator action succeeded.
    Done(String),
    /// An operator action or a download failed.
    Failed(String),
    /// A frame preview was downloaded and decoded (or could not be).
    Preview {
        key: ContentHash,
        name: String,
        result: Result<Thumb, String>,
    },
}

/// One poll: everything the coordinator said at `at_ms`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    pub at_ms: u64,
    pub jobs: Vec<JobStatus>,
    pub workers: Vec<WorkerInfo>,
    /// Tasks waiting in each region's queue; empty when it could not be read.
    pub depths: BTreeMap<Region, u64>,
}

/// Work the runtime does for `update`; each ends in an action.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Cancel {
        job: JobId,
        name: String,
    },
    Retry {
        job: JobId,
        name: String,
    },
    Drain {
        region: Region,
        worker: WorkerId,
    },
    /// Download a frame of a task of `studio`'s job (outputs live under the studio's prefix).
    LoadPreview {
        studio: Studio,
        key: ContentHash,
        file: OutputFile,
    },
    Quit,
}
