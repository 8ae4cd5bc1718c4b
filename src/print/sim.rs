//! `suanli sim` output: each policy's report as text, a Markdown table comparing the
//! policies, or the reports as JSON. The simulation returns figures; their look lives here.

use std::fmt::{self, Write as _};

use suanli_coordinator::sim::{dominated, PolicyRun, Scenario, SimReport};

/// The text `suanli sim` prints: the scenario's description, each policy's report with the
/// simulation's own effort, then the comparison table.
pub fn text(scenario: &Scenario, runs: &[PolicyRun]) -> String {
    let mut text = String::new();
    if !scenario.description.is_empty() {
        text.push_str(&format!(
            "{}: {}\n\n",
            scenario.name,
            scenario.description.trim()
        ));
    }
    for run in runs {
        text.push_str(&format!(
            "{}  ({} events, {} plans, simulated in {:.2} s)\n\n",
            report(&run.report),
            run.report.events,
            run.report.plan_calls,
            run.wall.as_secs_f64()
        ));
    }
    text.push_str(&comparison_table(runs));
    text.push('\n');
    let studios = studios_table(runs);
    if !studios.is_empty() {
        text.push_str(&studios);
        text.push('\n');
    }
    text.push_str(&dominance_line(runs));
    text
}

/// Which policies another beats on cost, carbon and makespan at once ("none" when each is
/// best at something).
pub fn dominance_line(runs: &[PolicyRun]) -> String {
    let reports: Vec<&SimReport> = runs.iter().map(|run| &run.report).collect();
    let found = dominated(&reports);
    if found.is_empty() {
        return "dominated policies: none\n".to_string();
    }
    let list: Vec<String> = found
        .iter()
        .map(|(p, by)| format!("{p} (by {by}: dearer, dirtier and slower)"))
        .collect();
    format!("dominated policies: {}\n", list.join(", "))
}

/// `suanli sim --json`: the reports as a JSON array, one per policy.
pub fn json(runs: &[PolicyRun]) -> String {
    let reports: Vec<&SimReport> = runs.iter().map(|run| &run.report).collect();
    serde_json::to_string_pretty(&reports).unwrap_or_default() + "\n"
}

/// "36.2 h", "14.0 min", "52 s".
pub fn duration(secs: f64) -> String {
    if secs >= 3600.0 {
        format!("{:.1} h", secs / 3600.0)
    } else if secs >= 60.0 {
        format!("{:.1} min", secs / 60.0)
    } else {
        format!("{secs:.0} s")
    }
}

