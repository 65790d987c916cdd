use std::time::UNIX_EPOCH;

use base64::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::http::find;
use super::*;

const USER: &str = "user@example.com";
const PASS: &str = "secret";

async fn start(flavour: Flavour, load: Load) -> TapoSim {
    TapoSim::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        flavour,
        load,
        USER,
        PASS,
    )
    .await
    .expect("simulator starts")
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// Reads one response; None when the server closed without answering.
async fn read_reply(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Reply> {
    let end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        let n = sock.read_buf(buf).await.ok()?;
        if n == 0 {
            return None;
        }
    };
    let head = std::str::from_utf8(&buf[..end])
        .expect("ASCII head")
        .to_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .expect("a Content-Length");
    buf.drain(..end + 4);
    while buf.len() < len {
        let n = sock.read_buf(buf).await.ok()?;
        if n == 0 {
            return None;
        }
    }
    let body = buf.drain(..len).collect();
    Some(Reply {
        status,
        headers,
        body,
    })
}

/// One request on a fresh connection.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> Option<Reply> {
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    sock.write_all(raw).await.expect("send");
    read_reply(&mut sock, &mut Vec::new()).await
}

fn post(target: &str, cookie: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "POST {target} HTTP/1.1\r\nHost: plug\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(c) = cookie {
        raw.push_str(&format!("Cookie: {c}\r\n"));
    }
    raw.push_str("\r\n");
    let mut raw = raw.into_bytes();
    raw.extend_from_slice(body);
    raw
}

/// A minimal KLAP client built on the shared crypto.
struct Client {
    addr: SocketAddr,
    cookie: String,
    session: klap::Session,
}

async fn handshake1(addr: SocketAddr, local: [u8; 16]) -> Reply {
    exchange(addr, &post("/app/handshake1", None, &local))
        .await
        .expect("a handshake1 answer")
}

fn cookie_of(reply: &Reply) -> String {
    let set = reply.header("set-cookie").expect("Set-Cookie");
    let (id, timeout) = klap::parse_session_cookie(set).expect("TP_SESSIONID");
    assert_eq!(timeout, Some(86_400));
    assert_eq!(id.len(), 32);
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
    );
    format!("TP_SESSIONID={id}")
}

async fn login(addr: SocketAddr) -> Client {
    let local = [7u8; 16];
    let r = handshake1(addr, local).await;
    assert_eq!(r.status, 200);
    let (remote, server_hash) = klap::parse_handshake1(&r.body).expect("48 bytes");
    let auth = klap::auth_hash(USER, PASS);
    assert_eq!(server_hash, klap::handshake1_hash(&local, &remote, &auth));
    let cookie = cookie_of(&r);
    let proof = klap::handshake2_hash(&local, &remote, &auth);
    let r = exchange(addr, &post("/app/handshake2", Some(&cookie), &proof))
        .await
        .expect("a handshake2 answer");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    Client {
        addr,
        cookie,
        session: klap::Session::new(&local, &remote, &auth),
    }
}

impl Client {
    async fn raw(&mut self, body: Vec<u8>, seq: i32) -> Reply {
        let target = format!("/app/request?seq={seq}");
        exchange(self.addr, &post(&target, Some(&self.cookie), &body))
            .await
            .expect("an answer")
    }

    async fn call(&mut self, request: Value) -> Result<Value, u16> {
        let seq = self.session.next_seq().expect("seq");
        let body = self.session.encrypt(seq, request.to_string().as_bytes());
        let r = self.raw(body, seq).await;
        if r.status != 200 {
            return Err(r.status);
        }
        assert!(self.session.verify(seq, &r.body), "signed reply");
        let plain = self.session.decrypt(seq, &r.body).expect("decrypts");
        Ok(serde_json::from_slice(&plain).expect("JSON"))
    }

    async fn method(&mut self, method: &str) -> Value {
        self.call(json!({ "method": method })).await.expect("200")
    }
}

