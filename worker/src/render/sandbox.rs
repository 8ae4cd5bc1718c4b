//! How a renderer process is confined: a job is untrusted input, and a command or Blender
//! render runs code the job chose. This module decides, once at worker start, how renders run
//! ([`Confinement`]: bubblewrap or not, which user, which paths to hide, the worker's maximum
//! resource limits), and turns one render into the argv and the pre-exec steps that confine it
//! ([`SandboxSpec`]). [`super::process`] applies them; nothing else starts renderers.
//!
//! With `bwrap` (Debian's bubblewrap) a render sees:
//! - the host's file system read-only (`--ro-bind / /`), a fresh `/dev` and `/proc`, an empty
//!   read-only `/run`;
//! - its task's work folder as `/tmp`, read-only except the task's output folder and its
//!   scratch folder (`TMPDIR`): nothing else is writable, and the host's `/tmp` is out of
//!   sight (the renderer is given the task's paths as they appear there);
//! - nothing of the worker's cache (blobs, index, other tasks' folders) or of its identity (the
//!   identity's folder, or the file alone when it sits at the top of the tree), nor any path
//!   the operator adds (`--sandbox-hide`);
//! - no network (a new, empty network namespace), its own pid, IPC and UTS namespaces, a new
//!   session (no terminal injection), no capabilities, and it dies with the worker.
//!
//! Independently of bwrap, `--run-as USER` drops to that user (no supplementary groups) before
//! anything runs, and resource limits (address space, processes, file size) are set with
//! `setrlimit` in the child before `exec`.

use std::ffi::{CString, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Whether renders run in bubblewrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SandboxMode {
    /// Never: renders run with the worker's view of the machine.
    Off,
    /// Where `bwrap` is installed and works; otherwise without, with a warning.
    #[default]
    Auto,
    /// Always: a worker without a working `bwrap` refuses to start.
    Required,
}

impl std::str::FromStr for SandboxMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Self::Off),
            "auto" => Ok(Self::Auto),
            "required" => Ok(Self::Required),
            other => Err(format!(
                "unknown sandbox mode '{other}' (known: off, auto, required)"
            )),
        }
    }
}

/// Resource limits of one render (each `None`: not limited). The worker's are maxima; a job
/// asks for less, never more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Address space of each process (`RLIMIT_AS`), bytes.
    pub memory_bytes: Option<u64>,
    /// Processes of the render's user (`RLIMIT_NPROC`; counts every process of that user).
    pub processes: Option<u64>,
    /// Largest file a process may write (`RLIMIT_FSIZE`), bytes.
    pub file_bytes: Option<u64>,
}

impl Limits {
    /// `self` (a job's request) capped by `max` (the worker's maxima): the smaller of each.
    pub fn within(&self, max: &Limits) -> Limits {
        let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Limits {
            memory_bytes: min(self.memory_bytes, max.memory_bytes),
            processes: min(self.processes, max.processes),
            file_bytes: min(self.file_bytes, max.file_bytes),
        }
    }
}

/// The unprivileged user renders run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// Looks `name` up in the user database.
    pub fn lookup(name: &str) -> Result<Self, SandboxError> {
        let cname = CString::new(name)
            .map_err(|_| SandboxError(format!("--run-as '{name}' is not a user name")))?;
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; `buf` outlives the use of `pwd`'s
        // fields, of which only the numbers are read.
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc != 0 || result.is_null() {
            return Err(SandboxError(format!(
                "--run-as '{name}': no such user on this machine (create one, e.g. `useradd --system --no-create-home suanli-render`)"
            )));
        }
        if pwd.pw_uid == 0 {
            return Err(SandboxError(format!(
                "--run-as '{name}' is root: renders must run as an unprivileged user"
            )));
        }
        Ok(Self {
            name: name.to_string(),
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        })
    }
}

/// A worker whose sandbox settings cannot be honoured; it refuses to start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SandboxError(pub String);

