//! Recovery in seconds, not ack waits: a worker SIGKILLed mid-task and restarted under its name,
//! or one whose process is known dead on the coordinator's host, has its tasks released again at
//! once as a new attempt, instead of after the region queue's ack wait (60 s here, longer than
//! these jobs take). The proof is the order of the stored events and the attempt numbers: the
//! task completes as attempt 1, released by the coordinator, and attempt 0 never starts again
//! (a redelivery after the ack wait would restart attempt 0). Roles are real processes.

mod common;

use std::time::Duration;

use common::{sh_flags, wait_for_text, wait_until, write, ProcFarm, Role};
use futures::StreamExt;
use suanli::client::Client;
use suanli_shared::nats;
use suanli_shared::protocol::{JobEvent, JobSpec, JobState, JobStatus, TaskEvent, TaskEventKind};
use suanli_shared::{JobId, Studio};

/// Longer than the queue's ack wait: a job that needed a redelivery would still end in time,
/// and only the attempt numbers tell the two paths apart.
const JOB_LIMIT: Duration = Duration::from_secs(120);
/// The region queue's ack wait: a redelivery would take this long.
const ACK_WAIT: &str = "60s";

async fn wait_done(client: &Client, job: &JobId) -> JobStatus {
    client
        .wait(job, Some(JOB_LIMIT), |_| {})
        .await
        .expect("wait works")
        .expect("the job finished in time")
}

/// A one-frame command job whose first run records its pid and renders "forever"; later runs
/// finish at once.
async fn slow_first_run(farm: &ProcFarm) -> (JobSpec, std::path::PathBuf) {
    let marker = write(&farm.path().join("slow"), "");
    let pid_file = farm.path().join("render.pid");
    let script = format!(
        "printf 'frame {{frame}}' > {{output}}/frame_{{frame:04}}.txt; \
         if [ -e {m} ]; then rm {m}; echo $$ > {p}; exec sleep 600; fi",
        m = marker.display(),
        p = pid_file.display()
    );
    let mut flags = sh_flags("1", &script);
    flags.max_retries = Some(3);
    (farm.job(flags).await, pid_file)
}

/// Every stored event of a job, task and job events, in stream order.
async fn stored_events(client: &Client, job: &JobId) -> Vec<Result<TaskEvent, JobEvent>> {
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
    let mut batch = consumer
        .fetch()
        .max_messages(10_000)
        .messages()
        .await
        .unwrap();
    while let Some(Ok(m)) = batch.next().await {
        if let Ok(ev) = serde_json::from_slice::<TaskEvent>(&m.payload) {
            out.push(Ok(ev));
        } else if let Ok(ev) = serde_json::from_slice::<JobEvent>(&m.payload) {
            out.push(Err(ev));
        }
    }
    out
}

/// `(kind, attempt, worker)` of each task event, and the reasons of the job events, in order.
fn story(events: &[Result<TaskEvent, JobEvent>]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            Ok(t) => {
                let kind = match &t.kind {
                    TaskEventKind::Started => "started",
                    TaskEventKind::Completed { .. } => "completed",
                    TaskEventKind::Failed { .. } => "failed",
                    TaskEventKind::Progress { .. } => "progress",
                };
                format!("{kind} attempt {} on {}", t.attempt, t.worker)
            }
            Err(j) => format!(
                "job {}: {}",
                j.state.as_str(),
                j.reason.clone().unwrap_or_default()
            ),
        })
        .filter(|s| !s.starts_with("progress"))
        .collect()
}

/// One counter of the coordinator's `/metrics` (it was started with `--metrics-listen`), read
/// with a Prometheus text parser.
async fn counter(coordinator: &Role, name: &str, label: Option<(&str, &str)>) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let prefix = "serving metrics on http://";
    let addr: std::net::SocketAddr = wait_until(Duration::from_secs(30), || {
        let log = coordinator.log_text();
        let rest = &log[log.find(prefix)? + prefix.len()..];
        rest[..rest.find("/metrics")?].parse().ok()
    })
    .await
    .expect("the coordinator logs its metrics address");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no {name} {label:?}"));
    match sample.value {
        prometheus_parse::Value::Counter(v) => v,
        ref other => panic!("{name} is not a counter: {other:?}"),
    }
}

