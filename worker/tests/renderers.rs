//! The renderer runners through their public API: frames on disk, failures as values, and no
//! renderer process left behind after a timeout, a cancel or a dropped future.
//!
//! The Blender tests run the real Blender (Debian's 3.4.1 here) on a tiny generated scene; a
//! machine without Blender fails them with the command that installs it.

use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use suanli_shared::frames::FrameChunk;
use suanli_shared::protocol::{self, ImageFormat, RendererSpec};
use suanli_worker::render::{self, ProgressFn, RenderFailure, RenderJob, RenderOutcome};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// A task's folders: `input/` (the working directory) and an empty `output/`.
struct Dirs {
    tmp: TempDir,
    input: PathBuf,
    output: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().expect("temp dir");
    let input = tmp.path().join("input");
    let output = tmp.path().join("output");
    std::fs::create_dir(&input).expect("input dir");
    std::fs::create_dir(&output).expect("output dir");
    Dirs { tmp, input, output }
}

fn chunk(start: u32, end: u32, step: u32) -> FrameChunk {
    FrameChunk { start, end, step }
}

fn job<'a>(renderer: &'a RendererSpec, chunk: FrameChunk, dirs: &Dirs) -> RenderJob<'a> {
    RenderJob {
        renderer,
        chunk,
        scene: None,
        input_dir: dirs.input.clone(),
        output_dir: dirs.output.clone(),
        output_pattern: "frame_####",
        threads: 2,
        timeout: Duration::from_secs(120),
    }
}

fn command(argv: &[&str]) -> RendererSpec {
    RendererSpec::Command {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        version: String::new(),
        ext: "png".into(),
    }
}

/// A progress callback that records every call.
fn progress_log() -> (ProgressFn, Arc<Mutex<Vec<f32>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = {
        let log = log.clone();
        Arc::new(move |f: f32| log.lock().unwrap().push(f)) as ProgressFn
    };
    (sink, log)
}

fn no_progress() -> ProgressFn {
    Arc::new(|_| {})
}

fn assert_progress_completes(log: &Mutex<Vec<f32>>) {
    let log = log.lock().unwrap();
    assert_eq!(log.last(), Some(&1.0), "progress must end at 1.0: {log:?}");
    assert!(
        log.windows(2).all(|w| w[0] < w[1]),
        "progress must rise: {log:?}"
    );
    assert!(log.iter().all(|f| (0.0..=1.0).contains(f)), "{log:?}");
}

fn expect_rendered(outcome: RenderOutcome) -> Vec<(u32, PathBuf)> {
    match outcome {
        RenderOutcome::Rendered { frames } => frames,
        other => panic!("expected Rendered, got {other:?}"),
    }
}

fn expect_failed(outcome: RenderOutcome) -> RenderFailure {
    match outcome {
        RenderOutcome::Failed(failure) => failure,
        other => panic!("expected Failed, got {other:?}"),
    }
}

fn expected_paths(dirs: &Dirs, frames: &[u32], ext: &str) -> Vec<(u32, PathBuf)> {
    frames
        .iter()
        .map(|&f| {
            let name = protocol::output_file_name("frame_####", f, ext);
            (f, dirs.output.join(name))
        })
        .collect()
}

/// Polls `cond` until it holds or `limit` passes; false on the deadline.
async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
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
fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
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

/// A renderer that records its own pid and a child's, then waits forever (well, 100 s).
const SLEEPER: &str = r#"sleep 100 & echo $! > "$1/child.pid"; echo $$ > "$1/leader.pid"; wait"#;

/// The pids a [`SLEEPER`] wrote, once both files are complete.
fn sleeper_pids(output: &Path) -> Option<(i32, i32)> {
    let read = |name: &str| -> Option<i32> {
        let text = std::fs::read_to_string(output.join(name)).ok()?;
        text.strip_suffix('\n')?.parse().ok()
    };
    Some((read("leader.pid")?, read("child.pid")?))
}

async fn assert_gone(pids: (i32, i32)) {
    let (leader, child) = pids;
    assert!(
        wait_until(Duration::from_secs(10), || !alive(leader) && !alive(child)).await,
        "renderer {leader} (alive: {}) or its child {child} (alive: {}) survived",
        alive(leader),
        alive(child)
    );
}

