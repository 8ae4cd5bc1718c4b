//! One dispatch round: from the actor's state and the live workers, which backlog tasks go to
//! which region's queue now, and publishing them. The planning half ([`Capacity`],
//! [`plan_round`]) is pure, so the scaling benchmark drives the very code the actor runs; the
//! actor's half records each task as queued in its region, then publishes it.
//!
//! The record comes first because it is what the coordinator checks task events against: a
//! region's reports of a task are folded only when the record says the task is released there.
//! Were the message published first, a coordinator that crashed between the two steps could
//! place the task again elsewhere while the first copy runs, and refuse that copy's reports.
//! Recorded first, a release is published until a publish is acknowledged (the same message id
//! each time, so the queue holds it once): after a failed publish on the next round, and after a
//! restart for every task the records show as queued.
//!
//! A round costs what can change in it, not the size of the jobs: free slots and queue
//! lengths come from each job's index, each job lists only as many ready tasks as the round
//! could release, and a round in which nothing could be released is skipped.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use suanli_shared::nats;
use suanli_shared::protocol::{
    encode, now_ms, JobRecord, Requirements, Resources, TaskAssignment, TaskState, WorkerInfo,
    WorkerState,
};
use suanli_shared::regions::RegionCatalog;
use suanli_shared::studios::{StudioCatalog, StudioTerms};
use suanli_shared::{JobId, Region, Studio, WorkerId};
use tracing::{debug, warn};

use crate::actor::Coordinator;
use crate::dispatch::{self, JobView, RegionView, StudioView};
use crate::learned::Learned;
use crate::licenses;
use crate::placement::Terms;
use crate::state::{self, Job};

/// What the live workers offer a round: per region with live, non-draining workers, their
/// render slots and who they are, and each one's resources (for jobs with requirements). A
/// region with none takes no tasks.
#[derive(Debug, Clone, Default)]
pub struct Capacity {
    regions: BTreeMap<Region, (u32, Vec<WorkerId>)>,
    /// Per region, the resources of each of its workers (`None`: a record from before
    /// resources, which fits only jobs that ask for nothing).
    resources: BTreeMap<Region, Vec<(u32, Option<Resources>)>>,
    /// Free seats per licence pool, farm-wide ([`Capacity::with_seats`]); a job drawing on a
    /// pool not listed takes none.
    seats: licenses::Pools,
}

impl Capacity {
    /// The capacity of these live workers (draining ones offer none).
    pub fn of<'a>(live: impl IntoIterator<Item = &'a WorkerInfo>) -> Self {
        let mut out = Self::default();
        for w in live {
            if w.state != WorkerState::Draining {
                let (slots, workers) = out.regions.entry(w.region.clone()).or_default();
                *slots += w.slots;
                workers.push(w.id.clone());
                out.resources
                    .entry(w.region.clone())
                    .or_default()
                    .push((w.slots, w.resources.clone()));
            }
        }
        out
    }

    /// These free licence seats (the pools less what queued and running tasks hold).
    pub fn with_seats(mut self, seats: licenses::Pools) -> Self {
        self.seats = seats;
        self
    }

    /// The GPU models of a region's live workers.
    fn gpu_models<'a>(&'a self, region: &Region) -> impl Iterator<Item = &'a str> + 'a {
        self.resources
            .get(region)
            .into_iter()
            .flatten()
            .filter_map(|(_, r)| r.as_ref())
            .flat_map(|r| r.gpus.iter().map(|g| g.name.as_str()))
    }

    /// How many more tasks drawing these seats the free pools allow (`u32::MAX` for a job
    /// that draws on none).
    fn seats_allow(&self, wanted: &BTreeMap<String, u32>) -> u32 {
        wanted
            .iter()
            .map(|(name, seats)| {
                self.seats
                    .get(name)
                    .map_or(0, |free| free.checked_div(*seats).unwrap_or(u32::MAX))
            })
            .min()
            .unwrap_or(u32::MAX)
    }

    /// Per region with a live worker that could run a task with these requirements, how
    /// many such tasks its workers could run at once (each worker: what its resources hold,
    /// at most its slots). O(workers), whatever the job's size.
    pub(crate) fn fitting(&self, req: &Requirements) -> BTreeMap<Region, u32> {
        self.resources
            .iter()
            .filter_map(|(region, ws)| {
                let n: u32 = ws
                    .iter()
                    .filter_map(|(slots, r)| r.as_ref().map(|r| r.tasks_that_fit(req).min(*slots)))
                    .sum();
                (n > 0).then(|| (region.clone(), n))
            })
            .collect()
    }
}

