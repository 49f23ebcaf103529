//! One HTTP connection from accept to close: admission against the connection cap (with a reserve kept
//! for webhook deliveries), reading each request head ourselves (bounded size, header timeout), then
//! handing the request to async-h1 through [`Conn`], a stream that replays the bytes we read and times
//! out when the body stops arriving or when the client stops reading the response.
//!
//! async-h1 on its own closes silently on a head of 8 KiB or more and reads a header line of any length
//! into memory before checking it; this module answers 431 before that and never buffers more than
//! [`MAX_HEAD_BYTES`] + one read. It must never buffer a body (routes read bodies themselves, bounded) and
//! never keep a connection open past a 413.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use smol::net::TcpStream;
use smol::Timer;

/// The largest request head (request line and headers, with the blank line) we accept; async-h1 refuses
/// a head of 8 KiB or more, so ours stays just below.
pub const MAX_HEAD_BYTES: usize = 8 * 1024 - 1;
/// The most header lines we accept (async-h1 parses at most 128).
pub const MAX_HEADER_LINES: usize = 128;
/// A declared body larger than this is refused with 413 before any route runs (the webhook limit; no
/// route reads more).
pub const MAX_BODY_BYTES: u64 = crate::forge::github::webhook::MAX_BODY_BYTES;
/// After a 413 (or another answer that closes), how long and how much we read and discard so the client
/// sees the answer instead of a reset.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: u64 = 1024 * 1024;

/// The limits every listener applies (from `[web]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections over all listeners.
    pub max_connections: usize,
    /// Of those, how many only webhook deliveries may use.
    pub webhook_reserve: usize,
    /// Time to receive a whole request head.
    pub header_timeout: Duration,
    /// Longest pause while a body is being received (the next request on a kept-alive connection has
    /// `header_timeout`).
    pub body_idle_timeout: Duration,
    /// Longest time a response may make no progress (the client does not read it).
    pub write_idle_timeout: Duration,
}

/// File descriptors kept out of the HTTP budget: the database, logs, the control socket and its
/// clients, build children's pipes, git and Nix.
pub const FD_RESERVE: u64 = 256;

impl Limits {
    /// The limits of `[web]`, with `max_connections` lowered to fit the open-file limit (raised first
    /// to its hard limit, see [`raise_nofile`]) minus [`FD_RESERVE`].
    pub fn from_config(web: &crate::config::WebConfig) -> Limits {
        let mut max = web.max_connections;
        if let Some(files) = raise_nofile() {
            let budget = files.saturating_sub(FD_RESERVE).max(16);
            if max > budget {
                tracing::warn!(
                    max_connections = max,
                    open_files = files,
                    lowered_to = budget,
                    "[web] max_connections does not fit the open-file limit; lowered"
                );
                max = budget;
            }
        }
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        Limits {
            max_connections: max,
            webhook_reserve: usize::try_from(web.webhook_reserved_connections).unwrap_or(usize::MAX).min(max),
            header_timeout: Duration::from_secs(web.header_timeout_seconds),
            body_idle_timeout: Duration::from_secs(web.body_idle_timeout_seconds),
            write_idle_timeout: Duration::from_secs(web.write_idle_timeout_seconds),
        }
    }
}

/// Raises the soft open-file limit to the hard one, so connections run out (at `max_connections`)
/// long before file descriptors do; returns the soft limit now in force (`None`: unlimited or unknown).
pub fn raise_nofile() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => return limit.maximum,
            Err(e) => tracing::warn!(error = %e, "raising the open-file limit failed"),
        }
    }
    limit.current
}

/// The connection count shared by every listener.
#[derive(Debug)]
pub struct Gate {
    limits: Limits,
    open: Cell<usize>,
}

impl Gate {
    pub fn new(limits: Limits) -> Rc<Gate> {
        Rc::new(Gate { limits, open: Cell::new(0) })
    }

    /// Takes a slot when fewer than `max_connections` are open.
    fn enter(self: &Rc<Gate>) -> Option<Slot> {
        let open = self.open.get();
        if open >= self.limits.max_connections {
            return None;
        }
        self.open.set(open + 1);
        crate::metrics::global().http_connections_open.set((open + 1) as i64);
        Some(Slot(self.clone()))
    }

