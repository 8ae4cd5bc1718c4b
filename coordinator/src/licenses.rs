//! Floating licences: farm-wide pools of seats (the region catalog's `[licenses]`,
//! `redshift = 20`) that a job's tasks hold while they are released or running, in whatever
//! region. The pool is never exceeded: a round releases a task only while every pool it draws
//! on has its seats free, and seats in use are counted from the task records (queued and
//! running tasks), so a restarted coordinator counts exactly what its predecessor held.
//!
//! A released task holds its seats from its release, not only from its start: the coordinator
//! cannot know when a worker will start it, and a seat counted early is never a seat
//! oversold.

use std::collections::BTreeMap;

use suanli_shared::protocol::JobSpec;
use suanli_shared::JobId;

use crate::release::Planned;
use crate::state::Job;

/// Seats per pool name.
pub type Pools = BTreeMap<String, u32>;

/// Refuses at submit a job that names a pool the farm does not have, or asks for more seats
/// per task than the pool holds (it could never run).
pub fn check_job(pools: &Pools, spec: &JobSpec) -> Result<(), String> {
    for (name, seats) in &spec.requirements.licenses {
        match pools.get(name) {
            None => {
                let known = if pools.is_empty() {
                    "the farm has no licence pools (the region catalog's [licenses])".to_string()
                } else {
                    let names: Vec<&str> = pools.keys().map(String::as_str).collect();
                    format!("the farm's pools are {}", names.join(", "))
                };
                return Err(format!("licence pool '{name}' is unknown: {known}"));
            }
            Some(total) if seats > total => {
                return Err(format!(
                    "each task asks for {seats} '{name}' seats, but the pool has {total}: no task could ever run"
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Seats in use per pool: each queued or running task of a job holds its job's seats.
pub fn in_use<'a>(jobs: impl IntoIterator<Item = &'a Job>) -> Pools {
    let mut used = Pools::new();
    for job in jobs {
        let licenses = &job.rec.rec.spec.requirements.licenses;
        if licenses.is_empty() {
            continue;
        }
        let held = job.in_flight();
        for (name, seats) in licenses {
            *used.entry(name.clone()).or_default() += held.saturating_mul(*seats);
        }
    }
    used
}

/// Free seats per pool: the pools less what queued and running tasks hold (nothing to count
/// on a farm without pools).
pub fn free<'a>(pools: &Pools, jobs: impl IntoIterator<Item = &'a Job>) -> Pools {
    let mut free = pools.clone();
    if pools.is_empty() {
        return free;
    }
    for (name, used) in in_use(jobs) {
        if let Some(f) = free.get_mut(&name) {
            *f = f.saturating_sub(used);
        }
    }
    free
}

/// Keeps the planned releases whose seats are among the `free` ones ([`free`]), in plan order;
/// the others stay ready for a later round. Tasks of jobs that ask for no licence always pass.
pub fn within_pools(
    planned: Vec<Planned>,
    jobs: &BTreeMap<JobId, Job>,
    mut free: Pools,
) -> Vec<Planned> {
    if free.is_empty() {
        return planned;
    }
    planned
        .into_iter()
        .filter(|p| {
            let Some(job) = jobs.get(&p.job) else {
                return false;
            };
            let licenses = &job.rec.rec.spec.requirements.licenses;
            let fits = licenses
                .iter()
                .all(|(name, seats)| free.get(name).is_some_and(|f| f >= seats));
            if fits {
                for (name, seats) in licenses {
                    if let Some(f) = free.get_mut(name) {
                        *f -= seats;
                    }
                }
            }
            fits
        })
        .collect()
}

/// Why a job's ready tasks wait for licence seats (`redshift: 3 of 3 seats in use`), or `None`
/// when every pool it draws on has room for one more task.
pub fn waiting(spec: &JobSpec, pools: &Pools, used: &Pools) -> Option<String> {
    let short: Vec<String> = spec
        .requirements
        .licenses
        .iter()
        .filter_map(|(name, seats)| {
            let total = pools.get(name).copied().unwrap_or(0);
            let in_use = used.get(name).copied().unwrap_or(0);
            (total.saturating_sub(in_use) < *seats)
                .then(|| format!("{name}: {in_use} of {total} seats in use"))
        })
        .collect();
    (!short.is_empty()).then(|| {
        format!(
            "waiting for licence seats ({}); its tasks start as seats are given back",
            short.join(", ")
        )
    })
}
