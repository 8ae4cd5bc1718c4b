//! Helpers shared by the end-to-end test files: files, processes, and the roles run as real
//! `suanli` processes (so a test can kill them the way a data center does).

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use suanli::client::Client;
use suanli::jobfile::{self, JobFile, Overrides};
use suanli::localfarm::NatsServer;
use suanli_shared::layout;
use suanli_shared::protocol::{InputManifest, JobSpec};
use suanli_shared::store::Store;
use suanli_shared::Studio;

pub fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// Resolves and uploads a job the way `suanli submit` does.
pub async fn prepare(store: &Store, flags: Overrides, base: &Path) -> JobSpec {
    let mut resolved = jobfile::resolve(JobFile::default(), flags, base).expect("valid job");
    jobfile::upload_inputs(store, &mut resolved, &Default::default())
        .await
        .expect("inputs uploaded");
    resolved.spec
}

/// The empty input manifest, stored for the default studio (builtin jobs need no inputs).
pub async fn empty_inputs(store: &Store) -> InputManifest {
    empty_inputs_of(store, &Studio::default()).await
}

/// The empty input manifest, stored for `studio`.
pub async fn empty_inputs_of(store: &Store, studio: &Studio) -> InputManifest {
    let m = InputManifest::default();
    store
        .put_if_absent(
            &layout::input_manifest(studio, &m.hash()),
            m.to_bytes().into(),
        )
        .await
        .unwrap();
    m
}

/// Flags of a command-renderer job running `sh -c script` per frame, with the scene
/// `scene.txt` and `.txt` frames; other flags can be set over it (`..sh_flags(…)`).
/// A two-frame, 16x9 builtin job named "tiny" of `studio` over `inputs` (no retries).
pub fn tiny_builtin(studio: Studio, inputs: &InputManifest) -> JobSpec {
    JobSpec {
        webhooks: vec![],
        limits: Default::default(),
        requirements: Default::default(),
        name: "tiny".into(),
        studio,
        priority: 0,
        frames: "1-2".parse().unwrap(),
        chunk: 1,
        regions: vec![],
        max_retries: 0,
        task_timeout_secs: 120,
        renderer: suanli_shared::protocol::RendererSpec::Builtin {
            width: 16,
            height: 9,
            samples: 1,
        },
        inputs: inputs.hash(),
        scene: None,
        output: "frame_####".into(),
        placement: Default::default(),
    }
}

