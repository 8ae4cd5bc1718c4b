//! Renderers and their pixel-changing settings: which program renders a job and how. Command
//! templates are checked here, once, so a worker never sees an unknown placeholder.

use std::collections::BTreeMap;

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
    /// A CLI renderer, never through a shell: either one of the worker's command profiles
    /// (`profile`, with `args` filling its `{arg.NAME}` placeholders), or a raw argv template
    /// (`argv`), which only workers started with `--allow-any-command` run.
    Command {
        /// The raw argv template; empty when the job names a profile.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        argv: Vec<String>,
        /// The worker-defined command profile to run (`--command-profile NAME=TEMPLATE`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        profile: Option<String>,
        /// Values of the profile's `{arg.NAME}` placeholders, each one plain text inside one
        /// argv element.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        args: BTreeMap<String, String>,
        /// The studio's name for the renderer build: part of the task key.
        #[serde(default)]
        version: String,
        /// Extension of the frames it writes.
        #[serde(default = "default_ext")]
        ext: String,
    },
}

/// Resource limits a job asks for each of its renders; a worker applies each capped by its own
/// maximum (`suanli worker --max-memory …`). Unset: the worker's maximum, if any.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderLimits {
    /// Address space of each renderer process, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// Processes the render may run at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u64>,
    /// Largest file the render may write, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_mib: Option<u64>,
}

impl RenderLimits {
    pub fn is_unset(&self) -> bool {
        *self == Self::default()
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        let mib = 1u64 << 20;
        for (name, value, least) in [
            ("memory_mib", self.memory_mib, 16),
            ("processes", self.processes, 1),
            ("file_mib", self.file_mib, 1),
        ] {
            if let Some(v) = value {
                if v < least || v > u64::MAX / mib {
                    return Err(format!(
                        "limit {name} = {v} is out of range (at least {least})"
                    ));
                }
            }
        }
        Ok(())
    }
}

fn default_ext() -> String {
    "png".to_string()
}

/// Placeholders a command template may use.
pub const COMMAND_PLACEHOLDERS: &[&str] = &["frame", "start", "end", "step", "output", "scene"];

/// Prefix of a profile's argument placeholders: `{arg.quality}` takes the job's `args.quality`.
pub const ARG_PLACEHOLDER_PREFIX: &str = "arg.";

/// Longest command-profile argument value.
pub const MAX_ARG_VALUE: usize = 256;

/// Checks a command-profile name or an argument name: 1-32 of `a-z`, `0-9`, `_`, `-`, starting
/// with a letter.
pub fn check_profile_name(what: &str, name: &str) -> Result<(), String> {
    let ok = (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} '{name}' must be 1-32 of a-z, 0-9, '_' and '-', starting with a letter"
        ))
    }
}

/// Checks a value a job passes into a profile's `{arg.NAME}`: printable, at most
/// [`MAX_ARG_VALUE`] bytes, no braces (it cannot smuggle in a placeholder), and not starting
/// with `-` (it cannot become an option of the profile's program).
pub fn check_arg_value(name: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_ARG_VALUE
        || value
            .chars()
            .any(|c| c.is_control() || c == '{' || c == '}')
        || value.starts_with('-')
    {
        return Err(format!(
            "command argument {name}='{}' must be at most {MAX_ARG_VALUE} printable characters, without braces, not starting with '-'",
            value.escape_default()
        ));
    }
    Ok(())
}

/// Checks a command template (a profile's on the worker, or a raw one in a job): a program in
/// `argv[0]` and known placeholders; `{arg.NAME}` only where `args_allowed` (profiles).
pub fn check_command_template(argv: &[String], args_allowed: bool) -> Result<(), String> {
    if argv.is_empty() || argv[0].trim().is_empty() {
        return Err("command renderer needs a program in argv[0]".into());
    }
    for arg in argv {
        check_template(arg, args_allowed)?;
    }
    Ok(())
}

