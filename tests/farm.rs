//! End-to-end tests of the farm through real parts: a nats-server with JetStream on a free
//! port, the coordinator and workers in two regions, a file store, and the real renderers.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{empty_inputs, prepare, process_alive, wait_for_text, write};
use suanli::client::{fetch, Client};
use suanli::jobfile::Overrides;
use suanli::localfarm::{FarmOptions, LocalFarm};
use suanli_shared::protocol::{
    EventKind, InputManifest, JobSpec, JobState, JobStatus, RendererSpec, TaskState,
};
use suanli_shared::store::Store;
use suanli_shared::JobId;
use suanli_worker::builtin;

/// Generous bound for a job in these tests; a hang fails instead of blocking CI.
const JOB_LIMIT: Duration = Duration::from_secs(180);

async fn farm(dir: &Path, regions: &[&str]) -> LocalFarm {
    let options = FarmOptions::new(dir, regions).expect("regions");
    LocalFarm::start(options).await.expect("farm starts")
}

fn tiny_builtin(frames: &str, chunk: u32, inputs: &InputManifest) -> JobSpec {
    JobSpec {
        webhooks: vec![],
        limits: Default::default(),
        requirements: Default::default(),
        name: "tiny".into(),
        studio: Default::default(),
        priority: 0,
        frames: frames.parse().unwrap(),
        chunk,
        regions: vec![],
        max_retries: 1,
        task_timeout_secs: 120,
        renderer: RendererSpec::Builtin {
            width: 48,
            height: 27,
            samples: 2,
        },
        inputs: inputs.hash(),
        scene: None,
        output: "frame_####".into(),
        placement: Default::default(),
    }
}