pub fn sh_flags(frames: &str, script: &str) -> Overrides {
    Overrides {
        frames: Some(frames.into()),
        scene: Some("scene.txt".into()),
        renderer: Some("command".into()),
        ext: Some("txt".into()),
        argv: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

/// Waits (bounded) until `path` holds a whole line, and returns its text.
pub async fn wait_for_text(path: &Path) -> String {
    let text = wait_until(Duration::from_secs(60), || {
        std::fs::read_to_string(path)
            .ok()
            .filter(|t| t.ends_with('\n'))
    })
    .await;
    text.unwrap_or_else(|| panic!("{} was never written", path.display()))
}

/// Polls `probe` every 50 ms until it gives a value or `limit` passes.
pub async fn wait_until<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Alive and not a zombie.
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Sends a signal by name (TERM, STOP, CONT) with kill(1).
pub fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{name} {pid} failed");
}

/// A farm whose roles are separate `suanli` processes: a nats-server on a free port, a file
/// store and a folder for logs and caches, all removed at the end.
pub struct ProcFarm {
    pub dir: tempfile::TempDir,
    pub nats: NatsServer,
    pub store_url: String,
}

impl ProcFarm {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let nats = NatsServer::start(&dir.path().join("nats"), 0).expect("nats-server starts");
        let store_url = format!("file://{}", dir.path().join("store").display());
        std::fs::create_dir_all(dir.path().join("store")).unwrap();
        Self {
            dir,
            nats,
            store_url,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn nats_url(&self) -> String {
        self.nats.url()
    }

    pub fn store(&self) -> Store {
        Store::open(&self.store_url).unwrap()
    }

    /// Prepares (uploads) a job whose inputs sit in `<dir>/shot`, with `shot/scene.txt`.
    pub async fn job(&self, flags: Overrides) -> JobSpec {
        let shot = self.path().join("shot");
        if !shot.join("scene.txt").exists() {
            write(&shot.join("scene.txt"), "scene");
        }
        prepare(&self.store(), flags, &shot).await
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.nats_url()).await.unwrap()
    }

    /// Starts `suanli <args>` with this farm's NATS and store; output goes to `<name>.log`.
    pub fn role(&self, name: &str, args: &[&str]) -> Role {
        self.spawn(name, env!("CARGO_BIN_EXE_suanli"), args)
    }

    /// Starts any program with this farm's environment (`SUANLI_NATS`, `SUANLI_STORE`).
    pub fn spawn(&self, name: &str, program: &str, args: &[&str]) -> Role {
        self.spawn_env(name, program, args, &[])
    }

    /// As [`ProcFarm::spawn`], with more environment variables (a `PATH` with a stand-in
    /// `nvidia-smi`, say).
    pub fn spawn_env(
        &self,
        name: &str,
        program: &str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Role {
        let log = self.path().join(format!("{name}.log"));
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(program)
            .args(args)
            .env("SUANLI_NATS", self.nats_url())
            .env("SUANLI_STORE", &self.store_url)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("suanli starts");
        Role {
            child,
            log,
            exited: None,
        }
    }

    pub fn coordinator(&self, name: &str, extra: &[&str]) -> Role {
        let mut args = vec!["coordinator"];
        args.extend_from_slice(extra);
        self.role(name, &args)
    }

    /// A worker with its own cache folder, `<dir>/cache-<name>`. Unless `extra` says what it
    /// runs, it runs every renderer, raw commands included (the tests' jobs are trusted).
    pub fn worker(&self, region: &str, name: &str, extra: &[&str]) -> Role {
        self.worker_env(region, name, extra, &[])
    }

    /// As [`ProcFarm::worker`], with more environment variables.
    pub fn worker_env(
        &self,
        region: &str,
        name: &str,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> Role {
        let cache = self.path().join(format!("cache-{name}"));
        let cache = cache.to_str().unwrap().to_string();
        let mut args = vec![
            "worker",
            "--region",
            region,
            "--name",
            name,
            "--cache-dir",
            &cache,
        ];
        let names_renderers = extra.iter().any(|a| {
            ["--renderers", "--allow-any-command", "--command-profile"]
                .iter()
                .any(|f| a.starts_with(f))
        });
        if !names_renderers {
            args.push("--allow-any-command");
        }
        // The tests' renderers write marker files beside the test: no sandbox unless asked.
        if !extra.iter().any(|a| a.starts_with("--sandbox")) {
            args.extend(["--sandbox", "off"]);
        }
        args.extend_from_slice(extra);
        self.spawn_env(name, env!("CARGO_BIN_EXE_suanli"), &args, env)
    }

    /// Waits until the coordinator answers and lists `n` live workers.
    pub async fn wait_for_workers(&self, client: &Client, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(ws) = client.workers().await {
                let live = ws
                    .iter()
                    .filter(|w| w.state != suanli_shared::protocol::WorkerState::Lost)
                    .count();
                if live >= n {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "{n} workers never registered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A `suanli` process, killed on drop.
pub struct Role {
    pub child: Child,
    pub log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Role {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        self.exited = self.child.wait().ok();
    }

    /// Waits (bounded) for the process to exit on its own.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        if self.exited.is_some() {
            return self.exited;
        }
        let child = &mut self.child;
        let status = wait_until(limit, || child.try_wait().ok().flatten()).await;
        self.exited = status;
        status
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until the log contains `needle`.
    pub async fn wait_for_log(&self, needle: &str, limit: Duration) -> bool {
        wait_until(limit, || self.log_text().contains(needle).then_some(()))
            .await
            .is_some()
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The most of these (start, end) spans open at one instant. At one instant an end comes
/// before a start: a slot or seat given back can be taken again at once.
pub fn most_at_once<T: Ord + Copy>(spans: impl IntoIterator<Item = (T, T)>) -> usize {
    let mut edges: Vec<(T, i32)> = spans
        .into_iter()
        .flat_map(|(s, e)| [(s, 1), (e, -1)])
        .collect();
    edges.sort();
    let (mut open, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        open += d;
        most = most.max(open);
    }
    most as usize
}