    /// Whether a connection that is not a webhook delivery may stay: the open count (its own slot
    /// included) is within the share outside the reserve.
    fn general_allowed(&self) -> bool {
        self.open.get() <= self.limits.max_connections.saturating_sub(self.limits.webhook_reserve)
    }
}

/// One open connection counted in its [`Gate`]; released on drop.
struct Slot(Rc<Gate>);

impl Drop for Slot {
    fn drop(&mut self) {
        let open = self.0.open.get().saturating_sub(1);
        self.0.open.set(open);
        crate::metrics::global().http_connections_open.set(open as i64);
    }
}

/// Which kind of listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `[web] webhook_address`: every connection is a webhook delivery.
    Webhook,
    /// Any other listener: a connection is a webhook delivery when its first request line is
    /// `POST /github/webhook`.
    General,
}

fn refuse(reason: &'static str) {
    crate::metrics::global().http_connections_refused.with_label_values(&[reason]).inc();
}

/// Serves one accepted connection: returns when it is closed.
pub async fn serve_connection(
    gate: &Rc<Gate>,
    listener: Listener,
    mut stream: TcpStream,
    app: tide::Server<super::AppState>,
) {
    let Some(_slot) = gate.enter() else {
        // Over the cap: close at once (cheaper than an answer a flood would not read).
        refuse("cap");
        return;
    };
    let limits = gate.limits;
    let shared = Arc::new(Mutex::new(Shared::default()));
    let mut first = true;
    loop {
        let leftover = lock(&shared).take_pending();
        let head = match read_head(&mut stream, leftover, limits.header_timeout).await {
            Head::Complete(buf) => buf,
            Head::Closed => return,
            // A kept-alive connection with no next request: closed without an answer.
            Head::TimedOut if !first => return,
            Head::TimedOut => {
                refuse("header_timeout");
                let _ = answer(&mut stream, 408, "request head not received in time").await;
                return;
            }
            Head::TooLarge => {
                refuse("head_too_large");
                let _ = answer(&mut stream, 431, "request head too large").await;
                linger(&mut stream).await;
                return;
            }
        };
        if first {
            first = false;
            let webhook = listener == Listener::Webhook || is_webhook_request(&head);
            if !webhook && !gate.general_allowed() {
                refuse("reserved");
                let _ = answer(&mut stream, 503, "too many open connections; retry later").await;
                return;
            }
        }
        if super::ws::is_ws_request(&head) {
            // The connection becomes a WebSocket (or is refused and closed); it keeps its slot.
            return super::ws::serve(stream, head, app).await;
        }
        lock(&shared).set_pending(head);
        let conn = Conn {
            stream: stream.clone(),
            shared: shared.clone(),
            idle: limits.body_idle_timeout,
            write_idle: limits.write_idle_timeout,
        };
        let app = app.clone();
        let endpoint_shared = shared.clone();
        let endpoint = move |req: tide::http::Request| {
            let app = app.clone();
            let shared = endpoint_shared.clone();
            async move {
                // The webhook route checks (and counts) its own limit.
                let webhook = req.url().path() == "/github/webhook";
                let mut res: tide::http::Response =
                    if !webhook && req.len().is_some_and(|n| n as u64 > MAX_BODY_BYTES) {
                        json_response(413, &format!("request body larger than {MAX_BODY_BYTES} bytes"))
                    } else {
                        app.respond(req).await?
                    };
                if res.status() == tide::http::StatusCode::PayloadTooLarge {
                    // Never read (or drain) the rest of a body we refused.
                    res.insert_header("Connection", "close");
                    lock(&shared).closed = true;
                }
                Ok(res)
            }
        };
        let served = async_h1::server::Server::new(conn, endpoint).accept_one().await;
        match served {
            Ok(async_h1::server::ConnectionStatus::KeepAlive) => continue,
            Ok(async_h1::server::ConnectionStatus::Close) => {
                if lock(&shared).closed {
                    linger(&mut stream).await;
                }
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
                return;
            }
        }
    }
}

