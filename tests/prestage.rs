//! Pre-staging with real processes: a job whose task cannot start (the region's one slot is
//! busy) has its inputs fetched into the region's cache before its task starts, `status` says
//! so per region, the task then moves no input bytes, and staging the same inputs again moves
//! nothing.

mod common;

use std::time::Duration;

use common::{sh_flags, wait_for_text, wait_until, write, ProcFarm, Role};
use futures::StreamExt;
use suanli::jobfile::Overrides;
use suanli_shared::nats;
use suanli_shared::protocol::{encode, JobState, StageProgress, StageRequest, TaskState};
use suanli_shared::Region;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use suanli_shared::chunks::pseudo_random as noise;

const LIMIT: Duration = Duration::from_secs(120);

/// The coordinator's `suanli_transfer_bytes_total` into `region`, from its `/metrics`.
async fn bytes_in_metric(coordinator: &Role, region: &str) -> f64 {
    let prefix = "serving metrics on http://";
    let addr: std::net::SocketAddr = wait_until(Duration::from_secs(30), || {
        let log = coordinator.log_text();
        let rest = &log[log.find(prefix)? + prefix.len()..];
        rest[..rest.find("/metrics")?].parse().ok()
    })
    .await
    .expect("the coordinator serves metrics");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(LIMIT, s.read_to_string(&mut text))
        .await
        .unwrap()
        .unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
    let sample = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "suanli_transfer_bytes_total"
                && s.labels.get("region") == Some(region)
                && s.labels.get("direction") == Some("in")
        })
        .expect("a transfer series");
    match sample.value {
        prometheus_parse::Value::Counter(n) | prometheus_parse::Value::Untyped(n) => n,
        ref v => panic!("{v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_job_has_its_inputs_staged_before_its_task_starts() {
    let farm = ProcFarm::start();
    let coordinator = farm.coordinator("coordinator", &["--metrics-listen", "127.0.0.1:0"]);
    let worker = farm.worker("guian", "w1", &["--slots", "1"]);
    let client = farm.client().await;
    farm.wait_for_workers(&client, 1).await;

    // Job A holds the region's one slot until the test lets it go.
    let started = farm.path().join("a-started");
    let go = farm.path().join("a-go");
    let script = format!(
        "echo up > {s}; while [ ! -e {g} ]; do sleep 0.05; done; \
         printf a > {{output}}/frame_{{frame:04}}.txt",
        s = started.display(),
        g = go.display()
    );
    let a = client
        .submit(farm.job(sh_flags("1", &script)).await)
        .await
        .unwrap();
    wait_for_text(&started).await;

    // Job B: a chunked 40 MiB input (above the 16 MiB chunking threshold) and a scene.
    let shot = farm.path().join("shot-b");
    write(&shot.join("scene.txt"), "scene b");
    std::fs::write(shot.join("plate.bin"), noise(40 << 20, 7)).unwrap();
    let flags = Overrides {
        inputs: vec![shot.join("plate.bin")],
        ..sh_flags(
            "1",
            "cat plate.bin > /dev/null; printf b > {output}/frame_{frame:04}.txt",
        )
    };
    let spec = common::prepare(&farm.store(), flags, &shot).await;
    let b = client.submit(spec.clone()).await.unwrap();

    // Its inputs arrive in guian while its task waits behind A.
    let deadline = std::time::Instant::now() + LIMIT;
    let status = loop {
        let s = client.status(&b.id).await.unwrap();
        if s.inputs_in.get("guian").is_some_and(|p| p.done) {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "never staged: {s:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let p = status.inputs_in["guian"];
    assert!(p.total_bytes >= 40 << 20, "{p:?}");
    assert_eq!(p.present_bytes, p.total_bytes, "{p:?}");
    assert!(p.moved_bytes >= 40 << 20, "chunks moved: {p:?}");
    assert_eq!(
        (status.tasks.running, status.tasks.done),
        (0, 0),
        "B's task has not started: {status:#?}"
    );
    let a_now = client.status(&a.id).await.unwrap();
    assert_eq!(a_now.tasks.running, 1, "A still holds the slot");
    // The whole file is in the worker's cache, laid out nowhere.
    let cas = farm.path().join("cache-w1/cas/default");
    let plate_hash = suanli_shared::ContentHash::of(&noise(40 << 20, 7));
    assert_eq!(
        std::fs::metadata(cas.join(plate_hash.to_hex()))
            .map(|m| m.len())
            .ok(),
        Some(40 << 20),
        "the rebuilt input is in the cache"
    );

    // Staging the same inputs again (another request for the region) moves nothing.
    let mut reports = client
        .nats()
        .subscribe(nats::staged_subject(&"guian".parse::<Region>().unwrap()))
        .await
        .unwrap();
    client.nats().flush().await.unwrap();
    let again = StageRequest {
        job: b.id.clone(),
        studio: spec.studio.clone(),
        inputs: spec.inputs,
        region: "guian".parse().unwrap(),
    };
    client
        .nats()
        .publish(
            nats::stage_subject(&again.region),
            encode(&again, "stage request").unwrap(),
        )
        .await
        .unwrap();
    let last = tokio::time::timeout(LIMIT, async {
        while let Some(msg) = reports.next().await {
            let p = StageProgress::decode(&msg.payload).unwrap();
            if p.done {
                return p;
            }
        }
        panic!("the reports ended");
    })
    .await
    .expect("the second staging reported its end");
    assert_eq!(last.error, None);
    assert_eq!(last.present_bytes, last.total_bytes);
    assert_eq!(last.moved_bytes, 0, "nothing moved twice: {last:?}");

    // Let A finish: B's task starts and finds its input there (no input bytes moved by it).
    write(&go, "go");
    let done = client
        .wait(&b.id, Some(LIMIT), |_| {})
        .await
        .unwrap()
        .expect("B finished");
    assert_eq!(done.state, JobState::Done, "{done:#?}");
    let records = client.tasks(&b.id, 0, 10).await.unwrap().tasks;
    assert!(records.iter().all(|t| t.state == TaskState::Done));
    assert!(
        records.iter().all(|t| t.bytes_in == 0),
        "the task moved input bytes: {records:#?}"
    );
    // The region's input bytes are the staged chunks, counted once.
    assert_eq!(done.regions["guian"].bytes_in, p.moved_bytes, "{done:#?}");
    // Farm-wide, the metric is both jobs' input bytes: A's task's and B's staged chunks.
    let a_done = client
        .wait(&a.id, Some(LIMIT), |_| {})
        .await
        .unwrap()
        .expect("A finished");
    assert_eq!(
        bytes_in_metric(&coordinator, "guian").await,
        (a_done.regions["guian"].bytes_in + p.moved_bytes) as f64,
        "the metric counts the staged chunks too"
    );
    assert!(worker.log_text().contains("pre-staging inputs"));
}