/// One task to release: task `task` of job `job` onto `region`'s queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub job: JobId,
    pub task: u32,
    pub region: Region,
}

/// The studios' side of a round: their contracts, and those whose budget stops their releases.
#[derive(Debug, Clone, Copy)]
pub struct Tenancy<'a> {
    pub studios: &'a StudioCatalog,
    /// Studios whose budget limits their releases (`stop` or `cancel`), and how many more
    /// tasks each may release now; at 0 none of its tasks is released.
    pub rooms: &'a BTreeMap<Studio, u32>,
}

impl Tenancy<'_> {
    fn stopped(&self, studio: &Studio) -> bool {
        self.rooms.get(studio) == Some(&0)
    }
}

impl Tenancy<'static> {
    /// Open terms for every studio, none stopped.
    pub fn open() -> Self {
        static ROOMS: BTreeMap<Studio, u32> = BTreeMap::new();
        static STUDIOS: StudioCatalog = StudioCatalog::EMPTY;
        Self {
            studios: &STUDIOS,
            rooms: &ROOMS,
        }
    }
}

/// Plans one round at `now`: the regions' free slots (their live slots, plus `prefetch` per
/// region capped at one per worker, minus the tasks they hold), the studios' shares and quotas,
/// the jobs' ready tasks, and [`dispatch::plan_studios`] to choose. Promotes tasks whose backoff
/// is over; remembers the input fetches the plan starts in `learned`. Changes no task: the
/// caller releases what this returns.
pub fn plan_round(
    jobs: &mut BTreeMap<JobId, Job>,
    capacity: &Capacity,
    learned: &mut Learned,
    catalog: &RegionCatalog,
    tenancy: Tenancy<'_>,
    prefetch: u32,
    now: u64,
) -> Vec<Planned> {
    if capacity.regions.is_empty() {
        return Vec::new();
    }
    let mut free: BTreeMap<&Region, i64> = capacity
        .regions
        .iter()
        .map(|(region, (slots, workers))| {
            let prefetch = (workers.len() as i64).min(i64::from(prefetch));
            (region, i64::from(*slots) + prefetch)
        })
        .collect();
    let mut any_ready = false;
    // Tasks released to each live region and not started, over every job.
    let mut queued: BTreeMap<&Region, u32> = BTreeMap::new();
    // Per studio with unfinished jobs: its contract and what it holds (one entry per job).
    let mut studios: BTreeMap<Studio, (StudioTerms, StudioView)> = BTreeMap::new();
    for job in jobs.values_mut().filter(|j| !j.rec.rec.state.is_final()) {
        job.promote(now);
        let studio = &job.rec.rec.spec.studio;
        if !tenancy.stopped(studio) {
            any_ready |= job.n_ready() > 0;
        }
        let (_, view) = studios.entry(studio.clone()).or_insert_with(|| {
            let terms = tenancy.studios.terms(studio);
            let view = StudioView {
                weight: terms.weight,
                max_slots: terms.max_slots,
                region_slots: terms.region_slots.clone(),
                ..StudioView::default()
            };
            (terms, view)
        });
        view.in_flight += job.in_flight();
        for (region, tasks) in job.in_flight_by_region() {
            if let Some(f) = free.get_mut(region) {
                *f -= tasks.len() as i64;
            }
            *view.in_flight_in.entry(region.clone()).or_default() += tasks.len() as u32;
        }
        for region in capacity.regions.keys() {
            *queued.entry(region).or_default() += job.queued_in(region);
        }
    }
    // The most tasks this round can release: no job needs to list more.
    let room: i64 = free.values().map(|f| (*f).max(0)).sum();
    if room == 0 || !any_ready {
        return Vec::new();
    }
    let region_workers: BTreeMap<&Region, &[WorkerId]> = capacity
        .regions
        .iter()
        .map(|(region, (_, workers))| (region, workers.as_slice()))
        .collect();
    let mut ids = Vec::new();
    let mut views = Vec::new();
    let mut renderers: BTreeSet<String> = BTreeSet::new();
    let studio_index: BTreeMap<&Studio, usize> =
        studios.keys().enumerate().map(|(i, s)| (s, i)).collect();
    for job in jobs.values().filter(|j| !j.rec.rec.state.is_final()) {
        let rec = &job.rec.rec;
        if job.n_ready() == 0 || tenancy.stopped(&rec.spec.studio) {
            continue;
        }
        let (terms, _) = &studios[&rec.spec.studio];
        // The job's regions narrowed to its studio's (a job submitted before its studio's
        // contract changed may be left with none: it waits).
        let base = terms.allowed_for(&rec.spec.regions);
        if base.is_empty() && !terms.regions.is_empty() {
            continue;
        }
        let by_seats = capacity.seats_allow(&rec.spec.requirements.licenses);
        if by_seats == 0 {
            continue; // every seat it needs is held: it waits for one to be given back
        }
        let mut allowed = allowed_regions(rec, &base, &region_workers);
        let mut region_room = BTreeMap::new();
        if rec.spec.requirements.asks_worker() {
            // Only regions with a live worker that fits: elsewhere the task would circle
            // between workers that hand it back.
            let fit = capacity.fitting(&rec.spec.requirements);
            let within = allowed.as_ref().unwrap_or(&base);
            allowed = Some(
                fit.keys()
                    .filter(|r| within.is_empty() || within.contains(r))
                    .cloned()
                    .collect(),
            );
            let held = job.in_flight_by_region();
            region_room = fit
                .into_iter()
                .map(|(region, n)| {
                    let there = held.get(&region).map_or(0, |t| t.len() as u32);
                    (region, n.saturating_sub(there))
                })
                .collect();
        }
        if allowed.as_ref().is_some_and(|a| a.is_empty()) {
            continue;
        }
        let ready: Vec<u32> = job.ready().take(room as usize).collect();
        ids.push(rec.id.clone());
        let mut view = JobView::new(
            rec.spec.priority,
            rec.created_ms,
            job.in_flight(),
            allowed.unwrap_or(base),
            ready,
        );
        view.studio = studio_index[&rec.spec.studio];
        view.more_ready = job.n_ready() - view.ready.len() as u32;
        view.policy = rec.spec.placement.policy.unwrap_or(catalog.policy);
        view.deadline_ms = rec.spec.placement.deadline_ms;
        view.max_slots = rec.spec.placement.max_slots;
        if by_seats != u32::MAX {
            let cap = job.in_flight().saturating_add(by_seats);
            view.max_slots = Some(view.max_slots.map_or(cap, |m| m.min(cap)));
        }
        view.terms = terms_of(rec, catalog);
        view.renderer = rec.spec.renderer.kind().to_string();
        view.inputs = (rec.input_bytes > 0).then_some(rec.spec.inputs);
        view.needs = learned.needs(rec);
        view.region_room = region_room;
        renderers.insert(view.renderer.clone());
        views.push(view);
    }
    let mut regions: Vec<RegionView> = free
        .into_iter()
        .map(|(region, f)| {
            let slots = capacity.regions[region].0;
            let mut profile = catalog.profile(region);
            // GPU time is priced at the region's GPUs' own rate where the catalog prices
            // their model apart (the cheapest model live there).
            if let Some(price) = capacity
                .gpu_models(region)
                .map(|m| profile.gpu_price(Some(m)))
                .reduce(f64::min)
            {
                profile.price_per_gpu_hour = price;
            }
            let mut view = RegionView::new(profile, f, slots);
            view.queued = queued.get(region).copied().unwrap_or(0);
            view.cached = learned.held.get(region).cloned().unwrap_or_default();
            (view.arriving, view.link_busy_secs) = learned.fetches(region, now);
            for kind in &renderers {
                view.speed
                    .insert(kind.clone(), learned.speeds.factor(region, kind));
            }
            view
        })
        .collect();
    let mut studio_views: Vec<StudioView> = studios
        .into_iter()
        .map(|(name, (_, mut v))| {
            // What the budget has room for, on top of what the studio holds.
            if let Some(room) = tenancy.rooms.get(&name) {
                let cap = v.in_flight.saturating_add(*room);
                v.max_slots = Some(v.max_slots.map_or(cap, |m| m.min(cap)));
            }
            v
        })
        .collect();
    let releases = dispatch::plan_studios(&mut views, &mut studio_views, &mut regions, now);
    for region in &regions {
        learned.started_fetches(region.name(), &region.arriving, now);
    }
    releases
        .into_iter()
        .map(|r| Planned {
            job: ids[r.job].clone(),
            task: r.task,
            region: r.region,
        })
        .collect()
}

