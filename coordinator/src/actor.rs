//! The coordinator actor: one [`Coordinator`] owns all state and handles its inputs (API
//! requests, task events, worker heartbeats, prepared submissions and a timer) one at a time,
//! so there are no locks. This module holds the actor itself and its life: the lease loop
//! that decides when it serves, loading its state from KV, and the select loop that feeds it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::{pull, AckPolicy};
use futures::{StreamExt, TryStreamExt};
use suanli_shared::nats::{self, Farm};
use suanli_shared::protocol::api;
use suanli_shared::protocol::decode;
use suanli_shared::protocol::{now_ms, JobRecord, TaskRecord, TaskState, WorkerInfo};
use suanli_shared::store::Store;
use suanli_shared::{JobId, Region, Studio};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::budgets::Budgets;
use crate::learned::Learned;
use crate::metrics::Metrics;
use crate::state::{Job, Versioned};
use crate::{lease, Config};

/// Runs the coordinator until `shutdown` fires. It serves only while it holds the lease (see
/// [`lease`]); without it, it stands by, and after losing it, it stands by again.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let (refresh_tx, mut refresh_rx) = mpsc::channel::<oneshot::Sender<()>>(4);
    let _scrapes = match config.metrics_listen {
        Some(addr) => Some(serve_metrics(addr, metrics.clone(), refresh_tx).await?),
        None => None,
    };
    let (client, reconnects) =
        nats::connect_watched(&config.nats_url, "suanli-coordinator", &config.access).await?;
    let farm = nats::setup(client).await?;
    let store = Store::open(&config.store_url)?;
    let me = lease::Holder::this_process();
    // Webhook deliveries outlive a lost lease (events already announced are still posted)
    // and stop with the coordinator.
    let hooks_tracker = TaskTracker::new();
    let hooks_stop = shutdown.child_token();
    let webhooks = crate::webhooks::Webhooks::start(
        config.webhooks.clone(),
        &hooks_tracker,
        hooks_stop.clone(),
    )?;
    let _stop_hooks = hooks_stop.drop_guard();
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
                Coordinator::load(farm.clone(), store.clone(), config.clone(), metrics.clone())
                    .await?;
            metrics.set_lease_holder(true);
            let coordinator = Coordinator {
                webhooks: webhooks.clone(),
                ..coordinator
            };
            coordinator
                .serve(
                    &shutdown,
                    &lost,
                    &fresh,
                    reconnects.clone(),
                    &mut refresh_rx,
                )
                .await
        }
        .await;
        metrics.set_lease_holder(false);
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

/// Aborts the task it holds when dropped (the metrics endpoint ends with the role).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Binds the metrics endpoint and serves it. A scrape first asks the actor to set the gauges
/// from its state (waiting at most a moment: a standby or a busy actor answers with the last
/// values).
async fn serve_metrics(
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    refresh: mpsc::Sender<oneshot::Sender<()>>,
) -> anyhow::Result<AbortOnDrop> {
    let listener = suanli_shared::scrape::bind(addr).await?;
    let render: suanli_shared::scrape::Render = Arc::new(move || {
        let metrics = metrics.clone();
        let refresh = refresh.clone();
        Box::pin(async move {
            let (done, refreshed) = oneshot::channel();
            // Only a serving coordinator's actor answers; a standby shows its last values.
            if metrics.is_serving() && refresh.try_send(done).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(2), refreshed).await;
            }
            metrics.encode()
        })
    });
    Ok(AbortOnDrop(tokio::spawn(suanli_shared::scrape::serve(
        listener, render,
    ))))
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
pub(crate) struct Prepared {
    pub(crate) job: Job,
    pub(crate) reply: async_nats::Subject,
}

