//! Pre-staging on the worker: takes the region's pre-stage requests (`suanli.stage.<region>`,
//! in the region's queue group, so one worker of the region takes each), fetches the job's
//! inputs into the cache only, and reports how much of them is there to the coordinator
//! (`suanli.staged.<region>`), every second while it runs and once at the end. It exists so a
//! job's inputs cross the WAN while its tasks still wait for slots.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use suanli_shared::nats;
use suanli_shared::protocol::{encode, now_ms, StageProgress, StageRequest};
use suanli_shared::transfer::Progress;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::state::Shared;

/// Stagings this worker runs at once; further requests wait in the subscription.
const STAGINGS_AT_ONCE: usize = 2;
/// How often a running staging reports.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Takes pre-stage requests for this worker's region until `stop`.
pub(crate) async fn stage_listener(sh: Arc<Shared>, stop: CancellationToken) {
    let region = &sh.config.region;
    let mut sub = match sh
        .farm
        .client
        .queue_subscribe(nats::stage_subject(region), nats::stage_queue(region))
        .await
    {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for pre-stage requests; tasks fetch on demand");
            return;
        }
    };
    let limit = Arc::new(Semaphore::new(STAGINGS_AT_ONCE));
    let running = TaskTracker::new();
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        let req = match StageRequest::decode(&msg.payload) {
            Ok(r) if &r.region == region => r,
            Ok(r) => {
                warn!(region = %r.region, "dropping a pre-stage request for another region");
                continue;
            }
            Err(e) => {
                warn!(error = %e, "dropping a pre-stage request");
                continue;
            }
        };
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let sh = sh.clone();
        let stop = stop.clone();
        running.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = stage(&sh, &req) => {}
            }
            drop(permit);
        });
    }
    running.close();
    running.wait().await;
}

/// Stages one job's inputs, reporting as it goes.
async fn stage(sh: &Shared, req: &StageRequest) {
    let manifest = match sh.cache.manifest(&req.studio, &req.inputs).await {
        Ok(m) => m,
        Err(e) => {
            let p = Progress::new(0);
            let error = format!("cannot fetch the input manifest: {e}");
            report(sh, req, &p, 0, true, Some(error)).await;
            return;
        }
    };
    let total = manifest.total_bytes();
    let progress = Progress::new(total);
    info!(job = %req.job, studio = %req.studio, bytes = total, "pre-staging inputs");
    let work = sh.cache.stage(&req.studio, &manifest, &progress);
    tokio::pin!(work);
    let mut ticks = tokio::time::interval(REPORT_EVERY);
    ticks.tick().await;
    let result = loop {
        tokio::select! {
            r = &mut work => break r,
            _ = ticks.tick() => report(sh, req, &progress, total, false, None).await,
        }
    };
    match result {
        Ok(moved) => {
            info!(job = %req.job, moved, "inputs pre-staged: {}", progress.line());
            report(sh, req, &progress, total, true, None).await;
        }
        Err(e) => {
            let error = format!("cannot pre-stage the inputs: {e}");
            report(sh, req, &progress, total, true, Some(error)).await;
        }
    }
}

async fn report(
    sh: &Shared,
    req: &StageRequest,
    progress: &Progress,
    total: u64,
    done: bool,
    error: Option<String>,
) {
    let p = StageProgress {
        job: req.job.clone(),
        region: sh.config.region.clone(),
        worker: sh.config.name.clone(),
        present_bytes: progress.done().min(total),
        total_bytes: total,
        moved_bytes: progress.moved_bytes(),
        done,
        error,
        at_ms: now_ms(),
    };
    let body = match encode(&p, "stage progress") {
        Ok(b) => b,
        Err(e) => {
            warn!(error = %e, "cannot encode a pre-staging report");
            return;
        }
    };
    if let Err(e) = sh
        .farm
        .client
        .publish(nats::staged_subject(&sh.config.region), body)
        .await
    {
        warn!(error = %e, "cannot send a pre-staging report");
    }
}
