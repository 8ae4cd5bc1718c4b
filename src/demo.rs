//! `suanli demo`: the main job. A local farm (its own nats-server, a coordinator, workers in
//! two named regions) renders the built-in short film, shows progress, fetches the frames,
//! writes a contact sheet and prints a summary.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use suanli_shared::protocol::{InputManifest, JobSpec, JobState, RendererSpec};
use suanli_shared::store::Store;
use suanli_shared::{layout, Region, Studio};

use crate::client::Client;
use crate::localfarm::{FarmOptions, LocalFarm};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Folder for the farm's data, the store, the frames and the contact sheet.
    #[arg(long, default_value = "./suanli-demo")]
    pub dir: PathBuf,
    /// Frames of the film to render (the film loops every 96 frames).
    #[arg(long, default_value = "1-48")]
    pub frames: String,
    /// Regions to start workers in.
    #[arg(long, value_delimiter = ',', default_value = "guian,ulanqab")]
    pub regions: Vec<Region>,
    #[arg(long, default_value_t = 1)]
    pub workers_per_region: u32,
    #[arg(long, default_value_t = 320)]
    pub width: u32,
    #[arg(long, default_value_t = 180)]
    pub height: u32,
    #[arg(long, default_value_t = 4)]
    pub samples: u32,
    /// Start from an empty store, so every frame renders again instead of coming from the cache.
    #[arg(long)]
    pub fresh: bool,
    /// Plain progress lines instead of the operator terminal (which opens only when stdout is
    /// a terminal anyway).
    #[arg(long)]
    pub no_tui: bool,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<u8> {
    let dir = std::path::absolute(&args.dir)?;
    if args.fresh {
        for sub in ["store", "nats", "cache", "frames"] {
            let _ = std::fs::remove_dir_all(dir.join(sub));
        }
    }
    // Each demo run gets a fresh queue; the store (and so the cache of rendered tasks) is kept.
    let _ = std::fs::remove_dir_all(dir.join("nats"));
    let mut options = FarmOptions::new(&dir, &[])?;
    options.regions = args.regions.clone();
    options.workers_per_region = args.workers_per_region.max(1);
    println!("suanli demo: starting a local farm in {}", dir.display());
    let farm = LocalFarm::start(options).await?;
    println!(
        "  nats-server {} · store {} · regions {}",
        farm.nats_url,
        farm.store_url,
        args.regions
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let result = render_film(&args, &farm, &dir).await;
    farm.stop().await;
    result
}

async fn render_film(
    args: &DemoArgs,
    farm: &LocalFarm,
    dir: &std::path::Path,
) -> anyhow::Result<u8> {
    let store = Store::open(&farm.store_url)?;
    let client = Client::connect(&farm.nats_url).await?;
    let inputs = InputManifest::default();
    store
        .put_if_absent(
            &layout::input_manifest(&Studio::default(), &inputs.hash()),
            inputs.to_bytes().into(),
        )
        .await?;
    let spec = JobSpec {
        webhooks: vec![],
        limits: Default::default(),
        requirements: Default::default(),
        name: "suanli-short-film".into(),
        studio: Default::default(),
        priority: 0,
        frames: args.frames.parse().context("bad --frames")?,
        chunk: 1,
        regions: vec![],
        max_retries: 2,
        task_timeout_secs: 600,
        renderer: RendererSpec::Builtin {
            width: args.width,
            height: args.height,
            samples: args.samples,
        },
        inputs: inputs.hash(),
        scene: None,
        output: "frame_####".into(),
        placement: Default::default(),
    };
    let started = Instant::now();
    let reply = client.submit(spec).await?;
    println!(
        "  job {}: {} tasks ({} already rendered, from the cache)",
        reply.id, reply.tasks, reply.cached
    );

    let tty = std::io::stdout().is_terminal();
    if tty && !args.no_tui {
        // Watch the farm render in the operator terminal; after `q` the demo waits for the
        // job (if it still runs) and prints its summary as usual.
        let options = suanli_tui::Options {
            hint: Some("demo: q shows the summary".into()),
            select_job: Some(reply.id.clone()),
            stderr_log: Some(dir.join("demo.log")),
        };
        let farm = crate::tui_api::TuiFarm::with_client(client.clone(), Some(store.clone()));
        suanli_tui::run(farm, options).await?;
    }
    let mut last_line = Instant::now() - Duration::from_secs(10);
    let bar = crate::progress::job_bar(crate::progress::Stream::Stdout);
    let end = client
        .wait(&reply.id, Some(Duration::from_secs(1800)), |s| {
            if let Some(bar) = &bar {
                return crate::progress::show_job(bar, s);
            }
            let bar_width = 30usize;
            let filled = (s.frames.done as usize * bar_width) / (s.frames.total.max(1) as usize);
            let regions: Vec<String> = s
                .regions
                .iter()
                .map(|(r, f)| format!("{r} {}", f.frames_done))
                .collect();
            let line = format!(
                "  [{}{}] {:>3}/{} frames  {} running  {:>5.1}s  {}",
                "#".repeat(filled),
                ".".repeat(bar_width - filled),
                s.frames.done,
                s.frames.total,
                s.tasks.running,
                started.elapsed().as_secs_f64(),
                regions.join(" · ")
            );
            if last_line.elapsed() >= Duration::from_secs(2) || s.state.is_final() {
                println!("{line}");
                last_line = Instant::now();
            }
        })
        .await?;
    if let Some(bar) = bar {
        bar.finish();
    }
    let wall = started.elapsed();
    let Some(status) = end else {
        anyhow::bail!("the demo job did not finish within 30 minutes");
    };
    if status.state != JobState::Done {
        crate::print::status(&status);
        return Ok(crate::exit::EXIT_JOB_FAILED);
    }

    let frames_dir = dir.join("frames");
    let record = client.job(&reply.id).await?;
    let fetched = crate::client::fetch(&record, &store, &frames_dir).await?;
    let sheet_path = dir.join("contact_sheet.png");
    let n_frames = write_contact_sheet(&frames_dir, &record, &sheet_path).await?;

    println!(
        "done in {:.1}s: {} frames ({} rendered, {} from the cache)",
        wall.as_secs_f64(),
        status.frames.total,
        status.frames.done - status.frames.cached,
        status.frames.cached
    );
    let mut total_core = 0.0;
    for (region, r) in &status.regions {
        println!(
            "  {region:<10} {:>4} frames  {:>7.1} core-seconds",
            r.frames_done, r.core_seconds
        );
        total_core += r.core_seconds;
    }
    println!(
        "  total      {:>4} frames  {:>7.1} core-seconds",
        status.frames.done - status.frames.cached,
        total_core
    );
    println!(
        "frames:        {} ({} files, hashes verified)",
        frames_dir.display(),
        fetched.frames
    );
    println!(
        "contact sheet: {} ({n_frames} frames)",
        sheet_path.display()
    );
    if status.frames.cached == status.frames.total {
        println!("(every frame came from the cache: run `suanli demo --fresh` to render again)");
    }
    Ok(0)
}

async fn write_contact_sheet(
    frames_dir: &std::path::Path,
    record: &suanli_shared::protocol::JobRecord,
    out: &std::path::Path,
) -> anyhow::Result<usize> {
    let names: Vec<PathBuf> = record
        .spec
        .frames
        .frames()
        .iter()
        .map(|f| {
            frames_dir.join(suanli_shared::protocol::output_file_name(
                &record.spec.output,
                *f,
                record.spec.renderer.ext(),
            ))
        })
        .collect();
    let out = out.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut images = Vec::with_capacity(names.len());
        for p in &names {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            images.push(suanli_worker::builtin::decode_png(&bytes).map_err(anyhow::Error::msg)?);
        }
        let columns = (images.len() as f64).sqrt().ceil().max(1.0) as u32;
        let sheet = suanli_worker::builtin::contact_sheet(&images, columns.clamp(1, 12), 160);
        std::fs::write(&out, suanli_worker::builtin::encode_png(&sheet))?;
        anyhow::Ok(images.len())
    })
    .await?
}
