//! Which tasks to release onto which region's queue. Pure: the actor (and `suanli sim`) gathers
//! the inputs from its state and the live workers, and publishes what this returns.
//!
//! Rules: a region never gets more tasks than it has free slots (its live slots plus a small
//! prefetch, minus what it already holds). Studios share first: the next slot goes to the
//! studio with work whose tasks in flight, one more counted, are the smallest multiple of its
//! weight ([`StudioView::share_after_next`]); a studio never passes its quotas (in all and per
//! region). Within a studio, higher priority first; among equal priorities the job with the
//! fewest tasks in flight goes next (fair share), then the oldest; a job never has more than
//! its `max_slots` tasks in flight. *Where* a task goes is the placement
//! model's call ([`crate::placement`]): among the job's allowed regions with live slots, the
//! lowest score under the job's policy. A full region is an option too (the task waits for
//! it, see [`crate::placement::WaitModel`]); when waiting scores best the task stays in the
//! backlog for a later round, and it counts as queued there for jobs of lower priority.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use suanli_shared::protocol::Policy;
use suanli_shared::regions::RegionProfile;
use suanli_shared::{ContentHash, Region};

use crate::placement::{
    share_farm, Backlog, Due, Estimate, FairShare, Inputs, Scorer, TaskNeeds, Terms, WaitModel,
};

/// One job's view for planning.
#[derive(Debug, Clone)]
pub struct JobView {
    /// Index of the job's studio in the studios planned with it ([`plan_studios`]); 0 for
    /// [`plan`].
    pub studio: usize,
    pub priority: i32,
    pub created_ms: u64,
    /// Tasks released and not finished.
    pub in_flight: u32,
    /// Regions allowed; empty means any.
    pub allowed: Vec<Region>,
    /// Task indices ready to release, in order; [`plan`] takes released ones off the front.
    /// It need list no more than one round can release (the regions' free slots).
    pub ready: VecDeque<u32>,
    /// Ready tasks beyond those listed in `ready`. They are not released this round, but they
    /// count for placement like listed ones (how many tasks are left to place, and wait).
    pub more_ready: u32,
    /// The job's policy, or the farm's when the job names none.
    pub policy: Policy,
    /// Unix ms by which every frame is wanted.
    pub deadline_ms: Option<u64>,
    /// Most tasks in flight at once.
    pub max_slots: Option<u32>,
    /// Renderer kind, to look up each region's measured speed for it.
    pub renderer: String,
    /// Input manifest; regions that hold it pay no transfer. `None`: nothing to move.
    pub inputs: Option<ContentHash>,
    /// Expected cost of one task at speed 1 and the size of the inputs.
    pub needs: TaskNeeds,
    /// Patience, value of time and carbon price, resolved from the job and the farm.
    pub terms: Terms,
    /// For a job with requirements: how many more of its tasks each region's workers could
    /// run at once (what their resources hold of its tasks, less its tasks there). A region
    /// not listed sets no such limit.
    pub region_room: BTreeMap<Region, u32>,
}

impl JobView {
    /// A job with neutral placement figures: the balanced policy, no deadline, no slot cap,
    /// nothing to transfer, [`crate::placement::DEFAULT_TASK_SECONDS`] per task.
    pub fn new(
        priority: i32,
        created_ms: u64,
        in_flight: u32,
        allowed: Vec<Region>,
        ready: impl Into<VecDeque<u32>>,
    ) -> Self {
        Self {
            studio: 0,
            priority,
            created_ms,
            in_flight,
            allowed,
            ready: ready.into(),
            more_ready: 0,
            policy: Policy::default(),
            deadline_ms: None,
            max_slots: None,
            renderer: String::new(),
            inputs: None,
            needs: TaskNeeds::default(),
            terms: Terms::default(),
            region_room: BTreeMap::new(),
        }
    }

    /// Tasks not finished: listed, beyond the list, and in flight.
    fn unfinished(&self) -> f64 {
        self.ready.len() as f64 + f64::from(self.more_ready) + f64::from(self.in_flight)
    }

    pub fn allows(&self, region: &Region) -> bool {
        self.allowed.is_empty() || self.allowed.contains(region)
    }

