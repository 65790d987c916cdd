//! Benchmark of the notification sidecar `energy2mqtt-push`, as a plain
//! binary (`harness = false`): the real sidecar binary in its own process,
//! the embedded broker in this one, and a loopback fake push service and
//! ntfy server (below) that answer at once and note when each request
//! arrived.
//!
//! 1. Latency, alert event → notification: rounds of 10 raises then their
//!    10 clears, 50 ms apart, each round against a fresh sidecar. A
//!    sidecar lets through at most 10 raises per channel per 10 minutes
//!    (src/push/notify.rs `RATE_MAX`/`RATE_WINDOW`, not configurable),
//!    so no spacing a bench can wait for gets 200 raises through one
//!    process; a fresh process per round gets every event delivered, on
//!    both channels. Per round: RSS once idle, RSS and CPU after.
//! 2. One sidecar taking all 200 events (10 raises + 10 clears, 10 times):
//!    RSS idle and after, CPU per event, and what the rate limit lets
//!    through (the first 10 raises and their clears).
//!
//! `cargo bench --bench push_bench`. Loopback only, every wait has a
//! timeout, about 40 s. Figures go to docs/PERFORMANCE.md.

#[path = "support/process.rs"]
mod process;
#[path = "support/stats.rs"]
mod stats;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use energy2mqtt::broker;
use energy2mqtt::config::BrokerConfig;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use process::Proc;
use stats::{ms, percentile};

const PUSH_BIN: &str = env!("CARGO_BIN_EXE_energy2mqtt-push");
/// Raises per round: exactly what the rate limit lets through.
const RAISES: usize = 10;
const ROUNDS: usize = 10;
const SPACING: Duration = Duration::from_millis(50);
const IDLE: Duration = Duration::from_secs(1);
const KIB_PER_MIB: f64 = 1024.0;

fn main() {
    let started = Instant::now();
    println!("energy2mqtt push_bench");
    println!(
        "machine: {} CPUs, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        process::cpu_model()
    );
    let size = std::fs::metadata(PUSH_BIN).map(|m| m.len()).unwrap_or(0);
    println!(
        "sidecar: {PUSH_BIN} ({:.1} MiB)",
        size as f64 / 1024.0 / 1024.0
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            println!("cannot start a tokio runtime: {e}");
            return;
        }
    };
    if let Err(e) = runtime.block_on(run()) {
        println!("push bench failed: {e:#}");
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    println!("total bench time: {:.1} s", started.elapsed().as_secs_f64());
}

