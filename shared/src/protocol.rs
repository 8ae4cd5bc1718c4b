//! Wire types: everything that crosses a process boundary (task messages, events, KV records,
//! API requests and replies). Only this module defines them; every role decodes them here,
//! once, at its edge.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::frames::{FrameChunk, FrameSpec};
use crate::hash::ContentHash;
use crate::names::{validate_file_name, validate_rel_path, JobId, NameError, Region, WorkerId};

/// Version of the builtin ray tracer; part of every builtin task key. The worker's renderer
/// asserts it matches its own `VERSION`.
pub const BUILTIN_VERSION: &str = "suanli-builtin-1";

/// Milliseconds since the Unix epoch (wall clock, for records and events).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Image formats Blender may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ImageFormat {
    #[default]
    Png,
    Exr,
    Jpeg,
}

impl ImageFormat {
    pub fn ext(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Exr => "exr",
            ImageFormat::Jpeg => "jpg",
        }
    }

    /// Blender's `-F` name.
    pub fn blender_name(self) -> &'static str {
        match self {
            ImageFormat::Png => "PNG",
            ImageFormat::Exr => "OPEN_EXR",
            ImageFormat::Jpeg => "JPEG",
        }
    }
}

/// Which renderer runs a job, with every setting that changes its pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RendererSpec {
    /// The built-in deterministic ray tracer (demo and tests).
    Builtin {
        width: u32,
        height: u32,
        samples: u32,
    },
    /// Blender, headless. `version` is the exact `blender --version` of the workers that may
    /// run it; the coordinator fills it from live workers when the studio leaves it empty.
    Blender {
        #[serde(default)]
        version: String,
        #[serde(default)]
        format: ImageFormat,
        /// Override of the scene's resolution, when given.
        #[serde(default)]
        resolution: Option<[u32; 2]>,
        /// Override of the scene's Cycles sample count, when given.
        #[serde(default)]
        samples: Option<u32>,
    },
    /// Any CLI renderer from an argv template (never through a shell).
    Command {
        argv: Vec<String>,
        /// The studio's name for the renderer build: part of the task key.
        #[serde(default)]
        version: String,
        /// Extension of the frames it writes.
        #[serde(default = "default_ext")]
        ext: String,
    },
}

fn default_ext() -> String {
    "png".to_string()
}

/// Placeholders a command template may use.
pub const COMMAND_PLACEHOLDERS: &[&str] = &["frame", "start", "end", "step", "output", "scene"];

impl RendererSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            RendererSpec::Builtin { .. } => "builtin",
            RendererSpec::Blender { .. } => "blender",
            RendererSpec::Command { .. } => "command",
        }
    }

    pub fn version(&self) -> &str {
        match self {
            RendererSpec::Builtin { .. } => BUILTIN_VERSION,
            RendererSpec::Blender { version, .. } | RendererSpec::Command { version, .. } => {
                version
            }
        }
    }

    /// Extension of the files this renderer writes.
    pub fn ext(&self) -> &str {
        match self {
            RendererSpec::Builtin { .. } => "png",
            RendererSpec::Blender { format, .. } => format.ext(),
            RendererSpec::Command { ext, .. } => ext,
        }
    }

    /// Whether the renderer reads a scene file from the job's inputs.
    pub fn needs_scene(&self) -> bool {
        !matches!(self, RendererSpec::Builtin { .. })
    }

    fn validate(&self) -> Result<(), SpecError> {
        let bad = |m: String| Err(SpecError::Renderer(m));
        match self {
            RendererSpec::Builtin {
                width,
                height,
                samples,
            } => {
                if !(1..=8192).contains(width) || !(1..=8192).contains(height) {
                    return bad(format!(
                        "builtin resolution {width}x{height} is out of range (1 to 8192 each)"
                    ));
                }
                if !(1..=4096).contains(samples) {
                    return bad(format!(
                        "builtin samples {samples} out of range (1 to 4096)"
                    ));
                }
            }
            RendererSpec::Blender {
                resolution,
                samples,
                ..
            } => {
                if let Some([w, h]) = resolution {
                    if !(1..=65536).contains(w) || !(1..=65536).contains(h) {
                        return bad(format!("blender resolution {w}x{h} is out of range"));
                    }
                }
                if let Some(s) = samples {
                    if !(1..=1_000_000).contains(s) {
                        return bad(format!("blender samples {s} out of range"));
                    }
                }
            }
            RendererSpec::Command { argv, ext, .. } => {
                if argv.is_empty() || argv[0].trim().is_empty() {
                    return bad("command renderer needs a program in argv[0]".into());
                }
                for arg in argv {
                    check_template(arg).map_err(SpecError::Renderer)?;
                }
                if ext.is_empty()
                    || ext.len() > 10
                    || !ext.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    return bad(format!(
                        "output extension '{ext}' must be 1-10 letters or digits"
                    ));
                }
            }
        }
        if self.version().len() > 64 || self.version().chars().any(|c| c.is_control()) {
            return bad("renderer version must be at most 64 printable characters".into());
        }
        Ok(())
    }
}

