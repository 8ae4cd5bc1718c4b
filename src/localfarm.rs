//! A whole farm on one machine: its own nats-server (JetStream on disk, free loopback port),
//! a coordinator and workers in named regions, all in this process. `suanli up`, `suanli demo`
//! and the integration tests use it; production runs each role as its own process.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use suanli_shared::access::{Access, Role};
use suanli_shared::nats;
use suanli_shared::{Region, WorkerId};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::error;

/// Finds a nats-server >= 2.11: `$SUANLI_NATS_SERVER`, then the project's `.tools/bin`, then
/// `PATH`.
pub fn find_nats_server() -> anyhow::Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(p) = std::env::var("SUANLI_NATS_SERVER") {
        candidates.push(p.into());
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/nats-server"));
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(4) {
            candidates.push(dir.join(".tools/bin/nats-server"));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("nats-server")));
    }
    let mut too_old = None;
    for c in candidates {
        if !c.is_file() {
            continue;
        }
        let out = Command::new(&c).arg("--version").output();
        let Ok(out) = out else { continue };
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let version = text.trim().rsplit('v').next().unwrap_or("").to_string();
        let mut parts = version.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if (major, minor) >= suanli_shared::nats::MIN_SERVER {
            return Ok(c);
        }
        too_old = Some(format!("{} is {}", c.display(), text.trim()));
    }
    match too_old {
        Some(old) => bail!("found only an old nats-server ({old}); Suanli needs 2.11 or newer: run scripts/install-tools.sh"),
        None => bail!("nats-server not found: run scripts/install-tools.sh (it installs one into .tools/bin), or set SUANLI_NATS_SERVER"),
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A nats-server child process with JetStream; killed on drop.
pub struct NatsServer {
    child: Child,
    pub port: u16,
    /// Where its log (and, unless a config says otherwise, its JetStream data) lives.
    pub store_dir: PathBuf,
    /// Its command-line arguments, for restarts.
    args: Vec<std::ffi::OsString>,
    /// Its environment additions (a leaf node's address and link seed).
    envs: Vec<(String, String)>,
    /// Whether clients must speak TLS (a server started from a secure farm's config).
    pub tls: bool,
}

impl NatsServer {
    /// Starts a server storing JetStream data in `store_dir`, on `port` (0: a free one), and
    /// waits until it accepts connections.
    pub fn start(store_dir: &Path, port: u16) -> anyhow::Result<Self> {
        let port = if port == 0 { free_port()? } else { port };
        let args = ["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"]
            .iter()
            .map(Into::into)
            .chain([store_dir.as_os_str().to_owned()])
            .collect();
        Self::launch(store_dir, port, args, Vec::new(), false)
    }

    /// Starts a server from a configuration file (a secure farm's, written by
    /// `suanli auth init`) that listens on `port`; its log goes to `log_dir`.
    pub fn start_config(
        config: &Path,
        port: u16,
        log_dir: &Path,
        envs: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let args = vec!["-c".into(), config.as_os_str().to_owned()];
        Self::launch(log_dir, port, args, envs, true)
    }

    fn launch(
        store_dir: &Path,
        port: u16,
        args: Vec<std::ffi::OsString>,
        envs: Vec<(String, String)>,
        tls: bool,
    ) -> anyhow::Result<Self> {
        let mut server = Self {
            child: Self::spawn(store_dir, &args, &envs)?,
            port,
            store_dir: store_dir.to_path_buf(),
            args,
            envs,
            tls,
        };
        server.wait_ready(Duration::from_secs(20))?;
        Ok(server)
    }

    fn spawn(
        store_dir: &Path,
        args: &[std::ffi::OsString],
        envs: &[(String, String)],
    ) -> anyhow::Result<Child> {
        let bin = find_nats_server()?;
        std::fs::create_dir_all(store_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(store_dir.join("nats-server.log"))?;
        Command::new(&bin)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))
    }

    fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(self.store_dir.join("nats-server.log"))
                    .unwrap_or_default();
                bail!("nats-server exited ({status}) before accepting connections:\n{log}");
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "nats-server did not accept connections on port {} within {limit:?}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Asks the server to reload its configuration (SIGHUP), e.g. after a revocation.
    pub fn reload(&self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "cannot signal nats-server");
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Restarts on the same port with the same JetStream data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.child = Self::spawn(&self.store_dir, &self.args, &self.envs)?;
        self.wait_ready(Duration::from_secs(20))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes a secure farm into `auth` (unless one is there, then it adds missing regions and
/// studios) and returns the port its server listens on.
fn secure_farm(
    auth: &Path,
    regions: &[Region],
    studios: &[suanli_shared::Studio],
) -> anyhow::Result<u16> {
    let listen = match crate::auth::listen_of(auth)? {
        Some(listen) => listen,
        None => format!("127.0.0.1:{}", free_port()?),
    };
    let port = listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .context("bad listen address in farm.toml")?;
    crate::auth::init(crate::auth::InitArgs::new(
        auth,
        regions,
        studios,
        &listen,
        free_port()?,
    ))?;
    Ok(port)
}

/// What to start.
#[derive(Debug, Clone)]
pub struct FarmOptions {
    /// Folder for the nats-server data, worker caches and (if `store_url` is None) the store.
    pub dir: PathBuf,
    /// Use this NATS instead of starting one.
    pub nats_url: Option<String>,
    pub store_url: Option<String>,
    pub regions: Vec<Region>,
    pub workers_per_region: u32,
    pub slots: u32,
    /// Consumer ack wait (short in tests that kill workers).
    pub ack_wait: Duration,
    /// Start a coordinator (tests may run their own).
    pub coordinator: bool,
    /// The coordinator's region catalog.
    pub catalog: suanli_shared::regions::RegionCatalog,
    /// The coordinator's studio catalog.
    pub studio_catalog: suanli_shared::studios::StudioCatalog,
    /// Tasks a region is sent beyond its free slots (the coordinator's `prefetch`).
    pub prefetch: u32,
    /// A region with no live worker this long loses its tasks to the others.
    pub region_lost_after: Duration,
    /// A secure farm: `suanli auth init` writes `dir/auth` (unless it is there), nats-server
    /// runs from its config with TLS, and every role connects with its own identity.
    pub secure: bool,
    /// Studios given identities on a secure farm.
    pub studios: Vec<suanli_shared::Studio>,
    /// What the farm's workers run: every renderer, raw commands included, by default (a
    /// local farm is one trusted machine).
    pub renderers: suanli_worker::RendererPolicy,
    /// How the farm's workers confine renders: not at all by default (one trusted machine).
    pub sandbox: suanli_worker::render::sandbox::SandboxSettings,
    /// Prometheus metrics: the coordinator at this address, the n-th worker started at its
    /// port + n (each at a free port of its own when the port is 0).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where the coordinator posts job state changes (none by default).
    pub webhooks: suanli_coordinator::webhooks::WebhookConfig,
}

impl FarmOptions {
    pub fn new(dir: impl Into<PathBuf>, regions: &[&str]) -> anyhow::Result<Self> {
        Ok(Self {
            dir: dir.into(),
            nats_url: None,
            store_url: None,
            regions: regions
                .iter()
                .map(|r| r.parse())
                .collect::<Result<_, _>>()?,
            workers_per_region: 1,
            slots: 1,
            ack_wait: Duration::from_secs(60),
            coordinator: true,
            catalog: Default::default(),
            studio_catalog: Default::default(),
            prefetch: 1,
            region_lost_after: Duration::from_secs(60),
            secure: false,
            studios: Vec::new(),
            renderers: suanli_worker::RendererPolicy::trusting(),
            sandbox: suanli_worker::render::sandbox::SandboxSettings {
                mode: suanli_worker::render::sandbox::SandboxMode::Off,
                ..Default::default()
            },
            metrics_listen: None,
            webhooks: Default::default(),
        })
    }
}

/// A running local farm; [`LocalFarm::stop`] shuts everything down in order.
pub struct LocalFarm {
    pub nats: Option<NatsServer>,
    pub nats_url: String,
    pub store_url: String,
    pub options: FarmOptions,
    /// The secure farm's folder (`dir/auth`): identities, CA, configs.
    pub auth_dir: Option<PathBuf>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    workers: Vec<(WorkerId, CancellationToken)>,
}

impl LocalFarm {
    pub async fn start(options: FarmOptions) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&options.dir)?;
        let auth_dir = options.secure.then(|| options.dir.join("auth"));
        let nats = match (&options.nats_url, &auth_dir) {
            (Some(_), _) => None,
            (None, None) => {
                let dir = options.dir.join("nats");
                Some(tokio::task::spawn_blocking(move || NatsServer::start(&dir, 0)).await??)
            }
            (None, Some(auth)) => {
                let port = secure_farm(auth, &options.regions, &options.studios)?;
                let (conf, log) = (auth.join("nats-server.conf"), options.dir.join("nats"));
                Some(
                    tokio::task::spawn_blocking(move || {
                        NatsServer::start_config(&conf, port, &log, Vec::new())
                    })
                    .await??,
                )
            }
        };
        let nats_url = options
            .nats_url
            .clone()
            .unwrap_or_else(|| nats.as_ref().map(|n| n.url()).unwrap_or_default());
        let store_url = options
            .store_url
            .clone()
            .unwrap_or_else(|| format!("file://{}", options.dir.join("store").display()));
        let mut farm = Self {
            nats,
            nats_url,
            store_url,
            options,
            auth_dir,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            workers: Vec::new(),
        };
        if farm.options.coordinator {
            farm.start_coordinator();
        }
        for region in farm.options.regions.clone() {
            for i in 1..=farm.options.workers_per_region {
                let name: WorkerId = format!("{region}-{i}").parse()?;
                farm.start_worker(&region, name);
            }
        }
        farm.wait_for_workers(Duration::from_secs(30)).await?;
        Ok(farm)
    }

    pub fn start_coordinator(&self) {
        let mut config = suanli_coordinator::Config::new(&self.nats_url, &self.store_url);
        config.catalog = self.options.catalog.clone();
        config.studios = self.options.studio_catalog.clone();
        config.prefetch = self.options.prefetch;
        config.region_lost_after = self.options.region_lost_after;
        config.webhooks = self.options.webhooks.clone();
        config.access = self.access(&Role::Coordinator);
        config.metrics_listen = self.options.metrics_listen;
        let token = self.shutdown.child_token();
        self.tracker.spawn(async move {
            if let Err(e) = suanli_coordinator::run(config, token).await {
                error!(error = %format!("{e:#}"), "coordinator stopped with an error");
            }
        });
    }

    /// Starts a worker; its cache lives under the farm folder.
    pub fn start_worker(&mut self, region: &Region, name: WorkerId) {
        let mut config = suanli_worker::Config::new(
            &self.nats_url,
            &self.store_url,
            region.clone(),
            name.clone(),
            self.options.dir.join("cache").join(region.as_str()),
        );
        config.slots = self.options.slots;
        config.ack_wait = self.options.ack_wait;
        config.access = self.access(&Role::Worker(region.clone()));
        config.renderers = self.options.renderers.clone();
        config.sandbox = self.options.sandbox.clone();
        config.metrics_listen = self.options.metrics_listen.map(|mut addr| {
            if addr.port() != 0 {
                let n = self.workers.len() as u16 + 1;
                addr.set_port(addr.port().saturating_add(n));
            }
            addr
        });
        let token = self.shutdown.child_token();
        self.workers.push((name, token.clone()));
        self.tracker.spawn(async move {
            if let Err(e) = suanli_worker::run(config, token).await {
                error!(error = %format!("{e:#}"), "worker stopped with an error");
            }
        });
    }

    /// Waits until the coordinator answers and lists every started worker.
    pub async fn wait_for_workers(&self, limit: Duration) -> anyhow::Result<()> {
        if !self.options.coordinator {
            return Ok(());
        }
        let client =
            crate::client::Client::connect_with(&self.nats_url, &self.access(&Role::Operator))
                .await?;
        let deadline = tokio::time::Instant::now() + limit;
        let mut sub = client.nats().subscribe(nats::ALL_WORKERS).await?;
        loop {
            if let Ok(ws) = client.workers().await {
                if ws.len() >= self.workers.len() {
                    return Ok(());
                }
            }
            // Woken by the next heartbeat, or soon anyway: a farm with no workers sends no
            // heartbeats, and only needs the coordinator to answer.
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => bail!("workers did not register within {limit:?}"),
                _ = futures::StreamExt::next(&mut sub) => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// How `role` connects to this farm: its identity on a secure farm, nothing otherwise.
    pub fn access(&self, role: &Role) -> Access {
        match &self.auth_dir {
            // The folder was written by this farm's start: a missing identity is a bug.
            Some(dir) => crate::auth::access_of(dir, role).expect("the farm's identities exist"),
            None => Access::none(),
        }
    }

    /// Stops one worker gracefully.
    pub fn stop_worker(&self, name: &WorkerId) {
        for (n, t) in &self.workers {
            if n == name {
                t.cancel();
            }
        }
    }

    /// Stops every role and the nats-server.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        if let Some(n) = self.nats.as_mut() {
            n.kill();
        }
    }
}
