//! The event loop: slots freeing, jobs arriving and input fetches finishing, in time order,
//! with the coordinator's own [`dispatch::plan`] deciding what each free slot renders.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use suanli_shared::protocol::Policy;
use suanli_shared::ContentHash;

use super::{secs_to_ms, JobReport, RegionReport, Scenario, SimJob, SimReport, StudioReport};
use crate::budgets;
use crate::dispatch::{self, JobView, RegionView, StudioView};
use crate::placement::{SpeedBook, TaskNeeds};

/// The stand-in content hash of a named input set: jobs that name the same set share it.
fn input_set(name: &str) -> ContentHash {
    ContentHash::of(format!("suanli-sim-inputs/{name}").as_bytes())
}

/// splitmix64: small, fast and reproducible.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// An event: (time ms, sequence, region or `ARRIVAL`, job, render ms).
type Event = Reverse<(u64, u64, u32, u32, u64)>;
const ARRIVAL: u32 = u32::MAX;

struct RegionState {
    report: RegionReport,
    /// GPUs no task holds now.
    gpus_free: u32,
    /// GPU-milliseconds rendered (wall x GPUs), for utilization.
    gpu_ms: u64,
    speed: f64,
    render_ms: u64,
    link_free_ms: u64,
    /// Input set -> when its fetch into the region completes.
    fetched: BTreeMap<ContentHash, u64>,
}