/// A job's placement terms: its own patience and value of an hour, or the farm's (the value
/// scaled by the job's priority), and the farm's carbon price.
pub fn terms_of(rec: &JobRecord, catalog: &RegionCatalog) -> Terms {
    let placement = &rec.spec.placement;
    catalog.terms.for_job(
        placement.patience,
        placement.value_of_hour,
        rec.spec.priority,
    )
}

/// The regions a job may be released to now, when its blocklist narrows them: the allowed
/// regions `base` (all live ones when it is empty) minus those where every live worker is
/// blocklisted for the job. `None` when the blocklist changes nothing.
fn allowed_regions(
    rec: &JobRecord,
    base: &[Region],
    region_workers: &BTreeMap<&Region, &[WorkerId]>,
) -> Option<Vec<Region>> {
    if rec.blocklist.is_empty() {
        return None;
    }
    let all_blocked = |region: &Region| {
        region_workers.get(region).is_some_and(|ws| {
            ws.iter().all(|w| {
                rec.blocklist
                    .iter()
                    .any(|b| &b.region == region && &b.worker == w)
            })
        })
    };
    let candidates: Vec<Region> = if base.is_empty() {
        region_workers.keys().map(|r| (*r).clone()).collect()
    } else {
        base.to_vec()
    };
    Some(candidates.into_iter().filter(|r| !all_blocked(r)).collect())
}