async fn run_to_end(client: &Client, spec: JobSpec) -> JobStatus {
    let reply = client.submit(spec).await.expect("job accepted");
    client
        .wait(&reply.id, Some(JOB_LIMIT), |_| {})
        .await
        .expect("wait works")
        .expect("job finished in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_job_across_two_regions_renders_every_frame_and_caches_resubmissions() {
    let dir = tempfile::tempdir().unwrap();
    let farm = farm(dir.path(), &["guian", "ulanqab"]).await;
    let client = Client::connect(&farm.nats_url).await.unwrap();
    let store = Store::open(&farm.store_url).unwrap();
    let inputs = empty_inputs(&store).await;

    let spec = tiny_builtin("1-12", 2, &inputs);
    let status = run_to_end(&client, spec.clone()).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    assert_eq!(
        (
            status.frames.total,
            status.frames.done,
            status.frames.failed
        ),
        (12, 12, 0)
    );
    assert_eq!(
        (status.tasks.total, status.tasks.done, status.tasks.cached),
        (6, 6, 0)
    );
    assert_eq!(
        status.regions.len(),
        2,
        "both regions rendered: {:?}",
        status.regions
    );
    let per_region: u32 = status.regions.values().map(|r| r.frames_done).sum();
    assert_eq!(per_region, 12);
    assert!(status.regions.values().all(|r| r.core_seconds > 0.0));

    // Every frame fetched, verified, and identical to a direct render of the same frame.
    let out = dir.path().join("frames");
    let record = client.job(&status.id).await.unwrap();
    let report = fetch(&record, &store, &out).await.unwrap();
    assert_eq!((report.frames, report.missing.len()), (12, 0));
    let settings = builtin::SceneSettings {
        width: 48,
        height: 27,
        samples: 2,
    };
    for frame in 1..=12 {
        let got = std::fs::read(out.join(format!("frame_{frame:04}.png"))).unwrap();
        let never = std::sync::atomic::AtomicBool::new(false);
        let direct = builtin::render_frame(&settings, frame, &never, &mut |_| {}).unwrap();
        assert_eq!(
            got,
            builtin::encode_png(&direct),
            "frame {frame} differs from a direct render"
        );
    }
    // A second fetch keeps the verified files.
    let again = fetch(&record, &store, &out).await.unwrap();
    assert_eq!((again.downloaded, again.already_present), (0, 12));

    // Same shot, new name and priority: nothing renders.
    let mut renamed = spec.clone();
    renamed.name = "tiny, take 2".into();
    renamed.priority = 5;
    let cached = run_to_end(&client, renamed).await;
    assert_eq!(cached.state, JobState::Done);
    assert_eq!(cached.tasks.cached, cached.tasks.total);
    assert!(
        cached.regions.is_empty(),
        "no region rendered anything: {:?}",
        cached.regions
    );

    // Two more frames: only their task renders.
    let longer = tiny_builtin("1-14", 2, &inputs);
    let grown = run_to_end(&client, longer).await;
    assert_eq!((grown.tasks.total, grown.tasks.cached), (7, 6));
    assert_eq!(grown.frames.done - grown.frames.cached, 2);

    // A setting that changes pixels renders everything again.
    let mut resampled = spec;
    resampled.renderer = RendererSpec::Builtin {
        width: 48,
        height: 27,
        samples: 3,
    };
    let fresh = run_to_end(&client, resampled).await;
    assert_eq!((fresh.state, fresh.tasks.cached), (JobState::Done, 0));
    farm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_renderer_fails_the_job_with_its_exit_code_and_stderr_after_retries() {
    let dir = tempfile::tempdir().unwrap();
    let farm = farm(dir.path(), &["guian"]).await;
    let client = Client::connect(&farm.nats_url).await.unwrap();
    let store = Store::open(&farm.store_url).unwrap();
    let shot = dir.path().join("shot");
    write(&shot.join("scene.txt"), "a scene");
    let spec = prepare(
        &store,
        Overrides {
            frames: Some("1-2".into()),
            chunk: Some(2),
            scene: Some("scene.txt".into()),
            renderer: Some("command".into()),
            max_retries: Some(1),
            argv: [
                "sh",
                "-c",
                "echo rendering {start}-{end}; echo 'texture missing: wood.png' >&2; exit 7",
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        },
        &shot,
    )
    .await;
    let status = run_to_end(&client, spec).await;
    assert_eq!(status.state, JobState::Failed, "{status:?}");
    assert_eq!((status.frames.failed, status.tasks.failed), (2, 1));
    let f = &status.failures[0];
    assert_eq!(f.state, TaskState::Failed);
    assert_eq!(f.failure.exit_code, Some(7));
    assert_eq!(f.failure.attempt, 1, "one retry after the first failure");
    assert!(
        f.failure.stderr_tail.contains("texture missing: wood.png"),
        "{:?}",
        f.failure.stderr_tail
    );
    assert_eq!(f.failure.region.as_str(), "guian");
    let reason = status.reason.as_deref().unwrap_or("");
    assert!(reason.contains("exited with code 7"), "{reason}");

    // A renderer that exits 0 without writing its frame fails too.
    let silent = prepare(
        &store,
        Overrides {
            frames: Some("3".into()),
            scene: Some("scene.txt".into()),
            renderer: Some("command".into()),
            max_retries: Some(0),
            argv: ["true"].map(String::from).to_vec(),
            ..Default::default()
        },
        &shot,
    )
    .await;
    let status = run_to_end(&client, silent).await;
    assert_eq!(status.state, JobState::Failed);
    assert!(
        status.failures[0]
            .failure
            .reason
            .contains("wrote no frame 3"),
        "{:?}",
        status.failures
    );

    // Retry re-queues the failed task (it fails again: same renderer).
    let retried = client.retry(&status.id).await.unwrap();
    assert!(matches!(
        retried.state,
        JobState::Running | JobState::Queued
    ));
    let end = client
        .wait(&status.id, Some(JOB_LIMIT), |_| {})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end.state, JobState::Failed);
    assert_eq!(
        end.failures[0].failure.attempt, 1,
        "retry ran a new attempt"
    );
    farm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_renderer_job_runs_with_inputs_and_cancel_kills_renders() {
    let dir = tempfile::tempdir().unwrap();
    let farm = farm(dir.path(), &["guian"]).await;
    let client = Client::connect(&farm.nats_url).await.unwrap();
    let store = Store::open(&farm.store_url).unwrap();
    let shot = dir.path().join("shot");
    write(&shot.join("scene.txt"), "scene");
    write(&shot.join("tex/wood.txt"), "WOOD");
    // The "renderer" copies a texture it finds in its input tree into each frame.
    let spec = prepare(
        &store,
        Overrides {
            frames: Some("1-3".into()),
            scene: Some("scene.txt".into()),
            inputs: vec!["tex".into()],
            renderer: Some("command".into()),
            ext: Some("txt".into()),
            argv: ["cp", "tex/wood.txt", "{output}/frame_{frame:04}.txt"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        },
        &shot,
    )
    .await;
    let status = run_to_end(&client, spec).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    // Three tasks, one region: its cache fetched the 9 input bytes once, not once per task.
    assert_eq!(status.regions["guian"].bytes_in, 9, "{:?}", status.regions);
    let record = client.job(&status.id).await.unwrap();
    let out = dir.path().join("out");
    fetch(&record, &store, &out).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("frame_0002.txt")).unwrap(),
        "WOOD"
    );

    // Cancel: a long render is killed, not left behind.
    let pid_file = dir.path().join("render.pid");
    let slow = prepare(
        &store,
        Overrides {
            frames: Some("10".into()),
            scene: Some("scene.txt".into()),
            renderer: Some("command".into()),
            argv: [
                "sh",
                "-c",
                &format!("echo $$ > {}; exec sleep 300", pid_file.display()),
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        },
        &shot,
    )
    .await;
    // Listen before submitting, so the start cannot be missed.
    let mut started = client
        .nats()
        .subscribe(suanli_shared::nats::events_of_kind(EventKind::Started))
        .await
        .unwrap();
    let reply = client.submit(slow).await.unwrap();
    let job: JobId = reply.id;
    let start = tokio::time::timeout(JOB_LIMIT, futures::StreamExt::next(&mut started)).await;
    assert!(matches!(start, Ok(Some(_))), "the slow render started");
    let pid: i32 = wait_for_text(&pid_file).await.trim().parse().unwrap();
    let canceled = client.cancel(&job).await.unwrap();
    assert_eq!(canceled.state, JobState::Canceled);
    assert_eq!(canceled.tasks.canceled, 1);
    let gone = tokio::time::timeout(Duration::from_secs(30), async {
        while process_alive(pid) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        gone.is_ok(),
        "the renderer process {pid} was killed on cancel"
    );
    farm.stop().await;
}

fn blender() -> String {
    let bin = std::env::var("SUANLI_BLENDER").unwrap_or_else(|_| "blender".into());
    let ok = Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "blender is not installed: run scripts/install-tools.sh --blender"
    );
    bin
}

fn decode(path: &Path) -> builtin::Image {
    builtin::decode_png(&std::fs::read(path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blender_job_renders_the_same_pixels_as_blender_itself() {
    let blender = blender();
    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("shot");
    std::fs::create_dir_all(&shot).unwrap();
    let scene = shot.join("shot010.blend");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("worker/tests/data/make_scene.py");
    let made = Command::new(&blender)
        .args(["-b", "--factory-startup", "--python"])
        .arg(&script)
        .arg("--")
        .arg(&scene)
        .arg("3")
        .output()
        .unwrap();
    assert!(
        made.status.success() && scene.exists(),
        "scene generation failed: {}",
        String::from_utf8_lossy(&made.stdout)
    );

    let farm = farm(dir.path(), &["guian", "ulanqab"]).await;
    let client = Client::connect(&farm.nats_url).await.unwrap();
    let store = Store::open(&farm.store_url).unwrap();
    let spec = prepare(
        &store,
        Overrides {
            frames: Some("1-3".into()),
            scene: Some("shot010.blend".into()),
            renderer: Some("blender".into()),
            ..Default::default()
        },
        &shot,
    )
    .await;
    let status = run_to_end(&client, spec).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    let record = client.job(&status.id).await.unwrap();
    assert!(
        matches!(&record.spec.renderer, RendererSpec::Blender { version, .. } if version.starts_with('3') || version.starts_with('4')),
        "the coordinator pinned the workers' blender version: {:?}",
        record.spec.renderer
    );
    let farm_out = dir.path().join("farm");
    fetch(&record, &store, &farm_out).await.unwrap();

    let direct_out = dir.path().join("direct");
    let direct = Command::new(&blender)
        .args(["-b", "-Y"])
        .arg(&scene)
        .arg("-o")
        .arg(direct_out.join("frame_####"))
        .args(["-F", "PNG", "-x", "1", "-s", "1", "-e", "3", "-a"])
        .output()
        .unwrap();
    assert!(
        direct.status.success(),
        "{}",
        String::from_utf8_lossy(&direct.stdout)
    );
    for frame in 1..=3 {
        let name = format!("frame_{frame:04}.png");
        let (a, b) = (
            decode(&farm_out.join(&name)),
            decode(&direct_out.join(&name)),
        );
        assert_eq!((a.width, a.height), (b.width, b.height));
        assert!(
            a.rgb == b.rgb,
            "frame {frame}: farm pixels differ from blender's own render"
        );
    }
    assert_ne!(
        decode(&farm_out.join("frame_0001.png")).rgb,
        decode(&farm_out.join("frame_0003.png")).rgb
    );
    farm.stop().await;
}

/// Runs the real binary.
fn suanli(args: &[&str], nats: &str, store: &str, cwd: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_suanli"))
        .args(args)
        .env("SUANLI_NATS", nats)
        .env("SUANLI_STORE", store)
        .current_dir(cwd)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_clear_error_and_nothing_is_enqueued() {
    let dir = tempfile::tempdir().unwrap();
    let farm = farm(dir.path(), &["guian"]).await;
    let cwd = dir.path().join("studio");
    write(&cwd.join("scene.blend"), "not really a scene");
    write(&cwd.join("job.toml"), "frames = '1-10'\nchunk = 0\n");
    write(&cwd.join("typo.toml"), "frame = '1-10'\n");
    write(&dir.path().join("secret.txt"), "outside the studio folder");
    let (nats, store) = (farm.nats_url.clone(), farm.store_url.clone());
    let cases: &[(&[&str], &str)] = &[
        (&["submit", "--frames", ""], "frame spec is empty"),
        (
            &["submit", "--frames", "1-x"],
            "not a frame, range or stepped range",
        ),
        (
            &["submit", "--frames", "1-240x0"],
            "step in '1-240x0' must be at least 1",
        ),
        (&["submit", "--frames", "10-1"], "ends before it starts"),
        (
            &["submit", "--frames", "1-99999999"],
            "above the highest frame",
        ),
        (
            &["submit", "--frames", "0-500000"],
            "at most 100000 are allowed",
        ),
        (
            &["submit", "--frames", "1-10", "--chunk", "0"],
            "chunk size 0",
        ),
        (&["submit", "job.toml"], "chunk size 0"),
        (&["submit", "typo.toml"], "unknown field `frame`"),
        (
            &["submit", "--frames", "1", "--renderer", "maya"],
            "unknown renderer 'maya'",
        ),
        (
            &[
                "submit",
                "--frames",
                "1",
                "--renderer",
                "blender",
                "--scene",
                "missing.blend",
            ],
            "does not exist",
        ),
        (
            &[
                "submit",
                "--frames",
                "1",
                "--renderer",
                "blender",
                "--scene",
                "scene.blend",
                "--input",
                "../secret.txt",
            ],
            "outside the job's folder",
        ),
        (
            &["submit", "--frames", "1", "--output", "../../escape_####"],
            "output file name",
        ),
        (
            &["submit", "--frames", "1", "--output", "frame"],
            "one run of '#'",
        ),
        (
            &["submit", "--frames", "1", "--regions", "Guian!"],
            "invalid region",
        ),
        (
            &[
                "submit",
                "--frames",
                "1",
                "--renderer",
                "command",
                "--scene",
                "scene.blend",
                "--",
                "render",
                "{frames}",
            ],
            "unknown placeholder",
        ),
        (&["status", "not-a-job"], "invalid value 'not-a-job'"),
        (
            &["status", "01m80000000000000000000000"],
            "no job 01m80000000000000000000000",
        ),
    ];
    for (args, message) in cases {
        let out = suanli(args, &nats, &store, &cwd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?} should exit 2, stderr: {stderr}"
        );
        assert!(
            stderr.contains(message),
            "{args:?}: expected '{message}' in: {stderr}"
        );
        assert!(
            stderr.trim().lines().count() <= 3,
            "{args:?}: error is short: {stderr}"
        );
    }

    // The coordinator checks again what the CLI checked (a client may skip the CLI).
    let client = Client::connect(&nats).await.unwrap();
    let mut spec = tiny_builtin("1-4", 1, &InputManifest::default());
    spec.chunk = 0;
    let err = client.submit(spec).await.unwrap_err();
    assert!(
        err.is_bad_request() && err.to_string().contains("chunk size 0"),
        "{err}"
    );
    let unknown_inputs = JobSpec {
        limits: Default::default(),
        requirements: Default::default(),
        inputs: suanli_shared::ContentHash::of(b"never uploaded"),
        ..tiny_builtin("1", 1, &InputManifest::default())
    };
    let err = client.submit(unknown_inputs).await.unwrap_err();
    assert!(err.to_string().contains("is not in the store"), "{err}");

    // Nothing was enqueued: no job, no task message.
    assert!(client.jobs().await.unwrap().is_empty());
    let js = async_nats::jetstream::new(client.nats().clone());
    let mut tasks = js
        .get_stream(suanli_shared::nats::TASKS_STREAM)
        .await
        .unwrap();
    assert_eq!(tasks.info().await.unwrap().state.messages, 0);

    // And a good submit through the binary works, with --json.
    let out = suanli(
        &[
            "submit", "--frames", "1-2", "--width", "16", "--height", "9", "--json", "--wait",
        ],
        &nats,
        &store,
        &cwd,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["state"], "done");
    assert_eq!(status["frames"]["done"], 2);
    for key in ["id", "name", "tasks", "regions"] {
        assert!(status.get(key).is_some(), "status --json has {key}");
    }
    farm.stop().await;
}

/// A farm upgraded from a version whose event subjects had no studio: `setup` brings the
/// event stream's subjects up to date (otherwise today's events would match no stream and never
/// reach the coordinator), keeping what it stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_of_an_older_version_gets_todays_subjects() {
    use async_nats::jetstream::{self, stream};
    let dir = tempfile::tempdir().unwrap();
    let server = suanli::localfarm::NatsServer::start(&dir.path().join("nats"), 0).unwrap();
    let client =
        suanli_shared::nats::connect(&server.url(), "t", &suanli_shared::access::Access::none())
            .await
            .unwrap();
    let js = jetstream::new(client.clone());
    let old = js
        .create_stream(stream::Config {
            name: suanli_shared::nats::EVENTS_STREAM.into(),
            subjects: vec!["suanli.evt.*.started".into(), "suanli.evt.*.job".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    js.publish("suanli.evt.x.job", "old".into())
        .await
        .unwrap()
        .await
        .unwrap();
    drop(old);
    suanli_shared::nats::setup(client).await.unwrap();
    let mut events = js
        .get_stream(suanli_shared::nats::EVENTS_STREAM)
        .await
        .unwrap();
    let info = events.info().await.unwrap();
    assert_eq!(info.config.subjects, suanli_shared::nats::stored_events());
    assert_eq!(info.state.messages, 1, "the stored event is kept");
}
