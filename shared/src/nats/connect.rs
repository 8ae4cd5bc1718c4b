//! Connecting: with an identity over TLS or without, the server version and JetStream checked,
//! refusals said in one line, and the server's permission violations watched.

use std::time::Duration;

use async_nats::jetstream;

use super::MIN_SERVER;
use crate::access::Access;

/// Errors connecting to or preparing NATS.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot connect to NATS at {url}: {source} (is nats-server running? start one with `suanli up` or scripts/install-tools.sh)")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("nats-server at {url} refused {who}: {why}")]
    Refused {
        url: String,
        who: String,
        why: String,
    },
    #[error("TLS to {url} failed: {why}")]
    Tls { url: String, why: String },
    #[error("nats-server {found} at {url} is too old: Suanli needs {}.{} or newer with JetStream (Debian's 2.9 package is too old; scripts/install-tools.sh installs a current one)", MIN_SERVER.0, MIN_SERVER.1)]
    TooOld { url: String, found: String },
    #[error("nats-server at {url} has JetStream disabled: start it with -js")]
    NoJetStream { url: String },
    #[error("cannot set up {what}: {message}")]
    Setup { what: String, message: String },
}

fn parse_version(v: &str) -> Option<(u64, u64)> {
    let mut parts = v.trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// A connection and what the roles watch on it.
pub struct Connection {
    pub client: async_nats::Client,
    /// Moves on every reconnection. Pull requests and ordered consumers in flight when a
    /// server restarts are lost with it, and the client notices only after their heartbeats or
    /// expiry run out (seconds); a role that watches this counter reopens them at once instead.
    pub reconnects: tokio::sync::watch::Receiver<u64>,
    /// The last permissions violation the server reported on this connection (nats-server
    /// drops a forbidden publish or subscription and says so only asynchronously): a caller
    /// waiting on a reply can tell "denied" from "no answer yet".
    pub denied: tokio::sync::watch::Receiver<Option<String>>,
}

/// Connects (reconnecting by itself afterwards) and refuses servers older than
/// [`MIN_SERVER`] or without JetStream.
pub async fn connect(
    url: &str,
    name: &str,
    access: &Access,
) -> Result<async_nats::Client, NatsError> {
    Ok(open(url, name, access).await?.client)
}

/// [`connect`], plus the reconnection counter of [`Connection::reconnects`].
pub async fn connect_watched(
    url: &str,
    name: &str,
    access: &Access,
) -> Result<(async_nats::Client, tokio::sync::watch::Receiver<u64>), NatsError> {
    let c = open(url, name, access).await?;
    Ok((c.client, c.reconnects))
}

/// Connects as `access` says: with an identity, over TLS checked against its CA, signing the
/// server's challenge with the identity's NKey and using the role's own reply inboxes.
pub async fn open(url: &str, name: &str, access: &Access) -> Result<Connection, NatsError> {
    // Two crypto back ends are linked (aws-lc-rs through async-nats, ring through others), so
    // rustls cannot pick one by itself; a second call finds it installed and changes nothing.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (tx, reconnects) = tokio::sync::watch::channel(0u64);
    let (denied_tx, denied) = tokio::sync::watch::channel(None::<String>);
    let was_down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut opts = async_nats::ConnectOptions::new()
        .event_callback(move |event| {
            let (tx, was_down, denied_tx) = (tx.clone(), was_down.clone(), denied_tx.clone());
            async move {
                use std::sync::atomic::Ordering;
                match event {
                    async_nats::Event::Disconnected => was_down.store(true, Ordering::SeqCst),
                    async_nats::Event::Connected if was_down.swap(false, Ordering::SeqCst) => {
                        tx.send_modify(|n| *n += 1)
                    }
                    async_nats::Event::ServerError(async_nats::ServerError::Other(e))
                        if e.to_ascii_lowercase().contains("permissions violation") =>
                    {
                        tracing::info!(error = %e, "nats-server refused an action");
                        denied_tx.send_replace(Some(e));
                    }
                    _ => {}
                }
            }
        })
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(30)))
        .max_reconnects(None);
    if let Some(id) = &access.identity {
        opts = opts
            .nkey(id.seed().to_string())
            .custom_inbox_prefix(id.role.inbox_prefix());
    }
    if let Some(ca) = &access.ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    let client = opts
        .connect(url)
        .await
        .map_err(|source| connect_error(url, access, source))?;
    let info = client.server_info();
    match parse_version(&info.version) {
        Some(v) if v >= MIN_SERVER => {}
        _ => {
            return Err(NatsError::TooOld {
                url: url.to_string(),
                found: info.version,
            })
        }
    }
    if !info.jetstream {
        // A leaf node without JetStream of its own (a region's leaf, deploy/nats/leaf.conf)
        // forwards the JetStream API to its hub: refuse only a server where no JetStream
        // answers at all.
        let js = jetstream::new(client.clone());
        let answered = tokio::time::timeout(Duration::from_secs(5), js.query_account()).await;
        if !matches!(answered, Ok(Ok(_))) {
            // Asked through a leaf node whose permissions refuse the question, the server says
            // so: that is the identity's (or the leaf config's) fault, not a missing JetStream.
            if let Some(why) = denied.borrow().clone() {
                return Err(NatsError::Refused {
                    url: url.to_string(),
                    who: who(access),
                    why,
                });
            }
            return Err(NatsError::NoJetStream {
                url: url.to_string(),
            });
        }
    }
    Ok(Connection {
        client,
        reconnects,
        denied,
    })
}

/// Who a refusal names: the identity and its file, or a connection without one.
fn who(access: &Access) -> String {
    match &access.identity {
        Some(id) => format!("identity {} ({})", id.role, id.path.display()),
        None => "a connection without an identity".to_string(),
    }
}

/// One clear line for a failed connection: who was refused and what to do about it.
fn connect_error(url: &str, access: &Access, source: async_nats::ConnectError) -> NatsError {
    use async_nats::ConnectErrorKind as K;
    let url = url.to_string();
    let who = who(access);
    let detail = source.to_string();
    let tls_failure = detail.contains("invalid peer certificate")
        || detail.to_ascii_lowercase().contains("handshake");
    match source.kind() {
        K::AuthorizationViolation | K::Authentication => NatsError::Refused {
            url,
            why: if access.identity.is_some() {
                "the server does not know this identity (revoked, or from another farm)".into()
            } else {
                "this farm needs an identity: pass --identity FILE and --ca FILE (or SUANLI_IDENTITY and SUANLI_CA)".into()
            },
            who,
        },
        K::Tls | K::Io if source.kind() == K::Tls || tls_failure => {
            let why = if access.ca.is_none() {
                format!("{detail} (the server requires TLS: pass --ca FILE, the farm's ca.pem)")
            } else if detail.contains("UnknownIssuer") || detail.contains("unknown issuer") {
                "the server's certificate was not signed by the CA given with --ca".to_string()
            } else if detail.to_ascii_lowercase().contains("expired") {
                "the server's certificate has expired: renew it with suanli auth init".to_string()
            } else if detail.contains("NotValidForName") {
                "the server's certificate does not name this host: add it with suanli auth init --hosts".to_string()
            } else {
                detail
            };
            NatsError::Tls { url, why }
        }
        _ => NatsError::Connect { url, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(parse_version("2.15.1"), Some((2, 15)));
        assert!(parse_version("2.9.10").unwrap() < MIN_SERVER);
        assert!(parse_version("2.11.0").unwrap() >= MIN_SERVER);
        assert!(parse_version("3.0.0").unwrap() >= MIN_SERVER);
        assert_eq!(parse_version("garbage"), None);
    }
}
