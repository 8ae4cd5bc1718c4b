//! Prometheus metrics end to end: a farm of real `suanli` processes serving `--metrics-listen`
//! renders a known job; the coordinator's and the worker's `/metrics` are scraped over HTTP and
//! parsed with a Prometheus text parser (`prometheus-parse`), and the values must be the ones
//! the job implies (tasks done, bytes the store holds, cache misses then hits on a rerun). A
//! bad address is refused with a clear error, and the Grafana dashboard under `deploy/` names
//! only series a live farm serves.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::{sh_flags, wait_until, ProcFarm, Role};
use prometheus_parse::{Sample, Scrape, Value};
use suanli::client::Client;
use suanli_shared::ledger::Ledger;
use suanli_shared::protocol::{JobState, JobStatus};
use suanli_shared::{JobId, Studio};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const JOB_LIMIT: Duration = Duration::from_secs(120);

async fn wait_done(client: &Client, job: &JobId) -> JobStatus {
    client
        .wait(job, Some(JOB_LIMIT), |_| {})
        .await
        .expect("wait works")
        .expect("the job finished in time")
}

/// The address a role logged for its metrics endpoint (it was given port 0).
async fn metrics_addr(role: &Role) -> SocketAddr {
    let prefix = "serving metrics on http://";
    let found = wait_until(Duration::from_secs(30), || {
        let log = role.log_text();
        let at = log.find(prefix)?;
        let rest = &log[at + prefix.len()..];
        rest[..rest.find("/metrics")?].parse().ok()
    })
    .await;
    found.unwrap_or_else(|| {
        panic!(
            "no metrics address in {}:\n{}",
            role.log.display(),
            role.log_text()
        )
    })
}

/// `GET path` over plain HTTP: the status line and the body.
async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut text))
        .await
        .expect("the endpoint answers in time")
        .unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    (head.lines().next().unwrap().to_string(), body.to_string())
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("a valid exposition")
}

fn number(v: &Value) -> f64 {
    match v {
        Value::Counter(n) | Value::Gauge(n) | Value::Untyped(n) => *n,
        Value::Histogram(buckets) => buckets
            .iter()
            .find(|b| b.less_than.is_infinite())
            .map(|b| b.count)
            .unwrap_or(0.0),
        Value::Summary(_) => panic!("no summaries are served"),
    }
}

/// The value of one series: `name` with exactly these labels (a histogram: its count).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "one series {name}{labels:?} expected, found {matching:?}"
    );
    number(&matching[0].value)
}

/// Every metric name a scrape holds (histograms under their family name and its `_bucket`,
/// `_sum` and `_count` series).
fn names(scrape: &Scrape) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for s in &scrape.samples {
        out.insert(s.metric.clone());
        if let Value::Histogram(_) = s.value {
            for suffix in ["_bucket", "_sum", "_count"] {
                out.insert(format!("{}{suffix}", s.metric));
            }
        }
    }
    out
}

