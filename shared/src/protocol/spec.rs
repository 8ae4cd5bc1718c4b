//! A job as the studio submits it (`JobSpec`), its placement wishes, and the checks that refuse
//! bad input before anything is uploaded or enqueued.

use serde::{Deserialize, Serialize};

use super::renderer::RenderLimits;
use super::renderer::RendererSpec;
use super::resources::Requirements;
use super::task_key::task_key;
use crate::frames::{FrameChunk, FrameSpec};
use crate::hash::ContentHash;
use crate::names::{validate_file_name, validate_rel_path, NameError, Region, Studio};

/// How placement weighs a job's regions (the formula is in `docs/SCHEDULING.md`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Money and time weighed equally; waits for a cheaper region only while the wait costs
    /// less time than the saving is worth.
    #[default]
    Balanced,
    /// Least money: waits for the cheapest region unless the deadline is at risk.
    Cheapest,
    /// Earliest finish: every free slot is used, the fastest region first.
    Fastest,
    /// Least carbon (energy with PUE times grid intensity), unless the deadline is at risk.
    Greenest,
}

impl Policy {
    pub const ALL: [Policy; 4] = [
        Policy::Balanced,
        Policy::Cheapest,
        Policy::Fastest,
        Policy::Greenest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Balanced => "balanced",
            Policy::Cheapest => "cheapest",
            Policy::Fastest => "fastest",
            Policy::Greenest => "greenest",
        }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown policy name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown placement policy '{0}' (known: balanced, cheapest, fastest, greenest)")]
pub struct PolicyError(pub String);

impl std::str::FromStr for Policy {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        Policy::ALL
            .into_iter()
            .find(|p| p.as_str() == s.trim())
            .ok_or_else(|| PolicyError(s.to_string()))
    }
}

/// Where and how fast a job should run. None of it changes pixels, so none of it is part of
/// the task key; every field defaults, so records written before it existed still decode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// `None`: the farm's default (the region catalog's `policy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    /// When the studio needs every frame, Unix milliseconds; placement pays for speed when
    /// the estimated finish would pass it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Most tasks of this job released at once (queued or running), over all regions, so one
    /// job cannot take the whole farm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_slots: Option<u32>,
    /// `cheapest` and `greenest`: how many times longer than `fastest` the job may take for
    /// its saving (at least 1). `None`: the farm's (the region catalog's `patience`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patience: Option<f64>,
    /// `balanced`: what an hour of this job's delay is worth, in the catalog's currency.
    /// `None`: the farm's value, doubled every 5 points of priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_of_hour: Option<f64>,
}

/// Deadlines are accepted between 2000-01-01 and 3000-01-01 (Unix ms): outside that, the
/// number is almost surely in seconds or a typo.
const DEADLINE_RANGE_MS: std::ops::Range<u64> = 946_684_800_000..32_503_680_000_000;

/// A job as submitted, after its inputs are uploaded. Every field is checked by
/// [`JobSpec::validate`] before anything is enqueued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: String,
    /// The studio that owns the job: only it (and the operator) may see or act on it, its
    /// events are published under it and its inputs and outputs live under its prefixes. Not
    /// part of the task key: isolation comes from the prefixes, not from the key.
    #[serde(default)]
    pub studio: Studio,
    #[serde(default)]
    pub priority: i32,
    pub frames: FrameSpec,
    pub chunk: u32,
    /// Regions allowed to render this job; empty means any.
    #[serde(default)]
    pub regions: Vec<Region>,
    pub max_retries: u32,
    pub task_timeout_secs: u64,
    pub renderer: RendererSpec,
    /// Hash of the input manifest (`manifests/<hash>`).
    pub inputs: ContentHash,
    /// Path of the scene inside the input manifest.
    #[serde(default)]
    pub scene: Option<String>,
    /// Output file name pattern: a plain file name with one run of `#` for the frame number;
    /// the extension comes from the renderer.
    pub output: String,
    /// Policy, deadline and slot cap (flattened: `policy`, `deadline_ms`, `max_slots`).
    #[serde(flatten)]
    pub placement: Placement,
    /// Resource limits for each render, which workers cap at their own maxima. Not part of
    /// the task key (they do not change pixels).
    #[serde(default, skip_serializing_if = "RenderLimits::is_unset")]
    pub limits: RenderLimits,
    /// What each task needs of a worker (cores, memory, GPUs, tags). Not part of the task key
    /// (they do not change pixels).
    #[serde(default, skip_serializing_if = "Requirements::is_empty")]
    pub requirements: Requirements,
    /// URLs the coordinator posts this job's state changes to, besides the farm's own
    /// (`--webhook`). Not part of the task key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<String>,
}

