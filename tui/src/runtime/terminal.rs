//! The terminal itself: raw mode and the alternate screen on the way in, everything put back
//! on every way out (drop, error, panic hook), stderr redirected while the screen is up, and
//! the signals that must end the loop so that the restore runs. The only module here that
//! touches the process's terminal state.

use std::io::Stdout;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;

/// SIGINT, SIGTERM and SIGHUP while the screen is up: each one ends the loop so that the
/// terminal is restored before the process goes.
pub(super) struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub(super) fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal's name and number.
    pub(super) async fn recv(&mut self) -> (&'static str, i32) {
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
    pub(super) fn stay_fatal(mut self) {
        tokio::spawn(async move {
            let (_, signo) = self.recv().await;
            std::process::exit(128 + signo);
        });
    }
}

/// The process's stderr while it is redirected (-1: not redirected). A static, so the panic
/// hook can put it back before printing.
static SAVED_STDERR: AtomicI32 = AtomicI32::new(-1);

pub(super) fn redirect_stderr(path: &std::path::Path) -> std::io::Result<()> {
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

pub(super) fn restore_stderr() {
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
pub(super) struct Screen {
    pub(super) terminal: Terminal<CrosstermBackend<Stdout>>,
    previous_hook: Option<Arc<PanicHook>>,
}

impl Screen {
    pub(super) fn enter() -> anyhow::Result<Self> {
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