/// How this worker confines renders, decided once at start.
#[derive(Debug, Clone, Default)]
pub struct Confinement {
    /// The `bwrap` binary; `None`: renders run without a sandbox.
    pub bwrap: Option<PathBuf>,
    /// The user renders run as; `None`: the worker's own.
    pub run_as: Option<RunAs>,
    /// Paths a sandboxed render must not see (existing ones are covered).
    pub hide: Vec<PathBuf>,
    /// The worker's maximum limits for one render.
    pub max: Limits,
}

/// What the worker asks for at start.
#[derive(Debug, Clone, Default)]
pub struct SandboxSettings {
    pub mode: SandboxMode,
    /// `--run-as USER`.
    pub run_as: Option<String>,
    /// The cache folder, the identity file and the operator's `--sandbox-hide` paths.
    pub hide: Vec<PathBuf>,
    pub max: Limits,
}

impl Confinement {
    /// Renders run as the worker does, unconfined (tests, a trusted farm).
    pub fn none() -> Self {
        Self::default()
    }

    /// Resolves `settings` on this machine: looks up the user, finds and tries `bwrap`
    /// (`bwrap_path`, or `bwrap` on `PATH` when `None`). `required` without a working bwrap, or
    /// `--run-as` in a worker that is not root, is an error.
    pub fn resolve(
        settings: &SandboxSettings,
        bwrap_path: Option<PathBuf>,
    ) -> Result<Self, SandboxError> {
        let run_as = match &settings.run_as {
            None => None,
            Some(name) => {
                // SAFETY: geteuid has no preconditions.
                if unsafe { libc::geteuid() } != 0 {
                    return Err(SandboxError(format!(
                        "--run-as {name} needs the worker to start as root (it switches to {name} for each render)"
                    )));
                }
                Some(RunAs::lookup(name)?)
            }
        };
        let mut out = Self {
            bwrap: None,
            run_as,
            hide: settings.hide.clone(),
            max: settings.max,
        };
        if settings.mode == SandboxMode::Off {
            return Ok(out);
        }
        let found = bwrap_path.or_else(|| find_on_path("bwrap"));
        let problem = match &found {
            None => "bwrap (Debian's bubblewrap) is not installed".to_string(),
            Some(path) => match out.probe(path) {
                Ok(()) => {
                    out.bwrap = found;
                    return Ok(out);
                }
                Err(e) => format!("{} does not work here: {e}", path.display()),
            },
        };
        if settings.mode == SandboxMode::Required {
            return Err(SandboxError(format!(
                "--sandbox required but {problem}: install bubblewrap (apt-get install bubblewrap), or start with --sandbox auto/off"
            )));
        }
        tracing::warn!("renders run without a sandbox: {problem}");
        Ok(out)
    }

    /// Whether renders run in bubblewrap.
    pub fn sandboxed(&self) -> bool {
        self.bwrap.is_some()
    }

    /// Runs a trivial sandboxed command the way renders will run, to learn at start whether
    /// bwrap works here (user namespaces may be disabled).
    fn probe(&self, bwrap: &Path) -> Result<(), String> {
        let mut cmd = std::process::Command::new(bwrap);
        cmd.args([
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-pid",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--new-session",
            "--die-with-parent",
        ]);
        // SAFETY: geteuid has no preconditions.
        if self.run_as.is_none() && unsafe { libc::geteuid() } == 0 {
            cmd.args(["--cap-drop", "ALL"]);
        }
        cmd.arg("true")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        let pre = PreExec::new(self.run_as.as_ref(), &Limits::default());
        // SAFETY: the closure only calls async-signal-safe functions (see PreExec::apply).
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || pre.apply());
        }
        let out = cmd.output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Prepares a task's folder for a render as the run-as user: the task folder traversable,
    /// its output and scratch folders owned by that user. Without `--run-as`, nothing to do.
    pub fn prepare(&self, task_dir: &Path, writable: &[&Path]) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let Some(user) = &self.run_as else {
            return Ok(());
        };
        std::fs::set_permissions(task_dir, std::fs::Permissions::from_mode(0o711))?;
        for dir in writable {
            std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid))?;
        }
        Ok(())
    }
}

