//! Pre-staging: once placement has a region for a job, that region starts fetching the job's
//! inputs before its tasks reach a worker. A job is staged into a region when one of its tasks
//! is first released there (placement chose it), or, while it waits for slots, into its one
//! candidate region (the job names one region, or one region is live). Each (job, region) is
//! asked once, on `suanli.stage.<region>`; one worker of the region takes it (a queue group)
//! and reports on `suanli.staged.<region>` how much of the input is there, which `status`
//! shows per region.

use std::collections::{BTreeMap, BTreeSet};

use suanli_shared::nats;
use suanli_shared::protocol::{encode, now_ms, InputPresence, StageProgress, StageRequest};
use suanli_shared::{ContentHash, JobId, Region};
use tracing::{debug, warn};

use crate::actor::Coordinator;
use crate::release::Capacity;
use crate::state::Job;

/// What pre-staging asked and heard, per job and region.
#[derive(Default)]
pub struct Staging {
    jobs: BTreeMap<JobId, BTreeMap<Region, InputPresence>>,
    /// Bytes moved by stagings that ended, per job and region: a later staging of the same
    /// inputs (moving little or nothing) adds to them rather than replacing them.
    moved_before: BTreeMap<(JobId, Region), u64>,
    /// When each staging under way was asked or last reported (ms): one silent for
    /// [`STAGING_SILENCE_MS`] (the request found no worker, or the worker died) is asked again.
    heard: BTreeMap<(JobId, Region), u64>,
    /// When the last round looked for jobs to stage (ms): dispatch runs after every input,
    /// and this walk over the jobs needs to run only a few times a second.
    looked_ms: u64,
}

/// The least time between two walks over the jobs for stagings to ask.
const LOOK_EVERY_MS: u64 = 200;

/// A staging reports every second while it runs; this long without a word, it is lost.
pub const STAGING_SILENCE_MS: u64 = 30_000;

impl Staging {
    /// How much of `job`'s input each region asked holds (empty if none was asked).
    pub fn presence(&self, job: &JobId) -> BTreeMap<String, InputPresence> {
        self.jobs
            .get(job)
            .map(|m| m.iter().map(|(r, p)| (r.to_string(), *p)).collect())
            .unwrap_or_default()
    }

    fn asked(&self, job: &JobId, region: &Region) -> bool {
        self.jobs.get(job).is_some_and(|m| m.contains_key(region))
    }

    /// Records that `region` was asked to stage `job`'s `total` bytes at `now`.
    fn ask(&mut self, job: &JobId, region: &Region, total: u64, now: u64) {
        let moved = self
            .moved_before
            .get(&(job.clone(), region.clone()))
            .copied()
            .unwrap_or(0);
        self.jobs.entry(job.clone()).or_default().insert(
            region.clone(),
            InputPresence {
                present_bytes: 0,
                total_bytes: total,
                moved_bytes: moved,
                done: false,
            },
        );
        self.heard.insert((job.clone(), region.clone()), now);
    }

    /// Forgets stagings not done and silent since `now - STAGING_SILENCE_MS`, so they are
    /// asked again, and everything about jobs `keep` says are gone.
    fn expire(&mut self, now: u64, keep: impl Fn(&JobId) -> bool) {
        self.jobs.retain(|id, _| keep(id));
        self.moved_before.retain(|(id, _), _| keep(id));
        let silent: Vec<(JobId, Region)> = self
            .heard
            .iter()
            .filter(|(_, at)| now.saturating_sub(**at) >= STAGING_SILENCE_MS)
            .map(|(k, _)| k.clone())
            .collect();
        for (job, region) in silent {
            self.heard.remove(&(job.clone(), region.clone()));
            if let Some(m) = self.jobs.get_mut(&job) {
                if m.get(&region).is_some_and(|p| !p.done) {
                    warn!(job = %job, region = %region, "pre-staging went silent; asking again");
                    m.remove(&region);
                }
            }
        }
        self.heard.retain(|(id, _), _| keep(id));
    }