/// Thousands separators for large figures: 1234567.8 -> "1,234,568".
fn grouped(x: f64) -> String {
    let n = x.round() as i64;
    let digits: Vec<char> = n.unsigned_abs().to_string().chars().rev().collect();
    let groups: Vec<String> = digits
        .chunks(3)
        .map(|g| g.iter().rev().collect())
        .rev()
        .collect();
    let out = groups.join(",");
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// One policy's report: totals, a row a region, a line a job.
pub fn report(r: &SimReport) -> String {
    let mut f = String::new();
    write_report(&mut f, r).expect("writing to a String cannot fail");
    f
}

fn write_report(f: &mut String, r: &SimReport) -> fmt::Result {
    writeln!(
            f,
            "{} / {}: makespan {} (mean job {}), cost {} {}, energy {} kWh, carbon {} kg CO2, {} GB moved, {}/{} tasks",
            r.scenario,
            r.policy,
            duration(r.makespan_s),
            duration(r.mean_turnaround_s),
            grouped(r.cost),
            r.currency,
            grouped(r.energy_kwh),
            grouped(r.carbon_kg),
            grouped(r.gb_moved),
            r.tasks_done,
            r.tasks_total
        )?;
    writeln!(
        f,
        "  {:<12} {:>7} {:>9} {:>11} {:>12} {:>10} {:>8} {:>6}",
        "region", "slots", "tasks", "core-h", "cost", "kg CO2", "GB in", "util"
    )?;
    for x in &r.regions {
        writeln!(
            f,
            "  {:<12} {:>7} {:>9} {:>11} {:>12} {:>10} {:>8.0} {:>5.0}%",
            x.name,
            x.slots,
            x.tasks,
            grouped(x.core_hours),
            grouped(x.cost),
            grouped(x.carbon_kg),
            x.gb_in,
            x.utilization * 100.0
        )?;
    }
    // GPU regions: the GPUs, the GPU-hours held and how busy the GPUs were.
    for x in r.regions.iter().filter(|x| x.gpus > 0) {
        writeln!(
            f,
            "  {:<12} {} GPUs: {} GPU-h, {:.0}% busy",
            x.name,
            x.gpus,
            grouped(x.gpu_hours),
            x.gpu_utilization * 100.0
        )?;
    }
    for j in &r.jobs {
        let finished = j
            .finished_s
            .map(|s| format!("done at {}", duration(s)))
            .unwrap_or_else(|| format!("{}/{} done", j.done, j.tasks));
        let deadline = match (j.due_s, j.met_deadline) {
            (Some(d), Some(true)) => format!(" (due {}: met)", duration(d)),
            (Some(d), _) => format!(" (due {}: MISSED)", duration(d)),
            _ => String::new(),
        };
        writeln!(
            f,
            "  job {:<12} {:>9} tasks, in at {}, {}{}, cost {} {}",
            j.name,
            j.tasks,
            duration(j.submitted_s),
            finished,
            deadline,
            grouped(j.cost),
            r.currency
        )?;
    }
    Ok(())
}

/// A Markdown table comparing policies on one scenario: one row per report.
pub fn comparison_table(runs: &[PolicyRun]) -> String {
    let Some(first) = runs.first().map(|run| &run.report) else {
        return String::new();
    };
    let mut out = String::new();
    let mut header = format!(
        "| policy | makespan | mean job time | cost ({}) | carbon (kg CO2) | GB moved | deadlines met |",
        first.currency
    );
    let mut rule = "| --- | ---: | ---: | ---: | ---: | ---: | ---: |".to_string();
    for r in &first.regions {
        header.push_str(&format!(" util {} |", r.name));
        rule.push_str(" ---: |");
    }
    out.push_str(&header);
    out.push('\n');
    out.push_str(&rule);
    out.push('\n');
    for rep in runs.iter().map(|run| &run.report) {
        let with_deadline = rep.jobs.iter().filter(|j| j.due_s.is_some()).count();
        let met = rep
            .jobs
            .iter()
            .filter(|j| j.met_deadline == Some(true))
            .count();
        let deadlines = if with_deadline == 0 {
            "-".to_string()
        } else {
            format!("{met}/{with_deadline}")
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            rep.policy,
            duration(rep.makespan_s),
            duration(rep.mean_turnaround_s),
            grouped(rep.cost),
            grouped(rep.carbon_kg),
            grouped(rep.gb_moved),
            deadlines
        ));
        for r in &rep.regions {
            out.push_str(&format!(" {:.0}% |", r.utilization * 100.0));
        }
        out.push('\n');
    }
    out
}

