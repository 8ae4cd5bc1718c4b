//! Farm benchmarks: what the orchestration itself costs, measured through the real parts (a
//! nats-server with JetStream, the coordinator, workers, a file store), with renders so small
//! that almost all the time is the farm's own.
//!
//! 1. submit + enqueue: a 10,000-frame builtin job on a farm with no workers, from the
//!    `submit` call to its reply (validation, 10,000 task keys, 10,000 cache look-ups and
//!    10,000 task records written to KV);
//! 2. orchestration overhead: 200 tiny one-frame tasks through 2 regions x 1 worker x 1 slot,
//!    from submit until `wait` sees `done`, against the same 200 renders run by `xargs -P 2`
//!    calling `suanli render-frame` once per frame (and against the bare render time);
//! 3. resubmitting the same 200 tasks: every task is a cache hit, nothing renders;
//! 4. section 2's farm runs again with the store on tmpfs (`/dev/shm`), where fsync is free:
//!    the difference is what the store's durable writes cost;
//! 5. a secure farm (`suanli auth init`: TLS on every connection, NKey identities, per-role
//!    permissions) beside a plain one, both up at once, the same jobs alternating between
//!    them: section 1's submit+enqueue and section 2's 200 tasks.
//!
//! Each figure is the median of 3 runs; the CPU line under each farm run says how much of the
//! machine the farm, the disk (iowait) and other processes took, so a disturbed run shows.
//!
//! A plain `main` (no criterion): `cargo bench --bench farm`; it takes well under a minute.
//! `RUST_LOG=debug` shows the farm's own timestamped logs on stderr. See docs/BENCHMARKS.md.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context as _};
use suanli::client::Client;
use suanli::localfarm::{FarmOptions, LocalFarm};
use suanli_shared::access::Role;
use suanli_shared::layout;
use suanli_shared::protocol::{InputManifest, JobSpec, JobState, JobStatus, RendererSpec};
use suanli_shared::store::Store;
use suanli_worker::builtin;

/// Frames of the submit+enqueue job.
const BIG_JOB_FRAMES: u32 = 10_000;
/// Times each measurement is repeated (each time a new job on the same farm).
const RUNS: u32 = 3;
/// Tasks of the overhead job, one frame each. Run `r` renders frames `(r-1)*200+1 ..= r*200`,
/// so every run has new task keys; the film loops every 96 frames, so each run's work is about
/// the same.
const SMALL_JOB_FRAMES: u32 = 200;
/// Regions of the overhead farm, one worker with one slot each.
const REGIONS: [&str; 2] = ["guian", "ulanqab"];
/// Render slots of the overhead farm, and the parallelism of the `xargs` baseline.
const SLOTS: u32 = REGIONS.len() as u32;
/// A tiny frame: the render itself takes about a millisecond.
const WIDTH: u32 = 64;
const HEIGHT: u32 = 36;
const SAMPLES: u32 = 1;
/// Bound on any one job, so a stuck farm fails the bench instead of hanging it.
const JOB_LIMIT: Duration = Duration::from_secs(120);

/// The `suanli` binary; cargo builds a package's bin targets before its benches and names
/// them in `CARGO_BIN_EXE_<name>`.
const SUANLI_BIN: &str = env!("CARGO_BIN_EXE_suanli");

