//! The background tasks that talk to the farm for the terminal: the poller (snapshot, catalog,
//! the open job's task pages), the live event listener, and the effect runner (operator
//! actions, preview downloads). They only post actions, never touch the state, and every call
//! has a timeout so a silent farm becomes a banner, not a frozen screen.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use suanli_shared::protocol::api::MAX_TASKS_PAGE;
use suanli_shared::protocol::now_ms;
use suanli_shared::{ContentHash, JobId, Region, Studio};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::action::{Action, Effect, Snapshot};
use crate::api::{FarmApi, FarmError, FarmErrorKind};
use crate::state::Interest;

/// How often the coordinator is polled.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// Longest a poll request may take before the farm counts as out of reach.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest an operator action may take.
const ACTION_TIMEOUT: Duration = Duration::from_secs(15);
/// The catalog is asked for again this often (sooner while there is none).
const CATALOG_EVERY: Duration = Duration::from_secs(30);
const CATALOG_RETRY: Duration = Duration::from_secs(10);
/// Jobs with at most this many tasks have every record refreshed each poll; larger ones the
/// selected page plus one more page in turn (events keep the rest current).
const FULL_REFRESH_MAX: u32 = 4 * MAX_TASKS_PAGE;

/// Runs `f` with the poll timeout; a timeout means the farm is out of reach.
async fn call<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, FarmError>>,
) -> Result<T, FarmError> {
    match timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(FarmError::unreachable(format!(
            "no answer within {}s",
            limit.as_secs()
        ))),
    }
}

/// One poll of the coordinator: jobs, workers and queue depths.
pub async fn poll_once<A: FarmApi>(api: &A) -> Result<Snapshot, FarmError> {
    let (jobs, workers) = tokio::join!(
        call(CALL_TIMEOUT, api.jobs()),
        call(CALL_TIMEOUT, api.workers())
    );
    let (jobs, workers) = (jobs?, workers?);
    let regions: Vec<Region> = workers
        .iter()
        .map(|w| w.region.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // Queue depths are a nicety: without them the column shows "—".
    let depths = call(CALL_TIMEOUT, api.queue_depths(&regions))
        .await
        .unwrap_or_default();
    Ok(Snapshot {
        at_ms: now_ms(),
        jobs,
        workers,
        depths,
    })
}

pub(super) async fn poll_loop<A: FarmApi>(
    api: Arc<A>,
    tx: mpsc::Sender<Action>,
    mut interest: watch::Receiver<Interest>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut tasks = TaskLoader::default();
    let mut catalog_due = Instant::now();
    loop {
        let woken_by_interest = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => false,
            changed = interest.changed() => {
                if changed.is_err() {
                    return;
                }
                true
            }
        };
        let want = interest.borrow_and_update().clone();
        // A move of the selection waits for the next tick; a newly opened job loads now.
        if woken_by_interest && (want.job.is_none() || want.job == tasks.job) {
            continue;
        }
        let action = match poll_once(&*api).await {
            Ok(s) => Action::Polled(Box::new(s)),
            Err(e) => Action::PollFailed {
                error: e.message,
                at_ms: now_ms(),
            },
        };
        let ok = matches!(action, Action::Polled(_));
        if tx.send(action).await.is_err() {
            return;
        }
        if !ok {
            continue;
        }
        if Instant::now() >= catalog_due {
            let catalog = call(CALL_TIMEOUT, api.regions()).await.ok();
            catalog_due = Instant::now()
                + if catalog.is_some() {
                    CATALOG_EVERY
                } else {
                    CATALOG_RETRY
                };
            if tx.send(Action::Catalog(catalog)).await.is_err() {
                return;
            }
        }
        match want.job {
            Some(job) => {
                if !tasks
                    .refresh(&*api, &tx, (&job, want.total), want.sel, &shutdown)
                    .await
                {
                    return;
                }
            }
            None => tasks = TaskLoader::default(),
        }
    }
}

