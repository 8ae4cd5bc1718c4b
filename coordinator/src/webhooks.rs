//! Webhooks: job state changes posted to the farm's URLs (`--webhook`) and the job's own
//! (`webhooks` in its spec), signed with HMAC-SHA256, retried with exponential backoff.
//!
//! Delivery never holds up the actor: [`Webhooks::notify`] only puts the event in a bounded
//! queue (`try_send`; a full queue drops the event, counted and logged). A dispatcher hands
//! each delivery to its URL's own bounded queue and task, so a slow or dead endpoint delays
//! only its own deliveries (in order, each attempt under a timeout) and, once its queue is
//! full, loses its own events, never anyone else's. A URL's task ends after a while idle.
//!
//! Each POST carries `X-Suanli-Delivery` (the event id, the same on every retry, for the
//! receiver's dedupe), `X-Suanli-Event: job.state` and, when a secret is set,
//! `X-Suanli-Signature: sha256=<hex of HMAC-SHA256(secret, body)>` over the raw body.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use suanli_shared::protocol::JobEvent;
use suanli_shared::Studio;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// The header carrying the body's signature.
pub const SIGNATURE_HEADER: &str = "X-Suanli-Signature";
/// The header carrying the event id (the same on every retry of one event).
pub const DELIVERY_HEADER: &str = "X-Suanli-Delivery";
/// The header naming the kind of event.
pub const EVENT_HEADER: &str = "X-Suanli-Event";

/// Events waiting for the dispatcher, all URLs together.
const QUEUE: usize = 1024;
/// Events waiting for one URL.
const URL_QUEUE: usize = 256;
/// Distinct URLs with a delivery task at once; events for more are dropped (counted).
const MAX_URLS: usize = 256;
/// A URL's task ends after this long without an event.
const URL_IDLE: Duration = Duration::from_secs(300);

/// Webhook settings, resolved once by the binary.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// URLs that receive every job's state changes.
    pub urls: Vec<String>,
    /// The HMAC-SHA256 key; without one, posts carry no signature.
    pub secret: Option<Vec<u8>>,
    /// Each attempt's limit (connect, send and response).
    pub timeout: Duration,
    /// Attempts per event and URL before it is given up.
    pub attempts: u32,
    /// The wait after the first failed attempt, doubled after each (at most a minute).
    pub backoff: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            secret: None,
            timeout: Duration::from_secs(10),
            attempts: 5,
            backoff: Duration::from_secs(1),
        }
    }
}

/// What a webhook receives: one job state change.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatePayload<'a> {
    /// The event id (also in `X-Suanli-Delivery`): a receiver that sees one twice (a retry
    /// after a lost answer) handles it once.
    pub id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub studio: &'a Studio,
    #[serde(flatten)]
    pub event: &'a JobEvent,
}

/// Counts of what happened to deliveries since start.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Posts answered 2xx.
    pub delivered: AtomicU64,
    /// Attempts that failed (error status, refused connection, timeout).
    pub failed_attempts: AtomicU64,
    /// Attempts that ran out of time.
    pub timed_out: AtomicU64,
    /// Events given up after every attempt failed.
    pub given_up: AtomicU64,
    /// Events dropped because a queue was full or too many URLs were busy.
    pub dropped: AtomicU64,
}

struct Delivery {
    url: String,
    id: Arc<str>,
    body: Arc<[u8]>,
    signature: Option<Arc<str>>,
}

/// The handle the actor holds: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Webhooks {
    urls: Arc<[String]>,
    secret: Option<Arc<[u8]>>,
    tx: Option<mpsc::Sender<Delivery>>,
    pub stats: Arc<WebhookStats>,
}

impl Webhooks {
    /// Starts the dispatcher on `tracker`; it stops when `shutdown` fires.
    pub fn start(
        config: WebhookConfig,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(concat!("suanli/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the webhook HTTP client: {e}"))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(WebhookStats::default());
        let dispatcher = Dispatcher {
            client,
            config: config.clone(),
            stats: stats.clone(),
            tracker: tracker.clone(),
            shutdown: shutdown.clone(),
            per_url: HashMap::new(),
        };
        tracker.spawn(dispatcher.run(rx));
        Ok(Self {
            urls: config.urls.into(),
            secret: config.secret.map(Into::into),
            tx: Some(tx),
            stats,
        })
    }

    /// A handle that posts nothing (a coordinator without webhooks, tests).
    pub fn none() -> Self {
        Self {
            urls: Arc::from([]),
            secret: None,
            tx: None,
            stats: Arc::default(),
        }
    }