/// Whether a request head starts with `POST /github/webhook` (then a space or a query).
fn is_webhook_request(head: &[u8]) -> bool {
    const LINE: &[u8] = b"POST /github/webhook";
    head.starts_with(LINE) && matches!(head.get(LINE.len()), Some(b' ') | Some(b'?'))
}

enum Head {
    /// The head and whatever followed it in the same reads.
    Complete(Vec<u8>),
    /// End of stream before any byte of a new request.
    Closed,
    TimedOut,
    TooLarge,
}

/// Reads until the blank line that ends a request head, within `timeout`, never holding more than
/// [`MAX_HEAD_BYTES`] + one read.
async fn read_head(stream: &mut TcpStream, mut buf: Vec<u8>, timeout: Duration) -> Head {
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = head_end(&buf) {
                if end > MAX_HEAD_BYTES || count_lines(&buf[..end]) > MAX_HEADER_LINES + 2 {
                    return Head::TooLarge;
                }
                return Head::Complete(buf);
            }
            if buf.len() > MAX_HEAD_BYTES || count_lines(&buf) > MAX_HEADER_LINES + 2 {
                return Head::TooLarge;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Head::Closed,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    futures_lite::future::or(read, async {
        Timer::after(timeout).await;
        Head::TimedOut
    })
    .await
}

/// The index just past `\r\n\r\n`, if the buffer holds one.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn count_lines(buf: &[u8]) -> usize {
    buf.iter().filter(|&&b| b == b'\n').count()
}

fn json_response(status: u16, message: &str) -> tide::http::Response {
    let mut res = tide::http::Response::new(status);
    res.set_body(serde_json::json!({ "error": message, "status": status }));
    res.set_content_type(tide::http::mime::JSON);
    res
}

/// Writes a complete answer that closes the connection, outside async-h1.
async fn answer(stream: &mut TcpStream, status: u16, message: &str) -> io::Result<()> {
    let body = serde_json::json!({ "error": message, "status": status }).to_string();
    let reason = tide::http::StatusCode::try_from(status).map(|s| s.canonical_reason()).unwrap_or("Error");
    let text = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        stream.write_all(text.as_bytes()).await?;
        stream.flush().await
    };
    futures_lite::future::or(write, async {
        Timer::after(LINGER).await;
        Err(io::Error::from(io::ErrorKind::TimedOut))
    })
    .await
}

/// Half-closes and discards what the client still sends (bounded), so it reads our answer rather than
/// a connection reset.
async fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let drain = async {
        let _ = futures_lite::io::copy(stream.take(LINGER_BYTES), &mut futures_lite::io::sink()).await;
    };
    futures_lite::future::or(drain, async {
        Timer::after(LINGER).await;
    })
    .await;
}

#[derive(Default)]
struct Shared {
    /// Bytes read before async-h1 took over (the head and what followed it), replayed first.
    pending: Vec<u8>,
    pos: usize,
    /// Where the head ends in `pending`: replayed up to there first, so a pipelined request after a
    /// bodiless one stays here instead of in async-h1's buffer.
    head_end: usize,
    /// Set after a 413: reads end at once, so async-h1 does not drain the refused body.
    closed: bool,
    /// Running while a read waits for data.
    idle: Option<Timer>,
    /// Running while a write (or flush) waits for the client to read.
    write_idle: Option<Timer>,
}

