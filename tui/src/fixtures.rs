//! Fixed farm states for the view tests and the benchmark: a few regions, workers (one lost),
//! jobs in every state, task records with a failure, a region catalog. Everything is a
//! function of its arguments (no clock, no randomness), so a drawn screen is the same on
//! every run.

use std::collections::BTreeMap;

use suanli_shared::protocol::{
    BudgetStatus, CurrentTask, Failure, FrameCounts, JobEvent, JobState, JobStatus, OutputFile,
    RegionFigures, TaskCounts, TaskEvent, TaskEventKind, TaskRecord, TaskState, WorkerInfo,
    WorkerState,
};
use suanli_shared::regions::RegionProfile;
use suanli_shared::studios::BudgetAction;
use suanli_shared::{ContentHash, FrameChunk, JobId, Region, WorkerId};

use crate::action::{Action, Snapshot};
use crate::api::FarmEvent;
use crate::state::{update, State};
use crate::theme::Theme;

/// 2025-06-15 15:06:40 UTC: the fixtures' "now".
pub const NOW: u64 = 1_750_000_000_000;

pub fn region(name: &str) -> Region {
    name.parse().expect("fixture region names are valid")
}

pub fn worker_id(name: &str) -> WorkerId {
    name.parse().expect("fixture worker names are valid")
}

/// Job ids `01jobfixture00000000000001` …: valid, distinct, sorted by `n`.
pub fn job_id(n: u32) -> JobId {
    format!("01jobfixture{n:014}")
        .parse()
        .expect("fixture job ids are valid")
}

pub fn profile(name: &str, price: f64, pue: f64) -> RegionProfile {
    let mut p = RegionProfile::neutral(region(name));
    p.price_per_core_hour = price;
    p.pue = pue;
    p.watts_per_core = 10.0;
    p
}

/// A worker with `busy` of `slots` busy; `beat_age_ms` before [`NOW`].
pub fn worker(
    region_name: &str,
    name: &str,
    slots: u32,
    busy: u32,
    state: WorkerState,
    beat_age_ms: u64,
) -> WorkerInfo {
    let mut renderers = BTreeMap::new();
    renderers.insert("builtin".to_string(), "suanli-builtin-1".to_string());
    from_json(serde_json::json!({
        "id": worker_id(name),
        "region": region(region_name),
        "slots": slots,
        "busy": busy,
        "state": state,
        "renderers": renderers,
        "host": "host",
        "pid": 1,
        "started_ms": NOW - 3_600_000,
        "heartbeat_ms": NOW - beat_age_ms,
        "tasks_done": 10,
        "core_seconds": 1234.5,
        "current": [],
    }))
}

/// A job of one-frame tasks: `done` of them finished (of which `cached` from the cache),
/// `failed`, `running`, the rest pending. Rendered frames are split over `regions` evenly,
/// each frame costing `core_s_per_frame` core-seconds, priced with [`catalog`].
#[allow(clippy::too_many_arguments)]
pub fn job(
    n: u32,
    name: &str,
    state: JobState,
    total: u32,
    done: u32,
    cached: u32,
    failed: u32,
    running: u32,
    regions: &[&str],
    core_s_per_frame: f64,
) -> JobStatus {
    let rendered = done - cached;
    let mut figures = BTreeMap::new();
    for (i, r) in regions.iter().enumerate() {
        let share = rendered / regions.len() as u32
            + u32::from((i as u32) < rendered % regions.len() as u32);
        let mut f = RegionFigures {
            frames_done: share,
            core_seconds: share as f64 * core_s_per_frame,
            bytes_in: 2_500_000 * (i as u64 + 1),
            ..Default::default()
        };
        // Priced as the coordinator prices them, from the catalog it would offer.
        let profile = catalog()
            .into_iter()
            .find(|p| p.name.as_str() == *r)
            .unwrap_or_else(|| RegionProfile::neutral(region(r)));
        f.price(&profile);
        figures.insert(r.to_string(), f);
    }
    // Built through serde, so fields the protocol adds with defaults need no change here.
    from_json(serde_json::json!({
        "id": job_id(n),
        "name": name,
        "state": state,
        "priority": 0,
        "renderer": "builtin",
        "created_ms": NOW - 600_000,
        "finished_ms": state.is_final().then_some(NOW - 60_000),
        "reason": null,
        "frames": FrameCounts { total, done, failed, cached },
        "tasks": TaskCounts {
            total,
            pending: total - done - failed - running,
            queued: 0,
            running,
            done,
            failed,
            cached,
            canceled: 0,
        },
        "regions": figures,
        "failures": [],
        "failures_total": failed,
    }))
}

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("fixture records match the protocol")
}

