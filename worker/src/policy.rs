//! Which renderers this worker runs: a job is untrusted input to the machine that renders it,
//! so the worker, not the job, decides what programs start. It exists so that the one check
//! made before a task renders (and the list the worker advertises) come from one value.
//!
//! - `builtin` and `blender` are allowed by default; `command` only when named.
//! - A command job names a **profile**: an argv template defined on the worker
//!   (`--command-profile NAME=TEMPLATE`, or a TOML file of `NAME = ["prog", "arg", …]`), whose
//!   `{arg.NAME}` placeholders the job fills with plain-text values. The job never chooses
//!   the program.
//! - A raw argv template in the job runs only with `allow_any_command` (a single-studio farm).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use suanli_shared::protocol::{check_command_template, check_profile_name, template_arg_names};
use suanli_shared::protocol::{RendererSpec, ARG_PLACEHOLDER_PREFIX};

/// The renderer kinds a worker may allow.
pub const KINDS: &[&str] = &["builtin", "blender", "command"];

/// What this worker agrees to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RendererPolicy {
    /// Renderer kinds allowed (a subset of [`KINDS`]).
    pub allowed: BTreeSet<String>,
    /// Command profiles: name -> argv template.
    pub profiles: BTreeMap<String, Vec<String>>,
    /// Run raw argv templates from jobs too (today's behaviour, for a single-studio farm).
    pub allow_any_command: bool,
}

impl Default for RendererPolicy {
    /// `builtin` and `blender`; no command profiles; no raw commands.
    fn default() -> Self {
        Self {
            allowed: ["builtin", "blender"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            profiles: BTreeMap::new(),
            allow_any_command: false,
        }
    }
}

/// A bad `--renderers`, `--command-profile` or profiles file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

impl RendererPolicy {
    /// Every renderer, raw commands included: a trusted single-studio farm (tests, `suanli up`).
    pub fn trusting() -> Self {
        Self {
            allowed: KINDS.iter().map(|s| s.to_string()).collect(),
            profiles: BTreeMap::new(),
            allow_any_command: true,
        }
    }

    /// Sets the allowed kinds from `--renderers builtin,blender,command`.
    pub fn with_kinds<S: AsRef<str>>(mut self, kinds: &[S]) -> Result<Self, PolicyError> {
        self.allowed.clear();
        for kind in kinds {
            let kind = kind.as_ref().trim();
            if !KINDS.contains(&kind) {
                return Err(PolicyError(format!(
                    "unknown renderer '{kind}' in --renderers (known: {})",
                    KINDS.join(", ")
                )));
            }
            self.allowed.insert(kind.to_string());
        }
        if self.allowed.is_empty() {
            return Err(PolicyError(
                "--renderers names no renderer: a worker must allow at least one".into(),
            ));
        }
        Ok(self)
    }

    /// Adds a profile from `NAME=TEMPLATE`; the template is split on whitespace (an argument
    /// with spaces needs a profiles file).
    pub fn add_profile_flag(&mut self, flag: &str) -> Result<(), PolicyError> {
        let (name, template) = flag.split_once('=').ok_or_else(|| {
            PolicyError(format!(
                "--command-profile '{flag}' must be NAME=TEMPLATE, e.g. 'denoise=oidn --in {{scene}} --out {{output}}/f_{{frame:04}}.exr'"
            ))
        })?;
        let argv = template.split_whitespace().map(str::to_string).collect();
        self.add_profile(name.trim(), argv)
    }

