//! The runtime's side of the farm: polls, operator actions and previews through a fake
//! [`FarmApi`], timeouts on paused time, and event decoding.

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures::stream::BoxStream;
use futures::StreamExt;
use suanli_shared::nats;
use suanli_shared::protocol::api::TasksPage;
use suanli_shared::protocol::{EventKind, JobEvent, JobState, JobStatus, OutputFile, WorkerInfo};
use suanli_shared::regions::RegionProfile;
use suanli_shared::{ContentHash, JobId, Region, Studio, WorkerId};
use suanli_tui::fixtures::{self, NOW};
use suanli_tui::{
    perform, poll_once, Action, Effect, FarmApi, FarmError, FarmErrorKind, FarmEvent,
};

/// A farm in memory. `hang` makes every poll call wait forever (a dead network);
/// `depths_fail` makes the queue depths fail alone.
#[derive(Default)]
struct FakeFarm {
    hang: bool,
    refuse: bool,
    depths_fail: bool,
    /// Output files by studio and name.
    files: BTreeMap<(String, String), Vec<u8>>,
    calls: Mutex<Vec<String>>,
}

impl FakeFarm {
    fn log(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    async fn gate(&self) -> Result<(), FarmError> {
        if self.hang {
            std::future::pending::<()>().await;
        }
        if self.refuse {
            return Err(FarmError::refused("no job 01jobfixture00000000000003"));
        }
        Ok(())
    }
}

impl FarmApi for FakeFarm {
    async fn jobs(&self) -> Result<Vec<JobStatus>, FarmError> {
        self.gate().await?;
        Ok(fixtures::farm_snapshot().jobs)
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, FarmError> {
        self.gate().await?;
        Ok(fixtures::farm_snapshot().workers)
    }

    async fn tasks(&self, job: &JobId, offset: u32, limit: u32) -> Result<TasksPage, FarmError> {
        self.log(format!("tasks {job} {offset} {limit}"));
        Ok(TasksPage {
            total: 0,
            offset,
            tasks: Vec::new(),
        })
    }

    async fn regions(&self) -> Result<Vec<RegionProfile>, FarmError> {
        Err(FarmError::refused("unknown API subject suanli.api.regions"))
    }

    async fn queue_depths(&self, regions: &[Region]) -> Result<BTreeMap<Region, u64>, FarmError> {
        if self.depths_fail {
            return Err(FarmError::unreachable("no JetStream"));
        }
        Ok(regions.iter().map(|r| (r.clone(), 7)).collect())
    }

    async fn cancel(&self, job: &JobId) -> Result<JobStatus, FarmError> {
        self.log(format!("cancel {job}"));
        self.gate().await?;
        let mut s = fixtures::farm_snapshot().jobs.remove(0);
        s.state = JobState::Canceled;
        Ok(s)
    }

    async fn retry(&self, job: &JobId) -> Result<JobStatus, FarmError> {
        self.log(format!("retry {job}"));
        self.gate().await?;
        Ok(fixtures::farm_snapshot().jobs.remove(0))
    }

    async fn drain(&self, region: &Region, worker: &WorkerId) -> Result<WorkerInfo, FarmError> {
        self.log(format!("drain {region} {worker}"));
        self.gate().await?;
        Ok(fixtures::farm_snapshot().workers.remove(0))
    }

    async fn events(&self) -> Result<BoxStream<'static, FarmEvent>, FarmError> {
        Ok(futures::stream::empty().boxed())
    }

