//! From what a studio writes (a `JOB.toml` and/or flags) to a [`JobSpec`] with its inputs in
//! the store: merge file and flags, resolve paths, and refuse bad input before anything is
//! uploaded or enqueued. Gathering, hashing and uploading the input files is [`crate::inputs`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::Deserialize;
use suanli_shared::protocol::{
    parse_size_mib, ImageFormat, InputManifest, JobSpec, Placement, Policy, RendererSpec,
    Requirements,
};
use suanli_shared::store::Store;
use suanli_shared::{FrameSpec, Region, Studio};

use crate::inputs::{self, UploadReport};

/// A job file as written by a studio. Paths are relative to the file's folder.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    pub name: Option<String>,
    /// The studio that owns the job (default: the studio the command acts as, else `default`).
    pub studio: Option<String>,
    pub frames: Option<String>,
    pub chunk: Option<u32>,
    pub priority: Option<i32>,
    pub regions: Option<Vec<String>>,
    pub max_retries: Option<u32>,
    /// e.g. "2h", "90s".
    pub task_timeout: Option<String>,
    pub output: Option<String>,
    pub scene: Option<PathBuf>,
    /// Extra files or folders the renderer reads (textures, caches).
    #[serde(default)]
    pub inputs: Vec<PathBuf>,
    pub renderer: Option<RendererFile>,
    /// Placement policy: balanced, cheapest, fastest or greenest (default: the farm's).
    pub policy: Option<String>,
    /// When every frame is needed: RFC 3339 with an offset (a TOML datetime or a string),
    /// Unix milliseconds, or "+6h" from submission.
    pub deadline: Option<toml::Value>,
    /// Most tasks of this job queued or running at once.
    pub max_slots: Option<u32>,
    /// cheapest/greenest: at most this many times longer than fastest (default: the farm's).
    pub patience: Option<f64>,
    /// balanced: what an hour of this job's delay is worth, in the farm's currency.
    pub value_of_hour: Option<f64>,
    /// `[limits]`: memory_mib, processes, file_mib for each render, capped by each worker's
    /// maxima.
    #[serde(default)]
    pub limits: suanli_shared::protocol::RenderLimits,
    /// `[requirements]`: what each task needs of a worker.
    #[serde(default)]
    pub requirements: RequirementsFile,
    /// URLs that receive this job's state changes (signed POSTs; docs/PIPELINES.md).
    #[serde(default)]
    pub webhooks: Vec<String>,
}

/// The `[requirements]` table: sizes as `"24G"`/`"512M"` or a number of MiB.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequirementsFile {
    pub cores: Option<u32>,
    pub memory: Option<toml::Value>,
    pub gpus: Option<u32>,
    pub gpu_memory: Option<toml::Value>,
    /// Any of these GPU models (a model matches when its name contains the entry).
    pub gpu_models: Option<Vec<String>>,
    /// All of these worker tags.
    pub tags: Option<Vec<String>>,
    /// Floating licence seats each task holds: `licenses = { redshift = 1 }`.
    pub licenses: Option<std::collections::BTreeMap<String, u32>>,
}

/// `POOL=SEATS` of `--licenses`.
fn parse_seats(text: &str) -> Result<(String, u32), String> {
    let (pool, seats) = text
        .split_once('=')
        .ok_or_else(|| format!("'{text}' is not POOL=SEATS, e.g. redshift=1"))?;
    let seats = seats
        .trim()
        .parse()
        .map_err(|_| format!("'{text}': seats must be a whole number, e.g. redshift=1"))?;
    Ok((pool.trim().to_string(), seats))
}

/// A size from a job file: a string with a unit, or a whole number of MiB.
fn size_value(name: &str, v: &toml::Value) -> anyhow::Result<u64> {
    match v {
        toml::Value::String(s) => {
            parse_size_mib(s).map_err(|e| anyhow::anyhow!("requirements.{name}: {e}"))
        }
        toml::Value::Integer(n) if *n > 0 => Ok(*n as u64),
        other => {
            bail!("requirements.{name} = {other} must be a size such as \"24G\" or a number of MiB")
        }
    }
}

