//! Runs a task's renderer over one chunk of frames and says what came of it.
//!
//! This is the only place the worker starts renderers. The rest of the worker sees one call,
//! [`render`], and one result, [`RenderOutcome`]: every frame file of the chunk on disk, a
//! failure as a value (exit code, reason, the renderer's last lines), or a cancel. Renderer
//! misbehaviour (crashes, hangs, exit 0 without output, endless chatter) never panics and
//! never leaves a process behind.
//!
//! - [`process`]: one external process, run with a process group, timeout, cancel and tails;
//! - [`blender`]: Blender's command line, its render overrides and its progress lines;
//! - [`command`]: a studio's argv template, expanded without a shell;
//! - the builtin ray tracer runs in-process (below), one frame at a time on the blocking pool.

pub mod blender;
pub mod command;
pub mod process;
pub mod sandbox;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use suanli_shared::frames::FrameChunk;
use suanli_shared::protocol::{self, RendererSpec};
use tokio_util::sync::CancellationToken;

use self::process::{describe_io_error, describe_status, format_duration, Ending, RunReport};
use self::sandbox::{Confinement, Limits, SandboxSpec};

/// One render to run: a chunk of frames of one task, in folders the worker prepared.
#[derive(Debug, Clone)]
pub struct RenderJob<'a> {
    pub renderer: &'a RendererSpec,
    pub chunk: FrameChunk,
    /// Absolute path of the materialized scene file (a relative one is taken from `input_dir`).
    pub scene: Option<PathBuf>,
    /// The task's input tree; the renderer's working directory.
    pub input_dir: PathBuf,
    /// Empty folder the frames must be written into.
    pub output_dir: PathBuf,
    /// Output file name pattern, e.g. `frame_####` (a validated plain file name, one `#` run).
    pub output_pattern: &'a str,
    /// CPU threads the renderer may use (Blender's `-t`; 0 lets Blender use every core).
    pub threads: u32,
    /// Wall-clock limit for the whole chunk.
    pub timeout: Duration,
    /// How external renderers are confined, with this task's limits and work folder;
    /// `None`: they run as the worker does. (The builtin renderer runs in-process.)
    pub confinement: Option<TaskConfinement>,
    /// The GPUs this task holds, by device index; no other task of the worker uses them.
    pub gpus: Vec<u32>,
}

/// A task's confinement: the worker's, with the task's own limits and work folder (which
/// holds `input_dir`, `output_dir` and, if present, a scratch folder `tmp`).
#[derive(Debug, Clone)]
pub struct TaskConfinement {
    pub confinement: Arc<Confinement>,
    /// Within the worker's maxima.
    pub limits: Limits,
    /// The task's work folder, holding its input and output folders: in a sandbox it is the
    /// renderer's `/tmp` (writable only where the task's writable folders are).
    pub task_dir: PathBuf,
}

impl RenderJob<'_> {
    /// Every frame of the chunk with the path its file must have, in frame order.
    pub fn expected_frames(&self) -> Vec<(u32, PathBuf)> {
        let ext = self.renderer.ext();
        self.chunk
            .frames()
            .map(|f| {
                let name = protocol::output_file_name(self.output_pattern, f, ext);
                (f, self.output_dir.join(name))
            })
            .collect()
    }

    /// How a process of this render is confined: inputs read-only, outputs writable.
    /// The renderer's view of its devices: `CUDA_VISIBLE_DEVICES` (what CUDA, OptiX and most
    /// GPU renderers obey) and `SUANLI_GPUS` (for wrappers of renderers that do not), both
    /// the comma-separated indices this task holds, empty when it holds none, so a task never
    /// renders on a GPU another task holds.
    pub fn device_env(&self) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
        let list = self
            .gpus
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        vec![
            ("CUDA_VISIBLE_DEVICES".into(), list.clone().into()),
            ("SUANLI_GPUS".into(), list.into()),
        ]
    }

    fn sandbox(&self) -> Option<SandboxSpec> {
        self.confinement.as_ref().map(|c| SandboxSpec {
            confinement: c.confinement.clone(),
            limits: c.limits,
            read_only: vec![self.input_dir.clone()],
            writable: std::iter::once(self.output_dir.clone())
                .chain(Some(c.task_dir.join("tmp")).filter(|t| t.is_dir()))
                .collect(),
            task_dir: c.task_dir.clone(),
        })
    }

    /// `path` (on the worker) as the renderer sees it: the same path, or in a sandbox its place
    /// under the renderer's `/tmp`.
    pub fn seen(&self, path: &std::path::Path) -> PathBuf {
        match self.sandbox() {
            Some(sandbox) => sandbox.seen(path),
            None => path.to_path_buf(),
        }
    }

    fn scene_path(&self) -> Option<PathBuf> {
        self.scene.as_ref().map(|s| self.input_dir.join(s))
    }
}

/// The progress callback [`render`] takes: the fraction of the chunk done.
pub type ProgressFn = Arc<dyn Fn(f32) + Send + Sync>;

