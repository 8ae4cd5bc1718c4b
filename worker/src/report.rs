//! How the worker tells the farm about a task: task events (durable started, completed and
//! failed; best-effort progress) and the failure record. It exists so that every event is built
//! and published one way, and a payload that cannot be encoded is an error that is logged and
//! never sent, rather than an empty message.

use std::time::Duration;

use bytes::Bytes;
use suanli_shared::nats;
use suanli_shared::protocol::{encode, now_ms, Failure, TaskAssignment, TaskEvent, TaskEventKind};
use tracing::{debug, error, warn};

use crate::state::Shared;

/// An event about this run of `task`, by this worker, now.
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

/// Encodes an event and its subject; logs and gives `None` when it cannot be encoded.
fn encode_event(
    sh: &Shared,
    task: &TaskAssignment,
    kind: TaskEventKind,
) -> Option<(String, Bytes)> {
    let subject = nats::task_event_subject(
        &task.studio,
        &task.job,
        kind.event_kind(),
        &sh.config.region,
    );
    match encode(&event(sh, task, kind), "task event") {
        Ok(body) => Some((subject, body)),
        Err(e) => {
            error!(job = %task.job, task = task.task, subject, error = %e, "cannot encode a task event; not sending it");
            None
        }
    }
}

/// Publishes a durable event, retrying through short outages. False if it never got stored
/// (including when it cannot be encoded).
pub(crate) async fn publish_event(sh: &Shared, task: &TaskAssignment, kind: TaskEventKind) -> bool {
    let Some((subject, body)) = encode_event(sh, task, kind) else {
        return false;
    };
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

/// Publishes a progress event, best effort: a lost one is superseded by the next.
pub(crate) async fn publish_progress(sh: &Shared, task: &TaskAssignment, fraction: f32) {
    let Some((subject, body)) = encode_event(sh, task, TaskEventKind::Progress { fraction }) else {
        return;
    };
    if let Err(e) = sh.farm.client.publish(subject, body).await {
        debug!(error = %e, "progress event not sent");
    }
}

/// Why this run of `task` failed, as recorded in its failed event.
pub(crate) fn failure(
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
