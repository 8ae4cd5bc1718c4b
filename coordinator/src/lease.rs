//! Leadership: only the coordinator holding the lease dispatches, answers the API and folds
//! events. A second coordinator started by mistake (or a standby on purpose) waits, and takes
//! over when the holder stops renewing.
//!
//! The lease is one key in the `suanli_lease` bucket, changed only by compare-and-set. The holder
//! renews it every `ttl / 5`. A standby never compares clocks across machines: it notes when
//! it first saw the current revision, on its own monotonic clock, and takes the key over (by
//! revision) once that revision is `ttl` old. The holder, for its part, stops as soon as a
//! renewal fails or when `ttl` has passed since it *sent* its last successful renewal, so it
//! has stepped down before any standby can take over. A holder that stops cleanly deletes the
//! key, and a holder that provably died on this host (its pid is gone) is replaced at once, so
//! a restarted coordinator does not wait out its own lease.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::kv::{self, Operation};
use bytes::Bytes;
use suanli_shared::nats::LEASE_KEY;
use suanli_shared::protocol::decode;
use suanli_shared::protocol::{encode, now_ms};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Who holds the lease, as written in the key (the record is part of the protocol, since
/// standbys and operators read it).
pub use suanli_shared::protocol::LeaseHolder as Holder;

/// A held lease. Dropping it does not release it; call [`Lease::release`].
pub struct Lease {
    kv: kv::Store,
    me: Holder,
    rev: u64,
    ttl: Duration,
    /// When the last successful renewal was sent, shared with the serving loop.
    renewed_at: Freshness,
}

/// Whether the lease is still certainly ours, readable by the serving loop while the renewal
/// task owns the [`Lease`]. The loop checks it before every request and event, so a holder
/// that hung (SIGSTOP, a stalled VM) and wakes up after a standby took over answers nothing.
#[derive(Clone)]
pub struct Freshness {
    sent: Arc<Mutex<Instant>>,
    ttl: Duration,
}

impl Freshness {
    fn new(sent: Instant, ttl: Duration) -> Self {
        Self {
            sent: Arc::new(Mutex::new(sent)),
            ttl,
        }
    }

    fn get(&self) -> Instant {
        *self.sent.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, sent: Instant) {
        *self.sent.lock().unwrap_or_else(|p| p.into_inner()) = sent;
    }

    /// True while less than four fifths of the ttl have passed since the last renewal was
    /// sent; the last fifth is the margin for the request being handled.
    pub fn is_fresh(&self) -> bool {
        self.get().elapsed() < self.ttl * 4 / 5
    }
}

fn body(holder: &Holder) -> Bytes {
    // Strings and numbers only: serde_json cannot fail on it, and an empty key would read as
    // no holder at all.
    encode(holder, "lease holder").expect("a lease holder always encodes")
}

/// Waits until this process holds the lease. `None` when `shutdown` fired first.
pub async fn acquire(
    kv: &kv::Store,
    me: Holder,
    ttl: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Lease>> {
    let poll = (ttl / 10).max(Duration::from_millis(100));
    // The revision we last saw, and when we first saw it.
    let mut seen: Option<(u64, Instant)> = None;
    let mut announced = false;
    loop {
        let sent = Instant::now();
        let mut me_now = me.clone();
        me_now.renewed_ms = now_ms();
        let attempt = match kv.entry(LEASE_KEY).await {
            Ok(None) => kv.create(LEASE_KEY, body(&me_now)).await.ok(),
            Ok(Some(entry)) if entry.operation != Operation::Put => kv
                .update(LEASE_KEY, body(&me_now), entry.revision)
                .await
                .ok(),
            Ok(Some(entry)) => {
                let holder = decode::<Holder>(&entry.value, "lease record").ok();
                let fresh = match seen {
                    Some((rev, _)) if rev == entry.revision => false,
                    _ => {
                        seen = Some((entry.revision, Instant::now()));
                        true
                    }
                };
                let lapsed = seen.is_some_and(|(_, at)| at.elapsed() >= ttl);
                let dead = holder.as_ref().is_some_and(|h| h.died_here(&me));
                let unreadable = holder.is_none();
                // Still ours: we stopped serving without giving it back.
                let mine = holder.as_ref().is_some_and(|h| h.same(&me));
                if lapsed || dead || unreadable || mine {
                    if let Some(h) = &holder {
                        info!(holder = %format!("{}:{}", h.host, h.pid), lapsed, dead, "taking over the coordinator lease");
                    }
                    kv.update(LEASE_KEY, body(&me_now), entry.revision)
                        .await
                        .ok()
                } else {
                    if fresh && !announced {
                        if let Some(h) = &holder {
                            info!(holder = %format!("{}:{}", h.host, h.pid), "another coordinator holds the lease; standing by");
                        }
                        announced = true;
                    }
                    None
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot read the coordinator lease; retrying");
                None
            }
        };
        if let Some(rev) = attempt {
            return Ok(Some(Lease {
                kv: kv.clone(),
                me,
                rev,
                ttl,
                renewed_at: Freshness::new(sent, ttl),
            }));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

impl Lease {
    /// How often the holder renews.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 5
    }

    pub fn freshness(&self) -> Freshness {
        self.renewed_at.clone()
    }

    /// Renews once. An error means the lease is lost (or may be): stop dispatching now.
    pub async fn renew(&mut self) -> anyhow::Result<()> {
        let sent = Instant::now();
        if sent.duration_since(self.renewed_at.get()) >= self.ttl {
            anyhow::bail!("the lease was not renewed for {:?}", self.ttl);
        }
        let mut me = self.me.clone();
        me.renewed_ms = now_ms();
        match tokio::time::timeout(self.ttl / 3, self.kv.update(LEASE_KEY, body(&me), self.rev))
            .await
        {
            Ok(Ok(rev)) => {
                self.rev = rev;
                self.renewed_at.set(sent);
                Ok(())
            }
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                // Our last write may have landed with its ack lost: still ours if it says so.
                let entry = self.kv.entry(LEASE_KEY).await.ok().flatten();
                match entry.and_then(|e| {
                    decode::<Holder>(&e.value, "lease record")
                        .ok()
                        .filter(|h| h.same(&self.me) && e.operation == Operation::Put)
                        .map(|_| e.revision)
                }) {
                    Some(rev) => {
                        self.rev = rev;
                        Ok(())
                    }
                    None => anyhow::bail!("another coordinator took the lease"),
                }
            }
            // A failed renewal is not yet a lost lease: the deadline check above decides.
            Ok(Err(e)) => {
                warn!(error = %e, "cannot renew the coordinator lease");
                Ok(())
            }
            Err(_) => {
                warn!("renewing the coordinator lease timed out");
                Ok(())
            }
        }
    }

    /// Gives the lease up so a standby takes over at once.
    pub async fn release(self) {
        if let Err(e) = self
            .kv
            .delete_expect_revision(LEASE_KEY, Some(self.rev))
            .await
            .context("cannot release the coordinator lease")
        {
            warn!(error = %format!("{e:#}"), "lease not released; a standby takes over when it lapses");
        }
    }
}
