//! `suanli events` through real processes: a follower killed mid-stream resumes with
//! `--since` without a gap or a repeat, and on a secure farm a studio reads its own events
//! while nats-server refuses it a reader of another studio's (each attempt made and its
//! refusal asserted).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use suanli::client::Client;
use suanli::events::EventLine;
use suanli::localfarm::{FarmOptions, LocalFarm};
use suanli_shared::access::Role;
use suanli_shared::nats;
use suanli_shared::protocol::{JobSpec, JobState};
use suanli_shared::store::Store;
use suanli_shared::{JobId, Studio};

const LIMIT: Duration = Duration::from_secs(120);
/// Events enough (about 1 MiB) for the server's flow control to ask the reader to keep up.
const BACKLOG: u64 = 40000;

async fn tiny_job(farm: &LocalFarm, studio: &str, name: &str) -> JobSpec {
    let studio: Studio = studio.parse().unwrap();
    let store = Store::open(&farm.store_url).unwrap();
    let inputs = common::empty_inputs_of(&store, &studio).await;
    JobSpec {
        name: name.into(),
        ..common::tiny_builtin(studio, &inputs)
    }
}

async fn run_job(client: &Client, spec: JobSpec) -> JobId {
    let id = client.submit(spec).await.unwrap().id;
    let done = client.wait(&id, Some(LIMIT), |_| {}).await.unwrap();
    assert_eq!(done.expect("finished in time").state, JobState::Done);
    id
}

