//! Workers that decide what runs on them, end to end: a real nats-server, coordinator and
//! worker, jobs submitted as `suanli submit` does. A command job names one of the worker's
//! profiles; a profile or renderer the worker does not allow fails with the reason, and
//! `status` says when no live worker would run a job at all.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{prepare, write};
use suanli::client::Client;
use suanli::jobfile::Overrides;
use suanli::localfarm::{FarmOptions, LocalFarm};
use suanli_shared::protocol::{JobSpec, JobState, JobStatus};
use suanli_shared::store::Store;
use suanli_worker::RendererPolicy;

const JOB_LIMIT: Duration = Duration::from_secs(120);

/// A worker that runs builtin and two command profiles, and no job's own argv.
fn policy() -> RendererPolicy {
    let mut p = RendererPolicy::default()
        .with_kinds(&["builtin", "command"])
        .unwrap();
    // `$0` and `$1` keep the job's argument a plain value, never shell code.
    p.profiles.insert(
        "write".into(),
        [
            "sh",
            "-c",
            "printf %s \"$0\" > \"$1\"",
            "{arg.word}",
            "{output}/frame_{frame:04}.txt",
        ]
        .map(String::from)
        .to_vec(),
    );
    p.profiles.insert(
        "hold".into(),
        [
            "sh",
            "-c",
            "while [ ! -e \"$0\" ]; do sleep 0.05; done; echo held > \"$1\"",
            "{arg.file}",
            "{output}/frame_{frame:04}.txt",
        ]
        .map(String::from)
        .to_vec(),
    );
    p.check().unwrap();
    p
}

async fn farm(dir: &Path) -> LocalFarm {
    let mut options = FarmOptions::new(dir, &["guian"]).expect("regions");
    options.renderers = policy();
    LocalFarm::start(options).await.expect("farm starts")
}