fn main() -> anyhow::Result<()> {
    suanli::cli::init_tracing(0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let total = Instant::now();
    print_machine();
    let tmp = tempfile::Builder::new()
        .prefix("suanli-bench-")
        .tempdir()
        .context("cannot create a temporary folder")?;

    println!("\n# 1. submit + enqueue, farm with no workers");
    let started = Instant::now();
    let farm = LocalFarm::start(FarmOptions::new(tmp.path().join("enqueue"), &[])?)
        .await
        .context("cannot start the farm with no workers")?;
    println!(
        "farm start (nats-server + coordinator, no workers): {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let client = Client::connect(&farm.nats_url).await?;
    let result = bench_submit(&farm, &client).await;
    farm.stop().await;
    result?;

    println!("\n# 2. orchestration overhead: {SMALL_JOB_FRAMES} tasks of one {WIDTH}x{HEIGHT} frame, {SAMPLES} sample, {SLOTS} slots");
    let render_secs = bench_render_in_process().await?;
    let mut options = FarmOptions::new(tmp.path().join("overhead"), &REGIONS)?;
    options.workers_per_region = 1;
    options.slots = 1;
    let farm = LocalFarm::start(options)
        .await
        .context("cannot start the two-region farm")?;
    let result = bench_overhead(&farm, tmp.path(), render_secs).await;
    farm.stop().await;
    let (xargs, on_disk) = result?;

    // The same farm with its store on tmpfs, where fsync is free.
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        println!(
            "\n# 4. the same {SMALL_JOB_FRAMES} tasks with the store on tmpfs ({})",
            shm.display()
        );
        let store_dir = tempfile::Builder::new()
            .prefix("suanli-bench-store-")
            .tempdir_in(shm)
            .context("cannot create a folder in /dev/shm")?;
        let mut options = FarmOptions::new(tmp.path().join("tmpfs-store"), &REGIONS)?;
        options.workers_per_region = 1;
        options.slots = 1;
        options.store_url = Some(format!("file://{}", store_dir.path().display()));
        let farm = LocalFarm::start(options)
            .await
            .context("cannot start the farm with its store on tmpfs")?;
        let result = bench_tmpfs_store(&farm, xargs, on_disk).await;
        farm.stop().await;
        result?;
    }
    bench_secure(tmp.path()).await?;
    println!("\nbenchmark took {:.1} s", total.elapsed().as_secs_f64());
    Ok(())
}

/// Rounds of section 5: each round runs the same work once on the plain farm and once on the
/// secure one, alternating which goes first, so drift in the machine's load hits both alike.
const SIDE_BY_SIDE_ROUNDS: u32 = 6;

/// Section 5: a plain and a secure farm side by side, alternating the same jobs between them:
/// submit+enqueue of the 10,000-frame job (no workers), then the 200-task job (2 regions).
async fn bench_secure(tmp: &Path) -> anyhow::Result<()> {
    println!("\n# 5. secure farm (TLS, NKey identities, per-role permissions) beside a plain one, alternating, {SIDE_BY_SIDE_ROUNDS} rounds");
    let farms = |name: &str, regions: &'static [&'static str]| {
        let dir = tmp.join(name);
        async move {
            let mut plain = FarmOptions::new(dir.join("plain"), regions)?;
            plain.workers_per_region = 1;
            let mut secure = FarmOptions::new(dir.join("secure"), regions)?;
            secure.workers_per_region = 1;
            secure.secure = true;
            let plain = LocalFarm::start(plain).await.context("plain farm")?;
            let secure = LocalFarm::start(secure).await.context("secure farm")?;
            let pc = Client::connect(&plain.nats_url).await?;
            let sc =
                Client::connect_with(&secure.nats_url, &secure.access(&Role::Operator)).await?;
            anyhow::Ok([(plain, pc), (secure, sc)])
        }
    };
    let [plain, secure] = farms("side-enqueue", &[]).await?;
    let result = side_by_side(
        &plain,
        &secure,
        "submit+enqueue",
        |farm, client, round| async move {
            let store = Store::open(&farm.store_url)?;
            let inputs = empty_inputs(&store).await?;
            let spec = builtin_job(
                &format!("enqueue-{round}"),
                &format!("1-{BIG_JOB_FRAMES}"),
                &inputs,
            )?;
            let started = Instant::now();
            let reply = client
                .submit(spec)
                .await
                .context("the 10,000-frame job was refused")?;
            ensure!(
                reply.tasks == BIG_JOB_FRAMES,
                "expected {BIG_JOB_FRAMES} tasks"
            );
            Ok(started.elapsed().as_secs_f64())
        },
    )
    .await;
    plain.0.stop().await;
    secure.0.stop().await;
    result?;

    let [plain, secure] = farms("side-overhead", &REGIONS).await?;
    let result = side_by_side(
        &plain,
        &secure,
        &format!("{SMALL_JOB_FRAMES} tasks, {SLOTS} slots"),
        |farm, client, round| async move {
            let store = Store::open(&farm.store_url)?;
            let inputs = empty_inputs(&store).await?;
            // A new range each round: every task renders.
            let frames = format!(
                "{}-{}",
                round * SMALL_JOB_FRAMES + 1,
                (round + 1) * SMALL_JOB_FRAMES
            );
            let spec = builtin_job(&format!("side-{round}"), &frames, &inputs)?;
            let (status, _, makespan) = submit_and_wait(client, spec).await?;
            ensure!(
                status.tasks.total == SMALL_JOB_FRAMES && status.tasks.cached == 0,
                "expected {SMALL_JOB_FRAMES} rendered tasks: {:?}",
                status.tasks
            );
            Ok(makespan)
        },
    )
    .await;
    plain.0.stop().await;
    secure.0.stop().await;
    result
}