/// `suanli events ARGS` as a child process with its stdout piped.
fn events_cmd(url: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_suanli"));
    cmd.arg("events")
        .args(args)
        .args(["--json", "--nats", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Reads JSON lines from a child until `done` says so, then kills it. A reader thread feeds
/// a channel so the deadline holds even when no line comes.
fn read_until(mut child: Child, mut done: impl FnMut(&[EventLine]) -> bool) -> Vec<EventLine> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + LIMIT;
    let mut got = Vec::new();
    while !done(&got) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(line)) => got.push(serde_json::from_str::<EventLine>(&line).unwrap()),
            _ => {
                child.kill().ok();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "events ended or stalled after {} lines: {}",
                    got.len(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
    // A disconnect the hard way: the process dies without a goodbye.
    child.kill().unwrap();
    child.wait().unwrap();
    got
}

fn is_done_of(line: &EventLine, job: &JobId) -> bool {
    line.kind == "job" && line.job == job.as_str() && line.event["state"] == "done"
}

/// Every stored event, read to the end (no `--follow`).
fn read_all(url: &str, extra: &[&str]) -> Vec<EventLine> {
    let out = events_cmd(url, extra).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_resumes_after_a_disconnect_without_gaps_or_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let farm = LocalFarm::start(FarmOptions::new(dir.path(), &["guian"]).unwrap())
        .await
        .unwrap();
    farm.wait_for_workers(LIMIT).await.unwrap();
    let client = Client::connect(&farm.nats_url).await.unwrap();
    let first = run_job(&client, tiny_job(&farm, "acme", "first").await).await;

    // Follow, take three events, and die.
    let child = events_cmd(&farm.nats_url, &["--follow"]).spawn().unwrap();
    let part1 = read_until(child, |got| got.len() >= 3);
    let last = part1.last().unwrap().seq;

    // More happens while nobody listens.
    // Other frames, so its tasks render instead of being cache hits.
    let spec = JobSpec {
        frames: "3-4".parse().unwrap(),
        ..tiny_job(&farm, "acme", "second").await
    };
    let second = run_job(&client, spec).await;

    // Resume after the last event handled, and follow until the second job is done.
    let child = events_cmd(&farm.nats_url, &["--follow", "--since", &last.to_string()])
        .spawn()
        .unwrap();
    let part2 = read_until(child, |got| got.iter().any(|l| is_done_of(l, &second)));

    // The union is exactly the stream, in order: the operator's reader sees every stored
    // event, so sequences run 1, 2, 3, … with none missing and none twice.
    let union: Vec<EventLine> = part1.iter().chain(&part2).cloned().collect();
    let seqs: Vec<u64> = union.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, (1..=union.len() as u64).collect::<Vec<_>>());
    let all = read_all(&farm.nats_url, &[]);
    assert_eq!(union, all[..union.len()]);
    assert!(all.iter().any(|l| is_done_of(l, &first)));
    // Both jobs' whole lives are there: submitted state, two tasks started and completed, done.
    for job in [&first, &second] {
        let kinds: Vec<&str> = all
            .iter()
            .filter(|l| l.job == job.as_str())
            .map(|l| l.kind.as_str())
            .collect();
        assert_eq!(
            kinds.iter().filter(|k| **k == "completed").count(),
            2,
            "{kinds:?}"
        );
        assert_eq!(
            kinds.iter().filter(|k| **k == "started").count(),
            2,
            "{kinds:?}"
        );
    }
    // --job narrows to one job; --since past the end reads nothing and exits.
    let only = read_all(&farm.nats_url, &["--job", second.as_str()]);
    assert!(!only.is_empty() && only.iter().all(|l| l.job == second.as_str()));
    let end = all.last().unwrap().seq.to_string();
    assert!(read_all(&farm.nats_url, &["--since", &end]).is_empty());
    // For people: one line an event, with its sequence.
    let out = Command::new(env!("CARGO_BIN_EXE_suanli"))
        .args(["events", "--job", second.as_str(), "--nats", &farm.nats_url])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success() && text.lines().count() == only.len(),
        "{text}"
    );
    assert!(text.lines().all(|l| l.starts_with('#')), "{text}");
    assert!(text.contains(&format!("acme {second} job done")), "{text}");
    assert!(text.contains("completed: 1 files"), "{text}");
    farm.stop().await;
}

/// A follower process whose lines arrive on a channel, read in steps.
struct Follower {
    child: Child,
    lines: std::sync::mpsc::Receiver<std::io::Result<String>>,
    got: Vec<EventLine>,
}

impl Follower {
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            got: Vec::new(),
        }
    }

    /// Reads until `done` holds of everything read so far (panics past [`LIMIT`]).
    fn until(&mut self, mut done: impl FnMut(&[EventLine]) -> bool) {
        let deadline = std::time::Instant::now() + LIMIT;
        while !done(&self.got) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(Ok(line)) => self.got.push(serde_json::from_str(&line).unwrap()),
                other => panic!(
                    "the follower stopped after {} lines: {other:?}",
                    self.got.len()
                ),
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_rides_out_a_nats_restart_without_gaps_or_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let mut farm = LocalFarm::start(FarmOptions::new(dir.path(), &["guian"]).unwrap())
        .await
        .unwrap();
    farm.wait_for_workers(LIMIT).await.unwrap();
    let client = Client::connect(&farm.nats_url).await.unwrap();
    let first = run_job(&client, tiny_job(&farm, "acme", "first").await).await;
    let mut follower = Follower::start(events_cmd(&farm.nats_url, &["--follow"]));
    follower.until(|got| got.iter().any(|l| is_done_of(l, &first)));

    // The server goes away and comes back (same port, same stored stream); the follower
    // keeps going by itself.
    farm.nats.as_mut().unwrap().restart().unwrap();
    let spec = JobSpec {
        frames: "3-4".parse().unwrap(),
        ..tiny_job(&farm, "acme", "second").await
    };
    // The coordinator answers again once its connection is back.
    let deadline = tokio::time::Instant::now() + LIMIT;
    let second = loop {
        match client.submit(spec.clone()).await {
            Ok(reply) => break reply.id,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "coordinator not back yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the coordinator did not come back: {e}"),
        }
    };
    let done = client.wait(&second, Some(LIMIT), |_| {}).await.unwrap();
    assert_eq!(done.expect("finished in time").state, JobState::Done);
    follower.until(|got| got.iter().any(|l| is_done_of(l, &second)));
    let seqs: Vec<u64> = follower.got.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let all = read_all(&farm.nats_url, &[]);
    assert_eq!(follower.got, all[..seqs.len()]);
    drop(follower);
    farm.stop().await;
}

fn studio_role(s: &str) -> Role {
    Role::Studio(s.parse().unwrap())
}

/// The CLI as `studio` on the secure farm, killed if it does not end within [`LIMIT`].
async fn studio_events(farm: &LocalFarm, auth: &Path, studio: &str) -> Vec<EventLine> {
    events_as(farm, auth, &format!("studio-{studio}.nk")).await
}

