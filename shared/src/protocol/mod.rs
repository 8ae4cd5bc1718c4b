//! Wire types: everything that crosses a process boundary (task messages, events, KV records,
//! API requests and replies). Only this module defines them; every role decodes them here,
//! once, at its edge. One submodule per concept; everything is re-exported here, so a type's
//! path is `suanli_shared::protocol::Name` wherever it lives.

pub mod api;
pub mod clock;
pub mod codec;
pub mod events;
pub mod manifest;
pub mod queue;
pub mod records;
pub mod renderer;
pub mod resources;
pub mod spec;
pub mod stage;
pub mod status;
pub mod task_key;

pub use clock::now_ms;
pub use codec::{decode, encode, DecodeError, EncodeError};
pub use events::{Event, EventKind, Failure, GpuUse, JobEvent, TaskEvent, TaskEventKind};
pub use manifest::{
    ChunkRef, InputEntry, InputManifest, OutputFile, OutputManifest, MAX_CHUNKS_PER_FILE,
};
pub use queue::TaskAssignment;
pub use records::{
    Blocklisted, CurrentTask, JobRecord, JobState, LeaseHolder, TaskRecord, TaskState, WorkerInfo,
    WorkerState, BLOCKLIST_AFTER,
};
pub use renderer::{
    check_arg_value, check_command_template, check_profile_name, template_arg_names, ImageFormat,
    RenderLimits, RendererSpec, ARG_PLACEHOLDER_PREFIX, BUILTIN_VERSION, COMMAND_PLACEHOLDERS,
};
pub use resources::{
    fmt_mib, parse_size_mib, valid_pool_name, Gpu, Requirements, Resources, Unmet,
};
pub use spec::{
    check_webhook_url, output_file_name, JobSpec, Placement, Policy, PolicyError, SpecError,
    MAX_JOB_WEBHOOKS,
};
pub use stage::{InputPresence, StageProgress, StageRequest};
pub use status::{
    BudgetStatus, FrameCounts, JobStatus, RegionFigures, TaskCounts, TaskFailure,
    MAX_FAILURES_SHOWN,
};
pub use task_key::task_key;