async fn run() -> Result<()> {
    let broker_port = free_port()?;
    let cfg = BrokerConfig {
        enabled: true,
        listen: SocketAddr::from(([127, 0, 0, 1], broker_port)),
        ..BrokerConfig::default()
    };
    tokio::time::timeout(Duration::from_secs(10), broker::start(&cfg))
        .await
        .map_err(|_| anyhow!("the embedded broker did not start within 10 s"))??;
    let fake = Fake::start().await?;
    let receiver = Receiver::new()?;
    let mqtt = Mqtt::connect(broker_port).await?;
    let tick = clock_ticks();
    println!(
        "embedded broker on 127.0.0.1:{broker_port}, fake push + ntfy on 127.0.0.1:{}",
        fake.port
    );

    println!(
        "\n== 1. event -> notification latency: {ROUNDS} rounds x ({RAISES} raises + {RAISES} clears), {} ms apart, a fresh sidecar per round ==",
        SPACING.as_millis()
    );
    let dir = tempfile::tempdir()?;
    let (mut lat_push, mut lat_ntfy) = (Vec::new(), Vec::new());
    let (mut idle, mut after) = (Vec::new(), Vec::new());
    let (mut cpu_ticks, mut delivered_events) = (0u64, 0usize);
    let (mut main_ns, mut other_ns) = (0u64, 0u64);
    let mut undecryptable = 0usize;
    for round in 0..ROUNDS {
        let base = format!("e2mbench{round}");
        let mut sidecar = start_sidecar(dir.path(), &base, broker_port, &fake, &receiver)?;
        mqtt.wait_online(&base, &mut sidecar).await?;
        tokio::time::sleep(IDLE).await;
        idle.push(mem(sidecar.pid()).context("/proc status")?);
        let cpu0 = cpu(sidecar.pid()).context("/proc stat")?;
        let ns0 = cpu_ns_split(sidecar.pid()).context("/proc schedstat")?;
        let mark = fake.len();
        let events = episode_events(&format!("b{round}"), RAISES);
        let sent = mqtt.publish_spaced(&base, &events).await?;
        let want = 2 * events.len();
        fake.wait_for(mark + want, Duration::from_secs(15)).await;
        let cpu1 = cpu(sidecar.pid()).context("/proc stat")?;
        let ns1 = cpu_ns_split(sidecar.pid()).context("/proc schedstat")?;
        after.push(mem(sidecar.pid()).context("/proc status")?);
        sidecar.check_alive()?;
        let got = match_arrivals(&fake.since(mark), &sent, &receiver);
        undecryptable += got.undecryptable;
        if got.push.len() != events.len() || got.ntfy.len() != events.len() {
            println!(
                "  round {round}: only {} Web Push and {} ntfy of {} events arrived",
                got.push.len(),
                got.ntfy.len(),
                events.len()
            );
        }
        delivered_events += got.push.len().min(got.ntfy.len());
        lat_push.extend(got.push);
        lat_ntfy.extend(got.ntfy);
        cpu_ticks += cpu1 - cpu0;
        main_ns += ns1.0.saturating_sub(ns0.0);
        // Pool threads can end between the readings: count only growth.
        other_ns += ns1.1.saturating_sub(ns0.1);
        drop(sidecar);
    }
    let mut report = Report::default();
    report.latency("Web Push: event -> push service", &mut lat_push);
    report.latency(
        "ntfy: event -> ntfy server (sent after Web Push)",
        &mut lat_ntfy,
    );
    if undecryptable > 0 {
        report.add("Web Push messages that did not decrypt", undecryptable);
    }
    report.add(
        "sidecar RSS idle after start (median of rounds)",
        mem_text(median_mem(&idle)),
    );
    report.add(
        "sidecar RSS after its 20 notifications (median of rounds)",
        mem_text(median_mem(&after)),
    );
    if delivered_events > 0 {
        report.add(
            "sidecar CPU per alert event (one Web Push + one ntfy)",
            format!(
                "{:.2} ms (schedstat); utime+stime {:.2} ms ({cpu_ticks} ticks over {delivered_events} events)",
                (main_ns + other_ns) as f64 / 1e6 / delivered_events as f64,
                cpu_ticks as f64 * 1e3 / tick as f64 / delivered_events as f64,
            ),
        );
        report.add(
            "  of which the main thread / the blocking pool (memory saves)",
            format!(
                "{:.2} ms / {:.2} ms",
                main_ns as f64 / 1e6 / delivered_events as f64,
                other_ns as f64 / 1e6 / delivered_events as f64,
            ),
        );
    }

    println!(
        "\n== 2. one sidecar, {} events ({ROUNDS} x ({RAISES} raises + {RAISES} clears)), {} ms apart ==",
        ROUNDS * RAISES * 2,
        SPACING.as_millis()
    );
    let base = "e2mbenchsteady";
    let mut sidecar = start_sidecar(dir.path(), base, broker_port, &fake, &receiver)?;
    mqtt.wait_online(base, &mut sidecar).await?;
    // Idle: what it costs doing nothing (the 5 s tick, MQTT keep-alive).
    let idle_ns0 = cpu_ns(sidecar.pid()).context("/proc schedstat")?;
    tokio::time::sleep(5 * IDLE).await;
    let idle_ns = cpu_ns(sidecar.pid())
        .context("/proc schedstat")?
        .saturating_sub(idle_ns0);
    let idle = mem(sidecar.pid()).context("/proc status")?;
    let cpu0 = cpu(sidecar.pid()).context("/proc stat")?;
    let ns0 = cpu_ns(sidecar.pid()).context("/proc schedstat")?;
    let mark = fake.len();
    let mut events = Vec::new();
    for block in 0..ROUNDS {
        events.extend(episode_events(&format!("s{block}"), RAISES));
    }
    let sent = mqtt.publish_spaced(base, &events).await?;
    // What the rate limit lets through, and a moment for anything beyond.
    fake.wait_for(mark + 4 * RAISES, Duration::from_secs(15))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu1 = cpu(sidecar.pid()).context("/proc stat")?;
    let ns1 = cpu_ns(sidecar.pid()).context("/proc schedstat")?;
    let after = mem(sidecar.pid()).context("/proc status")?;
    sidecar.check_alive()?;
    let got = match_arrivals(&fake.since(mark), &sent, &receiver);
    report.add("sidecar RSS idle after start", mem_text(idle));
    report.add(
        "sidecar CPU idle",
        format!(
            "{:.3} ms per s (schedstat, over {} s)",
            idle_ns as f64 / 1e6 / (5 * IDLE).as_secs_f64(),
            (5 * IDLE).as_secs()
        ),
    );
    report.add(
        format!("sidecar RSS after {} events", events.len()),
        mem_text(after),
    );
    report.add(
        format!(
            "delivered of {} events (rate limit: 10 raises/10 min/channel)",
            events.len()
        ),
        format!("Web Push {}, ntfy {}", got.push.len(), got.ntfy.len()),
    );
    report.add(
        "sidecar CPU per event received (most rate-limited)",
        format!(
            "{:.3} ms (schedstat); utime+stime {:.2} ms ({} ticks over {} events)",
            ns1.saturating_sub(ns0) as f64 / 1e6 / events.len() as f64,
            (cpu1 - cpu0) as f64 * 1e3 / tick as f64 / events.len() as f64,
            cpu1 - cpu0,
            events.len()
        ),
    );
    drop(sidecar);
    report.print();
    Ok(())
}

