//! `suanli sim`: a discrete-event simulation of a farm far larger than one machine, driven by
//! the coordinator's own [`crate::dispatch::plan`] and [`crate::placement`] code, so a policy
//! can be judged on paper (makespan, cost, carbon, utilization, data moved) before it runs a
//! film.
//!
//! The model: each region has `workers × slots_per_worker` render slots of `cores_per_slot`
//! cores and a true speed; a task's render takes `task_core_seconds / cores_per_slot / speed`
//! seconds, varied by ±`jitter`. The first task of a job in a region that lacks the job's
//! inputs fetches them over the region's link (one fetch at a time per link; later tasks of
//! the job wait for that fetch, not another). Tasks are released only onto free slots (no
//! prefetch). Like the coordinator, which plans after events and on a half-second timer, the
//! simulation plans once per `tick_s` in which something happened (a slot freed, a job
//! arrived); that keeps a million-task run to about one `plan` per tick. The planner does
//! not know true speeds: it learns them from finished tasks with a
//! [`crate::placement::SpeedBook`], as the coordinator does. Time is kept in integer
//! milliseconds so runs are exactly reproducible.
//!
//! `scenario` reads and checks a scenario, `engine` runs it, `report` holds what a run
//! yields. Formatting is the binary's business (`src/print/sim.rs` in the `suanli` package).

mod engine;
mod report;
mod scenario;

use std::time::Instant;

use suanli_shared::protocol::Policy;

pub use engine::run_scenario;
pub use report::{dominated, JobReport, PolicyRun, RegionReport, SimReport, StudioReport};
pub use scenario::{Scenario, ScenarioError, SimJob, SimRegion};

fn secs_to_ms(s: f64) -> u64 {
    (s * 1000.0).round().max(0.0) as u64
}

/// The policies `suanli sim --policy` names: one, or `all`.
pub fn policies_from_arg(arg: &str) -> Result<Vec<Policy>, ScenarioError> {
    if arg.trim() == "all" {
        return Ok(Policy::ALL.to_vec());
    }
    arg.parse::<Policy>()
        .map(|p| vec![p])
        .map_err(|e| ScenarioError::Invalid(format!("{e} or all")))
}

