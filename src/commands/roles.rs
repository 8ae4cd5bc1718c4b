//! The long-running roles: `suanli coordinator`, `suanli worker` and `suanli up` (a whole farm
//! on this machine). Each turns its flags into the role's config and runs it until Ctrl-C or
//! SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use suanli_shared::access::{Access, Role};
use suanli_shared::{Region, WorkerId};

use super::{load_catalog, load_studios, shutdown_on_signals};
use crate::exit::BadInput;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct WorkerCommand {
    #[command(subcommand)]
    pub action: Option<WorkerAction>,
    #[command(flatten)]
    pub run: Box<WorkerArgs>,
}

#[derive(Debug, clap::Subcommand)]
pub enum WorkerAction {
    /// Drain a worker: it takes no new tasks, finishes its renders within its grace period (or
    /// hands them back to the queue) and exits 0.
    Drain {
        /// The worker's name, or REGION.NAME when the name is in several regions.
        worker: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// Region (data center) this worker renders for (required to run a worker).
    #[arg(long, env = "SUANLI_REGION")]
    pub region: Option<Region>,
    /// Tasks rendered at once.
    #[arg(long, default_value_t = 1)]
    pub slots: u32,
    /// Local input cache folder.
    #[arg(long, env = "SUANLI_CACHE_DIR", default_value = "./suanli-cache")]
    pub cache_dir: PathBuf,
    /// Input cache bound in GiB.
    #[arg(long, default_value_t = 20)]
    pub cache_gib: u64,
    /// Cap on input download bandwidth, all tasks together, e.g. 50MiB or 200MB (per
    /// second); no cap by default.
    #[arg(long, env = "SUANLI_MAX_DOWNLOAD_RATE", value_name = "RATE", value_parser = suanli_shared::transfer::parse_rate)]
    pub max_download_rate: Option<u64>,
    /// Worker name, unique within the region (default: host name and pid).
    #[arg(long)]
    pub name: Option<WorkerId>,
    /// How long a render may run after SIGTERM before it is handed back.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_grace: Duration,
    /// Ack wait of the region's queue consumer, set by the first worker of a region: a task
    /// whose worker went silent this long is given to another worker. Renders send in-progress
    /// acks every quarter of it, so it bounds recovery time, not render time.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub ack_wait: Duration,
    /// Renderers this worker runs, of builtin, blender, command [default: builtin,blender, and
    /// command when a profile is defined or --allow-any-command is given]. Tasks of any other
    /// renderer fail with the reason.
    #[arg(long, value_delimiter = ',')]
    pub renderers: Option<Vec<String>>,
    /// A command profile, NAME=TEMPLATE: the argv (split on whitespace, never run through a
    /// shell) with placeholders {frame}, {start}, {end}, {step}, {output}, {scene} and
    /// {arg.NAME}, which a job fills in. Jobs name the profile; repeatable.
    #[arg(long = "command-profile", value_name = "NAME=TEMPLATE")]
    pub command_profile: Vec<String>,
    /// A TOML file of command profiles, one `NAME = ["program", "arg", …]` a line (for
    /// arguments with spaces).
    #[arg(long = "command-profiles", value_name = "FILE")]
    pub command_profiles: Option<PathBuf>,
    /// Also run a job's own argv (a raw command template): any program the job names runs on
    /// this machine. Only for a farm whose studios are trusted (a single studio).
    #[arg(long)]
    pub allow_any_command: bool,
    /// Run renders in bubblewrap (no network, inputs read-only, only the task's folder
    /// writable, the cache and identity out of sight): off, auto (where bwrap works) or
    /// required (refuse to start without it).
    #[arg(long, default_value = "auto", value_parser = parse_sandbox_mode)]
    pub sandbox: suanli_worker::render::sandbox::SandboxMode,
    /// Run renders as this unprivileged user (the worker must start as root).
    #[arg(long, value_name = "USER")]
    pub run_as: Option<String>,
    /// Another path a sandboxed render must not see (the cache folder and the identity are
    /// always hidden); repeatable.
    #[arg(long, value_name = "PATH")]
    pub sandbox_hide: Vec<PathBuf>,
    /// Most memory (address space) a render process may take, MiB; jobs may ask for less.
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(16..))]
    pub max_memory_mib: Option<u64>,
    /// Most processes a render may run (counted per render user), jobs may ask for less.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_processes: Option<u64>,
    /// Largest file a render may write, MiB; jobs may ask for less.
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_file_mib: Option<u64>,
    /// GPUs offered to tasks: auto (every GPU `nvidia-smi` lists; none without it), N (the
    /// first N it lists) or none. Each GPU task gets its own devices (CUDA_VISIBLE_DEVICES).
    #[arg(long, default_value = "auto", value_parser = parse_gpus)]
    pub gpus: suanli_worker::resources::GpuChoice,
    /// Memory offered to tasks, e.g. 64G or 512M [default: the machine's].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory: Option<u64>,
    /// Cores offered to tasks [default: the machine's].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub cores: Option<u32>,
    /// Labels jobs may require (`[requirements] tags`), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9465; port 0 picks a
    /// free one, logged at start): cache, transfers, tasks run. Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

