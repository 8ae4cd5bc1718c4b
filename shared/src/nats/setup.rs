//! Set-up: the streams and buckets, created idempotently by the roles that may (`setup`) or
//! attached to by those that may not (`attach`), and the region queue consumer's config.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use super::*;

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
    let events_config = stream::Config {
        name: EVENTS_STREAM.to_string(),
        subjects: stored_events(),
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(7 * 24 * 3600),
        duplicate_window: Duration::from_secs(3600),
        ..Default::default()
    };
    let mut events = js
        .get_or_create_stream(events_config.clone())
        .await
        .map_err(|e| setup_err(EVENTS_STREAM, e))?;
    // A stream made by an older version keeps the event subjects of its day, and events on
    // today's subjects would match no stream (and never reach the coordinator): bring them up to
    // date. Only the subjects change; the stored events stay.
    let info = events
        .info()
        .await
        .map_err(|e| setup_err(EVENTS_STREAM, e))?;
    if info.config.subjects != events_config.subjects {
        let mut updated = info.config.clone();
        updated.subjects = events_config.subjects.clone();
        js.update_stream(updated)
            .await
            .map_err(|e| setup_err(EVENTS_STREAM, e))?;
        tracing::info!(subjects = ?events_config.subjects, "updated the event stream's subjects");
    }
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

/// Opens the streams and buckets the coordinator created, creating nothing: for roles that may
/// not create them (a worker on a secure farm). Waits for a coordinator that is still starting.
pub async fn attach(client: async_nats::Client) -> Result<Farm, NatsError> {
    let js = jetstream::new(client.clone());
    let started = std::time::Instant::now();
    let mut logged = false;
    loop {
        let attempt = async {
            let tasks = js
                .get_stream(TASKS_STREAM)
                .await
                .map_err(|e| (TASKS_STREAM, e.to_string()))?;
            let kv = |name: &'static str| {
                let js = js.clone();
                async move {
                    js.get_key_value(name)
                        .await
                        .map_err(|e| (name, e.to_string()))
                }
            };
            Ok::<_, (&str, String)>(Farm {
                client: client.clone(),
                js: js.clone(),
                tasks,
                jobs_kv: kv(JOBS_BUCKET).await?,
                tasks_kv: kv(TASKS_BUCKET).await?,
                workers_kv: kv(WORKERS_BUCKET).await?,
                lease_kv: kv(LEASE_BUCKET).await?,
            })
        };
        match attempt.await {
            Ok(farm) => return Ok(farm),
            Err((what, e)) if started.elapsed() > ATTACH_PATIENCE => {
                return Err(setup_err(
                    what,
                    format!("{e} (the coordinator creates it: is one running on this farm?)"),
                ))
            }
            Err((what, e)) => {
                if !logged {
                    tracing::info!(missing = what, error = %e, "waiting for the coordinator to set up the farm");
                    logged = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// How long [`attach`] waits for a coordinator to create the farm.
const ATTACH_PATIENCE: Duration = Duration::from_secs(120);

/// How long a task may go without an acknowledgement before its region's queue offers it again,
/// on a consumer the coordinator creates (a secure farm, where workers may not create them).
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(60);

/// The durable pull consumer of a region's queue, shared by every worker of the region.
pub fn region_consumer_config(
    region: &Region,
    ack_wait: Duration,
) -> jetstream::consumer::pull::Config {
    let name = region_consumer(region);
    jetstream::consumer::pull::Config {
        durable_name: Some(name),
        filter_subject: task_subject(region),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait,
        max_ack_pending: 100_000,
        ..Default::default()
    }
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
