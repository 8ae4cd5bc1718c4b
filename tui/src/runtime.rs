//! The loop: terminal in, actions through `update`, frames out. Three background tasks talk to
//! the farm and only post actions: the poller (snapshot every second, the catalog now and
//! then, the open job's task records), the event listener (live `suanli.evt.>`), and the
//! effect runner (operator actions and preview downloads). Every call they make has a
//! timeout, so the screen never waits on the network; a failed poll becomes the banner.

use std::collections::BTreeSet;
use std::future::Future;
use std::io::{IsTerminal, Stdout};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use crossterm::event::{Event, EventStream};
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use futures::StreamExt;
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use suanli_shared::protocol::api::MAX_TASKS_PAGE;
use suanli_shared::protocol::now_ms;
use suanli_shared::{ContentHash, JobId, Region};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::action::{Action, Effect, Snapshot};
use crate::api::{FarmApi, FarmError, FarmErrorKind};
use crate::state::{update, Interest, State};
use crate::theme::Theme;

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
/// At most one frame per this interval (events can come by the hundred per second).
const FRAME_INTERVAL: Duration = Duration::from_millis(50);
const ACTION_QUEUE: usize = 1024;
const EFFECT_QUEUE: usize = 32;

/// How `suanli tui` (or the demo) wants the terminal.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Shown in the status bar (the demo explains what quitting does there).
    pub hint: Option<String>,
    /// Job selected at start.
    pub select_job: Option<JobId>,
    /// While the screen is up, the process's stderr goes here, so log lines from in-process
    /// roles (the demo's farm) cannot scribble over it. Removed afterwards when empty.
    pub stderr_log: Option<PathBuf>,
}

/// Runs the terminal until the operator quits (`q`, Ctrl-C). SIGINT, SIGTERM and SIGHUP end it
/// too, with an error saying so. The terminal is restored on every way out, panics included.
pub async fn run<A: FarmApi>(api: A, options: Options) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() {
        anyhow::bail!(
            "suanli tui needs a terminal: stdout is not one (use `suanli status` in scripts)"
        );
    }
    let api = Arc::new(api);
    let redirected = match &options.stderr_log {
        Some(path) => {
            redirect_stderr(path).with_context(|| format!("cannot open {}", path.display()))?;
            true
        }
        None => false,
    };
    let result = run_screen(api, &options).await;
    restore_stderr();
    if let (true, Some(path)) = (redirected, &options.stderr_log) {
        match std::fs::metadata(path) {
            Ok(m) if m.len() > 0 => eprintln!(
                "suanli tui: messages logged while the screen was up are in {}",
                path.display()
            ),
            _ => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    result
}

async fn run_screen<A: FarmApi>(api: Arc<A>, options: &Options) -> anyhow::Result<()> {
    let mut screen = Screen::enter().context("cannot set up the terminal")?;
    let size = screen.terminal.size()?;
    let mut state = State::new(Theme::from_env(), now_ms(), (size.width, size.height));
    state.hint = options.hint.clone();
    state.selected_job = options.select_job.clone();

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (tx, mut rx) = mpsc::channel(ACTION_QUEUE);
    let (interest_tx, interest_rx) = watch::channel(Interest::default());
    let (effect_tx, effect_rx) = mpsc::channel(EFFECT_QUEUE);
    tracker.spawn(poll_loop(
        api.clone(),
        tx.clone(),
        interest_rx,
        shutdown.clone(),
    ));
    tracker.spawn(event_loop(api.clone(), tx.clone(), shutdown.clone()));
    tracker.spawn(effect_loop(api, tx, effect_rx, shutdown.clone()));

    let mut signals = Signals::new()?;
    let result = ui_loop(
        &mut screen,
        &mut state,
        &mut rx,
        &effect_tx,
        &interest_tx,
        &mut signals,
    )
    .await;
    shutdown.cancel();
    tracker.close();
    // Every call in flight has a timeout and watches the token: this is short.
    let _ = timeout(Duration::from_secs(2), tracker.wait()).await;
    drop(screen);
    signals.stay_fatal();
    match result? {
        None => Ok(()),
        Some(name) => anyhow::bail!("interrupted by {name}"),
    }
}

/// SIGINT, SIGTERM and SIGHUP while the screen is up: each one ends the loop so that the
/// terminal is restored before the process goes.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal's name and number.
    async fn recv(&mut self) -> (&'static str, i32) {
        tokio::select! {
            _ = self.int.recv() => ("SIGINT", libc::SIGINT),
            _ = self.term.recv() => ("SIGTERM", libc::SIGTERM),
            _ = self.hup.recv() => ("SIGHUP", libc::SIGHUP),
        }
    }

    /// Tokio never hands a signal back to its default disposition, so a program that goes on
    /// after the screen closes (`suanli demo` waits for its job) would ignore Ctrl-C and
    /// `kill`. This keeps them fatal, as they were before the screen opened, for as long as
    /// the runtime lives.
    fn stay_fatal(mut self) {
        tokio::spawn(async move {
            let (_, signo) = self.recv().await;
            std::process::exit(128 + signo);
        });
    }
}

