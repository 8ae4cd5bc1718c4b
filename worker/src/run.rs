//! The worker's service loop: registration and heartbeats, one fetch per free slot, and the
//! life of one task (skip, cache hit, inputs, render, upload, commit, report).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::AckKind;
use bytes::Bytes;
use futures::StreamExt;
use suanli_shared::layout;
use suanli_shared::nats::{self, Farm};
use suanli_shared::protocol::{
    now_ms, CurrentTask, Failure, JobRecord, OutputFile, OutputManifest, RendererSpec,
    TaskAssignment, TaskEvent, TaskEventKind, TaskRecord, WorkerInfo, WorkerState,
};
use suanli_shared::store::{Commit, Store, StoreErrorKind};
use suanli_shared::sys::{hostname, pid_alive};
use suanli_shared::{ContentHash, JobId, Region, WorkerId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::cache::Cache;
use crate::render::{self, RenderJob, RenderOutcome};

/// Worker settings, resolved once by the binary.
#[derive(Debug, Clone)]
pub struct Config {
    pub nats_url: String,
    pub store_url: String,
    pub region: Region,
    pub name: WorkerId,
    /// Tasks rendered at once.
    pub slots: u32,
    pub cache_dir: PathBuf,
    pub cache_max_bytes: u64,
    /// Ack wait of the region's consumer (set when the consumer is first created): how long a
    /// silent worker keeps a task before it is redelivered.
    pub ack_wait: Duration,
    pub heartbeat: Duration,
    /// How long a draining worker lets running renders finish before handing them back.
    pub drain_grace: Duration,
    /// CPU threads each slot's renderer may use (Blender's `-t`).
    pub threads_per_slot: u32,
    /// Heartbeat age after which a record with this worker's name counts as dead.
    pub lost_after: Duration,
}

impl Config {
    pub fn new(
        nats_url: impl Into<String>,
        store_url: impl Into<String>,
        region: Region,
        name: WorkerId,
        cache_dir: PathBuf,
    ) -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        Self {
            nats_url: nats_url.into(),
            store_url: store_url.into(),
            region,
            name,
            slots: 1,
            cache_dir,
            cache_max_bytes: 20 << 30,
            ack_wait: Duration::from_secs(60),
            heartbeat: Duration::from_secs(2),
            drain_grace: Duration::from_secs(30),
            threads_per_slot: cores,
            lost_after: Duration::from_secs(10),
        }
    }
}

/// A task being rendered here.
struct Running {
    cancel: CancellationToken,
    current: CurrentTask,
    fraction: Arc<AtomicU32>,
}

struct Shared {
    farm: Farm,
    store: Store,
    cache: Cache,
    config: Config,
    renderers: BTreeMap<String, String>,
    running: Mutex<HashMap<(JobId, u32), Running>>,
    totals: Mutex<(u64, f64)>,
    draining: AtomicBool,
    /// Set when the drain grace ran out: canceled renders go back to the queue.
    handing_back: AtomicBool,
    started_ms: u64,
}

