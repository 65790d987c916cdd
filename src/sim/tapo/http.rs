//! HTTP/1.1: request parsing, responses, and the connection loop.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Knobs, Shared};

/// Request bodies above this are refused with 413; KLAP bodies are a few KiB.
const MAX_BODY: usize = 64 * 1024;
const MAX_HEAD: usize = 8 * 1024;
const MAX_HEADERS: usize = 64;
/// A keep-alive connection with nothing to say for this long is closed.
const IDLE: Duration = Duration::from_secs(120);
/// How often a waiting connection looks at the `offline` knob.
const KNOB_POLL: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub(super) struct Request {
    pub(super) method: String,
    pub(super) target: String,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Vec<u8>,
    /// The client asked for the connection to end after this exchange.
    close: bool,
}

#[derive(Debug)]
struct Head {
    method: String,
    target: String,
    http10: bool,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn wants_close(&self) -> bool {
        let tokens = || {
            self.header("connection")
                .flat_map(|v| v.split(','))
                .map(str::trim)
        };
        if self.http10 {
            !tokens().any(|t| t.eq_ignore_ascii_case("keep-alive"))
        } else {
            tokens().any(|t| t.eq_ignore_ascii_case("close"))
        }
    }

    /// Body length, or the status that refuses the request.
    fn body_len(&self) -> Result<usize, u16> {
        // We speak only Content-Length; a chunked body is refused before it
        // could be mistaken for the next request.
        if self.header("transfer-encoding").next().is_some() {
            return Err(411);
        }
        let mut len = None;
        for v in self.header("content-length") {
            let v = v.trim();
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(400);
            }
            // Digits only, so a parse error can only be an overflow.
            let n = v.parse::<usize>().unwrap_or(usize::MAX);
            if len.is_some_and(|l| l != n) {
                return Err(400);
            }
            len = Some(n);
        }
        match len {
            Some(n) if n > MAX_BODY => Err(413),
            Some(n) => Ok(n),
            None if self.method == "POST" => Err(411),
            None => Ok(0),
        }
    }
}

/// Parses a request head (request line and headers, without the blank
/// line).
fn parse_head(raw: &[u8]) -> Result<Head, u16> {
    let text = std::str::from_utf8(raw).map_err(|_| 400u16)?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(400);
    }
    if !target.starts_with('/') || target.bytes().any(|b| b.is_ascii_control()) {
        return Err(400);
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        v if v.starts_with("HTTP/") => return Err(505),
        _ => return Err(400),
    };
    let mut headers = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(400);
        };
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            return Err(400);
        }
        if headers.len() == MAX_HEADERS {
            return Err(431);
        }
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    Ok(Head {
        method: method.to_owned(),
        target: target.to_owned(),
        http10,
        headers,
    })
}

enum Incoming {
    Request(Request),
    /// A broken request: answer with this status, then close.
    Reject(u16),
    /// The peer left, idled out, or the plug went offline.
    Gone,
}

/// Reads more bytes into `buf`; false when the connection should end.
async fn fill(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
    knobs: &Knobs,
    since: Instant,
) -> std::io::Result<bool> {
    loop {
        if knobs.offline.load(Ordering::Relaxed) || since.elapsed() > IDLE {
            return Ok(false);
        }
        tokio::select! {
            r = sock.read_buf(buf) => return Ok(r? > 0),
            _ = tokio::time::sleep(KNOB_POLL) => {}
        }
    }
}

