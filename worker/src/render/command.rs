//! A studio's own CLI renderer, from an argv template.
//!
//! The template's placeholders (`{frame}`, `{start}`, `{end}`, `{step}`, `{output}`,
//! `{scene}`, numbers optionally zero-padded as `{frame:04}`) are replaced as plain text inside
//! each argv element. Nothing is ever split, quoted or interpreted by a shell: an argument
//! `x; touch /tmp/pwned` reaches the program as that one literal string. A studio that wants a
//! shell names one as its program, and then the shell is its own business.
//!
//! A template that uses `{frame}` runs once per frame of the chunk (progress: frames done);
//! one that does not runs once for the whole chunk (progress: expected files that appeared).

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use suanli_shared::frames::FrameChunk;
use suanli_shared::protocol::RendererSpec;
use tokio_util::sync::CancellationToken;

use super::process::{self, ProcessSpec, Stream};
use super::{
    check_frame, failed, process_result, Finished, Progress, RenderFailure, RenderJob, Stop,
};

/// How often a whole-chunk run's output folder is looked at for progress.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// A placeholder's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placeholder {
    Frame,
    Start,
    End,
    Step,
    Output,
    Scene,
}

impl Placeholder {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "frame" => Self::Frame,
            "start" => Self::Start,
            "end" => Self::End,
            "step" => Self::Step,
            "output" => Self::Output,
            "scene" => Self::Scene,
            _ => return None,
        })
    }
}

/// One piece of a template argument.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// A placeholder and its zero-padding width (0: none).
    Value(Placeholder, usize),
}

/// Splits a template argument into text and placeholders. Mirrors the submit-time check in
/// `protocol`; a task that slipped past it fails here with the same kind of message.
fn parse_template(arg: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_string()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in command argument '{arg}'"))?;
        let inner = &rest[open + 1..open + close];
        let (name, width) = match inner.split_once(':') {
            None => (inner, 0),
            Some((name, fmt)) => {
                let width = fmt
                    .strip_prefix('0')
                    .and_then(|w| w.parse::<usize>().ok())
                    .filter(|w| (1..=10).contains(w))
                    .ok_or_else(|| {
                        format!("placeholder '{{{inner}}}' in '{arg}': the only format is zero padding like {{frame:04}}")
                    })?;
                (name, width)
            }
        };
        let placeholder = Placeholder::parse(name).ok_or_else(|| {
            format!("unknown placeholder '{{{inner}}}' in command argument '{arg}'")
        })?;
        pieces.push(Piece::Value(placeholder, width));
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_string()));
    }
    Ok(pieces)
}

/// What the placeholders stand for in one run.
struct Values<'a> {
    /// `None` when the run covers the whole chunk.
    frame: Option<u32>,
    chunk: FrameChunk,
    output: &'a Path,
    scene: Option<&'a Path>,
}

fn expand(pieces: &[Piece], values: &Values<'_>) -> Result<OsString, String> {
    let mut out = OsString::new();
    let number = |n: u32, width: usize| format!("{n:0width$}");
    for piece in pieces {
        match piece {
            Piece::Text(text) => out.push(text),
            Piece::Value(Placeholder::Frame, w) => match values.frame {
                Some(f) => out.push(number(f, *w)),
                None => return Err("internal error: {frame} outside a per-frame run".into()),
            },
            Piece::Value(Placeholder::Start, w) => out.push(number(values.chunk.start, *w)),
            Piece::Value(Placeholder::End, w) => out.push(number(values.chunk.end, *w)),
            Piece::Value(Placeholder::Step, w) => out.push(number(values.chunk.step, *w)),
            Piece::Value(Placeholder::Output, _) => out.push(values.output),
            Piece::Value(Placeholder::Scene, _) => match values.scene {
                Some(scene) => out.push(scene),
                None => {
                    return Err("the command uses {scene} but the task has no scene file".into())
                }
            },
        }
    }
    Ok(out)
}

/// A parsed argv template.
struct Template {
    args: Vec<Vec<Piece>>,
}

impl Template {
    fn parse(argv: &[String]) -> Result<Self, String> {
        if argv.first().is_none_or(|p| p.trim().is_empty()) {
            return Err("command renderer needs a program in argv[0]".into());
        }
        let args = argv
            .iter()
            .map(|a| parse_template(a))
            .collect::<Result<_, _>>()?;
        Ok(Self { args })
    }

    fn per_frame(&self) -> bool {
        self.args
            .iter()
            .flatten()
            .any(|p| matches!(p, Piece::Value(Placeholder::Frame, _)))
    }

    /// The program and its arguments for one run.
    fn expand(&self, values: &Values<'_>) -> Result<(OsString, Vec<OsString>), String> {
        let mut argv = self
            .args
            .iter()
            .map(|pieces| expand(pieces, values))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter();
        let program = argv.next().unwrap_or_default();
        Ok((program, argv.collect()))
    }
}

