//! The commands about the farm rather than one job: `workers`, `worker drain` and `ledger`.

use suanli_shared::ledger::Ledger;
use suanli_shared::protocol::WorkerInfo;
use suanli_shared::JobId;

use crate::client::ClientConfig;
use crate::exit::BadInput;
use crate::print;

/// `suanli workers`.
pub async fn workers(api: &ClientConfig, json: bool) -> anyhow::Result<u8> {
    let list = api.connect().await?.workers().await?;
    if json {
        print::json(&list);
    } else {
        print::workers(&list);
    }
    Ok(0)
}

/// `suanli ledger [JOB]`: one job's figures per region, or the whole farm's.
pub async fn ledger(api: &ClientConfig, job: Option<JobId>, json: bool) -> anyhow::Result<u8> {
    let client = api.connect().await?;
    let statuses = match job {
        Some(job) => vec![client.status(&job).await?],
        None => client.jobs().await?,
    };
    let ledger = Ledger::of(&statuses);
    if json {
        print::json(&ledger);
    } else {
        print::ledger(&ledger);
    }
    Ok(0)
}

/// `suanli worker drain NAME`: finds the worker (by name, or REGION.NAME) and asks the
/// coordinator to drain it.
pub async fn drain_worker(api: &ClientConfig, worker: &str, json: bool) -> anyhow::Result<u8> {
    let client = api.connect().await?;
    let workers = client.workers().await?;
    let matches: Vec<&WorkerInfo> = workers
        .iter()
        .filter(|w| w.id.as_str() == worker || format!("{}.{}", w.region, w.id) == worker)
        .collect();
    let target = match matches.as_slice() {
        [one] => *one,
        [] => {
            return Err(
                BadInput(format!("no worker named '{worker}' (see `suanli workers`)")).into(),
            )
        }
        several => {
            let names: Vec<String> = several
                .iter()
                .map(|w| format!("{}.{}", w.region, w.id))
                .collect();
            return Err(BadInput(format!(
                "'{worker}' names workers in several regions: say which, one of {}",
                names.join(", ")
            ))
            .into());
        }
    };
    let w = client.drain(&target.region, &target.id).await?;
    if json {
        print::json(&w);
    } else {
        println!(
            "worker {}.{} is draining: it takes no new tasks and exits when its {} running task(s) end",
            w.region, w.id, w.busy
        );
    }
    Ok(0)
}