async fn read_request(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
    knobs: &Knobs,
) -> std::io::Result<Incoming> {
    let since = Instant::now();
    let head_end = loop {
        // Tolerate the stray CRLF some clients put between requests.
        while buf.starts_with(b"\r\n") {
            buf.drain(..2);
        }
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Ok(Incoming::Reject(431));
        }
        if !fill(sock, buf, knobs, since).await? {
            return Ok(Incoming::Gone);
        }
    };
    if head_end > MAX_HEAD {
        return Ok(Incoming::Reject(431));
    }
    let head = match parse_head(&buf[..head_end]) {
        Ok(h) => h,
        Err(status) => return Ok(Incoming::Reject(status)),
    };
    let len = match head.body_len() {
        Ok(n) => n,
        Err(status) => return Ok(Incoming::Reject(status)),
    };
    buf.drain(..head_end + 4);
    // curl holds back bodies over 1 KiB for a second unless told to go on.
    let expects = head
        .header("expect")
        .any(|v| v.eq_ignore_ascii_case("100-continue"));
    if expects && buf.len() < len {
        sock.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    while buf.len() < len {
        if !fill(sock, buf, knobs, since).await? {
            return Ok(Incoming::Gone);
        }
    }
    let body: Vec<u8> = buf.drain(..len).collect();
    Ok(Incoming::Request(Request {
        close: head.wants_close(),
        method: head.method,
        target: head.target,
        headers: head.headers,
        body,
    }))
}

pub(super) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[derive(Debug)]
pub(super) struct Response {
    pub(super) status: u16,
    pub(super) content_type: Option<&'static str>,
    pub(super) set_cookie: Option<String>,
    pub(super) body: Vec<u8>,
}

impl Response {
    pub(super) fn status(status: u16) -> Self {
        Self {
            status,
            content_type: None,
            set_cookie: None,
            body: Vec::new(),
        }
    }

    pub(super) fn bytes(body: Vec<u8>) -> Self {
        Self {
            content_type: Some("application/octet-stream"),
            body,
            ..Self::status(200)
        }
    }

    pub(super) fn json(v: Value) -> Self {
        Self {
            content_type: Some("application/json;charset=UTF-8"),
            body: v.to_string().into_bytes(),
            ..Self::status(200)
        }
    }

    fn encode(&self, close: bool) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Length: {}\r\n",
            self.status,
            reason(self.status),
            self.body.len()
        );
        if let Some(ct) = self.content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        if let Some(c) = &self.set_cookie {
            head.push_str(&format!("Set-Cookie: {c}\r\n"));
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Sleeps `ms`, but gives up (false) as soon as the plug goes offline.
async fn pause(ms: u64, knobs: &Knobs) -> bool {
    let until = Instant::now() + Duration::from_millis(ms);
    loop {
        if knobs.offline.load(Ordering::Relaxed) {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        tokio::time::sleep(left.min(KNOB_POLL)).await;
    }
}

/// Reads and discards what the peer still sends after our last answer
/// (the body of a refused request, say): closing a socket with unread data
/// makes the kernel send a reset, which can destroy the answer before the
/// client has read it.
async fn linger(sock: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    let mut left = 4 * MAX_BODY;
    while left > 0 {
        match tokio::time::timeout_at(deadline, sock.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => return,
        }
    }
}

pub(super) async fn serve(mut sock: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let knobs = &shared.knobs;
    let _ = sock.set_nodelay(true);
    let mut buf = Vec::with_capacity(2048);
    loop {
        let incoming = read_request(&mut sock, &mut buf, knobs).await?;
        if matches!(incoming, Incoming::Gone) {
            return Ok(());
        }
        shared.requests.fetch_add(1, Ordering::Relaxed);
        if !pause(knobs.latency_ms.load(Ordering::Relaxed), knobs).await {
            return Ok(());
        }
        let (response, close) = match incoming {
            Incoming::Request(req) => {
                let response = shared.handle(&req);
                let close = req.close || knobs.close_after_reply.load(Ordering::Relaxed);
                (response, close)
            }
            // Whatever follows a broken request cannot be framed.
            Incoming::Reject(status) => (Response::status(status), true),
            Incoming::Gone => return Ok(()),
        };
        sock.write_all(&response.encode(close)).await?;
        if close {
            let _ = sock.shutdown().await;
            linger(&mut sock).await;
            return Ok(());
        }
    }
}