/// Why a render failed, as the studio will read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderFailure {
    /// The renderer's exit code; `None` when it was killed by a signal, timed out, or never ran.
    pub exit_code: Option<i32>,
    /// One lowercase sentence: what went wrong.
    pub reason: String,
    /// The renderer's last output lines (for Blender both streams, which is where its errors are).
    pub stderr_tail: String,
}

impl RenderFailure {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            exit_code: None,
            reason: reason.into(),
            stderr_tail: String::new(),
        }
    }

    fn with_tail(mut self, tail: impl Into<String>) -> Self {
        self.stderr_tail = tail.into();
        self
    }
}

/// What came of a render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderOutcome {
    /// Every frame of the chunk, in frame order, as (frame, path of the file in output_dir).
    Rendered {
        frames: Vec<(u32, PathBuf)>,
    },
    Failed(RenderFailure),
    Canceled,
}

/// What a renderer left when it ended well: its last lines, in case a frame turns out missing.
struct Finished {
    tail: String,
}

/// A renderer run that ended early: failed or canceled.
type Stop = RenderOutcome;

fn failed<T>(failure: RenderFailure) -> Result<T, Stop> {
    Err(RenderOutcome::Failed(failure))
}

/// Runs the renderer; never panics on renderer misbehaviour; a failure is a value.
/// `progress` gets the fraction done of the whole chunk (0..=1), monotone, at most about four
/// times a second, and 1.0 once every frame is on disk. When `cancel` fires, the renderer (and
/// its whole process group) is killed and [`RenderOutcome::Canceled`] returned.
pub async fn render(
    job: RenderJob<'_>,
    progress: ProgressFn,
    cancel: CancellationToken,
) -> RenderOutcome {
    if cancel.is_cancelled() {
        return RenderOutcome::Canceled;
    }
    let chunk = job.chunk;
    if chunk.step == 0 || chunk.start > chunk.end {
        return RenderOutcome::Failed(RenderFailure::new(format!(
            "invalid frame chunk {}-{} by {}",
            chunk.start, chunk.end, chunk.step
        )));
    }
    let progress = Progress::new(progress);
    let run = match job.renderer {
        RendererSpec::Builtin {
            width,
            height,
            samples,
        } => {
            let settings = crate::builtin::SceneSettings {
                width: *width,
                height: *height,
                samples: *samples,
            };
            render_builtin(&job, settings, &progress, &cancel).await
        }
        RendererSpec::Blender { .. } => blender::render(&job, &progress, &cancel).await,
        RendererSpec::Command { .. } => command::render(&job, &progress, &cancel).await,
    };
    let finished = match run {
        Ok(finished) => finished,
        Err(stop) => return stop,
    };
    let expected = job.expected_frames();
    for (frame, path) in &expected {
        if let Err(failure) = check_frame(*frame, path, &finished.tail).await {
            return RenderOutcome::Failed(failure);
        }
    }
    progress.finish();
    RenderOutcome::Rendered { frames: expected }
}

/// Checks that a renderer that ended well really wrote `frame`: a regular, non-empty file (not
/// a symlink, which could make the worker upload a file from outside the task).
async fn check_frame(frame: u32, path: &std::path::Path, tail: &str) -> Result<(), RenderFailure> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let problem = match tokio::fs::symlink_metadata(path).await {
        Err(_) => format!("renderer exited 0 but wrote no frame {frame} (expected '{name}')"),
        Ok(meta) if !meta.file_type().is_file() => {
            format!("frame {frame} ('{name}') is not a regular file")
        }
        Ok(meta) if meta.len() == 0 => {
            format!("renderer exited 0 but wrote an empty file for frame {frame} ('{name}')")
        }
        Ok(_) => return Ok(()),
    };
    Err(RenderFailure {
        exit_code: Some(0),
        reason: problem,
        stderr_tail: tail.to_string(),
    })
}

/// Turns how a renderer process ended into the next step: `Ok` after exit code 0, otherwise
/// the failure (or cancel) to return. `who` names the renderer in messages; `tail` is the
/// output to show.
fn process_result(
    who: &str,
    report: &RunReport,
    timeout: Duration,
    tail: String,
) -> Result<Finished, Stop> {
    match report.ending {
        Ending::Exited(status) if status.success() => Ok(Finished { tail }),
        Ending::Exited(status) => failed(RenderFailure {
            exit_code: status.code(),
            reason: format!("{who} {}", describe_status(status)),
            stderr_tail: tail,
        }),
        Ending::TimedOut => failed(
            RenderFailure::new(format!(
                "render timed out after {}",
                format_duration(timeout)
            ))
            .with_tail(tail),
        ),
        Ending::Canceled => Err(RenderOutcome::Canceled),
    }
}