/// Checks `{name}` / `{name:0N}` placeholders in a command template argument.
fn check_template(arg: &str) -> Result<(), String> {
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in command argument '{arg}'"))?;
        let inner = &rest[open + 1..open + close];
        let name = inner.split(':').next().unwrap_or("");
        if !COMMAND_PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder '{{{inner}}}' in command argument '{arg}' (known: {})",
                COMMAND_PLACEHOLDERS.join(", ")
            ));
        }
        if let Some(fmt) = inner.split_once(':').map(|(_, f)| f) {
            let width_ok = fmt.len() >= 2
                && fmt.starts_with('0')
                && fmt[1..].bytes().all(|b| b.is_ascii_digit())
                && fmt[1..].parse::<u32>().is_ok_and(|w| (1..=10).contains(&w));
            if !width_ok {
                return Err(format!(
                    "placeholder '{{{inner}}}' in '{arg}': the only format is zero padding like {{frame:04}}"
                ));
            }
        }
        rest = &rest[open + close + 1..];
    }
    Ok(())
}

/// How placement weighs a job's regions (the formula is in `docs/SCHEDULING.md`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Money and time weighed equally; waits for a cheaper region only while the wait costs
    /// less time than the saving is worth.
    #[default]
    Balanced,
    /// Least money: waits for the cheapest region unless the deadline is at risk.
    Cheapest,
    /// Earliest finish: every free slot is used, the fastest region first.
    Fastest,
    /// Least carbon (energy with PUE times grid intensity), unless the deadline is at risk.
    Greenest,
}

impl Policy {
    pub const ALL: [Policy; 4] = [
        Policy::Balanced,
        Policy::Cheapest,
        Policy::Fastest,
        Policy::Greenest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Balanced => "balanced",
            Policy::Cheapest => "cheapest",
            Policy::Fastest => "fastest",
            Policy::Greenest => "greenest",
        }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown policy name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown placement policy '{0}' (known: balanced, cheapest, fastest, greenest)")]
pub struct PolicyError(pub String);

impl std::str::FromStr for Policy {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        Policy::ALL
            .into_iter()
            .find(|p| p.as_str() == s.trim())
            .ok_or_else(|| PolicyError(s.to_string()))
    }
}

/// Where and how fast a job should run. None of it changes pixels, so none of it is part of
/// the task key; every field defaults, so records written before it existed still decode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// `None`: the farm's default (the region catalog's `policy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    /// When the studio needs every frame, Unix milliseconds; placement pays for speed when
    /// the estimated finish would pass it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Most tasks of this job released at once (queued or running), over all regions, so one
    /// job cannot take the whole farm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_slots: Option<u32>,
}

/// Deadlines are accepted between 2000-01-01 and 3000-01-01 (Unix ms): outside that, the
/// number is almost surely in seconds or a typo.
const DEADLINE_RANGE_MS: std::ops::Range<u64> = 946_684_800_000..32_503_680_000_000;

