//! The worker's service loop: open the connections, register, start the heartbeats and the
//! control listeners, then fetch one task per free slot until shutdown, and drain. It exists
//! to own the worker's lifetime; what happens to each task lives in `task`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt;
use suanli_shared::nats;
use suanli_shared::protocol::now_ms;
use suanli_shared::store::Store;
use suanli_shared::transfer::RateLimit;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::cache::Cache;
use crate::config::Config;
use crate::control::{cancel_listener, drain_listener};
use crate::metrics::WorkerMetrics;
use crate::presence::{heartbeats, register};
use crate::render;
use crate::render::sandbox::Confinement;
use crate::resources::Pool;
use crate::stage::stage_listener;
use crate::state::{lock, Shared};
use crate::task::handle;

/// Runs a worker until `shutdown` fires, then drains: no new tasks, running ones finish within
/// the grace period or go back to the queue, and the worker's record is removed.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    config.renderers.check()?;
    // Bound first, so a bad address stops the worker before it joins the farm.
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(suanli_shared::scrape::bind(addr).await?),
        None => None,
    };
    // Looking bwrap up and trying it runs processes: off the async threads.
    let settings = config.clone();
    let confinement = tokio::task::spawn_blocking(move || confinement(&settings))
        .await
        .context("the sandbox check stopped")??;
    let confinement = Arc::new(confinement);
    let (client, mut reconnects) = nats::connect_watched(
        &config.nats_url,
        &format!("suanli-worker-{}", config.name),
        &config.access,
    )
    .await?;
    let farm = if config.access.identity.is_some() {
        nats::attach(client).await?
    } else {
        nats::setup(client).await?
    };
    let store = Store::open(&config.store_url)?;
    let cache = Cache::open(&config.cache_dir, config.cache_max_bytes, store.clone())
        .await
        .context("cannot open the input cache")?
        .with_download_rate(config.max_download_rate.map(RateLimit::new));
    config.renderers.check()?;
    let renderers = config
        .renderers
        .advertised(&render::detect_versions().await);
    let config_resources = config.resources.clone();
    let metrics = Arc::new(WorkerMetrics::new(&cache.counters));
    let shared = Arc::new(Shared {
        farm,
        store,
        cache,
        config,
        renderers,
        confinement,
        running: Mutex::new(HashMap::new()),
        totals: Mutex::new((0, 0.0)),
        draining: AtomicBool::new(false),
        handing_back: AtomicBool::new(false),
        started_ms: now_ms(),
        pool: Pool::new(config_resources),
        metrics,
    });
    let _scrapes = metrics_listener.map(|listener| serve_metrics(listener, shared.clone()));
    let cfg = &shared.config;
    let key = nats::worker_key(&cfg.region, &cfg.name);
    let rev = register(&shared, &key).await?;
    let consumer = region_consumer(&shared).await?;
    info!(worker = %cfg.name, region = %cfg.region, slots = cfg.slots, resources = ?cfg.resources, renderers = ?shared.renderers, "worker ready");

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
    tracker.spawn(stage_listener(shared.clone(), background.clone()));
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

/// Aborts the task it holds when dropped (the metrics endpoint ends with the worker).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves this worker's metrics on `listener`, the gauges read from its state at each scrape.
fn serve_metrics(listener: tokio::net::TcpListener, sh: Arc<Shared>) -> AbortOnDrop {
    let render: suanli_shared::scrape::Render = Arc::new(move || {
        let sh = sh.clone();
        Box::pin(async move {
            let busy = lock(&sh.running).len();
            sh.metrics.encode(
                sh.config.slots,
                busy,
                sh.cache.used_bytes(),
                sh.config.cache_max_bytes,
            )
        })
    });
    AbortOnDrop(tokio::spawn(suanli_shared::scrape::serve(listener, render)))
}

/// How this worker confines renders: its settings, with the cache folder, the identity file
/// and a local store's folder added to what a sandboxed render must not see. Refuses `--sandbox required` without
/// a working bwrap, and `--run-as` in a worker that is not root.
fn confinement(config: &Config) -> anyhow::Result<Confinement> {
    let mut settings = config.sandbox.clone();
    settings.hide.push(absolute(&config.cache_dir));
    if let Some(id) = &config.access.identity {
        settings.hide.push(absolute(&id.path));
    }
    // A store on this machine's disk holds every studio's inputs and outputs.
    if let Ok(store) = Store::open(&config.store_url) {
        if let Some(dir) = store.url().strip_prefix("file://") {
            settings.hide.push(std::path::PathBuf::from(dir));
        }
    }
    let c = Confinement::resolve(&settings, None)?;
    if c.run_as.is_some() {
        // The render user may reach its own task's folder, not the blobs of every studio nor
        // a list of the other tasks (without bwrap these permissions are all that hides them).
        use std::os::unix::fs::PermissionsExt;
        for (dir, mode) in [("cas", 0o700), ("work", 0o711)] {
            let dir = config.cache_dir.join(dir);
            std::fs::create_dir_all(&dir)
                .and_then(|()| {
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
                })
                .with_context(|| format!("cannot restrict {}", dir.display()))?;
        }
    }
    info!(
        sandbox = c.sandboxed(),
        run_as = c.run_as.as_ref().map(|u| u.name.as_str()),
        "renders confined"
    );
    Ok(c)
}

/// `path` made absolute against the current directory (a sandbox names host paths).
fn absolute(path: &std::path::Path) -> std::path::PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The region's durable pull consumer, shared by every worker of the region. On a secure farm
/// only the coordinator may create it (when it first sees a worker of the region), so the
/// worker waits for it; on an open farm the first worker creates it.
async fn region_consumer(sh: &Shared) -> anyhow::Result<PullConsumer> {
    let name = nats::region_consumer(&sh.config.region);
    if sh.config.access.identity.is_none() {
        return sh
            .farm
            .tasks
            .get_or_create_consumer(
                &name,
                nats::region_consumer_config(&sh.config.region, sh.config.ack_wait),
            )
            .await
            .with_context(|| format!("cannot open the task consumer {name}"));
    }
    let started = std::time::Instant::now();
    loop {
        match sh.farm.tasks.get_consumer(&name).await {
            Ok(c) => return Ok(c),
            Err(e) if started.elapsed() > Duration::from_secs(120) => {
                return Err(anyhow::anyhow!(
                    "region {}'s task queue {name} does not exist: {e} (the coordinator creates it when it sees this worker; is one running?)",
                    sh.config.region
                ))
            }
            Err(e) => {
                debug!(error = %e, "waiting for the coordinator to open {name}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
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