    fn key(&self, idx: usize) -> Reverse<(i64, u32, u64, usize)> {
        Reverse((
            -i64::from(self.priority),
            self.in_flight,
            self.created_ms,
            idx,
        ))
    }
}

/// One studio's view for planning: its weight, its quotas and what it holds.
#[derive(Debug, Clone, Default)]
pub struct StudioView {
    /// Its share against the other studios with work (positive).
    pub weight: f64,
    /// Tasks released and not finished, over all its jobs; [`plan_studios`] counts its releases.
    pub in_flight: u32,
    /// Most tasks in flight at once over all regions.
    pub max_slots: Option<u32>,
    /// Tasks in flight per region (only regions with a quota need be listed).
    pub in_flight_in: BTreeMap<Region, u32>,
    /// Most tasks in flight at once per region.
    pub region_slots: BTreeMap<Region, u32>,
}

impl StudioView {
    /// A studio of weight 1 with no quota holding `in_flight` tasks.
    pub fn open(in_flight: u32) -> Self {
        Self {
            weight: 1.0,
            in_flight,
            ..Self::default()
        }
    }

    /// Its tasks in flight after one more, per unit of weight: the studio with the smallest
    /// goes next. With weights 3 and 1 and four slots, the first three go to the heavier
    /// studio (1/3, 2/3, 3/3 against 1/1, the tie to the heavier) and the fourth to the other.
    pub fn share_after_next(&self) -> f64 {
        (f64::from(self.in_flight) + 1.0) / self.weight.max(f64::MIN_POSITIVE)
    }

    /// Tasks it may still release over all regions.
    fn room(&self) -> f64 {
        self.max_slots.map_or(f64::INFINITY, |m| {
            f64::from(m.saturating_sub(self.in_flight))
        })
    }

    /// Whether its quota in `region` leaves room for another task.
    fn room_in(&self, region: &Region) -> bool {
        self.region_slots
            .get(region)
            .is_none_or(|quota| self.in_flight_in.get(region).copied().unwrap_or(0) < *quota)
    }
}

/// The order studios take slots in: the smallest share after one more task, then the heavier,
/// then the first.
#[derive(Debug, Clone, Copy, PartialEq)]
struct StudioTurn {
    share: f64,
    weight: f64,
    idx: usize,
}

impl Eq for StudioTurn {}

impl Ord for StudioTurn {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: the binary heap pops its largest, and the smallest share goes first.
        other
            .share
            .total_cmp(&self.share)
            .then(self.weight.total_cmp(&other.weight))
            .then(other.idx.cmp(&self.idx))
    }
}

impl PartialOrd for StudioTurn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn turn(studios: &[StudioView], idx: usize) -> StudioTurn {
    StudioTurn {
        share: studios[idx].share_after_next(),
        weight: studios[idx].weight,
        idx,
    }
}

/// One region's view for planning.
#[derive(Debug, Clone)]
pub struct RegionView {
    /// The region's catalog figures (and its name).
    pub profile: RegionProfile,
    /// Tasks it may still take now; [`plan`] consumes them.
    pub free: i64,
    /// Render slots of its live, non-draining workers. A region with none gets nothing.
    pub live_slots: u32,
    /// Tasks released to it and not started yet (the queue a waiting task joins).
    pub queued: u32,
    /// Measured speed per renderer kind (1.0 = expected; 2.0 = tasks take half as long).
    pub speed: BTreeMap<String, f64>,
    /// Input manifests the region holds.
    pub cached: BTreeSet<ContentHash>,
    /// Input manifests on their way into the region: seconds until they arrive. [`plan`] adds
    /// the fetches its releases start.
    pub arriving: BTreeMap<ContentHash, f64>,
    /// Seconds until the region's link has finished the fetches under way ([`plan`] adds
    /// those it starts).
    pub link_busy_secs: f64,
}

impl RegionView {
    /// A region with nothing cached, nothing queued and speed 1 for every renderer.
    pub fn new(profile: RegionProfile, free: i64, live_slots: u32) -> Self {
        Self {
            profile,
            free,
            live_slots,
            queued: 0,
            speed: BTreeMap::new(),
            cached: BTreeSet::new(),
            arriving: BTreeMap::new(),
            link_busy_secs: 0.0,
        }
    }

    pub fn name(&self) -> &Region {
        &self.profile.name
    }

