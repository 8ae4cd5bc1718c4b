//! Progress for people: an `indicatif` bar while a job renders (`submit --wait`, `wait`, the
//! demo) or frames download (`fetch`), drawn only when the stream it goes to is a terminal.
//! Elsewhere (a pipe, a log, a test) commands print the plain lines they always have, so
//! scripts that read them keep working.

use std::io::IsTerminal as _;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use suanli_shared::protocol::JobStatus;

/// Where a bar is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn is_terminal(self) -> bool {
        match self {
            Stream::Stdout => std::io::stdout().is_terminal(),
            Stream::Stderr => std::io::stderr().is_terminal(),
        }
    }

    fn target(self) -> ProgressDrawTarget {
        match self {
            Stream::Stdout => ProgressDrawTarget::stdout(),
            Stream::Stderr => ProgressDrawTarget::stderr(),
        }
    }
}

/// A job's frames as a bar, with its state, running tasks and frames per region; `None` when
/// `stream` is not a terminal.
pub fn job_bar(stream: Stream) -> Option<ProgressBar> {
    if !stream.is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some(0), stream.target());
    bar.set_style(
        ProgressStyle::with_template(
            "  [{bar:30.cyan/blue}] {pos:>4}/{len} frames  {elapsed_precise}  {msg}",
        )
        .expect("a valid template")
        .progress_chars("#>."),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(250));
    Some(bar)
}

/// Moves a job bar to `s`.
pub fn show_job(bar: &ProgressBar, s: &JobStatus) {
    bar.set_length(s.frames.total as u64);
    bar.set_position(s.frames.done as u64);
    let regions: Vec<String> = s
        .regions
        .iter()
        .map(|(r, f)| format!("{r} {}", f.frames_done))
        .collect();
    bar.set_message(format!(
        "{}, {} running{}{}",
        s.state.as_str(),
        s.tasks.running,
        if regions.is_empty() { "" } else { "  " },
        regions.join(" · ")
    ));
}

/// Bytes downloaded by `fetch`, on stderr; `None` when stderr is not a terminal.
pub fn bytes_bar() -> Option<ProgressBar> {
    if !Stream::Stderr.is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "  [{bar:30.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .expect("a valid template")
        .progress_chars("#>."),
    );
    Some(bar)
}

/// Input bytes of a submit (uploaded, or found already stored), on stderr, with the link's
/// rate and the time left; `None` when stderr is not a terminal.
pub fn upload_bar() -> Option<ProgressBar> {
    if !Stream::Stderr.is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("  uploading inputs [{bar:30.cyan/blue}] {msg}")
            .expect("a valid template")
            .progress_chars("#>."),
    );
    Some(bar)
}

/// Moves an upload bar to where `progress` stands: bytes dealt with of the total, and the
/// bytes actually sent, their rate and the time left as the message.
pub fn show_upload(bar: &ProgressBar, progress: &suanli_shared::transfer::Progress) {
    bar.set_length(progress.total());
    bar.set_position(progress.done());
    bar.set_message(progress.line());
}
