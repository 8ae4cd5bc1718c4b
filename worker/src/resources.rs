//! What this worker has and what its running tasks hold. It exists so that a worker runs as
//! many tasks at once as its cores, memory and GPUs allow (its slots are only an upper bound),
//! and so that each GPU task gets devices no other task holds. GPUs are found with
//! `nvidia-smi`; a machine without it simply has none.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use suanli_shared::protocol::{parse_size_mib, Gpu, GpuUse, Requirements, Resources};
use tokio::sync::Notify;

use crate::state::lock;

/// Which GPUs a worker offers (`--gpus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuChoice {
    /// Every GPU `nvidia-smi` lists; none when it is absent.
    Auto,
    /// The first N GPUs `nvidia-smi` lists; an error when it lists fewer.
    Count(u32),
    /// None, whatever the machine has.
    None,
}

impl std::str::FromStr for GpuChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "none" => Ok(Self::None),
            n => n
                .parse::<u32>()
                .map(|n| if n == 0 { Self::None } else { Self::Count(n) })
                .map_err(|_| format!("--gpus takes auto, none or a number, not '{s}'")),
        }
    }
}

/// The arguments `nvidia-smi` is run with: one CSV line per GPU.
pub const NVIDIA_SMI_QUERY: [&str; 2] = [
    "--query-gpu=index,name,memory.total,uuid",
    "--format=csv,noheader",
];