    /// Folds a worker's report in: only for a (job, region) that was asked, so a worker
    /// cannot make up figures for jobs its region was never sent. True when it was taken.
    pub fn report(&mut self, p: &StageProgress, now: u64) -> bool {
        let Some(entry) = self.jobs.get_mut(&p.job).and_then(|m| m.get_mut(&p.region)) else {
            return false;
        };
        if entry.done && !p.done {
            return false; // a late progress report after the final one
        }
        let key = (p.job.clone(), p.region.clone());
        let before = self.moved_before.get(&key).copied().unwrap_or(0);
        *entry = InputPresence {
            present_bytes: p.present_bytes,
            total_bytes: p.total_bytes,
            moved_bytes: before.saturating_add(p.moved_bytes),
            done: p.done,
        };
        if p.done {
            self.moved_before.insert(key.clone(), entry.moved_bytes);
            self.heard.remove(&key);
        } else {
            self.heard.insert(key, now);
        }
        true
    }
}

/// The (job, region) pairs to ask now: unfinished jobs with inputs, into each region where
/// one of their tasks is queued or running, and waiting jobs into their one candidate region
/// (`candidates`: the live regions where a job's tasks could run: its own and its studio's
/// regions, a worker that fits its requirements and runs its renderer); not where a task with
/// these inputs already finished (`held`), nor where already asked.
pub fn targets(
    jobs: &BTreeMap<JobId, Job>,
    staging: &Staging,
    mut candidates: impl FnMut(&Job) -> Vec<Region>,
    held: &BTreeMap<Region, BTreeSet<ContentHash>>,
) -> Vec<(JobId, Region)> {
    let mut out = Vec::new();
    for (id, job) in jobs {
        let rec = &job.rec.rec;
        if rec.state.is_final() || rec.input_bytes == 0 {
            continue;
        }
        let mut regions: BTreeSet<Region> = job.in_flight_by_region().keys().cloned().collect();
        if job.n_ready() > 0 {
            if let [only] = candidates(job).as_slice() {
                regions.insert(only.clone());
            }
        }
        for region in regions {
            let there = held
                .get(&region)
                .is_some_and(|h| h.contains(&rec.spec.inputs));
            if !there && !staging.asked(id, &region) {
                out.push((id.clone(), region));
            }
        }
    }
    out
}

impl Coordinator {
    /// Asks regions to pre-stage the inputs of jobs placement has chosen them for (each
    /// (job, region) once; a publish that fails is tried again next round).
    pub(crate) async fn stage_inputs(&mut self) {
        if !self.config.prestage {
            return;
        }
        let now = now_ms();
        if now.saturating_sub(self.staging.looked_ms) < LOOK_EVERY_MS {
            return;
        }
        self.staging.looked_ms = now;
        let jobs = &self.jobs;
        self.staging.expire(now, |id| jobs.contains_key(id));
        let live: BTreeSet<Region> = self.live_workers().map(|w| w.region.clone()).collect();
        let capacity = Capacity::of(self.live_workers());
        let candidates = |job: &Job| -> Vec<Region> {
            let spec = &job.rec.rec.spec;
            let terms = self.config.studios.terms(&spec.studio);
            let allowed = terms.allowed_for(&spec.regions);
            if allowed.is_empty() && !terms.regions.is_empty() {
                return Vec::new(); // none of its regions is its studio's: it waits
            }
            if self.no_worker_runs(spec).is_some() {
                return Vec::new(); // no live worker runs its renderer
            }
            let mut regions: Vec<Region> = if spec.requirements.asks_worker() {
                capacity.fitting(&spec.requirements).into_keys().collect()
            } else {
                live.iter().cloned().collect()
            };
            if !allowed.is_empty() {
                regions.retain(|r| allowed.contains(r));
            }
            regions
        };
        let asks = targets(&self.jobs, &self.staging, candidates, &self.learned.held);
        for (id, region) in asks {
            let rec = &self.jobs[&id].rec.rec;
            let request = StageRequest {
                job: id.clone(),
                studio: rec.spec.studio.clone(),
                inputs: rec.spec.inputs,
                region: region.clone(),
            };
            let total = rec.input_bytes;
            let body = match encode(&request, "stage request") {
                Ok(b) => b,
                Err(e) => {
                    warn!(error = %e, "cannot encode a stage request");
                    continue;
                }
            };
            if let Err(e) = self
                .farm
                .client
                .publish(nats::stage_subject(&region), body)
                .await
            {
                warn!(job = %id, region = %region, error = %e, "cannot ask a region to pre-stage; will retry");
                continue;
            }
            debug!(job = %id, region = %region, "inputs pre-staging asked");
            self.staging.ask(&id, &region, total, now);
        }
    }

