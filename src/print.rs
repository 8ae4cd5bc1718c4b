//! Everything the CLI prints for people and scripts: job status, job and worker lists, the
//! ledger table, the fetch summary, `--json` output, and the simulation's tables ([`sim`]).
//! Commands decide what to show; this module alone decides how it looks, so `demo` and the
//! commands print a job the same way without depending on each other.

pub mod sim;

use std::path::Path;
use std::time::Duration;

use suanli_shared::ledger::Ledger;
use suanli_shared::protocol::{now_ms, BudgetStatus, JobStatus, RegionFigures, WorkerInfo};

use crate::client::FetchReport;

/// Pretty JSON on stdout, for `--json`.
pub fn json<T: serde::Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// One job in full: counts, per-region figures, the reason it ended and its failed tasks with
/// the tail of each one's stderr.
pub fn status(s: &JobStatus) {
    println!(
        "job {}  {}  [{}]  studio {}",
        s.id,
        s.name,
        s.state.as_str(),
        s.studio
    );
    println!(
        "  frames {}/{} done ({} cached), {} failed",
        s.frames.done, s.frames.total, s.frames.cached, s.frames.failed
    );
    println!(
        "  tasks  {} total: {} pending, {} queued, {} running, {} done ({} cached), {} failed, {} canceled",
        s.tasks.total, s.tasks.pending, s.tasks.queued, s.tasks.running, s.tasks.done, s.tasks.cached, s.tasks.failed, s.tasks.canceled
    );
    if !s.requirements.is_empty() {
        println!("  needs  {}", s.requirements.summary());
    }
    for (region, r) in &s.regions {
        println!(
            "  region {region}: {} frames, {:.1} core-s, cost {:.3}, {:.3} kWh, {:.3} kg CO2, {:.1} MB in",
            r.frames_done, r.core_seconds, r.cost, r.energy_kwh, r.carbon_kg, r.bytes_in as f64 / 1e6
        );
    }
    for (region, p) in &s.inputs_in {
        println!(
            "  inputs in {region}: {:.1} of {:.1} MB ({}%){}",
            p.present_bytes as f64 / 1e6,
            p.total_bytes as f64 / 1e6,
            p.percent(),
            if p.done { "" } else { ", pre-staging" }
        );
    }
    if let Some(waiting) = &s.waiting {
        println!("  waiting: {waiting}");
    }
    if let Some(reason) = &s.reason {
        println!("  reason: {reason}");
    }
    if let Some(b) = &s.budget {
        println!("  budget: {}", budget_line(b));
    }
    for f in &s.failures {
        println!(
            "  task {} (frames {}) {:?}: attempt {} on {}/{}: {}{}",
            f.task,
            f.frames,
            f.state,
            f.failure.attempt,
            f.failure.region,
            f.failure.worker,
            f.failure.reason,
            f.failure
                .exit_code
                .map(|c| format!(" (exit {c})"))
                .unwrap_or_default()
        );
        for line in f
            .failure
            .stderr_tail
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            println!("      | {line}");
        }
    }
    if s.failures_total as usize > s.failures.len() {
        println!(
            "  … and {} more failed tasks",
            s.failures_total as usize - s.failures.len()
        );
    }
}

/// One line a job: id, studio, name, state, frames done, cached, age.
pub fn job_list(list: &[JobStatus]) {
    table(
        list,
        "no jobs",
        format!(
            "{:<26}  {:<12} {:<20} {:<9} {:>13}  {:>6}  age",
            "ID", "STUDIO", "NAME", "STATE", "FRAMES", "CACHED"
        ),
        |s| {
            format!(
                "{:<26}  {:<12} {:<20} {:<9} {:>6}/{:<6}  {:>6}  {}",
                s.id,
                truncate(s.studio.as_str(), 12),
                truncate(&s.name, 20),
                s.state.as_str(),
                s.frames.done,
                s.frames.total,
                s.frames.cached,
                age(s.created_ms)
            )
        },
    );
}

/// One line a worker: region, name, state, slots, tasks done, heartbeat age, current tasks.
pub fn workers(list: &[WorkerInfo]) {
    table(
        list,
        "no workers",
        format!(
            "{:<12} {:<24} {:<10} {:>5}  {:>8}  {:>10}  {:<36} current",
            "REGION", "WORKER", "STATE", "SLOTS", "TASKS", "HEARTBEAT", "RESOURCES"
        ),
        |w| {
            let current: Vec<String> = w
                .current
                .iter()
                .map(|c| {
                    format!(
                        "{}#{} {} {:.0}%",
                        &c.job.as_str()[..8.min(c.job.as_str().len())],
                        c.task,
                        c.chunk,
                        c.fraction * 100.0
                    )
                })
                .collect();
            format!(
                "{:<12} {:<24} {:<10} {:>2}/{:<2}  {:>8}  {:>10}  {:<36} {}",
                w.region.as_str(),
                truncate(w.id.as_str(), 24),
                format!("{:?}", w.state).to_lowercase(),
                w.busy,
                w.slots,
                w.tasks_done,
                format!("{} ago", age(w.heartbeat_ms)),
                resources(w.resources.as_ref(), w.gpus_busy),
                current.join(", ")
            )
        },
    );
}

