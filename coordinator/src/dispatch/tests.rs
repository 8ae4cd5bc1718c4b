//! Release planning: slot limits, priorities and fair share, and where each policy puts tasks.

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
    // A task costs 0.1 x 60 s = 0.00167 (cheap) or 0.00667 (dear), 0.005 apart. The job spreads
    // over 8 slots, so at a value of 2 an hour a second of one task's delay is worth
    // 2 / 3600 / 8 = 0.0000694: a task may wait 72 s for the cheap region, and its wait is
    // (k + 1) / 5 of a 60 s task: five tasks wait.
    let farm = || [priced("dear", 4, 0.4), priced("cheap", 4, 0.1)];
    let split = |policy, value_of_hour| {
        let mut j = with_policy(job(0, 1, 12, &[]), policy);
        j.terms.value_of_hour = value_of_hour;
        let out = plan(&mut [j], &mut farm(), 0);
        (count(&out, "cheap"), count(&out, "dear"))
    };
    assert_eq!(split(Policy::Balanced, 2.0), (4, 3));
    // Time worth little: every task waits for the cheap region. Worth a lot: spread now.
    assert_eq!(split(Policy::Balanced, 0.01), (4, 0));
    assert_eq!(split(Policy::Balanced, 1000.0), (4, 4));
    assert_eq!(split(Policy::Cheapest, 2.0), (4, 0));
    assert_eq!(split(Policy::Fastest, 2.0), (4, 4));
}