    pub fn speed_for(&self, renderer: &str) -> f64 {
        self.speed.get(renderer).copied().unwrap_or(1.0)
    }

    fn inputs(&self, inputs: Option<&ContentHash>) -> Inputs {
        match inputs {
            None => Inputs::Held,
            Some(h) if self.cached.contains(h) => Inputs::Held,
            Some(h) => match self.arriving.get(h) {
                Some(secs) => Inputs::Arriving { secs: *secs },
                None => Inputs::Missing {
                    link_busy_secs: self.link_busy_secs,
                },
            },
        }
    }
}

/// A decision: release task `task` of job number `job` (index into the input) to `region`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub job: usize,
    pub task: u32,
    pub region: Region,
}

/// Scores within this relative distance are a tie; ties go to the region with more free
/// slots, then to the first in `regions` (so equal regions share the work, deterministically).
const TIE_EPSILON: f64 = 1e-12;

fn cmp_score(a: f64, b: f64) -> Ordering {
    if (a - b).abs() <= TIE_EPSILON * a.abs().max(b.abs()).max(1.0) {
        Ordering::Equal
    } else {
        a.total_cmp(&b)
    }
}

/// How many of a job's next tasks would rather wait for full region `ri` than take an option
/// scored `threshold` now. Tasks of higher priority are ahead of them in the region's queue, and
/// the job's own waiting tasks `held`. A job bound by a due time also shares the region's slots
/// with its equal-priority peers: fair share gives it about one slot in so many, so its tasks
/// are that many queue places apart, or they would wait past the bound. For a patience bound,
/// the processor-sharing figure the bound itself comes from ([`crate::placement::FairShare::sharing`]);
/// for a deadline, the safer count of peers with work left (a deadline is a promise).
fn own_waiting(
    scorer: &Scorer,
    e: &Estimate,
    queue: &WaitModel,
    higher: f64,
    held: f64,
    peers: &Peers,
    threshold: f64,
) -> f64 {
    let spacing = match scorer.due_in() {
        None => 1.0,
        Some(_) if scorer.patience_binds() => peers.sharing,
        Some(_) => peers.jobs,
    };
    (scorer.waiting_below(e, queue, higher + spacing * held, threshold) / spacing).floor()
}

/// How many jobs a job shares slots with (see [`own_waiting`]).
struct Peers {
    sharing: f64,
    jobs: f64,
}

/// The job's time figures: its deadline, its completion under `fastest` (all its candidate
/// regions' slots at their measured speeds, shared with the other jobs) and its width.
fn due(
    job: &JobView,
    backlog: &Backlog,
    share: &FairShare,
    candidates: &[(usize, Estimate, Inputs)],
    regions: &[RegionView],
    now_ms: u64,
) -> Due {
    let slots: f64 = candidates
        .iter()
        .map(|(ri, ..)| f64::from(regions[*ri].live_slots))
        .sum();
    let rate: f64 = candidates
        .iter()
        .map(|(ri, ..)| {
            let r = &regions[*ri];
            f64::from(r.live_slots) * crate::placement::clamp_speed(r.speed_for(&job.renderer))
        })
        .sum();
    // The first inputs to arrive and the quickest render: the fluid estimate's work is done
    // in whole tasks, so the last one started still takes one render.
    let first_input = candidates
        .iter()
        .map(|(_, e, _)| e.transfer_secs)
        .fold(f64::INFINITY, f64::min);
    let one_render = candidates
        .iter()
        .map(|(_, e, _)| e.render_secs)
        .fold(f64::INFINITY, f64::min);
    let cap = job.max_slots.map_or(f64::INFINITY, f64::from);
    let width = backlog.tasks.min(slots).min(cap).max(1.0);
    let fastest = if backlog.wall_seconds > 0.0 {
        let rate = rate.min(cap);
        Some(share.completion_secs(rate) + first_input + one_render)
    } else {
        None
    };
    Due {
        deadline_in: job.deadline_ms.map(|d| (d as f64 - now_ms as f64) / 1000.0),
        fastest_in: fastest,
        width,
    }
}