/// The job's requirements: the file's `[requirements]`, each flag given replacing its entry.
fn requirements(file: RequirementsFile, flags: &Overrides) -> anyhow::Result<Requirements> {
    let memory = match (flags.memory, &file.memory) {
        (Some(m), _) => Some(m),
        (None, Some(v)) => Some(size_value("memory", v)?),
        (None, None) => None,
    };
    let gpu_memory = match (flags.gpu_memory, &file.gpu_memory) {
        (Some(m), _) => Some(m),
        (None, Some(v)) => Some(size_value("gpu_memory", v)?),
        (None, None) => None,
    };
    let req = Requirements {
        cores: flags.cores.or(file.cores),
        memory_mib: memory,
        gpus: flags.gpus.or(file.gpus).unwrap_or(0),
        gpu_memory_mib: gpu_memory,
        gpu_models: flags
            .gpu_models
            .clone()
            .or(file.gpu_models)
            .unwrap_or_default(),
        tags: flags.tags.clone().or(file.tags).unwrap_or_default(),
        licenses: flags
            .licenses
            .clone()
            .map(|l| l.into_iter().collect())
            .or(file.licenses)
            .unwrap_or_default(),
    };
    req.validate()
        .map_err(|e| anyhow::anyhow!("requirements: {e}"))?;
    Ok(req)
}

/// The `[renderer]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RendererFile {
    pub kind: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub samples: Option<u32>,
    pub version: Option<String>,
    pub format: Option<String>,
    pub argv: Option<Vec<String>>,
    /// A command profile of the workers (instead of `argv`).
    pub profile: Option<String>,
    /// Values of the profile's `{arg.NAME}` placeholders.
    #[serde(default)]
    pub args: std::collections::BTreeMap<String, String>,
    pub ext: Option<String>,
}

/// Flags of `suanli submit` that override the file (doc comments are the help text).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
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
    #[arg(long = "timeout", value_name = "TIMEOUT", value_parser = humantime::parse_duration)]
    pub task_timeout: Option<Duration>,
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
    /// cheapest/greenest: finish at most this many times later than fastest (at least 1;
    /// default: the farm's, usually 1.5).
    #[arg(long)]
    pub patience: Option<f64>,
    /// balanced: what an hour of this job's delay is worth, in the farm's currency (default:
    /// the farm's, doubled every 5 points of priority).
    #[arg(long)]
    pub value_of_hour: Option<f64>,
    /// Command renderer: the workers' command profile to run (instead of an argv after `--`).
    #[arg(long)]
    pub profile: Option<String>,
    /// A URL that receives this job's state changes, besides the job file's (repeatable).
    #[arg(long = "webhook", value_name = "URL")]
    pub webhooks: Vec<String>,
    /// Command renderer: a value for the profile's {arg.NAME} placeholder, NAME=VALUE;
    /// repeatable.
    #[arg(long = "arg", value_name = "NAME=VALUE")]
    pub args: Vec<String>,
    /// Command renderer argv, after `--`: placeholders {frame} {start} {end} {step} {output}
    /// {scene}. Only workers started with --allow-any-command run a job's own argv.
    #[arg(last = true)]
    pub argv: Vec<String>,
    /// Cores each task needs (requirements.cores).
    #[arg(long)]
    pub cores: Option<u32>,
    /// Memory each task needs, e.g. 32G (requirements.memory).
    #[arg(long, value_name = "SIZE", value_parser = parse_size_mib)]
    pub memory: Option<u64>,
    /// GPUs each task needs, each its own (requirements.gpus).
    #[arg(long)]
    pub gpus: Option<u32>,
    /// Least video memory of each of those GPUs, e.g. 24G (requirements.gpu_memory).
    #[arg(long, value_name = "SIZE", value_parser = parse_size_mib)]
    pub gpu_memory: Option<u64>,
    /// GPU models accepted, any of them, comma-separated (requirements.gpu_models).
    #[arg(long, value_delimiter = ',')]
    pub gpu_models: Option<Vec<String>>,
    /// Worker tags needed, all of them, comma-separated (requirements.tags).
    #[arg(long, value_delimiter = ',')]
    pub tags: Option<Vec<String>>,
    /// Licence seats each task holds while it runs, e.g. redshift=1, comma-separated
    /// (requirements.licenses; pools are the farm's `[licenses]`).
    #[arg(long, value_delimiter = ',', value_name = "POOL=SEATS", value_parser = parse_seats)]
    pub licenses: Option<Vec<(String, u32)>>,
    /// The studio the command acts as (the global `--studio`): the job's studio unless the
    /// file names one, and then the two must agree. Not a flag of its own here.
    #[arg(skip)]
    pub studio: Option<Studio>,
}

