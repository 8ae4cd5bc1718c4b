//! `suanli events`: the farm's stored events as lines a pipeline can read (JSON with
//! `--json`), each with its stream sequence; `--since SEQ` resumes after a disconnect and
//! `--follow` keeps reading as events happen.

use std::io::Write as _;

use suanli_shared::protocol::api::Caller;
use suanli_shared::JobId;

use crate::client::ClientConfig;
use crate::events::{self, EventReader};

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Only this job's events.
    #[arg(long)]
    pub job: Option<JobId>,
    /// Keep reading as new events are stored (until interrupted); without it, stop after the
    /// events stored now.
    #[arg(long, short)]
    pub follow: bool,
    /// Start after this stream sequence (the `seq` of the last event handled): nothing is
    /// missed or repeated across a reconnect.
    #[arg(long, value_name = "SEQ")]
    pub since: Option<u64>,
    /// One JSON object a line: seq, studio, job, kind, source, event.
    #[arg(long)]
    pub json: bool,
}

pub async fn events(api: &ClientConfig, args: EventsArgs) -> anyhow::Result<u8> {
    let client = api.connect().await?;
    // A studio reads its own events; the operator reading one job needs the job's studio,
    // which the subject names.
    let studio = match (&api.caller, &args.job) {
        (Caller::Studio(s), _) => Some(s.clone()),
        (Caller::Operator, Some(job)) => Some(client.job(job).await?.spec.studio),
        (Caller::Operator, None) => None,
    };
    let filter = events::filter(studio.as_ref(), args.job.as_ref());
    let mut reader = EventReader::open(&client, &filter, args.since).await?;
    let stdout = std::io::stdout();
    let shutdown = super::shutdown_on_signals();
    loop {
        if !args.follow && reader.caught_up() {
            return Ok(0);
        }
        let next = tokio::select! {
            next = reader.next() => next?,
            _ = shutdown.cancelled() => return Ok(0),
        };
        let Some((line, event)) = next else {
            return Ok(0);
        };
        let text = if args.json {
            serde_json::to_string(&line)?
        } else {
            line.human(&event)
        };
        let mut out = stdout.lock();
        // A closed pipe (`| head`) ends the command quietly.
        if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
            return Ok(0);
        }
    }
}