    /// A worker's pre-staging report. Once a region holds all of a job's inputs, placement
    /// counts them as there.
    pub(crate) fn handle_staged(&mut self, msg: async_nats::Message) {
        let p = match nats::decode_staged(msg.subject.as_str(), &msg.payload) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "dropping a stage report");
                return;
            }
        };
        if !self.staging.report(&p, now_ms()) {
            return;
        }
        if p.done {
            self.metrics
                .staged(&p.region, p.moved_bytes, &self.config.catalog);
        }
        if p.done && p.error.is_none() && p.present_bytes == p.total_bytes {
            if let Some(job) = self.jobs.get(&p.job) {
                self.learned
                    .held
                    .entry(p.region.clone())
                    .or_default()
                    .insert(job.rec.rec.spec.inputs);
            }
        }
        if let Some(e) = &p.error {
            warn!(job = %p.job, region = %p.region, worker = %p.worker, error = %e, "pre-staging stopped short; tasks fetch on demand");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use suanli_shared::protocol::TaskState;

    fn progress(job: &JobId, region: &str, present: u64, done: bool) -> StageProgress {
        StageProgress {
            job: job.clone(),
            region: region.parse().unwrap(),
            worker: "w1".parse().unwrap(),
            present_bytes: present,
            total_bytes: 10,
            moved_bytes: present,
            done,
            error: None,
            at_ms: 1,
        }
    }

    #[test]
    fn reports_count_only_for_regions_asked_and_never_go_back_after_done() {
        let job = JobId::generate();
        let guian: Region = "guian".parse().unwrap();
        let mut s = Staging::default();
        assert!(
            !s.report(&progress(&job, "guian", 5, false), 0),
            "never asked"
        );
        s.ask(&job, &guian, 10, 0);
        let other = progress(&job, "ulanqab", 5, false);
        assert!(!s.report(&other, 1), "another region");
        assert!(s.report(&progress(&job, "guian", 5, false), 1));
        assert!(s.report(&progress(&job, "guian", 10, true), 2));
        assert!(
            !s.report(&progress(&job, "guian", 7, false), 3),
            "late report"
        );
        let p = s.presence(&job)["guian"];
        assert_eq!((p.present_bytes, p.total_bytes, p.done), (10, 10, true));
        // Staged again (all there, nothing moved): the bytes moved before still count.
        let mut again = progress(&job, "guian", 10, true);
        again.moved_bytes = 0;
        assert!(s.report(&again, 4));
        assert_eq!(s.presence(&job)["guian"].moved_bytes, 10);
        assert!(s.presence(&JobId::generate()).is_empty());
    }

    fn job(input_bytes: u64, regions: &[&str], tasks: &[(TaskState, Option<&str>)]) -> Job {
        use crate::state::Versioned;
        let mut rec = crate::state::tests::job_record(0);
        rec.input_bytes = input_bytes;
        rec.spec.regions = regions.iter().map(|r| r.parse().unwrap()).collect();
        rec.n_tasks = tasks.len() as u32;
        let tasks = tasks
            .iter()
            .enumerate()
            .map(|(i, (state, region))| {
                let mut t = crate::state::new_task(
                    &rec.id,
                    i as u32,
                    ContentHash::of(&[i as u8]),
                    suanli_shared::FrameChunk::single(i as u32 + 1),
                    None,
                );
                t.state = *state;
                t.region = region.map(|r| r.parse().unwrap());
                Versioned { rec: t, rev: 1 }
            })
            .collect();
        Job::new(Versioned { rec, rev: 1 }, tasks)
    }

    fn regions(names: &[&str]) -> BTreeSet<Region> {
        names.iter().map(|r| r.parse().unwrap()).collect()
    }

    /// A job's candidates as the live regions it names (all live ones when it names none).
    fn candidates<'a>(live: &'a [&'a str]) -> impl FnMut(&Job) -> Vec<Region> + 'a {
        move |job: &Job| {
            let named = &job.rec.rec.spec.regions;
            regions(live)
                .into_iter()
                .filter(|r| named.is_empty() || named.contains(r))
                .collect()
        }
    }

    fn asked(
        jobs: &BTreeMap<JobId, Job>,
        live: &[&str],
        held: &BTreeMap<Region, BTreeSet<ContentHash>>,
    ) -> Vec<String> {
        targets(jobs, &Staging::default(), candidates(live), held)
            .into_iter()
            .map(|(_, r)| r.to_string())
            .collect()
    }

    #[test]
    fn a_job_is_staged_where_placement_chose_or_its_only_candidate_region() {
        let one = |j: Job| BTreeMap::from([(j.rec.rec.id.clone(), j)]);
        let none = BTreeMap::new();
        let two = ["guian", "ulanqab"];
        // Released into guian: staged there, not into the other live region.
        let queued = one(job(
            10,
            &[],
            &[
                (TaskState::Queued, Some("guian")),
                (TaskState::Pending, None),
            ],
        ));
        assert_eq!(asked(&queued, &two, &none), ["guian"]);
        // Waiting for slots, free to go anywhere on a two-region farm: placement has not chosen.
        let waiting = one(job(10, &[], &[(TaskState::Pending, None)]));
        assert!(asked(&waiting, &two, &none).is_empty());
        // ... but with one candidate (the only live region, or the one it names) it is staged.
        assert_eq!(asked(&waiting, &["guian"], &none), ["guian"]);
        let pinned = one(job(10, &["ulanqab"], &[(TaskState::Pending, None)]));
        assert_eq!(asked(&pinned, &two, &none), ["ulanqab"]);
        // No candidate (its region is not live; in the coordinator also: no live worker fits
        // its requirements or runs its renderer): nothing is staged while it waits.
        assert!(asked(&pinned, &["guian"], &none).is_empty());
        // No inputs, or inputs the region holds already: nothing to stage.
        let empty = one(job(0, &[], &[(TaskState::Queued, Some("guian"))]));
        assert!(asked(&empty, &two, &none).is_empty());
        let inputs = queued.values().next().unwrap().rec.rec.spec.inputs;
        let held = BTreeMap::from([("guian".parse().unwrap(), BTreeSet::from([inputs]))]);
        assert!(asked(&queued, &two, &held).is_empty());
        // Asked once per (job, region).
        let mut staging = Staging::default();
        let (id, region) = targets(&queued, &staging, candidates(&two), &none).remove(0);
        staging.ask(&id, &region, 10, 0);
        assert!(targets(&queued, &staging, candidates(&two), &none).is_empty());
    }

    #[test]
    fn a_silent_staging_is_asked_again_and_a_finished_one_is_not() {
        let job = JobId::generate();
        let (guian, ulanqab): (Region, Region) =
            ("guian".parse().unwrap(), "ulanqab".parse().unwrap());
        let mut s = Staging::default();
        s.ask(&job, &guian, 10, 0);
        s.ask(&job, &ulanqab, 10, 0);
        assert!(s.report(&progress(&job, "ulanqab", 10, true), 1_000));
        // Reporting keeps a staging alive.
        assert!(s.report(&progress(&job, "guian", 3, false), 20_000));
        s.expire(STAGING_SILENCE_MS + 1_000, |_| true);
        assert!(s.asked(&job, &guian) && s.asked(&job, &ulanqab));
        // Silent for the whole window: forgotten (asked again); the finished one stays.
        s.expire(20_000 + STAGING_SILENCE_MS, |_| true);
        assert!(!s.asked(&job, &guian));
        assert!(s.asked(&job, &ulanqab));
        // A job gone takes its figures with it.
        s.expire(u64::MAX, |_| false);
        assert!(s.presence(&job).is_empty());
    }
}