/// A worker's resources in one cell: `16 cores, 64 GiB, 1/2 GPUs busy (NVIDIA RTX 4090 24 GiB),
/// tags arnold`; `-` for a worker that reports none.
fn resources(r: Option<&suanli_shared::protocol::Resources>, gpus_busy: u32) -> String {
    use suanli_shared::protocol::fmt_mib;
    let Some(r) = r else {
        return "-".into();
    };
    let mut out = format!("{} cores, {}", r.cores, fmt_mib(r.memory_mib));
    if !r.gpus.is_empty() {
        let mut models: Vec<String> = r
            .gpus
            .iter()
            .map(|g| format!("{} {}", g.name, fmt_mib(g.memory_mib)))
            .collect();
        models.dedup();
        out.push_str(&format!(
            ", {}/{} GPUs busy ({})",
            gpus_busy.min(r.gpus.len() as u32),
            r.gpus.len(),
            models.join("; ")
        ));
    }
    if !r.tags.is_empty() {
        out.push_str(&format!(", tags {}", r.tags.join(",")));
    }
    out
}

/// Prints `header` and one `row` an item, or only `none` when there are no items.
fn table<T>(items: &[T], none: &str, header: String, row: impl Fn(&T) -> String) {
    if items.is_empty() {
        println!("{none}");
        return;
    }
    println!("{header}");
    for item in items {
        println!("{}", row(item));
    }
}

/// The ledger: one row a region, then the total.
pub fn ledger(ledger: &Ledger) {
    println!(
        "{:<12} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "REGION", "FRAMES", "CORE-H", "GPU-H", "COST", "KWH", "KG CO2", "MB IN"
    );
    let row = |name: &str, r: &RegionFigures| {
        println!(
            "{:<12} {:>7} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.1}",
            name,
            r.frames_done,
            r.core_seconds / 3600.0,
            r.gpu_seconds / 3600.0,
            r.cost,
            r.energy_kwh,
            r.carbon_kg,
            r.bytes_in as f64 / 1e6
        )
    };
    for (region, r) in &ledger.regions {
        row(region, r);
    }
    row("total", &ledger.total);
    if ledger.studios.len() > 1 || !ledger.budgets.is_empty() {
        println!();
        println!(
            "{:<12} {:>7} {:>10} {:>10}   {:<8} {:>10} {:>10} {:>6}  AT LIMIT",
            "STUDIO", "FRAMES", "CORE-H", "COST", "MONTH", "SPENT", "BUDGET", "USED"
        );
        for (studio, r) in &ledger.studios {
            let month = match ledger.budgets.get(studio) {
                Some(b) => format!(
                    "{:<8} {:>10.3} {:>10.3} {:>5.0}%  {}{}",
                    b.month,
                    b.spent,
                    b.budget,
                    b.fraction() * 100.0,
                    b.at_limit.as_str(),
                    if b.stopped { " (releases stopped)" } else { "" }
                ),
                None => format!("{:<8} {:>10} {:>10} {:>6}  -", "-", "-", "no budget", "-"),
            };
            println!(
                "{:<12} {:>7} {:>10.3} {:>10.3}   {month}",
                studio.as_str(),
                r.frames_done,
                r.core_seconds / 3600.0,
                r.cost
            );
        }
    }
}

/// A studio's month against its budget, in one line.
pub fn budget_line(b: &BudgetStatus) -> String {
    format!(
        "studio {} spent {:.3} of {:.3} {} in {} ({:.0}%); at the limit: {}{}",
        b.studio,
        b.spent,
        b.budget,
        b.currency,
        b.month,
        b.fraction() * 100.0,
        b.at_limit.as_str(),
        if b.stopped { ", releases stopped" } else { "" }
    )
}

/// What `fetch` wrote into `out`; frames with no output yet go to stderr, naming the job's
/// `state`.
pub fn fetch(report: &FetchReport, out: &Path, state: &str) {
    println!(
        "{} frames in {} ({} downloaded, {} already there, {:.1} MB), {}",
        report.frames - report.unverified.len(),
        out.display(),
        report.downloaded,
        report.already_present,
        report.bytes as f64 / 1e6,
        if report.unverified.is_empty() {
            "all verified".to_string()
        } else {
            format!(
                "{} DAMAGED in the store (not written): {}",
                report.unverified.len(),
                report.unverified.join(", ")
            )
        }
    );
    if !report.missing.is_empty() {
        eprintln!(
            "{} frames have no output yet (job is {state})",
            report.missing.len(),
        );
    }
}

/// How long ago `ms` (Unix milliseconds) was, in whole seconds: "3m 12s".
fn age(ms: u64) -> String {
    let secs = now_ms().saturating_sub(ms) / 1000;
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// `s` cut to `n` characters, the last one an ellipsis when anything was cut.
fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).chain(['…']).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_cut_with_an_ellipsis() {
        assert_eq!(truncate("shot010", 20), "shot010");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("渲染渲染渲染", 3), "渲染…");
    }
}