impl Coordinator {
    /// Releases backlog tasks onto regions with free slots. Runs after every input; notes
    /// which regions have live workers, for region loss.
    pub(crate) async fn dispatch(&mut self) {
        if !self.publish_unconfirmed().await {
            return;
        }
        let now = now_ms();
        let live: BTreeSet<Region> = self.live_workers().map(|w| w.region.clone()).collect();
        for region in live {
            self.last_live.insert(region, now);
        }
        self.budgets.roll(now);
        self.budget_rooms = self.budgets.rooms(
            &self.config.studios,
            self.jobs
                .values()
                .filter(|j| !j.rec.rec.state.is_final())
                .map(|j| (&j.rec.rec.spec.studio, j.in_flight())),
        );
        let seats = licenses::free(&self.config.catalog.licenses, self.jobs.values());
        let capacity = Capacity::of(self.live_workers()).with_seats(seats.clone());
        let planned = plan_round(
            &mut self.jobs,
            &capacity,
            &mut self.learned,
            &self.config.catalog,
            Tenancy {
                studios: &self.config.studios,
                rooms: &self.budget_rooms,
            },
            self.config.prefetch,
            now,
        );
        // Jobs sharing a pool may be planned past its seats in one round: the plan is
        // trimmed to the seats, and what is left waits for the next round.
        let planned = licenses::within_pools(planned, &self.jobs, seats);
        let mut touched = Vec::new();
        for p in planned {
            if let Err(e) = self.release(&p.job, p.task, &p.region).await {
                warn!(error = %format!("{e:#}"), "cannot release a task; will retry");
                break;
            }
            if !touched.contains(&p.job) {
                touched.push(p.job);
            }
        }
        for id in touched {
            self.settle_job(&id).await;
        }
        self.stage_inputs().await;
        self.announce_unplaceable().await;
    }

