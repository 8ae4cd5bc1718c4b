//! The operator terminal's view of the farm: [`suanli_tui::FarmApi`] over the typed API
//! client, the region queues' consumer info for queue depths, a core subscription to the
//! event subjects, and the object store for frame previews. `suanli tui` and `suanli demo`
//! start the terminal through here.

use std::collections::BTreeMap;
use std::path::PathBuf;

use futures::stream::BoxStream;
use futures::StreamExt;
use suanli_shared::protocol::api::TasksPage;
use suanli_shared::protocol::{JobStatus, OutputFile, WorkerInfo};
use suanli_shared::regions::RegionProfile;
use suanli_shared::store::Store;
use suanli_shared::{layout, nats, ContentHash, JobId, Region, Studio, WorkerId};
use suanli_tui::{FarmApi, FarmError, FarmEvent};
use tokio::sync::OnceCell;

use crate::client::{Client, ClientConfig, ClientError};
use suanli_shared::access::Access;

/// The farm as the terminal sees it. Connects lazily: the terminal comes up (with its
/// disconnected banner) even when NATS is not there yet, and connects when it is.
pub struct TuiFarm {
    api: ClientConfig,
    client: OnceCell<Client>,
    store: Option<Store>,
}

impl TuiFarm {
    pub fn new(api: ClientConfig, store: Option<Store>) -> Self {
        Self {
            api,
            client: OnceCell::new(),
            store,
        }
    }

    /// Over a client that is already connected (the demo's).
    pub fn with_client(client: Client, store: Option<Store>) -> Self {
        Self {
            api: ClientConfig {
                url: String::new(),
                caller: client.caller().clone(),
                access: Access::none(),
            },
            client: OnceCell::new_with(Some(client)),
            store,
        }
    }

    async fn client(&self) -> Result<&Client, FarmError> {
        let client = self
            .client
            .get_or_try_init(|| self.api.connect())
            .await
            .map_err(|e| FarmError::unreachable(format!("{e:#}")))?;
        // The client reconnects by itself; meanwhile say so instead of waiting for a timeout.
        if client.nats().connection_state() == async_nats::connection::State::Disconnected {
            return Err(FarmError::unreachable("NATS connection lost, reconnecting"));
        }
        Ok(client)
    }
}

fn farm_error(e: ClientError) -> FarmError {
    match e {
        ClientError::Api(e) => FarmError::refused(e.message),
        other => FarmError::unreachable(other.to_string()),
    }
}

impl FarmApi for TuiFarm {
    async fn jobs(&self) -> Result<Vec<JobStatus>, FarmError> {
        self.client().await?.jobs().await.map_err(farm_error)
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, FarmError> {
        self.client().await?.workers().await.map_err(farm_error)
    }

    async fn tasks(&self, job: &JobId, offset: u32, limit: u32) -> Result<TasksPage, FarmError> {
        self.client()
            .await?
            .tasks(job, offset, limit)
            .await
            .map_err(farm_error)
    }

    async fn regions(&self) -> Result<Vec<RegionProfile>, FarmError> {
        self.client().await?.regions().await.map_err(farm_error)
    }

    async fn queue_depths(&self, regions: &[Region]) -> Result<BTreeMap<Region, u64>, FarmError> {
        let client = self.client().await?;
        let js = async_nats::jetstream::new(client.nats().clone());
        let stream = js
            .get_stream_no_info(nats::TASKS_STREAM)
            .await
            .map_err(|e| FarmError::unreachable(e.to_string()))?;
        let mut out = BTreeMap::new();
        for region in regions {
            // A region whose consumer does not exist yet has no queue to show.
            if let Ok(info) = stream.consumer_info(nats::region_consumer(region)).await {
                out.insert(region.clone(), info.num_pending);
            }
        }
        Ok(out)
    }

    async fn cancel(&self, job: &JobId) -> Result<JobStatus, FarmError> {
        self.client().await?.cancel(job).await.map_err(farm_error)
    }

    async fn retry(&self, job: &JobId) -> Result<JobStatus, FarmError> {
        self.client().await?.retry(job).await.map_err(farm_error)
    }

    async fn drain(&self, region: &Region, worker: &WorkerId) -> Result<WorkerInfo, FarmError> {
        self.client()
            .await?
            .drain(region, worker)
            .await
            .map_err(farm_error)
    }

    async fn events(&self) -> Result<BoxStream<'static, FarmEvent>, FarmError> {
        let sub = self
            .client()
            .await?
            .nats()
            .subscribe(nats::ALL_EVENTS)
            .await
            .map_err(|e| FarmError::unreachable(e.to_string()))?;
        Ok(sub
            .filter_map(|msg| async move {
                nats::decode_event(&msg.subject, &msg.payload)
                    .ok()
                    .map(|(_, event)| event)
            })
            .boxed())
    }

    async fn read_output(
        &self,
        studio: &Studio,
        task_key: &ContentHash,
        file: &OutputFile,
    ) -> Result<Vec<u8>, FarmError> {
        let store = self.store.as_ref().ok_or_else(|| {
            FarmError::refused("no object store to read frames from: pass --store URL")
        })?;
        store
            .get_bytes(&layout::output_file(
                studio, task_key, &file.hash, &file.name,
            ))
            .await
            .map(|b| b.to_vec())
            .map_err(|e| FarmError::unreachable(e.to_string()))
    }
}

/// `suanli tui`: the terminal against the farm `api` names, previews from `store`.
pub async fn run(api: &ClientConfig, store: &str) -> anyhow::Result<u8> {
    // Without a store the terminal still runs; only the preview says why it cannot show.
    let store = open_existing_store(store);
    let options = suanli_tui::Options {
        stderr_log: Some(stderr_log_path()),
        ..Default::default()
    };
    suanli_tui::run(TuiFarm::new(api.clone(), store), options).await?;
    Ok(0)
}

/// Opens the store unless it is a local folder that does not exist: a viewer should not
/// create `./suanli-store` wherever it is started (opening a local store creates its folder).
fn open_existing_store(url: &str) -> Option<Store> {
    let local = match url.strip_prefix("file://") {
        Some(path) => Some(path),
        None if !url.contains("://") => Some(url),
        None => None,
    };
    if local.is_some_and(|path| !std::path::Path::new(path).is_dir()) {
        return None;
    }
    Store::open(url).ok()
}

fn stderr_log_path() -> PathBuf {
    std::env::temp_dir().join(format!("suanli-tui-{}.log", std::process::id()))
}