/// A job as submitted, after its inputs are uploaded. Every field is checked by
/// [`JobSpec::validate`] before anything is enqueued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: String,
    #[serde(default)]
    pub priority: i32,
    pub frames: FrameSpec,
    pub chunk: u32,
    /// Regions allowed to render this job; empty means any.
    #[serde(default)]
    pub regions: Vec<Region>,
    pub max_retries: u32,
    pub task_timeout_secs: u64,
    pub renderer: RendererSpec,
    /// Hash of the input manifest (`manifests/<hash>`).
    pub inputs: ContentHash,
    /// Path of the scene inside the input manifest.
    #[serde(default)]
    pub scene: Option<String>,
    /// Output file name pattern: a plain file name with one run of `#` for the frame number;
    /// the extension comes from the renderer.
    pub output: String,
    /// Policy, deadline and slot cap (flattened: `policy`, `deadline_ms`, `max_slots`).
    #[serde(flatten)]
    pub placement: Placement,
}

/// Why a job spec was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("job name must be 1-128 printable characters")]
    Name,
    #[error("{0}")]
    Chunk(#[from] crate::frames::ChunkSizeError),
    #[error("{0}")]
    Renderer(String),
    #[error("{0}")]
    BadName(#[from] NameError),
    #[error(
        "output pattern '{0}' needs exactly one run of '#' for the frame number, e.g. 'frame_####'"
    )]
    OutputPattern(String),
    #[error("renderer '{0}' needs a scene file: pass --scene FILE")]
    MissingScene(&'static str),
    #[error("max_retries {0} is out of range (0 to 100)")]
    Retries(u32),
    #[error("task timeout must be between 1 second and 7 days")]
    Timeout,
    #[error("max_slots must be at least 1 (leave it out for no cap)")]
    MaxSlots,
    #[error("deadline {0} is not a Unix time in milliseconds between the years 2000 and 3000 (seconds given by mistake?)")]
    Deadline(u64),
}

impl JobSpec {
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.name.is_empty()
            || self.name.len() > 128
            || self.name.chars().any(|c| c.is_control())
        {
            return Err(SpecError::Name);
        }
        self.frames.chunks(self.chunk)?;
        self.renderer.validate()?;
        validate_output_pattern(&self.output)?;
        match (&self.scene, self.renderer.needs_scene()) {
            (Some(scene), _) => validate_rel_path(scene)?,
            (None, true) => return Err(SpecError::MissingScene(self.renderer.kind())),
            (None, false) => {}
        }
        if self.max_retries > 100 {
            return Err(SpecError::Retries(self.max_retries));
        }
        if !(1..=7 * 24 * 3600).contains(&self.task_timeout_secs) {
            return Err(SpecError::Timeout);
        }
        if self.placement.max_slots == Some(0) {
            return Err(SpecError::MaxSlots);
        }
        if let Some(d) = self.placement.deadline_ms {
            if !DEADLINE_RANGE_MS.contains(&d) {
                return Err(SpecError::Deadline(d));
            }
        }
        Ok(())
    }

    /// The content-hashed tasks of this job, in frame order.
    pub fn tasks(&self) -> Result<Vec<(FrameChunk, ContentHash)>, SpecError> {
        Ok(self
            .frames
            .chunks(self.chunk)?
            .into_iter()
            .map(|chunk| (chunk, task_key(self, &chunk)))
            .collect())
    }
}

fn validate_output_pattern(pattern: &str) -> Result<(), SpecError> {
    validate_file_name(pattern)?;
    let runs = pattern
        .as_bytes()
        .split(|&b| b != b'#')
        .filter(|r| !r.is_empty())
        .count();
    if runs != 1 || pattern.matches('#').count() > 10 {
        return Err(SpecError::OutputPattern(pattern.to_string()));
    }
    Ok(())
}

/// The output file name of `frame`: the pattern's `#` run becomes the zero-padded frame.
pub fn output_file_name(pattern: &str, frame: u32, ext: &str) -> String {
    let width = pattern.matches('#').count();
    let start = pattern.find('#').unwrap_or(pattern.len());
    let end = start + width;
    format!(
        "{}{:0width$}{}.{ext}",
        &pattern[..start],
        frame,
        &pattern[end.min(pattern.len())..],
        width = width
    )
}

