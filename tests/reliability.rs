//! Failure as a normal, tested path: workers, coordinators and the nats-server die mid-job and
//! nothing is lost. Roles run as real `suanli` processes (or, for the NATS restart, in-process
//! roles that must reconnect), killed with real signals. Recovery times are printed (they are
//! recorded in docs/RELIABILITY.md), and bounded only loosely: a hang fails, slowness does not.

mod common;

use std::time::{Duration, Instant};

use common::{
    empty_inputs, prepare, process_alive, sh_flags, signal, wait_for_text, wait_until, write,
    ProcFarm,
};
use futures::StreamExt;
use suanli::client::{fetch, Client};
use suanli::jobfile::Overrides;
use suanli::localfarm::{FarmOptions, LocalFarm};
use suanli_shared::nats;
use suanli_shared::protocol::{
    EventKind, InputManifest, JobSpec, JobState, JobStatus, RendererSpec, TaskEvent, TaskEventKind,
    TaskRecord, TaskState, WorkerState,
};
use suanli_shared::store::Store;
use suanli_shared::{layout, JobId, Studio};

/// Bound for any job here: a hang fails the test instead of blocking CI.
const JOB_LIMIT: Duration = Duration::from_secs(120);

async fn wait_done(client: &Client, job: &JobId) -> JobStatus {
    client
        .wait(job, Some(JOB_LIMIT), |_| {})
        .await
        .expect("wait works")
        .expect("the job finished in time")
}

