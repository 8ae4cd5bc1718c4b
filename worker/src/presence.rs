//! The worker's presence in the farm: its record in the `suanli_workers` bucket (what it runs,
//! its slots, its current tasks and totals), claimed once under its name and refreshed by
//! heartbeats. It exists so that one place owns the record's revision: a second live worker
//! with the same name is refused, a crashed one's name is taken back, and a worker that lost
//! its name to another process stops.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context as _;
use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
use suanli_shared::nats;
use suanli_shared::protocol::decode;
use suanli_shared::protocol::{encode, now_ms, CurrentTask, WorkerInfo, WorkerState};
use suanli_shared::sys::{hostname, pid_alive};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::state::{lock, Shared};

/// This worker's record as it stands now.
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
        profiles: sh.config.renderers.profile_names(),
        host: hostname(),
        pid: std::process::id(),
        started_ms: sh.started_ms,
        heartbeat_ms: now_ms(),
        tasks_done,
        core_seconds,
        current,
        resources: Some(sh.pool.total().clone()),
        gpus_busy: sh.pool.gpus_busy(),
    }
}

/// Claims this worker's name in KV. A live worker with the same name in the region is refused;
/// a record whose heartbeat stopped is taken over.
pub(crate) async fn register(sh: &Shared, key: &str) -> anyhow::Result<u64> {
    let body =
        encode(&info_record(sh), "worker record").context("cannot encode the worker record")?;
    let kv = &sh.farm.workers_kv;
    match kv.create(key, body.clone()).await {
        Ok(rev) => Ok(rev),
        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
            let entry = kv
                .entry(key)
                .await?
                .context("worker record vanished while registering; try again")?;
            if let Ok(old) = decode::<WorkerInfo>(&entry.value, "worker record") {
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

/// Publishes and stores the worker record every heartbeat until `stop`; cancels `shutdown`
/// when another process took this worker's name.
pub(crate) async fn heartbeats(
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
        let body = match encode(&rec, "worker record") {
            Ok(body) => body,
            Err(e) => {
                error!(worker = %rec.id, error = %e, "cannot encode the worker record; skipping this heartbeat");
                continue;
            }
        };
        let client = sh.farm.client.clone();
        let _ = client
            .publish(nats::worker_subject(&rec.region, &rec.id), body.clone())
            .await;
        match sh.farm.workers_kv.update(&key, body.clone(), rev).await {
            Ok(r) => rev = r,
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                // Either our last write landed but its ack was lost, or another process took
                // our name. Only the first is ours to continue.
                match sh.farm.workers_kv.entry(&key).await {
                    Ok(Some(entry)) => match decode::<WorkerInfo>(&entry.value, "worker record") {
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