/// A one-frame task record (frame `idx + 1`) in `state`.
pub fn task(
    job: &JobId,
    idx: u32,
    state: TaskState,
    region_name: &str,
    worker: &str,
) -> TaskRecord {
    let frame = idx + 1;
    let key = ContentHash::of(format!("{job}.{idx}").as_bytes());
    let placed = !matches!(state, TaskState::Pending | TaskState::Queued);
    let finished = matches!(
        state,
        TaskState::Done | TaskState::Cached | TaskState::Failed
    );
    let outputs = if matches!(state, TaskState::Done | TaskState::Cached) {
        vec![OutputFile {
            frame,
            name: format!("frame_{frame:04}.png"),
            hash: ContentHash::of(format!("png {job}.{idx}").as_bytes()),
            size: 1000,
        }]
    } else {
        Vec::new()
    };
    let start = NOW - 120_000 + idx as u64 * 1000;
    from_json(serde_json::json!({
        "job": job,
        "task": idx,
        "key": key,
        "chunk": FrameChunk::single(frame),
        "state": state,
        "attempt": 0,
        "region": placed.then(|| region(region_name)),
        "worker": placed.then(|| worker_id(worker)),
        "started_ms": placed.then_some(start),
        "finished_ms": finished.then_some(start + 2_500),
        "core_seconds": if finished { 5.0 } else { 0.0 },
        "not_before_ms": 0,
        "failures": [],
        "outputs": outputs,
        "bytes_in": 0,
    }))
}

pub fn failure(region_name: &str, worker: &str, attempt: u32) -> Failure {
    Failure {
        exit_code: Some(1),
        reason: "renderer exited with code 1".into(),
        stderr_tail: "loading scene\nbuilding BVH\nerror: out of memory\nrender aborted".into(),
        worker: worker_id(worker),
        region: region(region_name),
        attempt,
        at_ms: NOW - 30_000,
    }
}

/// The standard farm: two regions (guian, ulanqab), four workers (one lost), three jobs
/// (running, done with cache hits, failed), utilization history, a catalog and some events.
pub fn farm_snapshot() -> Snapshot {
    let mut w1 = worker("guian", "guian-1", 2, 2, WorkerState::Rendering, 1_000);
    w1.current = vec![
        CurrentTask {
            job: job_id(3),
            task: 20,
            chunk: FrameChunk::single(21),
            fraction: 0.5,
        },
        CurrentTask {
            job: job_id(3),
            task: 21,
            chunk: FrameChunk::single(22),
            fraction: 0.25,
        },
    ];
    let w2 = worker("guian", "guian-2", 2, 0, WorkerState::Idle, 2_000);
    let mut w3 = worker("ulanqab", "ulanqab-1", 2, 1, WorkerState::Rendering, 1_000);
    w3.current = vec![CurrentTask {
        job: job_id(3),
        task: 22,
        chunk: FrameChunk::single(23),
        fraction: 0.75,
    }];
    let w4 = worker("ulanqab", "ulanqab-2", 2, 0, WorkerState::Lost, 45_000);
    let mut depths = BTreeMap::new();
    depths.insert(region("guian"), 3);
    depths.insert(region("ulanqab"), 1);
    Snapshot {
        at_ms: NOW,
        jobs: vec![
            job(
                3,
                "shot010-lighting",
                JobState::Running,
                48,
                20,
                8,
                1,
                3,
                &["guian", "ulanqab"],
                360.0,
            ),
            job(
                2,
                "shot009",
                JobState::Done,
                24,
                24,
                24,
                0,
                0,
                &["guian"],
                0.0,
            ),
            job(
                1,
                "shot001-previs",
                JobState::Failed,
                10,
                9,
                0,
                1,
                0,
                &["guian"],
                720.0,
            ),
        ],
        workers: vec![w1, w2, w3, w4],
        depths,
    }
}

pub fn catalog() -> Vec<RegionProfile> {
    vec![profile("guian", 0.08, 1.12), profile("ulanqab", 0.06, 1.25)]
}

