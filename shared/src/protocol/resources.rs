//! Heterogeneous compute: what a worker has (`Resources`: cores, memory, GPUs, tags) and what a
//! job's tasks need (`Requirements`). It exists so that the worker (which runs only what fits
//! and hands out devices), the coordinator (which releases only to regions with a worker that
//! fits, and says why a job waits) and the CLI agree on one rule, [`Resources::unmet`].
//! Requirements never enter the task key: they do not change pixels.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One GPU as `nvidia-smi` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    /// The device index, the value `CUDA_VISIBLE_DEVICES` takes.
    pub index: u32,
    /// The model, e.g. `NVIDIA GeForce RTX 4090`.
    pub name: String,
    /// Video memory, MiB.
    pub memory_mib: u64,
    #[serde(default)]
    pub uuid: String,
}

/// What a worker offers its tasks in all (not what is free now).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cores: u32,
    /// Memory for renders, MiB.
    pub memory_mib: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<Gpu>,
    /// Free-form labels a job may ask for (`tags = ["arnold", "fast-disk"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// What each task of a job needs. Unset fields ask for nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    /// Cores each task holds while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
    /// Memory each task holds while it runs, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// GPUs each task holds, each its own.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gpus: u32,
    /// Least video memory of each of those GPUs, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_memory_mib: Option<u64>,
    /// GPU models accepted (any of them; a name matches when it contains the entry, ignoring
    /// case: `4090` matches `NVIDIA GeForce RTX 4090`). Empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_models: Vec<String>,
    /// Tags the worker must have, all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Floating licence seats each task holds while it is released and running, by pool name
    /// (`redshift = 1`). Pools are farm-wide (the region catalog's `[licenses]`), not a
    /// worker's: the coordinator counts them, workers never see them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub licenses: BTreeMap<String, u32>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A licence pool's name: 1-64 ASCII letters, digits, `-` or `_` (`redshift`, `arnold-7`).
pub fn valid_pool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The most GPUs a task may ask for, and the most tags or models it may list.
pub const MAX_TASK_GPUS: u32 = 64;
const MAX_LIST: usize = 32;

/// One requirement a worker does not meet: which, what was asked and what the worker has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmet {
    /// The requirement's name as the job file spells it (`gpus`, `gpu_memory`, `tags`, …).
    pub what: &'static str,
    pub asked: String,
    pub has: String,
}

impl std::fmt::Display for Unmet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} = {} (has {})", self.what, self.asked, self.has)
    }
}

impl Requirements {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether a worker must have something for these requirements (licences are the farm's,
    /// not a worker's).
    pub fn asks_worker(&self) -> bool {
        !Self {
            licenses: BTreeMap::new(),
            ..self.clone()
        }
        .is_empty()
    }

    /// Refuses values no worker could mean: zero cores or memory, absurd GPU counts, empty
    /// names.
    pub fn validate(&self) -> Result<(), String> {
        if self.cores == Some(0) {
            return Err("requirement cores = 0: ask for at least 1, or leave it out".into());
        }
        if self.memory_mib == Some(0) || self.gpu_memory_mib == Some(0) {
            return Err("a memory requirement of 0: leave it out to ask for none".into());
        }
        if self.gpus > MAX_TASK_GPUS {
            return Err(format!(
                "requirement gpus = {} is more than {MAX_TASK_GPUS}",
                self.gpus
            ));
        }
        if self.gpus == 0 && (self.gpu_memory_mib.is_some() || !self.gpu_models.is_empty()) {
            return Err("gpu_memory and gpu_models need gpus = 1 or more".into());
        }
        if self.licenses.len() > MAX_LIST {
            return Err(format!("licenses lists more than {MAX_LIST} pools"));
        }
        for (name, seats) in &self.licenses {
            if !valid_pool_name(name) {
                return Err(format!(
                    "licence pool '{}' must be 1-64 letters, digits, '-' or '_'",
                    crate::names::shown(name)
                ));
            }
            if *seats == 0 {
                return Err(format!(
                    "licenses.{name} = 0: ask for at least 1 seat, or leave it out"
                ));
            }
        }
        for (name, list) in [("gpu_models", &self.gpu_models), ("tags", &self.tags)] {
            if list.len() > MAX_LIST {
                return Err(format!("{name} lists more than {MAX_LIST} entries"));
            }
            if let Some(bad) = list
                .iter()
                .find(|s| s.trim().is_empty() || s.len() > 128 || s.chars().any(char::is_control))
            {
                return Err(format!(
                    "{name} entry '{bad}' must be 1-128 printable characters"
                ));
            }
        }
        Ok(())
    }

    /// The requirements in one line (`gpus = 2, gpu_memory = 24 GiB, tags = arnold`), or
    /// `none`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = self.cores {
            parts.push(format!("cores = {c}"));
        }
        if let Some(m) = self.memory_mib {
            parts.push(format!("memory = {}", fmt_mib(m)));
        }
        if self.gpus > 0 {
            parts.push(format!("gpus = {}", self.gpus));
        }
        if let Some(m) = self.gpu_memory_mib {
            parts.push(format!("gpu_memory = {}", fmt_mib(m)));
        }
        if !self.gpu_models.is_empty() {
            parts.push(format!("gpu_models = {}", self.gpu_models.join("|")));
        }
        if !self.tags.is_empty() {
            parts.push(format!("tags = {}", self.tags.join(",")));
        }
        if !self.licenses.is_empty() {
            let seats: Vec<String> = self
                .licenses
                .iter()
                .map(|(name, n)| format!("{name}={n}"))
                .collect();
            parts.push(format!("licenses = {}", seats.join(",")));
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }

