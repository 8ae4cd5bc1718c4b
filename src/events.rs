//! Reading the farm's stored events (`SUANLI_EVENTS`) as a pipeline would: each event with
//! its stream sequence, so a reader that lost its connection (or its process) resumes after
//! the last sequence it handled, without gaps or repeats.
//!
//! The reader is an ordered push consumer on the stream, filtered to the caller's events (a
//! studio's own `suanli.evt.<studio>.>`, one job's `suanli.evt.<studio>.<job>.>`, or the
//! operator's `suanli.evt.>`). It is created with the filter in its create subject, which is
//! what a studio's permissions allow (`shared::access`): nats-server itself refuses a studio a
//! consumer on another studio's events.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use serde::Serialize;
use suanli_shared::nats::{self, EventSubject};
use suanli_shared::protocol::{Event, TaskEventKind};

use crate::client::Client;

/// How long creating the reader may take before it is reported as failed.
const CREATE_TIMEOUT: Duration = Duration::from_secs(10);

/// One stored event as `suanli events` prints it: the stream sequence to resume from, where
/// it came from, and the event's own body.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct EventLine {
    /// The stream sequence: resume with `--since <seq>` to read the events after this one.
    pub seq: u64,
    pub studio: String,
    pub job: String,
    /// `job` (a job state change), `started`, `completed` or `failed`.
    pub kind: String,
    /// The publishing region, or `_` for the coordinator.
    pub source: String,
    /// The event as published (a `JobEvent` or a `TaskEvent`).
    pub event: serde_json::Value,
}

impl EventLine {
    fn new(seq: u64, subject: &EventSubject, event: &Event) -> Self {
        let body = match event {
            Event::Task(ev) => serde_json::to_value(ev),
            Event::Job(ev) => serde_json::to_value(ev),
        }
        .unwrap_or(serde_json::Value::Null);
        Self {
            seq,
            studio: subject.studio.to_string(),
            job: subject.job.to_string(),
            kind: subject.kind.as_str().to_string(),
            source: subject.source.token().to_string(),
            event: body,
        }
    }

    /// One line for people: sequence, job, and what happened.
    pub fn human(&self, event: &Event) -> String {
        let what = match event {
            Event::Job(ev) => match &ev.reason {
                Some(r) => format!("job {}: {}", ev.state.as_str(), r),
                None => format!("job {}", ev.state.as_str()),
            },
            Event::Task(ev) => {
                let at = format!(
                    "task {} attempt {} on {}/{}",
                    ev.task, ev.attempt, ev.region, ev.worker
                );
                match &ev.kind {
                    TaskEventKind::Started => format!("{at} started"),
                    TaskEventKind::Progress { fraction } => {
                        format!("{at} {:.0}%", fraction * 100.0)
                    }
                    TaskEventKind::Completed {
                        cached, outputs, ..
                    } => format!(
                        "{at} completed: {} files{}",
                        outputs.len(),
                        if *cached { " (cached)" } else { "" }
                    ),
                    TaskEventKind::Failed { failure } => {
                        format!("{at} failed: {}", failure.reason)
                    }
                }
            }
        };
        format!("#{} {} {} {}", self.seq, self.studio, self.job, what)
    }
}

/// The stream subjects a reader follows.
pub fn filter(
    studio: Option<&suanli_shared::Studio>,
    job: Option<&suanli_shared::JobId>,
) -> String {
    match (studio, job) {
        (Some(s), Some(j)) => nats::job_events(s, j),
        (Some(s), None) => nats::studio_events(s),
        // The operator reading one job is resolved to its studio by the caller.
        (None, _) => nats::ALL_EVENTS.to_string(),
    }
}

/// An open reader: events after a sequence, in order, each once.
pub struct EventReader {
    messages: consumer::push::Ordered,
    /// The last sequence handed out (or the one to start after): anything at or below it is
    /// skipped, so a consumer recreated by the client library never repeats an event.
    last: u64,
    /// Stored events matching the filter that were there when the reader opened and have not
    /// been read yet: when it reaches zero, a reader that does not follow is done.
    backlog: u64,
}

impl EventReader {
    /// Opens a reader of the events on `filter` after sequence `since` (all stored ones when
    /// `None`). Refused at once, in words, when this identity may not read them.
    pub async fn open(client: &Client, filter: &str, since: Option<u64>) -> anyhow::Result<Self> {
        let nats_client = client.nats().clone();
        let js = jetstream::new(nats_client.clone());
        let config = consumer::push::OrderedConfig {
            // The name carries nothing secret; the filter in the create subject is what the
            // server checks.
            name: Some(format!(
                "events-{}",
                ulid::Ulid::new().to_string().to_lowercase()
            )),
            deliver_subject: nats_client.new_inbox(),
            filter_subject: filter.to_string(),
            deliver_policy: match since {
                Some(seq) => consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: seq + 1,
                },
                None => consumer::DeliverPolicy::All,
            },
            ..Default::default()
        };
        let mut denied = client.denied();
        denied.mark_unchanged();
        let refused = async {
            loop {
                if denied.changed().await.is_err() {
                    return std::future::pending().await;
                }
                if let Some(e) = denied.borrow().as_deref() {
                    if e.contains(nats::EVENTS_STREAM) {
                        return e.to_string();
                    }
                }
            }
        };
        let created = tokio::select! {
            c = tokio::time::timeout(CREATE_TIMEOUT, js.create_consumer_on_stream(config, nats::EVENTS_STREAM)) => c,
            why = refused => anyhow::bail!("permission denied: this identity may not read the events on {filter} ({why})"),
        };
        let consumer = created
            .map_err(|_| anyhow::anyhow!("no answer creating an event reader within {CREATE_TIMEOUT:?}: is the farm's coordinator up (it creates the event stream)?"))?
            .with_context(|| format!("cannot read the events on {filter}"))?;
        let backlog = consumer.cached_info().num_pending;
        let messages = consumer
            .messages()
            .await
            .context("cannot subscribe to the events")?;
        Ok(Self {
            messages,
            last: since.unwrap_or(0),
            backlog,
        })
    }

    /// True when every event stored at opening has been read.
    pub fn caught_up(&self) -> bool {
        self.backlog == 0
    }

    /// The next event; `None` when the reader's stream ended. Undecodable events (none should
    /// be stored: the coordinator refuses them too) are skipped with a warning.
    pub async fn next(&mut self) -> anyhow::Result<Option<(EventLine, Event)>> {
        loop {
            let Some(msg) = self.messages.next().await else {
                return Ok(None);
            };
            let msg = msg.context("the event reader failed")?;
            let info = msg
                .info()
                .map_err(|e| anyhow::anyhow!("an event without stream metadata: {e}"))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            if seq <= self.last {
                continue;
            }
            self.last = seq;
            self.backlog = pending.min(self.backlog.saturating_sub(1));
            match nats::decode_event(msg.subject.as_str(), &msg.payload) {
                Ok((subject, event)) => {
                    return Ok(Some((EventLine::new(seq, &subject, &event), event)));
                }
                Err(e) => tracing::warn!(seq, error = %e, "skipping an undecodable event"),
            }
        }
    }
}