/// A Markdown table of each studio's share of the render time, makespan and spend per policy;
/// empty when the scenario has one studio and no budget.
pub fn studios_table(runs: &[PolicyRun]) -> String {
    let Some(first) = runs.first().map(|run| &run.report) else {
        return String::new();
    };
    if first.studios.len() < 2 && first.studios.iter().all(|s| s.budget.is_none()) {
        return String::new();
    }
    let mut out = format!(
        "| policy | studio | weight | share, all studios busy | share, whole run | makespan | spend ({c}) | budget ({c}) | tasks done |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        c = first.currency
    );
    for rep in runs.iter().map(|run| &run.report) {
        for s in &rep.studios {
            let makespan = s
                .makespan_s
                .map_or_else(|| "unfinished".to_string(), duration);
            let budget = match s.budget {
                Some(b) if s.stopped => format!("{} (stopped)", grouped(b)),
                Some(b) => grouped(b),
                None => "-".to_string(),
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {:.1}% | {} | {} | {} | {}/{} |\n",
                rep.policy,
                s.name,
                s.weight,
                s.contended_share
                    .map_or_else(|| "-".to_string(), |c| format!("{:.1}%", c * 100.0)),
                s.share * 100.0,
                makespan,
                grouped(s.spend),
                budget,
                s.done,
                s.tasks
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use suanli_shared::protocol::Policy;

    use super::*;

    /// A cheap region far away and a dear one that already holds the inputs.
    const TWO_REGIONS: &str = r#"
name = "pair"
description = "two regions, one shot"
[[region]]
name = "guian"
price_per_core_hour = 0.06
workers = 4
[[region]]
name = "shenzhen"
price_per_core_hour = 0.20
workers = 4
cached = ["shot"]
[[job]]
name = "shot"
tasks = 40
task_core_seconds = 600.0
deadline_s = 36000.0
"#;

    fn runs() -> (Scenario, Vec<PolicyRun>) {
        let scenario = Scenario::from_toml(TWO_REGIONS, "inline").unwrap();
        let runs = suanli_coordinator::sim::run_policies(&scenario, &Policy::ALL);
        (scenario, runs)
    }

    #[test]
    fn the_report_prints_as_tables() {
        let (scenario, runs) = runs();
        let one = report(&runs[0].report);
        assert!(one.starts_with("pair / balanced: makespan"), "{one}");
        assert!(one.contains("guian") && one.contains("shenzhen"), "{one}");
        assert!(one.contains("(due 10.0 h: met)"), "{one}");
        let table = comparison_table(&runs);
        assert_eq!(table.lines().count(), 2 + 4, "{table}");
        assert!(table.contains("| cheapest |") && table.contains("util guian"));
        assert!(table.contains("| 1/1 |"), "{table}");
        let text = text(&scenario, &runs);
        assert!(
            text.starts_with("pair: two regions, one shot\n\n"),
            "{text}"
        );
        assert!(text.contains("plans, simulated in") && text.contains(&table));
        assert!(text.ends_with(&dominance_line(&runs)), "{text}");
        assert!(comparison_table(&[]).is_empty());
    }

    #[test]
    fn studios_get_a_table_when_there_are_several_or_a_budget() {
        let (_, runs) = runs();
        assert!(studios_table(&runs).is_empty(), "one studio, no budget");
        let two = TWO_REGIONS.replace(
            "[[job]]\nname = \"shot\"",
            "[[studio]]\nname = \"acme\"\nweight = 3.0\nbudget_per_month = 0.2\nat_limit = \"stop\"\n\n\
             [[job]]\nname = \"other\"\ntasks = 40\ntask_core_seconds = 600.0\n\n\
             [[job]]\nstudio = \"acme\"\nname = \"shot\"",
        );
        let scenario = Scenario::from_toml(&two, "inline").unwrap();
        let runs = suanli_coordinator::sim::run_policies(&scenario, &[Policy::Fastest]);
        let table = studios_table(&runs);
        assert_eq!(table.lines().count(), 2 + 2, "{table}");
        let acme = table.lines().find(|l| l.contains("| acme |")).unwrap();
        assert!(
            acme.contains("| 0 (stopped) |") && acme.contains("| unfinished |"),
            "{acme}"
        );
        assert!(text(&scenario, &runs).contains(&table));
    }

    #[test]
    fn json_is_an_array_of_reports() {
        let (_, runs) = runs();
        let json: serde_json::Value = serde_json::from_str(&json(&runs)).unwrap();
        assert_eq!(json.as_array().unwrap().len(), 4);
        assert_eq!(json[1]["policy"], "cheapest");
        assert_eq!(json[0]["tasks_done"], 40);
    }

    #[test]
    fn figures_read_at_a_glance() {
        assert_eq!(grouped(1234567.8), "1,234,568");
        assert_eq!(grouped(-1234.0), "-1,234");
        assert_eq!(duration(5400.0), "1.5 h");
        assert_eq!(duration(90.0), "1.5 min");
        assert_eq!(duration(52.4), "52 s");
    }
}