    /// Adds the profiles of a TOML file: `NAME = ["program", "arg", …]` per line.
    pub fn add_profiles_file(&mut self, path: &Path) -> Result<(), PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            PolicyError(format!(
                "cannot read command profiles {}: {e}",
                path.display()
            ))
        })?;
        let table: BTreeMap<String, Vec<String>> = toml::from_str(&text).map_err(|e| {
            PolicyError(format!(
                "command profiles {}: {e} (expected NAME = [\"program\", \"arg\", …] lines)",
                path.display()
            ))
        })?;
        for (name, argv) in table {
            self.add_profile(&name, argv)
                .map_err(|e| PolicyError(format!("{}: {e}", path.display())))?;
        }
        Ok(())
    }

    fn add_profile(&mut self, name: &str, argv: Vec<String>) -> Result<(), PolicyError> {
        check_profile_name("command profile", name).map_err(PolicyError)?;
        check_command_template(&argv, true)
            .map_err(|e| PolicyError(format!("command profile '{name}': {e}")))?;
        if self.profiles.insert(name.to_string(), argv).is_some() {
            return Err(PolicyError(format!(
                "command profile '{name}' is defined twice"
            )));
        }
        Ok(())
    }

    /// Checks the policy as a whole: profiles mean nothing unless `command` is allowed.
    pub fn check(&self) -> Result<(), PolicyError> {
        if !self.allowed.contains("command")
            && (self.allow_any_command || !self.profiles.is_empty())
        {
            return Err(PolicyError(
                "command profiles or --allow-any-command need 'command' in --renderers".into(),
            ));
        }
        Ok(())
    }

    /// The renderer kinds this worker advertises, from what the machine can run: kinds it does
    /// not allow are left out; `command` is `any` with raw commands allowed, `profiles`
    /// otherwise.
    pub fn advertised(&self, detected: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = detected
            .iter()
            .filter(|(kind, _)| self.allowed.contains(*kind) && *kind != "command")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if self.allowed.contains("command") {
            let how = if self.allow_any_command {
                "any"
            } else {
                "profiles"
            };
            out.insert("command".into(), how.into());
        }
        out
    }

    /// The spec this worker will run for a job's renderer: builtin and Blender as they are,
    /// a profile job as the profile's template with the job's arguments filled in. `Err` is
    /// the reason the worker refuses the task.
    pub fn resolve(&self, spec: &RendererSpec) -> Result<RendererSpec, String> {
        let kind = spec.kind();
        if !self.allowed.contains(kind) {
            return Err(format!(
                "this worker does not run the {kind} renderer (it allows: {})",
                self.allowed.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        let RendererSpec::Command {
            profile,
            args,
            version,
            ext,
            ..
        } = spec
        else {
            return Ok(spec.clone());
        };
        let Some(name) = profile else {
            if self.allow_any_command {
                return Ok(spec.clone());
            }
            return Err(
                "this worker runs only its own command profiles, not a job's argv (name a profile, or run the job on a worker started with --allow-any-command)"
                    .into(),
            );
        };
        let Some(template) = self.profiles.get(name) else {
            return Err(format!(
                "this worker has no command profile '{name}' (it has: {})",
                self.profile_names().join(", ")
            ));
        };
        let used = template_arg_names(template);
        if let Some(extra) = args.keys().find(|k| !used.contains(*k)) {
            return Err(format!(
                "command profile '{name}' takes no argument '{extra}' (it takes: {})",
                used.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        if let Some(missing) = used.iter().find(|k| !args.contains_key(*k)) {
            return Err(format!(
                "command profile '{name}' needs the argument '{missing}'"
            ));
        }
        let argv = template
            .iter()
            .map(|element| {
                let mut out = element.clone();
                for (k, v) in args {
                    out = out.replace(&format!("{{{ARG_PLACEHOLDER_PREFIX}{k}}}"), v);
                }
                out
            })
            .collect();
        Ok(RendererSpec::Command {
            argv,
            profile: None,
            args: BTreeMap::new(),
            version: version.clone(),
            ext: ext.clone(),
        })
    }

    /// The names of the command profiles, sorted.
    pub fn profile_names(&self) -> Vec<String> {
        self.profiles.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(profile: Option<&str>, argv: &[&str], args: &[(&str, &str)]) -> RendererSpec {
        RendererSpec::Command {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            profile: profile.map(str::to_string),
            args: args
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            version: String::new(),
            ext: "png".into(),
        }
    }

    #[test]
    fn the_default_omits_command() {
        let p = RendererPolicy::default();
        let builtin = RendererSpec::Builtin {
            width: 1,
            height: 1,
            samples: 1,
        };
        assert!(p.resolve(&builtin).is_ok());
        let err = p.resolve(&command(None, &["sh"], &[])).unwrap_err();
        assert!(err.contains("does not run the command renderer"), "{err}");
        let detected = BTreeMap::from([
            ("builtin".to_string(), "b1".to_string()),
            ("command".to_string(), "any".to_string()),
        ]);
        assert_eq!(
            p.advertised(&detected),
            BTreeMap::from([("builtin".to_string(), "b1".to_string())])
        );
    }

    #[test]
    fn profiles_fill_arguments_and_refuse_the_rest() {
        let mut p = RendererPolicy::default().with_kinds(&["command"]).unwrap();
        p.add_profile_flag("echo=echo q={arg.quality} {output}/f_{frame:04}.png")
            .unwrap();
        p.check().unwrap();
        let RendererSpec::Command { argv, profile, .. } = p
            .resolve(&command(Some("echo"), &[], &[("quality", "high")]))
            .unwrap()
        else {
            panic!("a command spec")
        };
        assert_eq!(argv, ["echo", "q=high", "{output}/f_{frame:04}.png"]);
        assert_eq!(profile, None);
        let err = p.resolve(&command(Some("other"), &[], &[])).unwrap_err();
        assert!(
            err.contains("no command profile 'other'") && err.contains("echo"),
            "{err}"
        );
        let err = p.resolve(&command(Some("echo"), &[], &[])).unwrap_err();
        assert!(err.contains("needs the argument 'quality'"), "{err}");
        let err = p
            .resolve(&command(Some("echo"), &[], &[("quality", "a"), ("x", "b")]))
            .unwrap_err();
        assert!(err.contains("takes no argument 'x'"), "{err}");
        let err = p
            .resolve(&command(None, &["sh", "-c", "x"], &[]))
            .unwrap_err();
        assert!(err.contains("--allow-any-command"), "{err}");
        assert_eq!(
            p.advertised(&BTreeMap::new()),
            BTreeMap::from([("command".to_string(), "profiles".to_string())])
        );
    }

    #[test]
    fn bad_flags_are_refused_with_the_reason() {
        let err = RendererPolicy::default()
            .with_kinds(&["builtin", "povray"])
            .unwrap_err();
        assert!(err.0.contains("unknown renderer 'povray'"));
        let mut p = RendererPolicy::default();
        assert!(p.add_profile_flag("noequals").is_err());
        assert!(p.add_profile_flag("Bad Name=x").is_err());
        assert!(p.add_profile_flag("x=").unwrap_err().0.contains("argv[0]"));
        assert!(p.add_profile_flag("x=r {nope}").is_err());
        p.add_profile_flag("x=r").unwrap();
        assert!(p.add_profile_flag("x=r").unwrap_err().0.contains("twice"));
        assert!(p.check().unwrap_err().0.contains("need 'command'"));
    }

    #[test]
    fn the_example_profiles_file_loads() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/command-profiles.example.toml");
        let mut p = RendererPolicy::default().with_kinds(&["command"]).unwrap();
        p.add_profiles_file(&path).unwrap();
        assert_eq!(p.profile_names(), ["copy", "denoise"]);
    }

    #[test]
    fn profiles_files_keep_arguments_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("profiles.toml");
        std::fs::write(&path, "tonemap = [\"tm\", \"--title\", \"a b {arg.t}\"]\n").unwrap();
        let mut p = RendererPolicy::default().with_kinds(&["command"]).unwrap();
        p.add_profiles_file(&path).unwrap();
        assert_eq!(p.profiles["tonemap"], ["tm", "--title", "a b {arg.t}"]);
        std::fs::write(&path, "tonemap = \"tm\"\n").unwrap();
        assert!(RendererPolicy::default()
            .add_profiles_file(&path)
            .unwrap_err()
            .0
            .contains("expected NAME"));
    }
}
