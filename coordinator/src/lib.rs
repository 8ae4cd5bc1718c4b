//! The coordinator: accepts jobs, splits them into content-hashed tasks, keeps the backlog and
//! releases tasks onto each region's queue as that region has free slots, and folds the
//! workers' events into job and task state.
//!
//! One actor owns all state ([`Coordinator`]); API requests, task events, worker heartbeats and
//! a timer are its inputs, handled one at a time, so there are no locks. Every state change is
//! written to KV with a revision check before it is acknowledged; KV plus the durable event
//! consumer are the lasting truth, the actor's maps a mirror.

pub mod dispatch;
pub mod lease;
pub mod placement;
pub mod sim;
pub mod state;
pub mod submit;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::kv::{Entry, Operation};
use async_nats::jetstream::AckKind;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use suanli_shared::nats::{self, Farm};
use suanli_shared::protocol::api::{self, ApiError};
use suanli_shared::protocol::{
    now_ms, JobEvent, JobRecord, JobState, TaskAssignment, TaskEvent, TaskRecord, TaskState,
    WorkerInfo, WorkerState,
};
use suanli_shared::regions::{RegionCatalog, RegionProfile};
use suanli_shared::store::Store;
use suanli_shared::{ContentHash, JobId, Region};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::state::{apply_event, Applied, Job, Versioned};

/// Coordinator settings, resolved once by the binary.
#[derive(Debug, Clone)]
pub struct Config {
    pub nats_url: String,
    pub store_url: String,
    /// Tasks released to a region beyond its free slots, so a worker finishing a task finds the
    /// next one already queued.
    pub prefetch: u32,
    /// A worker whose last heartbeat is older than this holds no slots.
    pub worker_lost_after: Duration,
    /// How long a silent lease holder keeps the lease before a standby takes over.
    pub lease_ttl: Duration,
    /// Prices, PUE, carbon and links of the regions; placement and the ledger use it.
    pub catalog: RegionCatalog,
    /// A region with no live worker for this long loses its queued and running tasks to the
    /// other regions.
    pub region_lost_after: Duration,
}

impl Config {
    pub fn new(nats_url: impl Into<String>, store_url: impl Into<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            store_url: store_url.into(),
            prefetch: 1,
            worker_lost_after: Duration::from_secs(10),
            lease_ttl: Duration::from_secs(10),
            catalog: RegionCatalog::default(),
            region_lost_after: Duration::from_secs(60),
        }
    }
}

/// Runs the coordinator until `shutdown` fires. It serves only while it holds the lease (see
/// [`lease`]); without it, it stands by, and after losing it, it stands by again.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (client, reconnects) =
        nats::connect_watched(&config.nats_url, "suanli-coordinator").await?;
    let farm = nats::setup(client).await?;
    let store = Store::open(&config.store_url)?;
    let me = lease::Holder::this_process();
    loop {
        let Some(lease) =
            lease::acquire(&farm.lease_kv, me.clone(), config.lease_ttl, &shutdown).await?
        else {
            return Ok(());
        };
        info!("holding the coordinator lease");
        let lost = CancellationToken::new();
        let stop_renewing = CancellationToken::new();
        let fresh = lease.freshness();
        let renewer = tokio::spawn(keep_lease(lease, lost.clone(), stop_renewing.clone()));
        let served = async {
            let coordinator =
                Coordinator::load(farm.clone(), store.clone(), config.clone()).await?;
            coordinator
                .serve(&shutdown, &lost, &fresh, reconnects.clone())
                .await
        }
        .await;
        stop_renewing.cancel();
        let lease = renewer.await.context("the lease task panicked")?;
        if shutdown.is_cancelled() || served.is_err() {
            if let Some(lease) = lease {
                lease.release().await;
            }
            return served;
        }
        warn!("lost the coordinator lease: stopped serving; standing by");
    }
}

/// Renews the lease until told to stop (giving the lease back) or until it is lost (`None`,
/// after cancelling `lost`).
async fn keep_lease(
    mut lease: lease::Lease,
    lost: CancellationToken,
    stop: CancellationToken,
) -> Option<lease::Lease> {
    let mut tick = tokio::time::interval(lease.renew_every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Some(lease),
            _ = tick.tick() => {}
        }
        if let Err(e) = lease.renew().await {
            warn!(error = %format!("{e:#}"), "coordinator lease lost");
            lost.cancel();
            return None;
        }
    }
}