/// Runs `work` on the plain and the secure farm in alternating order for
/// [`SIDE_BY_SIDE_ROUNDS`] rounds and prints both medians and their ratio.
async fn side_by_side<'a, F, Fut>(
    plain: &'a (LocalFarm, Client),
    secure: &'a (LocalFarm, Client),
    what: &str,
    work: F,
) -> anyhow::Result<()>
where
    F: Fn(&'a LocalFarm, &'a Client, u32) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<f64>>,
{
    let (mut p, mut s) = (Vec::new(), Vec::new());
    for round in 0..SIDE_BY_SIDE_ROUNDS {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for is_secure in order {
            let (farm, client) = if is_secure { secure } else { plain };
            let secs = work(farm, client, round).await?;
            if is_secure {
                s.push(secs)
            } else {
                p.push(secs)
            }
        }
        println!(
            "  round {}: plain {:.3} s, secure {:.3} s",
            round + 1,
            p[p.len() - 1],
            s[s.len() - 1]
        );
    }
    let (pm, sm) = (median(&p), median(&s));
    println!(
        "{what}: plain {pm:.3} s, secure {sm:.3} s (medians of {SIDE_BY_SIDE_ROUNDS}) = {:+.1}%",
        (sm / pm - 1.0) * 100.0
    );
    Ok(())
}

fn print_machine() {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    // Other work on the machine skews every figure: show how busy it was at the start.
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into());
    println!("suanli farm benchmark");
    println!(
        "machine: {cores} cores ({model}); load average {load}; date {}",
        humantime::format_rfc3339_seconds(SystemTime::now())
    );
}

/// A one-frame-per-task builtin job with no input files.
fn builtin_job(name: &str, frames: &str, inputs: &InputManifest) -> anyhow::Result<JobSpec> {
    Ok(JobSpec {
        webhooks: vec![],
        limits: Default::default(),
        requirements: Default::default(),
        name: name.into(),
        studio: Default::default(),
        priority: 0,
        frames: frames
            .parse()
            .with_context(|| format!("bad frames {frames}"))?,
        chunk: 1,
        regions: vec![],
        max_retries: 0,
        task_timeout_secs: 60,
        renderer: RendererSpec::Builtin {
            width: WIDTH,
            height: HEIGHT,
            samples: SAMPLES,
        },
        inputs: inputs.hash(),
        scene: None,
        output: "frame_####".into(),
        placement: Default::default(),
    })
}

