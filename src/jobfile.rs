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

    let spec = JobSpec {
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
pub async fn upload_inputs(store: &Store, resolved: &mut Resolved) -> anyhow::Result<UploadReport> {
    let (hash, report) = inputs::upload(store, &resolved.spec.studio, &resolved.files).await?;
    resolved.spec.inputs = hash;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(frames: &str) -> Overrides {
        Overrides {
            frames: Some(frames.into()),
            ..Default::default()
        }
    }

    /// A flag change that makes `resolve` fail: (frames, the change, part of the error).
    type Refusal = (&'static str, fn(&mut Overrides), &'static str);

    /// Resolves each case in an empty folder and checks its error names what was wrong.
    fn assert_refused(cases: &[Refusal]) {
        let dir = tempfile::tempdir().unwrap();
        for (frames, change, want) in cases {
            let mut f = flags(frames);
            change(&mut f);
            let shown = format!("{f:?}");
            let err = resolve(JobFile::default(), f, dir.path()).unwrap_err();
            assert!(
                format!("{err:#}").contains(want),
                "{shown}: '{err:#}' lacks '{want}'"
            );
        }
    }

    #[test]
    fn refuses_bad_input_before_upload() {
        assert_refused(&[
            ("", |_| {}, "frame spec is empty"),
            ("1-10x0", |_| {}, "step"),
            ("1-10", |f| f.chunk = Some(0), "chunk size 0"),
            (
                "1",
                |f| f.renderer = Some("maya".into()),
                "unknown renderer 'maya'",
            ),
            (
                "1",
                |f| {
                    f.scene = Some("nope.blend".into());
                    f.renderer = Some("blender".into());
                },
                "does not exist",
            ),
            (
                "1",
                |f| f.renderer = Some("blender".into()),
                "needs a scene",
            ),
            (
                "1",
                |f| f.output = Some("../x_####".into()),
                "output file name",
            ),
            (
                "1",
                |f| f.regions = Some(vec!["Bad Region".into()]),
                "invalid region",
            ),
        ]);
    }

    #[test]
    fn the_studio_comes_from_the_file_or_the_caller_and_they_must_agree() {
        let dir = tempfile::tempdir().unwrap();
        let studio = |file: Option<&str>, caller: Option<&str>| {
            let file = JobFile {
                studio: file.map(str::to_string),
                ..Default::default()
            };
            let flags = Overrides {
                studio: caller.map(|c| c.parse().unwrap()),
                ..flags("1")
            };
            resolve(file, flags, dir.path()).map(|r| r.spec.studio.to_string())
        };
        assert_eq!(studio(None, None).unwrap(), "default");
        assert_eq!(studio(Some("acme"), None).unwrap(), "acme");
        assert_eq!(studio(None, Some("acme")).unwrap(), "acme");
        assert_eq!(studio(Some("acme"), Some("acme")).unwrap(), "acme");
        let err = studio(Some("blue"), Some("acme")).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "this identity is studio acme; the job names studio blue"
        );
        let err = studio(Some("Acme Films"), None).unwrap_err();
        assert!(format!("{err:#}").contains("invalid studio"), "{err:#}");
    }

    #[test]
    fn inputs_must_stay_inside_the_scene_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("shot/tex")).unwrap();
        std::fs::write(dir.path().join("shot/a.blend"), b"scene").unwrap();
        std::fs::write(dir.path().join("shot/tex/w.png"), b"tex").unwrap();
        std::fs::write(dir.path().join("secret"), b"x").unwrap();
        let base = dir.path().join("shot");
        let ok = resolve(
            JobFile::default(),
            Overrides {
                scene: Some("a.blend".into()),
                renderer: Some("blender".into()),
                inputs: vec!["tex".into()],
                ..flags("1-3")
            },
            &base,
        )
        .unwrap();
        let rels: Vec<&str> = ok.files.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(rels, ["a.blend", "tex/w.png"]);
        assert_eq!(ok.spec.scene.as_deref(), Some("a.blend"));
        let err = resolve(
            JobFile::default(),
            Overrides {
                scene: Some("a.blend".into()),
                renderer: Some("blender".into()),
                inputs: vec!["../secret".into()],
                ..flags("1-3")
            },
            &base,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("outside the job's folder"));
    }

    #[test]
    fn job_files_parse_and_flags_win() {
        let file: JobFile = toml::from_str(
            "name = 'shot010'\nframes = '1-240x2'\nchunk = 4\ntask_timeout = '90s'\n[renderer]\nkind = 'builtin'\nwidth = 64\nheight = 32\n",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let r = resolve(
            file,
            Overrides {
                chunk: Some(8),
                ..Default::default()
            },
            dir.path(),
        )
        .unwrap();
        assert_eq!(r.spec.name, "shot010");
        assert_eq!(r.spec.frames.len(), 120);
        assert_eq!(r.spec.chunk, 8);
        assert_eq!(r.spec.task_timeout_secs, 90);
        assert!(matches!(
            r.spec.renderer,
            RendererSpec::Builtin {
                width: 64,
                height: 32,
                samples: 4
            }
        ));
        assert!(
            toml::from_str::<JobFile>("framez = '1'").is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn command_profiles_and_limits_from_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s.exr"), "scene").unwrap();
        let text = "frames = '1'\nscene = 's.exr'\n[renderer]\nkind = 'command'\nprofile = 'denoise'\nargs = { quality = 'low', mode = 'hdr' }\n[limits]\nmemory_mib = 4096\nprocesses = 64\n";
        let file: JobFile = toml::from_str(text).unwrap();
        let r = resolve(
            file,
            Overrides {
                args: vec!["quality=high".into()],
                ..Default::default()
            },
            dir.path(),
        )
        .unwrap();
        let RendererSpec::Command {
            argv,
            profile,
            args,
            ..
        } = &r.spec.renderer
        else {
            panic!("a command job: {:?}", r.spec.renderer)
        };
        assert!(argv.is_empty());
        assert_eq!(profile.as_deref(), Some("denoise"));
        assert_eq!(args["quality"], "high", "flags win");
        assert_eq!(args["mode"], "hdr");
        assert_eq!(r.spec.limits.memory_mib, Some(4096));
        assert_eq!(r.spec.limits.processes, Some(64));

        let bad = |text: &str, flags: Overrides| {
            let file: JobFile = toml::from_str(text).unwrap();
            format!("{:#}", resolve(file, flags, dir.path()).unwrap_err())
        };
        let base = "frames = '1'\nscene = 's.exr'\n[renderer]\nkind = 'command'\n";
        assert!(bad(base, Overrides::default()).contains("needs a profile"));
        let flags = Overrides {
            profile: Some("denoise".into()),
            args: vec!["quality".into()],
            ..Default::default()
        };
        assert!(bad(base, flags).contains("must be NAME=VALUE"));
        let flags = Overrides {
            profile: Some("denoise".into()),
            args: vec!["quality=--exec".into()],
            ..Default::default()
        };
        assert!(bad(base, flags).contains("not starting with '-'"));
        let limits = "frames = '1'\n[limits]\nmemory_mib = 8\n";
        assert!(bad(limits, Overrides::default()).contains("memory_mib = 8"));
    }

    #[test]
    fn placement_from_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file: JobFile = toml::from_str(
            "frames = '1-4'\npolicy = 'cheapest'\nmax_slots = 3\npatience = 2.0\nvalue_of_hour = 800\ndeadline = 2025-06-01T18:00:00+08:00\n",
        )
        .unwrap();
        let r = resolve(file, Overrides::default(), dir.path()).unwrap();
        assert_eq!(r.spec.placement.policy, Some(Policy::Cheapest));
        assert_eq!(r.spec.placement.max_slots, Some(3));
        assert_eq!(r.spec.placement.patience, Some(2.0));
        assert_eq!(r.spec.placement.value_of_hour, Some(800.0));
        // 2025-06-01T10:00:00Z
        assert_eq!(r.spec.placement.deadline_ms, Some(1_748_772_000_000));
        let file: JobFile =
            toml::from_str("frames = '1'\ndeadline = '2025-06-01T10:00:00Z'\npolicy = 'fastest'")
                .unwrap();
        let r = resolve(
            file,
            Overrides {
                policy: Some("greenest".into()),
                ..Default::default()
            },
            dir.path(),
        )
        .unwrap();
        assert_eq!(r.spec.placement.policy, Some(Policy::Greenest), "flags win");
        assert_eq!(r.spec.placement.deadline_ms, Some(1_748_772_000_000));
        let none = resolve(JobFile::default(), flags("1"), dir.path()).unwrap();
        assert_eq!(none.spec.placement, Placement::default());

        assert_eq!(
            parse_deadline("1900000000000", 0).unwrap(),
            1_900_000_000_000
        );
        assert_eq!(parse_deadline("+2h", 1_000).unwrap(), 1_000 + 7_200_000);
        assert_eq!(
            parse_deadline("1970-01-02T00:00:00Z", 0).unwrap(),
            86_400_000
        );
        assert_eq!(
            parse_deadline("2000-03-01T00:00:00-01:30", 0).unwrap(),
            951_868_800_000 + 5_400_000
        );
        assert_refused(&[
            (
                "1",
                |f| f.policy = Some("cheap".into()),
                "unknown placement policy 'cheap'",
            ),
            (
                "1",
                |f| f.deadline = Some("tomorrow".into()),
                "bad deadline 'tomorrow'",
            ),
            (
                "1",
                |f| f.deadline = Some("2025-06-01T18:00:00".into()),
                "UTC offset",
            ),
            (
                "1",
                |f| f.deadline = Some("1748772000".into()),
                "seconds given by mistake",
            ),
            (
                "1",
                |f| f.max_slots = Some(0),
                "max_slots must be at least 1",
            ),
            (
                "1",
                |f| f.patience = Some(0.5),
                "patience 0.5 must be at least 1",
            ),
            (
                "1",
                |f| f.value_of_hour = Some(-3.0),
                "value_of_hour -3 must be a number, 0 or more",
            ),
        ]);
    }
}