    /// Publishes a job event when a job with requirements starts waiting for a worker that
    /// fits (saying which requirement none meets and what the closest worker has), and when
    /// one has joined. O(workers) per unfinished job with requirements and ready tasks.
    async fn announce_unplaceable(&mut self) {
        let jobs = &self.jobs;
        self.unplaceable.retain(|id, _| jobs.contains_key(id));
        let mut changes = Vec::new();
        for (id, job) in &self.jobs {
            let rec = &job.rec.rec;
            if !rec.spec.requirements.asks_worker() {
                continue;
            }
            let waiting = (!rec.state.is_final() && job.n_ready() > 0)
                .then(|| self.no_worker_runs(&rec.spec))
                .flatten()
                .filter(|w| w.starts_with("no live worker meets its requirements"));
            match (waiting, self.unplaceable.get(id)) {
                (Some(w), Some(old)) if &w == old => {}
                (Some(w), _) => changes.push((id.clone(), rec.state, Some(w))),
                (None, Some(_)) => changes.push((id.clone(), rec.state, None)),
                (None, None) => {}
            }
        }
        for (id, state, waiting) in changes {
            let reason = match &waiting {
                Some(w) => {
                    self.unplaceable.insert(id.clone(), w.clone());
                    format!("waiting: {w}")
                }
                None => {
                    self.unplaceable.remove(&id);
                    if self
                        .jobs
                        .get(&id)
                        .is_some_and(|j| j.rec.rec.state.is_final())
                    {
                        continue;
                    }
                    "a worker that meets its requirements is live: its tasks start".to_string()
                }
            };
            self.publish_job_event(&id, state, Some(reason)).await;
        }
    }

    /// Records one task as queued in `region`, then publishes it there. A publish that fails
    /// is repeated before the next round ([`Self::publish_unconfirmed`]).
    async fn release(&mut self, id: &JobId, task: u32, region: &Region) -> anyhow::Result<()> {
        let next = state::released(&self.jobs[id].tasks()[task as usize].rec, region);
        debug!(job = %id, task, region = %region, attempt = next.attempt, "task released");
        self.set_task(id, next).await?;
        if let Err(e) = self.publish_release(id, task).await {
            self.unconfirmed.insert((id.clone(), task));
            return Err(
                e.context("recorded as queued; it is published again before the next round")
            );
        }
        Ok(())
    }

    /// Publishes again the releases not known to be on their queue (after a failed publish, or
    /// all queued tasks after a restart); the message id keeps the queue from holding one
    /// twice. False while some still cannot be published: the round waits for them.
    pub(crate) async fn publish_unconfirmed(&mut self) -> bool {
        while let Some((id, task)) = self.unconfirmed.first().cloned() {
            let queued = self
                .jobs
                .get(&id)
                .and_then(|j| j.task(task))
                .is_some_and(|t| t.rec.state == TaskState::Queued && t.rec.region.is_some());
            if queued {
                if let Err(e) = self.publish_release(&id, task).await {
                    warn!(job = %id, task, error = %format!("{e:#}"), "cannot publish a task; will retry");
                    return false;
                }
            }
            self.unconfirmed.remove(&(id, task));
        }
        true
    }

