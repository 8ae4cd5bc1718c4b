//! Command line: a [`Cli`] struct and a [`Command`] enum whose doc comments are the help text.
//! Flags and `SUANLI_*` variables are parsed here and resolved once into each role's config.
//!
//! Exit codes: 0 success; 1 an error (NATS, store, coordinator); 2 bad input (refused before
//! anything is enqueued); 3 the job ended `failed` or `canceled`, or frames are missing;
//! 4 `wait` timed out.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use suanli_shared::ledger::Ledger;
use suanli_shared::protocol::{now_ms, JobState, JobStatus, WorkerInfo};
use suanli_shared::store::Store;
use suanli_shared::{JobId, Region, WorkerId};
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ClientError};
use crate::jobfile::{self, JobFile, Overrides};

pub const EXIT_ERROR: u8 = 1;
pub const EXIT_BAD_INPUT: u8 = 2;
pub const EXIT_JOB_FAILED: u8 = 3;
pub const EXIT_TIMEOUT: u8 = 4;

/// Suanli (算力): a cross-region render farm. Studios submit shots; workers in remote regions
/// render them; frames land in object storage.
#[derive(Debug, Parser)]
#[command(name = "suanli", version, about)]
pub struct Cli {
    /// NATS server of the farm (the hub) [default: nats://127.0.0.1:4222; `up` starts its own].
    #[arg(long, global = true, env = "SUANLI_NATS")]
    pub nats: Option<String>,
    /// Object store for inputs and frames: file:///path, a plain path, s3://bucket[/prefix],
    /// gs://bucket, az://container [default: ./suanli-store; `up` uses DIR/store].
    #[arg(long, global = true, env = "SUANLI_STORE")]
    pub store: Option<String>,
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator: accepts jobs, dispatches tasks, tracks state. A second one stands
    /// by and takes over when the first stops.
    Coordinator(CoordinatorArgs),
    /// Run a worker that renders tasks for one region (`suanli worker --region R`), or drain a
    /// running one (`suanli worker drain NAME`).
    Worker(WorkerCommand),
    /// Run a whole farm on this machine: nats-server (unless --nats is given), a coordinator and
    /// workers. Stops on Ctrl-C.
    Up(UpArgs),
    /// Render the built-in short film on a local farm, fetch the frames and make a contact sheet.
    Demo(crate::demo::DemoArgs),
    /// Submit a job from a JOB.toml and/or flags; prints the job id.
    Submit(Box<SubmitArgs>),
    /// Show one job, or list jobs.
    Status {
        job: Option<JobId>,
        #[arg(long)]
        json: bool,
    },
    /// Wait for a job to finish; exits 0 only when every frame is done.
    Wait {
        job: JobId,
        /// Give up after this long (e.g. 30m); exit code 4.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        #[arg(long)]
        json: bool,
    },
    /// Download a job's frames into a folder, verifying each file's hash.
    Fetch {
        job: JobId,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job: running renders are stopped, pending tasks dropped.
    Cancel {
        job: JobId,
        #[arg(long)]
        json: bool,
    },
    /// Queue a job's failed or canceled tasks again.
    Retry {
        job: JobId,
        #[arg(long)]
        json: bool,
    },
    /// List workers: region, state, slots, current tasks.
    Workers {
        #[arg(long)]
        json: bool,
    },
    /// Core-hours, cost, energy, carbon and bytes moved, per region, for one job or all.
    Ledger {
        job: Option<JobId>,
        #[arg(long)]
        json: bool,
    },
    /// Operator terminal: regions, jobs, workers and the ledger, live (`?` shows the keys).
    Tui,
    /// Render one frame of the built-in film locally, without a farm (for checks and
    /// benchmarks).
    RenderFrame(RenderFrameArgs),
    /// Simulate a farm scenario (TOML, see deploy/sim/) with the coordinator's own placement
    /// code: makespan, cost, carbon, utilization and data moved, per policy.
    Sim {
        scenario: PathBuf,
        /// balanced, cheapest, fastest, greenest, or all.
        #[arg(long, default_value = "all")]
        policy: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct RenderFrameArgs {
    /// Frame number (the film loops every 96 frames).
    #[arg(long)]
    pub frame: u32,
    /// Image width in pixels (1 to 8192, as on the farm).
    #[arg(long, default_value_t = 320, value_parser = clap::value_parser!(u32).range(1..=8192))]
    pub width: u32,
    /// Image height in pixels (1 to 8192).
    #[arg(long, default_value_t = 180, value_parser = clap::value_parser!(u32).range(1..=8192))]
    pub height: u32,
    /// Camera rays per pixel (1 to 4096).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub samples: u32,
    /// PNG file to write; byte-identical to the farm's output for the same frame and settings.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct WorkerCommand {
    #[command(subcommand)]
    pub action: Option<WorkerAction>,
    #[command(flatten)]
    pub run: WorkerArgs,
}

#[derive(Debug, Subcommand)]
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
    /// A region with no live worker this long loses its queued tasks to the other regions.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub region_lost_after: Duration,
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
}

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// Job file (TOML); flags override its values.
    pub job_file: Option<PathBuf>,
    /// Scene file (required by blender and command renderers).
    #[arg(long)]
    pub scene: Option<PathBuf>,
    /// Frames: 1-240, 1-240x2 (step), 1,5,9-12.
    #[arg(long)]
    pub frames: Option<String>,
    /// Frames per task.
    #[arg(long)]
    pub chunk: Option<u32>,
    /// builtin, blender or command.
    #[arg(long)]
    pub renderer: Option<String>,
    #[arg(long)]
    pub name: Option<String>,
    /// Higher runs first.
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// Regions allowed to render the job (default: any).
    #[arg(long, value_delimiter = ',')]
    pub regions: Option<Vec<String>>,
    #[arg(long)]
    pub max_retries: Option<u32>,
    /// Per-task time limit, e.g. 2h.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Extra input file or folder (repeatable).
    #[arg(long = "input")]
    pub inputs: Vec<PathBuf>,
    /// Output file pattern with one run of '#', e.g. shot010_####.
    #[arg(long)]
    pub output: Option<String>,
    #[arg(long)]
    pub width: Option<u32>,
    #[arg(long)]
    pub height: Option<u32>,
    #[arg(long)]
    pub samples: Option<u32>,
    /// Renderer version that goes into the task key (blender: default from the workers).
    #[arg(long)]
    pub renderer_version: Option<String>,
    /// Blender output format: png, exr, jpeg.
    #[arg(long)]
    pub format: Option<String>,
    /// Extension of the frames a command renderer writes.
    #[arg(long)]
    pub ext: Option<String>,
    /// Placement policy: balanced, cheapest, fastest, greenest (default: the farm's).
    #[arg(long)]
    pub policy: Option<String>,
    /// When every frame is needed: 2025-06-01T18:00:00+08:00, Unix ms, or +6h.
    #[arg(long)]
    pub deadline: Option<String>,
    /// Most tasks of this job queued or running at once.
    #[arg(long)]
    pub max_slots: Option<u32>,
    /// Wait for the job to finish; exit 0 only when every frame is done.
    #[arg(long)]
    pub wait: bool,
    #[arg(long)]
    pub json: bool,
    /// Command renderer argv, after `--`: placeholders {frame} {start} {end} {step} {output} {scene}.
    #[arg(last = true)]
    pub argv: Vec<String>,
}

pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs a command and returns the process exit code; errors are printed here.
pub async fn run(cli: Cli) -> u8 {
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if is_bad_input(&e) {
                EXIT_BAD_INPUT
            } else {
                EXIT_ERROR
            }
        }
    }
}