/// Which task pages of the open job have been fetched (the poller's own bookkeeping).
#[derive(Debug, Default)]
struct TaskLoader {
    job: Option<JobId>,
    total: u32,
    loaded_all: bool,
    sweep: u32,
    reported: bool,
}

impl TaskLoader {
    /// Fetches what is due; false when the terminal is gone.
    async fn refresh<A: FarmApi>(
        &mut self,
        api: &A,
        tx: &mpsc::Sender<Action>,
        (job, known_total): (&JobId, u32),
        sel: u32,
        shutdown: &CancellationToken,
    ) -> bool {
        if self.job.as_ref() != Some(job) {
            // The job's size from its status lets every page be asked for at once; with 0
            // the first page tells.
            *self = TaskLoader {
                job: Some(job.clone()),
                total: known_total,
                ..TaskLoader::default()
            };
        }
        let pages: Vec<u32> = if !self.loaded_all || self.total <= FULL_REFRESH_MAX {
            (0..self.total.max(1).div_ceil(MAX_TASKS_PAGE)).collect()
        } else {
            let n = self.total.div_ceil(MAX_TASKS_PAGE);
            self.sweep = (self.sweep + 1) % n;
            let mine = sel / MAX_TASKS_PAGE;
            if mine == self.sweep {
                vec![mine]
            } else {
                vec![mine, self.sweep]
            }
        };
        // (offset, limit) of each call: whole pages, and the rest of a page the coordinator
        // cut short because its records were large.
        let mut queue: std::collections::VecDeque<(u32, u32)> = pages
            .into_iter()
            .map(|p| (p * MAX_TASKS_PAGE, MAX_TASKS_PAGE))
            .collect();
        while let Some((offset, limit)) = queue.pop_front() {
            if shutdown.is_cancelled() {
                return true;
            }
            match call(CALL_TIMEOUT, api.tasks(job, offset, limit)).await {
                Ok(page) => {
                    let first_look = self.total == 0 && !self.loaded_all;
                    self.total = page.total;
                    if first_look {
                        // Now the size is known: the rest of the pages.
                        queue.extend(
                            (1..page.total.div_ceil(MAX_TASKS_PAGE))
                                .map(|p| (p * MAX_TASKS_PAGE, MAX_TASKS_PAGE)),
                        );
                    }
                    let got = page.tasks.len() as u32;
                    let wanted = limit.min(page.total.saturating_sub(offset));
                    if got > 0 && got < wanted {
                        queue.push_front((offset + got, wanted - got));
                    }
                    let action = Action::Tasks {
                        job: job.clone(),
                        page,
                    };
                    if tx.send(action).await.is_err() {
                        return false;
                    }
                }
                Err(e) => {
                    if e.kind == FarmErrorKind::Refused && !self.reported {
                        self.reported = true;
                        let msg = format!("cannot load the tasks of job {job}: {e}");
                        if tx.send(Action::Failed(msg)).await.is_err() {
                            return false;
                        }
                    }
                    return true;
                }
            }
        }
        self.loaded_all = true;
        true
    }
}

pub(super) async fn event_loop<A: FarmApi>(
    api: Arc<A>,
    tx: mpsc::Sender<Action>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let subscribed = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = call(CALL_TIMEOUT, api.events()) => r,
        };
        let down = match subscribed {
            Ok(mut stream) => {
                backoff = Duration::from_millis(500);
                if tx.send(Action::EventsUp).await.is_err() {
                    return;
                }
                loop {
                    let ev = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        ev = stream.next() => ev,
                    };
                    let Some(ev) = ev else { break };
                    let action = Action::Event {
                        received_ms: now_ms(),
                        event: Box::new(ev),
                    };
                    if tx.send(action).await.is_err() {
                        return;
                    }
                }
                "the event subscription ended".to_string()
            }
            Err(e) => e.message,
        };
        if tx.send(Action::EventsDown(down)).await.is_err() {
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

pub(super) async fn effect_loop<A: FarmApi>(
    api: Arc<A>,
    tx: mpsc::Sender<Action>,
    mut rx: mpsc::Receiver<Effect>,
    shutdown: CancellationToken,
) {
    // Dropped on shutdown: whatever is still in flight is aborted.
    let mut running = JoinSet::new();
    loop {
        let effect = tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(_) = running.join_next(), if !running.is_empty() => continue,
            e = rx.recv() => match e {
                Some(e) => e,
                None => return,
            },
        };
        let (api, tx) = (api.clone(), tx.clone());
        running.spawn(async move {
            let action = perform(&*api, effect).await;
            let _ = tx.send(action).await;
        });
    }
}

