//! Cross-region placement through the real coordinator and real nats-servers: policies,
//! data locality, fair share, region loss and the ledger.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{empty_inputs, prepare, sh_flags, write, ProcFarm};
use futures::StreamExt;
use suanli::client::Client;
use suanli::jobfile::Overrides;
use suanli::localfarm::{FarmOptions, LocalFarm};
use suanli_shared::protocol::{
    EventKind, InputManifest, JobEvent, JobSpec, JobState, JobStatus, Placement, Policy,
    RendererSpec, TaskRecord,
};
use suanli_shared::regions::{RegionCatalog, RegionProfile};
use suanli_shared::store::Store;
use suanli_shared::JobId;

const JOB_LIMIT: Duration = Duration::from_secs(120);

fn profile(name: &str, price: f64, pue: f64, carbon: f64) -> RegionProfile {
    RegionProfile {
        price_per_core_hour: price,
        pue,
        carbon_g_per_kwh: carbon,
        ..RegionProfile::neutral(name.parse().unwrap())
    }
}

/// Guian: cheap and green; Ulanqab: four times the price, coal power.
fn catalog() -> RegionCatalog {
    RegionCatalog::new(
        "CNY",
        Policy::Balanced,
        [
            profile("guian", 0.05, 1.12, 400.0),
            profile("ulanqab", 0.20, 1.40, 900.0),
        ],
    )
    .unwrap()
}

async fn farm(dir: &Path, catalog: RegionCatalog) -> LocalFarm {
    let mut options = FarmOptions::new(dir, &["guian", "ulanqab"]).unwrap();
    options.catalog = catalog;
    LocalFarm::start(options).await.expect("farm starts")
}

fn builtin(name: &str, frames: &str, inputs: &InputManifest, policy: Option<Policy>) -> JobSpec {
    JobSpec {
        webhooks: vec![],
        limits: Default::default(),
        requirements: Default::default(),
        name: name.into(),
        studio: Default::default(),
        priority: 0,
        frames: frames.parse().unwrap(),
        chunk: 1,
        regions: vec![],
        max_retries: 1,
        task_timeout_secs: 120,
        renderer: RendererSpec::Builtin {
            width: 96,
            height: 54,
            samples: 4,
        },
        inputs: inputs.hash(),
        scene: None,
        output: "frame_####".into(),
        placement: Placement {
            policy,
            ..Default::default()
        },
    }
}

async fn run(client: &Client, spec: JobSpec) -> JobStatus {
    let id = client.submit(spec).await.expect("accepted").id;
    let status = client
        .wait(&id, Some(JOB_LIMIT), |_| {})
        .await
        .unwrap()
        .expect("finished in time");
    assert_eq!(status.state, JobState::Done, "{status:?}");
    status
}

async fn tasks(client: &Client, job: &JobId) -> Vec<TaskRecord> {
    client.tasks(job, 0, 500).await.unwrap().tasks
}