/// The next item of a stream that may not be open; pending while it is not.
async fn next_of<S: futures::Stream + Unpin>(stream: &mut Option<S>) -> Option<S::Item> {
    match stream {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// A submission prepared off the actor, waiting to be adopted.
struct Prepared {
    job: Job,
    reply: async_nats::Subject,
}

struct Coordinator {
    farm: Farm,
    store: Store,
    config: Config,
    jobs: BTreeMap<JobId, Job>,
    workers: HashMap<String, WorkerInfo>,
    tracker: TaskTracker,
    /// Placement's memory, rebuilt from task records at start-up.
    learned: Learned,
    /// When each region last had a live worker (ms), for region loss.
    last_live: HashMap<Region, u64>,
    started_ms: u64,
}

/// What placement learns from finished tasks.
#[derive(Default)]
struct Learned {
    /// Each region's speed per renderer.
    speeds: placement::SpeedBook,
    /// Input manifests each region holds (a task with them finished there).
    held: BTreeMap<Region, BTreeSet<ContentHash>>,
    /// Per job: (sum of wall seconds, sum of core-seconds, tasks) of rendered tasks.
    task_secs: HashMap<JobId, (f64, f64, u32)>,
    /// Input fetches placement started: region -> manifest -> (when it should have arrived,
    /// ms; when to stop expecting it, ms). Cleared when a task with those inputs finishes
    /// there.
    arriving: HashMap<Region, BTreeMap<ContentHash, (u64, u64)>>,
}

impl Learned {
    /// Folds one rendered task in: the region now holds the job's inputs, and its speed is
    /// the job's mean task time so far over this task's.
    fn record(&mut self, rec: &JobRecord, region: &Region, wall_secs: f64, core_seconds: f64) {
        if rec.input_bytes > 0 {
            self.held
                .entry(region.clone())
                .or_default()
                .insert(rec.spec.inputs);
            if let Some(a) = self.arriving.get_mut(region) {
                a.remove(&rec.spec.inputs);
            }
        }
        let entry = self.task_secs.entry(rec.id.clone()).or_default();
        if entry.2 > 0 {
            let expected = entry.0 / entry.2 as f64;
            self.speeds
                .record(region, rec.spec.renderer.kind(), expected, wall_secs);
        }
        entry.0 += wall_secs;
        entry.1 += core_seconds;
        entry.2 += 1;
    }

    /// Fetches still under way into `region`: seconds until each arrives (0 when overdue),
    /// and until the region's link is free. Forgets fetches long overdue.
    fn fetches(&mut self, region: &Region, now: u64) -> (BTreeMap<ContentHash, f64>, f64) {
        let Some(a) = self.arriving.get_mut(region) else {
            return (BTreeMap::new(), 0.0);
        };
        a.retain(|_, (_, give_up)| *give_up > now);
        let secs: BTreeMap<ContentHash, f64> = a
            .iter()
            .map(|(h, (due, _))| (*h, due.saturating_sub(now) as f64 / 1000.0))
            .collect();
        let busy = secs.values().copied().fold(0.0, f64::max);
        (secs, busy)
    }

    /// Remembers the fetches a plan started (`arriving` after [`dispatch::plan`]).
    fn started_fetches(
        &mut self,
        region: &Region,
        arriving: &BTreeMap<ContentHash, f64>,
        now: u64,
    ) {
        let held = self.held.get(region);
        let a = self.arriving.entry(region.clone()).or_default();
        for (h, secs) in arriving {
            if held.is_some_and(|held| held.contains(h)) || a.contains_key(h) {
                continue;
            }
            let due = now + (secs * 1000.0) as u64;
            // A fetch this late has failed or its worker is gone: stop counting on it.
            let give_up = due + ((secs * 2000.0) as u64).max(60_000);
            a.insert(*h, (due, give_up));
        }
    }

    /// What one task of the job is expected to take at speed 1.
    fn needs(&self, rec: &JobRecord) -> placement::TaskNeeds {
        let mut needs = placement::TaskNeeds {
            input_bytes: rec.input_bytes,
            ..Default::default()
        };
        if let Some((wall, core, n)) = self.task_secs.get(&rec.id).filter(|t| t.2 > 0) {
            needs.wall_seconds = (wall / *n as f64).max(0.001);
            needs.core_seconds = (core / *n as f64).max(0.001);
        }
        needs
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("malformed {what}: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Bytes {
    serde_json::to_vec(value).unwrap_or_default().into()
}

impl Coordinator {
    /// Rebuilds the mirror from KV.
    async fn load(farm: Farm, store: Store, config: Config) -> anyhow::Result<Self> {
        let keys: Vec<String> = farm
            .jobs_kv
            .keys()
            .await
            .context("cannot list jobs")?
            .try_collect()
            .await
            .context("cannot list jobs")?;
        let mut jobs = BTreeMap::new();
        for key in keys {
            let Some(entry) = farm
                .jobs_kv
                .entry(&key)
                .await
                .context("cannot read a job")?
            else {
                continue;
            };
            let rec: JobRecord = match serde_json::from_slice(&entry.value) {
                Ok(rec) => rec,
                Err(e) => {
                    warn!(key, error = %e, "skipping unreadable job record");
                    continue;
                }
            };
            let tasks: Vec<Versioned<TaskRecord>> = futures::stream::iter(0..rec.n_tasks)
                .map(|i| {
                    let kv = farm.tasks_kv.clone();
                    let key = nats::task_kv_key(&rec.id, i);
                    async move {
                        let entry = kv
                            .entry(&key)
                            .await?
                            .ok_or_else(|| anyhow::anyhow!("task record {key} is missing"))?;
                        let rec: TaskRecord = serde_json::from_slice(&entry.value)?;
                        anyhow::Ok(Versioned {
                            rec,
                            rev: entry.revision,
                        })
                    }
                })
                .buffered(64)
                .try_collect()
                .await
                .with_context(|| format!("cannot load the tasks of job {}", rec.id))?;
            jobs.insert(
                rec.id.clone(),
                Job {
                    rec: Versioned {
                        rec,
                        rev: entry.revision,
                    },
                    tasks,
                },
            );
        }
        info!(jobs = jobs.len(), "coordinator state loaded");
        let mut learned = Learned::default();
        for job in jobs.values() {
            for t in &job.tasks {
                let t = &t.rec;
                if let (TaskState::Done, Some(region), Some(start), Some(end)) =
                    (t.state, &t.region, t.started_ms, t.finished_ms)
                {
                    let wall = end.saturating_sub(start) as f64 / 1000.0;
                    learned.record(&job.rec.rec, region, wall, t.core_seconds);
                }
            }
        }
        Ok(Self {
            farm,
            store,
            config,
            jobs,
            workers: HashMap::new(),
            tracker: TaskTracker::new(),
            learned,
            last_live: HashMap::new(),
            started_ms: now_ms(),
        })
    }

    async fn open_events(&self) -> anyhow::Result<pull::Stream> {
        let consumer = self
            .farm
            .js
            .get_stream(nats::EVENTS_STREAM)
            .await
            .context("cannot open the events stream")?
            .get_or_create_consumer(
                nats::COORDINATOR_CONSUMER,
                pull::Config {
                    durable_name: Some(nats::COORDINATOR_CONSUMER.to_string()),
                    ack_policy: AckPolicy::Explicit,
                    // Events delivered into a connection that then dropped (a NATS restart)
                    // come back after this; handling one takes milliseconds.
                    ack_wait: Duration::from_secs(5),
                    max_ack_pending: 1024,
                    ..Default::default()
                },
            )
            .await
            .context("cannot create the coordinator's event consumer")?;
        consumer.messages().await.context("cannot consume events")
    }

    /// Serves until `shutdown` or until the lease is `lost`. The event stream and the workers
    /// watch are reopened whenever they end (a NATS restart can end them); the API
    /// subscription is core NATS and is restored by the client on reconnect.
    async fn serve(
        mut self,
        shutdown: &CancellationToken,
        lost: &CancellationToken,
        fresh: &lease::Freshness,
        mut reconnects: tokio::sync::watch::Receiver<u64>,
    ) -> anyhow::Result<()> {
        let client = self.farm.client.clone();
        // Not a queue group: only the lease holder subscribes, and a holder that hung keeps its
        // subscription until the server drops it, so with a queue group it would swallow a share
        // of the requests. Plainly subscribed, the serving coordinator answers every request.
        let mut api_sub = client
            .subscribe(api::ALL)
            .await
            .context("cannot subscribe to the API subjects")?;
        let mut events = Some(self.open_events().await?);
        let mut workers_watch = Some(
            self.farm
                .workers_kv
                .watch_with_history(">")
                .await
                .context("cannot watch workers")?,
        );
        let (submit_tx, mut submit_rx) = mpsc::channel::<Prepared>(16);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        info!("coordinator ready");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = lost.cancelled() => break,
                Some(msg) = api_sub.next() => {
                    if !fresh.is_fresh() {
                        break;
                    }
                    self.handle_api(msg, &submit_tx).await
                }
                msg = next_of(&mut events) => match msg {
                    Some(Ok(msg)) => {
                        if !fresh.is_fresh() {
                            break; // unacknowledged: redelivered to the new holder
                        }
                        self.handle_event(msg).await
                    }
                    Some(Err(e)) => warn!(error = %e, "event consumer error"),
                    None => {
                        warn!("the event stream ended; reopening it");
                        events = None;
                    }
                },
                entry = next_of(&mut workers_watch) => match entry {
                    Some(Ok(entry)) => self.handle_worker(entry),
                    Some(Err(e)) => warn!(error = %e, "worker watch error"),
                    None => {
                        warn!("the workers watch ended; reopening it");
                        workers_watch = None;
                    }
                },
                Ok(()) = reconnects.changed() => {
                    info!("reconnected to NATS: reopening the event stream and workers watch");
                    events = None;
                    workers_watch = None;
                    tick.reset_immediately();
                }
                Some(prepared) = submit_rx.recv() => {
                    if !fresh.is_fresh() {
                        break;
                    }
                    self.adopt(prepared).await
                }
                _ = tick.tick() => {
                    // Region loss is measured in tens of seconds: checked on the timer, not
                    // after every message.
                    self.withdraw_from_lost_regions(now_ms()).await;
                    if events.is_none() {
                        match self.open_events().await {
                            Ok(s) => events = Some(s),
                            Err(e) => warn!(error = %format!("{e:#}"), "cannot reopen the event stream"),
                        }
                    }
                    if workers_watch.is_none() {
                        match self.farm.workers_kv.watch_with_history(">").await {
                            Ok(w) => workers_watch = Some(w),
                            Err(e) => warn!(error = %e, "cannot reopen the workers watch"),
                        }
                    }
                }
            }
            if lost.is_cancelled() || !fresh.is_fresh() {
                break;
            }
            self.dispatch().await;
        }
        self.tracker.close();
        self.tracker.wait().await;
        info!("coordinator stopped");
        Ok(())
    }

    fn reply<T: Serialize>(&self, reply: Option<async_nats::Subject>, result: Result<T, ApiError>) {
        let Some(reply) = reply else { return };
        let body = match result {
            Ok(v) => encode(&api::Reply::Ok(v)),
            Err(e) => encode(&api::Reply::<()>::Error(e)),
        };
        let client = self.farm.client.clone();
        self.tracker.spawn(async move {
            if let Err(e) = client.publish(reply, body).await {
                warn!(error = %e, "cannot send an API reply");
            }
        });
    }

    fn job(&self, bytes: &[u8]) -> Result<&Job, ApiError> {
        let req: api::JobRequest = decode(bytes, "request")?;
        self.jobs
            .get(&req.job)
            .ok_or_else(|| ApiError::not_found(format!("no job {}", req.job)))
    }

    async fn handle_api(&mut self, msg: async_nats::Message, submit_tx: &mpsc::Sender<Prepared>) {
        let reply = msg.reply.clone();
        match msg.subject.as_str() {
            api::SUBMIT => {
                let Some(reply) = reply else { return };
                let req: api::SubmitRequest = match decode(&msg.payload, "submit request") {
                    Ok(r) => r,
                    Err(e) => return self.reply(Some(reply), Err::<(), _>(e)),
                };
                let (farm, store, tx) = (self.farm.clone(), self.store.clone(), submit_tx.clone());
                let offered = self.offered_renderers();
                self.tracker.spawn(async move {
                    match submit::prepare(req.spec, &farm, &store, &offered).await {
                        Ok(job) => {
                            let _ = tx.send(Prepared { job, reply }).await;
                        }
                        Err(e) => {
                            let body = encode(&api::Reply::<()>::Error(e));
                            let _ = farm.client.publish(reply, body).await;
                        }
                    }
                });
            }
            api::STATUS => {
                let r = self.job(&msg.payload).map(|j| self.status_of(j));
                self.reply(reply, r);
            }
            api::REGIONS => {
                let list: Vec<RegionProfile> = self.config.catalog.regions().cloned().collect();
                self.reply(reply, Ok(list));
            }
            api::JOB => {
                let r = self.job(&msg.payload).map(|j| j.rec.rec.clone());
                self.reply(reply, r);
            }
            api::JOBS => {
                let list: Vec<_> = self
                    .jobs
                    .values()
                    .rev()
                    .take(200)
                    .map(|j| {
                        let mut s = self.status_of(j);
                        s.failures.clear();
                        s
                    })
                    .collect();
                self.reply(reply, Ok(list));
            }
            api::WORKERS => {
                let now = now_ms();
                let lost = self.config.worker_lost_after.as_millis() as u64;
                let mut list: Vec<WorkerInfo> = self
                    .workers
                    .values()
                    .map(|w| {
                        let mut w = w.clone();
                        w.state = w.observed_state(now, lost);
                        w
                    })
                    .collect();
                list.sort_by(|a, b| (&a.region, &a.id).cmp(&(&b.region, &b.id)));
                self.reply(reply, Ok(list));
            }
            api::TASKS => {
                let r = decode::<api::TasksRequest>(&msg.payload, "request").and_then(|req| {
                    let job = self
                        .jobs
                        .get(&req.job)
                        .ok_or_else(|| ApiError::not_found(format!("no job {}", req.job)))?;
                    let limit = req.limit.min(api::MAX_TASKS_PAGE) as usize;
                    let tasks = job
                        .tasks
                        .iter()
                        .skip(req.offset as usize)
                        .take(limit)
                        .map(|t| t.rec.clone())
                        .collect();
                    Ok(api::TasksPage {
                        total: job.tasks.len() as u32,
                        offset: req.offset,
                        tasks,
                    })
                });
                self.reply(reply, r);
            }
            api::DRAIN => {
                let r = decode::<api::DrainRequest>(&msg.payload, "request").and_then(|req| {
                    let key = nats::worker_key(&req.region, &req.worker);
                    self.workers.get(&key).cloned().ok_or_else(|| {
                        ApiError::not_found(format!(
                            "no worker '{}' in region '{}' (see `suanli workers`)",
                            req.worker, req.region
                        ))
                    })
                });
                if let Ok(w) = &r {
                    info!(worker = %w.id, region = %w.region, "drain requested");
                    if let Err(e) = self
                        .farm
                        .client
                        .publish(nats::drain_subject(&w.region, &w.id), Bytes::new())
                        .await
                    {
                        warn!(error = %e, "cannot send a drain request");
                    }
                }
                self.reply(reply, r);
            }
            api::CANCEL => {
                let r = match decode::<api::JobRequest>(&msg.payload, "request") {
                    Ok(req) => self.cancel(&req.job).await,
                    Err(e) => Err(e),
                };
                self.reply(reply, r);
            }
            api::RETRY => {
                let r = match decode::<api::JobRequest>(&msg.payload, "request") {
                    Ok(req) => self.retry(&req.job).await,
                    Err(e) => Err(e),
                };
                self.reply(reply, r);
            }
            other => {
                let r: Result<(), _> = Err(ApiError::bad_request(format!(
                    "unknown API subject {other}"
                )));
                self.reply(reply, r);
            }
        }
    }

    /// A job's status with its ledger priced from the region catalog.
    fn status_of(&self, job: &Job) -> suanli_shared::protocol::JobStatus {
        let mut status = job.status();
        suanli_shared::ledger::price_status(&mut status, &self.config.catalog);
        status
    }

    /// Renderer versions offered by live workers.
    fn offered_renderers(&self) -> submit::Offered {
        let mut out = submit::Offered::new();
        for w in self.live_workers() {
            for (kind, version) in &w.renderers {
                out.entry(kind.clone()).or_default().insert(version.clone());
            }
        }
        out
    }

    fn live_workers(&self) -> impl Iterator<Item = &WorkerInfo> {
        let now = now_ms();
        let lost = self.config.worker_lost_after.as_millis() as u64;
        self.workers
            .values()
            .filter(move |w| w.observed_state(now, lost) != WorkerState::Lost)
    }

    async fn adopt(&mut self, prepared: Prepared) {
        let job = prepared.job;
        let status = job.status();
        info!(job = %status.id, name = %status.name, tasks = status.tasks.total, cached = status.tasks.cached, "job submitted");
        let reply = api::SubmitReply {
            id: status.id.clone(),
            tasks: status.tasks.total,
            cached: status.tasks.cached,
        };
        let state = job.rec.rec.state;
        self.jobs.insert(status.id.clone(), job);
        self.publish_job_event(&status.id, state, None).await;
        self.reply(Some(prepared.reply), Ok(reply));
    }

    async fn publish_job_event(&self, job: &JobId, state: JobState, reason: Option<String>) {
        let ev = JobEvent {
            job: job.clone(),
            state,
            at_ms: now_ms(),
            reason,
        };
        let subject = nats::event_subject(job, "job");
        match self.farm.js.publish(subject, encode(&ev)).await {
            Ok(ack) => {
                if let Err(e) = ack.await {
                    warn!(error = %e, "job event not stored");
                }
            }
            Err(e) => warn!(error = %e, "cannot publish a job event"),
        }
    }

    async fn write_task(&self, rec: &TaskRecord, rev: u64) -> anyhow::Result<u64> {
        let key = nats::task_kv_key(&rec.job, rec.task);
        self.farm
            .tasks_kv
            .update(&key, encode(rec), rev)
            .await
            .with_context(|| format!("cannot update task {key}"))
    }

    async fn write_job(&self, rec: &JobRecord, rev: u64) -> anyhow::Result<u64> {
        self.farm
            .jobs_kv
            .update(rec.id.as_str(), encode(rec), rev)
            .await
            .with_context(|| format!("cannot update job {}", rec.id))
    }

    /// Sets one task's record, persisting it first.
    async fn set_task(&mut self, job: &JobId, task: u32, next: TaskRecord) -> anyhow::Result<()> {
        let rev = self.jobs[job].tasks[task as usize].rev;
        let new_rev = self.write_task(&next, rev).await?;
        let slot = &mut self.jobs.get_mut(job).expect("job exists").tasks[task as usize];
        *slot = Versioned {
            rec: next,
            rev: new_rev,
        };
        Ok(())
    }

    /// Moves the job to the state its tasks imply, persisting and announcing a change.
    async fn settle_job(&mut self, id: &JobId) {
        let Some(job) = self.jobs.get(id) else { return };
        let state = job.derived_state();
        if state == job.rec.rec.state {
            return;
        }
        let mut rec = job.rec.rec.clone();
        rec.state = state;
        rec.reason = (state == JobState::Failed)
            .then(|| job.failure_reason())
            .flatten();
        rec.finished_ms = state.is_final().then(now_ms);
        match self.write_job(&rec, job.rec.rev).await {
            Ok(rev) => {
                info!(job = %id, state = state.as_str(), "job state changed");
                let reason = rec.reason.clone();
                self.jobs.get_mut(id).expect("job exists").rec = Versioned { rec, rev };
                self.publish_job_event(id, state, reason).await;
            }
            Err(e) => warn!(error = %format!("{e:#}"), "cannot record a job state change"),
        }
    }

    async fn handle_event(&mut self, msg: async_nats::jetstream::Message) {
        let subject = msg.subject.to_string();
        if subject.ends_with(".job") {
            let _ = msg.ack().await;
            return;
        }
        let ev: TaskEvent = match serde_json::from_slice(&msg.payload) {
            Ok(ev) => ev,
            Err(e) => {
                warn!(subject, error = %e, "dropping a malformed task event");
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            }
        };
        let Some(job) = self.jobs.get(&ev.job) else {
            debug!(job = %ev.job, "event for an unknown job");
            let _ = msg.ack().await;
            return;
        };
        let Some(task) = job.tasks.get(ev.task as usize) else {
            warn!(job = %ev.job, task = ev.task, "event for an unknown task");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        };
        if task.rec.key != ev.key {
            warn!(job = %ev.job, task = ev.task, "event's task key does not match the task; dropped");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
        let applied = apply_event(
            &task.rec,
            &ev,
            job.rec.rec.spec.max_retries,
            job.rec.rec.state,
            now_ms(),
        );
        if let Applied::Changed(next) = applied {
            if let Err(e) = self.set_task(&ev.job, ev.task, *next).await {
                // Leave the event unacknowledged: it is redelivered and applied again.
                warn!(error = %format!("{e:#}"), "cannot apply an event; will retry");
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
                return;
            }
            if matches!(
                ev.kind,
                suanli_shared::protocol::TaskEventKind::Failed { .. }
            ) {
                self.update_blocklist(&ev.job).await;
            }
            if let suanli_shared::protocol::TaskEventKind::Completed {
                cached: false,
                started_ms,
                core_seconds,
                ..
            } = &ev.kind
            {
                let wall = ev.at_ms.saturating_sub(*started_ms) as f64 / 1000.0;
                let rec = &self.jobs[&ev.job].rec.rec;
                self.learned.record(rec, &ev.region, wall, *core_seconds);
            }
            self.settle_job(&ev.job).await;
        }
        let _ = msg.ack().await;
    }

    /// Blocklists workers that have failed this job too often; they take none of its tasks
    /// (they hand them back) and dispatch skips regions where no other worker is left.
    async fn update_blocklist(&mut self, id: &JobId) {
        let Some(job) = self.jobs.get(id) else { return };
        let added = job.new_blocklisted(now_ms());
        if added.is_empty() {
            return;
        }
        let mut rec = job.rec.rec.clone();
        rec.blocklist.extend(added.iter().cloned());
        match self.write_job(&rec, job.rec.rev).await {
            Ok(rev) => {
                for b in &added {
                    warn!(job = %id, worker = %b.worker, region = %b.region, failures = b.failures, "worker blocklisted for this job");
                }
                self.jobs.get_mut(id).expect("job exists").rec = Versioned { rec, rev };
            }
            Err(e) => warn!(error = %format!("{e:#}"), "cannot record a blocklisted worker"),
        }
    }

    fn handle_worker(&mut self, entry: Entry) {
        match entry.operation {
            Operation::Put => match serde_json::from_slice::<WorkerInfo>(&entry.value) {
                Ok(w) => {
                    if !self.workers.contains_key(&entry.key) {
                        info!(worker = %w.id, region = %w.region, slots = w.slots, "worker joined");
                    }
                    self.workers.insert(entry.key, w);
                }
                Err(e) => warn!(key = entry.key, error = %e, "ignoring a malformed worker record"),
            },
            Operation::Delete | Operation::Purge => {
                self.workers.remove(&entry.key);
            }
        }
    }

    /// Releases backlog tasks onto regions with free slots.
    async fn dispatch(&mut self) {
        let mut free: BTreeMap<Region, i64> = BTreeMap::new();
        let mut live_slots: BTreeMap<Region, u32> = BTreeMap::new();
        let mut region_workers: BTreeMap<Region, Vec<suanli_shared::WorkerId>> = BTreeMap::new();
        let now = now_ms();
        let mut live_regions = Vec::new();
        for w in self.live_workers() {
            live_regions.push(w.region.clone());
            if w.state != WorkerState::Draining {
                *free.entry(w.region.clone()).or_default() += w.slots as i64;
                *live_slots.entry(w.region.clone()).or_default() += w.slots;
                region_workers
                    .entry(w.region.clone())
                    .or_default()
                    .push(w.id.clone());
            }
        }
        for region in live_regions {
            self.last_live.insert(region, now);
        }
        if free.is_empty() {
            return;
        }
        let mut queued: BTreeMap<Region, u32> = BTreeMap::new();
        let mut renderers: BTreeSet<String> = BTreeSet::new();
        for (region, f) in free.iter_mut() {
            *f += (region_workers[region].len() as i64).min(self.config.prefetch as i64);
        }
        let mut ids = Vec::new();
        let mut views = Vec::new();
        for job in self.jobs.values() {
            if job.rec.rec.state.is_final() {
                continue;
            }
            let mut in_flight = 0;
            let mut ready = Vec::new();
            for t in &job.tasks {
                match t.rec.state {
                    TaskState::Queued | TaskState::Running => {
                        in_flight += 1;
                        if let Some(f) = t.rec.region.as_ref().and_then(|r| free.get_mut(r)) {
                            *f -= 1;
                        }
                        if let (TaskState::Queued, Some(r)) = (t.rec.state, &t.rec.region) {
                            *queued.entry(r.clone()).or_default() += 1;
                        }
                    }
                    TaskState::Pending if t.rec.not_before_ms <= now => ready.push(t.rec.task),
                    _ => {}
                }
            }
            if ready.is_empty() {
                continue;
            }
            let allowed = allowed_regions(&job.rec.rec, &region_workers);
            if allowed.as_ref().is_some_and(|a| a.is_empty()) {
                continue;
            }
            let rec = &job.rec.rec;
            ids.push(rec.id.clone());
            let mut view = dispatch::JobView::new(
                rec.spec.priority,
                rec.created_ms,
                in_flight,
                allowed.unwrap_or_else(|| rec.spec.regions.clone()),
                ready,
            );
            view.policy = rec
                .spec
                .placement
                .policy
                .unwrap_or(self.config.catalog.policy);
            view.deadline_ms = rec.spec.placement.deadline_ms;
            view.max_slots = rec.spec.placement.max_slots;
            view.renderer = rec.spec.renderer.kind().to_string();
            view.inputs = (rec.input_bytes > 0).then_some(rec.spec.inputs);
            view.needs = self.learned.needs(rec);
            renderers.insert(view.renderer.clone());
            views.push(view);
        }
        let mut regions: Vec<dispatch::RegionView> = free
            .into_iter()
            .map(|(region, f)| {
                let slots = live_slots.get(&region).copied().unwrap_or(0);
                let mut view =
                    dispatch::RegionView::new(self.config.catalog.profile(&region), f, slots);
                view.queued = queued.get(&region).copied().unwrap_or(0);
                view.cached = self.learned.held.get(&region).cloned().unwrap_or_default();
                (view.arriving, view.link_busy_secs) = self.learned.fetches(&region, now);
                for kind in &renderers {
                    view.speed
                        .insert(kind.clone(), self.learned.speeds.factor(&region, kind));
                }
                view
            })
            .collect();
        let releases = dispatch::plan(&mut views, &mut regions, now);
        for region in &regions {
            self.learned
                .started_fetches(region.name(), &region.arriving, now);
        }
        let mut touched = Vec::new();
        for release in releases {
            let id = &ids[release.job];
            if let Err(e) = self.release(id, release.task, &release.region).await {
                warn!(error = %format!("{e:#}"), "cannot release a task; will retry");
                break;
            }
            if !touched.contains(id) {
                touched.push(id.clone());
            }
        }
        for id in touched {
            self.settle_job(&id).await;
        }
    }

    /// Regions that have had no live worker for `region_lost_after` lose their queued and
    /// running tasks: the region's queue is purged and the tasks go back to the backlog, to be
    /// placed elsewhere (or to wait, when the job allows only that region).
    async fn withdraw_from_lost_regions(&mut self, now: u64) {
        let lost_after = self.config.region_lost_after.as_millis() as u64;
        let mut stranded: BTreeMap<Region, Vec<(JobId, u32)>> = BTreeMap::new();
        for job in self.jobs.values() {
            if job.rec.rec.state.is_final() {
                continue;
            }
            for t in &job.tasks {
                if let (TaskState::Queued | TaskState::Running, Some(region)) =
                    (t.rec.state, &t.rec.region)
                {
                    let last = self
                        .last_live
                        .get(region)
                        .copied()
                        .unwrap_or(self.started_ms);
                    if now.saturating_sub(last) > lost_after {
                        stranded
                            .entry(region.clone())
                            .or_default()
                            .push((t.rec.job.clone(), t.rec.task));
                    }
                }
            }
        }
        for (region, tasks) in stranded {
            if let Err(e) = self
                .farm
                .tasks
                .purge()
                .filter(nats::task_subject(&region))
                .await
            {
                warn!(region = %region, error = %e, "cannot purge a lost region's queue; will retry");
                continue;
            }
            let mut moved: BTreeMap<JobId, u32> = BTreeMap::new();
            for (job, task) in tasks {
                let mut next = self.jobs[&job].tasks[task as usize].rec.clone();
                next.state = TaskState::Pending;
                next.region = None;
                next.worker = None;
                if let Err(e) = self.set_task(&job, task, next).await {
                    warn!(error = %format!("{e:#}"), "cannot withdraw a task; will retry");
                    continue;
                }
                *moved.entry(job).or_default() += 1;
            }
            for (job, n) in moved {
                let reason = format!(
                    "region {region} lost (no live worker for {:?}): {n} task(s) withdrawn to be placed elsewhere",
                    self.config.region_lost_after
                );
                warn!(job = %job, region = %region, tasks = n, "region lost: tasks withdrawn");
                let state = self.jobs[&job].rec.rec.state;
                self.publish_job_event(&job, state, Some(reason)).await;
            }
        }
    }

    /// Publishes one task to a region's queue, then records it as queued. The publish carries
    /// an idempotency key, so publishing again after a crash between the two steps is harmless.
    async fn release(
        &mut self,
        id: &JobId,
        task: u32,
        region: &suanli_shared::Region,
    ) -> anyhow::Result<()> {
        let job = &self.jobs[id];
        let spec = &job.rec.rec.spec;
        let rec = &job.tasks[task as usize].rec;
        let assignment = TaskAssignment {
            job: id.clone(),
            task,
            key: rec.key,
            attempt: rec.attempt,
            chunk: rec.chunk,
            renderer: spec.renderer.clone(),
            inputs: spec.inputs,
            scene: spec.scene.clone(),
            output: spec.output.clone(),
            timeout_secs: spec.task_timeout_secs,
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            nats::task_msg_id(id, task, rec.attempt, rec.releases).as_str(),
        );
        self.farm
            .js
            .publish_with_headers(nats::task_subject(region), headers, encode(&assignment))
            .await
            .context("cannot publish a task")?
            .await
            .context("task publish not acknowledged")?;
        let mut next = rec.clone();
        next.state = TaskState::Queued;
        next.region = Some(region.clone());
        next.worker = None;
        next.releases = rec.releases + 1;
        debug!(job = %id, task, region = %region, attempt = next.attempt, "task released");
        self.set_task(id, task, next).await
    }

    async fn cancel(&mut self, id: &JobId) -> Result<suanli_shared::protocol::JobStatus, ApiError> {
        let job = self
            .jobs
            .get(id)
            .ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
        if !job.rec.rec.state.is_final() {
            let mut rec = job.rec.rec.clone();
            rec.state = JobState::Canceled;
            rec.finished_ms = Some(now_ms());
            rec.reason = Some("canceled by request".into());
            let rev = self
                .write_job(&rec, job.rec.rev)
                .await
                .map_err(|e| ApiError::internal(format!("{e:#}")))?;
            self.jobs.get_mut(id).expect("job exists").rec = Versioned { rec, rev };
            // Tell workers to stop now; queued messages are skipped because the tasks are canceled.
            let _ = self
                .farm
                .client
                .publish(nats::cancel_subject(id), Bytes::new())
                .await;
            let open: Vec<TaskRecord> = self.jobs[id]
                .tasks
                .iter()
                .filter(|t| !t.rec.state.is_final())
                .map(|t| t.rec.clone())
                .collect();
            for mut t in open {
                t.state = TaskState::Canceled;
                t.finished_ms = Some(now_ms());
                let task = t.task;
                if let Err(e) = self.set_task(id, task, t).await {
                    warn!(error = %format!("{e:#}"), "cannot record a canceled task");
                }
            }
            self.publish_job_event(id, JobState::Canceled, Some("canceled by request".into()))
                .await;
            info!(job = %id, "job canceled");
        }
        Ok(self.jobs[id].status())
    }

    async fn retry(&mut self, id: &JobId) -> Result<suanli_shared::protocol::JobStatus, ApiError> {
        let job = self
            .jobs
            .get(id)
            .ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
        let again: Vec<TaskRecord> = job
            .tasks
            .iter()
            .filter(|t| matches!(t.rec.state, TaskState::Failed | TaskState::Canceled))
            .map(|t| t.rec.clone())
            .collect();
        if again.is_empty() {
            return Err(ApiError::bad_request(format!(
                "job {id} has no failed or canceled tasks to retry"
            )));
        }
        let mut rec = job.rec.rec.clone();
        rec.state = JobState::Running;
        rec.finished_ms = None;
        rec.reason = None;
        let rev = self
            .write_job(&rec, job.rec.rev)
            .await
            .map_err(|e| ApiError::internal(format!("{e:#}")))?;
        self.jobs.get_mut(id).expect("job exists").rec = Versioned { rec, rev };
        let n = again.len();
        for mut t in again {
            t.state = TaskState::Pending;
            t.attempt += 1;
            t.not_before_ms = 0;
            t.finished_ms = None;
            t.region = None;
            let task = t.task;
            self.set_task(id, task, t)
                .await
                .map_err(|e| ApiError::internal(format!("{e:#}")))?;
        }
        info!(job = %id, tasks = n, "job retried");
        self.publish_job_event(id, JobState::Running, None).await;
        Ok(self.jobs[id].status())
    }
}

/// The regions a job may be released to now, when its blocklist narrows them: the allowed
/// regions (all live ones when the spec allows any) minus those where every live worker is
/// blocklisted for the job. `None` when the blocklist changes nothing.
fn allowed_regions(
    rec: &JobRecord,
    region_workers: &BTreeMap<suanli_shared::Region, Vec<suanli_shared::WorkerId>>,
) -> Option<Vec<suanli_shared::Region>> {
    if rec.blocklist.is_empty() {
        return None;
    }
    let all_blocked = |region: &suanli_shared::Region| {
        region_workers.get(region).is_some_and(|ws| {
            ws.iter().all(|w| {
                rec.blocklist
                    .iter()
                    .any(|b| &b.region == region && &b.worker == w)
            })
        })
    };
    let candidates: Vec<suanli_shared::Region> = if rec.spec.regions.is_empty() {
        region_workers.keys().cloned().collect()
    } else {
        rec.spec.regions.clone()
    };
    Some(candidates.into_iter().filter(|r| !all_blocked(r)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use suanli_shared::protocol::{InputManifest, JobSpec, Placement, RendererSpec};

    fn job(input_bytes: u64) -> JobRecord {
        JobRecord {
            id: JobId::generate(),
            spec: JobSpec {
                name: "j".into(),
                priority: 0,
                frames: "1-4".parse().unwrap(),
                chunk: 1,
                regions: vec![],
                max_retries: 0,
                task_timeout_secs: 60,
                renderer: RendererSpec::Builtin {
                    width: 8,
                    height: 8,
                    samples: 1,
                },
                inputs: InputManifest::default().hash(),
                scene: None,
                output: "f_####".into(),
                placement: Placement::default(),
            },
            state: JobState::Running,
            n_tasks: 4,
            created_ms: 0,
            finished_ms: None,
            reason: None,
            blocklist: vec![],
            input_bytes,
        }
    }

    #[test]
    fn fetches_a_plan_started_count_down_until_a_task_lands_or_they_are_long_overdue() {
        let mut learned = Learned::default();
        let guian: Region = "guian".parse().unwrap();
        let rec = job(5_000_000_000);
        let h = rec.spec.inputs;
        learned.started_fetches(&guian, &BTreeMap::from([(h, 40.0)]), 1_000);
        let (secs, busy) = learned.fetches(&guian, 11_000);
        assert_eq!((secs[&h], busy), (30.0, 30.0), "10 s of 40 s gone");
        // Planned again: the fetch already under way is not restarted.
        learned.started_fetches(&guian, &BTreeMap::from([(h, 40.0)]), 11_000);
        assert_eq!(learned.fetches(&guian, 11_000).0[&h], 30.0);
        // Overdue: arriving any moment, until long overdue (twice the estimate, at least 60 s).
        assert_eq!(learned.fetches(&guian, 50_000).0[&h], 0.0);
        assert!(learned.fetches(&guian, 121_001).0.is_empty());
        // A task that finished there means the region holds the inputs.
        learned.started_fetches(&guian, &BTreeMap::from([(h, 40.0)]), 200_000);
        learned.record(&rec, &guian, 1.0, 1.0);
        assert!(learned.fetches(&guian, 200_000).0.is_empty());
        assert!(learned.held[&guian].contains(&h));
        learned.started_fetches(&guian, &BTreeMap::from([(h, 40.0)]), 200_000);
        assert!(
            learned.fetches(&guian, 200_000).0.is_empty(),
            "held inputs are not fetched"
        );
    }

    #[test]
    fn speeds_and_task_needs_come_from_rendered_tasks() {
        let mut learned = Learned::default();
        let (fast, slow): (Region, Region) = ("fast".parse().unwrap(), "slow".parse().unwrap());
        let rec = job(0);
        assert_eq!(
            learned.needs(&rec).wall_seconds,
            placement::TaskNeeds::default().wall_seconds
        );
        learned.record(&rec, &slow, 10.0, 10.0);
        learned.record(&rec, &fast, 5.0, 5.0);
        assert!(learned.speeds.factor(&fast, "builtin") > 1.5);
        assert_eq!(learned.needs(&rec).wall_seconds, 7.5);
        assert!(
            learned.held.is_empty(),
            "a job without inputs leaves nothing held"
        );
    }
}
