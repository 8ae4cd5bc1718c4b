//! Renderers and their pixel-changing settings: which program renders a job and how. Command
//! templates are checked here, once, so a worker never sees an unknown placeholder.

use serde::{Deserialize, Serialize};

use super::spec::SpecError;

/// Version of the builtin ray tracer; part of every builtin task key. The worker's renderer
/// asserts it matches its own `VERSION`.
pub const BUILTIN_VERSION: &str = "suanli-builtin-1";

/// Image formats Blender may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ImageFormat {
    #[default]
    Png,
    Exr,
    Jpeg,
}

impl ImageFormat {
    pub fn ext(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Exr => "exr",
            ImageFormat::Jpeg => "jpg",
        }
    }

    /// Blender's `-F` name.
    pub fn blender_name(self) -> &'static str {
        match self {
            ImageFormat::Png => "PNG",
            ImageFormat::Exr => "OPEN_EXR",
            ImageFormat::Jpeg => "JPEG",
        }
    }
}

/// Which renderer runs a job, with every setting that changes its pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RendererSpec {
    /// The built-in deterministic ray tracer (demo and tests).
    Builtin {
        width: u32,
        height: u32,
        samples: u32,
    },
    /// Blender, headless. `version` is the exact `blender --version` of the workers that may
    /// run it; the coordinator fills it from live workers when the studio leaves it empty.
    Blender {
        #[serde(default)]
        version: String,
        #[serde(default)]
        format: ImageFormat,
        /// Override of the scene's resolution, when given.
        #[serde(default)]
        resolution: Option<[u32; 2]>,
        /// Override of the scene's Cycles sample count, when given.
        #[serde(default)]
        samples: Option<u32>,
    },
    /// Any CLI renderer from an argv template (never through a shell).
    Command {
        argv: Vec<String>,
        /// The studio's name for the renderer build: part of the task key.
        #[serde(default)]
        version: String,
        /// Extension of the frames it writes.
        #[serde(default = "default_ext")]
        ext: String,
    },
}

fn default_ext() -> String {
    "png".to_string()
}

/// Placeholders a command template may use.
pub const COMMAND_PLACEHOLDERS: &[&str] = &["frame", "start", "end", "step", "output", "scene"];

impl RendererSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            RendererSpec::Builtin { .. } => "builtin",
            RendererSpec::Blender { .. } => "blender",
            RendererSpec::Command { .. } => "command",
        }
    }

    pub fn version(&self) -> &str {
        match self {
            RendererSpec::Builtin { .. } => BUILTIN_VERSION,
            RendererSpec::Blender { version, .. } | RendererSpec::Command { version, .. } => {
                version
            }
        }
    }

    /// Extension of the files this renderer writes.
    pub fn ext(&self) -> &str {
        match self {
            RendererSpec::Builtin { .. } => "png",
            RendererSpec::Blender { format, .. } => format.ext(),
            RendererSpec::Command { ext, .. } => ext,
        }
    }

    /// Whether the renderer reads a scene file from the job's inputs.
    pub fn needs_scene(&self) -> bool {
        !matches!(self, RendererSpec::Builtin { .. })
    }

    pub(crate) fn validate(&self) -> Result<(), SpecError> {
        let bad = |m: String| Err(SpecError::Renderer(m));
        match self {
            RendererSpec::Builtin {
                width,
                height,
                samples,
            } => {
                if !(1..=8192).contains(width) || !(1..=8192).contains(height) {
                    return bad(format!(
                        "builtin resolution {width}x{height} is out of range (1 to 8192 each)"
                    ));
                }
                if !(1..=4096).contains(samples) {
                    return bad(format!(
                        "builtin samples {samples} out of range (1 to 4096)"
                    ));
                }
            }
            RendererSpec::Blender {
                resolution,
                samples,
                ..
            } => {
                if let Some([w, h]) = resolution {
                    if !(1..=65536).contains(w) || !(1..=65536).contains(h) {
                        return bad(format!("blender resolution {w}x{h} is out of range"));
                    }
                }
                if let Some(s) = samples {
                    if !(1..=1_000_000).contains(s) {
                        return bad(format!("blender samples {s} out of range"));
                    }
                }
            }
            RendererSpec::Command { argv, ext, .. } => {
                if argv.is_empty() || argv[0].trim().is_empty() {
                    return bad("command renderer needs a program in argv[0]".into());
                }
                for arg in argv {
                    check_template(arg).map_err(SpecError::Renderer)?;
                }
                if ext.is_empty()
                    || ext.len() > 10
                    || !ext.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    return bad(format!(
                        "output extension '{ext}' must be 1-10 letters or digits"
                    ));
                }
            }
        }
        if self.version().len() > 64 || self.version().chars().any(|c| c.is_control()) {
            return bad("renderer version must be at most 64 printable characters".into());
        }
        Ok(())
    }
}

/// Checks `{name}` / `{name:0N}` placeholders in a command template argument.
fn check_template(arg: &str) -> Result<(), String> {
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in command argument '{arg}'"))?;
        let inner = &rest[open + 1..open + close];
        let name = inner.split(':').next().unwrap_or("");
        if !COMMAND_PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder '{{{inner}}}' in command argument '{arg}' (known: {})",
                COMMAND_PLACEHOLDERS.join(", ")
            ));
        }
        if let Some(fmt) = inner.split_once(':').map(|(_, f)| f) {
            let width_ok = fmt.len() >= 2
                && fmt.starts_with('0')
                && fmt[1..].bytes().all(|b| b.is_ascii_digit())
                && fmt[1..].parse::<u32>().is_ok_and(|w| (1..=10).contains(&w));
            if !width_ok {
                return Err(format!(
                    "placeholder '{{{inner}}}' in '{arg}': the only format is zero padding like {{frame:04}}"
                ));
            }
        }
        rest = &rest[open + close + 1..];
    }
    Ok(())
}