impl Shared {
    fn take_pending(&mut self) -> Vec<u8> {
        let rest = self.pending.split_off(self.pos.min(self.pending.len()));
        self.pending.clear();
        self.pos = 0;
        self.head_end = 0;
        rest
    }
    fn set_pending(&mut self, bytes: Vec<u8>) {
        self.head_end = head_end(&bytes).unwrap_or(bytes.len());
        self.pending = bytes;
        self.pos = 0;
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The stream async-h1 reads from: first the bytes we already read, then the socket, failing with
/// `TimedOut` when no byte arrives for `idle`; and writes to, failing with `TimedOut` when the client
/// reads nothing for `write_idle`.
#[derive(Clone)]
struct Conn {
    stream: TcpStream,
    shared: Arc<Mutex<Shared>>,
    idle: Duration,
    write_idle: Duration,
}

impl Conn {
    /// Polls a write or flush of the socket, failing with `TimedOut` when it makes no progress for
    /// `write_idle`.
    fn poll_writing<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let mut shared = lock(&self.shared);
        match op(Pin::new(&mut self.stream), cx) {
            Poll::Ready(r) => {
                shared.write_idle = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let limit = self.write_idle;
                let timer = shared.write_idle.get_or_insert_with(|| Timer::after(limit));
                match Pin::new(timer).poll(cx) {
                    Poll::Ready(_) => {
                        shared.write_idle = None;
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the client read nothing within the write idle timeout",
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut shared = lock(&this.shared);
        if shared.closed {
            return Poll::Ready(Ok(0));
        }
        if shared.pos < shared.pending.len() {
            let end = if shared.pos < shared.head_end { shared.head_end } else { shared.pending.len() };
            let n = buf.len().min(end - shared.pos);
            buf[..n].copy_from_slice(&shared.pending[shared.pos..shared.pos + n]);
            shared.pos += n;
            return Poll::Ready(Ok(n));
        }
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(r) => {
                shared.idle = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = shared.idle.get_or_insert_with(|| Timer::after(idle));
                match Pin::new(timer).poll(cx) {
                    Poll::Ready(_) => {
                        shared.idle = None;
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no data within the idle timeout",
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_writing(cx, |stream, cx| stream.poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_writing(cx, |stream, cx| stream.poll_flush(cx))
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_request_lines() {
        assert!(is_webhook_request(b"POST /github/webhook HTTP/1.1\r\n"));
        assert!(is_webhook_request(b"POST /github/webhook?x=1 HTTP/1.1\r\n"));
        assert!(!is_webhook_request(b"POST /github/webhooks HTTP/1.1\r\n"));
        assert!(!is_webhook_request(b"GET /github/webhook HTTP/1.1\r\n"));
    }

    #[test]
    fn head_end_and_pending_replay() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
        let mut s = Shared::default();
        s.set_pending(b"abcdef".to_vec());
        s.pos = 2;
        assert_eq!(s.take_pending(), b"cdef".to_vec());
        assert!(s.pending.is_empty());
    }

    /// A connected pair on loopback: our side as a [`Conn`] with `write_idle`, and the client's socket.
    async fn pair(write_idle: Duration) -> (Conn, TcpStream) {
        let listener = smol::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (client, accepted) =
            futures_lite::future::zip(TcpStream::connect(address), listener.accept()).await;
        let (stream, _) = accepted.expect("accept");
        let conn = Conn {
            stream,
            shared: Arc::new(Mutex::new(Shared::default())),
            idle: Duration::from_secs(10),
            write_idle,
        };
        (conn, client.expect("connect"))
    }

    #[test]
    fn a_client_that_stops_reading_times_the_response_out() {
        smol::block_on(async {
            let (mut conn, client) = pair(Duration::from_millis(300)).await;
            let chunk = vec![b'x'; 64 * 1024];
            let started = std::time::Instant::now();
            // The client never reads: the socket buffers fill, then writes stall until the limit.
            let error = loop {
                if let Err(e) = conn.write_all(&chunk).await {
                    break e;
                }
                assert!(started.elapsed() < Duration::from_secs(30), "writes never stalled");
            };
            assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
            drop(client);
        });
    }

    #[test]
    fn a_slow_reader_gets_the_whole_response() {
        smol::block_on(async {
            let (mut conn, mut client) = pair(Duration::from_millis(500)).await;
            const TOTAL: usize = 16 * 1024 * 1024;
            let reader = smol::spawn(async move {
                let mut got = 0usize;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    // Slower than the writer, but never silent for the whole limit.
                    Timer::after(Duration::from_millis(20)).await;
                    match client.read(&mut buf).await {
                        Ok(0) => return got,
                        Ok(n) => got += n,
                        Err(e) => panic!("read: {e}"),
                    }
                }
            });
            let chunk = vec![b'y'; 1024 * 1024];
            for _ in 0..TOTAL / chunk.len() {
                conn.write_all(&chunk).await.expect("a reading client never times out");
            }
            conn.flush().await.expect("flush");
            conn.stream.shutdown(std::net::Shutdown::Write).expect("shutdown");
            assert_eq!(reader.await, TOTAL);
        });
    }
}