#[tokio::test]
async fn command_runs_once_per_frame_with_padded_names() {
    let dirs = dirs();
    let spec = command(&[
        "sh",
        "-c",
        r#"printf 'frame %s' "$1" > "$2""#,
        "sh",
        "{frame}",
        "{output}/frame_{frame:04}.png",
    ]);
    let (sink, log) = progress_log();
    let outcome = render::render(
        job(&spec, chunk(1, 5, 2), &dirs),
        sink,
        CancellationToken::new(),
    )
    .await;
    let frames = expect_rendered(outcome);
    assert_eq!(frames, expected_paths(&dirs, &[1, 3, 5], "png"));
    for (frame, path) in &frames {
        assert_eq!(
            std::fs::read_to_string(path).unwrap(),
            format!("frame {frame}")
        );
    }
    assert_progress_completes(&log);
}

#[tokio::test]
async fn command_arguments_arrive_literally_without_a_shell() {
    let dirs = dirs();
    let scene = dirs.input.join("shot.scn");
    std::fs::write(&scene, "scene").unwrap();
    let pwned = dirs.tmp.path().join("pwned");
    let injection = format!("x; touch {}", pwned.display());
    // The program writes its working directory and argv as JSON, then the chunk's frames.
    let script = "import sys, json, os\n\
                  out = sys.argv[1]\n\
                  open(os.path.join(out, 'argv.json'), 'w').write(json.dumps([os.getcwd()] + sys.argv[1:]))\n\
                  for f in range(int(sys.argv[2]), int(sys.argv[3]) + 1, int(sys.argv[4])):\n    \
                      open(os.path.join(out, 'frame_%04d.png' % f), 'w').write('x')\n";
    let spec = command(&[
        "python3",
        "-c",
        script,
        "{output}",
        "{start}",
        "{end}",
        "{step}",
        "s{start:05}e{end:03}",
        &injection,
        "$(id) `id` 'q' \"dq\" * ~ a b",
        "--scene={scene}",
        "",
    ]);
    let mut job = job(&spec, chunk(3, 9, 3), &dirs);
    job.scene = Some(scene.clone());
    let (sink, log) = progress_log();
    let frames = expect_rendered(render::render(job, sink, CancellationToken::new()).await);
    assert_eq!(frames, expected_paths(&dirs, &[3, 6, 9], "png"));
    assert_progress_completes(&log);

    let argv: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(dirs.output.join("argv.json")).unwrap())
            .unwrap();
    let output = dirs.output.display().to_string();
    let expected = [
        dirs.input.display().to_string(),
        output,
        "3".into(),
        "9".into(),
        "3".into(),
        "s00003e009".into(),
        injection.clone(),
        "$(id) `id` 'q' \"dq\" * ~ a b".into(),
        format!("--scene={}", scene.display()),
        String::new(),
    ];
    assert_eq!(argv, expected);
    assert!(!pwned.exists(), "an argument was run by a shell");
}

#[tokio::test]
async fn nonzero_exit_fails_with_the_code_and_the_stderr_tail() {
    let dirs = dirs();
    let spec = command(&[
        "sh",
        "-c",
        r#"echo on-stdout; i=1; while [ $i -le 50 ]; do echo "err line $i" >&2; i=$((i+1)); done; exit 3"#,
    ]);
    let failure = expect_failed(
        render::render(
            job(&spec, chunk(1, 1, 1), &dirs),
            no_progress(),
            CancellationToken::new(),
        )
        .await,
    );
    assert_eq!(failure.exit_code, Some(3));
    assert_eq!(failure.reason, "'sh' exited with code 3");
    let lines: Vec<&str> = failure.stderr_tail.lines().collect();
    assert_eq!(lines.len(), 20, "{}", failure.stderr_tail);
    assert_eq!(lines.first(), Some(&"err line 31"));
    assert_eq!(lines.last(), Some(&"err line 50"));
    assert!(!failure.stderr_tail.contains("on-stdout"));
}

#[tokio::test]
async fn a_signal_is_named_in_the_reason() {
    let dirs = dirs();
    let spec = command(&["sh", "-c", "kill -9 $$"]);
    let failure = expect_failed(
        render::render(
            job(&spec, chunk(1, 1, 1), &dirs),
            no_progress(),
            CancellationToken::new(),
        )
        .await,
    );
    assert_eq!(failure.exit_code, None);
    assert_eq!(
        failure.reason, "'sh' was killed by signal 9 (SIGKILL)",
        "{failure:?}"
    );
}