/// One render's confinement: the worker's, this task's limits, and its folders.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub confinement: Arc<Confinement>,
    /// This task's limits (already within the worker's maxima).
    pub limits: Limits,
    /// Folders the render reads (the task's inputs), inside `task_dir`, mounted read-only.
    pub read_only: Vec<PathBuf>,
    /// Folders the render writes (the task's outputs), inside `task_dir`, mounted writable.
    pub writable: Vec<PathBuf>,
    /// The task's work folder, mounted as the render's `/tmp`: the host's `/tmp` is out of
    /// sight, and every path the render is given lies under it.
    pub task_dir: PathBuf,
}

/// Where the task's work folder appears inside the sandbox.
pub const SANDBOX_TASK_DIR: &str = "/tmp";

impl SandboxSpec {
    /// `path` (on the worker) as the render sees it: under [`SANDBOX_TASK_DIR`] when it lies
    /// in the task's folder and the render is sandboxed; unchanged otherwise.
    pub fn seen(&self, path: &Path) -> PathBuf {
        match (&self.confinement.bwrap, path.strip_prefix(&self.task_dir)) {
            (Some(_), Ok(rel)) => Path::new(SANDBOX_TASK_DIR).join(rel),
            _ => path.to_path_buf(),
        }
    }

    /// The program and arguments to start: `bwrap … -- program args` in a sandbox, the
    /// program itself otherwise. `cwd` is the worker's path of the working folder.
    pub fn wrap(
        &self,
        program: &OsString,
        args: &[OsString],
        cwd: Option<&Path>,
    ) -> (OsString, Vec<OsString>) {
        let Some(bwrap) = &self.confinement.bwrap else {
            return (program.clone(), args.to_vec());
        };
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |items: &[&std::ffi::OsStr]| a.extend(items.iter().map(|s| s.into()));
        push(&["--ro-bind".as_ref(), "/".as_ref(), "/".as_ref()]);
        push(&["--dev".as_ref(), "/dev".as_ref()]);
        push(&["--proc".as_ref(), "/proc".as_ref()]);
        push(&["--tmpfs".as_ref(), "/run".as_ref()]);
        push(&["--remount-ro".as_ref(), "/run".as_ref()]);
        // Hide what must not be seen (the host's /tmp goes as a whole, below).
        for path in self.hidden() {
            if path.starts_with("/tmp") {
                continue;
            }
            if path.is_dir() {
                push(&["--tmpfs".as_ref(), path.as_os_str()]);
            } else {
                push(&["--ro-bind".as_ref(), "/dev/null".as_ref(), path.as_os_str()]);
            }
        }
        // The task's folder read-only as /tmp, then its writable folders over it.
        let task = Path::new(SANDBOX_TASK_DIR);
        push(&[
            "--ro-bind".as_ref(),
            self.task_dir.as_os_str(),
            task.as_os_str(),
        ]);
        for dir in &self.writable {
            let seen = self.seen(dir);
            push(&["--bind".as_ref(), dir.as_os_str(), seen.as_os_str()]);
        }
        if let Some(cwd) = cwd {
            let seen = self.seen(cwd);
            push(&["--chdir".as_ref(), seen.as_os_str()]);
        }
        let scratch = self.task_dir.join("tmp");
        if self.writable.contains(&scratch) {
            let seen = self.seen(&scratch);
            push(&["--setenv".as_ref(), "TMPDIR".as_ref(), seen.as_os_str()]);
        }
        push(&[
            "--unshare-net".as_ref(),
            "--unshare-ipc".as_ref(),
            "--unshare-pid".as_ref(),
            "--unshare-uts".as_ref(),
            "--unshare-cgroup-try".as_ref(),
            "--new-session".as_ref(),
            "--die-with-parent".as_ref(),
        ]);
        // As root (no --run-as) bwrap keeps every capability unless told otherwise; a render
        // with CAP_SYS_ADMIN could remount its view writable.
        // SAFETY: geteuid has no preconditions.
        if self.confinement.run_as.is_none() && unsafe { libc::geteuid() } == 0 {
            push(&["--cap-drop".as_ref(), "ALL".as_ref()]);
        }
        push(&["--".as_ref(), program.as_os_str()]);
        a.extend(args.iter().cloned());
        (bwrap.as_os_str().to_owned(), a)
    }