fn frames_in(status: &JobStatus, region: &str) -> u32 {
    status.regions.get(region).map_or(0, |r| r.frames_done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cheapest_fills_the_cheaper_region_and_fastest_spreads() {
    let dir = tempfile::tempdir().unwrap();
    let farm = farm(dir.path(), catalog()).await;
    let client = Client::connect(&farm.nats_url).await.unwrap();
    let inputs = empty_inputs(&Store::open(&farm.store_url).unwrap()).await;

    let cheap = run(
        &client,
        builtin("cheap", "1-12", &inputs, Some(Policy::Cheapest)),
    )
    .await;
    println!("cheapest: {:?}", cheap.regions);
    assert_eq!(frames_in(&cheap, "guian"), 12, "{:?}", cheap.regions);

    let fast = run(
        &client,
        builtin("fast", "13-24", &inputs, Some(Policy::Fastest)),
    )
    .await;
    println!("fastest: {:?}", fast.regions);
    assert!(frames_in(&fast, "guian") > 0 && frames_in(&fast, "ulanqab") > 0);

    // The ledger prices each region's core-seconds from the catalog.
    let g = &cheap.regions["guian"];
    let expected = 0.05 * g.core_seconds / 3600.0;
    assert!((g.cost - expected).abs() < 1e-12, "{g:?}");
    let kwh = g.core_seconds / 3600.0 * 10.0 / 1000.0 * 1.12;
    assert!((g.energy_kwh - kwh).abs() < 1e-12);
    assert!((g.carbon_kg - kwh * 0.4).abs() < 1e-12);
    farm.stop().await;
}

/// A farm of one 4-slot worker per region: enough slots that waiting for one has a price.
async fn wide_farm(dir: &Path) -> LocalFarm {
    let mut options = FarmOptions::new(dir, &["guian", "ulanqab"]).unwrap();
    options.catalog = catalog();
    options.slots = 4;
    LocalFarm::start(options).await.expect("farm starts")
}

/// The region of each task of `job`, in task order (the order tasks leave the backlog).
async fn placements(client: &Client, job: &JobId) -> Vec<String> {
    let mut records = tasks(client, job).await;
    records.sort_by_key(|t| t.task);
    records
        .iter()
        .map(|t| t.region.as_ref().map(|r| r.to_string()).unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greenest_keeps_to_the_green_region_within_its_patience_then_spreads() {
    let dir = tempfile::tempdir().unwrap();
    let farm = wide_farm(dir.path()).await;
    let client = Client::connect(&farm.nats_url).await.unwrap();
    let inputs = empty_inputs(&Store::open(&farm.store_url).unwrap()).await;
    let greenest = |name: &str, frames: &str, patience: f64| {
        let mut spec = builtin(name, frames, &inputs, Some(Policy::Greenest));
        spec.placement.patience = Some(patience);
        spec
    };
    // 24 tasks on 8 slots: under fastest about 4 task times. Patience 20 allows 80: every task
    // waits for Guian's four slots.
    let patient = run(&client, greenest("patient", "1-24", 20.0)).await;
    let id = patient.id.clone();
    println!("patience 20: {:?}", patient.regions);
    assert_eq!(frames_in(&patient, "guian"), 24, "{:?}", patient.regions);
    assert!(placements(&client, &id).await.iter().all(|r| r == "guian"));
    // 40 tasks, patience 1 (no slower than fastest, about 6 task times): Guian's slots alone
    // would take about 9, so the job spreads. Its first tasks still go to the green region,
    // and it keeps more there than in the coal-powered one.
    let bound = run(&client, greenest("bound", "25-64", 1.0)).await;
    println!("patience 1: {:?}", bound.regions);
    let order = placements(&client, &bound.id).await;
    println!("placements in task order: {order:?}");
    assert_eq!(order[0], "guian", "{order:?}");
    assert!(frames_in(&bound, "ulanqab") > 0, "{:?}", bound.regions);
    assert!(
        frames_in(&bound, "guian") >= frames_in(&bound, "ulanqab"),
        "{:?}",
        bound.regions
    );
    farm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balanced_spreads_when_time_is_dear_and_waits_when_it_is_cheap() {
    let dir = tempfile::tempdir().unwrap();
    let farm = wide_farm(dir.path()).await;
    let client = Client::connect(&farm.nats_url).await.unwrap();
    let inputs = empty_inputs(&Store::open(&farm.store_url).unwrap()).await;
    let balanced = |name: &str, frames: &str, value_of_hour: f64| {
        let mut spec = builtin(name, frames, &inputs, Some(Policy::Balanced));
        spec.placement.value_of_hour = Some(value_of_hour);
        spec
    };
    // An hour of delay worth a millionth of a yuan: every task waits for the cheap region.
    let cheap_time = run(&client, balanced("cheap-time", "1-24", 1e-6)).await;
    println!("time worth little: {:?}", cheap_time.regions);
    assert_eq!(
        frames_in(&cheap_time, "guian"),
        24,
        "{:?}",
        cheap_time.regions
    );
    // Worth a million yuan: no saving pays for a task's wait, so the dear region's free
    // slots take tasks at once.
    let dear_time = run(&client, balanced("dear-time", "25-48", 1e6)).await;
    println!("time worth a lot: {:?}", dear_time.regions);
    assert!(
        frames_in(&dear_time, "ulanqab") > 0,
        "{:?}",
        dear_time.regions
    );
    assert!(
        frames_in(&dear_time, "guian") > 0,
        "{:?}",
        dear_time.regions
    );
    farm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_holding_a_job_s_inputs_attract_its_tasks() {
    let dir = tempfile::tempdir().unwrap();
    // Equal regions: only the inputs tell them apart.
    let farm = farm(dir.path(), RegionCatalog::default()).await;
    let client = Client::connect(&farm.nats_url).await.unwrap();
    let store = Store::open(&farm.store_url).unwrap();
    let shot = dir.path().join("shot");
    write(&shot.join("scene.txt"), "scene");
    write(&shot.join("cache.vdb"), &"v".repeat(400_000));
    let flags = |frames: &str, regions: Option<Vec<String>>| Overrides {
        frames: Some(frames.into()),
        scene: Some("scene.txt".into()),
        inputs: vec!["cache.vdb".into()],
        renderer: Some("command".into()),
        ext: Some("txt".into()),
        regions,
        argv: ["cp", "scene.txt", "{output}/frame_{frame:04}.txt"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    // Ulanqab renders a first job and so holds the inputs.
    let first = prepare(&store, flags("1", Some(vec!["ulanqab".into()])), &shot).await;
    let first = run(&client, first).await;
    assert_eq!(frames_in(&first, "ulanqab"), 1);
    // The next job with the same inputs, free to go anywhere, goes there too.
    let second = prepare(&store, flags("2-3", None), &shot).await;
    let second = run(&client, second).await;
    println!("second job: {:?}", second.regions);
    assert_eq!(frames_in(&second, "ulanqab"), 2, "{:?}", second.regions);
    assert_eq!(second.regions["ulanqab"].bytes_in, 0, "nothing moved again");
    farm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_priority_jobs_progress_together() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = FarmOptions::new(dir.path(), &["guian"]).unwrap();
    options.catalog = catalog();
    let farm = LocalFarm::start(options).await.unwrap();
    let client = Client::connect(&farm.nats_url).await.unwrap();
    let inputs = empty_inputs(&Store::open(&farm.store_url).unwrap()).await;
    let big = client
        .submit(builtin("big", "1-30", &inputs, None))
        .await
        .unwrap()
        .id;
    let small = client
        .submit(builtin("small", "31-40", &inputs, None))
        .await
        .unwrap()
        .id;
    let small_done = client
        .wait(&small, Some(JOB_LIMIT), |_| {})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(small_done.state, JobState::Done);
    let big_now = client.status(&big).await.unwrap();
    println!(
        "when the small job finished, the big one had {}/30",
        big_now.tasks.done
    );
    // Fair share alternates the two: the small one did not wait behind all 30 (nor the big
    // one behind the small one).
    assert!(big_now.tasks.done >= 5, "{:?}", big_now.tasks);
    assert!(big_now.tasks.done <= 20, "{:?}", big_now.tasks);

    // The ledger's core-seconds are the tasks' own, and within their wall time.
    let big_end = client
        .wait(&big, Some(JOB_LIMIT), |_| {})
        .await
        .unwrap()
        .unwrap();
    let records = tasks(&client, &big).await;
    let core: f64 = records.iter().map(|t| t.core_seconds).sum();
    let wall: f64 = records
        .iter()
        .map(|t| (t.finished_ms.unwrap() - t.started_ms.unwrap()) as f64 / 1000.0)
        .sum();
    let ledger: f64 = big_end.regions.values().map(|r| r.core_seconds).sum();
    println!("ledger {ledger:.3} core-s, tasks {core:.3} core-s, wall {wall:.3} s");
    assert!((ledger - core).abs() < 1e-9);
    assert!(core <= wall + 0.001 * records.len() as f64);
    assert!(core > 0.0);
    farm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_that_loses_every_worker_hands_its_tasks_to_another() {
    let farm = ProcFarm::start();
    let _coordinator = farm.coordinator(
        "coordinator",
        &["--region-lost-after", "2s", "--worker-lost-after", "2s"],
    );
    let mut g = farm.worker("guian", "g", &[]);
    let _u = farm.worker("ulanqab", "u", &[]);
    let client = farm.client().await;
    farm.wait_for_workers(&client, 2).await;
    let spec = farm
        .job(sh_flags(
            "1-8",
            "sleep 1; printf x > {output}/frame_{frame:04}.txt",
        ))
        .await;
    let mut job_events = client
        .nats()
        .subscribe(suanli_shared::nats::events_of_kind(EventKind::Job))
        .await
        .unwrap();
    let job = client.submit(spec).await.unwrap().id;
    // Once guian holds tasks, its only worker dies.
    let mut holding = false;
    for _ in 0..200 {
        let page = tasks(&client, &job).await;
        if page.iter().any(|t| {
            t.region.as_ref().is_some_and(|r| r.as_str() == "guian")
                && matches!(
                    t.state,
                    suanli_shared::protocol::TaskState::Running
                        | suanli_shared::protocol::TaskState::Queued
                )
        }) {
            holding = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(holding, "guian got tasks");
    g.kill9();
    let status = client
        .wait(&job, Some(JOB_LIMIT), |_| {})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.state, JobState::Done, "{status:?}");
    let by_region: BTreeMap<String, u32> = status
        .regions
        .iter()
        .map(|(r, f)| (r.clone(), f.frames_done))
        .collect();
    println!("frames by region: {by_region:?}");
    assert_eq!(by_region.values().sum::<u32>(), 8);
    // The event log says what happened.
    let said = tokio::time::timeout(JOB_LIMIT, async {
        while let Some(m) = job_events.next().await {
            if let Ok(ev) = serde_json::from_slice::<JobEvent>(&m.payload) {
                if ev
                    .reason
                    .is_some_and(|r| r.contains("region guian lost") && r.contains("withdrawn"))
                {
                    return;
                }
            }
        }
    })
    .await;
    assert!(said.is_ok(), "a job event reports the region loss");
}