fn parse_gpus(s: &str) -> Result<suanli_worker::resources::GpuChoice, String> {
    s.parse()
}

fn parse_size(s: &str) -> Result<u64, String> {
    suanli_shared::protocol::parse_size_mib(s)
}

fn parse_sandbox_mode(s: &str) -> Result<suanli_worker::render::sandbox::SandboxMode, String> {
    s.parse()
}

impl WorkerArgs {
    /// The renderer policy these flags describe.
    fn renderer_policy(&self) -> Result<suanli_worker::RendererPolicy, BadInput> {
        let bad = |e: suanli_worker::policy::PolicyError| BadInput(e.to_string());
        let mut policy = suanli_worker::RendererPolicy::default();
        for flag in &self.command_profile {
            policy.add_profile_flag(flag).map_err(bad)?;
        }
        if let Some(path) = &self.command_profiles {
            policy.add_profiles_file(path).map_err(bad)?;
        }
        policy.allow_any_command = self.allow_any_command;
        let kinds = match &self.renderers {
            Some(kinds) => kinds.clone(),
            None => {
                let mut kinds = vec!["builtin".to_string(), "blender".to_string()];
                if policy.allow_any_command || !policy.profiles.is_empty() {
                    kinds.push("command".into());
                }
                kinds
            }
        };
        policy = policy.with_kinds(&kinds).map_err(bad)?;
        policy.check().map_err(bad)?;
        Ok(policy)
    }
}