/// Task key: BLAKE3 over a canonical encoding of everything that changes a task's pixels:
/// renderer kind, version and settings, the input manifest, the scene path, the frame chunk
/// and the output naming. The job's name, priority, regions, retries and timeout are left out
/// on purpose: changing them must not re-render anything.
pub fn task_key(spec: &JobSpec, chunk: &FrameChunk) -> ContentHash {
    let mut enc = KeyEncoder::new();
    let r = &spec.renderer;
    enc.field("renderer", r.kind());
    enc.field("renderer.version", r.version());
    match r {
        RendererSpec::Builtin {
            width,
            height,
            samples,
        } => {
            enc.field("builtin.size", &format!("{width}x{height}"));
            enc.field("builtin.samples", &samples.to_string());
        }
        RendererSpec::Blender {
            format,
            resolution,
            samples,
            ..
        } => {
            enc.field("blender.format", format.blender_name());
            if let Some([w, h]) = resolution {
                enc.field("blender.resolution", &format!("{w}x{h}"));
            }
            if let Some(s) = samples {
                enc.field("blender.samples", &s.to_string());
            }
        }
        RendererSpec::Command { argv, ext, .. } => {
            enc.field("command.argc", &argv.len().to_string());
            for a in argv {
                enc.field("command.arg", a);
            }
            enc.field("command.ext", ext);
        }
    }
    enc.field("inputs", &spec.inputs.to_hex());
    enc.field("scene", spec.scene.as_deref().unwrap_or(""));
    enc.field("chunk", &chunk.to_string());
    enc.field("output", &spec.output);
    enc.finish()
}

/// Length-prefixed `name=value` fields under a versioned domain tag, so no two different field
/// lists can encode to the same bytes.
struct KeyEncoder(blake3::Hasher);

impl KeyEncoder {
    fn new() -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"suanli/task-key/v1\0");
        Self(h)
    }

    fn field(&mut self, name: &str, value: &str) {
        for part in [name.as_bytes(), value.as_bytes()] {
            self.0.update(&(part.len() as u64).to_le_bytes());
            self.0.update(part);
        }
    }

    fn finish(self) -> ContentHash {
        ContentHash::from_hasher(&self.0)
    }
}

/// The job's input files: relative path -> content. Stored at `manifests/<hash>` as compact
/// JSON with sorted keys, so equal trees have equal hashes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InputManifest {
    pub files: BTreeMap<String, InputEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputEntry {
    pub hash: ContentHash,
    pub size: u64,
    /// Unix permission bits (e.g. 0o644); only the executable bit is honoured by workers.
    pub mode: u32,
}

impl InputManifest {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn hash(&self) -> ContentHash {
        ContentHash::of(&self.to_bytes())
    }

    /// Parses and checks every path, so a hostile manifest cannot escape the task folder.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let m: Self =
            serde_json::from_slice(bytes).map_err(|e| format!("malformed input manifest: {e}"))?;
        for path in m.files.keys() {
            validate_rel_path(path).map_err(|e| e.to_string())?;
        }
        Ok(m)
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.values().map(|e| e.size).sum()
    }
}

/// One output file of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    pub frame: u32,
    pub name: String,
    pub hash: ContentHash,
    pub size: u64,
}

/// A task's output manifest at `outputs/<key>/manifest.json`, written create-if-absent after
/// every file it lists is uploaded: its existence is the task's commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputManifest {
    pub task_key: ContentHash,
    pub renderer: String,
    pub files: Vec<OutputFile>,
    /// Provenance of the run that committed (the first one wins).
    pub job: JobId,
    pub worker: WorkerId,
    pub region: Region,
    pub committed_ms: u64,
}

impl OutputManifest {
    pub fn parse(bytes: &[u8], key: &ContentHash) -> Result<Self, String> {
        let m: Self =
            serde_json::from_slice(bytes).map_err(|e| format!("malformed output manifest: {e}"))?;
        if &m.task_key != key {
            return Err(format!(
                "output manifest names task {} but was stored under {}",
                m.task_key.short(),
                key.short()
            ));
        }
        for f in &m.files {
            validate_file_name(&f.name).map_err(|e| e.to_string())?;
        }
        Ok(m)
    }
}

/// A task on the queue (`suanli.task.<region>`): everything a worker needs, no lookups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAssignment {
    pub job: JobId,
    /// Index of the task in its job.
    pub task: u32,
    pub key: ContentHash,
    pub attempt: u32,
    pub chunk: FrameChunk,
    pub renderer: RendererSpec,
    pub inputs: ContentHash,
    pub scene: Option<String>,
    pub output: String,
    pub timeout_secs: u64,
}

