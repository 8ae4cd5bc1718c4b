//! The coordinator: accepts jobs, splits them into content-hashed tasks, keeps the backlog and
//! releases tasks onto each region's queue as that region has free slots, and folds the
//! workers' events into job and task state.
//!
//! One actor owns all state ([`Coordinator`]); API requests, task events, worker heartbeats and
//! a timer are its inputs, handled one at a time, so there are no locks. Every state change is
//! written to KV with a revision check before it is acknowledged; KV plus the durable event
//! consumer are the lasting truth, the actor's maps a mirror.

pub mod dispatch;
pub mod state;
pub mod submit;

use std::collections::{BTreeMap, HashMap};
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
use suanli_shared::store::Store;
use suanli_shared::JobId;
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
}

impl Config {
    pub fn new(nats_url: impl Into<String>, store_url: impl Into<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            store_url: store_url.into(),
            prefetch: 1,
            worker_lost_after: Duration::from_secs(10),
        }
    }
}

/// Runs the coordinator until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let client = nats::connect(&config.nats_url, "suanli-coordinator").await?;
    let farm = nats::setup(client).await?;
    let store = Store::open(&config.store_url)?;
    let coordinator = Coordinator::load(farm, store, config).await?;
    coordinator.serve(shutdown).await
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
        Ok(Self {
            farm,
            store,
            config,
            jobs,
            workers: HashMap::new(),
            tracker: TaskTracker::new(),
        })
    }

    async fn serve(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let client = self.farm.client.clone();
        let mut api_sub = client
            .queue_subscribe(api::ALL, "suanli-coordinator".to_string())
            .await
            .context("cannot subscribe to the API subjects")?;
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
                    ack_wait: Duration::from_secs(30),
                    max_ack_pending: 1024,
                    ..Default::default()
                },
            )
            .await
            .context("cannot create the coordinator's event consumer")?;
        let mut events = consumer.messages().await.context("cannot consume events")?;
        let mut workers_watch = self
            .farm
            .workers_kv
            .watch_with_history(">")
            .await
            .context("cannot watch workers")?;
        let (submit_tx, mut submit_rx) = mpsc::channel::<Prepared>(16);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        info!("coordinator ready");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(msg) = api_sub.next() => self.handle_api(msg, &submit_tx).await,
                Some(msg) = events.next() => match msg {
                    Ok(msg) => self.handle_event(msg).await,
                    Err(e) => warn!(error = %e, "event consumer error"),
                },
                Some(entry) = workers_watch.next() => match entry {
                    Ok(entry) => self.handle_worker(entry),
                    Err(e) => warn!(error = %e, "worker watch error"),
                },
                Some(prepared) = submit_rx.recv() => self.adopt(prepared).await,
                _ = tick.tick() => {}
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
                let r = self.job(&msg.payload).map(|j| j.status());
                self.reply(reply, r);
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
                        let mut s = j.status();
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
            self.settle_job(&ev.job).await;
        }
        let _ = msg.ack().await;
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
        let mut free: BTreeMap<suanli_shared::Region, i64> = BTreeMap::new();
        let mut n_workers: BTreeMap<suanli_shared::Region, i64> = BTreeMap::new();
        for w in self.live_workers() {
            if w.state != WorkerState::Draining {
                *free.entry(w.region.clone()).or_default() += w.slots as i64;
                *n_workers.entry(w.region.clone()).or_default() += 1;
            }
        }
        if free.is_empty() {
            return;
        }
        for (region, f) in free.iter_mut() {
            *f += n_workers[region].min(self.config.prefetch as i64);
        }
        let now = now_ms();
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
                    }
                    TaskState::Pending if t.rec.not_before_ms <= now => ready.push(t.rec.task),
                    _ => {}
                }
            }
            if ready.is_empty() {
                continue;
            }
            ids.push(job.rec.rec.id.clone());
            views.push(dispatch::JobView {
                priority: job.rec.rec.spec.priority,
                created_ms: job.rec.rec.created_ms,
                in_flight,
                allowed: job.rec.rec.spec.regions.clone(),
                ready,
            });
        }
        let releases = dispatch::plan(&views, &mut free);
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
            nats::task_msg_id(id, task, rec.attempt).as_str(),
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