// ------------------------------------------------------------ the events

struct Sent {
    tag: String,
    kind: &'static str,
    message: String,
    at: Instant,
}

/// `n` raises on distinct rules and devices, then their clears: an error
/// level (the default `min_level` is warning), no quiet hours.
fn episode_events(prefix: &str, n: usize) -> Vec<Value> {
    let one = |i: usize, kind: &str| {
        let (rule, device) = (format!("{prefix}e{i}"), format!("pack{i}"));
        json!({"kind": kind, "event_type": kind, "rule": rule, "family": "bench",
               "level": "error", "device": device, "device_name": format!("Pack {i}"),
               "value": 0.06, "threshold": 0.05,
               "message": format!("bench {rule}-{device} {kind}: cell delta 0.060 V"),
               "at": "2026-11-21T18:04:00Z", "repeat": false, "notify": true})
    };
    let mut out: Vec<Value> = (0..n).map(|i| one(i, "raise")).collect();
    out.extend((0..n).map(|i| one(i, "clear")));
    out
}

// ------------------------------------------------------------ the sidecar

fn start_sidecar(
    dir: &Path,
    base: &str,
    broker: u16,
    fake: &Fake,
    receiver: &Receiver,
) -> Result<Proc> {
    let data = dir.join(format!("data-{base}"));
    std::fs::create_dir_all(&data)?;
    std::fs::write(
        data.join("push-subscriptions.json"),
        serde_json::to_vec(&json!([{
            "endpoint": format!("http://127.0.0.1:{}/push/bench", fake.port),
            "keys": {"p256dh": receiver.p256dh, "auth": receiver.auth_b64},
        }]))?,
    )?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let config = dir.join(format!("{base}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"
[mqtt]
url = "mqtt://127.0.0.1:{broker}"
client_id = "{base}"
base_topic = "{base}"

[storage]
dir = "{data}"

[log]
level = "info"

[push]
listen = "{listen}"
vapid_subject = "mailto:bench@example.com"

[[push.ntfy]]
url = "http://127.0.0.1:{fake}/ntfy"
topic = "bench"
"#,
            data = data.display(),
            fake = fake.port,
        ),
    )?;
    Proc::spawn(
        Path::new(PUSH_BIN),
        &["--config", &config.to_string_lossy()],
        &[("E2M_PUSH__LISTEN", listen.clone())],
        dir,
        base,
    )
}

#[derive(Debug, Clone, Copy)]
struct Mem {
    rss_kib: u64,
    anon_kib: u64,
}

/// VmRSS and RssAnon of `pid`, in KiB.
fn mem(pid: u32) -> Option<Mem> {
    let [rss_kib, anon_kib] = process::status_fields(Some(pid), ["VmRSS:", "RssAnon:"])?;
    Some(Mem { rss_kib, anon_kib })
}

fn mem_text(m: Mem) -> String {
    format!(
        "VmRSS {:.1} MiB, RssAnon {:.1} MiB",
        m.rss_kib as f64 / KIB_PER_MIB,
        m.anon_kib as f64 / KIB_PER_MIB
    )
}

fn median_mem(v: &[Mem]) -> Mem {
    let mut rss: Vec<u64> = v.iter().map(|m| m.rss_kib).collect();
    let mut anon: Vec<u64> = v.iter().map(|m| m.anon_kib).collect();
    rss.sort_unstable();
    anon.sort_unstable();
    Mem {
        rss_kib: rss[rss.len() / 2],
        anon_kib: anon[anon.len() / 2],
    }
}

