//! Helpers shared by the renderer test files: a task's folders, render jobs and their expected
//! outcomes, progress checks, frames read back, and process checks. Each test file uses only
//! some of them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use suanli_shared::frames::FrameChunk;
use suanli_shared::protocol::{self, RendererSpec};
use suanli_shared::sys::pid_alive;
use suanli_worker::builtin::{self, Image};
use suanli_worker::render::{self, ProgressFn, RenderFailure, RenderJob, RenderOutcome};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// A task's folders: `input/` (the working directory) and an empty `output/`.
pub struct Dirs {
    pub tmp: TempDir,
    pub input: PathBuf,
    pub output: PathBuf,
}

pub fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().expect("temp dir");
    let input = tmp.path().join("input");
    let output = tmp.path().join("output");
    std::fs::create_dir(&input).expect("input dir");
    std::fs::create_dir(&output).expect("output dir");
    Dirs { tmp, input, output }
}

pub fn chunk(start: u32, end: u32, step: u32) -> FrameChunk {
    FrameChunk { start, end, step }
}

/// A job writing `frame_####` into `dirs`, with 2 threads and a generous timeout.
pub fn job<'a>(renderer: &'a RendererSpec, chunk: FrameChunk, dirs: &Dirs) -> RenderJob<'a> {
    RenderJob {
        renderer,
        chunk,
        scene: None,
        input_dir: dirs.input.clone(),
        output_dir: dirs.output.clone(),
        output_pattern: "frame_####",
        threads: 2,
        timeout: Duration::from_secs(120),
        confinement: None,
        gpus: Vec::new(),
    }
}

pub fn command(argv: &[&str]) -> RendererSpec {
    RendererSpec::Command {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        profile: None,
        args: Default::default(),
        version: String::new(),
        ext: "png".into(),
    }
}

/// A progress callback that records every call.
pub fn progress_log() -> (ProgressFn, Arc<Mutex<Vec<f32>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = {
        let log = log.clone();
        Arc::new(move |f: f32| log.lock().unwrap().push(f)) as ProgressFn
    };
    (sink, log)
}

pub fn no_progress() -> ProgressFn {
    Arc::new(|_| {})
}

pub fn assert_progress_completes(log: &Mutex<Vec<f32>>) {
    let log = log.lock().unwrap();
    assert_eq!(log.last(), Some(&1.0), "progress must end at 1.0: {log:?}");
    assert!(
        log.windows(2).all(|w| w[0] < w[1]),
        "progress must rise: {log:?}"
    );
    assert!(log.iter().all(|f| (0.0..=1.0).contains(f)), "{log:?}");
}

/// Runs `job` to its end, never canceled, ignoring progress.
pub async fn run(job: RenderJob<'_>) -> RenderOutcome {
    render::render(job, no_progress(), CancellationToken::new()).await
}

/// Runs `job`, expects its frames, and checks that its progress rose to exactly 1.0.
pub async fn renders_with_progress(job: RenderJob<'_>) -> Vec<(u32, PathBuf)> {
    let (sink, log) = progress_log();
    let frames = expect_rendered(render::render(job, sink, CancellationToken::new()).await);
    assert_progress_completes(&log);
    frames
}

/// Runs `job` and expects it to fail.
pub async fn fails(job: RenderJob<'_>) -> RenderFailure {
    expect_failed(run(job).await)
}

pub fn expect_rendered(outcome: RenderOutcome) -> Vec<(u32, PathBuf)> {
    match outcome {
        RenderOutcome::Rendered { frames } => frames,
        other => panic!("expected Rendered, got {other:?}"),
    }
}

pub fn expect_failed(outcome: RenderOutcome) -> RenderFailure {
    match outcome {
        RenderOutcome::Failed(failure) => failure,
        other => panic!("expected Failed, got {other:?}"),
    }
}

pub fn expected_paths(dirs: &Dirs, frames: &[u32], ext: &str) -> Vec<(u32, PathBuf)> {
    frames
        .iter()
        .map(|&f| {
            let name = protocol::output_file_name("frame_####", f, ext);
            (f, dirs.output.join(name))
        })
        .collect()
}

/// A PNG frame read back: its pixels as RGB8, and its bit depth and colour type as the file's
/// header states them (decoding to RGB8 would hide a change of format).
pub struct Frame {
    pub image: Image,
    pub format: [u8; 2],
}

pub fn read_frame(path: &Path) -> Frame {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let image = builtin::decode_png(&bytes)
        .unwrap_or_else(|e| panic!("{} is not a png: {e}", path.display()));
    // Signature (8), IHDR length (4) and type (4), width (4), height (4), then depth and type.
    assert_eq!(bytes.get(12..16), Some(&b"IHDR"[..]), "{}", path.display());
    Frame {
        image,
        format: [bytes[24], bytes[25]],
    }
}

/// Polls `cond` until it holds or `limit` passes; false on the deadline.
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `pid` is a running process. A zombie counts as gone: it runs nothing, and this
/// container's init does not reap orphans.
pub fn alive(pid: u32) -> bool {
    if !pid_alive(pid) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name: `1234 (sleep) S ...`.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