/// Runs `scenario` once per policy, timing each run.
pub fn run_policies(scenario: &Scenario, policies: &[Policy]) -> Vec<PolicyRun> {
    policies
        .iter()
        .map(|&policy| {
            let started = Instant::now();
            let report = run_scenario(scenario, policy);
            PolicyRun {
                report,
                wall: started.elapsed(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two regions: a cheap, green, slower one far away, a dear, fast one near the studio.
    const SMALL: &str = r#"
name = "small"
cores_per_slot = 4
jitter = 0.1
seed = 7

[[region]]
name = "guian"
price_per_core_hour = 0.06
pue = 1.12
carbon_g_per_kwh = 300.0
watts_per_core = 8.0
egress_per_gb = 0.4
bandwidth_mbps = 1000.0
workers = 20
speed = 0.8

[[region]]
name = "shenzhen"
price_per_core_hour = 0.20
pue = 1.47
carbon_g_per_kwh = 650.0
watts_per_core = 10.0
bandwidth_mbps = 10000.0
workers = 20
speed = 1.2
cached = ["shot"]

[[job]]
name = "shot"
tasks = 400
task_core_seconds = 1200.0
input_gb = 20.0
"#;

    fn small() -> Scenario {
        Scenario::from_toml(SMALL, "inline").unwrap()
    }

    #[test]
    fn every_policy_renders_every_task() {
        let s = small();
        for policy in Policy::ALL {
            let r = run_scenario(&s, policy);
            assert_eq!(r.tasks_done, 400, "{policy}");
            assert_eq!(r.jobs[0].done, 400);
            assert!(r.makespan_s > 0.0 && r.cost > 0.0 && r.carbon_kg > 0.0);
            assert!(r.regions.iter().all(|x| x.utilization <= 1.0 + 1e-9));
            let region_cost: f64 = r.regions.iter().map(|x| x.cost).sum();
            assert!((region_cost - r.jobs[0].cost).abs() < 1e-6);
        }
    }

    #[test]
    fn policies_trade_money_time_and_carbon() {
        let s = small();
        let run = |p| run_scenario(&s, p);
        let mut patient = small();
        patient.terms.patience = 100.0;
        let (cheap, fast, green, bal) = (
            run_scenario(&patient, Policy::Cheapest),
            run(Policy::Fastest),
            run(Policy::Greenest),
            run(Policy::Balanced),
        );
        assert!(cheap.cost < fast.cost, "{} vs {}", cheap.cost, fast.cost);
        assert!(fast.makespan_s <= cheap.makespan_s);
        assert!(green.carbon_kg < fast.carbon_kg);
        assert!(bal.cost <= fast.cost && bal.makespan_s <= cheap.makespan_s);
        // Cheapest with all the patience in the world keeps to the cheap region: the dear one
        // renders nothing. With the default patience it uses both, within 1.5 x fastest.
        assert_eq!(cheap.regions[1].tasks, 0, "{cheap:?}");
        let bounded = run(Policy::Cheapest);
        assert!(bounded.regions[1].tasks > 0, "{bounded:?}");
        assert!(bounded.makespan_s <= 1.5 * fast.makespan_s, "{bounded:?}");
        assert!(bounded.cost < fast.cost && bounded.cost > cheap.cost);
        // Guian lacked the inputs: whoever used it moved them exactly once.
        for r in [&cheap, &fast, &green, &bal] {
            let moved = r.regions[0].gb_in;
            assert!(moved == 0.0 || (moved - 20.0).abs() < 1e-9, "{moved}");
            assert_eq!(r.regions[1].gb_in, 0.0, "shenzhen had the inputs");
        }
    }

    #[test]
    fn deadlines_make_cheapest_spend() {
        let mut s = small();
        s.terms.patience = 100.0;
        let relaxed = run_scenario(&s, Policy::Cheapest);
        let fastest = run_scenario(&s, Policy::Fastest);
        // Between what the cheap region alone and the whole farm take.
        let deadline = (relaxed.makespan_s + fastest.makespan_s) / 2.0;
        s.jobs[0].deadline_s = Some(deadline);
        assert_eq!(relaxed.regions[0].tasks, 400, "{relaxed:?}");
        let tight = run_scenario(&s, Policy::Cheapest);
        assert!(tight.regions[1].tasks > 0, "{tight:?}");
        assert!(tight.makespan_s < relaxed.makespan_s);
        assert_eq!(tight.jobs[0].met_deadline, Some(true), "{tight:?}");
        assert!(tight.cost > relaxed.cost);
    }

    #[test]
    fn priorities_and_caps_hold_in_the_simulation() {
        let mut s = small();
        s.jobs[0].tasks = 200;
        let mut urgent = s.jobs[0].clone();
        urgent.name = "urgent".into();
        urgent.priority = 5;
        urgent.submit_at_s = 600.0;
        let mut capped = s.jobs[0].clone();
        capped.name = "capped".into();
        capped.max_slots = Some(4);
        s.jobs.push(urgent);
        s.jobs.push(capped);
        let r = run_scenario(&s, Policy::Fastest);
        assert_eq!(r.tasks_done, 600);
        let end = |name: &str| {
            r.jobs
                .iter()
                .find(|j| j.name == name)
                .and_then(|j| j.finished_s)
                .unwrap()
        };
        assert!(end("urgent") < end("shot"), "{r:?}");
        // Four slots at a time: at least 200 / 4 rounds of a task (>= 250 s each).
        assert!(end("capped") >= 50.0 * 250.0, "{r:?}");
    }

    #[test]
    fn runs_are_reproducible_and_scenarios_checked() {
        let s = small();
        assert_eq!(
            run_scenario(&s, Policy::Balanced),
            run_scenario(&s, Policy::Balanced)
        );
        let bad = |text: &str| Scenario::from_toml(text, "t").unwrap_err().to_string();
        assert!(bad(&SMALL.replace("pue = 1.12", "pue = 0.5")).contains("pue"));
        assert!(bad(&SMALL.replace("tasks = 400", "tasks = 0")).contains("tasks"));
        assert!(
            bad(&SMALL.replace("workers = 20\nspeed = 0.8", "workers = 0")).contains("workers")
        );
        assert!(
            bad(&SMALL.replace("input_gb = 20.0", "regions = [\"mars\"]"))
                .contains("'mars' is not in the scenario")
        );
        assert!(bad(&SMALL.replace("seed = 7", "seed = 7\nsed = 1")).contains("line 6"));
        assert!(bad(&SMALL.replace("seed = 7", "seed = 7\npatience = 0.9")).contains("patience"));
        assert!(
            bad(&SMALL.replace("seed = 7", "seed = 7\ncarbon_price_per_tonne = -1"))
                .contains("carbon_price_per_tonne")
        );
        assert!(
            bad(&SMALL.replace("input_gb = 20.0", "input_gb = 20.0\nvalue_of_hour = -5"))
                .contains("job 'shot': value_of_hour")
        );
    }

    #[test]
    fn a_policy_is_dominated_only_when_worse_on_all_three() {
        let s = small();
        let fast = run_scenario(&s, Policy::Fastest);
        let mut worse = fast.clone();
        worse.policy = Policy::Greenest;
        worse.cost += 1.0;
        worse.carbon_kg += 1.0;
        assert!(dominated(&[&fast, &worse]).is_empty(), "equal makespan");
        worse.makespan_s += 1.0;
        assert_eq!(
            dominated(&[&fast, &worse]),
            [(Policy::Greenest, Policy::Fastest)]
        );
        worse.carbon_kg -= 2.0;
        assert!(dominated(&[&fast, &worse]).is_empty(), "greener");
    }

    #[test]
    fn repeated_jobs_and_policy_names() {
        let text = SMALL.replace(
            "input_gb = 20.0",
            "input_gb = 20.0\nrepeat = 3\nevery_s = 600.0",
        );
        let s = Scenario::from_toml(&text, "t").unwrap();
        let names: Vec<(&str, f64)> = s
            .jobs
            .iter()
            .map(|j| (j.name.as_str(), j.submit_at_s))
            .collect();
        assert_eq!(
            names,
            [("shot-1", 0.0), ("shot-2", 600.0), ("shot-3", 1200.0)]
        );
        let r = run_scenario(&s, Policy::Fastest);
        assert_eq!(r.tasks_done, 1200);
        assert!(r.mean_turnaround_s > 0.0 && r.mean_turnaround_s < r.makespan_s);
        assert_eq!(policies_from_arg("all").unwrap().len(), 4);
        assert_eq!(policies_from_arg("greenest").unwrap(), [Policy::Greenest]);
        assert!(policies_from_arg("green").is_err());
        let runs = run_policies(&small(), &Policy::ALL);
        let policies: Vec<Policy> = runs.iter().map(|run| run.report.policy).collect();
        assert_eq!(policies, Policy::ALL);
        assert!(matches!(
            Scenario::load(std::path::Path::new("/nonexistent/nope.toml")),
            Err(ScenarioError::Read { .. })
        ));
    }

    /// Two studios weighted 3:1 with a job each, one held to guian and stopped by a budget of
    /// about 100 tasks (0.027 CNY each in guian at 1200 core-seconds and 0.08 CNY/core-hour).
    const STUDIOS: &str = r#"
name = "two studios"
cores_per_slot = 4
jitter = 0.3
seed = 3

[[region]]
name = "guian"
price_per_core_hour = 0.08
workers = 40

[[region]]
name = "shenzhen"
price_per_core_hour = 0.20
workers = 40

[[studio]]
name = "big"
weight = 3.0

[[studio]]
name = "small"
weight = 1.0
regions = ["guian"]
budget_per_month = 2.7
at_limit = "stop"

[[job]]
name = "feature"
studio = "big"
tasks = 2000
task_core_seconds = 1200.0

[[job]]
name = "spot"
studio = "small"
tasks = 400
task_core_seconds = 1200.0
"#;

    #[test]
    fn studios_share_by_weight_and_a_budget_stops_one() {
        let s = Scenario::from_toml(STUDIOS, "inline").unwrap();
        let r = run_scenario(&s, Policy::Fastest);
        let by = |name: &str| r.studios.iter().find(|x| x.name == name).unwrap();
        let (big, small) = (by("big"), by("small"));
        // While both had work, slots went 3:1 (80 slots: 60 and 20).
        let share = small.contended_share.unwrap();
        assert!((share - 0.25).abs() < 0.02, "small's share {share}");
        // Its budget stopped it. Renders vary by up to 30 % here, so what the tasks in flight
        // were expected to cost is off by a few tasks' worth; with exact estimates (no
        // jitter) it stops within one task (0.0267) of 2.7.
        let one_task = 1200.0 / 3600.0 * 0.08;
        assert!(small.stopped && small.done < small.tasks, "{small:?}");
        assert!((small.spend - 2.7).abs() <= 4.0 * one_task, "{small:?}");
        assert!(small.makespan_s.is_none());
        let exact =
            Scenario::from_toml(&STUDIOS.replace("jitter = 0.3", "jitter = 0.0"), "t").unwrap();
        let exact = run_scenario(&exact, Policy::Fastest);
        let small_exact = exact.studios.iter().find(|x| x.name == "small").unwrap();
        assert!(small_exact.stopped, "{small_exact:?}");
        assert!(
            (small_exact.spend - 2.7).abs() <= one_task + 1e-9,
            "{small_exact:?}"
        );
        assert_eq!(big.done, 2000);
        assert!(big.makespan_s.is_some() && !big.stopped && big.budget.is_none());
        // Its tasks stayed in guian: shenzhen rendered only big's.
        let shenzhen = r.regions.iter().find(|x| x.name == "shenzhen").unwrap();
        let guian = r.regions.iter().find(|x| x.name == "guian").unwrap();
        assert_eq!(guian.tasks + shenzhen.tasks, big.done + small.done);
        assert!(guian.tasks >= small.done);
        let exact_in_guian = small_exact.done as f64 * one_task;
        assert!(
            (small_exact.spend - exact_in_guian).abs() < 1e-6,
            "priced at guian's rate: {small_exact:?}"
        );
    }

    #[test]
    fn scenario_studios_are_checked() {
        let bad = STUDIOS.replace(
            "studio = \"small\"\ntasks",
            "studio = \"small\"\nregions = [\"shenzhen\"]\ntasks",
        );
        let e = Scenario::from_toml(&bad, "t").unwrap_err().to_string();
        assert!(
            e.contains("studio 'small' may not send data to region 'shenzhen'"),
            "{e}"
        );
        let bad = STUDIOS.replace("weight = 1.0", "weight = -1.0");
        let e = Scenario::from_toml(&bad, "t").unwrap_err().to_string();
        assert!(e.contains("studio 'small': weight"), "{e}");
    }

    const GPUS: &str = r#"
name = "gpus"
cores_per_slot = 10
tick_s = 1.0

[licenses]
redshift = 2

[[region]]
name = "west"
price_per_core_hour = 0.2
price_per_gpu_hour = 3.6
watts_per_gpu = 300.0
workers = 10
gpus = 4

[[region]]
name = "east"
price_per_core_hour = 0.1
workers = 10

[[job]]
name = "gpu"
tasks = 20
task_core_seconds = 1000.0
gpus = 2

[[job]]
name = "cpu"
tasks = 10
task_core_seconds = 1000.0

[[job]]
name = "licensed"
tasks = 10
task_core_seconds = 1000.0
licenses = { redshift = 1 }
regions = ["east"]
"#;

    #[test]
    fn gpu_jobs_run_where_the_gpus_are_and_licences_bound_their_jobs() {
        let s = Scenario::from_toml(GPUS, "inline").unwrap();
        let r = run_scenario(&s, Policy::Cheapest);
        assert_eq!(r.tasks_done, r.tasks_total);
        let region = |name: &str| r.regions.iter().find(|x| x.name == name).unwrap();
        let (west, east) = (region("west"), region("east"));
        // The GPU job ran only in the west; the CPU jobs in the cheaper east, which had room.
        assert_eq!(west.tasks, 20, "{west:?}");
        assert_eq!(east.tasks, 20, "{east:?}");
        // 20 tasks x 100 s x 2 GPUs, priced and powered apart from the cores.
        assert!((west.gpu_hours - 4000.0 / 3600.0).abs() < 1e-9, "{west:?}");
        let core_h = 20.0 * 1000.0 / 3600.0;
        assert!((west.cost - (core_h * 0.2 + west.gpu_hours * 3.6)).abs() < 1e-9);
        assert_eq!(east.gpu_hours, 0.0);
        // Four GPUs hold two 2-GPU tasks at once: ten rounds of 100 s.
        let job = |name: &str| r.jobs.iter().find(|x| x.name == name).unwrap();
        assert!(job("gpu").finished_s.unwrap() >= 1000.0, "{:?}", job("gpu"));
        // Two seats: ten licensed tasks of 100 s take five rounds, though ten slots were free.
        let licensed = job("licensed").finished_s.unwrap();
        assert!((500.0..600.0).contains(&licensed), "{licensed}");
        // Eight east slots beside the two licensed tasks: two rounds.
        assert!(job("cpu").finished_s.unwrap() <= 200.0, "{:?}", job("cpu"));
    }

    #[test]
    fn gpu_and_licence_scenarios_are_checked_and_the_shipped_one_loads() {
        let e = |text: String| Scenario::from_toml(&text, "t").unwrap_err().to_string();
        let bad = e(GPUS.replace("gpus = 2", "gpus = 8"));
        assert!(bad.contains("need 8 GPUs each and no region"), "{bad}");
        let bad = e(GPUS.replace("{ redshift = 1 }", "{ vray = 1 }"));
        assert!(
            bad.contains("licence pool 'vray' is not in [licenses]"),
            "{bad}"
        );
        let bad = e(GPUS.replace("{ redshift = 1 }", "{ redshift = 3 }"));
        assert!(bad.contains("licenses.redshift = 3"), "{bad}");
        let shipped = include_str!("../../deploy/sim/guian-gpu.toml");
        let s = Scenario::from_toml(shipped, "deploy/sim/guian-gpu.toml").unwrap();
        assert_eq!(s.regions.iter().map(|r| r.gpus).sum::<u32>(), 1200);
        assert_eq!(s.licenses["redshift"], 20);
    }
}