async fn ui_loop(
    screen: &mut Screen,
    state: &mut State,
    rx: &mut mpsc::Receiver<Action>,
    effects: &mpsc::Sender<Effect>,
    interest: &watch::Sender<Interest>,
    signals: &mut Signals,
) -> anyhow::Result<Option<&'static str>> {
    let mut input = EventStream::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut dirty = true;
    let mut last_draw = Instant::now() - FRAME_INTERVAL;
    loop {
        if dirty && last_draw.elapsed() >= FRAME_INTERVAL {
            screen
                .terminal
                .draw(|f| crate::ui::draw(f, state))
                .context("cannot draw")?;
            dirty = false;
            last_draw = Instant::now();
        }
        let first = tokio::select! {
            biased;
            ev = input.next() => match ev {
                Some(Ok(Event::Key(key))) => crate::input::map_key(key),
                Some(Ok(Event::Resize(width, height))) => Some(Action::Resize { width, height }),
                Some(Ok(_)) => None,
                Some(Err(e)) => return Err(e).context("cannot read the terminal"),
                // The terminal went away.
                None => Some(Action::Quit),
            },
            (name, _) = signals.recv() => return Ok(Some(name)),
            Some(action) = rx.recv() => Some(action),
            _ = tick.tick() => Some(Action::Tick { now_ms: now_ms() }),
            _ = tokio::time::sleep_until(last_draw + FRAME_INTERVAL), if dirty => None,
        };
        let mut batch: Vec<Action> = first.into_iter().collect();
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(a) => batch.push(a),
                Err(_) => break,
            }
        }
        for action in batch {
            dirty = true;
            for effect in update(state, action) {
                if effect == Effect::Quit {
                    return Ok(None);
                }
                if effects.try_send(effect).is_err() {
                    update(
                        state,
                        Action::Failed("too many requests in flight: try again shortly".into()),
                    );
                }
            }
        }
        let want = state.interest();
        interest.send_if_modified(|cur| {
            if *cur != want {
                *cur = want;
                true
            } else {
                false
            }
        });
    }
}

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

