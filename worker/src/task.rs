//! The life of one task on this worker: skip it when the coordinator no longer wants this run,
//! hand it back when this worker is blocklisted for the job, reuse a committed output (a cache
//! hit), fetch the inputs, render, commit, report, and acknowledge. While it renders, in-progress
//! acks keep the message ours and progress events flow. It exists so that the one place that
//! decides how a run ends also decides how its message is acknowledged.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::message::Acker;
use async_nats::jetstream::AckKind;
use suanli_shared::nats;
use suanli_shared::protocol::decode;
use suanli_shared::protocol::{
    now_ms, CurrentTask, Failure, JobRecord, RendererSpec, Requirements, Resources, TaskAssignment,
    TaskEventKind, TaskRecord,
};
use suanli_shared::JobId;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::commit::{commit, committed};
use crate::metrics::RunOutcome;
use crate::render::sandbox::Limits;
use crate::render::{self, RenderJob, RenderOutcome, TaskConfinement};
use crate::report::{failure, publish_event, publish_progress};
use crate::resources::Held;
use crate::state::{lock, Running, Shared};

/// How long a task this worker may not run waits before the queue offers it again (to another
/// worker of the region, most likely).
const BLOCKLISTED_NAK_DELAY: Duration = Duration::from_secs(2);
/// How long a task that does not fit this worker waits before the queue offers it again.
const UNFIT_NAK_DELAY: Duration = Duration::from_secs(1);

/// How one task run ended.
enum Outcome {
    Completed(TaskEventKind),
    Failed(Failure),
    /// Canceled (job canceled) or handed back (drain).
    Stopped,
}

/// Runs one task message to its end and acknowledges it; holds its slot (`_permit`) throughout.
pub(crate) async fn handle(
    sh: Arc<Shared>,
    msg: async_nats::jetstream::Message,
    _permit: OwnedSemaphorePermit,
) {
    let (msg, acker) = msg.split();
    let acker = Arc::new(acker);
    let task = match TaskAssignment::decode(&msg.payload) {
        Ok(t) => t,
        Err(e) => {
            warn!(subject = %msg.subject, error = %e, "dropping a malformed task message");
            let _ = acker.ack_with(AckKind::Term).await;
            return;
        }
    };
    if !still_wanted(&sh, &task).await {
        debug!(job = %task.job, task = task.task, "task already settled; skipping");
        sh.metrics.task_ended(RunOutcome::Skipped, None);
        let _ = acker.ack().await;
        return;
    }
    let job = job_record(&sh, &task.job).await;
    if job.as_ref().is_some_and(|rec| blocklisted(&sh, rec)) {
        debug!(job = %task.job, task = task.task, "blocklisted for this job; handing the task back");
        sh.metrics.task_ended(RunOutcome::Skipped, None);
        let _ = acker
            .ack_with(AckKind::Nak(Some(BLOCKLISTED_NAK_DELAY)))
            .await;
        return;
    }
    let requirements = job
        .as_ref()
        .map(|rec| rec.spec.requirements.clone())
        .unwrap_or_default();
    let unmet = Resources::unmet(Some(sh.pool.total()), &requirements);
    if !unmet.is_empty() {
        // The coordinator releases only to regions with a worker that fits; this one does
        // not, so another worker of the region takes it.
        debug!(job = %task.job, task = task.task, unmet = %unmet[0], "task does not fit this worker; handing it back");
        sh.metrics.task_ended(RunOutcome::Skipped, None);
        let _ = acker.ack_with(AckKind::Nak(Some(UNFIT_NAK_DELAY))).await;
        return;
    }
    let Some(held) = hold_resources(&sh, &requirements, &acker).await else {
        let _ = acker.ack_with(AckKind::Nak(None)).await;
        return;
    };
    let cancel = CancellationToken::new();
    let fraction = Arc::new(AtomicU32::new(0f32.to_bits()));
    lock(&sh.running).insert(
        (task.job.clone(), task.task),
        Running {
            cancel: cancel.clone(),
            current: CurrentTask {
                job: task.job.clone(),
                task: task.task,
                chunk: task.chunk,
                fraction: 0.0,
            },
            fraction: fraction.clone(),
        },
    );
    let keepalive = CancellationToken::new();
    let ticker = tokio::spawn(keep_alive(
        sh.clone(),
        task.clone(),
        acker.clone(),
        fraction.clone(),
        keepalive.clone(),
    ));
    let limits = job.map(|rec| limits_of(&rec)).unwrap_or_default();
    let run_started = Instant::now();
    let outcome = execute(
        &sh,
        &task,
        limits,
        requirements.cores,
        &held.gpus,
        fraction,
        cancel,
    )
    .await;
    drop(held);
    keepalive.cancel();
    let _ = ticker.await;
    lock(&sh.running).remove(&(task.job.clone(), task.task));
    let ran = match &outcome {
        // A run that found the output committed rendered nothing (it spent no core-seconds).
        Outcome::Completed(TaskEventKind::Completed {
            cached,
            core_seconds,
            ..
        }) if *cached || *core_seconds == 0.0 => RunOutcome::Cached,
        Outcome::Completed(_) => RunOutcome::Completed,
        Outcome::Failed(_) => RunOutcome::Failed,
        Outcome::Stopped => RunOutcome::Stopped,
    };
    sh.metrics
        .task_ended(ran, Some(run_started.elapsed().as_secs_f64()));

    match outcome {
        Outcome::Completed(kind) => {
            if let TaskEventKind::Completed { core_seconds, .. } = &kind {
                let mut t = lock(&sh.totals);
                t.0 += 1;
                t.1 += core_seconds;
            }
            if publish_event(&sh, &task, kind).await {
                let _ = acker.double_ack().await;
            }
            // Not acknowledged: redelivered, and the next run finds the commit (a cache hit).
        }
        Outcome::Failed(failure) => {
            warn!(job = %task.job, task = task.task, attempt = task.attempt, reason = %failure.reason, "task failed");
            if publish_event(&sh, &task, TaskEventKind::Failed { failure }).await {
                let _ = acker.double_ack().await;
            }
        }
        Outcome::Stopped => {
            if sh.handing_back.load(Ordering::SeqCst) {
                let _ = acker.ack_with(AckKind::Nak(None)).await;
            } else {
                let _ = acker.ack().await;
            }
        }
    }
}