/// Most webhook URLs one job may name.
pub const MAX_JOB_WEBHOOKS: usize = 8;
/// Longest webhook URL.
pub const MAX_WEBHOOK_URL: usize = 2048;

/// Checks a webhook URL: absolute `http` or `https` with a host, no user or password in it
/// (the signature authenticates the farm), at most [`MAX_WEBHOOK_URL`] bytes.
pub fn check_webhook_url(text: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "webhook URL '{}' {why}",
            text.chars().take(80).collect::<String>()
        ))
    };
    if text.len() > MAX_WEBHOOK_URL {
        return bad(&format!("is longer than {MAX_WEBHOOK_URL} bytes"));
    }
    let url = match url::Url::parse(text) {
        Ok(u) => u,
        Err(e) => {
            return bad(&format!(
                "is not a URL ({e}): give e.g. https://hooks.example/suanli"
            ))
        }
    };
    if !matches!(url.scheme(), "http" | "https") {
        return bad("must be http:// or https://");
    }
    if url.host_str().is_none_or(str::is_empty) {
        return bad("has no host");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return bad(
            "must not carry a user or password: the signature header authenticates the farm",
        );
    }
    Ok(())
}

/// Why a job spec was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("job name must be 1-128 printable characters")]
    Name,
    #[error("{0}")]
    Chunk(#[from] crate::frames::ChunkSizeError),
    #[error("{0}")]
    Renderer(String),
    #[error("{0}")]
    BadName(#[from] NameError),
    #[error(
        "output pattern '{0}' needs exactly one run of '#' for the frame number, e.g. 'frame_####'"
    )]
    OutputPattern(String),
    #[error("output pattern of {0} bytes is too long: at most {MAX_OUTPUT_PATTERN} leave room in a file name for the frame number and the extension")]
    OutputPatternLength(usize),
    #[error("renderer '{0}' needs a scene file: pass --scene FILE")]
    MissingScene(&'static str),
    #[error("max_retries {0} is out of range (0 to 100)")]
    Retries(u32),
    #[error("task timeout must be between 1 second and 7 days")]
    Timeout,
    #[error("max_slots must be at least 1 (leave it out for no cap)")]
    MaxSlots,
    #[error("patience {0} must be at least 1 (1.5: up to half as long again as fastest)")]
    Patience(f64),
    #[error("value_of_hour {0} must be a number, 0 or more")]
    ValueOfHour(f64),
    #[error("deadline {0} is not a Unix time in milliseconds between the years 2000 and 3000 (seconds given by mistake?)")]
    Deadline(u64),
    #[error("{0}")]
    Webhook(String),
}

impl JobSpec {
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.name.is_empty()
            || self.name.len() > 128
            || self.name.chars().any(|c| c.is_control())
        {
            return Err(SpecError::Name);
        }
        self.frames.chunks(self.chunk)?;
        self.renderer.validate()?;
        self.limits.validate().map_err(SpecError::Renderer)?;
        self.requirements.validate().map_err(SpecError::Renderer)?;
        validate_output_pattern(&self.output)?;
        match (&self.scene, self.renderer.needs_scene()) {
            (Some(scene), _) => validate_rel_path(scene)?,
            (None, true) => return Err(SpecError::MissingScene(self.renderer.kind())),
            (None, false) => {}
        }
        if self.max_retries > 100 {
            return Err(SpecError::Retries(self.max_retries));
        }
        if !(1..=7 * 24 * 3600).contains(&self.task_timeout_secs) {
            return Err(SpecError::Timeout);
        }
        if self.placement.max_slots == Some(0) {
            return Err(SpecError::MaxSlots);
        }
        if let Some(p) = self
            .placement
            .patience
            .filter(|p| !(*p >= 1.0 && p.is_finite()))
        {
            return Err(SpecError::Patience(p));
        }
        if let Some(v) = self
            .placement
            .value_of_hour
            .filter(|v| !(*v >= 0.0 && v.is_finite()))
        {
            return Err(SpecError::ValueOfHour(v));
        }
        if let Some(d) = self.placement.deadline_ms {
            if !DEADLINE_RANGE_MS.contains(&d) {
                return Err(SpecError::Deadline(d));
            }
        }
        if self.webhooks.len() > MAX_JOB_WEBHOOKS {
            return Err(SpecError::Webhook(format!(
                "a job names at most {MAX_JOB_WEBHOOKS} webhooks, not {}",
                self.webhooks.len()
            )));
        }
        for url in &self.webhooks {
            check_webhook_url(url).map_err(SpecError::Webhook)?;
        }
        Ok(())
    }

    /// The content-hashed tasks of this job, in frame order.
    pub fn tasks(&self) -> Result<Vec<(FrameChunk, ContentHash)>, SpecError> {
        Ok(self
            .frames
            .chunks(self.chunk)?
            .into_iter()
            .map(|chunk| (chunk, task_key(self, &chunk)))
            .collect())
    }
}