impl TaskAssignment {
    /// Decodes and checks a message from the queue.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let t: Self =
            serde_json::from_slice(bytes).map_err(|e| format!("malformed task message: {e}"))?;
        if !t.chunk.is_valid() {
            return Err(format!(
                "task message has an invalid frame chunk {:?}",
                t.chunk
            ));
        }
        validate_output_pattern(&t.output).map_err(|e| e.to_string())?;
        if let Some(scene) = &t.scene {
            validate_rel_path(scene).map_err(|e| e.to_string())?;
        }
        t.renderer.validate().map_err(|e| e.to_string())?;
        Ok(t)
    }
}

/// Why a task run failed, as shown to the studio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub exit_code: Option<i32>,
    pub reason: String,
    pub stderr_tail: String,
    pub worker: WorkerId,
    pub region: Region,
    pub attempt: u32,
    pub at_ms: u64,
}

/// What happened to a task run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TaskEventKind {
    Started,
    Progress {
        fraction: f32,
    },
    Completed {
        cached: bool,
        started_ms: u64,
        /// Wall seconds x render threads, for the ledger.
        core_seconds: f64,
        outputs: Vec<OutputFile>,
        /// Input bytes this run downloaded into the region (cache misses).
        bytes_in: u64,
    },
    Failed {
        failure: Failure,
    },
}

impl TaskEventKind {
    pub fn subject_token(&self) -> &'static str {
        match self {
            TaskEventKind::Started => "started",
            TaskEventKind::Progress { .. } => "progress",
            TaskEventKind::Completed { .. } => "completed",
            TaskEventKind::Failed { .. } => "failed",
        }
    }
}

/// An event about one task run, published by workers on `suanli.evt.<job>.<kind>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub job: JobId,
    pub task: u32,
    pub key: ContentHash,
    pub attempt: u32,
    pub worker: WorkerId,
    pub region: Region,
    pub at_ms: u64,
    #[serde(flatten)]
    pub kind: TaskEventKind,
}

/// A job state change, published by the coordinator on `suanli.evt.<job>.job`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    pub job: JobId,
    pub state: JobState,
    pub at_ms: u64,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    Canceled,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed | JobState::Canceled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// In the coordinator's backlog.
    Pending,
    /// Released onto a region's queue, not started yet.
    Queued,
    Running,
    Done,
    /// Done without rendering: its output was already committed.
    Cached,
    Failed,
    Canceled,
}

impl TaskState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Done | TaskState::Cached | TaskState::Failed | TaskState::Canceled
        )
    }
}

/// A job in the `suanli_jobs` bucket (key: job id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    pub spec: JobSpec,
    pub state: JobState,
    pub n_tasks: u32,
    pub created_ms: u64,
    pub finished_ms: Option<u64>,
    pub reason: Option<String>,
    /// Workers that failed this job too often; they take none of its tasks.
    #[serde(default)]
    pub blocklist: Vec<Blocklisted>,
    /// Bytes of the job's inputs (the manifest's total): what placement weighs as transfer
    /// into a region that does not hold them yet.
    #[serde(default)]
    pub input_bytes: u64,
}

/// A worker barred from one job after failing it [`BLOCKLIST_AFTER`] times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Blocklisted {
    pub region: Region,
    pub worker: WorkerId,
    pub failures: u32,
    pub at_ms: u64,
}

/// Failures of one job on one worker after which that worker is blocklisted for the job.
pub const BLOCKLIST_AFTER: u32 = 3;

/// A task in the `suanli_tasks` bucket (key: `<job>.<task index>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub job: JobId,
    pub task: u32,
    pub key: ContentHash,
    pub chunk: FrameChunk,
    pub state: TaskState,
    /// Attempt number of the current or last run (0-based).
    pub attempt: u32,
    pub region: Option<Region>,
    pub worker: Option<WorkerId>,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub core_seconds: f64,
    /// Earliest time the task may be released again (retry backoff).
    pub not_before_ms: u64,
    /// Failures so far, oldest first (the last few are kept).
    pub failures: Vec<Failure>,
    pub outputs: Vec<OutputFile>,
    /// Input bytes the successful run downloaded into its region.
    #[serde(default)]
    pub bytes_in: u64,
    /// Times this attempt was put on a queue. Part of the publish's message id, so a task
    /// withdrawn from a lost region can be published again while a publish repeated after a
    /// crash is still dropped as a duplicate.
    #[serde(default)]
    pub releases: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    Idle,
    Rendering,
    Draining,
    /// Derived by readers from an old heartbeat; never written by a worker.
    Lost,
}