/// Stores the empty input manifest that builtin jobs point at, as `suanli submit` would.
async fn empty_inputs(store: &Store) -> anyhow::Result<InputManifest> {
    let inputs = InputManifest::default();
    store
        .put_if_absent(
            &layout::input_manifest(&Default::default(), &inputs.hash()),
            inputs.to_bytes().into(),
        )
        .await
        .context("cannot store the empty input manifest")?;
    Ok(inputs)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Section 1: submit + enqueue of a 10,000-frame job, on a farm with no workers.
async fn bench_submit(farm: &LocalFarm, client: &Client) -> anyhow::Result<f64> {
    let store = Store::open(&farm.store_url)?;
    let inputs = empty_inputs(&store).await?;
    let frames = format!("1-{BIG_JOB_FRAMES}");
    let mut secs = Vec::new();
    for run in 1..=RUNS {
        let spec = builtin_job(&format!("enqueue-{run}"), &frames, &inputs)?;
        let started = Instant::now();
        let reply = client
            .submit(spec)
            .await
            .context("the 10,000-frame job was refused")?;
        let took = started.elapsed().as_secs_f64();
        ensure!(
            reply.tasks == BIG_JOB_FRAMES && reply.cached == 0,
            "expected {BIG_JOB_FRAMES} new tasks, got {} ({} cached)",
            reply.tasks,
            reply.cached
        );
        let status = client.status(&reply.id).await?;
        ensure!(
            status.state == JobState::Queued && status.tasks.pending == BIG_JOB_FRAMES,
            "with no workers every task should stay pending: {:?} {:?}",
            status.state,
            status.tasks
        );
        println!(
            "  run {run}: {took:.3} s ({:.0} tasks/s)",
            f64::from(BIG_JOB_FRAMES) / took
        );
        secs.push(took);
    }
    let m = median(&secs);
    println!(
        "submit+enqueue {BIG_JOB_FRAMES} frames: {m:.2} s ({:.0} tasks/s), median of {RUNS}",
        f64::from(BIG_JOB_FRAMES) / m
    );
    Ok(m)
}

/// The frames of overhead run `run` (1-based).
fn run_frames(run: u32) -> std::ops::RangeInclusive<u32> {
    (run - 1) * SMALL_JOB_FRAMES + 1..=run * SMALL_JOB_FRAMES
}

/// Run `run`'s frames as a job's frame spec, e.g. `201-400`.
fn frames_arg(run: u32) -> String {
    let frames = run_frames(run);
    format!("{}-{}", frames.start(), frames.end())
}

/// File name the farm gives `frame` with the output pattern `frame_####`.
fn frame_name(frame: u32) -> String {
    format!("frame_{frame:04}.png")
}

/// The bare work: run 1's frames rendered and PNG-encoded in this process, one after
/// another, no files. Returns the seconds for all of them.
async fn bench_render_in_process() -> anyhow::Result<f64> {
    let secs = tokio::task::spawn_blocking(|| {
        let settings = builtin::SceneSettings {
            width: WIDTH,
            height: HEIGHT,
            samples: SAMPLES,
        };
        let never = AtomicBool::new(false);
        let started = Instant::now();
        for frame in run_frames(1) {
            let image = builtin::render_frame(&settings, frame, &never, &mut |_| {})
                .context("the builtin render stopped early")?;
            std::hint::black_box(builtin::encode_png(&image));
        }
        anyhow::Ok(started.elapsed().as_secs_f64())
    })
    .await
    .context("the render thread panicked")??;
    println!(
        "render+encode in process, 1 thread: {secs:.3} s ({:.2} ms per frame)",
        secs * 1000.0 / f64::from(SMALL_JOB_FRAMES)
    );
    Ok(secs)
}

/// Arguments of `suanli render-frame` for one tiny frame, up to `--out` (its value follows).
fn render_args(frame: &str) -> Vec<String> {
    [
        "render-frame",
        "--frame",
        frame,
        "--width",
        &WIDTH.to_string(),
        "--height",
        &HEIGHT.to_string(),
        "--samples",
        &SAMPLES.to_string(),
        "--out",
    ]
    .map(String::from)
    .to_vec()
}

/// The baseline: every frame of `run` rendered by its own `suanli render-frame` process,
/// `SLOTS` at a time, by `xargs -P`. Returns the makespan in seconds.
fn bench_xargs(run: u32, out: &Path) -> anyhow::Result<f64> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let bin = PathBuf::from(SUANLI_BIN);
    ensure!(
        bin.is_file(),
        "{} is missing: `cargo bench` builds it; or run `cargo build --release`",
        bin.display()
    );
    let frames: String = run_frames(run).map(|f| format!("{f:04}\n")).collect();
    let started = Instant::now();
    let mut child = Command::new("xargs")
        .args(["-P", &SLOTS.to_string(), "-I{}"])
        .arg(&bin)
        .args(render_args("{}"))
        .arg(out.join("frame_{}.png"))
        .stdin(Stdio::piped())
        .spawn()
        .context("cannot run xargs")?;
    child
        .stdin
        .take()
        .context("xargs has no stdin")?
        .write_all(frames.as_bytes())
        .context("cannot feed xargs")?;
    let status = child.wait().context("xargs did not finish")?;
    let took = started.elapsed().as_secs_f64();
    ensure!(
        status.success(),
        "xargs -P {SLOTS} suanli render-frame failed: {status}"
    );
    Ok(took)
}