/// Frames of a command job: `frame N` in `frame_000N.txt` (7 bytes each for N < 10).
fn frame_job(frames: &str) -> suanli::jobfile::Overrides {
    let mut flags = sh_flags(
        frames,
        "cat {scene} > /dev/null; printf 'frame {frame}' > {output}/frame_{frame:04}.txt",
    );
    flags.chunk = Some(1);
    flags
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_farm_serves_metrics_with_the_values_of_a_known_job() {
    let farm = ProcFarm::start();
    let catalog =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/regions.example.toml");
    let coordinator = farm.coordinator(
        "coordinator",
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--catalog",
            catalog.to_str().unwrap(),
            // Whether a staging or the first task looks the input up first is a race; the
            // counts below are of tasks alone (tests/prestage.rs covers staging).
            "--no-prestage",
        ],
    );
    let worker = farm.worker("guian", "w1", &["--metrics-listen", "127.0.0.1:0"]);
    let client = farm.client().await;
    farm.wait_for_workers(&client, 1).await;
    let (c_addr, w_addr) = (
        metrics_addr(&coordinator).await,
        metrics_addr(&worker).await,
    );

    // Anything but GET /metrics is 404.
    let (status, _) = http_get(c_addr, "/").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    // Three one-frame tasks over one 5-byte input, `scene.txt`.
    let spec = farm.job(frame_job("1-3")).await;
    let job = client.submit(spec).await.unwrap().id;
    assert_eq!(wait_done(&client, &job).await.state, JobState::Done);

    let c = scrape(c_addr).await;
    assert_eq!(value(&c, "suanli_lease_holder", &[]), 1.0);
    assert_eq!(value(&c, "suanli_jobs", &[("state", "done")]), 1.0);
    assert_eq!(value(&c, "suanli_jobs", &[("state", "running")]), 0.0);
    assert_eq!(value(&c, "suanli_tasks", &[("state", "done")]), 3.0);
    assert_eq!(value(&c, "suanli_tasks", &[("state", "pending")]), 0.0);
    let here = [("renderer", "command"), ("region", "guian")];
    assert_eq!(value(&c, "suanli_tasks_completed_total", &here), 3.0);
    assert_eq!(value(&c, "suanli_task_duration_seconds", &here), 3.0);
    assert_eq!(
        value(&c, "suanli_task_release_to_start_seconds", &here),
        3.0
    );
    assert_eq!(
        value(&c, "suanli_region_workers", &[("region", "guian")]),
        1.0
    );
    assert_eq!(
        value(&c, "suanli_region_slots", &[("region", "guian")]),
        1.0
    );
    assert_eq!(value(&c, "suanli_queue_depth", &[("region", "guian")]), 0.0);
    let inward = [("region", "guian"), ("direction", "in")];
    let outward = [("region", "guian"), ("direction", "out")];
    assert_eq!(value(&c, "suanli_transfer_bytes_total", &inward), 5.0);
    assert_eq!(value(&c, "suanli_transfer_bytes_total", &outward), 21.0);
    // Cost, energy and carbon are the ledger's, in base units.
    let ledger = Ledger::of(&client.jobs().await.unwrap());
    let figures = &ledger.regions["guian"];
    assert!(figures.cost > 0.0 && figures.carbon_kg > 0.0, "{figures:?}");
    let close = |metric: f64, ledger: f64| (metric - ledger).abs() <= 1e-9 * ledger.abs().max(1.0);
    let cost = value(
        &c,
        "suanli_cost_total",
        &[("region", "guian"), ("currency", "CNY")],
    );
    assert!(close(cost, figures.cost), "{cost} vs {}", figures.cost);
    let joules = value(&c, "suanli_energy_joules_total", &[("region", "guian")]);
    assert!(
        close(joules, figures.energy_kwh * 3.6e6),
        "{joules} vs {figures:?}"
    );
    let grams = value(&c, "suanli_carbon_grams_total", &[("region", "guian")]);
    assert!(
        close(grams, figures.carbon_kg * 1000.0),
        "{grams} vs {figures:?}"
    );

    // What the worker uploaded is what the store holds.
    let store = farm.store();
    let outputs = suanli_shared::layout::studio_prefix(&Studio::default())
        .clone()
        .join("outputs");
    let mut stored = 0u64;
    for key in store.list(&outputs).await.unwrap() {
        if !key.as_ref().ends_with("manifest.json") {
            stored += store.get_bytes(&key).await.unwrap().len() as u64;
        }
    }
    assert_eq!(stored, 21);
    let w = scrape(w_addr).await;
    assert_eq!(
        value(&w, "suanli_worker_upload_bytes_total", &[]),
        stored as f64
    );
    assert_eq!(value(&w, "suanli_worker_uploads_total", &[]), 3.0);
    assert!(value(&w, "suanli_worker_upload_seconds_total", &[]) > 0.0);
    assert_eq!(
        value(&w, "suanli_worker_tasks_total", &[("outcome", "completed")]),
        3.0
    );
    assert_eq!(
        value(
            &w,
            "suanli_worker_task_seconds",
            &[("outcome", "completed")]
        ),
        3.0
    );
    assert_eq!(value(&w, "suanli_worker_cache_misses_total", &[]), 1.0);
    assert_eq!(value(&w, "suanli_worker_cache_hits_total", &[]), 2.0);
    assert_eq!(value(&w, "suanli_worker_download_bytes_total", &[]), 5.0);
    assert_eq!(value(&w, "suanli_worker_cache_used_bytes", &[]), 5.0);
    assert_eq!(value(&w, "suanli_worker_slots", &[]), 1.0);
    assert_eq!(value(&w, "suanli_worker_busy_slots", &[]), 0.0);

    // A rerun over the same input: every blob comes from the cache, nothing is downloaded.
    let spec = farm.job(frame_job("4-5")).await;
    let again = client.submit(spec).await.unwrap().id;
    assert_eq!(wait_done(&client, &again).await.state, JobState::Done);
    let w = scrape(w_addr).await;
    assert_eq!(value(&w, "suanli_worker_cache_hits_total", &[]), 4.0);
    assert_eq!(value(&w, "suanli_worker_cache_misses_total", &[]), 1.0);
    assert_eq!(value(&w, "suanli_worker_download_bytes_total", &[]), 5.0);
    assert_eq!(value(&w, "suanli_worker_upload_bytes_total", &[]), 35.0);
    let c = scrape(c_addr).await;
    assert_eq!(value(&c, "suanli_jobs", &[("state", "done")]), 2.0);
    assert_eq!(value(&c, "suanli_tasks", &[("state", "done")]), 5.0);
    assert_eq!(value(&c, "suanli_transfer_bytes_total", &inward), 5.0);

    // The same frames again: cache hits at submit, counted as cached, never rendered.
    let spec = farm.job(frame_job("1-3")).await;
    let cached = client.submit(spec).await.unwrap().id;
    assert_eq!(wait_done(&client, &cached).await.state, JobState::Done);
    let c = scrape(c_addr).await;
    assert_eq!(value(&c, "suanli_tasks", &[("state", "cached")]), 3.0);
    assert_eq!(value(&c, "suanli_tasks_completed_total", &here), 5.0);

    // A renderer that exits 3, retried once: two failures of class `render`, one retry.
    let mut flags = sh_flags("9", "exit 3");
    flags.max_retries = Some(1);
    let spec = farm.job(flags).await;
    let failing = client.submit(spec).await.unwrap().id;
    assert_eq!(wait_done(&client, &failing).await.state, JobState::Failed);
    let c = scrape(c_addr).await;
    assert_eq!(
        value(&c, "suanli_task_failures_total", &[("reason", "render")]),
        2.0
    );
    assert_eq!(
        value(&c, "suanli_task_failures_total", &[("reason", "timeout")]),
        0.0
    );
    assert_eq!(value(&c, "suanli_task_retries_total", &[]), 1.0);
    assert_eq!(value(&c, "suanli_jobs", &[("state", "failed")]), 1.0);
    assert_eq!(value(&c, "suanli_tasks", &[("state", "failed")]), 1.0);
    let w = scrape(w_addr).await;
    assert_eq!(
        value(&w, "suanli_worker_tasks_total", &[("outcome", "failed")]),
        2.0
    );

    // No label carries a job id, a task or a worker name.
    for scrape in [&c, &scrape(w_addr).await] {
        for s in &scrape.samples {
            let text = format!("{:?}", s.labels);
            for id in [
                job.as_str(),
                again.as_str(),
                cached.as_str(),
                failing.as_str(),
                "w1",
            ] {
                assert!(
                    !text.contains(id),
                    "{} has a label naming {id}: {text}",
                    s.metric
                );
            }
        }
    }

    // Every series the dashboard's queries name is served.
    let mut served = names(&c);
    served.extend(names(&scrape(w_addr).await));
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/suanli.json"),
    )
    .expect("the dashboard exists");
    let named = dashboard_series(&dashboard);
    assert!(
        named.len() >= 15,
        "the dashboard names few series: {named:?}"
    );
    let unknown: Vec<_> = named.difference(&served).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard names series no farm serves: {unknown:?}"
    );
}