/// The actor: all of the coordinator's state. Its inputs are handled by the modules named
/// for them (`api`, `events`, `release`, `region_loss`, `control`), each an `impl` of it.
pub(crate) struct Coordinator {
    pub(crate) farm: Farm,
    pub(crate) store: Store,
    pub(crate) config: Config,
    pub(crate) jobs: BTreeMap<JobId, Job>,
    pub(crate) workers: HashMap<String, WorkerInfo>,
    pub(crate) tracker: TaskTracker,
    /// Placement's memory, rebuilt from task records at start-up.
    pub(crate) learned: Learned,
    /// When each region last had a live worker (ms), for region loss.
    pub(crate) last_live: HashMap<Region, u64>,
    /// Tasks recorded as queued whose publish is not known to have reached their queue: a
    /// publish that failed, or, after start-up, every queued task. Published (again) before
    /// the next round.
    pub(crate) unconfirmed: BTreeSet<(JobId, u32)>,
    pub(crate) started_ms: u64,
    /// Regions whose queue consumer this coordinator has created (a secure farm, where
    /// workers may not create it).
    pub(crate) open_queues: HashSet<Region>,
    /// Studios whose budget limits their releases, and how many more each may release
    /// (refreshed every round; 0: stopped).
    pub(crate) budget_rooms: BTreeMap<Studio, u32>,
    /// The month's spend per studio, rebuilt from task records at start-up.
    pub(crate) budgets: Budgets,
    /// Jobs with requirements that no live worker meets, with the reason last announced in a
    /// job event (so each change is announced once, not every round).
    pub(crate) unplaceable: HashMap<JobId, String>,
    /// The Prometheus series, kept by small calls where state changes.
    pub(crate) metrics: Arc<Metrics>,
    /// Worker incarnations on this host found dead, whose tasks were taken back (each once).
    pub(crate) buried: HashSet<(String, crate::recovery::Incarnation)>,
    /// Where job state changes are posted (never waited on).
    pub(crate) webhooks: crate::webhooks::Webhooks,
    /// Pre-staging asked per job and region, and how much the regions report there.
    pub(crate) staging: crate::stage::Staging,
}

impl Coordinator {
    /// Rebuilds the mirror from KV.
    async fn load(
        farm: Farm,
        store: Store,
        config: Config,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
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
            let rec: JobRecord = match decode(&entry.value, "job record") {
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
                        let rec: TaskRecord = decode(&entry.value, "task record")?;
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
            let rec = Versioned {
                rec,
                rev: entry.revision,
            };
            jobs.insert(rec.rec.id.clone(), Job::new(rec, tasks));
        }
        info!(jobs = jobs.len(), "coordinator state loaded");
        let mut learned = Learned::default();
        let mut unconfirmed = BTreeSet::new();
        let mut budgets = Budgets::new(now_ms());
        for (id, job) in &jobs {
            for t in job.tasks() {
                let t = &t.rec;
                if let (TaskState::Done, Some(_), Some(at)) = (t.state, &t.region, t.finished_ms) {
                    let cost = Budgets::cost_of(t, &config.catalog);
                    budgets.charge(&job.rec.rec, cost, at);
                }
                // The previous coordinator may have recorded it and died before publishing.
                if t.state == TaskState::Queued {
                    unconfirmed.insert((id.clone(), t.task));
                }
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
            unconfirmed,
            started_ms: now_ms(),
            open_queues: HashSet::new(),
            budget_rooms: BTreeMap::new(),
            budgets,
            unplaceable: HashMap::new(),
            metrics,
            buried: HashSet::new(),
            webhooks: crate::webhooks::Webhooks::none(),
            staging: Default::default(),
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
        refresh: &mut mpsc::Receiver<oneshot::Sender<()>>,
    ) -> anyhow::Result<()> {
        let client = self.farm.client.clone();
        // Not a queue group: only the lease holder subscribes, and a holder that hung keeps its
        // subscription until the server drops it, so with a queue group it would swallow a share
        // of the requests. Plainly subscribed, the serving coordinator answers every request.
        let operator_sub = client
            .subscribe(api::ALL)
            .await
            .context("cannot subscribe to the API subjects")?;
        let studios_sub = client
            .subscribe(api::ALL_STUDIOS)
            .await
            .context("cannot subscribe to the studios' API subjects")?;
        let mut api_sub = futures::stream::select(operator_sub, studios_sub);
        let mut staged_sub = client
            .subscribe(nats::ALL_STAGED)
            .await
            .context("cannot subscribe to pre-staging reports")?;
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
                Some(msg) = staged_sub.next() => {
                    self.handle_staged(msg);
                    continue;
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
                    Some(Ok(entry)) => {
                        let restarted = self.handle_worker(entry);
                        if let (Some(gone), true) = (restarted, self.config.fast_recovery) {
                            if !fresh.is_fresh() {
                                break;
                            }
                            self.release_orphans(gone, "restarted").await;
                        }
                        self.open_region_queues().await;
                    }
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
                Some(done) = refresh.recv() => {
                    self.refresh_metrics();
                    let _ = done.send(());
                    continue;
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
                    if self.config.fast_recovery && fresh.is_fresh() {
                        for gone in self.dead_here(now_ms()) {
                            self.release_orphans(gone, "died (its process is gone)").await;
                        }
                    }
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
}