/// Errors that mean the user's input was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(String);

fn is_bad_input(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<BadInput>().is_some()
            || c.downcast_ref::<ClientError>()
                .is_some_and(|c| c.is_bad_request())
    })
}

fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
        }
        t.cancel();
    });
    token
}

fn print_json<T: serde::Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

pub const DEFAULT_NATS: &str = "nats://127.0.0.1:4222";
pub const DEFAULT_STORE: &str = "./suanli-store";

async fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    let Cli {
        nats: nats_given,
        store: store_given,
        command,
        ..
    } = cli;
    if let Command::Up(args) = command {
        return up(args, nats_given, store_given).await;
    }
    let nats = nats_given.unwrap_or_else(|| DEFAULT_NATS.to_string());
    let store = store_given.unwrap_or_else(|| DEFAULT_STORE.to_string());
    match command {
        Command::Coordinator(args) => {
            let mut config = suanli_coordinator::Config::new(&nats, &store);
            config.lease_ttl = args.lease_ttl.max(Duration::from_secs(1));
            config.worker_lost_after = args.worker_lost_after;
            config.region_lost_after = args.region_lost_after;
            if let Some(path) = &args.catalog {
                config.catalog = load_catalog(path)?;
            }
            suanli_coordinator::run(config, shutdown_on_signals()).await?;
            Ok(0)
        }
        Command::Worker(WorkerCommand {
            action: Some(WorkerAction::Drain { worker, json }),
            ..
        }) => drain_worker(&nats, &worker, json).await,
        Command::Worker(WorkerCommand { run: args, .. }) => {
            let Some(region) = args.region else {
                return Err(BadInput(
                    "a worker needs --region NAME (or SUANLI_REGION): the region it renders for"
                        .into(),
                )
                .into());
            };
            let name = match args.name {
                Some(n) => n,
                None => default_worker_name()?,
            };
            let mut config =
                suanli_worker::Config::new(&nats, &store, region, name, args.cache_dir);
            config.slots = args.slots.max(1);
            config.cache_max_bytes = args.cache_gib << 30;
            config.drain_grace = args.drain_grace;
            config.ack_wait = args.ack_wait.max(Duration::from_secs(1));
            config.threads_per_slot = (config.threads_per_slot / config.slots).max(1);
            suanli_worker::run(config, shutdown_on_signals()).await?;
            Ok(0)
        }
        Command::Up(_) => unreachable!("handled above"),
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Submit(args) => submit(*args, &nats, &store).await,
        Command::Status { job, json } => {
            let client = Client::connect(&nats).await?;
            match job {
                Some(job) => {
                    let s = client.status(&job).await?;
                    if json {
                        print_json(&s);
                    } else {
                        print_status(&s);
                    }
                }
                None => {
                    let list = client.jobs().await?;
                    if json {
                        print_json(&list);
                    } else {
                        print_job_list(&list);
                    }
                }
            }
            Ok(0)
        }
        Command::Wait { job, timeout, json } => {
            let client = Client::connect(&nats).await?;
            let end = client.wait(&job, timeout, |_| {}).await?;
            match end {
                Some(s) => {
                    if json {
                        print_json(&s);
                    } else {
                        print_status(&s);
                    }
                    Ok(if s.state == JobState::Done {
                        0
                    } else {
                        EXIT_JOB_FAILED
                    })
                }
                None => {
                    eprintln!("error: job {job} did not finish within the timeout");
                    Ok(EXIT_TIMEOUT)
                }
            }
        }
        Command::Fetch { job, out, json } => {
            let client = Client::connect(&nats).await?;
            let rec = client.job(&job).await?;
            let store = Store::open(&store)?;
            let report = crate::client::fetch(&rec, &store, &out).await?;
            if json {
                print_json(&report);
            } else {
                println!(
                    "{} frames in {} ({} downloaded, {} already there, {:.1} MB), {}",
                    report.frames - report.unverified.len(),
                    out.display(),
                    report.downloaded,
                    report.already_present,
                    report.bytes as f64 / 1e6,
                    if report.unverified.is_empty() {
                        "all verified".to_string()
                    } else {
                        format!(
                            "{} DAMAGED in the store (not written): {}",
                            report.unverified.len(),
                            report.unverified.join(", ")
                        )
                    }
                );
                if !report.missing.is_empty() {
                    eprintln!(
                        "{} frames have no output yet (job is {})",
                        report.missing.len(),
                        rec.state.as_str()
                    );
                }
            }
            Ok(if !report.unverified.is_empty() {
                EXIT_ERROR
            } else if report.missing.is_empty() {
                0
            } else {
                EXIT_JOB_FAILED
            })
        }
        Command::Cancel { job, json } => {
            let s = Client::connect(&nats).await?.cancel(&job).await?;
            if json {
                print_json(&s);
            } else {
                println!("job {} is {}", s.id, s.state.as_str());
            }
            Ok(0)
        }
        Command::Retry { job, json } => {
            let s = Client::connect(&nats).await?.retry(&job).await?;
            if json {
                print_json(&s);
            } else {
                println!(
                    "job {} is {}: {} tasks pending",
                    s.id,
                    s.state.as_str(),
                    s.tasks.pending
                );
            }
            Ok(0)
        }
        Command::Ledger { job, json } => {
            let client = Client::connect(&nats).await?;
            let statuses = match job {
                Some(job) => vec![client.status(&job).await?],
                None => client.jobs().await?,
            };
            let ledger = Ledger::of(&statuses);
            if json {
                print_json(&ledger);
            } else {
                print_ledger(&ledger);
            }
            Ok(0)
        }
        Command::Workers { json } => {
            let list = Client::connect(&nats).await?.workers().await?;
            if json {
                print_json(&list);
            } else {
                print_workers(&list);
            }
            Ok(0)
        }
        Command::RenderFrame(args) => render_frame(args).await,
        Command::Sim {
            scenario,
            policy,
            json,
        } => {
            let out = suanli_coordinator::sim::run_cli(&scenario, &policy, json)
                .map_err(|e| BadInput(e.to_string()))?;
            print!("{out}");
            Ok(0)
        }
        Command::Tui => crate::tui_api::run(&nats, &store).await,
    }
}