async fn poll_loop<A: FarmApi>(
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
        let mut queue: std::collections::VecDeque<u32> = pages.into();
        while let Some(p) = queue.pop_front() {
            if shutdown.is_cancelled() {
                return true;
            }
            let offset = p * MAX_TASKS_PAGE;
            match call(CALL_TIMEOUT, api.tasks(job, offset, MAX_TASKS_PAGE)).await {
                Ok(page) => {
                    let first_look = self.total == 0 && !self.loaded_all;
                    self.total = page.total;
                    if first_look {
                        // Now the size is known: the rest of the pages.
                        queue.extend(1..page.total.div_ceil(MAX_TASKS_PAGE));
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

async fn event_loop<A: FarmApi>(
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

async fn effect_loop<A: FarmApi>(
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
        Effect::LoadPreview { key, file } => {
            let name = file.name.clone();
            let result = load_preview(api, key, file).await;
            Action::Preview { key, name, result }
        }
        // The loop ends itself on Quit and never sends it here; a tick is harmless anyway.
        Effect::Quit => Action::Tick { now_ms: now_ms() },
    }
}

async fn load_preview<A: FarmApi>(
    api: &A,
    key: ContentHash,
    file: suanli_shared::protocol::OutputFile,
) -> Result<crate::preview::Thumb, String> {
    if !file.name.to_ascii_lowercase().ends_with(".png") {
        return Err("only PNG frames can be previewed".into());
    }
    let bytes = call(ACTION_TIMEOUT, api.read_output(&key, &file))
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

/// The process's stderr while it is redirected (-1: not redirected). A static, so the panic
/// hook can put it back before printing.
static SAVED_STDERR: AtomicI32 = AtomicI32::new(-1);

fn redirect_stderr(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    // SAFETY: dup/dup2 on descriptors this process owns; fd 2 is always open in a CLI.
    unsafe {
        let saved = libc::dup(2);
        if saved < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::dup2(file.as_raw_fd(), 2) < 0 {
            let e = std::io::Error::last_os_error();
            libc::close(saved);
            return Err(e);
        }
        SAVED_STDERR.store(saved, Ordering::SeqCst);
    }
    Ok(())
}

fn restore_stderr() {
    let saved = SAVED_STDERR.swap(-1, Ordering::SeqCst);
    if saved >= 0 {
        // SAFETY: `saved` came from dup() above and is closed exactly once (the swap).
        unsafe {
            libc::dup2(saved, 2);
            libc::close(saved);
        }
    }
}

/// Puts the terminal back: cooked mode, main screen, cursor shown, stderr back. Idempotent.
fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = crossterm::execute!(
        std::io::stdout(),
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
    restore_stderr();
}

type PanicHook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static>;

/// The terminal in raw mode on the alternate screen; dropping it (or a panic) restores it.
struct Screen {
    terminal: Terminal<CrosstermBackend<Stdout>>,
    previous_hook: Option<Arc<PanicHook>>,
}

impl Screen {
    fn enter() -> anyhow::Result<Self> {
        let terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
        let previous: Arc<PanicHook> = Arc::new(std::panic::take_hook());
        let chained = previous.clone();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            chained(info);
        }));
        // From here on, dropping `screen` undoes everything, on error too.
        let mut screen = Screen {
            terminal,
            previous_hook: Some(previous),
        };
        enable_raw_mode()?;
        crossterm::execute!(
            std::io::stdout(),
            EnterAlternateScreen,
            crossterm::cursor::Hide
        )?;
        screen.terminal.clear()?;
        Ok(screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore_terminal();
        // Put the original panic hook back (ours holds the other reference to it).
        drop(std::panic::take_hook());
        if let Some(prev) = self.previous_hook.take() {
            if let Ok(prev) = Arc::try_unwrap(prev) {
                std::panic::set_hook(prev);
            }
        }
    }
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
            let end = (offset + limit).min(self.total);
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
        async fn read_output(&self, _: &ContentHash, _: &OutputFile) -> Result<Vec<u8>, FarmError> {
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
        let farm = Pages {
            total: 1_200,
            asked: Mutex::new(Vec::new()),
        };
        let mut loader = TaskLoader::default();
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
    async fn large_jobs_load_once_then_refresh_the_selection_and_one_more_page() {
        let farm = Pages {
            total: 5_000,
            asked: Mutex::new(Vec::new()),
        };
        let mut loader = TaskLoader::default();
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
