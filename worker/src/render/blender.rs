//! Blender, headless: the command line, the render overrides and the progress parser.
//!
//! Blender applies its command-line arguments in order, so the order here is load-bearing
//! (checked with Blender 3.4.1):
//!
//! ```text
//! blender -b --factory-startup -Y <scene> --python-exit-code 1 --python-expr <ours>
//!         -o <output_dir>/<pattern> -F <format> -x 1 -t <threads> -s <start> -e <end> -j <step> -a
//! ```
//!
//! - the scene must come before the expression and before `-s/-e/-j`: loading a .blend replaces
//!   the scene, so an expression or a frame range given earlier is silently lost (Blender then
//!   renders the file's own range at its own settings);
//! - `-Y` keeps scripts embedded in the .blend from running; our own `--python-expr` still runs;
//! - `--python-exit-code 1` makes a failing expression fail the render: without it Blender
//!   prints the traceback and renders anyway, ignoring our overrides, and exits 0;
//! - `--factory-startup` keeps the worker's user preferences and add-ons out of the render, so
//!   two workers with the same Blender give the same pixels;
//! - `-a` renders at once, so it is last.
//!
//! Blender writes its errors to stdout (`Error: Cannot read file '…'`), not stderr, so the
//! failure tail is both streams interleaved.

use std::ffi::OsString;
use std::time::Duration;

use suanli_shared::protocol::RendererSpec;
use tokio_util::sync::CancellationToken;

use super::process::{self, ProcessSpec, Stream};
use super::{failed, process_result, Finished, Progress, RenderFailure, RenderJob, Stop};

/// Environment variable naming the Blender executable; `blender` on `PATH` when unset.
pub const BLENDER_ENV: &str = "SUANLI_BLENDER";

/// How long `blender --version` may take (a cold start on a slow disk takes seconds).
const VERSION_TIMEOUT: Duration = Duration::from_secs(60);

/// The Blender executable this worker runs.
pub fn program() -> OsString {
    match std::env::var_os(BLENDER_ENV) {
        Some(p) if !p.is_empty() => p,
        _ => OsString::from("blender"),
    }
}

/// The version of this worker's Blender (e.g. `3.4.1`), from the first line of
/// `blender --version`; the error says why there is none.
pub async fn local_version() -> Result<String, String> {
    let spec = ProcessSpec {
        program: program(),
        args: vec!["--version".into()],
        cwd: None,
        sandbox: None,
        env: Vec::new(),
    };
    let mut first_line = None;
    let mut on_line = |stream: Stream, line: &str| {
        if stream == Stream::Stdout && first_line.is_none() {
            first_line = Some(line.to_string());
        }
    };
    let report = process::run(
        &spec,
        VERSION_TIMEOUT,
        &CancellationToken::new(),
        &mut on_line,
    )
    .await
    .map_err(|e| e.to_string())?;
    match report.ending {
        process::Ending::Exited(status) if status.success() => {}
        process::Ending::Exited(status) => {
            return Err(format!(
                "'{} --version' {}",
                spec.program_name(),
                process::describe_status(status)
            ))
        }
        _ => {
            return Err(format!(
                "'{} --version' did not answer",
                spec.program_name()
            ))
        }
    }
    first_line
        .as_deref()
        .and_then(parse_version)
        .ok_or_else(|| format!("'{} --version' printed no version", spec.program_name()))
}

/// `Blender 3.4.1` -> `3.4.1`; `Blender 4.2.0 LTS` -> `4.2.0`.
fn parse_version(line: &str) -> Option<String> {
    let rest = line.trim().strip_prefix("Blender")?;
    let version = rest.split_whitespace().next()?;
    version
        .starts_with(|c: char| c.is_ascii_digit())
        .then(|| version.to_string())
}

/// The Python our `--python-expr` runs after the scene is loaded. Only numbers from the spec
/// are put in it, never studio text.
fn override_script(resolution: Option<[u32; 2]>, samples: Option<u32>) -> String {
    let mut py = String::from(
        "import bpy\n\
         scene = bpy.context.scene\n\
         for s in bpy.data.scenes:\n    \
             if hasattr(s, 'cycles'):\n        \
                 s.cycles.use_denoising = False\n",
    );
    if let Some([w, h]) = resolution {
        py.push_str(&format!(
            "scene.render.resolution_x = {w}\n\
             scene.render.resolution_y = {h}\n\
             scene.render.resolution_percentage = 100\n"
        ));
    }
    if let Some(n) = samples {
        py.push_str(&format!(
            "scene.cycles.samples = {n}\n\
             if hasattr(scene, 'eevee'):\n    \
                 scene.eevee.taa_render_samples = {n}\n"
        ));
    }
    py.push_str("print('suanli: render overrides applied')\n");
    py
}

/// Turns Blender's stdout into chunk progress: `Saved: '…'` ends a frame, and
/// `Fra:12 … | Sample 16/64` (Cycles) or `Rendering 16 / 64 samples` (Eevee) is the way
/// through the current one.
struct ProgressParser {
    n_frames: u32,
    saved: u32,
    in_frame: f32,
}

impl ProgressParser {
    fn new(n_frames: u32) -> Self {
        Self {
            n_frames: n_frames.max(1),
            saved: 0,
            in_frame: 0.0,
        }
    }

    /// The chunk fraction after `line`, if the line says anything about progress.
    fn line(&mut self, line: &str) -> Option<f32> {
        if line.starts_with("Saved: ") {
            self.saved = (self.saved + 1).min(self.n_frames);
            self.in_frame = 0.0;
        } else if line.starts_with("Fra:") {
            self.in_frame = sample_fraction(line)?;
        } else {
            return None;
        }
        Some((self.saved as f32 + self.in_frame) / self.n_frames as f32)
    }
}