/// Longest output pattern: the names made from it (frame digits beyond its `#` run, and the
/// extension) must still be file names the output manifest accepts (200 bytes).
pub const MAX_OUTPUT_PATTERN: usize = 180;

pub(crate) fn validate_output_pattern(pattern: &str) -> Result<(), SpecError> {
    if pattern.len() > MAX_OUTPUT_PATTERN {
        return Err(SpecError::OutputPatternLength(pattern.len()));
    }
    validate_file_name(pattern)?;
    let runs = pattern
        .as_bytes()
        .split(|&b| b != b'#')
        .filter(|r| !r.is_empty())
        .count();
    if runs != 1 || pattern.matches('#').count() > 10 {
        return Err(SpecError::OutputPattern(pattern.to_string()));
    }
    Ok(())
}

/// The output file name of `frame`: the pattern's `#` run becomes the zero-padded frame.
pub fn output_file_name(pattern: &str, frame: u32, ext: &str) -> String {
    let width = pattern.matches('#').count();
    let start = pattern.find('#').unwrap_or(pattern.len());
    let end = start + width;
    format!(
        "{}{:0width$}{}.{ext}",
        &pattern[..start],
        frame,
        &pattern[end.min(pattern.len())..],
        width = width
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn the_longest_output_pattern_still_makes_valid_file_names() {
        let pattern = format!("{}#", "x".repeat(MAX_OUTPUT_PATTERN - 1));
        validate_output_pattern(&pattern).unwrap();
        let name = output_file_name(&pattern, u32::MAX, "jpeg");
        crate::names::validate_file_name(&name).unwrap();
        let err = validate_output_pattern(&format!("x{pattern}")).unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");
    }
    use crate::protocol::manifest::InputManifest;
    use crate::protocol::renderer::RendererSpec;

    /// A valid builtin job of 8 frames in chunks of 2.
    pub(crate) fn spec() -> JobSpec {
        JobSpec {
            webhooks: vec![],
            limits: Default::default(),
            requirements: Default::default(),
            name: "shot010".into(),
            studio: Studio::default(),
            priority: 0,
            frames: "1-8".parse().unwrap(),
            chunk: 2,
            regions: vec![],
            max_retries: 2,
            task_timeout_secs: 600,
            renderer: RendererSpec::Builtin {
                width: 64,
                height: 36,
                samples: 2,
            },
            inputs: InputManifest::default().hash(),
            scene: None,
            output: "frame_####".into(),
            placement: Placement::default(),
        }
    }

    #[test]
    fn chunking_the_inputs_does_not_change_task_keys() {
        use crate::protocol::manifest::{ChunkRef, InputEntry};
        let data = b"a large cache file";
        let mut whole = InputManifest::default();
        whole.files.insert(
            "cache.vdb".into(),
            InputEntry::whole(ContentHash::of(data), data.len() as u64, 0o644),
        );
        let mut chunked = whole.clone();
        chunked.files.get_mut("cache.vdb").unwrap().chunks = data
            .chunks(5)
            .map(|c| ChunkRef {
                hash: ContentHash::of(c),
                size: c.len() as u64,
            })
            .collect();
        let keys = |m: &InputManifest| {
            let s = JobSpec {
                inputs: m.hash(),
                ..spec()
            };
            s.tasks()
                .unwrap()
                .into_iter()
                .map(|t| t.1)
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&whole), keys(&chunked));
        // The key still follows the files' content.
        let mut other = whole.clone();
        other.files.get_mut("cache.vdb").unwrap().hash = ContentHash::of(b"changed");
        assert_ne!(keys(&whole), keys(&other));
    }

    #[test]
    fn task_keys_ignore_names_and_follow_pixels() {
        let a = spec();
        let keys = |s: &JobSpec| {
            s.tasks()
                .unwrap()
                .into_iter()
                .map(|t| t.1)
                .collect::<Vec<_>>()
        };
        let base = keys(&a);
        assert_eq!(base.len(), 4);
        let mut b = a.clone();
        b.name = "renamed".into();
        b.priority = 9;
        b.max_retries = 0;
        b.studio = "acme".parse().unwrap();
        assert_eq!(
            keys(&b),
            base,
            "name, priority, retries and studio do not change pixels"
        );
        b.placement = Placement {
            policy: Some(Policy::Greenest),
            deadline_ms: Some(1_900_000_000_000),
            max_slots: Some(3),
            patience: Some(2.0),
            value_of_hour: Some(5000.0),
        };
        assert_eq!(keys(&b), base, "placement does not change pixels");
        let mut c = a.clone();
        c.renderer = RendererSpec::Builtin {
            width: 64,
            height: 36,
            samples: 3,
        };
        assert!(keys(&c).iter().zip(&base).all(|(x, y)| x != y));
        let mut d = a.clone();
        d.frames = "1-7,8".parse().unwrap();
        assert_eq!(keys(&d), base, "same frames, same chunks, same keys");
        let mut e = a.clone();
        e.frames = "1-6,8".parse().unwrap();
        assert_eq!(keys(&e)[..3], base[..3], "unchanged chunks keep their keys");
    }

    #[test]
    fn validation_refuses_bad_specs() {
        assert!(spec().validate().is_ok());
        let mut s = spec();
        s.chunk = 0;
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("chunk size 0"));
        let mut s = spec();
        s.output = "../frame_####".into();
        assert!(s.validate().is_err());
        s.output = "frame".into();
        assert!(matches!(s.validate(), Err(SpecError::OutputPattern(_))));
        s.output = "f##_##".into();
        assert!(matches!(s.validate(), Err(SpecError::OutputPattern(_))));
        let mut s = spec();
        s.renderer = RendererSpec::Command {
            argv: vec!["render".into(), "{frames}".into()],
            profile: None,
            args: Default::default(),
            version: String::new(),
            ext: "png".into(),
        };
        s.scene = Some("a.scn".into());
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("unknown placeholder"));
        s.scene = None;
        s.renderer = RendererSpec::Command {
            argv: vec!["render".into(), "{frame:04}".into()],
            profile: None,
            args: Default::default(),
            version: String::new(),
            ext: "png".into(),
        };
        assert_eq!(s.validate(), Err(SpecError::MissingScene("command")));
    }

    #[test]
    fn placement_fields_default_validate_and_stay_flat() {
        let s = spec();
        let mut json = serde_json::to_value(&s).unwrap();
        assert!(json.get("policy").is_none() && json.get("placement").is_none());
        // A record written before placement and studios existed still decodes.
        json.as_object_mut().unwrap().remove("studio");
        let old: JobSpec = serde_json::from_value(json).unwrap();
        assert_eq!(old.placement, Placement::default());
        assert_eq!(old.studio, Studio::default());
        let mut p = spec();
        p.placement = Placement {
            policy: Some(Policy::Cheapest),
            deadline_ms: Some(1_900_000_000_000),
            max_slots: Some(8),
            ..Placement::default()
        };
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["policy"], "cheapest");
        assert_eq!(json["deadline_ms"], 1_900_000_000_000u64);
        assert_eq!(json["max_slots"], 8);
        assert_eq!(serde_json::from_value::<JobSpec>(json).unwrap(), p);
        assert!(p.validate().is_ok());
        p.placement.max_slots = Some(0);
        assert_eq!(p.validate(), Err(SpecError::MaxSlots));
        p.placement.max_slots = None;
        p.placement.patience = Some(0.9);
        assert_eq!(p.validate(), Err(SpecError::Patience(0.9)));
        p.placement.patience = Some(2.0);
        p.placement.value_of_hour = Some(-1.0);
        assert_eq!(p.validate(), Err(SpecError::ValueOfHour(-1.0)));
        p.placement.value_of_hour = Some(500.0);
        assert_eq!(p.validate(), Ok(()));
        p.placement.max_slots = None;
        p.placement.deadline_ms = Some(1_900_000_000);
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("seconds given by mistake"));
        assert_eq!("fastest".parse::<Policy>(), Ok(Policy::Fastest));
        assert!("cheap"
            .parse::<Policy>()
            .unwrap_err()
            .to_string()
            .contains("known: balanced, cheapest, fastest, greenest"));
        for policy in Policy::ALL {
            assert_eq!(policy.as_str().parse::<Policy>(), Ok(policy));
        }
    }

    #[test]
    fn output_names_pad_the_frame() {
        assert_eq!(output_file_name("frame_####", 7, "png"), "frame_0007.png");
        assert_eq!(output_file_name("s#_v2", 12345, "exr"), "s12345_v2.exr");
    }
}