/// A task a worker is rendering right now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurrentTask {
    pub job: JobId,
    pub task: u32,
    pub chunk: FrameChunk,
    pub fraction: f32,
}

/// A worker's heartbeat in the `suanli_workers` bucket (key: `<region>.<worker>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: WorkerId,
    pub region: Region,
    pub slots: u32,
    pub busy: u32,
    pub state: WorkerState,
    /// Renderer kind -> version this worker can run.
    pub renderers: BTreeMap<String, String>,
    pub host: String,
    pub pid: u32,
    pub started_ms: u64,
    pub heartbeat_ms: u64,
    pub tasks_done: u64,
    pub core_seconds: f64,
    pub current: Vec<CurrentTask>,
}

impl WorkerInfo {
    /// The state an observer should show, given how old the last heartbeat is.
    pub fn observed_state(&self, now_ms: u64, lost_after_ms: u64) -> WorkerState {
        if now_ms.saturating_sub(self.heartbeat_ms) > lost_after_ms {
            WorkerState::Lost
        } else {
            self.state
        }
    }
}

/// Counts per task state, as shown by `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskCounts {
    pub total: u32,
    pub pending: u32,
    pub queued: u32,
    pub running: u32,
    /// Tasks finished, rendered or cached.
    pub done: u32,
    pub failed: u32,
    /// Tasks finished from the cache (a subset of `done`).
    pub cached: u32,
    pub canceled: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FrameCounts {
    pub total: u32,
    /// Frames finished, rendered or cached.
    pub done: u32,
    pub failed: u32,
    pub cached: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegionFigures {
    pub frames_done: u32,
    pub core_seconds: f64,
    /// Input bytes moved from the store into the region.
    pub bytes_in: u64,
    /// Compute at the region's price per core-hour plus egress for `bytes_in`, in the
    /// catalog's currency (0 for regions the catalog does not name).
    #[serde(default)]
    pub cost: f64,
    /// Facility energy: busy core-hours x watts per core x PUE.
    #[serde(default)]
    pub energy_kwh: f64,
    #[serde(default)]
    pub carbon_kg: f64,
}

/// A failed task as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskFailure {
    pub task: u32,
    pub frames: String,
    pub state: TaskState,
    #[serde(flatten)]
    pub failure: Failure,
}

/// `suanli status JOB --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub id: JobId,
    pub name: String,
    pub state: JobState,
    pub priority: i32,
    pub renderer: String,
    pub created_ms: u64,
    pub finished_ms: Option<u64>,
    pub reason: Option<String>,
    pub frames: FrameCounts,
    pub tasks: TaskCounts,
    pub regions: BTreeMap<String, RegionFigures>,
    /// The last failure of each task that failed at least once (the first
    /// [`MAX_FAILURES_SHOWN`]; `failures_total` counts them all).
    pub failures: Vec<TaskFailure>,
    pub failures_total: u32,
    /// Workers barred from this job, and why.
    #[serde(default)]
    pub blocklist: Vec<Blocklisted>,
    /// Retries each task gets after its first attempt fails (from the spec), so a reader of
    /// events can tell a failed attempt that will be retried from a failed task.
    #[serde(default)]
    pub max_retries: u32,
}

/// How many task failures `status` lists.
pub const MAX_FAILURES_SHOWN: usize = 50;

/// Requests to the coordinator's API (`suanli.api.*`).
pub mod api {
    use super::*;