/// Plans releases at `now_ms` for jobs of one studio (every job's `studio` is 0). Consumes what
/// it plans: released tasks leave `ready` and count in `in_flight`, regions lose free slots and
/// count the job's inputs as cached.
pub fn plan(jobs: &mut [JobView], regions: &mut [RegionView], now_ms: u64) -> Vec<Release> {
    let in_flight = jobs.iter().map(|j| j.in_flight).sum();
    plan_studios(jobs, &mut [StudioView::open(in_flight)], regions, now_ms)
}

/// Plans releases at `now_ms` for jobs of several studios (`JobView::studio` indexes
/// `studios`): each slot goes to the studio whose turn it is, then to that studio's next job.
/// Counts its releases in the studios' `in_flight` too. Costs a heap operation per release and
/// per job, whatever the jobs' sizes.
pub fn plan_studios(
    jobs: &mut [JobView],
    studios: &mut [StudioView],
    regions: &mut [RegionView],
    now_ms: u64,
) -> Vec<Release> {
    let mut out = Vec::new();
    if regions.iter().all(|r| r.free <= 0) {
        return out;
    }
    let n_regions = regions.len();
    let mut job_heaps: Vec<BinaryHeap<_>> = vec![BinaryHeap::new(); studios.len()];
    for (i, j) in jobs.iter().enumerate().filter(|(_, j)| !j.ready.is_empty()) {
        job_heaps[j.studio].push(j.key(i));
    }
    let mut turns: BinaryHeap<StudioTurn> = (0..studios.len())
        .filter(|s| !job_heaps[*s].is_empty() && studios[*s].room() >= 1.0)
        .map(|s| turn(studios, s))
        .collect();
    // Tasks planned to wait for each region: by jobs of higher priority (ahead of the current
    // job in that region's queue) and by jobs of the priority being planned. Equal-priority
    // jobs share slots fairly, so they do not queue behind each other's waiting tasks.
    let mut higher = vec![0.0; n_regions];
    let mut level = vec![0.0; n_regions];
    let mut level_priority = None;
    // Per job: tasks waiting for each region, and in all.
    let mut own: Vec<Vec<f64>> = vec![Vec::new(); jobs.len()];
    let mut own_total = vec![0.0; jobs.len()];
    // (region index, estimate, where the region stands with the job's inputs)
    let mut candidates: Vec<(usize, Estimate, Inputs)> = Vec::with_capacity(n_regions);
    // Every job's work, for the patience bound (taken before this round releases anything).
    let backlogs: Vec<Backlog> = jobs
        .iter()
        .map(|j| Backlog {
            priority: j.priority,
            tasks: j.unfinished(),
            wall_seconds: j.needs.wall_seconds.max(0.0),
        })
        .collect();
    let shares = share_farm(&backlogs);
    // Jobs with work left at each priority.
    let mut busy_at: BTreeMap<i32, f64> = BTreeMap::new();
    for b in backlogs.iter().filter(|b| b.tasks > 0.0) {
        *busy_at.entry(b.priority).or_default() += 1.0;
    }

    while let Some(StudioTurn { idx: s, .. }) = turns.pop() {
        let Some(Reverse((_, _, _, i))) = job_heaps[s].pop() else {
            continue;
        };
        let released = 'job: {
            let job = &jobs[i];
            if level_priority != Some(job.priority) {
                for (h, l) in higher.iter_mut().zip(level.iter_mut()) {
                    *h += std::mem::take(l);
                }
                level_priority = Some(job.priority);
            }
            let studio = &studios[s];
            let cap_left = job
                .max_slots
                .map_or(f64::INFINITY, |m| {
                    f64::from(m.saturating_sub(job.in_flight))
                })
                .min(studio.room());
            let remaining =
                (job.ready.len() as f64 + f64::from(job.more_ready) - own_total[i]).min(cap_left);
            if remaining < 1.0 {
                break 'job false;
            }
            candidates.clear();
            candidates.extend(
                regions
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| {
                        r.live_slots > 0
                            && job.allows(r.name())
                            && studio.room_in(r.name())
                            && job.region_room.get(r.name()).is_none_or(|n| *n > 0)
                    })
                    .map(|(ri, r)| {
                        let inputs = r.inputs(job.inputs.as_ref());
                        let speed = r.speed_for(&job.renderer);
                        let e = Estimate::new(&r.profile, speed, &job.needs, inputs, remaining);
                        (ri, e, inputs)
                    }),
            );
            if candidates.is_empty() {
                break 'job false;
            }
            let due = due(job, &backlogs[i], &shares[i], &candidates, regions, now_ms);
            let peers = Peers {
                sharing: shares[i].sharing,
                jobs: busy_at.get(&job.priority).copied().unwrap_or(1.0).max(1.0),
            };
            let scorer = Scorer::new(
                job.policy,
                candidates.iter().map(|c| &c.1),
                &job.terms,
                &due,
            );
            let held = &mut own[i];
            if held.is_empty() {
                held.resize(n_regions, 0.0);
            }
            let queue = |r: &RegionView| WaitModel {
                queued: f64::from(r.queued),
                live_slots: f64::from(r.live_slots),
            };
            let best_free = candidates
                .iter()
                .filter(|(ri, ..)| regions[*ri].free > 0)
                .map(|(ri, e, has)| (*ri, scorer.score(e, 0.0), *has))
                .min_by(|(ra, sa, _), (rb, sb, _)| {
                    cmp_score(*sa, *sb)
                        .then(regions[*rb].free.cmp(&regions[*ra].free))
                        .then(ra.cmp(rb))
                });
            // Full regions this job's next tasks would rather wait for, and how many of them.
            let threshold = best_free.map_or(f64::INFINITY, |(_, s, _)| s);
            let mut waiting = 0.0;
            let mut best_wait: Option<(usize, f64)> = None;
            for (ri, e, _) in candidates.iter().filter(|(ri, ..)| regions[*ri].free <= 0) {
                let r = &regions[*ri];
                let n = own_waiting(
                    &scorer,
                    e,
                    &queue(r),
                    higher[*ri],
                    held[*ri],
                    &peers,
                    threshold,
                );
                if n > 0.0 {
                    waiting += n;
                    let k = higher[*ri] + held[*ri];
                    let s = scorer.score(e, queue(r).wait_secs(e.render_secs, k));
                    if best_wait.is_none_or(|(_, bs)| s < bs) {
                        best_wait = Some((*ri, s));
                    }
                }
            }
            if waiting >= remaining || best_free.is_none() {
                // Everything left waits this round; note it where it would go first, so jobs of
                // lower priority see the queue it makes.
                if let Some((ri, _)) = best_wait {
                    held[ri] += remaining;
                    level[ri] += remaining;
                }
                own_total[i] += remaining;
                break 'job false;
            }
            if waiting > 0.0 {
                for (ri, e, _) in candidates.iter().filter(|(ri, ..)| regions[*ri].free <= 0) {
                    let q = queue(&regions[*ri]);
                    let n = own_waiting(&scorer, e, &q, higher[*ri], held[*ri], &peers, threshold);
                    held[*ri] += n;
                    level[*ri] += n;
                }
                own_total[i] += waiting;
            }
            let Some((ri, _, inputs)) = best_free else {
                break 'job false;
            };
            let job = &mut jobs[i];
            let Some(task) = job.ready.pop_front() else {
                break 'job false;
            };
            job.in_flight += 1;
            let region = &mut regions[ri];
            region.free -= 1;
            if let Some(n) = job.region_room.get_mut(region.name()) {
                *n = n.saturating_sub(1);
            }
            if let (Some(h), Inputs::Missing { link_busy_secs }) = (job.inputs, inputs) {
                // This release starts the fetch: later tasks of the job wait for it, not another.
                if job.needs.input_bytes > 0 {
                    let secs = link_busy_secs + region.profile.transfer_secs(job.needs.input_bytes);
                    region.arriving.insert(h, secs);
                    region.link_busy_secs = secs;
                } else {
                    region.cached.insert(h);
                }
            }
            studios[s].in_flight += 1;
            *studios[s]
                .in_flight_in
                .entry(region.name().clone())
                .or_default() += 1;
            out.push(Release {
                job: i,
                task,
                region: region.name().clone(),
            });
            true
        };
        if released {
            job_heaps[s].push(jobs[i].key(i));
        }
        if !job_heaps[s].is_empty() && studios[s].room() >= 1.0 {
            turns.push(turn(studios, s));
        }
    }
    out
}

#[cfg(test)]
mod tests;