#[derive(Debug, clap::Args)]
pub struct CoordinatorArgs {
    /// A coordinator that stops renewing its lease this long is replaced by a standby.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    /// A worker whose heartbeat is this old is shown as lost and holds no slots.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub worker_lost_after: Duration,
    /// Region catalog (TOML: prices, PUE, carbon, links; see deploy/regions.example.toml).
    /// Regions it does not name get neutral figures.
    #[arg(long, env = "SUANLI_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// Studio catalog (TOML: each studio's weight, slot quotas, priority ceiling, regions and
    /// monthly budget; see deploy/studios.example.toml). Studios it does not name get weight 1
    /// and no limits.
    #[arg(long, env = "SUANLI_STUDIOS")]
    pub studios: Option<PathBuf>,
    /// A region with no live worker this long loses its queued tasks to the other regions.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub region_lost_after: Duration,
    /// Tasks sent to a region beyond its free slots (at most one per worker), so a worker that
    /// finishes a task finds the next one queued. 0 releases only into free slots, so shares
    /// and budgets are held exactly.
    #[arg(long, default_value_t = 1)]
    pub prefetch: u32,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464; port 0 picks a
    /// free one, logged at start): jobs, tasks, queues, slots, latencies, failures, bytes,
    /// cost, energy, carbon. Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Wait out the queue's ack wait for a restarted worker's tasks instead of releasing them
    /// again at once (only to measure the difference: scripts/chaos.sh --slow-recovery).
    #[arg(long, hide = true)]
    pub no_fast_recovery: bool,
    /// POST every job's state changes to this URL (repeatable); jobs may name their own
    /// (`webhooks` in the job file). Signed when a secret is given. See docs/PIPELINES.md.
    #[arg(long = "webhook", value_name = "URL")]
    pub webhooks: Vec<String>,
    /// File holding the webhook signing secret (`X-Suanli-Signature: sha256=<HMAC-SHA256 of
    /// the body>`); SUANLI_WEBHOOK_SECRET gives it directly.
    #[arg(long, env = "SUANLI_WEBHOOK_SECRET_FILE", value_name = "FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Do not ask regions to fetch a job's inputs before its tasks start; tasks fetch them
    /// on demand (only to measure the difference: docs/BENCHMARKS.md).
    #[arg(long)]
    pub no_prestage: bool,
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Regions to start workers in.
    #[arg(long, value_delimiter = ',', default_value = "guian,ulanqab")]
    pub regions: Vec<Region>,
    #[arg(long, default_value_t = 1)]
    pub workers_per_region: u32,
    #[arg(long, default_value_t = 1)]
    pub slots: u32,
    /// Folder for NATS data, caches and the default store.
    #[arg(long, default_value = "./suanli-farm")]
    pub dir: PathBuf,
    /// Region catalog for the coordinator (see `suanli coordinator --catalog`).
    #[arg(long, env = "SUANLI_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// Studio catalog for the coordinator (see `suanli coordinator --studios`).
    #[arg(long, env = "SUANLI_STUDIOS")]
    pub studio_catalog: Option<PathBuf>,
    /// Run the farm secure: TLS and an identity per role (`suanli auth init` into DIR/auth,
    /// unless a farm is there already), with nats-server enforcing each role's permissions.
    #[arg(long)]
    pub secure: bool,
    /// Studios to give identities on a secure farm (DIR/auth/studio-<name>.nk).
    #[arg(long, value_delimiter = ',', requires = "secure")]
    pub studios: Vec<suanli_shared::Studio>,
    /// Serve Prometheus metrics: the coordinator at http://ADDR/metrics, the n-th worker at
    /// ADDR's port + n. Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// `suanli coordinator`: leads (or stands by) until a signal.
pub async fn coordinator(
    args: CoordinatorArgs,
    nats: &str,
    store: &str,
    access: Access,
) -> anyhow::Result<u8> {
    if let Some(id) = &access.identity {
        id.expect(|r| *r == Role::Coordinator, "the coordinator identity")
            .map_err(|e| BadInput(e.to_string()))?;
    }
    let mut config = suanli_coordinator::Config::new(nats, store);
    config.access = access;
    config.lease_ttl = args.lease_ttl.max(Duration::from_secs(1));
    config.worker_lost_after = args.worker_lost_after;
    config.region_lost_after = args.region_lost_after;
    config.prefetch = args.prefetch;
    config.metrics_listen = args.metrics_listen;
    config.fast_recovery = !args.no_fast_recovery;
    config.prestage = !args.no_prestage;
    if let Some(path) = &args.catalog {
        config.catalog = load_catalog(path)?;
    }
    if let Some(path) = &args.studios {
        config.studios = load_studios(path)?;
    }
    config.webhooks = webhook_config(&args.webhooks, args.webhook_secret_file.as_deref())?;
    suanli_coordinator::run(config, shutdown_on_signals()).await?;
    Ok(0)
}

/// The coordinator's webhook settings: each URL checked, the secret read from its file (or
/// `SUANLI_WEBHOOK_SECRET`).
fn webhook_config(
    urls: &[String],
    secret_file: Option<&std::path::Path>,
) -> anyhow::Result<suanli_coordinator::webhooks::WebhookConfig> {
    for url in urls {
        suanli_coordinator::webhooks::check_url(url)
            .map_err(|e| BadInput(format!("--webhook: {e}")))?;
    }
    let secret = match secret_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                BadInput(format!(
                    "--webhook-secret-file {}: {e} (a file holding the signing secret)",
                    path.display()
                ))
            })?;
            Some(text.trim_end_matches(['\n', '\r']).as_bytes().to_vec())
        }
        None => std::env::var("SUANLI_WEBHOOK_SECRET")
            .ok()
            .map(String::into_bytes),
    };
    if secret.as_ref().is_some_and(|s| s.is_empty()) {
        return Err(BadInput(
            "the webhook secret is empty: put at least 16 random bytes in it".into(),
        )
        .into());
    }
    if secret.is_none() && !urls.is_empty() {
        tracing::warn!(
            "webhooks without a secret: posts carry no signature (give --webhook-secret-file)"
        );
    }
    Ok(suanli_coordinator::webhooks::WebhookConfig {
        urls: urls.to_vec(),
        secret,
        ..Default::default()
    })
}