fn profile_job(frames: &str, profile: &str, args: &[(&str, &str)]) -> Overrides {
    Overrides {
        frames: Some(frames.into()),
        scene: Some("scene.txt".into()),
        renderer: Some("command".into()),
        ext: Some("txt".into()),
        max_retries: Some(0),
        profile: Some(profile.into()),
        args: args.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        ..Default::default()
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

fn failure_reason(status: &JobStatus) -> String {
    status
        .failures
        .first()
        .map(|f| f.failure.reason.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_jobs_run_only_the_workers_profiles_and_others_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let farm = farm(dir.path()).await;
    let client = Client::connect(&farm.nats_url).await.unwrap();
    let store = Store::open(&farm.store_url).unwrap();
    let shot = dir.path().join("shot");
    write(&shot.join("scene.txt"), "a scene");

    // The worker advertises what it allows, profiles included.
    let workers = client.workers().await.unwrap();
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].profiles, ["hold", "write"]);
    assert_eq!(
        workers[0].renderers.get("command").map(String::as_str),
        Some("profiles")
    );
    assert!(!workers[0].renderers.contains_key("blender"));

    // A profile the worker defines renders, the job's value landing in the frame as text.
    let spec = prepare(
        &store,
        profile_job("1-2", "write", &[("word", "hello; rm -rf /")]),
        &shot,
    )
    .await;
    let status = run_to_end(&client, spec).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    assert_eq!(status.frames.done, 2);

    // A profile it does not define fails, saying which profiles it has.
    let spec = prepare(&store, profile_job("3", "other", &[]), &shot).await;
    let status = run_to_end(&client, spec).await;
    assert_eq!(status.state, JobState::Failed, "{status:?}");
    let reason = failure_reason(&status);
    assert!(
        reason.contains("no command profile 'other'") && reason.contains("hold, write"),
        "{reason}"
    );

    // Arguments the profile does not take are refused, not ignored.
    let spec = prepare(
        &store,
        profile_job("4", "write", &[("word", "x"), ("extra", "y")]),
        &shot,
    )
    .await;
    let status = run_to_end(&client, spec).await;
    assert_eq!(status.state, JobState::Failed, "{status:?}");
    assert!(
        failure_reason(&status).contains("takes no argument 'extra'"),
        "{status:?}"
    );

    // A job's own argv runs only on workers started with --allow-any-command.
    let spec = prepare(
        &store,
        Overrides {
            profile: None,
            args: vec![],
            argv: ["sh", "-c", "echo pwned > {output}/frame_{frame:04}.txt"]
                .map(String::from)
                .to_vec(),
            ..profile_job("5", "x", &[])
        },
        &shot,
    )
    .await;
    let status = run_to_end(&client, spec).await;
    assert_eq!(status.state, JobState::Failed, "{status:?}");
    assert!(
        failure_reason(&status).contains("--allow-any-command"),
        "{status:?}"
    );
    farm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_when_no_live_worker_would_run_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let farm = farm(dir.path()).await;
    let client = Client::connect(&farm.nats_url).await.unwrap();
    let store = Store::open(&farm.store_url).unwrap();
    let shot = dir.path().join("shot");
    write(&shot.join("scene.txt"), "a scene");

    // Keep the worker's one slot busy, so the next jobs wait for it.
    let go = dir.path().join("go");
    let go_arg = go.to_str().unwrap();
    let hold = prepare(&store, profile_job("1", "hold", &[("file", go_arg)]), &shot).await;
    let hold = client.submit(hold).await.expect("accepted").id;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while client.status(&hold).await.unwrap().tasks.running == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the holding task never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let other = prepare(&store, profile_job("2", "other", &[]), &shot).await;
    let other = client.submit(other).await.expect("accepted").id;
    let status = client.status(&other).await.unwrap();
    let waiting = status.waiting.clone().unwrap_or_default();
    assert!(
        waiting.contains("no live worker has the command profile 'other'"),
        "{status:?}"
    );
    let blender = prepare(
        &store,
        Overrides {
            renderer: Some("blender".into()),
            scene: Some("scene.txt".into()),
            frames: Some("1".into()),
            renderer_version: Some("4.0.0".into()),
            ..Default::default()
        },
        &shot,
    )
    .await;
    let blender = client.submit(blender).await.expect("accepted").id;
    let waiting = client.status(&blender).await.unwrap().waiting;
    assert!(
        waiting
            .as_deref()
            .is_some_and(|w| w.contains("no live worker allows the blender renderer")),
        "{waiting:?}"
    );
    // A job the worker would run waits without such a line.
    let write_job = prepare(&store, profile_job("3", "write", &[("word", "w")]), &shot).await;
    let write_job = client.submit(write_job).await.expect("accepted").id;
    assert_eq!(client.status(&write_job).await.unwrap().waiting, None);

    std::fs::write(&go, "").unwrap();
    let done = client
        .wait(&hold, Some(JOB_LIMIT), |_| {})
        .await
        .unwrap()
        .expect("the holding job ends");
    assert_eq!(done.state, JobState::Done, "{done:?}");
    let status = client
        .wait(&other, Some(JOB_LIMIT), |_| {})
        .await
        .unwrap()
        .expect("the job ends");
    assert_eq!(status.state, JobState::Failed);
    assert_eq!(status.waiting, None, "a finished job waits for nothing");
    let _ = client.cancel(&blender).await;
    farm.stop().await;
}

/// Probes the network and the file system from inside a render and writes what it got into
/// the frame (argv: port, a path outside, the worker's identity file, the store's folder, the
/// frame to write).
const PROBE: &str = r##"
import os, socket, sys
port, outside, identity, store, frame = sys.argv[1:6]
report = []
try:
    report.append("store=ok " + ",".join(os.listdir(os.path.join(store, "studios")))[:40])
except OSError as e:
    report.append(f"store=blocked {type(e).__name__}")
try:
    report.append("identity=ok " + open(identity).read()[:20])
except OSError as e:
    report.append(f"identity=blocked {type(e).__name__}")
try:
    socket.create_connection(("127.0.0.1", int(port)), 3).close()
    report.append("tcp=ok")
except OSError as e:
    report.append(f"tcp=blocked {type(e).__name__}")
try:
    open(outside, "w").write("pwned")
    report.append("write_outside=ok")
except OSError as e:
    report.append(f"write_outside=blocked {type(e).__name__}")
open(frame, "w").write("\n".join(report) + "\n")
"##;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandboxed_worker_renders_and_its_renders_reach_no_network_and_write_only_their_folder() {
    use suanli_worker::render::sandbox::{Confinement, SandboxMode, SandboxSettings};
    // Outside /tmp, so what keeps the worker's identity, cache and store out of sight is the
    // worker's own hiding, not the render's private /tmp.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let required = SandboxSettings {
        mode: SandboxMode::Required,
        ..Default::default()
    };
    if let Err(e) = Confinement::resolve(&required, None) {
        eprintln!("NOTE: no working bwrap here; the refusal is checked by `required_sandbox_without_bwrap_refuses_to_start`: {e}");
        return;
    }
    let mut options = FarmOptions::new(dir.path(), &["guian"]).expect("regions");
    let mut policy = policy();
    policy.profiles.insert(
        "probe".into(),
        [
            "python3",
            "{scene}",
            "{arg.port}",
            "{arg.outside}",
            "{arg.identity}",
            "{arg.store}",
            "{output}/frame_{frame:04}.txt",
        ]
        .map(String::from)
        .to_vec(),
    );
    options.renderers = policy;
    options.sandbox = required;
    // A secure farm: the worker holds an identity the render must not read.
    options.secure = true;
    let farm = LocalFarm::start(options).await.expect("farm starts");
    let client = Client::connect_with(
        &farm.nats_url,
        &farm.access(&suanli_shared::access::Role::Operator),
    )
    .await
    .unwrap();
    let identity = farm.access(&suanli_shared::access::Role::Worker(
        "guian".parse().unwrap(),
    ));
    let identity = identity.identity.expect("a worker identity").path;
    assert!(std::fs::read_to_string(&identity).unwrap().contains("SU"));
    let store = Store::open(&farm.store_url).unwrap();
    let shot = dir.path().join("shot");
    write(&shot.join("scene.txt"), PROBE);

    // A normal render passes.
    let spec = prepare(
        &store,
        profile_job("1", "write", &[("word", "fine")]),
        &shot,
    )
    .await;
    let status = run_to_end(&client, spec).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");

    // The probe reaches neither a listener on this machine nor a folder beside the test.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let outside = dir.path().join("pwned.txt");
    let store_dir = store.url().strip_prefix("file://").unwrap().to_string();
    assert!(std::fs::read_dir(Path::new(&store_dir).join("studios")).is_ok());
    let spec = prepare(
        &store,
        profile_job(
            "1",
            "probe",
            &[
                ("port", &port),
                ("outside", outside.to_str().unwrap()),
                ("identity", identity.to_str().unwrap()),
                ("store", store_dir.as_str()),
            ],
        ),
        &shot,
    )
    .await;
    let id = client.submit(spec).await.expect("accepted").id;
    let status = client
        .wait(&id, Some(JOB_LIMIT), |_| {})
        .await
        .unwrap()
        .expect("the probe ends");
    assert_eq!(status.state, JobState::Done, "{status:?}");
    let record = client.job(&id).await.unwrap();
    let frames = dir.path().join("frames");
    suanli::client::fetch(&record, &store, &frames)
        .await
        .unwrap();
    let report = std::fs::read_to_string(frames.join("frame_0001.txt")).unwrap();
    assert!(report.contains("tcp=blocked"), "{report}");
    assert!(report.contains("write_outside=blocked"), "{report}");
    assert!(report.contains("identity=blocked"), "{report}");
    assert!(report.contains("store=blocked"), "{report}");
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a connection reached the listener"
    );
    assert!(!outside.exists());
    farm.stop().await;
}

#[test]
fn required_sandbox_without_bwrap_refuses_to_start() {
    // No bwrap on this PATH: a worker that requires the sandbox must not start.
    let empty = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_suanli"))
        .args([
            "worker",
            "--region",
            "guian",
            "--sandbox",
            "required",
            "--nats",
            "nats://127.0.0.1:9",
        ])
        .env("PATH", empty.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--sandbox required but bwrap"), "{stderr}");

    // Bad flags are refused with the reason too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_suanli"))
        .args([
            "worker",
            "--region",
            "guian",
            "--renderers",
            "builtin,povray",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("unknown renderer 'povray'"), "{stderr}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_suanli"))
        .args(["worker", "--region", "guian", "--sandbox", "maybe"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("off, auto, required"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_suanli"))
        .args(["worker", "--region", "guian", "--max-memory-mib", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-memory-mib"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_suanli"))
        .args([
            "worker",
            "--region",
            "guian",
            "--command-profile",
            "x=r {nope}",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("unknown placeholder '{nope}'"), "{stderr}");
}