/// [`farm_snapshot`] folded into a fresh state at [`NOW`] with a terminal of `size`: a first
/// poll a minute ago (so the ulanqab-2 loss is seen happening), a minute of utilization
/// samples, the catalog when `with_catalog`, and a few events.
pub fn farm_state(theme: Theme, size: (u16, u16), with_catalog: bool) -> State {
    let start = NOW - 60_000;
    let mut state = State::new(theme, start, size);
    let mut first = farm_snapshot();
    first.at_ms = start;
    for w in &mut first.workers {
        w.state = if w.busy > 0 {
            WorkerState::Rendering
        } else {
            WorkerState::Idle
        };
    }
    update(&mut state, Action::Polled(Box::new(first)));
    if with_catalog {
        update(&mut state, Action::Catalog(Some(catalog())));
    }
    for s in 0..=60 {
        update(
            &mut state,
            Action::Tick {
                now_ms: start + s * 1000,
            },
        );
    }
    update(&mut state, Action::Polled(Box::new(farm_snapshot())));
    let job3 = job_id(3);
    for ev in [
        completed(&job3, 18, "guian", "guian-1", NOW - 9_000, 3_000),
        failed(&job3, 5, "ulanqab", "ulanqab-1", NOW - 6_000),
        completed(&job3, 19, "ulanqab", "ulanqab-1", NOW - 4_000, 2_000),
    ] {
        update(
            &mut state,
            Action::Event {
                received_ms: ev.at_ms,
                event: Box::new(FarmEvent::Task(ev)),
            },
        );
    }
    update(
        &mut state,
        Action::Event {
            received_ms: NOW - 2_000,
            event: Box::new(FarmEvent::Job(JobEvent {
                job: job_id(1),
                state: JobState::Failed,
                at_ms: NOW - 2_000,
                reason: Some("task 9 failed 3 times".into()),
            })),
        },
    );
    state
}

/// [`farm_state`] with its jobs in two studios with budgets: the running job is acme's (82 %
/// of its budget, under `stop`), the failed one bolt's (past its budget, under `warn`), the
/// done one in the default studio with none.
pub fn studios_state(theme: Theme, size: (u16, u16)) -> State {
    let mut state = farm_state(theme, size, true);
    let mut snapshot = farm_snapshot();
    let budget =
        |studio: &str, spent: f64, budget: f64, at_limit: BudgetAction, stopped| BudgetStatus {
            studio: studio.parse().unwrap(),
            month: "2026-11".into(),
            spent,
            budget,
            currency: "CNY".into(),
            at_limit,
            stopped,
        };
    for job in &mut snapshot.jobs {
        match job.name.as_str() {
            "shot010-lighting" => {
                job.studio = "acme".parse().unwrap();
                job.budget = Some(budget("acme", 41.0, 50.0, BudgetAction::Stop, false));
            }
            "shot001-previs" => {
                job.studio = "bolt".parse().unwrap();
                job.budget = Some(budget("bolt", 12.5, 10.0, BudgetAction::Warn, false));
            }
            _ => {}
        }
    }
    update(&mut state, Action::Polled(Box::new(snapshot)));
    state
}

/// A worker's report that it rendered task `idx` (frame `idx + 1`) in `secs_ms`.
pub fn completed(
    job: &JobId,
    idx: u32,
    region_name: &str,
    worker: &str,
    at_ms: u64,
    secs_ms: u64,
) -> TaskEvent {
    let rec = task(job, idx, TaskState::Done, region_name, worker);
    TaskEvent {
        job: job.clone(),
        task: idx,
        key: rec.key,
        attempt: 0,
        worker: worker_id(worker),
        region: region(region_name),
        at_ms,
        kind: TaskEventKind::Completed {
            cached: false,
            started_ms: at_ms - secs_ms,
            core_seconds: secs_ms as f64 / 1000.0 * 2.0,
            outputs: rec.outputs,
            bytes_in: 0,
            gpu: None,
        },
    }
}

/// A worker's report that task `idx` failed (first attempt).
pub fn failed(job: &JobId, idx: u32, region_name: &str, worker: &str, at_ms: u64) -> TaskEvent {
    TaskEvent {
        job: job.clone(),
        task: idx,
        key: ContentHash::of(format!("{job}.{idx}").as_bytes()),
        attempt: 0,
        worker: worker_id(worker),
        region: region(region_name),
        at_ms,
        kind: TaskEventKind::Failed {
            failure: failure(region_name, worker, 0),
        },
    }
}