    async fn read_output(
        &self,
        studio: &Studio,
        _task_key: &ContentHash,
        file: &OutputFile,
    ) -> Result<Vec<u8>, FarmError> {
        self.files
            .get(&(studio.to_string(), file.name.clone()))
            .cloned()
            .ok_or_else(|| FarmError::unreachable("not in the store"))
    }
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut wr = enc.write_header().unwrap();
    wr.write_image_data(&vec![200; (w * h * 3) as usize])
        .unwrap();
    wr.finish().unwrap();
    out
}

fn file(name: &str, bytes: &[u8]) -> OutputFile {
    OutputFile {
        frame: 1,
        name: name.into(),
        hash: ContentHash::of(bytes),
        size: bytes.len() as u64,
    }
}

#[tokio::test]
async fn a_poll_gathers_jobs_workers_and_queue_depths() {
    let farm = FakeFarm::default();
    let snap = poll_once(&farm).await.unwrap();
    assert_eq!(snap.jobs.len(), 3);
    assert_eq!(snap.workers.len(), 4);
    assert_eq!(snap.depths.values().copied().collect::<Vec<_>>(), [7, 7]);
    // Queue depths are optional: the poll still succeeds without them.
    let farm = FakeFarm {
        depths_fail: true,
        ..FakeFarm::default()
    };
    let snap = poll_once(&farm).await.unwrap();
    assert!(snap.depths.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_poll_that_hangs_times_out_as_unreachable() {
    let farm = FakeFarm {
        hang: true,
        ..FakeFarm::default()
    };
    let started = tokio::time::Instant::now();
    let err = poll_once(&farm).await.unwrap_err();
    assert_eq!(err.kind, FarmErrorKind::Unreachable);
    assert_eq!(err.message, "no answer within 3s");
    assert_eq!(started.elapsed().as_secs(), 3);
}

#[tokio::test]
async fn operator_actions_report_how_they_went() {
    let farm = FakeFarm::default();
    let job = fixtures::job_id(3);
    let done = perform(
        &farm,
        Effect::Cancel {
            job: job.clone(),
            name: "shot010".into(),
        },
    )
    .await;
    assert_eq!(done, Action::Done("job shot010 is canceled".into()));
    let drained = perform(
        &farm,
        Effect::Drain {
            region: fixtures::region("guian"),
            worker: fixtures::worker_id("guian-1"),
        },
    )
    .await;
    assert_eq!(
        drained,
        Action::Done("worker guian/guian-1 is draining".into())
    );
    assert_eq!(
        *farm.calls.lock().unwrap(),
        [format!("cancel {job}"), "drain guian guian-1".to_string()]
    );
    let refusing = FakeFarm {
        refuse: true,
        ..FakeFarm::default()
    };
    let failed = perform(
        &refusing,
        Effect::Retry {
            job,
            name: "shot010".into(),
        },
    )
    .await;
    assert_eq!(
        failed,
        Action::Failed("cannot retry job shot010: no job 01jobfixture00000000000003".into())
    );
}

#[tokio::test]
async fn previews_are_verified_and_shrunk() {
    let good = png(640, 360);
    let mut farm = FakeFarm::default();
    let acme: Studio = "acme".parse().unwrap();
    let stored = |name: &str| ("acme".to_string(), name.to_string());
    farm.files.insert(stored("frame_0001.png"), good.clone());
    farm.files
        .insert(stored("frame_0002.png"), b"tampered".to_vec());
    let key = ContentHash::of(b"task");
    let ok = perform(
        &farm,
        Effect::LoadPreview {
            studio: acme.clone(),
            key,
            file: file("frame_0001.png", &good),
        },
    )
    .await;
    let Action::Preview {
        result: Ok(thumb),
        name,
        ..
    } = ok
    else {
        panic!("expected a preview, got {ok:?}");
    };
    assert_eq!(name, "frame_0001.png");
    assert_eq!(
        (thumb.width, thumb.height, thumb.source),
        (200, 113, (640, 360))
    );
    // Bytes that do not match the committed hash are not shown.
    let bad = perform(
        &farm,
        Effect::LoadPreview {
            studio: acme.clone(),
            key,
            file: file("frame_0002.png", &good),
        },
    )
    .await;
    assert!(
        matches!(&bad, Action::Preview { result: Err(e), .. } if e.contains("does not match its hash")),
        "{bad:?}"
    );
    let exr = perform(
        &farm,
        Effect::LoadPreview {
            studio: acme.clone(),
            key,
            file: file("frame_0001.exr", &good),
        },
    )
    .await;
    assert!(
        matches!(&exr, Action::Preview { result: Err(e), .. } if e.contains("only PNG")),
        "{exr:?}"
    );
    // Frames are read under the job's studio, not another's.
    let elsewhere = perform(
        &farm,
        Effect::LoadPreview {
            studio: "blue".parse().unwrap(),
            key,
            file: file("frame_0001.png", &good),
        },
    )
    .await;
    assert!(
        matches!(&elsewhere, Action::Preview { result: Err(e), .. } if e.contains("not in the store")),
        "{elsewhere:?}"
    );
}

#[test]
fn events_decode_from_their_wire_form() {
    // The terminal reads events through the farm's one decoder (subject kind, then body).
    let decode = |subject: &str, bytes: &[u8]| nats::decode_event(subject, bytes).ok().map(|d| d.1);
    let id = fixtures::job_id(3);
    let studio = suanli_shared::Studio::default();
    let ev = fixtures::completed(&id, 4, "guian", "guian-1", NOW, 1_000);
    let bytes = serde_json::to_vec(&ev).unwrap();
    let completed = nats::task_event_subject(
        &studio,
        &id,
        EventKind::Completed,
        &"guian".parse().unwrap(),
    );
    assert_eq!(decode(&completed, &bytes), Some(FarmEvent::Task(ev)));
    let job = JobEvent {
        job: id.clone(),
        state: JobState::Done,
        at_ms: NOW,
        reason: None,
    };
    let bytes = serde_json::to_vec(&job).unwrap();
    let job_subject = nats::job_event_subject(&studio, &id);
    assert_eq!(decode(&job_subject, &bytes), Some(FarmEvent::Job(job)));
    assert_eq!(decode(&completed, b"{\"heartbeat\": 1}"), None);
    assert_eq!(decode(&completed, b"not json"), None);
}