/// The `{arg.NAME}` names a template uses.
pub fn template_arg_names(argv: &[String]) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for arg in argv {
        let mut rest = arg.as_str();
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                break;
            };
            if let Some(name) = rest[open + 1..open + close].strip_prefix(ARG_PLACEHOLDER_PREFIX) {
                names.insert(name.to_string());
            }
            rest = &rest[open + close + 1..];
        }
    }
    names
}

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
            RendererSpec::Command {
                argv,
                profile,
                args,
                ext,
                ..
            } => {
                match profile {
                    Some(name) => {
                        check_profile_name("command profile", name).map_err(SpecError::Renderer)?;
                        if !argv.is_empty() {
                            return bad(format!(
                                "a command job names either a profile ('{name}') or an argv, not both"
                            ));
                        }
                        if args.len() > 64 {
                            return bad("at most 64 command arguments".into());
                        }
                        for (k, v) in args {
                            check_profile_name("command argument", k)
                                .and_then(|()| check_arg_value(k, v))
                                .map_err(SpecError::Renderer)?;
                        }
                    }
                    None => {
                        if !args.is_empty() {
                            return bad(
                                "command arguments (args) need a profile: a raw argv takes none"
                                    .into(),
                            );
                        }
                        check_command_template(argv, false).map_err(SpecError::Renderer)?;
                    }
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

/// Checks `{name}` / `{name:0N}` placeholders in a command template argument, and
/// `{arg.NAME}` where `args_allowed`.
fn check_template(arg: &str, args_allowed: bool) -> Result<(), String> {
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in command argument '{arg}'"))?;
        let inner = &rest[open + 1..open + close];
        if let Some(arg_name) = inner.strip_prefix(ARG_PLACEHOLDER_PREFIX) {
            if !args_allowed {
                return Err(format!(
                    "placeholder '{{{inner}}}' in '{arg}': arguments belong to command profiles, not raw templates"
                ));
            }
            check_profile_name("command argument", arg_name)?;
            rest = &rest[open + close + 1..];
            continue;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::spec::tests::spec;

    fn profile_job(
        profile: &str,
        argv: &[&str],
        args: &[(&str, &str)],
    ) -> crate::protocol::JobSpec {
        let mut s = spec();
        s.scene = Some("a.scn".into());
        s.renderer = RendererSpec::Command {
            argv: argv.iter().map(|a| a.to_string()).collect(),
            profile: (!profile.is_empty()).then(|| profile.to_string()),
            args: args
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            version: String::new(),
            ext: "png".into(),
        };
        s
    }

    fn refusal(s: &crate::protocol::JobSpec) -> String {
        s.validate().unwrap_err().to_string()
    }

    #[test]
    fn profile_jobs_validate_names_and_values() {
        assert!(profile_job("denoise", &[], &[("quality", "high")])
            .validate()
            .is_ok());
        assert!(refusal(&profile_job("denoise", &["sh"], &[])).contains("not both"));
        assert!(refusal(&profile_job("", &["sh"], &[("q", "x")])).contains("need a profile"));
        assert!(refusal(&profile_job("Bad", &[], &[])).contains("command profile 'Bad'"));
        assert!(refusal(&profile_job("p", &[], &[("q", "--exec=x")])).contains("not starting"));
        assert!(refusal(&profile_job("p", &[], &[("q", "{scene}")])).contains("braces"));
        assert!(refusal(&profile_job("p", &[], &[("q", "a\nb")])).contains("printable"));
        assert!(refusal(&profile_job("", &["r", "{arg.q}"], &[])).contains("profiles"));
    }

    #[test]
    fn profile_templates_may_use_arguments() {
        let t = |argv: &[&str]| argv.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        assert!(check_command_template(&t(&["r", "-q", "{arg.q}", "{frame:04}"]), true).is_ok());
        assert!(check_command_template(&t(&["r", "{arg.Q}"]), true).is_err());
        assert!(check_command_template(&t(&["r", "{arg.q}"]), false).is_err());
        assert_eq!(
            template_arg_names(&t(&["r", "{arg.q}x{arg.w}", "{frame}", "{arg.q}"])),
            ["q", "w"].iter().map(|s| s.to_string()).collect()
        );
    }

    #[test]
    fn profile_and_arguments_change_the_task_key_and_raw_templates_encode_as_before() {
        let chunk = crate::frames::FrameChunk {
            start: 1,
            end: 2,
            step: 1,
        };
        let key = |s: &crate::protocol::JobSpec| crate::protocol::task_key(s, &chunk);
        let a = profile_job("p", &[], &[("q", "high")]);
        assert_ne!(key(&a), key(&profile_job("p", &[], &[("q", "low")])));
        assert_ne!(key(&a), key(&profile_job("o", &[], &[("q", "high")])));
        // A raw template encodes as before profiles existed (no new fields), and decodes back.
        let raw = profile_job("", &["r", "{frame}"], &[]);
        let json = serde_json::to_value(&raw.renderer).unwrap();
        assert!(json.get("profile").is_none() && json.get("args").is_none());
        assert_eq!(
            serde_json::from_value::<RendererSpec>(json).unwrap(),
            raw.renderer
        );
    }
}