/// `suanli worker drain NAME`: finds the worker (by name, or REGION.NAME) and asks the
/// coordinator to drain it.
async fn drain_worker(nats: &str, worker: &str, json: bool) -> anyhow::Result<u8> {
    let client = Client::connect(nats).await?;
    let workers = client.workers().await?;
    let matches: Vec<&WorkerInfo> = workers
        .iter()
        .filter(|w| w.id.as_str() == worker || format!("{}.{}", w.region, w.id) == worker)
        .collect();
    let target = match matches.as_slice() {
        [one] => *one,
        [] => {
            return Err(
                BadInput(format!("no worker named '{worker}' (see `suanli workers`)")).into(),
            )
        }
        several => {
            let names: Vec<String> = several
                .iter()
                .map(|w| format!("{}.{}", w.region, w.id))
                .collect();
            return Err(BadInput(format!(
                "'{worker}' names workers in several regions: say which, one of {}",
                names.join(", ")
            ))
            .into());
        }
    };
    let w = client.drain(&target.region, &target.id).await?;
    if json {
        print_json(&w);
    } else {
        println!(
            "worker {}.{} is draining: it takes no new tasks and exits when its {} running task(s) end",
            w.region, w.id, w.busy
        );
    }
    Ok(0)
}

/// Renders one builtin frame in this process, on the blocking pool, and writes the PNG.
async fn render_frame(args: RenderFrameArgs) -> anyhow::Result<u8> {
    let settings = suanli_worker::builtin::SceneSettings {
        width: args.width,
        height: args.height,
        samples: args.samples,
    };
    let frame = args.frame;
    let png = tokio::task::spawn_blocking(move || {
        let never = std::sync::atomic::AtomicBool::new(false);
        suanli_worker::builtin::render_frame(&settings, frame, &never, &mut |_| {})
            .map(|image| suanli_worker::builtin::encode_png(&image))
    })
    .await
    .context("the render thread panicked")?
    .context("the render stopped before finishing the frame")?;
    std::fs::write(&args.out, png)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    Ok(0)
}

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

