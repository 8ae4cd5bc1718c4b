//! The command and builtin renderer runners through their public API: frames on disk, failures
//! as values, and no renderer process left behind after a timeout, a cancel or a dropped
//! future. Blender has its own file, `blender.rs`.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use suanli_shared::protocol::RendererSpec;
use suanli_worker::render::{self, ProgressFn, RenderJob, RenderOutcome};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A renderer that records its own pid and a child's, then waits forever (well, 100 s).
const SLEEPER: &str = r#"sleep 100 & echo $! > "$1/child.pid"; echo $$ > "$1/leader.pid"; wait"#;

fn sleeper() -> RendererSpec {
    command(&["sh", "-c", SLEEPER, "sh", "{output}"])
}

/// The pids a [`SLEEPER`] wrote, once both files are complete.
fn sleeper_pids(output: &Path) -> Option<(u32, u32)> {
    let read = |name: &str| -> Option<u32> {
        let text = std::fs::read_to_string(output.join(name)).ok()?;
        text.strip_suffix('\n')?.parse().ok()
    };
    Some((read("leader.pid")?, read("child.pid")?))
}

/// Starts a [`SLEEPER`] render in its own task, with a long timeout, and waits until it has
/// written its pids; returns the task and the pids.
async fn spawn_sleeper(
    dirs: &Dirs,
    cancel: CancellationToken,
) -> (JoinHandle<RenderOutcome>, (u32, u32)) {
    let (output, input) = (dirs.output.clone(), dirs.input.clone());
    let task = tokio::spawn(async move {
        let spec = sleeper();
        let job = RenderJob {
            renderer: &spec,
            chunk: chunk(1, 1, 1),
            scene: None,
            input_dir: input,
            output_dir: output,
            output_pattern: "frame_####",
            threads: 1,
            timeout: Duration::from_secs(300),
            confinement: None,
            gpus: Vec::new(),
        };
        render::render(job, no_progress(), cancel).await
    });
    assert!(
        wait_until(Duration::from_secs(20), || sleeper_pids(&dirs.output)
            .is_some())
        .await,
        "the renderer never started"
    );
    (task, sleeper_pids(&dirs.output).unwrap())
}

async fn assert_gone(pids: (u32, u32)) {
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
    let frames = renders_with_progress(job(&spec, chunk(1, 5, 2), &dirs)).await;
    assert_eq!(frames, expected_paths(&dirs, &[1, 3, 5], "png"));
    for (frame, path) in &frames {
        assert_eq!(
            std::fs::read_to_string(path).unwrap(),
            format!("frame {frame}")
        );
    }
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
    let frames = renders_with_progress(job).await;
    assert_eq!(frames, expected_paths(&dirs, &[3, 6, 9], "png"));

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
    let failure = fails(job(&spec, chunk(1, 1, 1), &dirs)).await;
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
    let failure = fails(job(&spec, chunk(1, 1, 1), &dirs)).await;
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
    let failure = fails(job(&spec, chunk(1, 4, 1), &dirs)).await;
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
    let failure = fails(job(&spec, chunk(7, 7, 1), &dirs)).await;
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
    let failure = fails(job(&spec, chunk(1, 2, 1), &dirs)).await;
    assert_eq!(failure.exit_code, None);
    assert_eq!(
        failure.reason,
        "cannot start 'suanli-no-such-renderer': No such file or directory"
    );
}

#[tokio::test]
async fn a_timeout_kills_the_renderer_and_its_children() {
    let dirs = dirs();
    let spec = sleeper();
    let mut job = job(&spec, chunk(1, 1, 1), &dirs);
    job.timeout = Duration::from_secs(2);
    let started = Instant::now();
    let failure = fails(job).await;
    assert_eq!(failure.exit_code, None);
    assert_eq!(failure.reason, "render timed out after 2s");
    assert!(started.elapsed() < Duration::from_secs(20));
    let pids = sleeper_pids(&dirs.output).expect("the renderer wrote its pids");
    assert_gone(pids).await;
}

#[tokio::test]
async fn cancel_kills_the_renderer_and_its_children() {
    let dirs = dirs();
    let cancel = CancellationToken::new();
    let (task, pids) = spawn_sleeper(&dirs, cancel.clone()).await;
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
    let (task, pids) = spawn_sleeper(&dirs, CancellationToken::new()).await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_gone(pids).await;
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
        let frames = renders_with_progress(job(&spec, chunk(1, 2, 1), &dirs)).await;
        assert_eq!(frames, expected_paths(&dirs, &[1, 2], "png"));
        for (_, path) in &frames {
            let image = read_frame(path).image;
            assert_eq!((image.width, image.height), (16, 12));
        }
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
