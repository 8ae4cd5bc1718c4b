//! NATS names and set-up: the one module that spells subjects, streams, consumers and buckets,
//! and that creates them (idempotently) on a server it has checked is new enough.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use crate::names::{JobId, Region, WorkerId};
use crate::protocol::{DecodeError, Event, EventKind};

/// Work-queue stream holding released tasks, one subject per region.
pub const TASKS_STREAM: &str = "SUANLI_TASKS";
/// Limits stream of task and job events.
pub const EVENTS_STREAM: &str = "SUANLI_EVENTS";
/// Job spec and state, key = job id.
pub const JOBS_BUCKET: &str = "suanli_jobs";
/// Per-task state, key = `<job>.<task index>`.
pub const TASKS_BUCKET: &str = "suanli_tasks";
/// Worker heartbeats, key = `<region>.<worker>`.
pub const WORKERS_BUCKET: &str = "suanli_workers";
/// Durable consumer through which the coordinator folds events into state.
pub const COORDINATOR_CONSUMER: &str = "coordinator";
/// Coordinator leadership: one key, [`LEASE_KEY`], held by the coordinator that dispatches.
pub const LEASE_BUCKET: &str = "suanli_lease";
pub const LEASE_KEY: &str = "coordinator";

/// Oldest nats-server accepted: older ones cannot create KV buckets with async-nats 0.51 and
/// silently ignore features Suanli relies on.
pub const MIN_SERVER: (u64, u64) = (2, 11);

pub fn task_subject(region: &Region) -> String {
    format!("suanli.task.{region}")
}

pub fn region_consumer(region: &Region) -> String {
    format!("region-{region}")
}

/// Subject of a task or job event.
pub fn event_subject(job: &JobId, kind: EventKind) -> String {
    format!("suanli.evt.{job}.{}", kind.as_str())
}

/// The kind of event a subject carries (`suanli.evt.<job>.<kind>`); `None` for a subject
/// that is not an event subject.
pub fn event_kind(subject: &str) -> Option<EventKind> {
    let rest = subject.strip_prefix("suanli.evt.")?;
    let (job, kind) = rest.rsplit_once('.')?;
    if job.is_empty() || job.contains('.') {
        return None;
    }
    EventKind::from_token(kind)
}

/// Decodes an event received on `subject`: its kind from the subject, its body by that kind.
pub fn decode_event(subject: &str, payload: &[u8]) -> Result<Event, DecodeError> {
    let kind = event_kind(subject).ok_or_else(|| {
        DecodeError::invalid("event", format!("{subject} is not an event subject"))
    })?;
    Event::decode(kind, payload)
}

/// Every event of one job (live subscription).
pub fn job_events(job: &JobId) -> String {
    format!("suanli.evt.{job}.>")
}

/// Every event of every job, progress included (the TUI's live subscription).
pub const ALL_EVENTS: &str = "suanli.evt.>";

/// Live heartbeat subject of a worker (core NATS; the lasting copy is in KV).
pub fn worker_subject(region: &Region, worker: &WorkerId) -> String {
    format!("suanli.worker.{region}.{worker}")
}

/// Every worker's live heartbeat.
pub const ALL_WORKERS: &str = "suanli.worker.>";

pub fn worker_key(region: &Region, worker: &WorkerId) -> String {
    format!("{region}.{worker}")
}

pub fn task_kv_key(job: &JobId, task: u32) -> String {
    format!("{job}.{task}")
}

/// Core-NATS broadcast telling workers to stop rendering a job's tasks now.
pub fn cancel_subject(job: &JobId) -> String {
    format!("suanli.ctl.cancel.{job}")
}

pub const CANCEL_ALL: &str = "suanli.ctl.cancel.*";

/// Core-NATS message telling one worker to drain (sent by the coordinator's `drain` API).
pub fn drain_subject(region: &Region, worker: &WorkerId) -> String {
    format!("suanli.ctl.drain.{region}.{worker}")
}

/// Header carrying the idempotency key of a task publish: one per (attempt, release), so a
/// repeated publish of the same release is dropped and a re-release is not.
pub fn task_msg_id(job: &JobId, task: u32, attempt: u32, release: u32) -> String {
    format!("{job}.{task}.{attempt}.{release}")
}

/// Errors connecting to or preparing NATS.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot connect to NATS at {url}: {source} (is nats-server running? start one with `suanli up` or scripts/install-tools.sh)")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("nats-server {found} at {url} is too old: Suanli needs {}.{} or newer with JetStream (Debian's 2.9 package is too old; scripts/install-tools.sh installs a current one)", MIN_SERVER.0, MIN_SERVER.1)]
    TooOld { url: String, found: String },
    #[error("nats-server at {url} has JetStream disabled: start it with -js")]
    NoJetStream { url: String },
    #[error("cannot set up {what}: {message}")]
    Setup { what: String, message: String },
}

fn parse_version(v: &str) -> Option<(u64, u64)> {
    let mut parts = v.trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Connects (reconnecting by itself afterwards) and refuses servers older than
/// [`MIN_SERVER`] or without JetStream.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, NatsError> {
    Ok(connect_watched(url, name).await?.0)
}

