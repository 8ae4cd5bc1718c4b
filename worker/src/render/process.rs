//! Runs one renderer process to its end, whatever happens around it.
//!
//! Every external renderer (Blender, a studio's command) goes through [`run`], so the rules that
//! keep a farm node healthy live in one place:
//! - argv only, never a shell; stdin is null, so a renderer waiting for input fails instead of
//!   hanging;
//! - the process leads its own process group, and every way out (normal exit, timeout, cancel,
//!   the future being dropped) sends SIGKILL to the whole group, so helpers a renderer spawned
//!   die with it and no renderer process outlives its task;
//! - stdout and stderr are drained concurrently, line by line, with bounded lines and bounded
//!   tails, so a chatty or hostile renderer can neither block on a full pipe nor exhaust memory;
//! - the worker's secrets (object-store and NATS credentials) are not passed on in the
//!   environment;
//! - the renderer gets SIGKILL from the kernel when the worker dies (`PR_SET_PDEATHSIG`), so a
//!   worker killed with SIGKILL leaves no renderer behind. (Helpers the renderer itself spawned
//!   are not covered by this: a group outlives a SIGKILLed worker only through them.)

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::sandbox::SandboxSpec;

/// Longest line handed to a line callback or kept in a tail; the rest of the line is dropped.
const MAX_LINE_BYTES: usize = 16 * 1024;
/// How long output is still read after the process ended (or was killed). Pipes normally
/// close at once; this bounds the wait when a process that escaped the group still holds them.
const DRAIN_GRACE: Duration = Duration::from_secs(3);
/// How long to wait for the kernel to reap a process after SIGKILL.
const REAP_GRACE: Duration = Duration::from_secs(10);

/// Environment variables never passed to a renderer: the worker's credentials. A command
/// renderer runs a studio's program, which has no business with the farm's object store.
const SECRET_ENV_PREFIXES: &[&str] = &[
    "AWS_", "AZURE_", "GOOGLE_", "GCP_", "NATS_", "SUANLI_", "MINIO_",
];
const SECRET_ENV_MARKERS: &[&str] = &["SECRET", "TOKEN", "PASSWORD", "CREDENTIAL", "ACCESS_KEY"];

/// The program to run and where.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub program: OsString,
    pub args: Vec<OsString>,
    /// Working directory of the process; the worker's own when `None`.
    pub cwd: Option<PathBuf>,
    /// How the process is confined (sandbox, user, limits); `None`: as the worker runs.
    pub sandbox: Option<SandboxSpec>,
    /// Variables set for the process on top of the worker's (less its secrets): the devices
    /// a task holds.
    pub env: Vec<(OsString, OsString)>,
}

impl ProcessSpec {
    /// The program as shown in messages.
    pub fn program_name(&self) -> String {
        self.program.to_string_lossy().into_owned()
    }
}

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The process exited (or was killed by someone else) on its own.
    Exited(ExitStatus),
    /// It ran past its time limit and was killed, with its group.
    TimedOut,
    /// The cancel token fired; it was killed, with its group.
    Canceled,
}

/// The end of a run and the last lines it wrote.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub ending: Ending,
    pub stdout_tail: Tail,
    pub stderr_tail: Tail,
    /// Both streams interleaved in arrival order (Blender writes errors to stdout).
    pub combined_tail: Tail,
}

/// The process could not be started at all.
#[derive(Debug, thiserror::Error)]
#[error("cannot start '{program}': {}", describe_io_error(.source))]
pub struct SpawnError {
    pub program: String,
    #[source]
    pub source: io::Error,
}

/// The last lines of a stream, bounded in line count and bytes.
#[derive(Debug, Clone)]
pub struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
    max_lines: usize,
    max_bytes: usize,
}

impl Tail {
    pub fn new(max_lines: usize, max_bytes: usize) -> Self {
        Self {
            lines: VecDeque::new(),
            bytes: 0,
            max_lines: max_lines.max(1),
            max_bytes: max_bytes.max(2),
        }
    }

    pub fn push(&mut self, line: &str) {
        // Every kept line costs its length plus a newline; one line alone always fits.
        let line = truncate_to_boundary(line, self.max_bytes - 1);
        self.bytes += line.len() + 1;
        self.lines.push_back(line.to_string());
        while self.lines.len() > self.max_lines || self.bytes > self.max_bytes {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.len() + 1,
                None => break,
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The kept lines joined by newlines.
    pub fn text(&self) -> String {
        let mut out = String::with_capacity(self.bytes);
        for (i, line) in self.lines.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(line);
        }
        out
    }
}

/// Default tail size: the last 20 lines, at most 4 KiB.
fn default_tail() -> Tail {
    Tail::new(20, 4096)
}

fn truncate_to_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `No such file or directory` rather than `No such file or directory (os error 2)`.
pub fn describe_io_error(err: &io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// How a process ended, in words: `exited with code 3`, `was killed by signal 9 (SIGKILL)`.
pub fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig} ({})", signal_name(sig)),
        (None, None) => format!("ended with {status}"),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => "unknown signal",
    }
}