    /// The paths to cover: each hidden path that exists, and for a file (the identity) its
    /// folder too, unless that folder is at the top of the tree (`/`, `/etc`, `/root`…),
    /// where covering it would hide the system.
    fn hidden(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for path in &self.confinement.hide {
            if !path.exists() {
                continue;
            }
            if path.is_file() {
                if let Some(parent) = path.parent() {
                    if parent.components().count() >= 3 && !self.inside_task(parent) {
                        out.push(parent.to_path_buf());
                        continue;
                    }
                }
            }
            out.push(path.clone());
        }
        out
    }

    /// Whether `dir` holds one of the task's own folders (covering it would not hide them,
    /// they are bound after, but it says the identity sits in the task's tree).
    fn inside_task(&self, dir: &Path) -> bool {
        self.read_only
            .iter()
            .chain(&self.writable)
            .any(|p| p.starts_with(dir))
    }

    /// What the child does between fork and exec.
    pub(crate) fn pre_exec(&self) -> PreExec {
        PreExec::new(self.confinement.run_as.as_ref(), &self.limits)
    }
}

/// The steps a child takes before `exec`, captured as plain numbers so they need no
/// allocation in the forked child.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PreExec {
    user: Option<(libc::uid_t, libc::gid_t)>,
    limits: [(libc::__rlimit_resource_t, Option<u64>); 3],
}

impl PreExec {
    fn new(run_as: Option<&RunAs>, limits: &Limits) -> Self {
        Self {
            user: run_as.map(|u| (u.uid, u.gid)),
            limits: [
                (libc::RLIMIT_AS, limits.memory_bytes),
                (libc::RLIMIT_NPROC, limits.processes),
                (libc::RLIMIT_FSIZE, limits.file_bytes),
            ],
        }
    }

    /// Sets the limits, then drops to the run-as user. Only async-signal-safe calls
    /// (setrlimit, setgroups, setgid, setuid); no allocation.
    pub(crate) fn apply(&self) -> io::Result<()> {
        for (resource, value) in self.limits {
            if let Some(v) = value {
                let lim = libc::rlimit {
                    rlim_cur: v,
                    rlim_max: v,
                };
                // SAFETY: a valid rlimit for a valid resource.
                if unsafe { libc::setrlimit(resource, &lim) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        if let Some((uid, gid)) = self.user {
            // SAFETY: plain system calls; the order (groups, gid, uid) is the one that works
            // while still privileged.
            unsafe {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // Setting the uid back must fail now, or the drop did not happen.
                if libc::setuid(0) == 0 {
                    return Err(io::Error::other("could not drop root"));
                }
            }
        }
        Ok(())
    }
}

/// `name` on `PATH`, if there.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_take_the_smaller_of_job_and_worker() {
        let max = Limits {
            memory_bytes: Some(100),
            processes: None,
            file_bytes: Some(10),
        };
        let job = Limits {
            memory_bytes: Some(500),
            processes: Some(7),
            file_bytes: None,
        };
        assert_eq!(
            job.within(&max),
            Limits {
                memory_bytes: Some(100),
                processes: Some(7),
                file_bytes: Some(10),
            }
        );
    }

    #[test]
    fn modes_parse_and_unknown_ones_are_refused() {
        assert_eq!("required".parse::<SandboxMode>(), Ok(SandboxMode::Required));
        assert!("on"
            .parse::<SandboxMode>()
            .unwrap_err()
            .contains("off, auto, required"));
    }

    #[test]
    fn required_without_bwrap_refuses_to_start() {
        let settings = SandboxSettings {
            mode: SandboxMode::Required,
            ..Default::default()
        };
        let err = Confinement::resolve(&settings, Some("/nonexistent/bwrap".into())).unwrap_err();
        assert!(err.0.contains("--sandbox required"), "{err}");
        let auto = SandboxSettings::default();
        let c = Confinement::resolve(&auto, Some("/nonexistent/bwrap".into())).unwrap();
        assert!(!c.sandboxed(), "auto runs without");
    }
}