/// Checks the story of a task taken back from `worker`: attempt 0 started there, the coordinator
/// announced the re-release (`why`), then attempt 1 started and completed on `finisher`, and
/// attempt 0 never started again.
fn assert_released_again(story: &[String], worker: &str, why: &str, finisher: &str) {
    let at = |needle: &str| {
        story
            .iter()
            .position(|s| s.contains(needle))
            .unwrap_or_else(|| panic!("no '{needle}' in {story:#?}"))
    };
    let first = at(&format!("started attempt 0 on {worker}"));
    let announced = at(&format!("worker {worker} of region guian {why}"));
    let restarted = at(&format!("started attempt 1 on {finisher}"));
    let completed = at(&format!("completed attempt 1 on {finisher}"));
    assert!(
        first < announced && announced < restarted && restarted < completed,
        "{story:#?}"
    );
    let starts_of_0 = story
        .iter()
        .filter(|s| s.starts_with("started attempt 0"))
        .count();
    assert_eq!(starts_of_0, 1, "attempt 0 was redelivered: {story:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_task_and_restarted_gets_its_task_back_as_a_new_attempt_at_once() {
    let farm = ProcFarm::start();
    let coordinator = farm.coordinator("coordinator", &["--metrics-listen", "127.0.0.1:0"]);
    let mut a = farm.worker("guian", "a", &["--ack-wait", ACK_WAIT]);
    let client = farm.client().await;
    farm.wait_for_workers(&client, 1).await;

    let (spec, pid_file) = slow_first_run(&farm).await;
    let job = client.submit(spec).await.unwrap().id;
    wait_for_text(&pid_file).await;
    a.kill9();
    // The same name on the same host: it takes its name back at once (its old pid is gone),
    // and the coordinator sees a new incarnation.
    let _a = farm.worker("guian", "a", &["--ack-wait", ACK_WAIT]);

    let status = wait_done(&client, &job).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    let page = client.tasks(&job, 0, 10).await.unwrap();
    assert_eq!(page.tasks[0].attempt, 1, "{:?}", page.tasks[0]);
    let story = story(&stored_events(&client, &job).await);
    assert_released_again(&story, "a", "restarted", "a");
    let rereleased = Some(("reason", "worker_restart"));
    assert_eq!(
        counter(&coordinator, "suanli_task_rereleases_total", rereleased).await,
        1.0
    );
    assert_eq!(
        counter(&coordinator, "suanli_task_redeliveries_total", None).await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_known_dead_on_this_host_has_its_task_taken_by_another_at_once() {
    let farm = ProcFarm::start();
    let _coordinator = farm.coordinator("coordinator", &[]);
    let mut a = farm.worker("guian", "a", &["--ack-wait", ACK_WAIT]);
    let client = farm.client().await;
    farm.wait_for_workers(&client, 1).await;

    let (spec, pid_file) = slow_first_run(&farm).await;
    let job = client.submit(spec).await.unwrap().id;
    wait_for_text(&pid_file).await;
    let _b = farm.worker("guian", "b", &["--ack-wait", ACK_WAIT]);
    farm.wait_for_workers(&client, 2).await;
    // Not restarted: the coordinator, on the same host, finds its process gone and its
    // heartbeats stopped.
    a.kill9();

    let status = wait_done(&client, &job).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    let story = story(&stored_events(&client, &job).await);
    assert_released_again(&story, "a", "died", "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fast_recovery_the_task_waits_for_the_queue_to_redeliver_it() {
    // The baseline the fast path is measured against (scripts/chaos.sh --slow-recovery): the
    // same attempt is redelivered after the ack wait (3 s here, to keep the test short).
    let farm = ProcFarm::start();
    let coordinator = farm.coordinator(
        "coordinator",
        &["--no-fast-recovery", "--metrics-listen", "127.0.0.1:0"],
    );
    let mut a = farm.worker("guian", "a", &["--ack-wait", "3s"]);
    let client = farm.client().await;
    farm.wait_for_workers(&client, 1).await;

    let (spec, pid_file) = slow_first_run(&farm).await;
    let job = client.submit(spec).await.unwrap().id;
    wait_for_text(&pid_file).await;
    a.kill9();
    let _a = farm.worker("guian", "a", &["--ack-wait", "3s"]);

    let status = wait_done(&client, &job).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    let story = story(&stored_events(&client, &job).await);
    let starts_of_0 = story
        .iter()
        .filter(|s| s.starts_with("started attempt 0"))
        .count();
    assert_eq!(
        starts_of_0, 2,
        "attempt 0 redelivered, none released again: {story:#?}"
    );
    assert!(
        !story.iter().any(|s| s.contains("released again")),
        "{story:#?}"
    );
    assert_eq!(
        counter(&coordinator, "suanli_task_redeliveries_total", None).await,
        1.0
    );
    let rereleased = Some(("reason", "worker_restart"));
    assert_eq!(
        counter(&coordinator, "suanli_task_rereleases_total", rereleased).await,
        0.0
    );
}