    pub const SUBMIT: &str = "suanli.api.submit";
    pub const STATUS: &str = "suanli.api.status";
    pub const JOBS: &str = "suanli.api.jobs";
    pub const JOB: &str = "suanli.api.job";
    pub const CANCEL: &str = "suanli.api.cancel";
    pub const RETRY: &str = "suanli.api.retry";
    pub const WORKERS: &str = "suanli.api.workers";
    /// A page of one job's task records, for the TUI's job view.
    pub const TASKS: &str = "suanli.api.tasks";
    /// Drain one worker: it takes no new tasks, finishes or hands back what it renders, exits.
    pub const DRAIN: &str = "suanli.api.drain";
    /// The region catalog with each region's live figures.
    pub const REGIONS: &str = "suanli.api.regions";
    /// Every API subject, for the coordinator's subscription.
    pub const ALL: &str = "suanli.api.>";

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct SubmitRequest {
        pub spec: JobSpec,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct SubmitReply {
        pub id: JobId,
        pub tasks: u32,
        pub cached: u32,
    }

    /// For status, job, cancel and retry.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct JobRequest {
        pub job: JobId,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, Default)]
    pub struct Empty {}

    /// Most task records one `tasks` reply carries (keeps replies well under NATS's 1 MiB).
    pub const MAX_TASKS_PAGE: u32 = 500;

    /// `suanli.api.tasks`: tasks `offset .. offset + limit` of a job, in task order.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct TasksRequest {
        pub job: JobId,
        #[serde(default)]
        pub offset: u32,
        /// At most [`MAX_TASKS_PAGE`]; larger values are clamped.
        pub limit: u32,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct TasksPage {
        /// Tasks in the job.
        pub total: u32,
        pub offset: u32,
        pub tasks: Vec<TaskRecord>,
    }

    /// `suanli.api.drain`: the worker's key in `suanli_workers` is `<region>.<worker>`.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct DrainRequest {
        pub region: Region,
        pub worker: WorkerId,
    }

    /// Category of an API error, so clients can pick an exit code.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum ErrorKind {
        BadRequest,
        NotFound,
        Unavailable,
        Internal,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
    #[error("{message}")]
    pub struct ApiError {
        pub kind: ErrorKind,
        pub message: String,
    }

    impl ApiError {
        pub fn bad_request(message: impl Into<String>) -> Self {
            Self {
                kind: ErrorKind::BadRequest,
                message: message.into(),
            }
        }
        pub fn not_found(message: impl Into<String>) -> Self {
            Self {
                kind: ErrorKind::NotFound,
                message: message.into(),
            }
        }
        pub fn internal(message: impl Into<String>) -> Self {
            Self {
                kind: ErrorKind::Internal,
                message: message.into(),
            }
        }
    }

    /// Every reply: `{"ok": ...}` or `{"error": {...}}`.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Reply<T> {
        Ok(T),
        Error(ApiError),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec {
            name: "shot010".into(),
            priority: 0,
            frames: "1-8".parse().unwrap(),
            chunk: 2,
            regions: vec![],
            max_retries: 2,
            task_timeout_secs: 600,
            renderer: RendererSpec::Builtin {
                width: 64,
                height: 36,
                samples: 2,
            },
            inputs: InputManifest::default().hash(),
            scene: None,
            output: "frame_####".into(),
            placement: Placement::default(),
        }
    }

    #[test]
    fn task_keys_ignore_names_and_follow_pixels() {
        let a = spec();
        let keys = |s: &JobSpec| {
            s.tasks()
                .unwrap()
                .into_iter()
                .map(|t| t.1)
                .collect::<Vec<_>>()
        };
        let base = keys(&a);
        assert_eq!(base.len(), 4);
        let mut b = a.clone();
        b.name = "renamed".into();
        b.priority = 9;
        b.max_retries = 0;
        assert_eq!(
            keys(&b),
            base,
            "name, priority and retries do not change pixels"
        );
        b.placement = Placement {
            policy: Some(Policy::Greenest),
            deadline_ms: Some(1_900_000_000_000),
            max_slots: Some(3),
        };
        assert_eq!(keys(&b), base, "placement does not change pixels");
        let mut c = a.clone();
        c.renderer = RendererSpec::Builtin {
            width: 64,
            height: 36,
            samples: 3,
        };
        assert!(keys(&c).iter().zip(&base).all(|(x, y)| x != y));
        let mut d = a.clone();
        d.frames = "1-7,8".parse().unwrap();
        assert_eq!(keys(&d), base, "same frames, same chunks, same keys");
        let mut e = a.clone();
        e.frames = "1-6,8".parse().unwrap();
        assert_eq!(keys(&e)[..3], base[..3], "unchanged chunks keep their keys");
    }

    #[test]
    fn validation_refuses_bad_specs() {
        assert!(spec().validate().is_ok());
        let mut s = spec();
        s.chunk = 0;
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("chunk size 0"));
        let mut s = spec();
        s.output = "../frame_####".into();
        assert!(s.validate().is_err());
        s.output = "frame".into();
        assert!(matches!(s.validate(), Err(SpecError::OutputPattern(_))));
        s.output = "f##_##".into();
        assert!(matches!(s.validate(), Err(SpecError::OutputPattern(_))));
        let mut s = spec();
        s.renderer = RendererSpec::Command {
            argv: vec!["render".into(), "{frames}".into()],
            version: String::new(),
            ext: "png".into(),
        };
        s.scene = Some("a.scn".into());
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("unknown placeholder"));
        s.scene = None;
        s.renderer = RendererSpec::Command {
            argv: vec!["render".into(), "{frame:04}".into()],
            version: String::new(),
            ext: "png".into(),
        };
        assert_eq!(s.validate(), Err(SpecError::MissingScene("command")));
    }

    #[test]
    fn placement_fields_default_validate_and_stay_flat() {
        let s = spec();
        let json = serde_json::to_value(&s).unwrap();
        assert!(json.get("policy").is_none() && json.get("placement").is_none());
        // A record written before placement existed still decodes.
        let old: JobSpec = serde_json::from_value(json).unwrap();
        assert_eq!(old.placement, Placement::default());
        let mut p = spec();
        p.placement = Placement {
            policy: Some(Policy::Cheapest),
            deadline_ms: Some(1_900_000_000_000),
            max_slots: Some(8),
        };
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["policy"], "cheapest");
        assert_eq!(json["deadline_ms"], 1_900_000_000_000u64);
        assert_eq!(json["max_slots"], 8);
        assert_eq!(serde_json::from_value::<JobSpec>(json).unwrap(), p);
        assert!(p.validate().is_ok());
        p.placement.max_slots = Some(0);
        assert_eq!(p.validate(), Err(SpecError::MaxSlots));
        p.placement.max_slots = None;
        p.placement.deadline_ms = Some(1_900_000_000);
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("seconds given by mistake"));
        assert_eq!("fastest".parse::<Policy>(), Ok(Policy::Fastest));
        assert!("cheap"
            .parse::<Policy>()
            .unwrap_err()
            .to_string()
            .contains("known: balanced, cheapest, fastest, greenest"));
        for policy in Policy::ALL {
            assert_eq!(policy.as_str().parse::<Policy>(), Ok(policy));
        }
    }

    #[test]
    fn output_names_pad_the_frame() {
        assert_eq!(output_file_name("frame_####", 7, "png"), "frame_0007.png");
        assert_eq!(output_file_name("s#_v2", 12345, "exr"), "s12345_v2.exr");
    }

    #[test]
    fn task_messages_are_checked_at_the_edge() {
        let s = spec();
        let (chunk, key) = s.tasks().unwrap()[0];
        let t = TaskAssignment {
            job: JobId::generate(),
            task: 0,
            key,
            attempt: 0,
            chunk,
            renderer: s.renderer.clone(),
            inputs: s.inputs,
            scene: Some("../../etc/passwd".into()),
            output: s.output.clone(),
            timeout_secs: 60,
        };
        let bytes = serde_json::to_vec(&t).unwrap();
        assert!(TaskAssignment::decode(&bytes).is_err());
        assert!(TaskAssignment::decode(b"{not json").is_err());
        let ok = TaskAssignment { scene: None, ..t };
        assert_eq!(
            TaskAssignment::decode(&serde_json::to_vec(&ok).unwrap()).unwrap(),
            ok
        );
    }

    #[test]
    fn api_replies_have_a_stable_shape() {
        let ok: api::Reply<u32> = api::Reply::Ok(3);
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#"{"ok":3}"#);
        let err: api::Reply<u32> = api::Reply::Error(api::ApiError::not_found("no job x"));
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"error":{"kind":"not_found","message":"no job x"}}"#
        );
    }
}