/// Runs a worker until `shutdown` fires, then drains: no new tasks, running ones finish within
/// the grace period or go back to the queue, and the worker's record is removed.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (client, mut reconnects) =
        nats::connect_watched(&config.nats_url, &format!("suanli-worker-{}", config.name)).await?;
    let farm = nats::setup(client).await?;
    let store = Store::open(&config.store_url)?;
    let cache = Cache::open(&config.cache_dir, config.cache_max_bytes, store.clone())
        .await
        .context("cannot open the input cache")?;
    let renderers = render::detect_versions().await;
    let shared = Arc::new(Shared {
        farm,
        store,
        cache,
        config,
        renderers,
        running: Mutex::new(HashMap::new()),
        totals: Mutex::new((0, 0.0)),
        draining: AtomicBool::new(false),
        handing_back: AtomicBool::new(false),
        started_ms: now_ms(),
    });
    let cfg = &shared.config;
    let key = nats::worker_key(&cfg.region, &cfg.name);
    let rev = register(&shared, &key).await?;
    let consumer = region_consumer(&shared).await?;
    info!(worker = %cfg.name, region = %cfg.region, slots = cfg.slots, renderers = ?shared.renderers, "worker ready");

    // `stop` ends the fetch loop: the caller's shutdown (SIGTERM), an operator's drain request,
    // or losing this worker's name to another process.
    let stop = shutdown.child_token();
    let shutdown = stop.clone();
    let tracker = TaskTracker::new();
    let background = CancellationToken::new();
    tracker.spawn(heartbeats(
        shared.clone(),
        key.clone(),
        rev,
        background.clone(),
        stop.clone(),
    ));
    tracker.spawn(cancel_listener(shared.clone(), background.clone()));
    tracker.spawn(drain_listener(shared.clone(), background.clone(), stop));

    let tasks = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(cfg.slots as usize));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => p.context("slot semaphore closed")?,
        };
        let fetched = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = fetch_one(&consumer) => m,
            // A pull request in flight died with the old connection: ask again at once.
            Ok(()) = reconnects.changed() => Ok(None),
        };
        match fetched {
            Ok(Some(msg)) => {
                tasks.spawn(handle(shared.clone(), msg, permit));
            }
            Ok(None) => {}
            Err(e) => {
                warn!(error = %format!("{e:#}"), "cannot fetch a task; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }

    info!(worker = %shared.config.name, "draining");
    shared.draining.store(true, Ordering::SeqCst);
    tasks.close();
    if tokio::time::timeout(shared.config.drain_grace, tasks.wait())
        .await
        .is_err()
    {
        warn!("drain grace ran out: handing running tasks back to the queue");
        shared.handing_back.store(true, Ordering::SeqCst);
        for r in lock(&shared.running).values() {
            r.cancel.cancel();
        }
        tasks.wait().await;
    }
    background.cancel();
    tracker.close();
    tracker.wait().await;
    if let Err(e) = shared.farm.workers_kv.delete(&key).await {
        warn!(error = %e, "cannot remove this worker's record");
    }
    info!(worker = %shared.config.name, "worker stopped");
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn info_record(sh: &Shared) -> WorkerInfo {
    let running = lock(&sh.running);
    let current: Vec<CurrentTask> = running
        .values()
        .map(|r| {
            let mut c = r.current.clone();
            c.fraction = f32::from_bits(r.fraction.load(Ordering::Relaxed));
            c
        })
        .collect();
    let (tasks_done, core_seconds) = *lock(&sh.totals);
    WorkerInfo {
        id: sh.config.name.clone(),
        region: sh.config.region.clone(),
        slots: sh.config.slots,
        busy: current.len() as u32,
        state: if sh.draining.load(Ordering::SeqCst) {
            WorkerState::Draining
        } else if current.is_empty() {
            WorkerState::Idle
        } else {
            WorkerState::Rendering
        },
        renderers: sh.renderers.clone(),
        host: hostname(),
        pid: std::process::id(),
        started_ms: sh.started_ms,
        heartbeat_ms: now_ms(),
        tasks_done,
        core_seconds,
        current,
    }
}

/// Claims this worker's name in KV. A live worker with the same name in the region is refused;
/// a record whose heartbeat stopped is taken over.
async fn register(sh: &Shared, key: &str) -> anyhow::Result<u64> {
    let body = Bytes::from(serde_json::to_vec(&info_record(sh))?);
    let kv = &sh.farm.workers_kv;
    match kv.create(key, body.clone()).await {
        Ok(rev) => Ok(rev),
        Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {
            let entry = kv
                .entry(key)
                .await?
                .context("worker record vanished while registering; try again")?;
            if let Ok(old) = serde_json::from_slice::<WorkerInfo>(&entry.value) {
                let lost = sh.config.lost_after.as_millis() as u64;
                // A process restarted after a crash (systemd, a chaos test) takes its name back
                // at once when the old one provably died on this host.
                let died_here = old.host == hostname() && !pid_alive(old.pid);
                if !died_here && old.observed_state(now_ms(), lost) != WorkerState::Lost {
                    anyhow::bail!(
                        "a worker named '{}' is already running in region '{}' (host {}, pid {}): give this one another --name",
                        old.id, old.region, old.host, old.pid
                    );
                }
            }
            Ok(kv.update(key, body, entry.revision).await?)
        }
        Err(e) => Err(e).context("cannot register the worker"),
    }
}

async fn heartbeats(
    sh: Arc<Shared>,
    key: String,
    mut rev: u64,
    stop: CancellationToken,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(sh.config.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let rec = info_record(&sh);
        let body = Bytes::from(serde_json::to_vec(&rec).unwrap_or_default());
        let client = sh.farm.client.clone();
        let _ = client
            .publish(nats::worker_subject(&rec.region, &rec.id), body.clone())
            .await;
        match sh.farm.workers_kv.update(&key, body.clone(), rev).await {
            Ok(r) => rev = r,
            Err(e) if e.kind() == async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision => {
                // Either our last write landed but its ack was lost, or another process took
                // our name. Only the first is ours to continue.
                match sh.farm.workers_kv.entry(&key).await {
                    Ok(Some(entry)) => match serde_json::from_slice::<WorkerInfo>(&entry.value) {
                        Ok(w)
                            if w.pid == rec.pid
                                && w.host == rec.host
                                && w.started_ms == rec.started_ms =>
                        {
                            rev = entry.revision
                        }
                        _ => {
                            error!(worker = %rec.id, "another worker took this worker's name; stopping");
                            shutdown.cancel();
                            return;
                        }
                    },
                    Ok(None) => match sh.farm.workers_kv.create(&key, body).await {
                        Ok(r) => rev = r,
                        Err(e) => warn!(error = %e, "cannot re-register"),
                    },
                    Err(e) => warn!(error = %e, "cannot read this worker's record"),
                }
            }
            Err(e) => warn!(error = %e, "heartbeat not recorded"),
        }
    }
}

async fn cancel_listener(sh: Arc<Shared>, stop: CancellationToken) {
    let mut sub = match sh.farm.client.subscribe(nats::CANCEL_ALL).await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for cancellations");
            return;
        }
    };
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            m = sub.next() => match m { Some(m) => m, None => return },
        };
        let Some(job) = msg
            .subject
            .as_str()
            .rsplit('.')
            .next()
            .and_then(|j| j.parse::<JobId>().ok())
        else {
            continue;
        };
        for ((j, task), r) in lock(&sh.running).iter() {
            if *j == job {
                info!(job = %job, task, "job canceled: stopping its render");
                r.cancel.cancel();
            }
        }
    }
}