/// A one-frame command job whose renderer writes its frame, then, on its first run only
/// (while `marker` exists), records its pid in `pid_file` and renders "forever". Later runs
/// finish at once. `exec` keeps the renderer one process, the worker's direct child.
async fn slow_first_run(farm: &ProcFarm, frame: u32) -> (JobSpec, std::path::PathBuf) {
    let marker = write(&farm.path().join(format!("slow-{frame}")), "");
    let pid_file = farm.path().join(format!("render-{frame}.pid"));
    let script = format!(
        "printf 'frame {{frame}}' > {{output}}/frame_{{frame:04}}.txt; \
         if [ -e {m} ]; then rm {m}; echo $$ > {p}; exec sleep 600; fi",
        m = marker.display(),
        p = pid_file.display()
    );
    let spec = farm.job(sh_flags(&frame.to_string(), &script)).await;
    (spec, pid_file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_render_loses_nothing_and_leaves_no_renderer_behind() {
    let farm = ProcFarm::start();
    let _coordinator = farm.coordinator("coordinator", &["--worker-lost-after", "3s"]);
    let mut a = farm.worker("guian", "a", &["--ack-wait", "3s"]);
    let client = farm.client().await;
    farm.wait_for_workers(&client, 1).await;

    let (spec, pid_file) = slow_first_run(&farm, 1).await;
    let job = client.submit(spec).await.unwrap().id;
    let renderer: i32 = wait_for_text(&pid_file).await.trim().parse().unwrap();
    let _b = farm.worker("guian", "b", &["--ack-wait", "3s"]);
    farm.wait_for_workers(&client, 2).await;

    let killed = Instant::now();
    a.kill9();
    let status = wait_done(&client, &job).await;
    let recovery = killed.elapsed();
    println!("worker SIGKILL -> job done: {recovery:?} (ack wait 3 s)");
    assert_eq!(status.state, JobState::Done, "{status:?}");
    let page = client.tasks(&job, 0, 10).await.unwrap();
    assert_eq!(page.tasks[0].worker.as_ref().unwrap().as_str(), "b");
    assert!(
        recovery < Duration::from_secs(60),
        "redelivered within about a minute, not after the render: {recovery:?}"
    );
    // The kernel killed the renderer with its worker (PR_SET_PDEATHSIG).
    let gone = wait_until(Duration::from_secs(10), || {
        (!process_alive(renderer)).then_some(())
    })
    .await;
    assert!(gone.is_some(), "renderer {renderer} outlived its worker");

    // The dead worker is shown as lost once its heartbeats are 3 s old.
    let lost = tokio::time::timeout(JOB_LIMIT, async {
        loop {
            let ws = client.workers().await.unwrap();
            if ws
                .iter()
                .any(|w| w.id.as_str() == "a" && w.state == WorkerState::Lost)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(lost.is_ok(), "the killed worker is shown as lost");
    // Restarted on the same host, it takes its name back at once (its old pid is gone).
    let _a = farm.worker("guian", "a", &["--ack-wait", "3s"]);
    farm.wait_for_workers(&client, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_the_render_or_hands_it_back_and_the_worker_exits_0() {
    let farm = ProcFarm::start();
    let _coordinator = farm.coordinator("coordinator", &[]);
    let client = farm.client().await;

    // An operator's drain: the render (2 s) finishes here, then the worker exits 0.
    let mut a = farm.worker("guian", "a", &[]);
    farm.wait_for_workers(&client, 1).await;
    let started = farm.path().join("started");
    let script = format!(
        "echo go > {}; sleep 2; printf one > {{output}}/frame_{{frame:04}}.txt",
        started.display()
    );
    let spec = farm.job(sh_flags("1", &script)).await;
    let job = client.submit(spec).await.unwrap().id;
    wait_for_text(&started).await;
    let drain = std::process::Command::new(env!("CARGO_BIN_EXE_suanli"))
        .args(["--nats", &farm.nats_url(), "worker", "drain", "a"])
        .output()
        .unwrap();
    assert!(
        drain.status.success(),
        "{}",
        String::from_utf8_lossy(&drain.stderr)
    );
    assert!(String::from_utf8_lossy(&drain.stdout).contains("is draining"));
    let exit = a.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(
        exit.and_then(|s| s.code()),
        Some(0),
        "drained worker exits 0"
    );
    let status = client.status(&job).await.unwrap();
    assert_eq!(status.state, JobState::Done, "finished before exiting");
    let workers = client.workers().await.unwrap();
    assert!(workers.iter().all(|w| w.id.as_str() != "a"), "{workers:?}");

    // SIGTERM with a short grace: the endless render is handed back (nak), worker b takes it
    // at once, without waiting for the ack wait (60 s here), and the renderer is killed.
    let mut c = farm.worker("guian", "c", &["--drain-grace", "1s"]);
    farm.wait_for_workers(&client, 1).await;
    let (spec, pid_file) = slow_first_run(&farm, 2).await;
    let job = client.submit(spec).await.unwrap().id;
    let renderer: i32 = wait_for_text(&pid_file).await.trim().parse().unwrap();
    let _b = farm.worker("guian", "b", &[]);
    farm.wait_for_workers(&client, 2).await;
    let t0 = Instant::now();
    signal(c.pid(), "TERM");
    let exit = c.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(exit.and_then(|s| s.code()), Some(0), "SIGTERM exits 0");
    assert!(
        !process_alive(renderer),
        "the handed-back render was killed"
    );
    let status = wait_done(&client, &job).await;
    println!(
        "SIGTERM (grace 1 s) -> handed back -> job done: {:?}",
        t0.elapsed()
    );
    assert_eq!(status.state, JobState::Done);
    assert!(
        t0.elapsed() < Duration::from_secs(45),
        "handed back at once, not after the 60 s ack wait"
    );
    let page = client.tasks(&job, 0, 1).await.unwrap();
    assert_eq!(page.tasks[0].worker.as_ref().unwrap().as_str(), "b");
}

fn builtin(frames: &str, inputs: &InputManifest) -> JobSpec {
    JobSpec {
        webhooks: vec![],
        limits: Default::default(),
        requirements: Default::default(),
        name: "chaos".into(),
        studio: Default::default(),
        priority: 0,
        frames: frames.parse().unwrap(),
        chunk: 1,
        regions: vec![],
        max_retries: 2,
        task_timeout_secs: 120,
        renderer: RendererSpec::Builtin {
            width: 160,
            height: 90,
            samples: 8,
        },
        inputs: inputs.hash(),
        scene: None,
        output: "frame_####".into(),
        placement: Default::default(),
    }
}

/// Every stored task event of a job, read back from the events stream.
async fn stored_events(client: &Client, job: &JobId) -> Vec<TaskEvent> {
    let js = async_nats::jetstream::new(client.nats().clone());
    let stream = js.get_stream(nats::EVENTS_STREAM).await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: nats::job_events(&Studio::default(), job),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    // Everything stored so far, without waiting for more.
    let mut batch = consumer
        .fetch()
        .max_messages(10_000)
        .messages()
        .await
        .unwrap();
    while let Some(Ok(m)) = batch.next().await {
        if let Ok(ev) = serde_json::from_slice::<TaskEvent>(&m.payload) {
            out.push(ev);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_at_any_moment_restarts_and_enqueues_nothing_twice() {
    let farm = ProcFarm::start();
    let mut coordinator = farm.coordinator("coordinator-1", &[]);
    let _a = farm.worker("guian", "a", &[]);
    let _b = farm.worker("ulanqab", "b", &[]);
    let client = farm.client().await;
    farm.wait_for_workers(&client, 2).await;
    let store = farm.store();
    let inputs = empty_inputs(&store).await;

    let mut completed = client
        .nats()
        .subscribe(nats::events_of_kind(EventKind::Completed))
        .await
        .unwrap();
    let job = client.submit(builtin("1-40", &inputs)).await.unwrap().id;
    let mut restarts = Vec::new();
    for (round, after) in [3usize, 8, 8].into_iter().enumerate() {
        for _ in 0..after {
            let got = tokio::time::timeout(JOB_LIMIT, completed.next()).await;
            assert!(matches!(got, Ok(Some(_))), "tasks keep completing");
        }
        coordinator.kill9();
        let t0 = Instant::now();
        coordinator = farm.coordinator(&format!("coordinator-{}", round + 2), &[]);
        // Serving once it says so (it took its dead predecessor's lease at once).
        assert!(
            coordinator
                .wait_for_log("coordinator ready", JOB_LIMIT)
                .await
        );
        restarts.push(t0.elapsed());
        let back = client.status(&job).await;
        assert!(back.is_ok(), "the restarted coordinator answers: {back:?}");
    }
    let status = wait_done(&client, &job).await;
    println!("coordinator SIGKILL -> answering again: {restarts:?}");
    assert_eq!(status.state, JobState::Done, "{status:?}");
    assert_eq!(status.frames.done, 40);

    // Nothing was enqueued twice: each task started exactly once and completed once.
    let events = stored_events(&client, &job).await;
    for task in 0..40 {
        let started = events
            .iter()
            .filter(|e| e.task == task && matches!(e.kind, TaskEventKind::Started))
            .count();
        assert_eq!(started, 1, "task {task} started {started} times");
    }
    let out = farm.path().join("frames");
    let record = client.job(&job).await.unwrap();
    let report = fetch(&record, &store, &out).await.unwrap();
    assert_eq!((report.frames, report.missing.len()), (40, 0));
    assert!(report.unverified.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_recorded_by_a_coordinator_that_died_before_publishing_it_is_published() {
    let farm = ProcFarm::start();
    let mut c1 = farm.coordinator("coordinator-1", &[]);
    assert!(c1.wait_for_log("coordinator ready", JOB_LIMIT).await);
    let client = farm.client().await;
    let inputs = empty_inputs(&farm.store()).await;
    let mut spec = builtin("1", &inputs);
    spec.regions = vec!["guian".parse().unwrap()];
    // No worker yet: the task waits in the backlog.
    let job = client.submit(spec).await.unwrap().id;
    c1.kill9();

    // What a coordinator leaves when it dies between recording a release and publishing it:
    // the record says queued in guian, guian's queue is empty.
    let js = async_nats::jetstream::new(client.nats().clone());
    let tasks_kv = js.get_key_value(nats::TASKS_BUCKET).await.unwrap();
    let key = nats::task_kv_key(&job, 0);
    let entry = tasks_kv
        .entry(&key)
        .await
        .unwrap()
        .expect("the task record");
    let mut rec: TaskRecord = serde_json::from_slice(&entry.value).unwrap();
    assert_eq!(rec.state, TaskState::Pending);
    rec.state = TaskState::Queued;
    rec.region = Some("guian".parse().unwrap());
    rec.releases += 1;
    let body = serde_json::to_vec(&rec).unwrap();
    tasks_kv
        .update(&key, body.into(), entry.revision)
        .await
        .unwrap();
    let mut tasks_stream = js.get_stream(nats::TASKS_STREAM).await.unwrap();
    assert_eq!(tasks_stream.info().await.unwrap().state.messages, 0);

    // The next coordinator publishes it, once, to the region the record names.
    let _c2 = farm.coordinator("coordinator-2", &[]);
    let _a = farm.worker("guian", "a", &[]);
    let status = wait_done(&client, &job).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    let starts = stored_events(&client, &job)
        .await
        .into_iter()
        .filter(|e| matches!(e.kind, TaskEventKind::Started))
        .count();
    assert_eq!(starts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coordinators_never_both_serve_and_a_standby_takes_over_a_hung_one() {
    let farm = ProcFarm::start();
    let mut c1 = farm.coordinator("c1", &["--lease-ttl", "2s"]);
    let client = farm.client().await;
    assert!(c1.wait_for_log("coordinator ready", JOB_LIMIT).await);
    let c2 = farm.coordinator("c2", &["--lease-ttl", "2s"]);
    assert!(c2.wait_for_log("standing by", JOB_LIMIT).await);
    let _a = farm.worker("guian", "a", &[]);
    farm.wait_for_workers(&client, 1).await;
    let inputs = empty_inputs(&farm.store()).await;

    let job = client.submit(builtin("1-4", &inputs)).await.unwrap().id;
    assert_eq!(wait_done(&client, &job).await.state, JobState::Done);
    assert!(
        !c2.log_text().contains("coordinator ready"),
        "the standby served while the holder was alive"
    );

    // c1 hangs (SIGSTOP): its lease lapses after 2 s and c2 takes over.
    signal(c1.pid(), "STOP");
    let t0 = Instant::now();
    assert!(c2.wait_for_log("coordinator ready", JOB_LIMIT).await);
    let takeover = t0.elapsed();
    println!("hung holder -> standby serving: {takeover:?} (lease ttl 2 s)");
    let job2 = client.submit(builtin("5-8", &inputs)).await.unwrap().id;
    assert_eq!(wait_done(&client, &job2).await.state, JobState::Done);

    // c1 wakes up, finds its lease gone and stands by instead of serving next to c2.
    signal(c1.pid(), "CONT");
    assert!(
        c1.wait_for_log("lost the coordinator lease", JOB_LIMIT)
            .await
    );
    let holder = async_nats::jetstream::new(client.nats().clone())
        .get_key_value(nats::LEASE_BUCKET)
        .await
        .unwrap()
        .get(nats::LEASE_KEY)
        .await
        .unwrap()
        .unwrap();
    let holder: serde_json::Value = serde_json::from_slice(&holder).unwrap();
    assert_eq!(holder["pid"], c2.pid(), "{holder}");
    // The old holder still answers nothing: a third job is served by c2 alone.
    let job3 = client.submit(builtin("9-10", &inputs)).await.unwrap().id;
    assert_eq!(wait_done(&client, &job3).await.state, JobState::Done);
    assert_eq!(client.status(&job).await.unwrap().state, JobState::Done);
    c1.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_mid_job_is_survived_by_every_role() {
    let dir = tempfile::tempdir().unwrap();
    let options = FarmOptions::new(dir.path(), &["guian", "ulanqab"]).unwrap();
    let mut farm = LocalFarm::start(options).await.unwrap();
    let client = Client::connect(&farm.nats_url).await.unwrap();
    let store = Store::open(&farm.store_url).unwrap();
    let inputs = empty_inputs(&store).await;
    let mut completed = client
        .nats()
        .subscribe(nats::events_of_kind(EventKind::Completed))
        .await
        .unwrap();
    let job = client.submit(builtin("1-40", &inputs)).await.unwrap().id;
    for _ in 0..5 {
        let got = tokio::time::timeout(JOB_LIMIT, completed.next()).await;
        assert!(matches!(got, Ok(Some(_))));
    }
    let t0 = Instant::now();
    let nats_server = farm.nats.as_mut().unwrap();
    tokio::task::block_in_place(|| nats_server.restart()).unwrap();
    let next = tokio::time::timeout(JOB_LIMIT, completed.next()).await;
    assert!(
        matches!(next, Ok(Some(_))),
        "tasks complete after the restart"
    );
    let resumed = t0.elapsed();
    let status = wait_done(&client, &job).await;
    println!(
        "nats-server restart -> next task completed: {resumed:?}; job done: {:?}",
        t0.elapsed()
    );
    assert_eq!(status.state, JobState::Done, "{status:?}");
    let record = client.job(&job).await.unwrap();
    let report = fetch(&record, &store, &dir.path().join("frames"))
        .await
        .unwrap();
    assert_eq!((report.frames, report.missing.len()), (40, 0));
    farm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_runs_twice_commits_once_and_fetch_gets_each_frame_once() {
    let farm = ProcFarm::start();
    let _coordinator = farm.coordinator("coordinator", &[]);
    let a = farm.worker("guian", "a", &[]);
    let b = farm.worker("guian", "b", &[]);
    let client = farm.client().await;
    farm.wait_for_workers(&client, 2).await;
    // Different bytes on every run, like Blender's time-stamped PNGs.
    let script = "head -c 32 /dev/urandom > {output}/frame_{frame:04}.txt; sleep 1";
    let spec = farm.job(sh_flags("1", script)).await;
    // Catch the released task and put a second copy on the queue: a redelivery after a slow
    // worker came back.
    let mut queue = client.nats().subscribe("suanli.task.guian").await.unwrap();
    let job = client.submit(spec).await.unwrap().id;
    let task = tokio::time::timeout(JOB_LIMIT, queue.next())
        .await
        .unwrap()
        .unwrap();
    let js = async_nats::jetstream::new(client.nats().clone());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, "test-duplicate");
    js.publish_with_headers("suanli.task.guian", headers, task.payload)
        .await
        .unwrap()
        .await
        .unwrap();

    let status = wait_done(&client, &job).await;
    assert_eq!(status.state, JobState::Done);
    let events = stored_events(&client, &job).await;
    let runs = events
        .iter()
        .filter(|e| matches!(e.kind, TaskEventKind::Started))
        .count();
    assert_eq!(runs, 2, "both copies ran");
    let logs = a.log_text() + &b.log_text();
    assert_eq!(logs.matches("output committed").count(), 1, "{logs}");
    assert_eq!(
        logs.matches("another run committed this task first")
            .count(),
        1
    );
    // Both runs reported the one committed file.
    let completed: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            TaskEventKind::Completed { outputs, .. } => Some(outputs.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(completed.len(), 2);
    assert_eq!(completed[0], completed[1]);
    let record = client.job(&job).await.unwrap();
    let out = farm.path().join("frames");
    let report = fetch(&record, &farm.store(), &out).await.unwrap();
    assert_eq!((report.frames, report.downloaded), (1, 1));
    let files: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert_eq!(files.len(), 1);
    let fetched = std::fs::read(out.join("frame_0001.txt")).unwrap();
    assert_eq!(
        suanli_shared::ContentHash::of(&fetched),
        completed[0][0].hash
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_keeps_failing_a_job_is_blocklisted_and_another_finishes_it() {
    let farm = ProcFarm::start();
    let _coordinator = farm.coordinator("coordinator", &[]);
    let _bad = farm.worker("guian", "bad", &[]);
    let client = farm.client().await;
    farm.wait_for_workers(&client, 1).await;
    // Fails on the worker whose cache folder is cache-bad (a broken node), works elsewhere.
    let script = "case {output} in */cache-bad/*) echo 'GPU driver crashed' >&2; exit 9;; esac; \
                  printf ok > {output}/frame_{frame:04}.txt";
    let spec = farm
        .job(Overrides {
            max_retries: Some(6),
            ..sh_flags("1-4", script)
        })
        .await;
    let job = client.submit(spec).await.unwrap().id;
    let listed = tokio::time::timeout(JOB_LIMIT, async {
        loop {
            let s = client.status(&job).await.unwrap();
            if !s.blocklist.is_empty() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the failing worker was blocklisted");
    assert_eq!(listed.blocklist[0].worker.as_str(), "bad");
    assert_eq!(listed.blocklist[0].failures, 3);
    assert_ne!(
        listed.state,
        JobState::Failed,
        "no task exhausted its retries"
    );

    let _good = farm.worker("guian", "good", &[]);
    let status = wait_done(&client, &job).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    let page = client.tasks(&job, 0, 10).await.unwrap();
    assert!(page
        .tasks
        .iter()
        .all(|t| t.worker.as_ref().unwrap().as_str() == "good"));
    // The failures stay visible with their reasons.
    assert!(status
        .failures
        .iter()
        .all(|f| f.failure.worker.as_str() == "bad"
            && f.failure.stderr_tail.contains("GPU driver crashed")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_anywhere_is_refused_and_no_role_crashes() {
    let farm = ProcFarm::start();
    let mut coordinator = farm.coordinator("coordinator", &[]);
    let client = farm.client().await;
    assert!(
        coordinator
            .wait_for_log("coordinator ready", JOB_LIMIT)
            .await
    );
    let nc = client.nats().clone();
    let js = async_nats::jetstream::new(nc.clone());

    // Garbage on every subject the roles read.
    js.publish("suanli.task.guian", "{not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    js.publish(
        "suanli.task.guian",
        r#"{"job":"x","task":0,"key":"00","attempt":0}"#.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let garbage_event = nats::task_event_subject(
        &Studio::default(),
        &JobId::generate(),
        EventKind::Completed,
        &"guian".parse().unwrap(),
    );
    js.publish(garbage_event, "\u{0}\u{1}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let workers_kv = js.get_key_value(nats::WORKERS_BUCKET).await.unwrap();
    workers_kv
        .put("guian.ghost", "not a worker".into())
        .await
        .unwrap();
    let reply = nc
        .request(
            <suanli_shared::protocol::api::Submit as suanli_shared::protocol::api::Endpoint>::SUBJECT,
            "[]".into(),
        )
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&reply.payload).contains("malformed submit request"));

    // A damaged input blob: the task fails with the reason; nothing is committed.
    let store = farm.store();
    let shot = farm.path().join("shot");
    write(&shot.join("scene.txt"), "the scene");
    write(&shot.join("tex.txt"), "TEXTURE-BYTES");
    let flags = || Overrides {
        frames: Some("1".into()),
        scene: Some("scene.txt".into()),
        inputs: vec!["tex.txt".into()],
        renderer: Some("command".into()),
        ext: Some("txt".into()),
        // Two failed runs in all, so the one worker stays below the blocklist's three.
        max_retries: Some(0),
        argv: ["cp", "tex.txt", "{output}/frame_{frame:04}.txt"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    let spec = prepare(&store, flags(), &shot).await;
    let blob = farm.path().join("store").join(
        layout::cas(
            &Studio::default(),
            &suanli_shared::ContentHash::of(b"TEXTURE-BYTES"),
        )
        .as_ref(),
    );
    std::fs::write(&blob, "TEXTURE-BYTEZ").unwrap();
    let mut w = farm.worker("guian", "w", &[]);
    farm.wait_for_workers(&client, 1).await;
    let job = client.submit(spec.clone()).await.unwrap().id;
    let status = wait_done(&client, &job).await;
    assert_eq!(status.state, JobState::Failed, "{status:?}");
    let reason = &status.failures[0].failure.reason;
    assert!(
        reason.contains("hashes to") && reason.contains("expected"),
        "{reason}"
    );
    let key = client.tasks(&job, 0, 1).await.unwrap().tasks[0].key;
    assert!(!store
        .exists(&layout::output_manifest(&Studio::default(), &key))
        .await
        .unwrap());

    // Truncated: same story, and the store repaired by a re-upload makes retry succeed.
    std::fs::write(&blob, "TEXT").unwrap();
    client.retry(&job).await.unwrap();
    let status = wait_done(&client, &job).await;
    assert_eq!(status.state, JobState::Failed);
    let reason = &status.failures[0].failure.reason;
    assert!(reason.contains("has 4 bytes, expected 13"), "{reason}");
    // Submitting again uploads the blob the store lacks; the retry then renders.
    std::fs::remove_file(&blob).unwrap();
    let again = prepare(&store, flags(), &shot).await;
    assert_eq!(again, spec);
    client.retry(&job).await.unwrap();
    let status = wait_done(&client, &job).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");

    // Every role is still up.
    assert!(w.child.try_wait().unwrap().is_none(), "worker crashed");
    assert!(
        coordinator.child.try_wait().unwrap().is_none(),
        "coordinator crashed"
    );
    let log = w.log_text();
    assert!(log.contains("dropping a malformed task message"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cache_disk_fails_the_task_with_the_reason_and_the_worker_goes_on() {
    let farm = ProcFarm::start();
    let _coordinator = farm.coordinator("coordinator", &[]);
    let client = farm.client().await;
    // The worker's cache (and work folders) on a 256 KiB tmpfs of its own, in a private mount
    // namespace: a real ENOSPC, cleaned up with the process.
    let cache = farm.path().join("small-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let cache_str = cache.to_str().unwrap();
    let mut worker = farm.spawn(
        "worker",
        "unshare",
        &[
            "-m",
            "sh",
            "-c",
            "mount -t tmpfs -o size=256k tmpfs \"$0\" && exec \"$1\" worker --region guian \
             --name small --cache-dir \"$0\" --allow-any-command --sandbox off",
            cache_str,
            env!("CARGO_BIN_EXE_suanli"),
        ],
    );
    farm.wait_for_workers(&client, 1).await;
    let store = farm.store();
    let shot = farm.path().join("shot");
    write(&shot.join("scene.txt"), "scene");
    write(&shot.join("big.bin"), &"x".repeat(1 << 20));
    let flags = |inputs: Vec<std::path::PathBuf>, frame: &str| Overrides {
        frames: Some(frame.into()),
        scene: Some("scene.txt".into()),
        inputs,
        renderer: Some("command".into()),
        ext: Some("txt".into()),
        max_retries: Some(0),
        argv: ["sh", "-c", "printf ok > {output}/frame_{frame:04}.txt"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    let spec = prepare(&store, flags(vec!["big.bin".into()], "1"), &shot).await;
    let job = client.submit(spec).await.unwrap().id;
    let status = wait_done(&client, &job).await;
    assert_eq!(status.state, JobState::Failed, "{status:?}");
    let reason = &status.failures[0].failure.reason;
    assert!(reason.contains("No space left on device"), "{reason}");
    let key = client.tasks(&job, 0, 1).await.unwrap().tasks[0].key;
    assert!(!store
        .exists(&layout::output_manifest(&Studio::default(), &key))
        .await
        .unwrap());

    // The partial download was removed: the same worker renders the next job.
    let spec = prepare(&store, flags(vec![], "2"), &shot).await;
    let job = client.submit(spec).await.unwrap().id;
    assert_eq!(wait_done(&client, &job).await.state, JobState::Done);
    assert!(worker.child.try_wait().unwrap().is_none(), "worker crashed");
}