/// Sends SIGKILL to a whole process group when dropped, unless disarmed: the last line of
/// defence when the future running a renderer is dropped half-way.
struct GroupKiller {
    pgid: Option<libc::pid_t>,
}

impl GroupKiller {
    fn kill(&self) {
        if let Some(pgid) = self.pgid {
            kill_group(pgid);
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

fn kill_group(pgid: libc::pid_t) {
    if pgid <= 1 {
        return; // never signal "every process" (-1) or our own group (0)
    }
    // SAFETY: kill(2) has no memory-safety preconditions. ESRCH (the group is already gone)
    // is the expected outcome after a clean exit and is ignored.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// A line splitter over a pipe that keeps lines bounded and survives invalid UTF-8. Its state
/// lives in `self`, so [`LineReader::next_line`] is cancel safe inside `select!`.
struct LineReader<R> {
    inner: R,
    line: Vec<u8>,
    done: bool,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            line: Vec::new(),
            done: false,
        }
    }

    /// The next line without its terminator (`\n` or `\r`), or `None` at end of stream.
    async fn next_line(&mut self) -> Option<String> {
        loop {
            let avail = match self.inner.fill_buf().await {
                Ok(avail) => avail,
                Err(_) => &[],
            };
            if avail.is_empty() {
                self.done = true;
                if self.line.is_empty() {
                    return None;
                }
                return Some(self.take());
            }
            match avail.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(i) => {
                    let room = MAX_LINE_BYTES.saturating_sub(self.line.len());
                    self.line.extend_from_slice(&avail[..i.min(room)]);
                    self.inner.consume(i + 1);
                    return Some(self.take());
                }
                None => {
                    let n = avail.len();
                    let room = MAX_LINE_BYTES.saturating_sub(self.line.len());
                    self.line.extend_from_slice(&avail[..n.min(room)]);
                    self.inner.consume(n);
                }
            }
        }
    }

    fn take(&mut self) -> String {
        let line = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        line
    }
}

/// Runs `spec` until it exits, `timeout` passes or `cancel` fires; calls `on_line` for every
/// non-empty output line. On timeout or cancel the whole process group is killed and reaped
/// before this returns; after a normal exit, whatever the process left running in its group
/// is killed too.
pub async fn run(
    spec: &ProcessSpec,
    timeout: Duration,
    cancel: &CancellationToken,
    on_line: &mut (dyn FnMut(Stream, &str) + Send),
) -> Result<RunReport, SpawnError> {
    let (program, args) = match &spec.sandbox {
        Some(sandbox) => sandbox.wrap(&spec.program, &spec.args, spec.cwd.as_deref()),
        None => (spec.program.clone(), spec.args.clone()),
    };
    let confine = spec.sandbox.as_ref().map(SandboxSpec::pre_exec);
    let mut cmd = Command::new(&program);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec and calls only setrlimit(2),
    // setgroups(2), setgid(2), setuid(2), prctl(2) and getppid(2), all async-signal-safe; it
    // allocates nothing.
    unsafe {
        let parent = libc::getpid();
        cmd.pre_exec(move || {
            // Limits and the user first: changing credentials clears the death signal.
            if let Some(confine) = &confine {
                confine.apply()?;
            }
            // Die with the worker. The signal follows the thread that forked, which is a
            // runtime worker thread living as long as the worker.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The worker died between fork and prctl: nobody will reap or signal us.
            if libc::getppid() != parent {
                return Err(io::Error::other(
                    "the worker died while starting the renderer",
                ));
            }
            Ok(())
        });
    }
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    for (name, _) in std::env::vars_os() {
        if is_secret_env(&name.to_string_lossy()) {
            cmd.env_remove(&name);
        }
    }
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
    let mut child = cmd.spawn().map_err(|source| SpawnError {
        program: spec.program_name(),
        source,
    })?;
    // With process_group(0) the child's pid is its group id.
    let mut killer = GroupKiller {
        pgid: child.id().and_then(|pid| libc::pid_t::try_from(pid).ok()),
    };

    let mut stdout = child
        .stdout
        .take()
        .map(|s| LineReader::new(BufReader::new(s)));
    let mut stderr = child
        .stderr
        .take()
        .map(|s| LineReader::new(BufReader::new(s)));
    let mut report = RunReport {
        ending: Ending::Canceled,
        stdout_tail: default_tail(),
        stderr_tail: default_tail(),
        combined_tail: default_tail(),
    };
    let mut record = |stream: Stream, line: String, report: &mut RunReport| {
        if line.trim().is_empty() {
            return;
        }
        on_line(stream, &line);
        match stream {
            Stream::Stdout => report.stdout_tail.push(&line),
            Stream::Stderr => report.stderr_tail.push(&line),
        }
        report.combined_tail.push(&line);
    };

    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let ending = loop {
        tokio::select! {
            _ = cancel.cancelled() => break Ending::Canceled,
            _ = &mut deadline => break Ending::TimedOut,
            status = child.wait() => match status {
                Ok(status) => break Ending::Exited(status),
                // wait(2) failing leaves us nothing to track the child by: treat it as dead
                // after killing its group.
                Err(_) => break Ending::Exited(ExitStatus::from_raw(libc::SIGKILL)),
            },
            Some(line) = next_line(&mut stdout) => record(Stream::Stdout, line, &mut report),
            Some(line) = next_line(&mut stderr) => record(Stream::Stderr, line, &mut report),
        }
    };
    report.ending = ending;

    // Kill the group in every case: after a timeout or cancel that is the point; after a
    // normal exit it ends whatever the renderer left behind in its group. (After a normal
    // exit the leader is already reaped, so in theory its pid could be reused as another
    // group's id in between; that needs the pid counter to wrap within microseconds and the
    // new process to lead a group, which we accept.)
    killer.kill();
    if !matches!(ending, Ending::Exited(_)) {
        reap(&mut child).await;
    }
    // Read what is still in the pipes (the last lines usually say why a renderer failed).
    let drain = async {
        loop {
            tokio::select! {
                Some(line) = next_line(&mut stdout) => record(Stream::Stdout, line, &mut report),
                Some(line) = next_line(&mut stderr) => record(Stream::Stderr, line, &mut report),
                else => break,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_GRACE, drain).await;
    killer.disarm();
    Ok(report)
}

async fn next_line<R: AsyncBufRead + Unpin>(reader: &mut Option<LineReader<R>>) -> Option<String> {
    match reader {
        Some(r) if !r.done => r.next_line().await,
        _ => None,
    }
}

/// Waits (bounded) for a killed child to be reaped; if the kernel is slow, `kill_on_drop`
/// and tokio's orphan reaper finish the job.
async fn reap(child: &mut Child) {
    let _ = tokio::time::timeout(REAP_GRACE, child.wait()).await;
}

fn is_secret_env(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_ENV_PREFIXES.iter().any(|p| upper.starts_with(p))
        || SECRET_ENV_MARKERS.iter().any(|m| upper.contains(m))
}

/// Formats a duration for messages: `2h0m`, `5m30s`, `45s`, `250ms`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 3600 {
        format!("{}h{}m", secs / 3600, (secs % 3600) / 60)
    } else if secs >= 60 {
        format!("{}m{}s", secs / 60, secs % 60)
    } else if secs >= 1 {
        format!("{secs}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_keep_the_last_lines_within_bounds() {
        let mut tail = Tail::new(3, 100);
        for i in 0..10 {
            tail.push(&format!("line {i}"));
        }
        assert_eq!(tail.text(), "line 7\nline 8\nline 9");
        let mut tail = Tail::new(20, 16);
        tail.push("aaaaaaaaaa");
        tail.push("bbbbbbbbbb");
        assert_eq!(tail.text(), "bbbbbbbbbb");
        tail.push(&"é".repeat(40));
        assert_eq!(
            tail.text(),
            "é".repeat(7),
            "cut to fit, on a character boundary"
        );
    }

    #[test]
    fn durations_read_like_a_clock() {
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h0m");
        assert_eq!(format_duration(Duration::from_secs(330)), "5m30s");
        assert_eq!(format_duration(Duration::from_secs(45)), "45s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn secrets_stay_out_of_the_renderer_env() {
        assert!(is_secret_env("AWS_SECRET_ACCESS_KEY"));
        assert!(is_secret_env("suanli_nats_url"));
        assert!(is_secret_env("GITHUB_TOKEN"));
        assert!(!is_secret_env("PATH"));
        assert!(!is_secret_env("HOME"));
        assert!(!is_secret_env("OCIO"));
    }

    #[tokio::test]
    async fn lines_split_on_newlines_and_stay_bounded() {
        let mut input = b"one\ntwo\r\n\xffthree".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES * 2));
        input.extend(b"\nlast");
        let mut reader = LineReader::new(&input[..]);
        let mut lines = Vec::new();
        while let Some(line) = reader.next_line().await {
            lines.push(line);
        }
        assert_eq!(lines[0], "one");
        assert_eq!(lines[1], "two");
        assert_eq!(lines[2], "");
        assert!(lines[3].starts_with("\u{fffd}three"));
        assert_eq!(lines[3].len(), MAX_LINE_BYTES + 2); // U+FFFD is 3 bytes for the 1 bad one
        assert_eq!(lines[4], "last");
    }
}