    /// Queues `event` for the farm's URLs and `job_urls`; never waits.
    pub fn notify(&self, studio: &Studio, job_urls: &[String], event: &JobEvent) {
        let Some(tx) = &self.tx else { return };
        if self.urls.is_empty() && job_urls.is_empty() {
            return;
        }
        let id: Arc<str> = ulid::Ulid::new().to_string().to_lowercase().into();
        let payload = JobStatePayload {
            id: &id,
            kind: "job.state",
            studio,
            event,
        };
        let body: Arc<[u8]> = match serde_json::to_vec(&payload) {
            Ok(b) => b.into(),
            Err(e) => return warn!(error = %e, "cannot encode a webhook payload"),
        };
        let signature = self.secret.as_deref().map(|k| sign(k, &body).into());
        let mut seen = std::collections::HashSet::new();
        for url in self.urls.iter().chain(job_urls).filter(|u| seen.insert(*u)) {
            let d = Delivery {
                url: url.clone(),
                id: id.clone(),
                body: body.clone(),
                signature: signature.clone(),
            };
            if tx.try_send(d).is_err() {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                warn!(url = %url, job = %event.job, "webhook queue full: event dropped");
            }
        }
    }
}

/// `sha256=<hex>` of HMAC-SHA256 over `body` with `key`: the `X-Suanli-Signature` value.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Checks a `X-Suanli-Signature` value against `body` (constant time).
pub fn verify(key: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    if hex.len() != 64 {
        return false;
    }
    let Some(bytes) = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&bytes).is_ok()
}

struct Dispatcher {
    client: reqwest::Client,
    config: WebhookConfig,
    stats: Arc<WebhookStats>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    per_url: HashMap<String, mpsc::Sender<Delivery>>,
}

impl Dispatcher {
    async fn run(mut self, mut rx: mpsc::Receiver<Delivery>) {
        loop {
            let d = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                d = rx.recv() => match d { Some(d) => d, None => return },
            };
            self.route(d);
        }
    }

    fn route(&mut self, d: Delivery) {
        // A URL whose task ended (idle) has a closed queue: start it again.
        self.per_url.retain(|_, tx| !tx.is_closed());
        if !self.per_url.contains_key(&d.url) {
            if self.per_url.len() >= MAX_URLS {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                return warn!(url = %d.url, "too many webhook URLs busy: event dropped");
            }
            let (tx, rx) = mpsc::channel(URL_QUEUE);
            let sender = UrlSender {
                url: d.url.clone(),
                client: self.client.clone(),
                config: self.config.clone(),
                stats: self.stats.clone(),
                shutdown: self.shutdown.clone(),
            };
            self.tracker.spawn(sender.run(rx));
            self.per_url.insert(d.url.clone(), tx);
        }
        let tx = &self.per_url[&d.url];
        let url = d.url.clone();
        if tx.try_send(d).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            warn!(url = %url, "webhook endpoint is behind: event dropped");
        }
    }
}

/// Delivers one URL's events in order.
struct UrlSender {
    url: String,
    client: reqwest::Client,
    config: WebhookConfig,
    stats: Arc<WebhookStats>,
    shutdown: CancellationToken,
}

impl UrlSender {
    async fn run(self, mut rx: mpsc::Receiver<Delivery>) {
        loop {
            let d = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                d = tokio::time::timeout(URL_IDLE, rx.recv()) => match d {
                    Ok(Some(d)) => d,
                    // Idle, or the dispatcher is gone.
                    _ => return,
                },
            };
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.deliver(&d) => {}
            }
        }
    }

    async fn deliver(&self, d: &Delivery) {
        let mut wait = self.config.backoff;
        for attempt in 1..=self.config.attempts.max(1) {
            let mut req = self
                .client
                .post(&self.url)
                .header("Content-Type", "application/json")
                .header(DELIVERY_HEADER, &*d.id)
                .header(EVENT_HEADER, "job.state")
                .body(d.body.to_vec());
            if let Some(sig) = &d.signature {
                req = req.header(SIGNATURE_HEADER, &**sig);
            }
            let why = match req.send().await {
                Ok(resp) if resp.status().is_success() => {
                    self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    return debug!(url = %self.url, id = %d.id, attempt, "webhook delivered");
                }
                Ok(resp) => format!("answered {}", resp.status()),
                Err(e) => {
                    if e.is_timeout() {
                        self.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    }
                    format!("{e}")
                }
            };
            self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
            if attempt == self.config.attempts.max(1) {
                self.stats.given_up.fetch_add(1, Ordering::Relaxed);
                return warn!(url = %self.url, id = %d.id, attempts = attempt, error = %why, "webhook given up");
            }
            debug!(url = %self.url, id = %d.id, attempt, error = %why, "webhook attempt failed; retrying");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(60));
        }
    }
}

/// Checks a webhook URL: http or https, with a host, at most 2,048 bytes. The one rule for
/// `--webhook` and a job's `webhooks`.
pub fn check_url(url: &str) -> Result<(), String> {
    suanli_shared::protocol::check_webhook_url(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_with_the_key_and_the_body() {
        let sig = sign(b"secret", b"{\"a\":1}");
        assert!(sig.starts_with("sha256=") && sig.len() == 71, "{sig}");
        assert!(verify(b"secret", b"{\"a\":1}", &sig));
        assert!(!verify(b"other", b"{\"a\":1}", &sig));
        assert!(!verify(b"secret", b"{\"a\":2}", &sig));
        assert!(!verify(b"secret", b"{\"a\":1}", &sig[7..]));
        assert!(!verify(b"secret", b"{\"a\":1}", "sha256=zz"));
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
