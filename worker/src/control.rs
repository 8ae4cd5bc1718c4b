//! Operator control of a running worker: job cancellations (stop that job's renders at once)
//! and drain requests (stop fetching, as SIGTERM does). It exists so that the messages which
//! act on a worker from outside arrive in one place, apart from the pull loop they interrupt.

use std::sync::Arc;

use futures::StreamExt;
use suanli_shared::nats;
use suanli_shared::JobId;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::state::{lock, Shared};

/// Stops the renders of every job canceled on `suanli.ctl.cancel.<job>`, until `stop`.
pub(crate) async fn cancel_listener(sh: Arc<Shared>, stop: CancellationToken) {
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
pub(crate) async fn drain_listener(
    sh: Arc<Shared>,
    stop: CancellationToken,
    drain: CancellationToken,
) {
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
