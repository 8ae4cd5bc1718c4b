//! The `/metrics` endpoint the coordinator and every worker serve with `--metrics-listen`: a
//! minimal HTTP/1.1 server on tokio that answers `GET /metrics` with the role's metrics in the
//! Prometheus text format and anything else with 404. It exists so that both roles serve
//! scrapes the same bounded way (a cap on connections, a deadline on each, a cap on the request
//! head) without pulling a web framework into the farm for one read-only page.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info};

/// The `Content-Type` of the Prometheus text exposition format (version 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Scrapes served at once; more wait for a free one.
const MAX_CONNECTIONS: usize = 16;
/// A request head (request line and headers) larger than this is refused.
const MAX_HEAD: usize = 8 * 1024;
/// The whole exchange of one connection (read the head, render, write) must end within this.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// What a scrape renders: the metrics page, as text.
pub type Render = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("cannot listen for metrics on {addr}: {source} (give --metrics-listen a free local address, e.g. 127.0.0.1:9464)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds the endpoint's address (port 0 picks a free one; the listener's `local_addr` says
/// which).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ScrapeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ScrapeError::Bind { addr, source })
}

/// Serves scrapes on `listener` forever (the caller stops it by dropping the future).
pub async fn serve(listener: TcpListener, render: Render) {
    if let Ok(addr) = listener.local_addr() {
        info!("serving metrics on http://{addr}/metrics");
    }
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors, say: wait a little rather than spin.
                debug!(error = %e, "cannot accept a metrics connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if tokio::time::timeout(CONNECTION_DEADLINE, answer(stream, &render))
                .await
                .is_err()
            {
                debug!(%peer, "metrics connection timed out");
            }
        });
    }
}

/// Reads one request head and answers it; the connection is closed after the answer.
async fn answer(mut stream: TcpStream, render: &Render) {
    let Some(head) = read_head(&mut stream).await else {
        let _ = respond(
            &mut stream,
            "400 Bad Request",
            "text/plain",
            "bad request\n",
        )
        .await;
        return;
    };
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next(), words.next());
    let path = target.map(|t| t.split('?').next().unwrap_or(t));
    if method == Some("GET") && path == Some("/metrics") {
        let body = render().await;
        let _ = respond(&mut stream, "200 OK", CONTENT_TYPE, &body).await;
    } else {
        let _ = respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            "not found: metrics are at GET /metrics\n",
        )
        .await;
    }
}

/// The request head up to the blank line; `None` when it is not text, too large, or the peer
/// closed first.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            return String::from_utf8(buf).ok();
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_get_metrics_and_404s_everything_else() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let render: Render = Arc::new(|| Box::pin(async { "up 1\n".to_string() }));
        let server = tokio::spawn(serve(listener, render));

        let ok = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains(CONTENT_TYPE), "{ok}");
        assert!(ok.ends_with("\r\n\r\nup 1\n"), "{ok}");
        let query = get(addr, b"GET /metrics?x=1 HTTP/1.1\r\n\r\n").await;
        assert!(query.starts_with("HTTP/1.1 200 OK\r\n"), "{query}");

        for request in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"POST /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics/../etc HTTP/1.1\r\n\r\n",
        ] {
            let answer = get(addr, request).await;
            assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
        }
        // A head past the bound is refused, not buffered without end.
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(&huge).await;
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
        server.abort();
    }

    #[tokio::test]
    async fn an_address_in_use_is_a_clear_error() {
        let taken = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = taken.local_addr().unwrap();
        let e = bind(addr).await.unwrap_err().to_string();
        assert!(
            e.contains("cannot listen for metrics on") && e.contains("--metrics-listen"),
            "{e}"
        );
    }
}