/// Metric names in the PromQL of every panel target (`"expr"` strings) of a Grafana dashboard:
/// identifiers starting `suanli_`.
fn dashboard_series(json: &str) -> BTreeSet<String> {
    let dashboard: serde_json::Value = serde_json::from_str(json).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dashboard, &mut exprs);
    assert!(!exprs.is_empty(), "the dashboard has no queries");
    let mut names = BTreeSet::new();
    for expr in exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("suanli_") {
            let word: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // Part of a longer identifier (a label value like `my_suanli_x`) is not a name.
            let before = rest[..at].chars().last();
            if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                names.insert(word.clone());
            }
            rest = &rest[at + word.len()..];
        }
    }
    names
}

#[test]
fn the_dashboard_parser_finds_names_and_an_unknown_one_is_not_served() {
    let json = r#"{"panels":[{"targets":[{"expr":"sum(rate(suanli_tasks_completed_total{region=~\"$region\"}[5m])) / ignoring(x) suanli_made_up"}]}]}"#;
    let named = dashboard_series(json);
    assert_eq!(
        named,
        BTreeSet::from([
            "suanli_tasks_completed_total".to_string(),
            "suanli_made_up".to_string()
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_metrics_address_is_refused_with_a_clear_error() {
    let farm = ProcFarm::start();
    let mut bad = farm.coordinator("bad", &["--metrics-listen", "not-an-address"]);
    let status = bad.wait_exit(Duration::from_secs(30)).await.expect("exits");
    assert!(!status.success());
    assert!(
        bad.log_text().contains("invalid socket address"),
        "{}",
        bad.log_text()
    );

    // An address another process holds: the role stops at once and says so.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut worker = farm.worker("guian", "w", &["--metrics-listen", &addr]);
    let status = worker
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("exits");
    assert!(!status.success());
    let log = worker.log_text();
    assert!(
        log.contains(&format!("cannot listen for metrics on {addr}"))
            && log.contains("--metrics-listen"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_farm_serves_the_coordinator_at_its_address_and_each_worker_at_the_next_ports() {
    // Two free ports in a row for the coordinator and the one worker (`suanli up` does this).
    let base = loop {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            break port;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let mut options = suanli::localfarm::FarmOptions::new(dir.path(), &["guian"]).unwrap();
    options.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], base)));
    let farm = suanli::localfarm::LocalFarm::start(options).await.unwrap();
    let coordinator = SocketAddr::from(([127, 0, 0, 1], base));
    let worker = SocketAddr::from(([127, 0, 0, 1], base + 1));
    let c = scrape(coordinator).await;
    assert_eq!(
        value(&c, "suanli_region_workers", &[("region", "guian")]),
        1.0
    );
    assert_eq!(value(&c, "suanli_lease_holder", &[]), 1.0);
    let w = scrape(worker).await;
    assert_eq!(value(&w, "suanli_worker_slots", &[]), 1.0);
    farm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_coordinator_says_it_does_not_hold_the_lease() {
    let farm = ProcFarm::start();
    let serving = farm.coordinator("c1", &["--metrics-listen", "127.0.0.1:0"]);
    let client = farm.client().await;
    farm.wait_for_workers(&client, 0).await; // the first one answers: it serves
    let standby = farm.coordinator("c2", &["--metrics-listen", "127.0.0.1:0"]);
    assert!(
        standby
            .wait_for_log("standing by", Duration::from_secs(30))
            .await,
        "{}",
        standby.log_text()
    );
    let s = scrape(metrics_addr(&standby).await).await;
    assert_eq!(value(&s, "suanli_lease_holder", &[]), 0.0);
    let c = scrape(metrics_addr(&serving).await).await;
    assert_eq!(value(&c, "suanli_lease_holder", &[]), 1.0);
}
