//! Which tasks to release onto which region's queue. Pure: the actor (and `suanli sim`) gathers
//! the inputs from its state and the live workers, and publishes what this returns.
//!
//! Rules: a region never gets more tasks than it has free slots (its live slots plus a small
//! prefetch, minus what it already holds); higher priority first; among equal priorities the
//! job with the fewest tasks in flight goes next (fair share), then the oldest; a job never
//! has more than its `max_slots` tasks in flight. *Where* a task goes is the placement
//! model's call ([`crate::placement`]): among the job's allowed regions with live slots, the
//! lowest score under the job's policy. A full region is an option too (the task waits for
//! it, see [`crate::placement::WaitModel`]); when waiting scores best the task stays in the
//! backlog for a later round, and it counts as queued there for jobs of lower priority.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use suanli_shared::protocol::Policy;
use suanli_shared::regions::RegionProfile;
use suanli_shared::{ContentHash, Region};

use crate::placement::{Estimate, Inputs, Scorer, TaskNeeds, WaitModel};

/// One job's view for planning.
#[derive(Debug, Clone)]
pub struct JobView {
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
        }
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

/// Plans releases at `now_ms`. Consumes what it plans: released tasks leave `ready` and count
/// in `in_flight`, regions lose free slots and count the job's inputs as cached.
pub fn plan(jobs: &mut [JobView], regions: &mut [RegionView], now_ms: u64) -> Vec<Release> {
    let mut out = Vec::new();
    if regions.iter().all(|r| r.free <= 0) {
        return out;
    }
    let n_regions = regions.len();
    let mut heap: BinaryHeap<_> = jobs
        .iter()
        .enumerate()
        .filter(|(_, j)| !j.ready.is_empty())
        .map(|(i, j)| j.key(i))
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

    while let Some(Reverse((_, _, _, i))) = heap.pop() {
        let job = &jobs[i];
        if level_priority != Some(job.priority) {
            for (h, l) in higher.iter_mut().zip(level.iter_mut()) {
                *h += std::mem::take(l);
            }
            level_priority = Some(job.priority);
        }
        let cap_left = job.max_slots.map_or(f64::INFINITY, |m| {
            f64::from(m.saturating_sub(job.in_flight))
        });
        let remaining =
            (job.ready.len() as f64 + f64::from(job.more_ready) - own_total[i]).min(cap_left);
        if remaining < 1.0 {
            continue;
        }
        candidates.clear();
        candidates.extend(
            regions
                .iter()
                .enumerate()
                .filter(|(_, r)| r.live_slots > 0 && job.allows(r.name()))
                .map(|(ri, r)| {
                    let inputs = r.inputs(job.inputs.as_ref());
                    let speed = r.speed_for(&job.renderer);
                    let e = Estimate::new(&r.profile, speed, &job.needs, inputs, remaining);
                    (ri, e, inputs)
                }),
        );
        if candidates.is_empty() {
            continue;
        }
        let deadline_in = job.deadline_ms.map(|d| (d as f64 - now_ms as f64) / 1000.0);
        let scorer = Scorer::new(job.policy, candidates.iter().map(|c| &c.1), deadline_in);
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
            let k = higher[*ri] + held[*ri];
            let n = scorer.waiting_below(e, &queue(r), k, threshold);
            if n > 0.0 {
                waiting += n;
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
            continue;
        }
        if waiting > 0.0 {
            for (ri, e, _) in candidates.iter().filter(|(ri, ..)| regions[*ri].free <= 0) {
                let k = higher[*ri] + held[*ri];
                let n = scorer.waiting_below(e, &queue(&regions[*ri]), k, threshold);
                held[*ri] += n;
                level[*ri] += n;
            }
            own_total[i] += waiting;
        }
        let Some((ri, _, inputs)) = best_free else {
            continue;
        };
        let job = &mut jobs[i];
        let Some(task) = job.ready.pop_front() else {
            continue;
        };
        job.in_flight += 1;
        let region = &mut regions[ri];
        region.free -= 1;
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
        out.push(Release {
            job: i,
            task,
            region: region.name().clone(),
        });
        heap.push(job.key(i));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Region {
        s.parse().unwrap()
    }

    fn job(priority: i32, created_ms: u64, ready: u32, allowed: &[&str]) -> JobView {
        JobView::new(
            priority,
            created_ms,
            0,
            allowed.iter().map(|a| r(a)).collect(),
            (0..ready).collect::<Vec<_>>(),
        )
    }

    fn region(name: &str, free: i64) -> RegionView {
        RegionView::new(RegionProfile::neutral(r(name)), free, free.max(0) as u32)
    }

    fn priced(name: &str, free: i64, price: f64) -> RegionView {
        let mut v = region(name, free);
        v.profile.price_per_core_hour = price;
        v
    }

    fn count(out: &[Release], name: &str) -> usize {
        out.iter().filter(|x| x.region == r(name)).count()
    }

    fn with_policy(mut j: JobView, policy: Policy) -> JobView {
        j.policy = policy;
        j
    }

    #[test]
    fn never_exceeds_free_slots_and_spreads() {
        let mut regions = [region("a", 2), region("b", 3)];
        let mut jobs = [job(0, 1, 10, &[])];
        let out = plan(&mut jobs, &mut regions, 0);
        assert_eq!(out.len(), 5);
        assert_eq!(count(&out, "a"), 2);
        assert!(regions.iter().all(|r| r.free == 0));
        assert_eq!(
            out.iter().map(|x| x.task).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        assert_eq!(jobs[0].in_flight, 5);
        assert_eq!(
            jobs[0].ready.front(),
            Some(&5),
            "released tasks leave the backlog"
        );
    }

    #[test]
    fn priority_first_then_fair_share() {
        let mut regions = [region("a", 4)];
        let mut jobs = [job(0, 1, 10, &[]), job(5, 2, 1, &[]), job(0, 3, 10, &[])];
        let out = plan(&mut jobs, &mut regions, 0);
        let order: Vec<usize> = out.iter().map(|x| x.job).collect();
        assert_eq!(
            order,
            [1, 0, 2, 0],
            "high priority, then alternate equal jobs"
        );
    }

    #[test]
    fn allowed_regions_are_respected() {
        let mut regions = [region("a", 5), region("b", 1)];
        let out = plan(&mut [job(0, 1, 3, &["b"])], &mut regions, 0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].region, r("b"));
        assert!(plan(&mut [job(0, 1, 3, &[])], &mut [], 0).is_empty());
    }

    #[test]
    fn regions_without_live_slots_get_nothing() {
        let mut dead = region("a", 3);
        dead.live_slots = 0;
        let mut regions = [dead, region("b", 1)];
        let out = plan(&mut [job(0, 1, 5, &[])], &mut regions, 0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].region, r("b"));
    }

    #[test]
    fn a_job_never_exceeds_its_slot_cap() {
        let mut regions = [region("a", 10)];
        let mut capped = job(0, 1, 10, &[]);
        capped.max_slots = Some(3);
        capped.in_flight = 1;
        let mut jobs = [capped, job(0, 2, 10, &[])];
        let out = plan(&mut jobs, &mut regions, 0);
        assert_eq!(
            out.iter().filter(|x| x.job == 0).count(),
            2,
            "3 minus 1 in flight"
        );
        assert_eq!(
            out.iter().filter(|x| x.job == 1).count(),
            8,
            "the rest to the other job"
        );
        assert_eq!(jobs[0].in_flight, 3);
    }

    #[test]
    fn cheapest_fills_the_cheaper_region_first_and_waits_for_it() {
        let farm = || [priced("dear", 4, 0.4), priced("cheap", 4, 0.1)];
        let mut regions = farm();
        let out = plan(
            &mut [with_policy(job(0, 1, 3, &[]), Policy::Cheapest)],
            &mut regions,
            0,
        );
        assert_eq!(count(&out, "cheap"), 3, "{out:?}");
        let mut regions = farm();
        let out = plan(
            &mut [with_policy(job(0, 1, 20, &[]), Policy::Cheapest)],
            &mut regions,
            0,
        );
        assert_eq!(out.len(), 4, "the dear region is left idle: {out:?}");
        assert_eq!(count(&out, "cheap"), 4);
        // The order of releases: the cheap region's slots come first.
        assert!(out.iter().all(|x| x.region == r("cheap")));
    }

    #[test]
    fn fastest_spreads_over_every_free_slot() {
        let mut regions = [priced("dear", 4, 0.4), priced("cheap", 4, 0.1)];
        let out = plan(
            &mut [with_policy(job(0, 1, 20, &[]), Policy::Fastest)],
            &mut regions,
            0,
        );
        assert_eq!((count(&out, "cheap"), count(&out, "dear")), (4, 4));
        assert_eq!(
            out[..4].iter().filter(|x| x.region == r("cheap")).count(),
            4,
            "equal speed: the cheaper breaks the tie"
        );
    }

    #[test]
    fn fastest_picks_the_faster_region() {
        let mut fast = region("fast", 2);
        fast.speed.insert("blender".into(), 2.0);
        let mut regions = [region("slow", 2), fast];
        let mut j = with_policy(job(0, 1, 6, &[]), Policy::Fastest);
        j.renderer = "blender".into();
        let out = plan(&mut [j.clone()], &mut regions, 0);
        assert_eq!(out[0].region, r("fast"));
        assert_eq!(out[1].region, r("fast"));
        // Tasks of 30 s (fast) or 60 s (slow): with 2 busy fast slots, the next two waiting
        // tasks start after about 10 and 20 s and still finish first there; the rest go slow.
        assert_eq!(
            (count(&out, "fast"), count(&out, "slow")),
            (2, 2),
            "{out:?}"
        );
        // Another renderer has no measured speed there: equal regions share.
        j.renderer = "builtin".into();
        j.ready.truncate(3);
        let mut regions = [region("slow", 2), region("fast", 2)];
        let out = plan(&mut [j], &mut regions, 0);
        assert_eq!((count(&out, "slow"), count(&out, "fast")), (2, 1));
    }

    #[test]
    fn balanced_waits_a_little_then_spills() {
        // Money terms 0.4 (cheap) and 1.6 (dear), time 1.0 each: a task may wait for the cheap
        // region while its wait, (k + 1) / 5 of a task, is under 1.2: five tasks wait.
        let farm = || [priced("dear", 4, 0.4), priced("cheap", 4, 0.1)];
        let split = |policy| {
            let out = plan(
                &mut [with_policy(job(0, 1, 12, &[]), policy)],
                &mut farm(),
                0,
            );
            (count(&out, "cheap"), count(&out, "dear"))
        };
        assert_eq!(split(Policy::Balanced), (4, 3));
        assert_eq!(split(Policy::Cheapest), (4, 0));
        assert_eq!(split(Policy::Fastest), (4, 4));
    }

    #[test]
    fn cached_inputs_attract_tasks_when_other_costs_are_equal() {
        let inputs = ContentHash::of(b"shot010 manifest");
        let mut j = job(0, 1, 3, &[]);
        j.inputs = Some(inputs);
        j.needs.input_bytes = 5_000_000_000;
        for policy in Policy::ALL {
            let mut warm = region("b", 4);
            warm.cached.insert(inputs);
            let mut regions = [region("a", 4), warm];
            let out = plan(&mut [with_policy(j.clone(), policy)], &mut regions, 0);
            assert_eq!(count(&out, "b"), 3, "{policy}: {out:?}");
        }
        // Nowhere cached: once a region fetches the inputs, the job's next tasks follow them.
        let mut regions = [region("a", 4), region("b", 4)];
        let out = plan(&mut [j.clone()], &mut regions, 0);
        assert_eq!(count(&out, "a"), 3);
        assert!(regions[0].arriving.contains_key(&inputs) && regions[1].arriving.is_empty());
        assert_eq!(regions[0].link_busy_secs, 40.0, "5 GB over 1 Gbit/s");
        // Without input bytes there is nothing to save: equal regions share again.
        j.needs.input_bytes = 0;
        let mut regions = [region("a", 4), region("b", 4)];
        let out = plan(&mut [j], &mut regions, 0);
        assert!(count(&out, "a") >= 1 && count(&out, "b") >= 1);
    }

    #[test]
    fn greenest_prefers_low_carbon() {
        let green = |name: &str, g: f64, pue: f64| {
            let mut v = priced(name, 4, 0.1);
            v.profile.carbon_g_per_kwh = g;
            v.profile.pue = pue;
            v
        };
        let mut regions = [green("coal", 800.0, 1.5), green("hydro", 100.0, 1.1)];
        let out = plan(
            &mut [with_policy(job(0, 1, 6, &[]), Policy::Greenest)],
            &mut regions,
            0,
        );
        assert_eq!(count(&out, "hydro"), 4);
        assert_eq!(
            count(&out, "coal"),
            0,
            "greenest waits rather than burn coal"
        );
        // PUE counts: the same grid, a better data center.
        let mut regions = [green("old", 500.0, 1.6), green("new", 500.0, 1.12)];
        let out = plan(
            &mut [with_policy(job(0, 1, 2, &[]), Policy::Greenest)],
            &mut regions,
            0,
        );
        assert_eq!(count(&out, "new"), 2);
    }

    #[test]
    fn a_deadline_at_risk_spills_to_dearer_regions() {
        let now = 1_000_000_000_000;
        let mut j = with_policy(job(0, 1, 20, &[]), Policy::Cheapest);
        j.needs.wall_seconds = 600.0;
        j.needs.core_seconds = 600.0;
        let farm = || [priced("dear", 4, 0.4), priced("cheap", 4, 0.1)];
        // 20 tasks of 10 minutes on 4 cheap slots take about 50 minutes: 3 hours is plenty.
        j.deadline_ms = Some(now + 3 * 3600 * 1000);
        let out = plan(&mut [j.clone()], &mut farm(), now);
        assert_eq!((count(&out, "cheap"), count(&out, "dear")), (4, 0));
        // With 25 minutes, tasks that would wait too long go to the dear region now.
        j.deadline_ms = Some(now + 25 * 60 * 1000);
        let out = plan(&mut [j.clone()], &mut farm(), now);
        assert_eq!((count(&out, "cheap"), count(&out, "dear")), (4, 4));
    }

    #[test]
    fn waiting_tasks_of_higher_priority_push_lower_ones_elsewhere() {
        let farm = || [priced("dear", 2, 0.2), priced("cheap", 2, 0.1)];
        let low = job(0, 2, 4, &[]);
        let out = plan(&mut [low.clone()], &mut farm(), 0);
        let alone = count(&out, "dear");
        let high = with_policy(job(9, 1, 40, &["cheap"]), Policy::Cheapest);
        let out = plan(&mut [high, low], &mut farm(), 0);
        assert_eq!(out.iter().filter(|x| x.job == 0).count(), 2);
        let behind = out
            .iter()
            .filter(|x| x.job == 1 && x.region == r("dear"))
            .count();
        assert!(
            behind > alone,
            "with 38 tasks queued for the cheap region, the low job uses the dear one: {behind} vs {alone}"
        );
    }

    #[test]
    fn listing_only_what_a_round_can_release_plans_the_same() {
        let now = 1_000_000_000_000;
        let farm = || {
            [
                priced("dear", 3, 0.4),
                priced("cheap", 2, 0.1),
                priced("mid", -1, 0.2),
            ]
        };
        let room = 5;
        for policy in Policy::ALL {
            for deadline_mins in [None, Some(25), Some(180)] {
                let mut full = with_policy(job(0, 1, 300, &[]), policy);
                full.needs.wall_seconds = 600.0;
                full.deadline_ms = deadline_mins.map(|m| now + m * 60 * 1000);
                let low = job(-1, 2, 50, &["mid", "dear"]);
                let listed = |j: &JobView| {
                    let mut j = j.clone();
                    j.more_ready = j.ready.len() as u32 - room;
                    j.ready.truncate(room as usize);
                    j
                };
                let mut jobs = [full.clone(), low.clone()];
                let expected = plan(&mut jobs, &mut farm(), now);
                let mut jobs = [listed(&full), listed(&low)];
                let got = plan(&mut jobs, &mut farm(), now);
                assert_eq!(got, expected, "{policy} {deadline_mins:?}");
            }
        }
    }
}