/// Waits for an operator's drain request (`suanli worker drain`, the TUI's `d`) and then stops
/// the fetch loop, exactly as SIGTERM does.
async fn drain_listener(sh: Arc<Shared>, stop: CancellationToken, drain: CancellationToken) {
    let subject = nats::drain_subject(&sh.config.region, &sh.config.name);
    let mut sub = match sh.farm.client.subscribe(subject).await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for drain requests");
            return;
        }
    };
    tokio::select! {
        _ = stop.cancelled() => {}
        m = sub.next() => if m.is_some() {
            info!(worker = %sh.config.name, "drain requested by an operator");
            drain.cancel();
        },
    }
}

async fn region_consumer(sh: &Shared) -> anyhow::Result<PullConsumer> {
    let name = nats::region_consumer(&sh.config.region);
    sh.farm
        .tasks
        .get_or_create_consumer(
            &name,
            pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: nats::task_subject(&sh.config.region),
                ack_policy: AckPolicy::Explicit,
                ack_wait: sh.config.ack_wait,
                max_ack_pending: 100_000,
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("cannot open the task consumer {name}"))
}

/// Fetches at most one message, waiting a few seconds.
async fn fetch_one(
    consumer: &PullConsumer,
) -> anyhow::Result<Option<async_nats::jetstream::Message>> {
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .context("fetch request failed")?;
    let mut got = None;
    while let Some(m) = batch.next().await {
        match m {
            Ok(m) => got = Some(m),
            Err(e) => debug!(error = %e, "fetch ended"),
        }
    }
    Ok(got)
}

/// How one task run ended.
enum Outcome {
    Completed(TaskEventKind),
    Failed(Failure),
    /// Canceled (job canceled) or handed back (drain).
    Stopped,
}

async fn handle(
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
        let _ = acker.ack().await;
        return;
    }
    if blocklisted(&sh, &task.job).await {
        debug!(job = %task.job, task = task.task, "blocklisted for this job; handing the task back");
        let _ = acker
            .ack_with(AckKind::Nak(Some(BLOCKLISTED_NAK_DELAY)))
            .await;
        return;
    }
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
    let outcome = execute(&sh, &task, fraction, cancel).await;
    keepalive.cancel();
    let _ = ticker.await;
    lock(&sh.running).remove(&(task.job.clone(), task.task));

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

/// How long a task this worker may not run waits before the queue offers it again (to another
/// worker of the region, most likely).
const BLOCKLISTED_NAK_DELAY: Duration = Duration::from_secs(2);

/// Whether the coordinator barred this worker from the job after repeated failures.
async fn blocklisted(sh: &Shared, job: &JobId) -> bool {
    match sh.farm.jobs_kv.get(job.as_str()).await {
        Ok(Some(bytes)) => serde_json::from_slice::<JobRecord>(&bytes).is_ok_and(|rec| {
            rec.blocklist
                .iter()
                .any(|b| b.region == sh.config.region && b.worker == sh.config.name)
        }),
        _ => false,
    }
}