/// Waits until the cores, memory and GPUs the task needs are free, keeping the message ours
/// meanwhile; `None` when the worker began draining first (the task goes back to the queue).
async fn hold_resources(sh: &Arc<Shared>, req: &Requirements, acker: &Acker) -> Option<Held> {
    let ack_every = (sh.config.ack_wait / 4).max(Duration::from_millis(250));
    let acquire = sh.pool.acquire(req);
    tokio::pin!(acquire);
    loop {
        tokio::select! {
            held = &mut acquire => return Some(held),
            _ = tokio::time::sleep(ack_every) => {
                if sh.draining.load(Ordering::SeqCst) {
                    return None;
                }
                if let Err(e) = acker.ack_with(AckKind::Progress).await {
                    debug!(error = %e, "in-progress ack failed");
                }
            }
        }
    }
}

/// The job's record, if it can be read and decoded.
async fn job_record(sh: &Shared, job: &JobId) -> Option<JobRecord> {
    match sh.farm.jobs_kv.get(job.as_str()).await {
        Ok(Some(bytes)) => decode::<JobRecord>(&bytes, "job record").ok(),
        _ => None,
    }
}

/// Whether the coordinator barred this worker from the job after repeated failures.
fn blocklisted(sh: &Shared, rec: &JobRecord) -> bool {
    rec.blocklist
        .iter()
        .any(|b| b.region == sh.config.region && b.worker == sh.config.name)
}

/// The limits the job asks for its renders (before the worker's maxima cap them).
fn limits_of(rec: &JobRecord) -> Limits {
    let l = rec.spec.limits;
    let mib = |v: Option<u64>| v.map(|v| v.saturating_mul(1 << 20));
    Limits {
        memory_bytes: mib(l.memory_mib),
        processes: l.processes,
        file_bytes: mib(l.file_mib),
    }
}

/// Whether the coordinator still wants this run: not settled, not superseded by a retry, not
/// released to another region since it was queued here (the coordinator would refuse this
/// region's reports of it).
async fn still_wanted(sh: &Shared, task: &TaskAssignment) -> bool {
    match sh
        .farm
        .tasks_kv
        .get(nats::task_kv_key(&task.job, task.task))
        .await
    {
        Ok(Some(bytes)) => match decode::<TaskRecord>(&bytes, "task record") {
            Ok(rec) => {
                let elsewhere = rec.region.is_some_and(|r| r != sh.config.region);
                !(rec.state.is_final() || rec.attempt > task.attempt || elsewhere)
            }
            Err(_) => true,
        },
        _ => true,
    }
}

/// While a task runs: in-progress acks every quarter of the ack wait, progress events at most
/// once a second.
async fn keep_alive(
    sh: Arc<Shared>,
    task: TaskAssignment,
    acker: Arc<Acker>,
    fraction: Arc<AtomicU32>,
    stop: CancellationToken,
) {
    let ack_every = (sh.config.ack_wait / 4).max(Duration::from_millis(250));
    let mut next_ack = Instant::now() + ack_every;
    let mut last_sent = f32::NAN;
    let mut tick = tokio::time::interval(Duration::from_secs(1).min(ack_every));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if Instant::now() >= next_ack {
            if let Err(e) = acker.ack_with(AckKind::Progress).await {
                debug!(error = %e, "in-progress ack failed");
            }
            next_ack = Instant::now() + ack_every;
        }
        let f = f32::from_bits(fraction.load(Ordering::Relaxed));
        if f != last_sent {
            last_sent = f;
            publish_progress(&sh, &task, f).await;
        }
    }
}