    /// Publishes a task recorded as queued to its region's queue, with the message id of that
    /// release.
    async fn publish_release(&self, id: &JobId, task: u32) -> anyhow::Result<()> {
        let job = &self.jobs[id];
        let spec = &job.rec.rec.spec;
        let rec = &job.tasks()[task as usize].rec;
        let region = rec
            .region
            .as_ref()
            .context("a queued task names no region")?;
        let assignment = TaskAssignment {
            job: id.clone(),
            studio: spec.studio.clone(),
            task,
            key: rec.key,
            attempt: rec.attempt,
            chunk: rec.chunk,
            renderer: spec.renderer.clone(),
            inputs: spec.inputs,
            scene: spec.scene.clone(),
            output: spec.output.clone(),
            timeout_secs: spec.task_timeout_secs,
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            // The record counts this release already; the id is the count before it.
            nats::task_msg_id(id, task, rec.attempt, rec.releases.saturating_sub(1)).as_str(),
        );
        self.farm
            .js
            .publish_with_headers(
                nats::task_subject(region),
                headers,
                encode(&assignment, "task message")?,
            )
            .await
            .context("cannot publish a task")?
            .await
            .context("task publish not acknowledged")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use suanli_shared::protocol::Gpu;

    fn worker(region: &str, name: &str, resources: Option<Resources>) -> WorkerInfo {
        serde_json::from_value(serde_json::json!({
            "id": name, "region": region, "slots": 2, "busy": 0, "state": "idle",
            "renderers": {}, "host": "h", "pid": 1, "started_ms": 0, "heartbeat_ms": 0,
            "tasks_done": 0, "core_seconds": 0.0, "current": [], "resources": resources,
        }))
        .expect("worker record")
    }

    #[test]
    fn only_regions_with_a_worker_that_fits_take_a_job_with_requirements() {
        let gpu_box = Resources {
            cores: 8,
            memory_mib: 1 << 15,
            gpus: vec![Gpu {
                index: 0,
                name: "RTX 4090".into(),
                memory_mib: 24 << 10,
                uuid: String::new(),
            }],
            tags: vec!["arnold".into()],
        };
        let cpu_box = Resources {
            gpus: Vec::new(),
            tags: Vec::new(),
            ..gpu_box.clone()
        };
        let workers = [
            worker("guian", "g1", Some(gpu_box)),
            worker("shenzhen", "c1", Some(cpu_box)),
            worker("old", "o1", None),
        ];
        let capacity = Capacity::of(&workers);
        let gpu = Requirements {
            gpus: 1,
            ..Default::default()
        };
        let guian: Region = "guian".parse().unwrap();
        assert_eq!(capacity.fitting(&gpu), BTreeMap::from([(guian.clone(), 1)]));
        let tagged = Requirements {
            tags: vec!["arnold".into()],
            ..Default::default()
        };
        assert_eq!(capacity.fitting(&tagged).len(), 1);
        // Slots bound what resources allow (two slots, eight cores); the old record's region
        // is left out for requirements, and kept (with no room figure) for jobs without.
        let cores = Requirements {
            cores: Some(1),
            ..Default::default()
        };
        assert_eq!(capacity.fitting(&cores)[&guian], 2);
        assert_eq!(capacity.fitting(&cores).len(), 2);
        let heavy = Requirements {
            memory_mib: Some(20 << 10),
            ..Default::default()
        };
        assert_eq!(
            capacity.fitting(&heavy)[&guian],
            1,
            "32 GiB holds one 20 GiB task"
        );
        let vram = Requirements {
            gpus: 1,
            gpu_memory_mib: Some(48 << 10),
            ..Default::default()
        };
        assert!(capacity.fitting(&vram).is_empty());
    }
}