#[tokio::test]
async fn exit_zero_without_every_frame_fails_naming_the_first_missing() {
    let dirs = dirs();
    let spec = command(&[
        "sh",
        "-c",
        r#"echo x > "$1/frame_0001.png"; echo x > "$1/frame_0004.png"; echo 'wrote some' >&2"#,
        "sh",
        "{output}",
    ]);
    let failure = expect_failed(
        render::render(
            job(&spec, chunk(1, 4, 1), &dirs),
            no_progress(),
            CancellationToken::new(),
        )
        .await,
    );
    assert_eq!(failure.exit_code, Some(0));
    assert!(
        failure
            .reason
            .starts_with("renderer exited 0 but wrote no frame 2 "),
        "{failure:?}"
    );
    assert!(failure.reason.contains("frame_0002.png"), "{failure:?}");
    assert_eq!(failure.stderr_tail, "wrote some");
}

#[tokio::test]
async fn a_symlink_is_not_a_frame() {
    let dirs = dirs();
    let spec = command(&["ln", "-s", "/etc/hostname", "{output}/frame_{frame:04}.png"]);
    let failure = expect_failed(
        render::render(
            job(&spec, chunk(7, 7, 1), &dirs),
            no_progress(),
            CancellationToken::new(),
        )
        .await,
    );
    assert!(
        failure
            .reason
            .contains("frame 7 ('frame_0007.png') is not a regular file"),
        "{failure:?}"
    );
}

#[tokio::test]
async fn a_missing_program_fails_clearly() {
    let dirs = dirs();
    let spec = command(&["suanli-no-such-renderer", "{frame}"]);
    let failure = expect_failed(
        render::render(
            job(&spec, chunk(1, 2, 1), &dirs),
            no_progress(),
            CancellationToken::new(),
        )
        .await,
    );
    assert_eq!(failure.exit_code, None);
    assert_eq!(
        failure.reason,
        "cannot start 'suanli-no-such-renderer': No such file or directory"
    );
}

#[tokio::test]
async fn a_timeout_kills_the_renderer_and_its_children() {
    let dirs = dirs();
    let spec = command(&["sh", "-c", SLEEPER, "sh", "{output}"]);
    let mut job = job(&spec, chunk(1, 1, 1), &dirs);
    job.timeout = Duration::from_secs(2);
    let started = Instant::now();
    let failure = expect_failed(render::render(job, no_progress(), CancellationToken::new()).await);
    assert_eq!(failure.exit_code, None);
    assert_eq!(failure.reason, "render timed out after 2s");
    assert!(started.elapsed() < Duration::from_secs(20));
    let pids = sleeper_pids(&dirs.output).expect("the renderer wrote its pids");
    assert_gone(pids).await;
}

#[tokio::test]
async fn cancel_kills_the_renderer_and_its_children() {
    let dirs = dirs();
    let spec = command(&["sh", "-c", SLEEPER, "sh", "{output}"]);
    let cancel = CancellationToken::new();
    let task = {
        let (spec, output, input, cancel) = (
            spec.clone(),
            dirs.output.clone(),
            dirs.input.clone(),
            cancel.clone(),
        );
        tokio::spawn(async move {
            let job = RenderJob {
                renderer: &spec,
                chunk: chunk(1, 1, 1),
                scene: None,
                input_dir: input,
                output_dir: output,
                output_pattern: "frame_####",
                threads: 1,
                timeout: Duration::from_secs(300),
            };
            render::render(job, no_progress(), cancel).await
        })
    };
    assert!(
        wait_until(Duration::from_secs(20), || sleeper_pids(&dirs.output)
            .is_some())
        .await,
        "the renderer never started"
    );
    let pids = sleeper_pids(&dirs.output).unwrap();
    assert!(alive(pids.0) && alive(pids.1));
    cancel.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("render returns soon after cancel")
        .unwrap();
    assert_eq!(outcome, RenderOutcome::Canceled);
    assert_gone(pids).await;
}