pub(super) async fn render(
    job: &RenderJob<'_>,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<Finished, Stop> {
    let RendererSpec::Command { argv, .. } = job.renderer else {
        return failed(RenderFailure::new("internal error: not a command task"));
    };
    let template = match Template::parse(argv) {
        Ok(t) => t,
        Err(reason) => return failed(RenderFailure::new(reason)),
    };
    // The paths as the renderer sees them (in a sandbox, where its folders are mounted).
    let scene = job.scene_path().map(|s| job.seen(&s));
    let output = job.seen(&job.output_dir);
    let values = |frame| Values {
        frame,
        chunk: job.chunk,
        output: &output,
        scene: scene.as_deref(),
    };
    let spec = |frame| -> Result<ProcessSpec, Stop> {
        let (program, args) = template
            .expand(&values(frame))
            .or_else(|reason| failed(RenderFailure::new(reason)))?;
        Ok(ProcessSpec {
            program,
            args,
            cwd: Some(job.input_dir.clone()),
            sandbox: job.sandbox(),
            env: job.device_env(),
        })
    };

    let expected = job.expected_frames();
    let n_frames = expected.len().max(1) as f32;
    let deadline = tokio::time::Instant::now() + job.timeout;
    let mut ignore_lines = |_: Stream, _: &str| {};

    if template.per_frame() {
        let mut tail = String::new();
        for (frame_idx, (frame, path)) in expected.iter().enumerate() {
            let spec = spec(Some(*frame))?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return failed(
                    RenderFailure::new(format!(
                        "render timed out after {}",
                        process::format_duration(job.timeout)
                    ))
                    .with_tail(tail),
                );
            }
            let report = run(&spec, left, cancel, &mut ignore_lines).await?;
            let finished =
                process_result(&who(&spec), &report, job.timeout, report.stderr_tail.text())?;
            // Fail at the first missing frame rather than rendering the rest for nothing.
            check_frame(*frame, path, &finished.tail)
                .await
                .or_else(failed)?;
            progress.report((frame_idx + 1) as f32 / n_frames);
            tail = finished.tail;
        }
        return Ok(Finished { tail });
    }

    let spec = spec(None)?;
    let run = run(&spec, job.timeout, cancel, &mut ignore_lines);
    tokio::pin!(run);
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    let mut n_present = 0;
    let report = loop {
        tokio::select! {
            report = &mut run => break report?,
            _ = tick.tick() => {
                while n_present < expected.len()
                    && tokio::fs::symlink_metadata(&expected[n_present].1).await.is_ok()
                {
                    n_present += 1;
                }
                progress.report(n_present as f32 / n_frames);
            }
        }
    };
    process_result(&who(&spec), &report, job.timeout, report.stderr_tail.text())
}

/// The program as named in failure reasons.
fn who(spec: &ProcessSpec) -> String {
    format!("'{}'", spec.program_name())
}

async fn run(
    spec: &ProcessSpec,
    timeout: Duration,
    cancel: &CancellationToken,
    on_line: &mut (dyn FnMut(Stream, &str) + Send),
) -> Result<process::RunReport, Stop> {
    process::run(spec, timeout, cancel, on_line)
        .await
        .or_else(|err| failed(RenderFailure::new(err.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_one(arg: &str, frame: Option<u32>, scene: Option<&Path>) -> Result<String, String> {
        let pieces = parse_template(arg)?;
        let values = Values {
            frame,
            chunk: FrameChunk {
                start: 3,
                end: 9,
                step: 2,
            },
            output: Path::new("/out dir"),
            scene,
        };
        Ok(expand(&pieces, &values)?.to_string_lossy().into_owned())
    }

    #[test]
    fn placeholders_expand_as_plain_text() {
        assert_eq!(expand_one("{frame}", Some(7), None).unwrap(), "7");
        assert_eq!(
            expand_one("f_{frame:04}.png", Some(7), None).unwrap(),
            "f_0007.png"
        );
        assert_eq!(
            expand_one("{start}-{end:03}x{step}", None, None).unwrap(),
            "3-009x2"
        );
        assert_eq!(
            expand_one("--out={output}/x", None, None).unwrap(),
            "--out=/out dir/x"
        );
        assert_eq!(
            expand_one("{scene}", None, Some(Path::new("/in/a b.scn"))).unwrap(),
            "/in/a b.scn"
        );
        assert_eq!(
            expand_one("x; touch /tmp/pwned $(id)", None, None).unwrap(),
            "x; touch /tmp/pwned $(id)"
        );
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        assert!(expand_one("{frames}", Some(1), None)
            .unwrap_err()
            .contains("unknown placeholder '{frames}'"));
        assert!(expand_one("{frame", Some(1), None)
            .unwrap_err()
            .contains("unclosed"));
        assert!(expand_one("{frame:4}", Some(1), None)
            .unwrap_err()
            .contains("zero padding"));
        assert!(expand_one("{scene}", None, None)
            .unwrap_err()
            .contains("no scene file"));
    }

    #[test]
    fn only_frame_placeholders_make_per_frame_runs() {
        let t = |argv: &[&str]| {
            Template::parse(&argv.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
        };
        assert!(t(&["r", "-f", "{frame:04}"]).per_frame());
        assert!(!t(&["r", "{start}", "{end}", "{output}"]).per_frame());
        assert!(Template::parse(&[]).is_err());
    }
}