/// [`connect`], plus a counter that moves on every reconnection. Pull requests and ordered
/// consumers in flight when a server restarts are lost with it, and the client notices only
/// after their heartbeats or expiry run out (seconds); a role that watches this counter
/// reopens them at once instead.
pub async fn connect_watched(
    url: &str,
    name: &str,
) -> Result<(async_nats::Client, tokio::sync::watch::Receiver<u64>), NatsError> {
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    let was_down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = async_nats::ConnectOptions::new()
        .event_callback(move |event| {
            let (tx, was_down) = (tx.clone(), was_down.clone());
            async move {
                use std::sync::atomic::Ordering;
                match event {
                    async_nats::Event::Disconnected => was_down.store(true, Ordering::SeqCst),
                    async_nats::Event::Connected if was_down.swap(false, Ordering::SeqCst) => {
                        tx.send_modify(|n| *n += 1)
                    }
                    _ => {}
                }
            }
        })
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(30)))
        .max_reconnects(None)
        .connect(url)
        .await
        .map_err(|source| NatsError::Connect {
            url: url.to_string(),
            source,
        })?;
    let info = client.server_info();
    match parse_version(&info.version) {
        Some(v) if v >= MIN_SERVER => {}
        _ => {
            return Err(NatsError::TooOld {
                url: url.to_string(),
                found: info.version,
            })
        }
    }
    if !info.jetstream {
        // A leaf node without JetStream of its own (a region's leaf, deploy/nats/leaf.conf)
        // forwards the JetStream API to its hub: refuse only a server where no JetStream
        // answers at all.
        let js = jetstream::new(client.clone());
        let answered = tokio::time::timeout(Duration::from_secs(5), js.query_account()).await;
        if !matches!(answered, Ok(Ok(_))) {
            return Err(NatsError::NoJetStream {
                url: url.to_string(),
            });
        }
    }
    Ok((client, rx))
}

/// Handles to every stream and bucket, created if missing.
#[derive(Clone)]
pub struct Farm {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub tasks: stream::Stream,
    pub jobs_kv: kv::Store,
    pub tasks_kv: kv::Store,
    pub workers_kv: kv::Store,
    pub lease_kv: kv::Store,
}

fn setup_err(what: &str, e: impl std::fmt::Display) -> NatsError {
    NatsError::Setup {
        what: what.to_string(),
        message: e.to_string(),
    }
}

/// Creates (or opens) the streams and buckets. Safe to call from every role at start-up.
pub async fn setup(client: async_nats::Client) -> Result<Farm, NatsError> {
    let js = jetstream::new(client.clone());
    let tasks = js
        .get_or_create_stream(stream::Config {
            name: TASKS_STREAM.to_string(),
            subjects: vec!["suanli.task.*".to_string()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            // Message-id dedupe must outlive any coordinator restart; KV state is the lasting guard.
            duplicate_window: Duration::from_secs(6 * 3600),
            ..Default::default()
        })
        .await
        .map_err(|e| setup_err(TASKS_STREAM, e))?;
    js.get_or_create_stream(stream::Config {
        name: EVENTS_STREAM.to_string(),
        subjects: ["started", "completed", "failed", "job"]
            .iter()
            .map(|k| format!("suanli.evt.*.{k}"))
            .collect(),
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(7 * 24 * 3600),
        duplicate_window: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .map_err(|e| setup_err(EVENTS_STREAM, e))?;
    let jobs_kv = bucket(&js, JOBS_BUCKET, Duration::ZERO).await?;
    let tasks_kv = bucket(&js, TASKS_BUCKET, Duration::ZERO).await?;
    let workers_kv = bucket(&js, WORKERS_BUCKET, Duration::from_secs(24 * 3600)).await?;
    let lease_kv = bucket(&js, LEASE_BUCKET, Duration::ZERO).await?;
    Ok(Farm {
        client,
        js,
        tasks,
        jobs_kv,
        tasks_kv,
        workers_kv,
        lease_kv,
    })
}

async fn bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
) -> Result<kv::Store, NatsError> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    let created = js
        .create_key_value(kv::Config {
            bucket: name.to_string(),
            history: 1,
            max_age,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Ok(store),
        // Another role created it between our look-up and create.
        Err(e) => js.get_key_value(name).await.map_err(|_| setup_err(name, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(parse_version("2.15.1"), Some((2, 15)));
        assert!(parse_version("2.9.10").unwrap() < MIN_SERVER);
        assert!(parse_version("2.11.0").unwrap() >= MIN_SERVER);
        assert!(parse_version("3.0.0").unwrap() >= MIN_SERVER);
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn event_subjects_name_their_kind() {
        let job = JobId::generate();
        for kind in EventKind::ALL {
            assert_eq!(event_kind(&event_subject(&job, kind)), Some(kind));
        }
        assert_eq!(event_kind("suanli.evt.j.jobs"), None);
        assert_eq!(event_kind("suanli.task.guian"), None);
        assert_eq!(event_kind("suanli.evt.a.b.job"), None);
        assert!(decode_event("suanli.task.guian", b"{}")
            .unwrap_err()
            .to_string()
            .contains("not an event subject"));
    }
}