/// Submits `spec` and waits for the job to end. Returns the final status, the seconds from
/// the submit call to the reply, and the seconds until `wait` saw the final state.
async fn submit_and_wait(client: &Client, spec: JobSpec) -> anyhow::Result<(JobStatus, f64, f64)> {
    let started = Instant::now();
    let reply = client.submit(spec).await.context("job refused")?;
    let submitted = started.elapsed().as_secs_f64();
    let status = client
        .wait(&reply.id, Some(JOB_LIMIT), |_| {})
        .await?
        .with_context(|| format!("job {} did not finish within {JOB_LIMIT:?}", reply.id))?;
    let done = started.elapsed().as_secs_f64();
    if status.state != JobState::Done {
        bail!(
            "job {} ended {} ({} tasks failed): {:?}",
            status.id,
            status.state.as_str(),
            status.tasks.failed,
            status.reason
        );
    }
    Ok((status, submitted, done))
}

/// CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat`; `None` off
/// Linux. Assumes the usual 100 clock ticks per second.
fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Machine-wide CPU seconds so far, from `/proc/stat`: (busy, waiting for I/O).
fn machine_secs() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let (idle, iowait) = (*ticks.get(3)?, *ticks.get(4)?);
    let busy = ticks.iter().take(8).sum::<f64>() - idle - iowait;
    Some((busy / 100.0, iowait / 100.0))
}

/// Where the CPU went, sampled before and after a farm run.
#[derive(Clone, Copy)]
struct CpuSample {
    nats: f64,
    own: f64,
    busy: f64,
    iowait: f64,
}

impl CpuSample {
    fn take(farm: &LocalFarm) -> Option<Self> {
        let nats = cpu_secs(&farm.nats.as_ref()?.pid().to_string())?;
        let (busy, iowait) = machine_secs()?;
        Some(Self {
            nats,
            own: cpu_secs("self")?,
            busy,
            iowait,
        })
    }

    /// One line: the farm's CPU, everything else's, and the time spent waiting for the disk.
    fn describe(before: Option<Self>, after: Option<Self>, available: f64) -> Option<String> {
        let (a, b) = (before?, after?);
        let (nats, own) = (b.nats - a.nats, b.own - a.own);
        Some(format!(
            "CPU: nats-server {nats:.2} s, coordinator+workers+renders {own:.2} s, other processes {:.2} s, iowait {:.2} s, of {available:.2} s ({SLOTS} cores x makespan)",
            (b.busy - a.busy - nats - own).max(0.0),
            b.iowait - a.iowait
        ))
    }
}