/// The sample fraction in a Blender status line: the last `Sample a/b` or `Rendering a / b
/// samples` part.
fn sample_fraction(line: &str) -> Option<f32> {
    let part = line.rsplit('|').next()?.trim();
    let counts = if let Some(i) = part.rfind("Sample ") {
        &part[i + "Sample ".len()..]
    } else {
        part.strip_prefix("Rendering ")?.strip_suffix(" samples")?
    };
    let (done, total) = counts.split_once('/')?;
    let done: f32 = done.trim().parse().ok()?;
    let total: f32 = total.trim().parse().ok()?;
    (total > 0.0).then(|| (done / total).clamp(0.0, 1.0))
}

pub(super) async fn render(
    job: &RenderJob<'_>,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<Finished, Stop> {
    let RendererSpec::Blender {
        version,
        format,
        resolution,
        samples,
    } = job.renderer
    else {
        return failed(RenderFailure::new("internal error: not a blender task"));
    };
    let Some(scene) = job.scene_path() else {
        return failed(RenderFailure::new(
            "blender needs a scene file but the task has none",
        ));
    };
    match tokio::fs::metadata(&scene).await {
        Ok(meta) if meta.is_file() => {}
        _ => {
            return failed(RenderFailure::new(format!(
                "scene file '{}' does not exist in the task's inputs",
                scene.display()
            )))
        }
    }
    if !version.is_empty() {
        let local = match local_version().await {
            Ok(local) => local,
            Err(reason) => {
                return failed(RenderFailure::new(format!(
                    "task needs blender {version} but this worker has none: {reason}"
                )))
            }
        };
        if &local != version {
            return failed(RenderFailure::new(format!(
                "task needs blender {version} but this worker has {local}"
            )));
        }
    }

    let chunk = job.chunk;
    let mut args: Vec<OsString> = vec![
        "-b".into(),
        "--factory-startup".into(),
        "-Y".into(),
        job.seen(&scene).into_os_string(),
        "--python-exit-code".into(),
        "1".into(),
        "--python-expr".into(),
        override_script(*resolution, *samples).into(),
        "-o".into(),
        job.seen(&job.output_dir.join(job.output_pattern))
            .into_os_string(),
        "-F".into(),
        format.blender_name().into(),
        "-x".into(),
        "1".into(),
        "-t".into(),
        job.threads.to_string().into(),
    ];
    for (flag, value) in [("-s", chunk.start), ("-e", chunk.end), ("-j", chunk.step)] {
        args.push(flag.into());
        args.push(value.to_string().into());
    }
    args.push("-a".into());
    if !job.gpus.is_empty() {
        // Cycles' own options follow `--`; CUDA_VISIBLE_DEVICES narrows it to this task's.
        for a in ["--", "--cycles-device", "CUDA"] {
            args.push(a.into());
        }
    }
    let spec = ProcessSpec {
        program: program(),
        args,
        cwd: Some(job.input_dir.clone()),
        sandbox: job.sandbox(),
        env: job.device_env(),
    };

    let mut parser = ProgressParser::new(chunk.len());
    let mut on_line = |stream: Stream, line: &str| {
        if stream == Stream::Stdout {
            if let Some(fraction) = parser.line(line) {
                progress.report(fraction);
            }
        }
    };
    let report = match process::run(&spec, job.timeout, cancel, &mut on_line).await {
        Ok(report) => report,
        Err(err) => {
            return failed(RenderFailure::new(format!(
                "{err} (install blender or point {BLENDER_ENV} at it)"
            )))
        }
    };
    let tail = report.combined_tail.text();
    process_result("blender", &report, job.timeout, tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_the_first_line() {
        assert_eq!(parse_version("Blender 3.4.1").as_deref(), Some("3.4.1"));
        assert_eq!(parse_version("Blender 4.2.0 LTS").as_deref(), Some("4.2.0"));
        assert_eq!(parse_version("Blender quit"), None);
        assert_eq!(parse_version("Read blend: x"), None);
    }

    #[test]
    fn progress_follows_samples_and_saved_frames() {
        let mut p = ProgressParser::new(2);
        let fra = |f: u32, tail: &str| {
            format!("Fra:{f} Mem:10.00M (Peak 10.40M) | Time:00:00.13 | Remaining:00:00.01 | Mem:0.96M, Peak:0.96M | Scene, ViewLayer | {tail}")
        };
        assert_eq!(p.line("Blender 3.4.1"), None);
        assert_eq!(p.line(&fra(1, "Synchronizing object | Cube")), None);
        assert_eq!(p.line(&fra(1, "Sample 0/4")), Some(0.0));
        assert_eq!(p.line(&fra(1, "Sample 2/4")), Some(0.25));
        assert_eq!(p.line("Saved: '/tmp/out/frame_0001.png'"), Some(0.5));
        assert_eq!(p.line(&fra(2, "Rendered 1/4 Tiles, Sample 4/4")), Some(1.0));
        assert_eq!(p.line(&fra(2, "Rendering 8 / 16 samples")), Some(0.75));
        assert_eq!(p.line("Saved: '/tmp/out/frame_0002.png'"), Some(1.0));
        assert_eq!(p.line("Saved: 'extra'"), Some(1.0));
    }

    #[test]
    fn overrides_always_turn_denoising_off() {
        let bare = override_script(None, None);
        assert!(bare.contains("use_denoising = False"));
        assert!(!bare.contains("resolution_x"));
        let full = override_script(Some([640, 360]), Some(16));
        assert!(full.contains("resolution_x = 640\n"));
        assert!(full.contains("resolution_y = 360\n"));
        assert!(full.contains("resolution_percentage = 100\n"));
        assert!(full.contains("cycles.samples = 16\n"));
    }
}