/// Whether the coordinator still wants this run: not settled, not superseded by a retry.
async fn still_wanted(sh: &Shared, task: &TaskAssignment) -> bool {
    match sh
        .farm
        .tasks_kv
        .get(nats::task_kv_key(&task.job, task.task))
        .await
    {
        Ok(Some(bytes)) => match serde_json::from_slice::<TaskRecord>(&bytes) {
            Ok(rec) => !(rec.state.is_final() || rec.attempt > task.attempt),
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
            let ev = event(&sh, &task, TaskEventKind::Progress { fraction: f });
            let _ = sh
                .farm
                .client
                .publish(nats::event_subject(&task.job, "progress"), encode(&ev))
                .await;
        }
    }
}

fn encode<T: serde::Serialize>(v: &T) -> Bytes {
    serde_json::to_vec(v).unwrap_or_default().into()
}

fn event(sh: &Shared, task: &TaskAssignment, kind: TaskEventKind) -> TaskEvent {
    TaskEvent {
        job: task.job.clone(),
        task: task.task,
        key: task.key,
        attempt: task.attempt,
        worker: sh.config.name.clone(),
        region: sh.config.region.clone(),
        at_ms: now_ms(),
        kind,
    }
}

/// Publishes a durable event, retrying through short outages. False if it never got stored.
async fn publish_event(sh: &Shared, task: &TaskAssignment, kind: TaskEventKind) -> bool {
    let subject = nats::event_subject(&task.job, kind.subject_token());
    let body = encode(&event(sh, task, kind));
    let mut delay = Duration::from_millis(200);
    for _ in 0..8 {
        match sh.farm.js.publish(subject.clone(), body.clone()).await {
            Ok(ack) => match ack.await {
                Ok(_) => return true,
                Err(e) => warn!(error = %e, "event not acknowledged; retrying"),
            },
            Err(e) => warn!(error = %e, "cannot publish an event; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    false
}

fn failure(
    sh: &Shared,
    task: &TaskAssignment,
    exit_code: Option<i32>,
    reason: String,
    stderr_tail: String,
) -> Failure {
    Failure {
        exit_code,
        reason,
        stderr_tail,
        worker: sh.config.name.clone(),
        region: sh.config.region.clone(),
        attempt: task.attempt,
        at_ms: now_ms(),
    }
}

/// Reads a committed output manifest, if any.
async fn committed(store: &Store, key: &ContentHash) -> Result<Option<OutputManifest>, String> {
    match store.get_bytes(&layout::output_manifest(key)).await {
        Ok(bytes) => OutputManifest::parse(&bytes, key)
            .map(Some)
            .map_err(|e| e.to_string()),
        Err(e) if e.kind() == StoreErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read the output manifest: {e}")),
    }
}

async fn execute(
    sh: &Arc<Shared>,
    task: &TaskAssignment,
    fraction: Arc<AtomicU32>,
    cancel: CancellationToken,
) -> Outcome {
    let started_ms = now_ms();
    let t0 = Instant::now();
    publish_event(sh, task, TaskEventKind::Started).await;
    match committed(&sh.store, &task.key).await {
        Ok(Some(m)) => {
            info!(job = %task.job, task = task.task, "output already committed: cache hit");
            return Outcome::Completed(TaskEventKind::Completed {
                cached: m.job != task.job,
                started_ms,
                core_seconds: 0.0,
                outputs: m.files,
                bytes_in: 0,
            });
        }
        Ok(None) => {}
        Err(e) => return Outcome::Failed(failure(sh, task, None, e, String::new())),
    }

    let work_root = sh.cache.dir().join("work");
    let workdir = match tokio::fs::create_dir_all(&work_root).await.and_then(|_| {
        tempfile::Builder::new()
            .prefix(&format!("{}-{}-", task.job, task.task))
            .tempdir_in(&work_root)
    }) {
        Ok(d) => d,
        Err(e) => {
            return Outcome::Failed(failure(
                sh,
                task,
                None,
                format!(
                    "cannot create a work folder in {}: {e}",
                    work_root.display()
                ),
                String::new(),
            ))
        }
    };
    let input_dir = workdir.path().join("in");
    let output_dir = workdir.path().join("out");
    if let Err(e) = tokio::fs::create_dir_all(&output_dir)
        .await
        .and(tokio::fs::create_dir_all(&input_dir).await)
    {
        return Outcome::Failed(failure(
            sh,
            task,
            None,
            format!("cannot create the task folders: {e}"),
            String::new(),
        ));
    }
    let bytes_in = match fetch_inputs(sh, task, &input_dir).await {
        Ok(n) => n,
        Err(reason) => return Outcome::Failed(failure(sh, task, None, reason, String::new())),
    };

    let threads = match task.renderer {
        RendererSpec::Builtin { .. } => 1,
        _ => sh.config.threads_per_slot.max(1),
    };
    let progress_cell = fraction.clone();
    let progress: Arc<dyn Fn(f32) + Send + Sync> = Arc::new(move |f: f32| {
        progress_cell.store(f.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    });
    let job = RenderJob {
        renderer: &task.renderer,
        chunk: task.chunk,
        scene: task.scene.as_ref().map(|s| input_dir.join(s)),
        input_dir: input_dir.clone(),
        output_dir: output_dir.clone(),
        output_pattern: &task.output,
        threads,
        timeout: Duration::from_secs(task.timeout_secs),
    };
    let outcome = render::render(job, progress, cancel).await;
    let core_seconds = t0.elapsed().as_secs_f64() * threads as f64;
    let result = match outcome {
        RenderOutcome::Rendered { frames } => match commit(sh, task, frames).await {
            Ok((outputs, cached)) => Outcome::Completed(TaskEventKind::Completed {
                cached,
                started_ms,
                core_seconds,
                outputs,
                bytes_in,
            }),
            Err(reason) => Outcome::Failed(failure(sh, task, None, reason, String::new())),
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

async fn fetch_inputs(
    sh: &Shared,
    task: &TaskAssignment,
    input_dir: &std::path::Path,
) -> Result<u64, String> {
    let manifest = sh
        .cache
        .manifest(&task.inputs)
        .await
        .map_err(|e| format!("cannot fetch the input manifest: {e}"))?;
    sh.cache
        .materialize(&manifest, input_dir)
        .await
        .map_err(|e| format!("cannot fetch inputs: {e}"))
}

/// Uploads every frame under its content key, then commits the output manifest
/// create-if-absent. Returns the committed files, and whether they came from another job
/// (a cache hit) rather than from this job's runs.
async fn commit(
    sh: &Shared,
    task: &TaskAssignment,
    frames: Vec<(u32, PathBuf)>,
) -> Result<(Vec<OutputFile>, bool), String> {
    let mut files = Vec::with_capacity(frames.len());
    for (frame, path) in frames {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("renderer wrote an unreadable file name {}", path.display()))?
            .to_string();
        suanli_shared::names::validate_file_name(&name).map_err(|e| e.to_string())?;
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| format!("cannot read rendered frame {}: {e}", path.display()))?;
        let bytes = Bytes::from(bytes);
        let hash = {
            let b = bytes.clone();
            tokio::task::spawn_blocking(move || ContentHash::of(&b))
                .await
                .map_err(|e| format!("hashing failed: {e}"))?
        };
        sh.store
            .put_content(
                &layout::output_file(&task.key, &hash, &name),
                &hash,
                bytes.clone(),
            )
            .await
            .map_err(|e| format!("cannot upload frame {frame}: {e}"))?;
        files.push(OutputFile {
            frame,
            name,
            hash,
            size: bytes.len() as u64,
        });
    }
    let manifest = OutputManifest {
        task_key: task.key,
        renderer: format!("{} {}", task.renderer.kind(), task.renderer.version()),
        files,
        job: task.job.clone(),
        worker: sh.config.name.clone(),
        region: sh.config.region.clone(),
        committed_ms: now_ms(),
    };
    let body = Bytes::from(serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?);
    match sh
        .store
        .put_if_absent(&layout::output_manifest(&task.key), body)
        .await
    {
        Ok(Commit::Created) => {
            // Chaos runs count these lines: one per task key, ever.
            info!(job = %task.job, task = task.task, key = %task.key, "output committed");
            Ok((manifest.files, false))
        }
        Ok(Commit::AlreadyExisted) => {
            info!(job = %task.job, task = task.task, "another run committed this task first; using its outputs");
            match committed(&sh.store, &task.key).await? {
                Some(m) => Ok((m.files, m.job != task.job)),
                None => Err("output manifest vanished after a commit conflict".into()),
            }
        }
        Err(e) => Err(format!("cannot commit the outputs: {e}")),
    }
}