    /// Whether a GPU is one this task may use (memory and model).
    pub fn accepts_gpu(&self, gpu: &Gpu) -> bool {
        self.gpu_memory_mib.is_none_or(|m| gpu.memory_mib >= m)
            && (self.gpu_models.is_empty()
                || self.gpu_models.iter().any(|m| {
                    gpu.name
                        .to_ascii_lowercase()
                        .contains(&m.to_ascii_lowercase())
                }))
    }

    /// Cores a task holds: what it asks, else none. A task that asks for nothing is bounded
    /// by the worker's slots alone, as before workers counted resources.
    pub fn cores_held(&self) -> u32 {
        self.cores.unwrap_or(0)
    }
}

impl Resources {
    /// The requirements this worker does not meet even when idle, in the job file's order;
    /// empty when a task fits. A worker that published no resources (`None`, from before
    /// resources were reported) meets only a job that asks for nothing.
    pub fn unmet(have: Option<&Resources>, req: &Requirements) -> Vec<Unmet> {
        let none = Resources::default();
        let r = match have {
            Some(r) => r,
            None if !req.asks_worker() => return Vec::new(),
            None => &none,
        };
        let mut out = Vec::new();
        if let Some(c) = req.cores {
            if r.cores < c {
                out.push(Unmet {
                    what: "cores",
                    asked: c.to_string(),
                    has: r.cores.to_string(),
                });
            }
        }
        if let Some(m) = req.memory_mib {
            if r.memory_mib < m {
                out.push(Unmet {
                    what: "memory",
                    asked: fmt_mib(m),
                    has: fmt_mib(r.memory_mib),
                });
            }
        }
        if req.gpus > 0 {
            let n_gpus = r.gpus.len() as u32;
            if n_gpus < req.gpus {
                out.push(Unmet {
                    what: "gpus",
                    asked: req.gpus.to_string(),
                    has: n_gpus.to_string(),
                });
            } else {
                let largest = r.gpus.iter().map(|g| g.memory_mib).max().unwrap_or(0);
                if let Some(m) = req.gpu_memory_mib {
                    let enough = r.gpus.iter().filter(|g| g.memory_mib >= m).count() as u32;
                    if enough < req.gpus {
                        out.push(Unmet {
                            what: "gpu_memory",
                            asked: fmt_mib(m),
                            has: format!("{} at most", fmt_mib(largest)),
                        });
                    }
                }
                if !req.gpu_models.is_empty()
                    && (r.gpus.iter().filter(|g| req.accepts_gpu(g)).count() as u32) < req.gpus
                {
                    let mut models: Vec<&str> = r.gpus.iter().map(|g| g.name.as_str()).collect();
                    models.dedup();
                    out.push(Unmet {
                        what: "gpu_models",
                        asked: req.gpu_models.join("|"),
                        has: models.join(", "),
                    });
                }
            }
        }
        let missing: Vec<&str> = req
            .tags
            .iter()
            .filter(|t| !r.tags.contains(t))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            out.push(Unmet {
                what: "tags",
                asked: req.tags.join(","),
                has: if r.tags.is_empty() {
                    "none".into()
                } else {
                    r.tags.join(",")
                },
            });
        }
        out
    }

    /// How many tasks with these requirements this worker could run at once when idle (0 when
    /// one does not fit; `u32::MAX` when nothing it counts bounds them), before its slots.
    pub fn tasks_that_fit(&self, req: &Requirements) -> u32 {
        if !Self::unmet(Some(self), req).is_empty() {
            return 0;
        }
        let mut n = self.cores.checked_div(req.cores_held()).unwrap_or(u32::MAX);
        if let Some(m) = req.memory_mib {
            n = n.min(u32::try_from(self.memory_mib / m).unwrap_or(u32::MAX));
        }
        let usable = self.gpus.iter().filter(|g| req.accepts_gpu(g)).count() as u32;
        if let Some(by_gpus) = usable.checked_div(req.gpus) {
            n = n.min(by_gpus);
        }
        n
    }
}

/// MiB in the largest unit that keeps it whole or readable: `512 MiB`, `24 GiB`, `1.5 TiB`.
pub fn fmt_mib(mib: u64) -> String {
    if mib >= 1 << 20 {
        format!("{:.1} TiB", mib as f64 / f64::from(1u32 << 20))
    } else if mib >= 1024 && mib.is_multiple_of(1024) {
        format!("{} GiB", mib / 1024)
    } else if mib >= 1024 {
        format!("{:.1} GiB", mib as f64 / 1024.0)
    } else {
        format!("{mib} MiB")
    }
}