#[tokio::test]
async fn oversized_body_gets_413_and_the_server_keeps_serving() {
    let sim = start(Flavour::P110, Load::Constant { watts: 100.0 }).await;
    let raw = b"POST /app/handshake1 HTTP/1.1\r\nHost: plug\r\nContent-Length: 70000\r\n\r\n";
    let r = exchange(sim.addr, raw).await.expect("an answer");
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), Some("close"));
    // Sent with the body as well: the answer must survive the unread
    // bytes.
    let mut raw = raw.to_vec();
    raw.extend(std::iter::repeat_n(b'x', 70_000));
    let r = exchange(sim.addr, &raw).await.expect("an answer");
    assert_eq!(r.status, 413);
    assert_eq!(handshake1(sim.addr, [1; 16]).await.status, 200);
}

#[tokio::test]
async fn post_without_content_length_is_refused() {
    let sim = start(Flavour::P110, Load::Constant { watts: 100.0 }).await;
    let r = exchange(
        sim.addr,
        b"POST /app/handshake1 HTTP/1.1\r\nHost: plug\r\n\r\n",
    )
    .await
    .expect("an answer");
    assert_eq!(r.status, 411);
    let r = exchange(
        sim.addr,
        b"POST /app/handshake1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n",
    )
    .await
    .expect("an answer");
    assert_eq!(r.status, 411);
    let r = exchange(
        sim.addr,
        b"POST /app HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    )
    .await
    .expect("an answer");
    assert_eq!(r.status, 400);
    let r = exchange(
        sim.addr,
        b"POST /app HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    )
    .await
    .expect("an answer");
    assert_eq!(r.status, 400);
    assert_eq!(handshake1(sim.addr, [1; 16]).await.status, 200);
}

#[tokio::test]
async fn garbage_gets_400_and_the_server_keeps_serving() {
    let sim = start(Flavour::P110, Load::Constant { watts: 100.0 }).await;
    for raw in [
        &b"GARBAGE\r\n\r\n"[..],
        b"POST  /app HTTP/1.1\r\n\r\n",
        b"post /app HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"POST app HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"POST /app FTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"POST /app HTTP/1.1\r\nno colon here\r\n\r\n",
        b"POST /app HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"\xff\xfe\r\n\r\n",
    ] {
        let r = exchange(sim.addr, raw).await.expect("an answer");
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(raw));
    }
    let r = exchange(sim.addr, b"POST /app HTTP/2.0\r\n\r\n")
        .await
        .expect("an answer");
    assert_eq!(r.status, 505);
    let mut huge = b"POST /app HTTP/1.1\r\nX: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 10_000));
    let r = exchange(sim.addr, &huge).await.expect("an answer");
    assert_eq!(r.status, 431);
    let r = exchange(sim.addr, b"GET /nothing HTTP/1.1\r\n\r\n")
        .await
        .expect("an answer");
    assert_eq!(r.status, 404);
    let r = exchange(sim.addr, b"GET /app/handshake1 HTTP/1.1\r\n\r\n")
        .await
        .expect("an answer");
    assert_eq!(r.status, 405);
    let r = exchange(sim.addr, &post("/app/handshake1", None, b"short"))
        .await
        .expect("an answer");
    assert_eq!(r.status, 400);
    assert_eq!(handshake1(sim.addr, [1; 16]).await.status, 200);
    assert_eq!(sim.requests(), 14);
    assert_eq!(sim.handshakes(), 3);
}

#[tokio::test]
async fn expect_100_continue_gets_an_interim_answer() {
    let sim = start(Flavour::P110, Load::Constant { watts: 100.0 }).await;
    let mut sock = TcpStream::connect(sim.addr).await.expect("connect");
    sock.write_all(
        b"POST /app/handshake1 HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 16\r\n\r\n",
    )
    .await
    .expect("send");
    let mut buf = Vec::new();
    let interim = read_interim(&mut sock, &mut buf).await;
    assert_eq!(interim, "HTTP/1.1 100 Continue");
    sock.write_all(&[1; 16]).await.expect("send");
    let r = read_reply(&mut sock, &mut buf).await.expect("an answer");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 48);
}