/// utime + stime of `pid`, in clock ticks.
fn cpu(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state is field 3, utime 14.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU time of `pid`'s live threads in ns (/proc/<pid>/task/*/schedstat,
/// the scheduler's own account: finer than the 10 ms ticks of `stat`).
fn cpu_ns(pid: u32) -> Option<u64> {
    let (main, others) = cpu_ns_split(pid)?;
    Some(main + others)
}

/// [`cpu_ns`] as (the main thread, which runs the current-thread tokio
/// runtime: MQTT, rules, encryption, HTTP; the other threads: tokio's
/// blocking pool, where the channels' memory is saved).
fn cpu_ns_split(pid: u32) -> Option<(u64, u64)> {
    let (mut main, mut others) = (0, 0);
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let task = task.ok()?;
        let text = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        let ns = text.split_whitespace().next()?.parse::<u64>().ok()?;
        if task.file_name().to_str() == Some(pid.to_string().as_str()) {
            main += ns;
        } else {
            others += ns;
        }
    }
    Some((main, others))
}

/// Ticks per second of /proc/<pid>/stat (USER_HZ, 100 on Linux).
fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

// ------------------------------------------------------------ the browser

/// The browser side of one subscription: a real P-256 key pair and auth
/// secret, so the sidecar does the full RFC 8291 work and we can decrypt.
struct Receiver {
    secret: p256::SecretKey,
    auth: [u8; 16],
    p256dh: String,
    auth_b64: String,
}

impl Receiver {
    fn new() -> Result<Self> {
        let secret = loop {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| anyhow!("getrandom: {e}"))?;
            // Almost every 32-byte string is a valid scalar.
            if let Ok(k) = p256::SecretKey::from_slice(&bytes) {
                break k;
            }
        };
        let mut auth = [0u8; 16];
        getrandom::fill(&mut auth).map_err(|e| anyhow!("getrandom: {e}"))?;
        let point = secret.public_key().to_encoded_point(false);
        Ok(Self {
            p256dh: URL_SAFE_NO_PAD.encode(point.as_bytes()),
            auth_b64: URL_SAFE_NO_PAD.encode(auth),
            secret,
            auth,
        })
    }

    /// The notification JSON the service worker would show.
    fn decrypt(&self, body: &[u8]) -> Option<Value> {
        let auth = web_push_native::Auth::clone_from_slice(&self.auth);
        let plain = web_push_native::decrypt(body.to_vec(), &self.secret, &auth).ok()?;
        serde_json::from_slice(&plain).ok()
    }
}

#[derive(Default)]
struct Matched {
    push: Vec<Duration>,
    ntfy: Vec<Duration>,
    undecryptable: usize,
}

/// Each arrival matched to its event (Web Push by the decrypted tag and
/// kind, ntfy by its body): event published → request fully received.
fn match_arrivals(arrivals: &[Arrival], sent: &[Sent], receiver: &Receiver) -> Matched {
    let by_key: HashMap<(&str, &str), &Sent> =
        sent.iter().map(|s| ((s.tag.as_str(), s.kind), s)).collect();
    let by_message: HashMap<&str, &Sent> = sent.iter().map(|s| (s.message.as_str(), s)).collect();
    let mut out = Matched::default();
    for a in arrivals {
        if a.path.starts_with("/ntfy/") {
            if let Some(s) = std::str::from_utf8(&a.body)
                .ok()
                .and_then(|b| by_message.get(b))
            {
                out.ntfy.push(a.at.saturating_duration_since(s.at));
            }
        } else if a.path.starts_with("/push/") {
            let Some(shown) = receiver.decrypt(&a.body) else {
                out.undecryptable += 1;
                continue;
            };
            let tag = shown["tag"].as_str().unwrap_or_default();
            let kind = shown["kind"].as_str().unwrap_or_default();
            if let Some(s) = by_key.get(&(tag, kind)) {
                out.push.push(a.at.saturating_duration_since(s.at));
            }
        }
    }
    out
}

// ------------------------------------------------------------ the fake server

struct Arrival {
    at: Instant,
    path: String,
    body: Vec<u8>,
}

/// HTTP/1.1 on loopback, keep-alive: `POST /push/...` answers 201,
/// `POST /ntfy/...` 200 `{}`; the instant each request was fully read is
/// kept.
struct Fake {
    port: u16,
    log: Arc<Mutex<Vec<Arrival>>>,
}