/// A checked job whose inputs are known but not yet uploaded.
#[derive(Debug)]
pub struct Resolved {
    /// The spec; `inputs` is filled in by [`upload_inputs`].
    pub spec: JobSpec,
    /// (path inside the manifest, file on disk).
    pub files: Vec<(String, PathBuf)>,
}

/// Largest job file read, in bytes (1 MiB): a job file is a dozen settings; frames and inputs
/// are named in it, never included, so anything larger is a wrong path, not a job file.
pub const MAX_JOB_FILE: u64 = 1024 * 1024;

/// Reads a job file of at most [`MAX_JOB_FILE`] bytes; a larger one is refused before it is
/// read whole.
pub fn read_job_file(path: &Path) -> anyhow::Result<JobFile> {
    use std::io::Read as _;
    let too_large = |size: Option<u64>| {
        let size = size.map(|n| format!(" {n} bytes,")).unwrap_or_default();
        anyhow::anyhow!(
            "job file {} is{size} over the {MAX_JOB_FILE}-byte limit",
            path.display()
        )
    };
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read job file {}", path.display()))?;
    if let Some(size) = file.metadata().ok().map(|m| m.len()) {
        if size > MAX_JOB_FILE {
            return Err(too_large(Some(size)));
        }
    }
    // Reading stops past the limit all the same: a pipe or a growing file has no size.
    let mut text = String::new();
    file.take(MAX_JOB_FILE + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read job file {}", path.display()))?;
    if text.len() as u64 > MAX_JOB_FILE {
        return Err(too_large(None));
    }
    parse_job_file(&text, path)
}

/// Parses the text of the job file at `path` (named in errors).
pub fn parse_job_file(text: &str, path: &Path) -> anyhow::Result<JobFile> {
    toml::from_str(text).map_err(|e| {
        // One line: what is wrong and where, without the toml crate's source snippet.
        let at = suanli_shared::regions::toml_error_line(text, &e)
            .map(|line| format!(" (line {line})"))
            .unwrap_or_default();
        anyhow::anyhow!(
            "job file {} is not valid{at}: {}",
            path.display(),
            e.message().trim()
        )
    })
}

/// Merges file and flags (flags win), resolves and checks everything. `base` is the folder
/// relative paths are taken from (the job file's folder, or the current one).
pub fn resolve(file: JobFile, flags: Overrides, base: &Path) -> anyhow::Result<Resolved> {
    let requirements = requirements(file.requirements, &flags)?;
    // Who submits is not an override: a job file naming another studio is refused.
    let named = file
        .studio
        .as_deref()
        .map(str::parse::<Studio>)
        .transpose()?;
    let studio = match (flags.studio, named) {
        (Some(caller), Some(named)) if caller != named => {
            bail!(
                "{}",
                suanli_shared::protocol::api::wrong_studio(&caller, &named)
            )
        }
        (caller, named) => caller.or(named).unwrap_or_default(),
    };
    let frames_text = flags
        .frames
        .or(file.frames)
        .context("no frames given: pass --frames like 1-240 (or set frames in the job file)")?;
    let frames: FrameSpec = frames_text
        .parse()
        .with_context(|| format!("bad frame spec '{frames_text}'"))?;
    let regions = flags
        .regions
        .or(file.regions)
        .unwrap_or_default()
        .iter()
        .map(|r| r.trim().parse::<Region>())
        .collect::<Result<Vec<_>, _>>()?;
    let task_timeout = match (flags.task_timeout, file.task_timeout) {
        (Some(d), _) => d,
        (None, Some(t)) => humantime::parse_duration(&t)
            .with_context(|| format!("bad task_timeout '{t}' (expected e.g. '90s', '2h')"))?,
        (None, None) => Duration::from_secs(2 * 3600),
    };
    let policy = flags
        .policy
        .or(file.policy)
        .map(|p| p.parse::<Policy>())
        .transpose()?;
    let deadline = flags.deadline.map(toml::Value::String).or(file.deadline);
    let deadline_ms = match deadline {
        Some(toml::Value::String(text)) => {
            Some(parse_deadline(&text, suanli_shared::protocol::now_ms())?)
        }
        Some(toml::Value::Integer(ms)) => Some(
            u64::try_from(ms).map_err(|_| anyhow::anyhow!("deadline {ms} is negative"))?,
        ),
        Some(toml::Value::Datetime(dt)) => Some(datetime_ms(&dt)?),
        Some(other) => bail!(
            "deadline must be a date-time like 2025-06-01T18:00:00+08:00, Unix milliseconds or \"+6h\", not a {}",
            other.type_str()
        ),
        None => None,
    };
    let file_renderer = file.renderer.unwrap_or_default();
    let kind = flags
        .renderer
        .clone()
        .or((!file_renderer.kind.is_empty()).then(|| file_renderer.kind.clone()))
        .unwrap_or_else(|| "builtin".into());
    let version = || {
        flags
            .renderer_version
            .clone()
            .or(file_renderer.version.clone())
            .unwrap_or_default()
    };
    let renderer = match kind.as_str() {
        "builtin" => RendererSpec::Builtin {
            width: flags.width.or(file_renderer.width).unwrap_or(320),
            height: flags.height.or(file_renderer.height).unwrap_or(180),
            samples: flags.samples.or(file_renderer.samples).unwrap_or(4),
        },
        "blender" => {
            let format = match flags.format.or(file_renderer.format).as_deref() {
                None | Some("png") | Some("PNG") => ImageFormat::Png,
                Some("exr") | Some("EXR") | Some("OPEN_EXR") => ImageFormat::Exr,
                Some("jpg") | Some("jpeg") | Some("JPEG") => ImageFormat::Jpeg,
                Some(other) => bail!("unknown image format '{other}' (known: png, exr, jpeg)"),
            };
            let resolution = match (
                flags.width.or(file_renderer.width),
                flags.height.or(file_renderer.height),
            ) {
                (Some(w), Some(h)) => Some([w, h]),
                (None, None) => None,
                _ => bail!("give both width and height to override the scene's resolution"),
            };
            RendererSpec::Blender {
                version: version(),
                format,
                resolution,
                samples: flags.samples.or(file_renderer.samples),
            }
        }
        "command" => {
            let argv = if flags.argv.is_empty() {
                file_renderer.argv.clone().unwrap_or_default()
            } else {
                flags.argv.clone()
            };
            let profile = flags.profile.clone().or(file_renderer.profile.clone());
            let mut args = file_renderer.args.clone();
            for flag in &flags.args {
                let (name, value) = flag
                    .split_once('=')
                    .with_context(|| format!("--arg '{flag}' must be NAME=VALUE"))?;
                args.insert(name.to_string(), value.to_string());
            }
            if argv.is_empty() && profile.is_none() {
                bail!("the command renderer needs a profile of the workers (`--profile NAME`, or renderer.profile in the job file) or its own argv: `suanli submit --renderer command ... -- PROGRAM ARGS` (or renderer.argv)");
            }
            RendererSpec::Command {
                argv,
                profile,
                args,
                version: version(),
                ext: flags
                    .ext
                    .or(file_renderer.ext)
                    .unwrap_or_else(|| "png".into()),
            }
        }
        other => bail!("unknown renderer '{other}' (known: builtin, blender, command)"),
    };

    // Inputs: the scene plus every named file or folder, all inside the scene's folder.
    let scene_path = flags.scene.or(file.scene).map(|p| base.join(p));
    let mut input_paths: Vec<PathBuf> = file.inputs.iter().map(|p| base.join(p)).collect();
    input_paths.extend(flags.inputs.iter().map(|p| base.join(p)));
    let inputs::Gathered { scene_rel, files } =
        inputs::gather(base, scene_path.as_deref(), &input_paths)?;

    let mut webhooks = file.webhooks;
    webhooks.extend(flags.webhooks);
    let spec = JobSpec {
        webhooks,
        requirements,
        limits: file.limits,
        name: flags.name.or(file.name).unwrap_or_else(|| {
            scene_rel
                .as_deref()
                .and_then(|s| Path::new(s).file_stem()?.to_str().map(str::to_string))
                .unwrap_or_else(|| "untitled".into())
        }),
        studio,
        priority: flags.priority.or(file.priority).unwrap_or(0),
        frames,
        chunk: flags.chunk.or(file.chunk).unwrap_or(1),
        regions,
        max_retries: flags.max_retries.or(file.max_retries).unwrap_or(2),
        task_timeout_secs: task_timeout.as_secs().max(1),
        renderer,
        inputs: InputManifest::default().hash(),
        scene: scene_rel,
        output: flags
            .output
            .or(file.output)
            .unwrap_or_else(|| "frame_####".into()),
        placement: Placement {
            policy,
            deadline_ms,
            max_slots: flags.max_slots.or(file.max_slots),
            patience: flags.patience.or(file.patience),
            value_of_hour: flags.value_of_hour.or(file.value_of_hour),
        },
    };
    spec.validate()?;
    Ok(Resolved { spec, files })
}

/// A deadline as a studio writes it: Unix milliseconds, "+DURATION" from `now_ms`, or an
/// RFC 3339 date-time with its offset (2025-06-01T18:00:00+08:00).
pub fn parse_deadline(text: &str, now_ms: u64) -> anyhow::Result<u64> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .with_context(|| format!("deadline '{text}' is too large"));
    }
    if let Some(rel) = text.strip_prefix('+') {
        let d = humantime::parse_duration(rel)
            .with_context(|| format!("bad deadline '{text}' (expected e.g. '+6h')"))?;
        return Ok(now_ms.saturating_add(d.as_millis() as u64));
    }
    let dt: toml::value::Datetime = text.parse().map_err(|_| {
        anyhow::anyhow!("bad deadline '{text}': give RFC 3339 like 2025-06-01T18:00:00+08:00, Unix milliseconds, or '+6h'")
    })?;
    datetime_ms(&dt)
}