/// Sections 2 and 3: for each run, the xargs baseline and the same renders through the farm;
/// then the first run's job again (all cached). Returns the medians of the xargs and farm
/// makespans.
async fn bench_overhead(
    farm: &LocalFarm,
    tmp: &Path,
    render_secs: f64,
) -> anyhow::Result<(f64, f64)> {
    let client = Client::connect(&farm.nats_url).await?;
    let store = Store::open(&farm.store_url)?;
    let inputs = empty_inputs(&store).await?;
    let n = f64::from(SMALL_JOB_FRAMES);
    let slots = f64::from(SLOTS);

    // Once, untimed: pages the binary in and checks the subcommand works.
    let warm = tmp.join("warmup.png");
    let status = Command::new(SUANLI_BIN)
        .args(render_args("1"))
        .arg(&warm)
        .status()
        .with_context(|| format!("cannot run {SUANLI_BIN}"))?;
    ensure!(status.success(), "suanli render-frame failed: {status}");

    let (mut xargs_secs, mut farm_secs) = (Vec::new(), Vec::new());
    let mut first_spec = None;
    for run in 1..=RUNS {
        let local = tmp.join(format!("xargs-{run}"));
        let xargs = bench_xargs(run, &local)?;

        let spec = builtin_job(&format!("overhead-{run}"), &frames_arg(run), &inputs)?;
        let cpu_before = CpuSample::take(farm);
        let (status, submitted, makespan) = submit_and_wait(&client, spec.clone()).await?;
        let cpu_after = CpuSample::take(farm);
        ensure!(
            status.tasks.total == SMALL_JOB_FRAMES && status.tasks.cached == 0,
            "expected {SMALL_JOB_FRAMES} rendered tasks: {:?}",
            status.tasks
        );
        let coordinator = status
            .finished_ms
            .map(|f| f.saturating_sub(status.created_ms) as f64 / 1000.0)
            .unwrap_or(f64::NAN);
        let per_region: Vec<String> = status
            .regions
            .iter()
            .map(|(r, f)| format!("{r} {}", f.frames_done))
            .collect();
        println!("  run {run}: xargs {xargs:.2} s; farm {makespan:.2} s = {:.2}x (submit reply {:.0} ms, coordinator created->done {coordinator:.2} s; frames {})",
            makespan / xargs,
            submitted * 1000.0,
            per_region.join(", ")
        );
        if let Some(line) = CpuSample::describe(cpu_before, cpu_after, makespan * slots) {
            println!("         {line}");
        }
        check_identical(
            &client,
            &store,
            &status,
            &local,
            &tmp.join(format!("fetched-{run}")),
        )
        .await?;
        xargs_secs.push(xargs);
        farm_secs.push(makespan);
        first_spec.get_or_insert(spec);
    }
    let (xargs, makespan) = (median(&xargs_secs), median(&farm_secs));
    println!(
        "xargs -P {SLOTS} suanli render-frame: {xargs:.2} s ({:.1} ms per frame per slot), median of {RUNS}",
        xargs * 1000.0 * slots / n
    );
    println!(
        "farm {} regions x 1 worker x 1 slot: {makespan:.2} s ({:.1} ms per task per slot), median of {RUNS}",
        REGIONS.len(),
        makespan * 1000.0 * slots / n
    );
    println!(
        "orchestration overhead: farm/xargs = {:.2}x, {:.1} ms per task per slot over xargs, {:.1} ms over the bare render",
        makespan / xargs,
        (makespan - xargs) / n * slots * 1000.0,
        (makespan * slots - render_secs) / n * 1000.0
    );
    println!("  every farm frame is byte-identical to `suanli render-frame`'s");

    println!("\n# 3. resubmit, all cached");
    let spec = first_spec.context("no overhead run")?;
    let mut secs = Vec::new();
    for run in 1..=RUNS {
        let mut again = spec.clone();
        again.name = format!("overhead-1, resubmitted {run}");
        let (status, submitted, done) = submit_and_wait(&client, again).await?;
        ensure!(
            status.tasks.cached == status.tasks.total,
            "a resubmission should be all cache hits: {:?}",
            status.tasks
        );
        println!(
            "  run {run}: {:.1} ms to done, {}/{} tasks cached (submit reply {:.1} ms)",
            done * 1000.0,
            status.tasks.cached,
            status.tasks.total,
            submitted * 1000.0
        );
        secs.push(done);
    }
    println!(
        "resubmit {SMALL_JOB_FRAMES} tasks, all cached: {:.1} ms to done, median of {RUNS}",
        median(&secs) * 1000.0
    );
    Ok((xargs, makespan))
}