async fn read_interim(sock: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            let line = String::from_utf8_lossy(&buf[..i]).into_owned();
            buf.drain(..i + 4);
            return line;
        }
        let n = sock.read_buf(buf).await.expect("read");
        assert!(n > 0, "closed");
    }
}

#[tokio::test]
async fn keep_alive_and_pipelining_on_one_connection() {
    let sim = start(Flavour::P110, Load::Constant { watts: 100.0 }).await;
    let mut sock = TcpStream::connect(sim.addr).await.expect("connect");
    let mut raw = post("/app/handshake1", None, &[1; 16]);
    raw.extend(post("/app", None, b"{\"method\":\"component_nego\"}"));
    sock.write_all(&raw).await.expect("send");
    let mut buf = Vec::new();
    let a = read_reply(&mut sock, &mut buf).await.expect("first");
    assert_eq!(a.status, 200);
    assert_eq!(a.body.len(), 48);
    assert_eq!(a.header("connection"), None);
    let b = read_reply(&mut sock, &mut buf).await.expect("second");
    assert_eq!(b.json(), json!({ "error_code": 1003 }));
    sock.write_all(b"POST /app HTTP/1.1\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}")
        .await
        .expect("send");
    let c = read_reply(&mut sock, &mut buf).await.expect("third");
    assert_eq!(c.header("connection"), Some("close"));
    assert!(read_reply(&mut sock, &mut buf).await.is_none(), "closed");
}

#[tokio::test]
async fn wrong_credentials_change_the_server_hash() {
    let sim = start(Flavour::P110, Load::Constant { watts: 100.0 }).await;
    let local = [3u8; 16];
    let auth = klap::auth_hash(USER, PASS);
    let check = |r: &Reply| {
        let (remote, hash) = klap::parse_handshake1(&r.body).expect("48 bytes");
        hash == klap::handshake1_hash(&local, &remote, &auth)
    };
    assert!(check(&handshake1(sim.addr, local).await));
    sim.knobs.wrong_credentials.store(true, Ordering::Relaxed);
    let r = handshake1(sim.addr, local).await;
    assert_eq!(r.status, 200);
    assert!(!check(&r), "a plug bound to another account");
    // Nor does it match the defaults clients fall back to.
    let (remote, hash) = klap::parse_handshake1(&r.body).expect("48 bytes");
    for (u, p) in [
        ("", ""),
        ("test@tp-link.net", "test"),
        ("kasa@tp-link.net", "kasaSetup"),
    ] {
        assert_ne!(
            hash,
            klap::handshake1_hash(&local, &remote, &klap::auth_hash(u, p))
        );
    }
    // Our own credentials cannot complete handshake2 either.
    let cookie = cookie_of(&r);
    let proof = klap::handshake2_hash(&local, &remote, &auth);
    let r = exchange(sim.addr, &post("/app/handshake2", Some(&cookie), &proof))
        .await
        .expect("an answer");
    assert_eq!(r.status, 403);
    sim.knobs.wrong_credentials.store(false, Ordering::Relaxed);
    assert!(check(&handshake1(sim.addr, local).await));
}