/// Unix milliseconds of a full date-time with offset.
fn datetime_ms(dt: &toml::value::Datetime) -> anyhow::Result<u64> {
    let (Some(date), Some(time), Some(offset)) = (dt.date, dt.time, dt.offset) else {
        bail!("deadline '{dt}' needs a date, a time and a UTC offset (Z or +08:00)");
    };
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let (y, m, d) = (
        i64::from(date.year) - i64::from(date.month <= 2),
        i64::from(date.month),
        i64::from(date.day),
    );
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let offset_min = match offset {
        toml::value::Offset::Z => 0,
        toml::value::Offset::Custom { minutes } => i64::from(minutes),
    };
    let secs = days * 86_400
        + i64::from(time.hour) * 3600
        + i64::from(time.minute) * 60
        + i64::from(time.second)
        - offset_min * 60;
    let ms = secs * 1000 + i64::from(time.nanosecond / 1_000_000);
    u64::try_from(ms).map_err(|_| anyhow::anyhow!("deadline '{dt}' is before 1970"))
}

/// Hashes every input, uploads the blobs the store lacks, stores the manifest and fills in
/// `spec.inputs`.
pub async fn upload_inputs(
    store: &Store,
    resolved: &mut Resolved,
    opts: &inputs::UploadOptions,
) -> anyhow::Result<UploadReport> {
    let (hash, report) =
        inputs::upload(store, &resolved.spec.studio, &resolved.files, opts).await?;
    resolved.spec.inputs = hash;
    Ok(report)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod props;