/// One run of a task, from its started event to its committed outputs.
async fn execute(
    sh: &Arc<Shared>,
    task: &TaskAssignment,
    limits: Limits,
    cores: Option<u32>,
    gpus: &[u32],
    fraction: Arc<AtomicU32>,
    cancel: CancellationToken,
) -> Outcome {
    let started_ms = now_ms();
    let t0 = Instant::now();
    publish_event(sh, task, TaskEventKind::Started).await;
    match committed(&sh.store, &task.studio, &task.key).await {
        Ok(Some(m)) => {
            info!(job = %task.job, task = task.task, "output already committed: cache hit");
            return Outcome::Completed(TaskEventKind::Completed {
                cached: m.job != task.job,
                started_ms,
                core_seconds: 0.0,
                outputs: m.files,
                bytes_in: 0,
                gpu: None,
            });
        }
        Ok(None) => {}
        Err(e) => return failed(sh, task, e),
    }

    // The worker, not the job, decides what runs: a renderer or profile it does not allow
    // fails the task with the reason (a retry may land on a worker that allows it).
    let renderer = match sh.config.renderers.resolve(&task.renderer) {
        Ok(r) => r,
        Err(reason) => return failed(sh, task, reason),
    };

    let work_root = sh.cache.dir().join("work");
    let workdir = match tokio::fs::create_dir_all(&work_root).await.and_then(|_| {
        tempfile::Builder::new()
            .prefix(&format!("{}-{}-", task.job, task.task))
            .tempdir_in(&work_root)
    }) {
        Ok(d) => d,
        Err(e) => {
            let reason = format!(
                "cannot create a work folder in {}: {e}",
                work_root.display()
            );
            return failed(sh, task, reason);
        }
    };
    let input_dir = workdir.path().join("in");
    let output_dir = workdir.path().join("out");
    let scratch_dir = workdir.path().join("tmp");
    if let Err(e) = tokio::fs::create_dir_all(&output_dir)
        .await
        .and(tokio::fs::create_dir_all(&input_dir).await)
        .and(tokio::fs::create_dir_all(&scratch_dir).await)
        .and(
            sh.confinement
                .prepare(workdir.path(), &[&output_dir, &scratch_dir]),
        )
    {
        return failed(sh, task, format!("cannot create the task folders: {e}"));
    }
    let bytes_in = match fetch_inputs(sh, task, &input_dir).await {
        Ok(n) => n,
        Err(reason) => return failed(sh, task, reason),
    };

    let threads = match task.renderer {
        RendererSpec::Builtin { .. } => 1,
        // A task that asks for cores holds them (the pool counts them); else its slot's share.
        _ => cores.unwrap_or(sh.config.threads_per_slot).max(1),
    };
    let progress_cell = fraction.clone();
    let progress: Arc<dyn Fn(f32) + Send + Sync> = Arc::new(move |f: f32| {
        progress_cell.store(f.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    });
    let job = RenderJob {
        renderer: &renderer,
        chunk: task.chunk,
        scene: task.scene.as_ref().map(|s| input_dir.join(s)),
        input_dir: input_dir.clone(),
        output_dir: output_dir.clone(),
        output_pattern: &task.output,
        threads,
        timeout: Duration::from_secs(task.timeout_secs),
        confinement: Some(TaskConfinement {
            confinement: sh.confinement.clone(),
            limits: limits.within(&sh.confinement.max),
            task_dir: workdir.path().to_path_buf(),
        }),
        gpus: gpus.to_vec(),
    };
    let outcome = render::render(job, progress, cancel).await;
    let wall_secs = t0.elapsed().as_secs_f64();
    let core_seconds = wall_secs * threads as f64;
    let gpu = sh.pool.gpu_use(gpus, wall_secs);
    let result = match outcome {
        RenderOutcome::Rendered { frames } => match commit(sh, task, frames).await {
            Ok((outputs, cached)) => Outcome::Completed(TaskEventKind::Completed {
                cached,
                started_ms,
                core_seconds,
                outputs,
                bytes_in,
                gpu,
            }),
            Err(reason) => failed(sh, task, reason),
        },
        RenderOutcome::Failed(f) => {
            Outcome::Failed(failure(sh, task, f.exit_code, f.reason, f.stderr_tail))
        }
        RenderOutcome::Canceled => Outcome::Stopped,
    };
    let dir = workdir.keep();
    tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir));
    result
}

/// A run that failed on this worker's side (store, disk, inputs), with no renderer output.
fn failed(sh: &Shared, task: &TaskAssignment, reason: String) -> Outcome {
    Outcome::Failed(failure(sh, task, None, reason, String::new()))
}

/// Materializes the task's inputs through the cache; returns the bytes downloaded.
async fn fetch_inputs(
    sh: &Shared,
    task: &TaskAssignment,
    input_dir: &std::path::Path,
) -> Result<u64, String> {
    let manifest = sh
        .cache
        .manifest(&task.studio, &task.inputs)
        .await
        .map_err(|e| format!("cannot fetch the input manifest: {e}"))?;
    sh.cache
        .materialize(&task.studio, &manifest, input_dir)
        .await
        .map_err(|e| format!("cannot fetch inputs: {e}"))
}