/// A size as people write it, in MiB: `512M`, `24G`, `24GiB`, `1.5T`; a bare number is MiB.
/// Decimal and binary suffixes are both read as binary (`24G` is 24 GiB), as `nvidia-smi`
/// and `free -g` report.
pub fn parse_size_mib(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("size '{text}' is not a number with a unit, e.g. 24G or 512M"))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 1.0,
        "g" | "gb" | "gib" => 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "size '{text}' has an unknown unit '{other}' (use M, G or T)"
            ))
        }
    };
    let mib = value * factor;
    if !mib.is_finite() || !(1.0..=1e12).contains(&mib) {
        return Err(format!("size '{text}' is out of range (1 MiB to 1e12 MiB)"));
    }
    Ok(mib.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, name: &str, gib: u64) -> Gpu {
        Gpu {
            index,
            name: name.into(),
            memory_mib: gib * 1024,
            uuid: format!("GPU-{index}"),
        }
    }

    fn box_with(gpus: Vec<Gpu>, tags: &[&str]) -> Resources {
        Resources {
            cores: 16,
            memory_mib: 64 * 1024,
            gpus,
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size_mib("512M"), Ok(512));
        assert_eq!(parse_size_mib("24G"), Ok(24 * 1024));
        assert_eq!(parse_size_mib("24GiB"), Ok(24 * 1024));
        assert_eq!(parse_size_mib("1.5T"), Ok(3 << 19));
        assert_eq!(parse_size_mib("2048"), Ok(2048));
        assert!(parse_size_mib("lots").unwrap_err().contains("not a number"));
        assert!(parse_size_mib("3X").unwrap_err().contains("unknown unit"));
        assert!(parse_size_mib("0G").is_err());
        assert_eq!(fmt_mib(24 * 1024), "24 GiB");
        assert_eq!(fmt_mib(1536), "1.5 GiB");
    }

    #[test]
    fn unmet_names_the_requirement_and_what_the_worker_has() {
        let w = box_with(vec![gpu(0, "NVIDIA RTX A5000", 24)], &["arnold"]);
        let req = Requirements {
            gpus: 1,
            gpu_memory_mib: Some(48 * 1024),
            ..Default::default()
        };
        let unmet = Resources::unmet(Some(&w), &req);
        assert_eq!(unmet.len(), 1);
        assert_eq!(
            unmet[0].to_string(),
            "gpu_memory = 48 GiB (has 24 GiB at most)"
        );
        let req = Requirements {
            gpus: 2,
            tags: vec!["arnold".into(), "fast-disk".into()],
            ..Default::default()
        };
        let what: Vec<_> = Resources::unmet(Some(&w), &req)
            .into_iter()
            .map(|u| u.what)
            .collect();
        assert_eq!(what, ["gpus", "tags"]);
        assert!(Resources::unmet(None, &Requirements::default()).is_empty());
        assert_eq!(
            Resources::unmet(None, &req).len(),
            2,
            "an old record meets no requirement"
        );
    }

    #[test]
    fn tasks_that_fit_counts_cores_memory_and_gpus() {
        let w = box_with(
            vec![
                gpu(0, "RTX 4090", 24),
                gpu(1, "RTX 4090", 24),
                gpu(2, "T4", 16),
            ],
            &[],
        );
        let one_gpu = Requirements {
            gpus: 1,
            ..Default::default()
        };
        assert_eq!(w.tasks_that_fit(&one_gpu), 3);
        let big = Requirements {
            gpus: 1,
            gpu_memory_mib: Some(20 * 1024),
            ..Default::default()
        };
        assert_eq!(w.tasks_that_fit(&big), 2);
        let model = Requirements {
            gpus: 1,
            gpu_models: vec!["t4".into()],
            ..Default::default()
        };
        assert_eq!(w.tasks_that_fit(&model), 1);
        let heavy = Requirements {
            memory_mib: Some(40 * 1024),
            ..Default::default()
        };
        assert_eq!(w.tasks_that_fit(&heavy), 1);
        let cores = Requirements {
            cores: Some(6),
            ..Default::default()
        };
        assert_eq!(w.tasks_that_fit(&cores), 2);
        assert_eq!(w.tasks_that_fit(&Requirements::default()), u32::MAX);
    }

    #[test]
    fn validation() {
        let bad = |r: Requirements| r.validate().unwrap_err();
        assert!(bad(Requirements {
            cores: Some(0),
            ..Default::default()
        })
        .contains("cores = 0"));
        assert!(bad(Requirements {
            gpu_memory_mib: Some(1024),
            ..Default::default()
        })
        .contains("need gpus"));
        assert!(bad(Requirements {
            tags: vec![" ".into()],
            ..Default::default()
        })
        .contains("tags entry"));
    }
}