/// The CLI with the identity in `auth/file`, killed if it does not end within [`LIMIT`].
async fn events_as(farm: &LocalFarm, auth: &Path, file: &str) -> Vec<EventLine> {
    let mut cmd = events_cmd(&farm.nats_url, &[]);
    cmd.arg("--identity")
        .arg(auth.join(file))
        .arg("--ca")
        .arg(auth.join("ca.pem"));
    let out = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(LIMIT, out)
        .await
        .unwrap_or_else(|_| panic!("events as {file} did not end: a stalled reader"))
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A raw consumer-create request on `subject` with `config`, as a studio might forge it.
async fn create_request(
    client: &async_nats::Client,
    subject: &str,
    config: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let body = serde_json::json!({"stream_name": nats::EVENTS_STREAM, "config": config});
    let reply = client
        .request(subject.to_string(), Bytes::from(body.to_string()))
        .await
        .map_err(|e| e.to_string())?;
    Ok(serde_json::from_slice(&reply.payload).unwrap())
}

/// Waits for the server to report a permissions violation naming `subject`.
async fn assert_violation(
    denied: &mut tokio::sync::watch::Receiver<Option<String>>,
    subject: &str,
) {
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(e) = denied.borrow_and_update().clone() {
                if e.contains(subject) {
                    return e;
                }
            }
            denied.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not refused: {subject}"));
    assert!(
        seen.to_ascii_lowercase().contains("permissions violation"),
        "{seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_studio_reads_its_own_events_and_no_one_elses() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = FarmOptions::new(dir.path(), &["guian"]).unwrap();
    options.secure = true;
    options.studios = vec!["acme".parse().unwrap(), "blue".parse().unwrap()];
    let farm = LocalFarm::start(options).await.unwrap();
    let auth = farm.auth_dir.clone().unwrap();
    let acme = Client::connect_with(&farm.nats_url, &farm.access(&studio_role("acme")))
        .await
        .unwrap();
    let blue = Client::connect_with(&farm.nats_url, &farm.access(&studio_role("blue")))
        .await
        .unwrap();
    let a = run_job(&acme, tiny_job(&farm, "acme", "acme-shot").await).await;
    let b = run_job(&blue, tiny_job(&farm, "blue", "blue-shot").await).await;

    // A backlog large enough that the server asks the reader for flow control (which a
    // studio's permissions must allow, or delivery stalls): job events of a job the
    // coordinator does not know, which it ignores.
    let coord = nats::open(&farm.nats_url, "backlog", &farm.access(&Role::Coordinator))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(coord.client.clone());
    let ghost = JobId::generate();
    let subject = nats::job_event_subject(&"acme".parse().unwrap(), &ghost);
    let mut acks = Vec::new();
    for i in 0..BACKLOG {
        let ev = suanli_shared::protocol::JobEvent {
            job: ghost.clone(),
            state: JobState::Running,
            at_ms: i,
            reason: Some("x".repeat(200)),
        };
        let body = suanli_shared::protocol::encode(&ev, "job event").unwrap();
        acks.push(js.publish(subject.clone(), body).await.unwrap());
        // The context bounds acknowledgements in flight: collect them in batches.
        if acks.len() == 500 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }

    // Each studio's reader sees its own jobs' whole lives and nothing of the other's.
    let mine = studio_events(&farm, &auth, "acme").await;
    assert!(mine.iter().any(|l| is_done_of(l, &a)), "{mine:?}");
    assert!(mine.iter().all(|l| l.studio == "acme"));
    assert_eq!(
        mine.iter().filter(|l| l.job == ghost.as_str()).count() as u64,
        BACKLOG
    );
    let seqs: Vec<u64> = mine.iter().map(|l| l.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order, once");
    let theirs = studio_events(&farm, &auth, "blue").await;
    assert!(theirs.iter().any(|l| is_done_of(l, &b)));
    assert!(theirs.iter().all(|l| l.studio == "blue"));
    // The operator reads everyone's.
    let every = events_as(&farm, &auth, "operator.nk").await;
    assert_eq!(every.len(), mine.len() + theirs.len());
    assert!(every.iter().any(|l| is_done_of(l, &b)) && every.iter().any(|l| is_done_of(l, &a)));

    // Acme forging readers of blue's events: every attempt refused.
    let conn = nats::open(&farm.nats_url, "forger", &farm.access(&studio_role("acme")))
        .await
        .unwrap();
    let mut denied = conn.denied.clone();
    let c = conn.client.clone();
    let inbox = c.new_inbox();
    let push = |filter: serde_json::Value| {
        let mut config = serde_json::json!({
            "name": "forged",
            "deliver_subject": inbox,
            "ack_policy": "none",
            "deliver_policy": "all",
        });
        config
            .as_object_mut()
            .unwrap()
            .extend(filter.as_object().unwrap().clone());
        config
    };
    // 1. Blue's filter in the create subject: the server drops it as a permissions violation.
    let subject = "$JS.API.CONSUMER.CREATE.SUANLI_EVENTS.forged.suanli.evt.blue.>";
    let attempt = create_request(
        &c,
        subject,
        push(serde_json::json!({"filter_subject": "suanli.evt.blue.>"})),
    );
    tokio::select! {
        r = attempt => panic!("a forged create was answered: {r:?}"),
        _ = assert_violation(&mut denied, subject) => {}
    }
    // 2. Its own filter in the subject, blue's in the config: JetStream refuses the mismatch.
    let own = "$JS.API.CONSUMER.CREATE.SUANLI_EVENTS.forged.suanli.evt.acme.>";
    for filter in [
        serde_json::json!({"filter_subject": "suanli.evt.blue.>"}),
        serde_json::json!({"filter_subject": "suanli.evt.>"}),
        serde_json::json!({"filter_subjects": ["suanli.evt.blue.>"]}),
        serde_json::json!({"filter_subjects": ["suanli.evt.acme.>", "suanli.evt.blue.>"]}),
    ] {
        let reply = create_request(&c, own, push(filter.clone())).await.unwrap();
        assert!(reply.get("error").is_some(), "{filter}: {reply}");
    }
    // 3. The plain create subject without a filter, and the coordinator's durable consumer
    //    rewritten to acme's filter (which would blind it to blue's events): refused.
    for subject in [
        "$JS.API.CONSUMER.CREATE.SUANLI_EVENTS",
        "$JS.API.CONSUMER.DURABLE.CREATE.SUANLI_EVENTS.coordinator",
        "$JS.API.CONSUMER.MSG.NEXT.SUANLI_EVENTS.coordinator",
        "$JS.API.CONSUMER.DELETE.SUANLI_EVENTS.coordinator",
    ] {
        let attempt = create_request(&c, subject, push(serde_json::json!({})));
        tokio::select! {
            r = attempt => panic!("{subject} was answered: {r:?}"),
            _ = assert_violation(&mut denied, subject) => {}
        }
    }
    let hijack = "$JS.API.CONSUMER.CREATE.SUANLI_EVENTS.coordinator.suanli.evt.acme.>";
    let reply = create_request(
        &c,
        hijack,
        serde_json::json!({
            "durable_name": "coordinator",
            "name": "coordinator",
            "filter_subject": "suanli.evt.acme.>",
            "ack_policy": "explicit",
            "ack_wait": 5_000_000_000u64,
            "max_ack_pending": 1024,
            "deliver_policy": "all",
        }),
    );
    let refused = tokio::select! {
        r = reply => r.map(|v| v.get("error").is_some()).unwrap_or(true),
        _ = assert_violation(&mut denied, hijack) => true,
    };
    assert!(refused, "acme rewrote the coordinator's consumer");
    // The coordinator's consumer still reads every event: a blue job still finishes.
    let coord = nats::open(&farm.nats_url, "check", &farm.access(&Role::Coordinator))
        .await
        .unwrap();
    let info = async_nats::jetstream::new(coord.client)
        .get_stream(nats::EVENTS_STREAM)
        .await
        .unwrap()
        .consumer_info(nats::COORDINATOR_CONSUMER)
        .await
        .unwrap();
    assert_eq!(info.config.filter_subject, "");
    run_job(&blue, tiny_job(&farm, "blue", "blue-again").await).await;
    farm.stop().await;
}