/// Job files as a studio might write them, right or wrong: parsing and resolving return an
/// error or a checked spec, never a panic; oversized files are refused before they are read.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;

    const VALID: &str = "name = 'shot010'
frames = '1-240x2'
chunk = 4
priority = 3
regions = ['guian']
max_retries = 2
task_timeout = '90s'
output = 'shot010_####'
policy = 'cheapest'
deadline = 2025-06-01T18:00:00+08:00
max_slots = 8
patience = 2.0
value_of_hour = 800
[renderer]
kind = 'builtin'
width = 64
height = 32
samples = 4
";

    /// A line a job file might hold: known keys with values of every type, tables, junk.
    fn line() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            "name",
            "frames",
            "chunk",
            "priority",
            "regions",
            "max_retries",
            "task_timeout",
            "output",
            "scene",
            "policy",
            "deadline",
            "max_slots",
            "patience",
            "value_of_hour",
            "kind",
            "width",
            "height",
            "samples",
            "version",
            "format",
            "argv",
            "ext",
            "renderer.kind",
            "framez",
        ]);
        let value = prop::sample::select(vec![
            "'shot'",
            "'1-240x2'",
            "'0-999999'",
            "'1-1000000000x1'",
            "4",
            "-1",
            "0",
            "4294967296",
            "'2h'",
            "'99999999999999999999h'",
            "'+6h'",
            "'+99999999999999999999y'",
            "2025-06-01T18:00:00+08:00",
            "1979-05-27",
            "07:32:00",
            "'2025-06-01T18:00:00'",
            "1900000000000",
            "-1900000000000",
            "['guian', 'Bad Region']",
            "'builtin'",
            "'command'",
            "'blender'",
            "'exr'",
            "['prog', '{frame}', '{nope}']",
            "nan",
            "-inf",
            "1e308",
            "'frame_####'",
            "'../x_####'",
            "''",
            "true",
            "[]",
            "{}",
            "{ kind = 'builtin' }",
        ]);
        prop_oneof![
            4 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
            1 => prop::sample::select(vec!["[renderer]", "[[renderer]]", "[x]"]).prop_map(str::to_string),
            1 => ".{0,30}",
        ]
    }

    /// Parses `text` as a job file; what parses is resolved in an empty folder. Input folders
    /// are dropped: walking whatever folder a random line names proves nothing here.
    fn parse_and_resolve(text: &str) {
        let Ok(mut file) = parse_job_file(text, Path::new("job.toml")) else {
            return;
        };
        file.inputs.clear();
        let dir = tempfile::tempdir().unwrap();
        if let Ok(r) = resolve(file, Overrides::default(), dir.path()) {
            assert!(r.spec.validate().is_ok(), "{text}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_text_is_refused_or_parsed(text in any::<String>()) {
            parse_and_resolve(&text);
        }

        #[test]
        fn toml_like_lines_are_refused_or_resolved(lines in prop::collection::vec(line(), 0..12)) {
            parse_and_resolve(&lines.join("\n"));
        }

        /// The valid file with bytes changed or lines replaced, so most of it still parses.
        #[test]
        fn mutated_job_files_are_refused_or_resolved(
            edits in prop::collection::vec((any::<Index>(), any::<u8>(), 0..4u8, line()), 1..4),
        ) {
            let mut bytes = VALID.as_bytes().to_vec();
            for (at, byte, how, line) in edits {
                match how {
                    0 => {
                        let i = at.index(bytes.len());
                        bytes[i] ^= byte | 1;
                    }
                    1 => bytes.insert(at.index(bytes.len() + 1), byte),
                    2 if !bytes.is_empty() => {
                        bytes.remove(at.index(bytes.len()));
                    }
                    _ => {
                        let text = String::from_utf8_lossy(&bytes).into_owned();
                        let mut lines: Vec<&str> = text.lines().collect();
                        let i = at.index(lines.len() + 1);
                        if i < lines.len() {
                            lines[i] = &line;
                        } else {
                            lines.push(&line);
                        }
                        bytes = lines.join("\n").into_bytes();
                    }
                }
                parse_and_resolve(&String::from_utf8_lossy(&bytes));
            }
        }

        #[test]
        fn deadlines_are_refused_or_parsed(text in prop_oneof![
            any::<String>(),
            "[+0-9:TZ.-]{0,30}",
            "\\+[0-9]{1,25}[a-z]{0,5}",
        ]) {
            let _ = parse_deadline(&text, u64::MAX);
            let _ = parse_deadline(&text, 0);
        }
    }

    #[test]
    fn the_valid_job_file_resolves() {
        let file = parse_job_file(VALID, Path::new("job.toml")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let r = resolve(file, Overrides::default(), dir.path()).unwrap();
        assert_eq!(r.spec.frames.len(), 120);
        assert_eq!(r.spec.placement.max_slots, Some(8));
    }

    #[test]
    fn an_oversized_job_file_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.toml");
        let mut text = VALID.to_string();
        text.push_str(&"#".repeat(MAX_JOB_FILE as usize));
        std::fs::write(&path, &text).unwrap();
        let err = read_job_file(&path).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            format!(
                "job file {} is {} bytes, over the 1048576-byte limit",
                path.display(),
                text.len()
            )
        );
        // At the limit it is read and parsed.
        text.truncate(MAX_JOB_FILE as usize);
        std::fs::write(&path, &text).unwrap();
        assert_eq!(read_job_file(&path).unwrap().chunk, Some(4));
        // A file with no size to ask (a device, a pipe) is read only up to the limit.
        let err = read_job_file(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "job file /dev/zero is over the 1048576-byte limit"
        );
    }

    #[test]
    fn deeply_nested_values_are_refused_not_a_stack_overflow() {
        for text in [
            format!("deadline = {}{}", "[".repeat(100_000), "]".repeat(100_000)),
            format!("deadline = {}1{}", "{a=".repeat(50_000), "}".repeat(50_000)),
            format!("{} = 1", "a.".repeat(100_000) + "a"),
        ] {
            assert!(parse_job_file(&text, Path::new("job.toml")).is_err());
        }
    }

    #[test]
    fn requirements_from_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let text = "frames = '1-4'\n[requirements]\ncores = 4\nmemory = '32G'\ngpus = 1\ngpu_memory = 20480\ngpu_models = ['4090', 'A6000']\ntags = ['arnold']\n";
        let resolved = |text: &str, flags: Overrides| {
            let file: JobFile = toml::from_str(text).unwrap();
            resolve(file, flags, dir.path())
        };
        let r = resolved(text, Overrides::default()).unwrap();
        let req = &r.spec.requirements;
        assert_eq!(req.cores, Some(4));
        assert_eq!(req.memory_mib, Some(32 * 1024));
        assert_eq!((req.gpus, req.gpu_memory_mib), (1, Some(20480)));
        assert_eq!(req.gpu_models, ["4090", "A6000"]);
        assert_eq!(req.tags, ["arnold"]);
        let flags = Overrides {
            gpus: Some(2),
            tags: Some(vec!["fast-disk".into()]),
            ..Default::default()
        };
        let r = resolved(text, flags).unwrap();
        assert_eq!(r.spec.requirements.gpus, 2, "flags win");
        assert_eq!(r.spec.requirements.tags, ["fast-disk"]);
        let err = |text: &str| format!("{:#}", resolved(text, Overrides::default()).unwrap_err());
        assert!(
            err("frames = '1'\n[requirements]\nmemory = 'lots'\n").contains("requirements.memory")
        );
        assert!(err("frames = '1'\n[requirements]\ngpu_memory = '8G'\n").contains("need gpus"));
        assert!(toml::from_str::<JobFile>("[requirements]\nvram = 1\n").is_err());
    }
}