/// Reads a region catalog; a bad one is the operator's input error (exit 2).
fn load_catalog(path: &std::path::Path) -> anyhow::Result<suanli_shared::regions::RegionCatalog> {
    suanli_shared::regions::RegionCatalog::load(path).map_err(|e| BadInput(e.to_string()).into())
}

fn print_ledger(ledger: &Ledger) {
    println!(
        "{:<12} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "REGION", "FRAMES", "CORE-H", "COST", "KWH", "KG CO2", "MB IN"
    );
    let row = |name: &str, r: &suanli_shared::protocol::RegionFigures| {
        println!(
            "{:<12} {:>7} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.1}",
            name,
            r.frames_done,
            r.core_seconds / 3600.0,
            r.cost,
            r.energy_kwh,
            r.carbon_kg,
            r.bytes_in as f64 / 1e6
        )
    };
    for (region, r) in &ledger.regions {
        row(region, r);
    }
    row("total", &ledger.total);
}

async fn up(args: UpArgs, nats: Option<String>, store: Option<String>) -> anyhow::Result<u8> {
    let mut options = crate::localfarm::FarmOptions::new(&args.dir, &[])?;
    options.regions = args.regions;
    options.workers_per_region = args.workers_per_region.max(1);
    options.slots = args.slots.max(1);
    options.nats_url = nats;
    options.store_url = store;
    if let Some(path) = &args.catalog {
        options.catalog = load_catalog(path)?;
    }
    let farm = crate::localfarm::LocalFarm::start(options).await?;
    println!("farm up: NATS {}  store {}", farm.nats_url, farm.store_url);
    println!(
        "  export SUANLI_NATS={} SUANLI_STORE={}",
        farm.nats_url, farm.store_url
    );
    println!("Ctrl-C stops it.");
    shutdown_on_signals().cancelled().await;
    farm.stop().await;
    Ok(0)
}