/// The GPUs this worker offers. `nvidia-smi` not found is no GPU; found but failing, or
/// printing what cannot be read, is an error (a GPU machine whose driver is broken should not
/// quietly join as a CPU worker).
pub fn detect_gpus(choice: GpuChoice) -> Result<Vec<Gpu>, String> {
    if choice == GpuChoice::None {
        return Ok(Vec::new());
    }
    let listed = match Command::new("nvidia-smi").args(NVIDIA_SMI_QUERY).output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot run nvidia-smi: {e}")),
        Ok(out) if !out.status.success() => {
            return Err(format!(
                "nvidia-smi failed ({}): {} (use --gpus none to run without GPUs)",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
        Ok(out) => Some(parse_nvidia_smi(&String::from_utf8_lossy(&out.stdout))?),
    };
    match (choice, listed) {
        (GpuChoice::Count(n), None) => Err(format!(
            "--gpus {n}: nvidia-smi is not on PATH, so this machine shows no GPU"
        )),
        (GpuChoice::Count(n), Some(gpus)) if (gpus.len() as u32) < n => Err(format!(
            "--gpus {n}: nvidia-smi lists only {} GPU(s)",
            gpus.len()
        )),
        (GpuChoice::Count(n), Some(mut gpus)) => {
            gpus.truncate(n as usize);
            Ok(gpus)
        }
        (_, listed) => Ok(listed.unwrap_or_default()),
    }
}

/// Reads `nvidia-smi --query-gpu=index,name,memory.total,uuid --format=csv,noheader`:
/// `0, NVIDIA GeForce RTX 4090, 24564 MiB, GPU-…` per line.
pub fn parse_nvidia_smi(text: &str) -> Result<Vec<Gpu>, String> {
    let mut gpus = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let bad =
            || format!("cannot read nvidia-smi's line '{line}' (index, name, memory.total, uuid)");
        let [index, name, memory, uuid] = fields[..] else {
            return Err(bad());
        };
        gpus.push(Gpu {
            index: index.parse().map_err(|_| bad())?,
            name: name.to_string(),
            memory_mib: parse_size_mib(memory).map_err(|_| bad())?,
            uuid: uuid.to_string(),
        });
    }
    Ok(gpus)
}

/// This machine's memory in MiB (`/proc/meminfo`'s `MemTotal`), if it can be read.
pub fn machine_memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string(Path::new("/proc/meminfo")).ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// What is free now.
#[derive(Debug)]
struct Free {
    cores: u32,
    memory_mib: u64,
    gpus: BTreeSet<u32>,
}

/// The worker's resources and what its running tasks hold.
#[derive(Debug)]
pub(crate) struct Pool {
    total: Resources,
    free: Mutex<Free>,
    freed: Notify,
}

/// What one task holds; given back when dropped.
#[derive(Debug)]
pub(crate) struct Held {
    pool: Arc<Pool>,
    cores: u32,
    memory_mib: u64,
    /// The devices this task may use, by index.
    pub gpus: Vec<u32>,
}

impl Pool {
    pub fn new(total: Resources) -> Arc<Self> {
        Arc::new(Self {
            free: Mutex::new(Free {
                cores: total.cores,
                memory_mib: total.memory_mib,
                gpus: total.gpus.iter().map(|g| g.index).collect(),
            }),
            total,
            freed: Notify::new(),
        })
    }

    pub fn total(&self) -> &Resources {
        &self.total
    }

    /// GPUs running tasks hold now.
    pub fn gpus_busy(&self) -> u32 {
        let free = lock(&self.free).gpus.len();
        (self.total.gpus.len().saturating_sub(free)) as u32
    }

    /// The GPU use of a run that held `gpus` for `wall_secs`; `None` when it held none.
    pub fn gpu_use(&self, gpus: &[u32], wall_secs: f64) -> Option<GpuUse> {
        let first = gpus.first()?;
        let model = self
            .total
            .gpus
            .iter()
            .find(|g| g.index == *first)
            .map_or_else(String::new, |g| g.name.clone());
        Some(GpuUse {
            count: gpus.len() as u32,
            model,
            seconds: wall_secs * gpus.len() as f64,
        })
    }

    /// Takes what a task needs if it is free now. Cores and memory asked beyond the whole
    /// machine are capped at it, so a task that fits (checked by the caller) can always run
    /// once the others are done.
    fn try_take(self: &Arc<Self>, req: &Requirements) -> Option<Held> {
        let mut free = lock(&self.free);
        let cores = req.cores_held().min(self.total.cores);
        let memory_mib = req.memory_mib.unwrap_or(0).min(self.total.memory_mib);
        if free.cores < cores || free.memory_mib < memory_mib {
            return None;
        }
        let gpus: Vec<u32> = self
            .total
            .gpus
            .iter()
            .filter(|g| free.gpus.contains(&g.index) && req.accepts_gpu(g))
            .map(|g| g.index)
            .take(req.gpus as usize)
            .collect();
        if (gpus.len() as u32) < req.gpus {
            return None;
        }
        free.cores -= cores;
        free.memory_mib -= memory_mib;
        for g in &gpus {
            free.gpus.remove(g);
        }
        Some(Held {
            pool: self.clone(),
            cores,
            memory_mib,
            gpus,
        })
    }

    /// Waits until what a task needs is free, then takes it.
    pub async fn acquire(self: &Arc<Self>, req: &Requirements) -> Held {
        loop {
            let freed = self.freed.notified();
            if let Some(h) = self.try_take(req) {
                return h;
            }
            freed.await;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        {
            let mut free = lock(&self.pool.free);
            free.cores += self.cores;
            free.memory_mib += self.memory_mib;
            free.gpus.extend(self.gpus.iter().copied());
        }
        self.pool.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMI: &str = "0, NVIDIA GeForce RTX 4090, 24564 MiB, GPU-aaaa\n1, NVIDIA GeForce RTX 4090, 24564 MiB, GPU-bbbb\n";

    fn pool() -> Arc<Pool> {
        Pool::new(Resources {
            cores: 8,
            memory_mib: 32 * 1024,
            gpus: parse_nvidia_smi(SMI).unwrap(),
            tags: Vec::new(),
        })
    }

    #[test]
    fn reads_nvidia_smi() {
        let gpus = parse_nvidia_smi(SMI).unwrap();
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[1].index, 1);
        assert_eq!(gpus[1].name, "NVIDIA GeForce RTX 4090");
        assert_eq!(gpus[1].memory_mib, 24564);
        assert_eq!(gpus[1].uuid, "GPU-bbbb");
        assert!(parse_nvidia_smi("0, x\n")
            .unwrap_err()
            .contains("cannot read"));
        assert!(parse_nvidia_smi("").unwrap().is_empty());
    }

    #[test]
    fn gpu_choice() {
        assert_eq!("auto".parse(), Ok(GpuChoice::Auto));
        assert_eq!("none".parse(), Ok(GpuChoice::None));
        assert_eq!("2".parse(), Ok(GpuChoice::Count(2)));
        assert!("two".parse::<GpuChoice>().unwrap_err().contains("--gpus"));
    }

    #[tokio::test]
    async fn tasks_get_their_own_devices_and_give_them_back() {
        let p = pool();
        let one = Requirements {
            gpus: 1,
            ..Default::default()
        };
        let a = p.acquire(&one).await;
        let b = p.acquire(&one).await;
        assert_ne!(a.gpus, b.gpus);
        assert!(p.try_take(&one).is_none(), "both GPUs are held");
        let two = Requirements {
            gpus: 2,
            ..Default::default()
        };
        let waiting = tokio::spawn({
            let (p, two) = (p.clone(), two.clone());
            async move { p.acquire(&two).await.gpus.clone() }
        });
        drop(a);
        assert!(p.try_take(&two).is_none(), "one GPU is still held");
        drop(b);
        assert_eq!(waiting.await.unwrap(), vec![0, 1]);
    }

    #[test]
    fn memory_bounds_how_many_run() {
        let p = pool();
        let heavy = Requirements {
            memory_mib: Some(12 * 1024),
            ..Default::default()
        };
        let a = p.try_take(&heavy).unwrap();
        let _b = p.try_take(&heavy).unwrap();
        assert!(p.try_take(&heavy).is_none());
        drop(a);
        assert!(p.try_take(&heavy).is_some());
    }

    #[test]
    fn a_task_that_asks_nothing_holds_nothing() {
        let p = pool();
        let held: Vec<Held> = (0..20)
            .map(|_| {
                p.try_take(&Requirements::default())
                    .expect("only slots bound it")
            })
            .collect();
        assert!(held.iter().all(|h| h.gpus.is_empty()));
        let four = Requirements {
            cores: Some(4),
            ..Default::default()
        };
        let _a = p.try_take(&four).unwrap();
        let _b = p.try_take(&four).unwrap();
        assert!(p.try_take(&four).is_none(), "8 cores hold two 4-core tasks");
    }
}