impl Fake {
    async fn start() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let shared = log.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let _ = sock.set_nodelay(true);
                tokio::spawn(connection(sock, shared.clone()));
            }
        });
        Ok(Self { port, log })
    }

    fn len(&self) -> usize {
        self.log.lock().map_or(0, |l| l.len())
    }

    fn since(&self, mark: usize) -> Vec<Arrival> {
        let Ok(mut log) = self.log.lock() else {
            return Vec::new();
        };
        let start = mark.min(log.len());
        log.drain(start..).collect::<Vec<_>>()
    }

    async fn wait_for(&self, n: usize, timeout: Duration) {
        let until = Instant::now() + timeout;
        while self.len() < n && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn connection(mut sock: tokio::net::TcpStream, log: Arc<Mutex<Vec<Arrival>>>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let path = head
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + length {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let at = Instant::now();
        let body = buf[head_end..head_end + length].to_vec();
        buf.drain(..head_end + length);
        let reply: &[u8] = if path.starts_with("/push/") {
            b"HTTP/1.1 201 Created\r\nLocation: /m/1\r\nContent-Length: 0\r\n\r\n"
        } else if path.starts_with("/ntfy/") {
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        } else {
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        };
        if let Ok(mut l) = log.lock() {
            l.push(Arrival { at, path, body });
        }
        if sock.write_all(reply).await.is_err() {
            return;
        }
    }
}

// ------------------------------------------------------------ MQTT

/// One client for the whole bench: publishes the events and watches
/// `+/push/state` for each sidecar's `online`.
struct Mqtt {
    client: AsyncClient,
    states: tokio::sync::Mutex<mpsc::UnboundedReceiver<(String, Vec<u8>)>>,
}

impl Mqtt {
    async fn connect(port: u16) -> Result<Self> {
        let mut opts = MqttOptions::new("push-bench", "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(opts, 256);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((p.topic, p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        client.subscribe("+/push/state", QoS::AtLeastOnce).await?;
        tokio::time::timeout(Duration::from_secs(10), ready_rx.recv())
            .await
            .map_err(|_| anyhow!("no SUBACK from the broker within 10 s"))?;
        Ok(Self {
            client,
            states: tokio::sync::Mutex::new(rx),
        })
    }

    async fn wait_online(&self, base: &str, sidecar: &mut Proc) -> Result<()> {
        let topic = format!("{base}/push/state");
        let until = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut rx = self.states.lock().await;
        loop {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some((t, p))) if t == topic && p == br#"{"state":"online"}"# => return Ok(()),
                Ok(Some(_)) => {}
                _ => {
                    sidecar.check_alive()?;
                    bail!("the sidecar did not publish {topic} online within 20 s");
                }
            }
        }
    }

    /// Publishes `events` on `<base>/alerts/event`, [`SPACING`] apart;
    /// when each went out.
    async fn publish_spaced(&self, base: &str, events: &[Value]) -> Result<Vec<Sent>> {
        let topic = format!("{base}/alerts/event");
        let mut sent = Vec::with_capacity(events.len());
        let mut next = tokio::time::Instant::now();
        for e in events {
            tokio::time::sleep_until(next).await;
            next += SPACING;
            let at = Instant::now();
            self.client
                .publish(topic.as_str(), QoS::AtLeastOnce, false, e.to_string())
                .await?;
            let (rule, device) = (
                e["rule"].as_str().unwrap_or_default(),
                e["device"].as_str().unwrap_or_default(),
            );
            sent.push(Sent {
                tag: format!("{rule}-{device}"),
                kind: if e["kind"] == "raise" {
                    "raise"
                } else {
                    "clear"
                },
                message: e["message"].as_str().unwrap_or_default().to_owned(),
                at,
            });
        }
        Ok(sent)
    }
}

// ------------------------------------------------------------ report

#[derive(Default)]
struct Report {
    rows: Vec<(String, String)>,
}

impl Report {
    fn add(&mut self, what: impl Into<String>, measured: impl ToString) {
        let (what, measured) = (what.into(), measured.to_string());
        println!("  {what}: {measured}");
        self.rows.push((what, measured));
    }

    fn latency(&mut self, what: &str, v: &mut [Duration]) {
        if v.is_empty() {
            self.add(what, "nothing arrived");
            return;
        }
        v.sort_unstable();
        self.add(
            what,
            format!(
                "median {:.2} ms, p99 {:.2} ms, max {:.2} ms (n = {})",
                ms(percentile(v, 0.5)),
                ms(percentile(v, 0.99)),
                ms(v[v.len() - 1]),
                v.len()
            ),
        );
    }

    fn print(&self) {
        let w0 = self.rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        println!("\n{:<w0$} | measured", "measurement");
        println!("{}-+-{}", "-".repeat(w0), "-".repeat(40));
        for (what, measured) in &self.rows {
            println!("{what:<w0$} | {measured}");
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