/// Carries out one effect; the action says how it went.
pub async fn perform<A: FarmApi>(api: &A, effect: Effect) -> Action {
    match effect {
        Effect::Cancel { job, name } => match call(ACTION_TIMEOUT, api.cancel(&job)).await {
            Ok(s) => Action::Done(format!("job {name} is {}", s.state.as_str())),
            Err(e) => Action::Failed(format!("cannot cancel job {name}: {e}")),
        },
        Effect::Retry { job, name } => match call(ACTION_TIMEOUT, api.retry(&job)).await {
            Ok(s) => Action::Done(format!(
                "job {name} is {}: {} tasks pending",
                s.state.as_str(),
                s.tasks.pending
            )),
            Err(e) => Action::Failed(format!("cannot retry job {name}: {e}")),
        },
        Effect::Drain { region, worker } => {
            match call(ACTION_TIMEOUT, api.drain(&region, &worker)).await {
                Ok(_) => Action::Done(format!("worker {region}/{worker} is draining")),
                Err(e) => Action::Failed(format!("cannot drain worker {region}/{worker}: {e}")),
            }
        }
        Effect::LoadPreview { studio, key, file } => {
            let name = file.name.clone();
            let result = load_preview(api, &studio, key, file).await;
            Action::Preview { key, name, result }
        }
        // The loop ends itself on Quit and never sends it here; a tick is harmless anyway.
        Effect::Quit => Action::Tick { now_ms: now_ms() },
    }
}