#[test]
fn cheapest_and_greenest_wait_only_within_their_patience() {
    // 100 tasks of 60 s on 8 equal slots: fastest takes about 100 x 60 / 8 + 60 = 810 s.
    // On the 4 cheap (and green) slots alone, the k-th waiting task ends at 60 (k + 1) / 5 + 60.
    let farm = || {
        let mut dear = priced("dear", 4, 0.4);
        dear.profile.carbon_g_per_kwh = 800.0;
        [dear, priced("cheap", 4, 0.1)]
    };
    let split = |policy, patience| {
        let mut j = with_policy(job(0, 1, 100, &[]), policy);
        j.terms.patience = patience;
        let out = plan(&mut [j], &mut farm(), 0);
        (count(&out, "cheap"), count(&out, "dear"))
    };
    for policy in [Policy::Cheapest, Policy::Greenest] {
        // Patience 3 (2430 s): all 96 others can wait. Patience 1.2 (972 s): only 76 can, so
        // the dear region's free slots take tasks now.
        assert_eq!(split(policy, 3.0), (4, 0), "{policy}");
        assert_eq!(split(policy, 1.2), (4, 4), "{policy}");
        // Patience below 1 means 1: as fast as fastest allows.
        assert_eq!(split(policy, 0.5), split(policy, 1.0), "{policy}");
    }
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
    // Balanced, with time worth little: alone, it waits for the cheap region.
    let mut low = job(0, 2, 4, &[]);
    low.terms.value_of_hour = 0.5;
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

#[test]
fn a_job_that_falls_behind_its_bound_spreads_again() {
    // 60 tasks of 60 s, patience 1.5, two regions of 4 slots. Fastest: 60 x 60 / 8 + 60 = 510 s,
    // so the bound is 765 s, and the k-th task waiting for the cheap region ends at
    // 60 (k + 1) / 5 + 60: 58 of the 56 left fit, and the dear region stays idle.
    let mut j = with_policy(job(0, 1, 60, &[]), Policy::Cheapest);
    j.renderer = "blender".into();
    let farm = |cheap_speed: f64| {
        let mut cheap = priced("cheap", 4, 0.1);
        cheap.speed.insert("blender".into(), cheap_speed);
        [priced("dear", 4, 0.4), cheap]
    };
    let split = |regions: &mut [RegionView; 2]| {
        let out = plan(&mut [j.clone()], regions, 0);
        (count(&out, "cheap"), count(&out, "dear"))
    };
    assert_eq!(split(&mut farm(1.0)), (4, 0));
    // The cheap region turns out half as fast: tasks take 120 s there. Fastest is now
    // 3600 / 6 + 60 = 660 s, the bound 990 s, and only 36 tasks can wait: the job spreads.
    assert_eq!(split(&mut farm(0.5)), (4, 4));
}

fn studio(weight: f64, in_flight: u32) -> StudioView {
    StudioView {
        weight,
        in_flight,
        ..StudioView::default()
    }
}

fn of_studio(mut j: JobView, s: usize) -> JobView {
    j.studio = s;
    j
}

/// Releases per studio.
fn per_studio(out: &[Release], jobs: &[JobView], n: usize) -> Vec<usize> {
    let mut counts = vec![0; n];
    for x in out {
        counts[jobs[x.job].studio] += 1;
    }
    counts
}

#[test]
fn studios_share_by_weight_whatever_their_jobs_size() {
    // Studio 0 (weight 3) has a huge job listed first; studio 1 (weight 1) ten frames.
    let mut regions = [region("a", 8)];
    let mut big = of_studio(job(0, 1, 16, &[]), 0);
    big.more_ready = 999_984;
    let mut jobs = [big, of_studio(job(0, 2, 10, &[]), 1)];
    let mut studios = [studio(3.0, 0), studio(1.0, 0)];
    let out = plan_studios(&mut jobs, &mut studios, &mut regions, 0);
    assert_eq!(per_studio(&out, &jobs, 2), [6, 2]);
    assert_eq!((studios[0].in_flight, studios[1].in_flight), (6, 2));
    // Two more slots with studio 1 still holding its two: studio 0 takes both (7/3 and 8/3
    // are below 3/1).
    let mut regions = [region("a", 2)];
    let out = plan_studios(&mut jobs, &mut studios, &mut regions, 0);
    assert_eq!(per_studio(&out, &jobs, 2), [2, 0]);
    // The next slot: studio 0 holds 8 (9/3 = 3), studio 1 two (3/1 = 3): a tie, to the heavier.
    let mut regions = [region("a", 1)];
    let out = plan_studios(&mut jobs, &mut studios, &mut regions, 0);
    assert_eq!(per_studio(&out, &jobs, 2), [1, 0]);
    let mut regions = [region("a", 1)];
    let out = plan_studios(&mut jobs, &mut studios, &mut regions, 0);
    assert_eq!(per_studio(&out, &jobs, 2), [0, 1], "10/3 > 3/1");
}

#[test]
fn a_studio_below_its_share_gets_the_freed_slots_first() {
    // Studio 1 was idle, so studio 0 holds every slot; studio 1 submits, and the slots that
    // free go to it until it holds its share.
    let mut jobs = [
        of_studio(job(0, 1, 100, &[]), 0),
        of_studio(job(0, 2, 100, &[]), 1),
    ];
    let mut studios = [studio(1.0, 8), studio(1.0, 0)];
    for _ in 0..4 {
        let mut regions = [region("a", 1)];
        let out = plan_studios(&mut jobs, &mut studios, &mut regions, 0);
        assert_eq!(per_studio(&out, &jobs, 2), [0, 1]);
        studios[0].in_flight -= 1; // one of studio 0's tasks finishes
    }
    // Both hold 4 now: the next freed slot goes to studio 0 (a tie goes to the first).
    let mut regions = [region("a", 1)];
    let out = plan_studios(&mut jobs, &mut studios, &mut regions, 0);
    assert_eq!(per_studio(&out, &jobs, 2), [1, 0]);
    // An idle studio's share goes to the others: alone, studio 0 takes every slot.
    let mut alone = [
        of_studio(job(0, 1, 100, &[]), 0),
        of_studio(job(0, 2, 0, &[]), 1),
    ];
    let mut studios = [studio(1.0, 0), studio(9.0, 0)];
    let mut regions = [region("a", 8)];
    let out = plan_studios(&mut alone, &mut studios, &mut regions, 0);
    assert_eq!(per_studio(&out, &alone, 2), [8, 0]);
}

#[test]
fn within_a_studio_priority_then_fair_share_between_jobs() {
    let mut regions = [region("a", 8)];
    let mut jobs = [
        of_studio(job(0, 1, 100, &[]), 0),
        of_studio(job(5, 2, 100, &[]), 0),
        of_studio(job(0, 3, 100, &[]), 1),
        of_studio(job(0, 4, 100, &[]), 1),
    ];
    let mut studios = [studio(1.0, 0), studio(1.0, 0)];
    let out = plan_studios(&mut jobs, &mut studios, &mut regions, 0);
    let per_job: Vec<usize> = (0..4)
        .map(|j| out.iter().filter(|x| x.job == j).count())
        .collect();
    // Studio 0's four slots all go to its priority-5 job; studio 1's split between its two.
    assert_eq!(per_job, [0, 4, 2, 2]);
}

#[test]
fn studio_quotas_hold_in_all_and_per_region() {
    let mut regions = [region("a", 6), region("b", 6)];
    let mut jobs = [
        of_studio(job(0, 1, 100, &[]), 0),
        of_studio(job(0, 2, 100, &[]), 1),
    ];
    let mut capped = studio(1.0, 0);
    capped.max_slots = Some(5);
    capped.region_slots.insert(r("a"), 1);
    capped.in_flight_in.insert(r("a"), 1); // already at its quota in a
    capped.in_flight = 1;
    let mut studios = [capped, studio(1.0, 0)];
    let out = plan_studios(&mut jobs, &mut studios, &mut regions, 0);
    let of0: Vec<&Release> = out.iter().filter(|x| x.job == 0).collect();
    assert_eq!(of0.len(), 4, "5 in all, one already in flight");
    assert!(of0.iter().all(|x| x.region == r("b")), "{of0:?}");
    assert_eq!(out.len(), 12, "the other studio takes the rest");
    assert_eq!(studios[0].in_flight, 5);
}

#[test]
fn weighted_shares_over_many_rounds_converge_to_the_weights() {
    // A saturated farm: each round one random task of each studio's finishes... here, in turn,
    // the oldest release finishes, and the freed slot is planned again.
    let mut jobs = [
        of_studio(job(0, 1, 10_000, &[]), 0),
        of_studio(job(0, 2, 10_000, &[]), 1),
    ];
    let mut studios = [studio(3.0, 0), studio(1.0, 0)];
    let mut regions = [region("a", 16)];
    let mut running: VecDeque<usize> = plan_studios(&mut jobs, &mut studios, &mut regions, 0)
        .iter()
        .map(|x| x.job)
        .collect();
    let mut slot_rounds = [0u64; 2];
    for _ in 0..1000 {
        for s in &running {
            slot_rounds[*s] += 1;
        }
        let done = running.pop_front().unwrap();
        studios[done].in_flight -= 1;
        jobs[done].in_flight -= 1;
        let mut regions = [region("a", 1)];
        running.extend(
            plan_studios(&mut jobs, &mut studios, &mut regions, 0)
                .iter()
                .map(|x| x.job),
        );
    }
    let ratio = slot_rounds[0] as f64 / slot_rounds[1] as f64;
    assert!((ratio - 3.0).abs() < 0.05, "ratio {ratio}");
}

#[test]
fn a_job_gets_no_more_of_a_region_than_its_workers_resources_hold() {
    // Region a has 6 free slots but GPUs for 2 of the GPU job's tasks; b has none for it.
    let mut regions = [region("a", 6), region("b", 6)];
    let mut gpu_job = job(10, 1, 10, &["a"]);
    gpu_job.region_room = BTreeMap::from([(r("a"), 2)]);
    let mut jobs = [gpu_job, job(0, 2, 10, &[])];
    let out = plan(&mut jobs, &mut regions, 0);
    let gpu: Vec<&Release> = out.iter().filter(|x| x.job == 0).collect();
    assert_eq!(gpu.len(), 2, "{out:?}");
    assert!(gpu.iter().all(|x| x.region == r("a")));
    assert_eq!(jobs[0].region_room[&r("a")], 0);
    // The CPU job takes the slots the GPU job could not use.
    assert_eq!(out.len(), 12);
}