/// Section 4: the overhead runs again on a farm whose store is on tmpfs, where fsync costs
/// nothing; everything else (JetStream, work folders) stays on disk. The difference from
/// section 2 is what the store's durable writes cost. `xargs` and `on_disk` are section 2's
/// medians.
async fn bench_tmpfs_store(farm: &LocalFarm, xargs: f64, on_disk: f64) -> anyhow::Result<()> {
    let client = Client::connect(&farm.nats_url).await?;
    let store = Store::open(&farm.store_url)?;
    let inputs = empty_inputs(&store).await?;
    let (n, slots) = (f64::from(SMALL_JOB_FRAMES), f64::from(SLOTS));
    let mut secs = Vec::new();
    for run in 1..=RUNS {
        let spec = builtin_job(&format!("tmpfs-{run}"), &frames_arg(run), &inputs)?;
        let cpu_before = CpuSample::take(farm);
        let (status, _, makespan) = submit_and_wait(&client, spec).await?;
        let cpu_after = CpuSample::take(farm);
        ensure!(
            status.tasks.total == SMALL_JOB_FRAMES && status.tasks.cached == 0,
            "expected {SMALL_JOB_FRAMES} rendered tasks: {:?}",
            status.tasks
        );
        println!(
            "  run {run}: farm {makespan:.2} s = {:.2}x xargs",
            makespan / xargs
        );
        if let Some(line) = CpuSample::describe(cpu_before, cpu_after, makespan * slots) {
            println!("         {line}");
        }
        secs.push(makespan);
    }
    let m = median(&secs);
    println!(
        "farm, store on tmpfs: {m:.2} s ({:.1} ms per task per slot), median of {RUNS}; farm/xargs = {:.2}x",
        m * 1000.0 * slots / n,
        m / xargs
    );
    println!(
        "durable (fsync'd) store writes: {:.1} ms per task per slot (section 2 minus this)",
        (on_disk - m) / n * slots * 1000.0
    );
    Ok(())
}

/// Fetches a finished job's frames and checks each equals the local render in `local`.
async fn check_identical(
    client: &Client,
    store: &Store,
    status: &JobStatus,
    local: &Path,
    fetched: &Path,
) -> anyhow::Result<()> {
    let record = client.job(&status.id).await?;
    let report = suanli::client::fetch(&record, store, fetched).await?;
    ensure!(
        report.frames == SMALL_JOB_FRAMES as usize && report.missing.is_empty(),
        "fetched {} frames, {} missing",
        report.frames,
        report.missing.len()
    );
    for &frame in record.spec.frames.frames() {
        let name = frame_name(frame);
        let farm_png = std::fs::read(fetched.join(&name))
            .with_context(|| format!("cannot read the farm's {name}"))?;
        let local_png = std::fs::read(local.join(&name))
            .with_context(|| format!("cannot read the local {name}"))?;
        ensure!(
            farm_png == local_png,
            "{name} from the farm differs from `suanli render-frame`'s"
        );
    }
    Ok(())
}