/// Renderer kind -> version this machine can run: always `builtin`, `blender` when a working
/// Blender is on `PATH` (or at `SUANLI_BLENDER`), and `command` as `any`.
pub async fn detect_versions() -> BTreeMap<String, String> {
    let mut versions = BTreeMap::new();
    versions.insert("builtin".to_string(), protocol::BUILTIN_VERSION.to_string());
    match blender::local_version().await {
        Ok(version) => {
            versions.insert("blender".to_string(), version);
        }
        Err(reason) => tracing::debug!("no blender on this worker: {reason}"),
    }
    versions.insert("command".to_string(), "any".to_string());
    versions
}

/// Chunk progress for the caller's callback: clamped to 0..=1, monotone, and throttled to
/// about four calls a second. Cloneable and thread-safe, so the builtin renderer can report
/// from the blocking pool.
#[derive(Clone)]
pub(crate) struct Progress {
    sink: ProgressFn,
    state: Arc<Mutex<ProgressState>>,
}

struct ProgressState {
    last: f32,
    last_at: Option<Instant>,
}

/// Smallest gap between two progress calls.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

impl Progress {
    fn new(sink: ProgressFn) -> Self {
        Self {
            sink,
            state: Arc::new(Mutex::new(ProgressState {
                last: 0.0,
                last_at: None,
            })),
        }
    }

    /// Reports `fraction` of the chunk done, unless it is not ahead of the last report or the
    /// last report was too recent. Never reports 1.0: that is [`Progress::finish`]'s, once the
    /// frames are checked.
    pub(crate) fn report(&self, fraction: f32) {
        let fraction = if fraction.is_finite() {
            fraction.clamp(0.0, 0.999)
        } else {
            return;
        };
        self.send(fraction, false);
    }

    fn finish(&self) {
        self.send(1.0, true);
    }

    fn send(&self, fraction: f32, force: bool) {
        // The lock is held while calling the sink so calls from two threads stay in order.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if fraction <= state.last && state.last_at.is_some() {
            return;
        }
        let now = Instant::now();
        if !force && state.last_at.is_some_and(|t| now - t < PROGRESS_INTERVAL) {
            return;
        }
        state.last = fraction;
        state.last_at = Some(now);
        (self.sink)(fraction);
    }
}

/// The builtin ray tracer: each frame on the blocking pool, one after another, stopped through
/// an `AtomicBool` on cancel or timeout.
async fn render_builtin(
    job: &RenderJob<'_>,
    settings: crate::builtin::SceneSettings,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<Finished, Stop> {
    if crate::builtin::VERSION != protocol::BUILTIN_VERSION {
        return failed(RenderFailure::new(format!(
            "this worker's builtin renderer is {} but the task needs {}",
            crate::builtin::VERSION,
            protocol::BUILTIN_VERSION
        )));
    }
    let settings = Arc::new(settings);
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = tokio::time::Instant::now() + job.timeout;
    let expected = job.expected_frames();
    let n_frames = expected.len() as f32;
    for (frame_idx, (frame, path)) in expected.into_iter().enumerate() {
        let (settings, stop_flag, progress) = (settings.clone(), stop.clone(), progress.clone());
        let write_path = path.clone();
        let mut handle = tokio::task::spawn_blocking(move || {
            let mut on_progress =
                |f: f32| progress.report((frame_idx as f32 + f.clamp(0.0, 1.0)) / n_frames);
            let image =
                crate::builtin::render_frame(&settings, frame, &stop_flag, &mut on_progress);
            match image {
                None => Ok(false),
                Some(image) => {
                    std::fs::write(&write_path, crate::builtin::encode_png(&image)).map(|()| true)
                }
            }
        });
        let result = tokio::select! {
            result = &mut handle => result,
            _ = cancel.cancelled() => {
                stop.store(true, Ordering::Relaxed);
                let _ = handle.await;
                return Err(RenderOutcome::Canceled);
            }
            _ = tokio::time::sleep_until(deadline) => {
                stop.store(true, Ordering::Relaxed);
                let _ = handle.await;
                return failed(RenderFailure::new(format!(
                    "render timed out after {}",
                    format_duration(job.timeout)
                )));
            }
        };
        match result {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                return failed(RenderFailure::new(format!(
                    "builtin renderer stopped before finishing frame {frame}"
                )))
            }
            Ok(Err(err)) => {
                return failed(RenderFailure::new(format!(
                    "cannot write frame {frame} to '{}': {}",
                    path.display(),
                    describe_io_error(&err)
                )))
            }
            Err(join) => {
                return failed(RenderFailure::new(format!(
                    "builtin renderer crashed on frame {frame}: {join}"
                )))
            }
        }
    }
    Ok(Finished {
        tail: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_monotone_throttled_and_ends_at_one() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = {
            let seen = seen.clone();
            Arc::new(move |f: f32| seen.lock().unwrap().push(f))
        };
        let progress = Progress::new(sink);
        progress.report(0.5);
        progress.report(0.4); // behind: dropped
        progress.report(0.6); // too soon: dropped
        progress.report(f32::NAN);
        progress.report(7.0); // too soon, and would be clamped below 1
        progress.finish();
        progress.finish();
        assert_eq!(*seen.lock().unwrap(), vec![0.5, 1.0]);
    }
}