#[tokio::test]
async fn dropping_the_render_kills_the_renderer_and_its_children() {
    let dirs = dirs();
    let spec = command(&["sh", "-c", SLEEPER, "sh", "{output}"]);
    let task = {
        let (spec, output, input) = (spec.clone(), dirs.output.clone(), dirs.input.clone());
        tokio::spawn(async move {
            let job = RenderJob {
                renderer: &spec,
                chunk: chunk(1, 1, 1),
                scene: None,
                input_dir: input,
                output_dir: output,
                output_pattern: "frame_####",
                threads: 1,
                timeout: Duration::from_secs(300),
            };
            render::render(job, no_progress(), CancellationToken::new()).await
        })
    };
    assert!(
        wait_until(Duration::from_secs(20), || sleeper_pids(&dirs.output)
            .is_some())
        .await,
        "the renderer never started"
    );
    let pids = sleeper_pids(&dirs.output).unwrap();
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_gone(pids).await;
}

fn decode_png(path: &Path) -> (u32, u32, png::ColorType, Vec<u8>) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap_or_else(|e| panic!("{} is not a png: {e}", path.display()));
    let mut buf = vec![0; reader.output_buffer_size().expect("image fits in memory")];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, info.color_type, buf)
}

#[tokio::test]
async fn builtin_renders_deterministic_png_frames() {
    let spec = RendererSpec::Builtin {
        width: 16,
        height: 12,
        samples: 2,
    };
    let mut runs = Vec::new();
    for _ in 0..2 {
        let dirs = dirs();
        let (sink, log) = progress_log();
        let frames = expect_rendered(
            render::render(
                job(&spec, chunk(1, 2, 1), &dirs),
                sink,
                CancellationToken::new(),
            )
            .await,
        );
        assert_eq!(frames, expected_paths(&dirs, &[1, 2], "png"));
        for (_, path) in &frames {
            let (w, h, _, _) = decode_png(path);
            assert_eq!((w, h), (16, 12));
        }
        assert_progress_completes(&log);
        let bytes: Vec<Vec<u8>> = frames
            .iter()
            .map(|(_, p)| std::fs::read(p).unwrap())
            .collect();
        runs.push(bytes);
    }
    assert_eq!(
        runs[0], runs[1],
        "the builtin renderer must be byte-for-byte deterministic"
    );
}

#[tokio::test]
async fn builtin_stops_on_cancel() {
    let dirs = dirs();
    let spec = RendererSpec::Builtin {
        width: 256,
        height: 256,
        samples: 16,
    };
    let cancel = CancellationToken::new();
    // Cancel from inside the render, at its first progress report.
    let sink = {
        let cancel = cancel.clone();
        Arc::new(move |_: f32| cancel.cancel()) as ProgressFn
    };
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        render::render(job(&spec, chunk(1, 2, 1), &dirs), sink, cancel),
    )
    .await
    .expect("a canceled builtin render returns");
    assert_eq!(outcome, RenderOutcome::Canceled);
}

// ---------------------------------------------------------------------------------------------
// Blender

/// The Blender the worker would run; fails the test with the fix when there is none.
fn blender() -> std::ffi::OsString {
    let program = render::blender::program();
    let works = StdCommand::new(&program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        works,
        "blender is not installed (or {} does not run): run scripts/install-tools.sh --blender",
        program.to_string_lossy()
    );
    program
}

/// Writes the test scene (tests/data/make_scene.py) to `dir/scene.blend`.
fn make_scene(dir: &Path, n_frames: u32) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/make_scene.py");
    let scene = dir.join("scene.blend");
    let out = StdCommand::new(blender())
        .args(["-b", "--factory-startup", "--python"])
        .arg(&script)
        .arg("--")
        .arg(&scene)
        .arg(n_frames.to_string())
        .output()
        .expect("run blender");
    assert!(
        out.status.success() && scene.is_file(),
        "make_scene.py failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    scene
}

fn blender_spec() -> RendererSpec {
    RendererSpec::Blender {
        version: String::new(),
        format: ImageFormat::Png,
        resolution: None,
        samples: None,
    }
}

