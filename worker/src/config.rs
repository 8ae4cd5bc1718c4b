//! The worker's settings. They exist apart from the service so that the binary resolves flags
//! and environment once into one value, passed explicitly (no global configuration), and so
//! that every part of the worker reads the same figures.

use std::path::PathBuf;
use std::time::Duration;

use suanli_shared::access::Access;
use suanli_shared::protocol::Resources;
use suanli_shared::{nats, Region, WorkerId};

use crate::policy::RendererPolicy;
use crate::render::sandbox::{SandboxMode, SandboxSettings};

/// Worker settings, resolved once by the binary.
#[derive(Debug, Clone)]
pub struct Config {
    pub nats_url: String,
    /// Identity and CA on a secure farm (the identity must be this region's worker identity).
    pub access: Access,
    pub store_url: String,
    pub region: Region,
    pub name: WorkerId,
    /// Tasks rendered at once.
    pub slots: u32,
    pub cache_dir: PathBuf,
    pub cache_max_bytes: u64,
    /// `--max-download-rate`: bytes per second all input downloads share; `None`: no cap.
    pub max_download_rate: Option<u64>,
    /// Ack wait of the region's consumer (set when the consumer is first created): how long a
    /// silent worker keeps a task before it is redelivered. On a secure farm the coordinator
    /// creates the consumer with [`nats::DEFAULT_ACK_WAIT`] and this is not used.
    pub ack_wait: Duration,
    pub heartbeat: Duration,
    /// How long a draining worker lets running renders finish before handing them back.
    pub drain_grace: Duration,
    /// CPU threads each slot's renderer may use (Blender's `-t`).
    pub threads_per_slot: u32,
    /// Heartbeat age after which a record with this worker's name counts as dead.
    pub lost_after: Duration,
    /// The renderers and command profiles this worker runs; anything else is refused.
    pub renderers: RendererPolicy,
    /// How renders are confined: bubblewrap, the user they run as, the worker's maximum
    /// limits, extra paths to hide. The cache folder and the identity file are always hidden.
    pub sandbox: SandboxSettings,
    /// Cores, memory, GPUs and tags this worker offers: tasks run at once only as far as they
    /// fit (and no more than `slots`), and the record advertises them for placement.
    pub resources: Resources,
    /// Where to serve Prometheus metrics (`GET /metrics`); none by default.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl Config {
    pub fn new(
        nats_url: impl Into<String>,
        store_url: impl Into<String>,
        region: Region,
        name: WorkerId,
        cache_dir: PathBuf,
    ) -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        Self {
            nats_url: nats_url.into(),
            access: Access::none(),
            store_url: store_url.into(),
            region,
            name,
            slots: 1,
            cache_dir,
            cache_max_bytes: 20 << 30,
            max_download_rate: None,
            ack_wait: nats::DEFAULT_ACK_WAIT,
            heartbeat: Duration::from_secs(2),
            drain_grace: Duration::from_secs(30),
            threads_per_slot: cores,
            lost_after: Duration::from_secs(10),
            renderers: RendererPolicy::default(),
            sandbox: SandboxSettings {
                mode: SandboxMode::Off,
                ..Default::default()
            },
            resources: Resources {
                cores,
                memory_mib: crate::resources::machine_memory_mib().unwrap_or(0),
                gpus: Vec::new(),
                tags: Vec::new(),
            },
            metrics_listen: None,
        }
    }
}