async fn submit(args: SubmitArgs, nats: &str, store_url: &str) -> anyhow::Result<u8> {
    let (file, base) = match &args.job_file {
        Some(path) => {
            let file = jobfile::read_job_file(path).map_err(|e| BadInput(format!("{e:#}")))?;
            let base = path
                .parent()
                .map(|p| {
                    if p.as_os_str().is_empty() {
                        PathBuf::from(".")
                    } else {
                        p.to_path_buf()
                    }
                })
                .unwrap_or_else(|| ".".into());
            (file, base)
        }
        None => (JobFile::default(), PathBuf::from(".")),
    };
    let flags = Overrides {
        name: args.name,
        frames: args.frames,
        chunk: args.chunk,
        priority: args.priority,
        regions: args.regions,
        max_retries: args.max_retries,
        task_timeout: args.timeout,
        output: args.output,
        scene: args.scene,
        inputs: args.inputs,
        renderer: args.renderer,
        width: args.width,
        height: args.height,
        samples: args.samples,
        renderer_version: args.renderer_version,
        format: args.format,
        argv: args.argv,
        ext: args.ext,
        policy: args.policy,
        deadline: args.deadline,
        max_slots: args.max_slots,
    };
    let mut resolved =
        jobfile::resolve(file, flags, &base).map_err(|e| BadInput(format!("{e:#}")))?;
    // Check the coordinator is there before uploading anything.
    let client = Client::connect(nats).await?;
    let store = Store::open(store_url)?;
    let upload = jobfile::upload_inputs(&store, &mut resolved).await?;
    let reply = client.submit(resolved.spec).await.context("job refused")?;
    if !args.wait {
        if args.json {
            print_json(
                &serde_json::json!({"id": reply.id, "tasks": reply.tasks, "cached": reply.cached}),
            );
        } else {
            println!("{}", reply.id);
            eprintln!(
                "submitted: {} tasks ({} cached); inputs: {} files, {} uploaded ({:.1} MB)",
                reply.tasks,
                reply.cached,
                upload.files,
                upload.uploaded,
                upload.uploaded_bytes as f64 / 1e6
            );
        }
        return Ok(0);
    }
    if !args.json {
        eprintln!(
            "job {} submitted: {} tasks ({} cached)",
            reply.id, reply.tasks, reply.cached
        );
    }
    let end = client
        .wait(&reply.id, None, |s| {
            if !args.json {
                eprintln!(
                    "  {}: {}/{} frames, {} running",
                    s.state.as_str(),
                    s.frames.done,
                    s.frames.total,
                    s.tasks.running
                );
            }
        })
        .await?
        .context("wait ended without a result")?;
    if args.json {
        print_json(&end);
    } else {
        println!("{}", reply.id);
        print_status(&end);
    }
    Ok(if end.state == JobState::Done {
        0
    } else {
        EXIT_JOB_FAILED
    })
}