/// `suanli worker --region R`: renders the region's tasks until a signal, then drains.
pub async fn worker(
    args: WorkerArgs,
    nats: &str,
    store: &str,
    access: Access,
) -> anyhow::Result<u8> {
    let renderers = args.renderer_policy()?;
    if let Some(missing) = args.sandbox_hide.iter().find(|p| !p.exists()) {
        return Err(BadInput(format!(
            "--sandbox-hide {}: no such file or folder (a path to hide must exist)",
            missing.display()
        ))
        .into());
    }
    // A worker identity names its region: it is the default, and another one is refused.
    let identity_region = match access.role() {
        Some(Role::Worker(r)) => Some(r.clone()),
        Some(_) => {
            let id = access
                .identity
                .as_ref()
                .expect("a role comes from an identity");
            return Err(BadInput(
                id.expect(|_| false, "a worker identity (worker-<region>.nk)")
                    .unwrap_err()
                    .to_string(),
            )
            .into());
        }
        None => None,
    };
    let region = match (args.region, identity_region) {
        (Some(flag), Some(id)) if flag != id => {
            return Err(BadInput(format!(
                "--region {flag} but the identity is a worker of region {id}: a worker renders only for its identity's region"
            ))
            .into())
        }
        (flag, id) => flag.or(id),
    };
    let Some(region) = region else {
        return Err(BadInput(
            "a worker needs --region NAME (or SUANLI_REGION): the region it renders for".into(),
        )
        .into());
    };
    let name = match args.name {
        Some(n) => n,
        None => default_worker_name()?,
    };
    let mut config = suanli_worker::Config::new(nats, store, region, name, args.cache_dir);
    config.access = access;
    config.slots = args.slots.max(1);
    config.cache_max_bytes = args.cache_gib << 30;
    config.max_download_rate = args.max_download_rate;
    config.drain_grace = args.drain_grace;
    config.ack_wait = args.ack_wait.max(Duration::from_secs(1));
    config.threads_per_slot = (config.threads_per_slot / config.slots).max(1);
    config.renderers = renderers;
    config.metrics_listen = args.metrics_listen;
    if let Some(cores) = args.cores {
        config.resources.cores = cores;
    }
    if let Some(memory) = args.memory {
        config.resources.memory_mib = memory;
    }
    for tag in &args.tags {
        if tag.is_empty() || tag.len() > 128 || !tag.chars().all(|c| c.is_ascii_graphic()) {
            return Err(BadInput(format!(
                "--tags entry '{tag}' must be 1-128 printable characters without spaces"
            ))
            .into());
        }
    }
    config.resources.tags = args.tags;
    let choice = args.gpus;
    config.resources.gpus =
        tokio::task::spawn_blocking(move || suanli_worker::resources::detect_gpus(choice))
            .await
            .context("the GPU check stopped")?
            .map_err(BadInput)?;
    let mib = |v: Option<u64>| v.map(|v| v.saturating_mul(1 << 20));
    config.sandbox = suanli_worker::render::sandbox::SandboxSettings {
        mode: args.sandbox,
        run_as: args.run_as,
        hide: args.sandbox_hide,
        max: suanli_worker::render::sandbox::Limits {
            memory_bytes: mib(args.max_memory_mib),
            processes: args.max_processes,
            file_bytes: mib(args.max_file_mib),
        },
    };
    suanli_worker::run(config, shutdown_on_signals()).await?;
    Ok(0)
}

/// `suanli up`: a local farm (its own nats-server unless `nats` is given) until Ctrl-C.
pub async fn up(args: UpArgs, nats: Option<String>, store: Option<String>) -> anyhow::Result<u8> {
    let mut options = crate::localfarm::FarmOptions::new(&args.dir, &[])?;
    options.regions = args.regions;
    options.workers_per_region = args.workers_per_region.max(1);
    options.slots = args.slots.max(1);
    if args.secure && nats.is_some() {
        return Err(BadInput(
            "--secure starts its own nats-server from the farm's config: leave out --nats".into(),
        )
        .into());
    }
    options.nats_url = nats;
    options.store_url = store;
    options.secure = args.secure;
    options.studios = args.studios;
    options.metrics_listen = args.metrics_listen;
    if let Some(path) = &args.catalog {
        options.catalog = load_catalog(path)?;
    }
    if let Some(path) = &args.studio_catalog {
        options.studio_catalog = load_studios(path)?;
    }
    let farm = crate::localfarm::LocalFarm::start(options).await?;
    println!("farm up: NATS {}  store {}", farm.nats_url, farm.store_url);
    println!(
        "  export SUANLI_NATS={} SUANLI_STORE={}",
        farm.nats_url, farm.store_url
    );
    if let Some(auth) = &farm.auth_dir {
        println!(
            "  export SUANLI_CA={} SUANLI_IDENTITY={}",
            auth.join("ca.pem").display(),
            crate::auth::identity_path(auth, &Role::Operator).display()
        );
        println!(
            "  (identities of every role are in {}; a studio uses its studio-<name>.nk)",
            auth.display()
        );
    }
    if let Some(addr) = args.metrics_listen {
        println!("  metrics: coordinator http://{addr}/metrics, workers at the ports after it");
    }
    println!("Ctrl-C stops it.");
    shutdown_on_signals().cancelled().await;
    farm.stop().await;
    Ok(0)
}

/// The host name made safe for a worker name, and the pid: unique on one machine.
fn default_worker_name() -> anyhow::Result<WorkerId> {
    let host: String = suanli_shared::sys::hostname()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    Ok(format!("{host}-{}", std::process::id()).parse()?)
}