#[tokio::test]
async fn blender_renders_the_same_pixels_as_blender_itself() {
    let dirs = dirs();
    let scene = make_scene(&dirs.input, 2);
    let spec = blender_spec();
    let mut job = job(&spec, chunk(1, 2, 1), &dirs);
    job.scene = Some(scene.clone());
    job.threads = 1;
    let (sink, log) = progress_log();
    let frames = expect_rendered(render::render(job, sink, CancellationToken::new()).await);
    assert_eq!(frames, expected_paths(&dirs, &[1, 2], "png"));
    assert_progress_completes(&log);

    // The same frames straight from Blender, with its default thread count.
    let direct = dirs.tmp.path().join("direct");
    let out = StdCommand::new(blender())
        .args(["-b", "-Y"])
        .arg(&scene)
        .arg("-o")
        .arg(direct.join("frame_####"))
        .args(["-F", "PNG", "-s", "1", "-e", "2", "-a"])
        .output()
        .expect("run blender");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let mut pixels = Vec::new();
    for (frame, path) in &frames {
        let ours = decode_png(path);
        let theirs = decode_png(&direct.join(format!("frame_{frame:04}.png")));
        assert_eq!((ours.0, ours.1), (64, 48));
        assert_eq!(ours.2, theirs.2);
        assert!(
            ours.3 == theirs.3,
            "frame {frame}: pixels differ from a direct blender render"
        );
        pixels.push(ours.3);
    }
    assert_ne!(
        pixels[0], pixels[1],
        "the scene is animated: frames must differ"
    );
}

#[tokio::test]
async fn blender_applies_resolution_and_sample_overrides() {
    let dirs = dirs();
    let scene = make_scene(&dirs.input, 3);
    let spec = RendererSpec::Blender {
        version: String::new(),
        format: ImageFormat::Png,
        resolution: Some([32, 20]),
        samples: Some(1),
    };
    let mut job = job(&spec, chunk(1, 3, 2), &dirs);
    job.scene = Some(PathBuf::from("scene.blend")); // relative to the input folder
    job.output_pattern = "shot_#_v2";
    assert_eq!(scene, dirs.input.join("scene.blend"));
    let frames =
        expect_rendered(render::render(job, no_progress(), CancellationToken::new()).await);
    let names: Vec<String> = frames
        .iter()
        .map(|(_, p)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["shot_1_v2.png", "shot_3_v2.png"]);
    for (_, path) in &frames {
        let (w, h, _, _) = decode_png(path);
        assert_eq!((w, h), (32, 20));
    }
}

#[tokio::test]
async fn blender_fails_cleanly_on_a_missing_or_broken_scene() {
    let _ = blender();
    let dirs = dirs();
    let spec = blender_spec();

    let mut missing = job(&spec, chunk(1, 1, 1), &dirs);
    missing.scene = Some(dirs.input.join("missing.blend"));
    let failure =
        expect_failed(render::render(missing, no_progress(), CancellationToken::new()).await);
    assert!(
        failure.reason.contains("missing.blend' does not exist"),
        "{failure:?}"
    );

    let broken_path = dirs.input.join("broken.blend");
    std::fs::write(&broken_path, "not a blend file").unwrap();
    let mut broken = job(&spec, chunk(1, 1, 1), &dirs);
    broken.scene = Some(broken_path);
    let failure =
        expect_failed(render::render(broken, no_progress(), CancellationToken::new()).await);
    assert_eq!(failure.exit_code, Some(1), "{failure:?}");
    assert_eq!(failure.reason, "blender exited with code 1");
    // Blender writes its errors to stdout; the tail carries them.
    assert!(
        failure
            .stderr_tail
            .contains("Error: File format is not supported"),
        "{failure:?}"
    );
    assert!(std::fs::read_dir(&dirs.output).unwrap().next().is_none());
}

#[tokio::test]
async fn blender_refuses_a_task_for_another_version() {
    let _ = blender();
    let dirs = dirs();
    let scene = dirs.input.join("scene.blend");
    std::fs::write(&scene, "never read").unwrap();
    let spec = RendererSpec::Blender {
        version: "0.1.0".into(),
        format: ImageFormat::Png,
        resolution: None,
        samples: None,
    };
    let mut job = job(&spec, chunk(1, 1, 1), &dirs);
    job.scene = Some(scene);
    let failure = expect_failed(render::render(job, no_progress(), CancellationToken::new()).await);
    let local = render::detect_versions().await["blender"].clone();
    assert_eq!(
        failure.reason,
        format!("task needs blender 0.1.0 but this worker has {local}")
    );
}

#[tokio::test]
async fn detect_versions_lists_what_this_machine_runs() {
    let program = blender();
    let versions = render::detect_versions().await;
    assert_eq!(versions["builtin"], protocol::BUILTIN_VERSION);
    assert_eq!(versions["command"], "any");
    let out = StdCommand::new(program).arg("--version").output().unwrap();
    let first = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(first, format!("Blender {}", versions["blender"]));
    assert!(versions["blender"].starts_with(|c: char| c.is_ascii_digit()));
}