#[tokio::test]
async fn p110_speaks_klap_and_switches() {
    let sim = start(Flavour::P110, Load::Constant { watts: 1500.0 }).await;
    let mut c = login(sim.addr).await;
    let info = c.method("get_device_info").await;
    assert_eq!(info["error_code"], 0);
    let info = &info["result"];
    assert_eq!(info["model"], "P110");
    assert_eq!(info["type"], "SMART.TAPOPLUG");
    assert_eq!(info["device_on"], true);
    assert_eq!(info["overheat_status"], "normal");
    assert_eq!(info["device_id"].as_str().map(str::len), Some(40));
    let nick = base64::engine::general_purpose::STANDARD
        .decode(info["nickname"].as_str().expect("nickname"))
        .expect("base64");
    assert_eq!(nick, b"E2M Sim Plug");
    assert!(info["rssi"].as_i64().is_some_and(|r| r < 0));

    let e = c.method("get_energy_usage").await;
    assert_eq!(e["result"]["current_power"], 1_500_000);
    assert!(
        e["result"]["local_time"]
            .as_str()
            .is_some_and(|t| t.len() == 19)
    );
    let p = c.method("get_current_power").await;
    assert_eq!(p["result"]["current_power"], 1500);
    let m = c.method("get_emeter_data").await;
    assert_eq!(m["result"]["power_mw"], 1_500_000);
    let v = m["result"]["voltage_mv"].as_u64().expect("voltage");
    let i = m["result"]["current_ma"].as_u64().expect("current");
    assert!((228_000..232_000).contains(&v));
    assert!((i as f64 * v as f64 / 1e6 - 1500.0).abs() < 2.0);

    let nego = c.method("component_nego").await;
    let list = nego["result"]["component_list"].as_array().expect("list");
    assert!(list.contains(&json!({ "id": "energy_monitoring", "ver_code": 2 })));

    let off = c
        .call(
            json!({ "method": "set_device_info", "params": { "device_on": false },
                      "request_time_milis": 1, "terminal_uuid": "x" }),
        )
        .await
        .expect("200");
    assert_eq!(off, json!({ "error_code": 0 }));
    assert!(!sim.is_on());
    assert_eq!(sim.power_w(), 0.0);
    let bad = c
        .call(json!({ "method": "set_device_info", "params": { "device_on": "yes" } }))
        .await
        .expect("200");
    assert_eq!(bad["error_code"], -1008);

    let batch = c
        .call(
            json!({ "method": "multipleRequest", "params": { "requests": [
            { "method": "get_device_info" },
            { "method": "get_energy_usage" },
            { "method": "no_such_method" },
        ] } }),
        )
        .await
        .expect("200");
    let r = batch["result"]["responses"].as_array().expect("responses");
    assert_eq!(r.len(), 3);
    assert_eq!(r[0]["method"], "get_device_info");
    assert_eq!(r[0]["result"]["device_on"], false);
    assert_eq!(r[1]["result"]["current_power"], 0);
    assert_eq!(
        r[2],
        json!({ "method": "no_such_method", "error_code": -1002 })
    );

    sim.set_on(true);
    let info = c.method("get_device_info").await;
    assert_eq!(info["result"]["device_on"], true);
    assert_eq!(sim.handshakes(), 1);

    let not_json = c
        .session
        .next_seq()
        .map(|seq| (seq, c.session.encrypt(seq, b"not json")))
        .expect("seq");
    let r = c.raw(not_json.1, not_json.0).await;
    assert_eq!(r.status, 200);
    let plain = c.session.decrypt(not_json.0, &r.body).expect("decrypts");
    assert_eq!(plain, br#"{"error_code":-1003}"#);
}

#[tokio::test]
async fn dead_sessions_and_bad_requests() {
    let sim = start(Flavour::P110, Load::Constant { watts: 100.0 }).await;
    let mut c = login(sim.addr).await;

    // A bad signature.
    let seq = c.session.next_seq().expect("seq");
    let mut body = c.session.encrypt(seq, br#"{"method":"get_device_info"}"#);
    body[0] ^= 1;
    assert_eq!(c.raw(body, seq).await.status, 400);
    // The wrong seq for the body.
    let body = c.session.encrypt(seq, br#"{"method":"get_device_info"}"#);
    assert_eq!(c.raw(body.clone(), seq.wrapping_add(5)).await.status, 400);
    // Too short for a signature, and no seq at all.
    assert_eq!(c.raw(vec![1, 2, 3], seq).await.status, 400);
    let r = exchange(sim.addr, &post("/app/request", Some(&c.cookie), &body))
        .await
        .expect("an answer");
    assert_eq!(r.status, 400);
    // Unknown and missing cookies.
    let r = exchange(
        sim.addr,
        &post(
            &format!("/app/request?seq={seq}"),
            Some("TP_SESSIONID=00"),
            &body,
        ),
    )
    .await
    .expect("an answer");
    assert_eq!(r.status, 403);
    let r = exchange(
        sim.addr,
        &post(&format!("/app/request?seq={seq}"), None, &body),
    )
    .await
    .expect("an answer");
    assert_eq!(r.status, 403);

    // handshake1 without handshake2 is not a session yet.
    let local = [9u8; 16];
    let r = handshake1(sim.addr, local).await;
    let half = cookie_of(&r);
    let r = exchange(
        sim.addr,
        &post(&format!("/app/request?seq={seq}"), Some(&half), &body),
    )
    .await
    .expect("an answer");
    assert_eq!(r.status, 403);
    // A wrong handshake2 proof.
    let r = exchange(sim.addr, &post("/app/handshake2", Some(&half), &[0; 32]))
        .await
        .expect("an answer");
    assert_eq!(r.status, 403);

    // The session still works, until the server forgets it.
    assert!(c.call(json!({ "method": "get_device_info" })).await.is_ok());
    sim.knobs.session_ttl_s.store(0, Ordering::Relaxed);
    assert_eq!(
        c.call(json!({ "method": "get_device_info" })).await,
        Err(403)
    );
    sim.knobs.session_ttl_s.store(86_400, Ordering::Relaxed);
    assert_eq!(
        c.call(json!({ "method": "get_device_info" })).await,
        Err(403),
        "an expired session stays dead"
    );
    let mut c = login(sim.addr).await;
    assert!(c.call(json!({ "method": "get_device_info" })).await.is_ok());
}

#[tokio::test]
async fn p100_has_no_metering_and_closes_connections() {
    let sim = start(Flavour::P100, Load::Heater { watts: 2000.0 }).await;
    assert!(sim.knobs.close_after_reply.load(Ordering::Relaxed));
    let r = handshake1(sim.addr, [1; 16]).await;
    assert_eq!(r.header("connection"), Some("close"));
    let mut c = login(sim.addr).await;
    let info = c.method("get_device_info").await;
    assert_eq!(info["result"]["model"], "P100");
    assert_eq!(info["result"]["overheated"], false);
    for m in ["get_energy_usage", "get_current_power", "get_emeter_data"] {
        assert_eq!(c.method(m).await, json!({ "error_code": -1002 }), "{m}");
    }
    let nego = c.method("component_nego").await;
    let list = nego["result"]["component_list"].as_array().expect("list");
    assert!(!list.iter().any(|c| c["id"] == "energy_monitoring"));
    let usage = c.method("get_device_usage").await;
    assert!(usage["result"].get("power_usage").is_none());
    assert!(usage["result"]["time_usage"].get("today").is_some());
    // The load still draws power; the plug just cannot tell.
    let w = sim.power_w();
    assert!((1960.0..=2040.0).contains(&w), "{w}");
}

#[tokio::test]
async fn knobs_rate_limit_disable_offline_latency() {
    let sim = start(Flavour::P110, Load::Constant { watts: 100.0 }).await;
    let discover = br#"{"method":"login","params":{"sub_method":"discover"}}"#;
    let r = exchange(sim.addr, &post("/", None, discover))
        .await
        .expect("answer");
    assert_eq!(
        r.json(),
        json!({"error_code":0,"result":{"sub_method":"discover","tpap_preferred":false}})
    );
    let r = exchange(
        sim.addr,
        &post(
            "/app",
            None,
            br#"{"method":"component_nego","params":null}"#,
        ),
    )
    .await
    .expect("answer");
    assert_eq!(r.json(), json!({ "error_code": 1003 }));

    sim.knobs.klap_disabled.store(true, Ordering::Relaxed);
    assert_eq!(handshake1(sim.addr, [1; 16]).await.status, 403);
    let r = exchange(sim.addr, &post("/", None, discover))
        .await
        .expect("answer");
    let j = r.json();
    assert_eq!(j["result"]["tpap_preferred"], true);
    assert_eq!(j["result"]["tpap"]["pake"], json!([2]));
    assert_eq!(j["result"]["tpap"]["port"], sim.addr.port());
    sim.knobs.klap_disabled.store(false, Ordering::Relaxed);

    sim.knobs.rate_limited.store(true, Ordering::Relaxed);
    assert_eq!(handshake1(sim.addr, [1; 16]).await.status, 429);
    sim.knobs.rate_limited.store(false, Ordering::Relaxed);

    sim.knobs.latency_ms.store(200, Ordering::Relaxed);
    let t = Instant::now();
    assert_eq!(handshake1(sim.addr, [1; 16]).await.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(200));
    sim.knobs.latency_ms.store(0, Ordering::Relaxed);

    // An idle keep-alive connection is dropped when the plug goes away.
    let mut idle = TcpStream::connect(sim.addr).await.expect("connect");
    idle.write_all(&post("/app/handshake1", None, &[1; 16]))
        .await
        .expect("send");
    let mut buf = Vec::new();
    assert!(read_reply(&mut idle, &mut buf).await.is_some());
    sim.knobs.offline.store(true, Ordering::Relaxed);
    let closed = tokio::time::timeout(Duration::from_secs(2), read_reply(&mut idle, &mut buf))
        .await
        .expect("closed promptly");
    assert!(closed.is_none());
    assert!(
        exchange(sim.addr, &post("/app/handshake1", None, &[1; 16]))
            .await
            .is_none()
    );
    sim.knobs.offline.store(false, Ordering::Relaxed);
    assert_eq!(handshake1(sim.addr, [1; 16]).await.status, 200);
    // Refused attempts count; the one dropped while offline never
    // reached the plug.
    assert_eq!(sim.handshakes(), 5);
}

#[tokio::test]
async fn dropping_the_simulator_closes_its_connections() {
    let sim = start(Flavour::P110, Load::Constant { watts: 100.0 }).await;
    let addr = sim.addr;
    let mut open = TcpStream::connect(addr).await.expect("connect");
    open.write_all(&post("/app/handshake1", None, &[1; 16]))
        .await
        .expect("send");
    let mut buf = Vec::new();
    assert!(read_reply(&mut open, &mut buf).await.is_some());
    drop(sim);
    let closed = tokio::time::timeout(Duration::from_secs(2), read_reply(&mut open, &mut buf))
        .await
        .expect("closed promptly");
    assert!(closed.is_none());
}

fn at(unix: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix)
}

#[test]
fn energy_accumulates_while_on_and_rolls_over_at_midnight() {
    let load = Load::Constant { watts: 1000.0 };
    // 2025-03-31 22:00 UTC.
    let start = 1_743_458_400;
    let mut m = Meter::new(at(start));
    m.advance(load, at(start + 3600));
    let s = m.totals(at(start + 3600));
    assert!((s.today.wh - 1000.0).abs() < 1e-6, "{s:?}");
    assert!((s.today.on_s - 3600.0).abs() < 1e-6);
    assert!((s.month.wh - 1000.0).abs() < 1e-6);
    // Off for an hour: nothing counts.
    m.on = false;
    m.advance(load, at(start + 7200));
    // Midnight passed into April: a new day and a new month.
    let s = m.totals(at(start + 7200));
    assert_eq!(s.today.wh, 0.0);
    assert_eq!(s.month.wh, 0.0);
    assert!((s.past7.wh - 1000.0).abs() < 1e-6);
    assert!((m.since_boot_wh - 1000.0).abs() < 1e-6);
    m.on = true;
    m.on_since = at(start + 7200);
    m.advance(load, at(start + 7200 + 1800));
    let s = m.totals(at(start + 7200 + 1800));
    assert!((s.today.wh - 500.0).abs() < 1e-6);
    assert!((s.month.wh - 500.0).abs() < 1e-6);
    assert!((s.past30.wh - 1500.0).abs() < 1e-6);
    // A wall clock that jumps back counts nothing.
    m.advance(load, at(start));
    m.advance(load, at(start + 1));
    // Only the one second after the jump.
    assert!((m.since_boot_wh - 1500.0 - 1000.0 / 3600.0).abs() < 1e-6);
}

#[test]
fn the_fridge_cycles_its_compressor() {
    let load = Load::Fridge {
        watts: 120.0,
        on_s: 600.0,
        off_s: 1200.0,
    };
    let t = 1_750_000_000.0;
    let running = draw(load, 10.0, t);
    assert!((115.0..=125.0).contains(&running), "{running}");
    assert_eq!(draw(load, 700.0, t), 0.0);
    assert!(draw(load, 1800.0 + 10.0, t) > 100.0, "the next cycle");
    // Three full cycles: a third of the time at ~120 W.
    let start = 1_750_000_000;
    let mut m = Meter::new(at(start));
    m.advance(load, at(start + 3 * 1800));
    let expected = 120.0 * 3.0 * 600.0 / 3600.0;
    assert!(
        (m.since_boot_wh - expected).abs() < 0.03 * expected,
        "{}",
        m.since_boot_wh
    );
    // Nonsense periods do not panic or produce NaN.
    let odd = Load::Fridge {
        watts: f64::NAN,
        on_s: -1.0,
        off_s: 0.0,
    };
    assert_eq!(draw(odd, 5.0, t), 0.0);
    assert_eq!(draw(Load::Constant { watts: -5.0 }, 0.0, t), 0.0);
}

#[test]
fn an_idle_appliance_draws_nothing_but_the_relay_stays_on() {
    let load = Load::Constant { watts: 1000.0 };
    let start = 1_750_000_000;
    let mut m = Meter::new(at(start));
    m.idle = true;
    assert_eq!(m.power(load, at(start + 10)), 0.0);
    m.advance(load, at(start + 3600));
    let s = m.totals(at(start + 3600));
    assert_eq!(s.today.wh, 0.0);
    assert!((s.today.on_s - 3600.0).abs() < 1e-6, "the relay was on");
    m.idle = false;
    assert_eq!(m.power(load, at(start + 3600)), 1000.0);
    m.advance(load, at(start + 7200));
    assert!((m.since_boot_wh - 1000.0).abs() < 1e-6);
    assert_eq!(load.draw_w(1.0, 0.0), 1000.0);
}

#[tokio::test]
async fn set_drawing_and_the_handle_agree_with_the_plug() {
    let sim = start(Flavour::P110, Load::Constant { watts: 1500.0 }).await;
    let handle = sim.handle();
    assert!(sim.is_drawing() && handle.is_drawing());
    assert_eq!(handle.power_w(), 1500.0);
    handle.set_drawing(false);
    assert!(sim.is_on() && handle.is_on(), "the relay is untouched");
    assert!(!sim.is_drawing());
    assert_eq!(sim.power_w(), 0.0);
    sim.set_drawing(true);
    assert_eq!(handle.power_w(), 1500.0);
    sim.set_on(false);
    assert!(!handle.is_on());
    assert_eq!(handle.power_w(), 0.0);
}

#[test]
fn boiler_and_heater_stay_near_their_rating() {
    for s in 0..1000u64 {
        let t = 1_750_000_000.0 + s as f64;
        let b = draw(Load::Boiler { watts: 3000.0 }, 1.0, t);
        assert!((2985.0..=3015.0).contains(&b), "{b}");
        let h = draw(Load::Heater { watts: 2000.0 }, 1.0, t);
        assert!((1965.0..=2035.0).contains(&h), "{h}");
    }
}