/// Simulates `scenario` with `policy` for every job that names none.
pub fn run_scenario(scenario: &Scenario, policy: Policy) -> SimReport {
    let inputs_of = |j: &SimJob| input_set(j.inputs.as_deref().unwrap_or(&j.name));
    let mut regions: Vec<RegionView> = Vec::new();
    let mut states: Vec<RegionState> = Vec::new();
    for r in &scenario.regions {
        let mut view = RegionView::new(r.profile.clone(), i64::from(r.slots), r.slots);
        let mut fetched = BTreeMap::new();
        for name in &r.cached {
            let h = input_set(name);
            view.cached.insert(h);
            fetched.insert(h, 0);
        }
        regions.push(view);
        states.push(RegionState {
            report: RegionReport {
                name: r.profile.name.to_string(),
                slots: r.slots,
                tasks: 0,
                core_hours: 0.0,
                cost: 0.0,
                energy_kwh: 0.0,
                carbon_kg: 0.0,
                gb_in: 0.0,
                utilization: 0.0,
                gpus: r.gpus,
                gpu_hours: 0.0,
                gpu_utilization: 0.0,
            },
            gpus_free: r.gpus,
            gpu_ms: 0,
            speed: r.speed,
            render_ms: 0,
            link_free_ms: 0,
            fetched,
        });
    }
    // Studios in name order, with their contracts and their views for planning.
    let names: std::collections::BTreeSet<&suanli_shared::Studio> =
        scenario.jobs.iter().map(|j| &j.studio).collect();
    let contracts: Vec<_> = names.iter().map(|s| scenario.studios.terms(s)).collect();
    let mut studio_views: Vec<StudioView> = contracts
        .iter()
        .map(|t| StudioView {
            weight: t.weight,
            max_slots: t.max_slots,
            region_slots: t.region_slots.clone(),
            ..StudioView::default()
        })
        .collect();
    let studio_of: Vec<usize> = scenario
        .jobs
        .iter()
        .map(|j| names.iter().position(|s| *s == &j.studio).unwrap_or(0))
        .collect();
    let mut studio_render_ms = vec![0u64; names.len()];
    let mut contended_ms = vec![0u64; names.len()];
    let mut studio_stopped = vec![false; names.len()];
    let mut jobs: Vec<JobView> = Vec::new();
    let mut reports: Vec<JobReport> = Vec::new();
    let mut heap: BinaryHeap<Event> = BinaryHeap::new();
    let mut seq = 0u64;
    for (i, j) in scenario.jobs.iter().enumerate() {
        let submit_ms = secs_to_ms(j.submit_at_s);
        let allowed = scenario.studios.terms(&j.studio).allowed_for(&j.regions);
        let mut view = JobView::new(j.priority, submit_ms, 0, allowed, Vec::new());
        view.studio = studio_of[i];
        view.policy = j.policy.unwrap_or(policy);
        view.deadline_ms = j.deadline_s.map(|d| submit_ms + secs_to_ms(d));
        view.max_slots = j.max_slots;
        view.terms = scenario
            .terms
            .for_job(j.patience, j.value_of_hour, j.priority);
        view.renderer = j.renderer.clone();
        view.inputs = Some(inputs_of(j));
        view.needs = TaskNeeds {
            core_seconds: j.task_core_seconds,
            wall_seconds: j.task_core_seconds / scenario.cores_per_slot,
            input_bytes: (j.input_gb * 1e9) as u64,
            gpus: j.gpus,
        };
        if j.gpus > 0 {
            // Only regions with GPUs enough for one task (the scenario checked there is one).
            let with_gpus: Vec<_> = scenario
                .regions
                .iter()
                .filter(|r| r.gpus >= j.gpus && view.allows(&r.profile.name))
                .map(|r| r.profile.name.clone())
                .collect();
            view.allowed = with_gpus;
        }
        jobs.push(view);
        reports.push(JobReport {
            name: j.name.clone(),
            tasks: j.tasks,
            done: 0,
            submitted_s: j.submit_at_s,
            finished_s: None,
            due_s: j.deadline_s.map(|d| j.submit_at_s + d),
            met_deadline: None,
            cost: 0.0,
        });
        heap.push(Reverse((submit_ms, seq, ARRIVAL, i as u32, 0)));
        seq += 1;
    }
    let mut seats_free = scenario.licenses.clone();
    let mut rng = Rng(scenario.seed);
    let mut book = SpeedBook::default();
    let (mut events, mut plan_calls, mut makespan_ms) = (0u64, 0u64, 0u64);
    let tick = scenario.tick_ms;
    while let Some(Reverse((first, ..))) = heap.peek().copied() {
        // Every event until the end of this tick, then one round of planning.
        let now = first.div_ceil(tick) * tick;
        while let Some(&Reverse((t, _, region, job, render_ms))) = heap.peek() {
            if t > now {
                break;
            }
            heap.pop();
            events += 1;
            let (ri, ji) = (region as usize, job as usize);
            if region == ARRIVAL {
                jobs[ji].ready = (0..scenario.jobs[ji].tasks).collect();
                continue;
            }
            let render_s = render_ms as f64 / 1000.0;
            let core_s = render_s * scenario.cores_per_slot;
            let sim_job = &scenario.jobs[ji];
            let gpu_s = render_s * f64::from(sim_job.gpus);
            let st = &mut states[ri];
            let p = &regions[ri].profile;
            let cost = p.compute_cost(core_s) + p.gpu_cost(gpu_s, None);
            let kwh = p.energy_kwh(core_s) + p.gpu_energy_kwh(gpu_s);
            st.render_ms += render_ms;
            st.gpu_ms += render_ms * u64::from(sim_job.gpus);
            st.gpus_free += sim_job.gpus;
            for (pool, seats) in &sim_job.licenses {
                *seats_free.entry(pool.clone()).or_default() += seats;
            }
            st.report.tasks += 1;
            st.report.core_hours += core_s / 3600.0;
            st.report.gpu_hours += gpu_s / 3600.0;
            st.report.cost += cost;
            st.report.energy_kwh += kwh;
            st.report.carbon_kg += kwh * p.carbon_g_per_kwh / 1000.0;
            let view = &mut jobs[ji];
            view.in_flight -= 1;
            let sv = &mut studio_views[view.studio];
            sv.in_flight -= 1;
            if let Some(n) = sv.in_flight_in.get_mut(&p.name) {
                *n -= 1;
            }
            studio_render_ms[view.studio] += render_ms;
            book.record(&p.name, &view.renderer, view.needs.wall_seconds, render_s);
            let learned = book.factor(&p.name, &view.renderer);
            regions[ri].free += 1;
            match regions[ri].speed.get_mut(&view.renderer) {
                Some(v) => *v = learned,
                None => {
                    regions[ri].speed.insert(view.renderer.clone(), learned);
                }
            }
            let rep = &mut reports[ji];
            rep.done += 1;
            rep.cost += cost;
            if rep.done == rep.tasks {
                rep.finished_s = Some(t as f64 / 1000.0);
            }
            makespan_ms = makespan_ms.max(t);
        }
        // What the planner knows of transfers: inputs held, inputs on their way, busy links.
        for (view, st) in regions.iter_mut().zip(&states) {
            view.link_busy_secs = st.link_free_ms.saturating_sub(now) as f64 / 1000.0;
            view.arriving.clear();
            for (h, at) in &st.fetched {
                if *at > now {
                    view.arriving.insert(*h, (*at - now) as f64 / 1000.0);
                } else if !view.cached.contains(h) {
                    view.cached.insert(*h);
                }
            }
        }
        // Budgets: a studio under stop or cancel releases only what its budget has room for
        // (the coordinator's rule, [`budgets::budget_room`]).
        let mut spent = vec![(0.0, 0u32); studio_views.len()];
        for (ji, rep) in reports.iter().enumerate() {
            let s = &mut spent[studio_of[ji]];
            s.0 += rep.cost;
            s.1 += rep.done;
        }
        let mut stopped_now = vec![false; studio_views.len()];
        for (si, view) in studio_views.iter_mut().enumerate() {
            let (cost, done) = spent[si];
            let mean = (done > 0).then(|| cost / f64::from(done));
            let room = budgets::budget_room(&contracts[si], cost, view.in_flight, mean);
            stopped_now[si] = room == Some(0);
            studio_stopped[si] |= stopped_now[si];
            view.max_slots = match (room, contracts[si].max_slots) {
                (Some(r), Some(m)) => Some(m.min(view.in_flight.saturating_add(r))),
                (Some(r), None) => Some(view.in_flight.saturating_add(r)),
                (None, m) => m,
            };
        }
        // Whether every studio has work it may release this round.
        let mut waiting = vec![false; studio_views.len()];
        for (ji, job) in jobs.iter().enumerate() {
            waiting[studio_of[ji]] |= !job.ready.is_empty();
        }
        let contended =
            studio_views.len() > 1 && waiting.iter().zip(&stopped_now).all(|(w, s)| *w && !*s);
        // GPUs and licence seats, the coordinator's rules: a GPU job is offered only the GPUs
        // free in each region, a job drawing on a pool only the seats free; both shared out
        // in job order so that one round never plans past them. A job offered nothing sits
        // the round out.
        let mut gpus_left: Vec<u32> = states.iter().map(|s| s.gpus_free).collect();
        let mut seats_left = seats_free.clone();
        let mut held_back: Vec<(usize, std::collections::VecDeque<u32>)> = Vec::new();
        for (ji, job) in jobs.iter_mut().enumerate() {
            let sim_job = &scenario.jobs[ji];
            if job.ready.is_empty() || (sim_job.gpus == 0 && sim_job.licenses.is_empty()) {
                continue;
            }
            let want = job.ready.len() as u32;
            let mut by_seats = want;
            for (pool, seats) in &sim_job.licenses {
                by_seats = by_seats.min(seats_left.get(pool).copied().unwrap_or(0) / seats);
            }
            let mut room = BTreeMap::new();
            let mut total = 0u32;
            if sim_job.gpus > 0 {
                for (ri, r) in regions.iter().enumerate() {
                    let fit = gpus_left[ri].checked_div(sim_job.gpus).unwrap_or(0);
                    let n = fit.min(by_seats - total);
                    if n > 0 && job.allows(r.name()) {
                        room.insert(r.name().clone(), n);
                        gpus_left[ri] -= n * sim_job.gpus;
                        total += n;
                    }
                }
            } else {
                total = by_seats;
            }
            for (pool, seats) in &sim_job.licenses {
                if let Some(left) = seats_left.get_mut(pool) {
                    *left -= total * seats;
                }
            }
            if total == 0 {
                held_back.push((ji, std::mem::take(&mut job.ready)));
                continue;
            }
            job.region_room = room;
            if !sim_job.licenses.is_empty() {
                let cap = job.in_flight + total;
                job.max_slots = Some(job.max_slots.map_or(cap, |m| m.min(cap)));
            }
        }
        plan_calls += 1;
        let releases = dispatch::plan_studios(&mut jobs, &mut studio_views, &mut regions, now);
        for (ji, ready) in held_back {
            jobs[ji].ready = ready;
        }
        for (ji, job) in jobs.iter_mut().enumerate() {
            // The seat cap holds for this round only: the job's own cap comes back.
            if !scenario.jobs[ji].licenses.is_empty() {
                job.max_slots = scenario.jobs[ji].max_slots;
            }
        }
        for release in releases {
            let ri = regions
                .iter()
                .position(|r| r.name() == &release.region)
                .expect("plan releases onto known regions");
            let (job, st) = (&jobs[release.job], &mut states[ri]);
            let sim_job = &scenario.jobs[release.job];
            st.gpus_free -= sim_job.gpus;
            for (pool, seats) in &sim_job.licenses {
                if let Some(left) = seats_free.get_mut(pool) {
                    *left -= seats;
                }
            }
            let p = &regions[ri].profile;
            let bytes = job.needs.input_bytes;
            let inputs_at = match job.inputs {
                Some(h) if bytes > 0 => *st.fetched.entry(h).or_insert_with(|| {
                    let start = st.link_free_ms.max(now);
                    let end = start + secs_to_ms(p.transfer_secs(bytes));
                    st.link_free_ms = end;
                    st.report.gb_in += bytes as f64 / 1e9;
                    st.report.cost += p.transfer_cost(bytes);
                    reports[release.job].cost += p.transfer_cost(bytes);
                    end
                }),
                _ => now,
            };
            let jitter = 1.0 + scenario.jitter * (2.0 * rng.next_f64() - 1.0);
            let render_ms = secs_to_ms(job.needs.wall_seconds / st.speed * jitter).max(1);
            if contended {
                contended_ms[job.studio] += render_ms;
            }
            let end = inputs_at.max(now) + render_ms;
            heap.push(Reverse((
                end,
                seq,
                ri as u32,
                release.job as u32,
                render_ms,
            )));
            seq += 1;
        }
    }
    let makespan_s = makespan_ms as f64 / 1000.0;
    let mut out = SimReport {
        scenario: scenario.name.clone(),
        policy,
        currency: scenario.currency.clone(),
        makespan_s,
        cost: 0.0,
        energy_kwh: 0.0,
        carbon_kg: 0.0,
        gb_moved: 0.0,
        gpu_hours: 0.0,
        mean_turnaround_s: 0.0,
        tasks_done: 0,
        tasks_total: scenario.jobs.iter().map(|j| u64::from(j.tasks)).sum(),
        regions: Vec::new(),
        jobs: Vec::new(),
        studios: Vec::new(),
        events,
        plan_calls,
    };
    let all_render_ms: u64 = studio_render_ms.iter().sum();
    let all_contended_ms: u64 = contended_ms.iter().sum();
    for (si, name) in names.iter().enumerate() {
        let mine = || {
            reports
                .iter()
                .zip(&studio_of)
                .filter(move |(_, s)| **s == si)
                .map(|(r, _)| r)
        };
        let unfinished = mine().any(|r| r.finished_s.is_none());
        out.studios.push(StudioReport {
            name: name.to_string(),
            weight: contracts[si].weight,
            tasks: mine().map(|r| u64::from(r.tasks)).sum(),
            done: mine().map(|r| u64::from(r.done)).sum(),
            share: if all_render_ms == 0 {
                0.0
            } else {
                studio_render_ms[si] as f64 / all_render_ms as f64
            },
            contended_share: (all_contended_ms > 0)
                .then(|| contended_ms[si] as f64 / all_contended_ms as f64),
            makespan_s: if unfinished {
                None
            } else {
                mine().filter_map(|r| r.finished_s).reduce(f64::max)
            },
            spend: mine().map(|r| r.cost).sum(),
            budget: contracts[si].budget_per_month,
            stopped: studio_stopped[si],
        });
    }
    for mut st in states {
        st.report.utilization = if makespan_ms == 0 {
            0.0
        } else {
            st.render_ms as f64 / (f64::from(st.report.slots) * makespan_ms as f64)
        };
        if st.report.gpus > 0 && makespan_ms > 0 {
            st.report.gpu_utilization =
                st.gpu_ms as f64 / (f64::from(st.report.gpus) * makespan_ms as f64);
        }
        out.gpu_hours += st.report.gpu_hours;
        out.cost += st.report.cost;
        out.energy_kwh += st.report.energy_kwh;
        out.carbon_kg += st.report.carbon_kg;
        out.gb_moved += st.report.gb_in;
        out.tasks_done += st.report.tasks;
        out.regions.push(st.report);
    }
    let mut turnaround = 0.0;
    for mut rep in reports {
        rep.met_deadline = rep
            .due_s
            .map(|due| rep.finished_s.is_some_and(|f| f <= due + 1e-9));
        turnaround += rep.finished_s.unwrap_or(makespan_s) - rep.submitted_s;
        out.jobs.push(rep);
    }
    out.mean_turnaround_s = turnaround / out.jobs.len().max(1) as f64;
    out
}