async fn load_preview<A: FarmApi>(
    api: &A,
    studio: &Studio,
    key: ContentHash,
    file: suanli_shared::protocol::OutputFile,
) -> Result<crate::preview::Thumb, String> {
    if !file.name.to_ascii_lowercase().ends_with(".png") {
        return Err("only PNG frames can be previewed".into());
    }
    let bytes = call(ACTION_TIMEOUT, api.read_output(studio, &key, &file))
        .await
        .map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        if bytes.len() as u64 != file.size || ContentHash::of(&bytes) != file.hash {
            return Err(format!("{} does not match its hash", file.name));
        }
        crate::preview::decode_thumb(&bytes)
    })
    .await
    .map_err(|e| format!("preview decoder stopped: {e}"))?
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use futures::stream::BoxStream;
    use suanli_shared::protocol::api::TasksPage;
    use suanli_shared::protocol::{JobStatus, OutputFile, TaskState, WorkerInfo};
    use suanli_shared::regions::RegionProfile;
    use suanli_shared::{ContentHash, JobId, Region, WorkerId};

    use super::*;
    use crate::api::FarmEvent;
    use crate::fixtures;

    /// Serves a job of `total` pending tasks page by page and records each page asked for.
    struct Pages {
        total: u32,
        asked: Mutex<Vec<u32>>,
        /// The most records one reply carries, as the coordinator cuts pages of large records.
        cut: u32,
    }

    impl Pages {
        fn new(total: u32) -> Self {
            Self {
                total,
                asked: Mutex::new(Vec::new()),
                cut: u32::MAX,
            }
        }
    }

    fn nothing<T>() -> Result<T, FarmError> {
        Err(FarmError::refused("not in this test"))
    }

    impl FarmApi for Pages {
        async fn jobs(&self) -> Result<Vec<JobStatus>, FarmError> {
            nothing()
        }
        async fn workers(&self) -> Result<Vec<WorkerInfo>, FarmError> {
            nothing()
        }
        async fn tasks(
            &self,
            job: &JobId,
            offset: u32,
            limit: u32,
        ) -> Result<TasksPage, FarmError> {
            self.asked.lock().unwrap().push(offset);
            let end = (offset + limit.min(self.cut)).min(self.total);
            Ok(TasksPage {
                total: self.total,
                offset,
                tasks: (offset..end)
                    .map(|i| fixtures::task(job, i, TaskState::Pending, "guian", "guian-1"))
                    .collect(),
            })
        }
        async fn regions(&self) -> Result<Vec<RegionProfile>, FarmError> {
            nothing()
        }
        async fn queue_depths(&self, _: &[Region]) -> Result<BTreeMap<Region, u64>, FarmError> {
            nothing()
        }
        async fn cancel(&self, _: &JobId) -> Result<JobStatus, FarmError> {
            nothing()
        }
        async fn retry(&self, _: &JobId) -> Result<JobStatus, FarmError> {
            nothing()
        }
        async fn drain(&self, _: &Region, _: &WorkerId) -> Result<WorkerInfo, FarmError> {
            nothing()
        }
        async fn events(&self) -> Result<BoxStream<'static, FarmEvent>, FarmError> {
            nothing()
        }
        async fn read_output(
            &self,
            _: &Studio,
            _: &ContentHash,
            _: &OutputFile,
        ) -> Result<Vec<u8>, FarmError> {
            nothing()
        }
    }

    /// Runs one refresh; returns the offsets asked for and the tasks posted.
    async fn refresh(
        loader: &mut TaskLoader,
        farm: &Pages,
        known: u32,
        sel: u32,
    ) -> (Vec<u32>, u32) {
        let (tx, mut rx) = mpsc::channel(1024);
        let job = fixtures::job_id(1);
        farm.asked.lock().unwrap().clear();
        assert!(
            loader
                .refresh(farm, &tx, (&job, known), sel, &CancellationToken::new())
                .await
        );
        drop(tx);
        let mut posted = 0;
        while let Some(a) = rx.recv().await {
            if let Action::Tasks { page, .. } = a {
                posted += page.tasks.len() as u32;
            }
        }
        (farm.asked.lock().unwrap().clone(), posted)
    }

    #[tokio::test]
    async fn small_jobs_reload_every_page_each_poll() {
        let (farm, mut loader) = (Pages::new(1_200), TaskLoader::default());
        // Size unknown: the first page tells, then the rest.
        assert_eq!(
            refresh(&mut loader, &farm, 0, 0).await,
            (vec![0, 500, 1000], 1_200)
        );
        assert!(loader.loaded_all);
        assert_eq!(
            refresh(&mut loader, &farm, 0, 0).await,
            (vec![0, 500, 1000], 1_200)
        );
    }

    #[tokio::test]
    async fn pages_cut_short_for_their_size_are_completed_by_more_calls() {
        let farm = Pages {
            cut: 200,
            ..Pages::new(1_200)
        };
        let mut loader = TaskLoader::default();
        let (asked, posted) = refresh(&mut loader, &farm, 1_200, 0).await;
        assert_eq!(posted, 1_200, "every task loaded: {asked:?}");
        // Pages of 500 in replies of at most 200: each page's rest is asked for at once.
        assert_eq!(asked, vec![0, 200, 400, 500, 700, 900, 1_000]);
    }

    #[tokio::test]
    async fn large_jobs_load_once_then_refresh_the_selection_and_one_more_page() {
        let (farm, mut loader) = (Pages::new(5_000), TaskLoader::default());
        let (asked, posted) = refresh(&mut loader, &farm, 5_000, 0).await;
        assert_eq!((asked.len(), posted), (10, 5_000));
        // Selection on task 2,600 (page 5); the sweep moves one page per poll.
        assert_eq!(
            refresh(&mut loader, &farm, 5_000, 2_600).await.0,
            vec![2_500, 500]
        );
        assert_eq!(
            refresh(&mut loader, &farm, 5_000, 2_600).await.0,
            vec![2_500, 1_000]
        );
        // Another job starts over.
        loader.job = Some(fixtures::job_id(2));
        assert_eq!(refresh(&mut loader, &farm, 5_000, 0).await.0.len(), 10);
    }
}