fn age(ms: u64) -> String {
    let secs = now_ms().saturating_sub(ms) / 1000;
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

pub fn print_status(s: &JobStatus) {
    println!("job {}  {}  [{}]", s.id, s.name, s.state.as_str());
    println!(
        "  frames {}/{} done ({} cached), {} failed",
        s.frames.done, s.frames.total, s.frames.cached, s.frames.failed
    );
    println!(
        "  tasks  {} total: {} pending, {} queued, {} running, {} done ({} cached), {} failed, {} canceled",
        s.tasks.total, s.tasks.pending, s.tasks.queued, s.tasks.running, s.tasks.done, s.tasks.cached, s.tasks.failed, s.tasks.canceled
    );
    for (region, r) in &s.regions {
        println!(
            "  region {region}: {} frames, {:.1} core-s, cost {:.3}, {:.3} kWh, {:.3} kg CO2, {:.1} MB in",
            r.frames_done, r.core_seconds, r.cost, r.energy_kwh, r.carbon_kg, r.bytes_in as f64 / 1e6
        );
    }
    if let Some(reason) = &s.reason {
        println!("  reason: {reason}");
    }
    for f in &s.failures {
        println!(
            "  task {} (frames {}) {:?}: attempt {} on {}/{}: {}{}",
            f.task,
            f.frames,
            f.state,
            f.failure.attempt,
            f.failure.region,
            f.failure.worker,
            f.failure.reason,
            f.failure
                .exit_code
                .map(|c| format!(" (exit {c})"))
                .unwrap_or_default()
        );
        for line in f
            .failure
            .stderr_tail
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            println!("      | {line}");
        }
    }
    if s.failures_total as usize > s.failures.len() {
        println!(
            "  … and {} more failed tasks",
            s.failures_total as usize - s.failures.len()
        );
    }
}

fn print_job_list(list: &[JobStatus]) {
    if list.is_empty() {
        println!("no jobs");
        return;
    }
    println!(
        "{:<26}  {:<20} {:<9} {:>13}  {:>6}  age",
        "ID", "NAME", "STATE", "FRAMES", "CACHED"
    );
    for s in list {
        println!(
            "{:<26}  {:<20} {:<9} {:>6}/{:<6}  {:>6}  {}",
            s.id,
            truncate(&s.name, 20),
            s.state.as_str(),
            s.frames.done,
            s.frames.total,
            s.frames.cached,
            age(s.created_ms)
        );
    }
}

fn print_workers(list: &[WorkerInfo]) {
    if list.is_empty() {
        println!("no workers");
        return;
    }
    println!(
        "{:<12} {:<24} {:<10} {:>5}  {:>8}  {:>10}  current",
        "REGION", "WORKER", "STATE", "SLOTS", "TASKS", "HEARTBEAT"
    );
    for w in list {
        let current: Vec<String> = w
            .current
            .iter()
            .map(|c| {
                format!(
                    "{}#{} {} {:.0}%",
                    &c.job.as_str()[..8.min(c.job.as_str().len())],
                    c.task,
                    c.chunk,
                    c.fraction * 100.0
                )
            })
            .collect();
        println!(
            "{:<12} {:<24} {:<10} {:>2}/{:<2}  {:>8}  {:>10}  {}",
            w.region.as_str(),
            truncate(w.id.as_str(), 24),
            format!("{:?}", w.state).to_lowercase(),
            w.busy,
            w.slots,
            w.tasks_done,
            format!("{} ago", age(w.heartbeat_ms)),
            current.join(", ")
        );
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).chain(['…']).collect()
    }
}
