//! The loop: terminal in, actions through `update`, frames out. Three background tasks talk to
//! the farm and only post actions: the poller (snapshot every second, the catalog now and
//! then, the open job's task records), the event listener (live `suanli.evt.>`), and the
//! effect runner (operator actions and preview downloads). Every call they make has a
//! timeout, so the screen never waits on the network; a failed poll becomes the banner.
//!
//! This module is the loop; the background tasks are in [`tasks`], the terminal's set-up,
//! restore and signals in [`terminal`].

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use crossterm::event::{Event, EventStream};
use futures::StreamExt;
use suanli_shared::protocol::now_ms;
use suanli_shared::JobId;
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::action::{Action, Effect};
use crate::api::FarmApi;
use crate::state::{update, Interest, State};
use crate::theme::Theme;

mod tasks;
mod terminal;

use tasks::{effect_loop, event_loop, poll_loop};
pub use tasks::{perform, poll_once};
use terminal::{redirect_stderr, restore_stderr, Screen, Signals};

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
