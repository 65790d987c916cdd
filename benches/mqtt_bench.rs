//! Benchmarks of the MQTT path, as a plain binary (`harness = false`):
//!
//! 1. device state → JSON payload serialisation for 100 devices;
//! 2. end-to-end publish rate, our `Connection` → the embedded broker → a
//!    separate rumqttc subscriber, for transient and for retained state
//!    messages;
//! 3. resident memory of the real `energy2mqtt run` process, idle and under
//!    a flood of command-topic requests, against `energy2mqtt broker`.
//!
//! `cargo bench --bench mqtt_bench`. Loopback only; every wait has a
//! timeout and the whole run stays under about a minute; what could not be
//! measured is printed as such. Figures go to docs/PERFORMANCE.md.

#[path = "support/process.rs"]
mod process;

use std::hint::black_box;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use energy2mqtt::broker;
use energy2mqtt::config::BrokerConfig;
use energy2mqtt::model::StateJson;
use energy2mqtt::mqtt::connection::Connection;
use energy2mqtt::mqtt::outbox::{Class, Message, TRANSIENT_CAPACITY};
use energy2mqtt::mqtt::payloads;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS, SubscribeFilter};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use tokio::task::JoinHandle;

use process::{Proc, find_binary, read_mem, wait_for_port};

const DEVICES: usize = 100;
const E2E_MESSAGES: usize = 100_000;
const FLOOD_REQUESTS: usize = 20_000;
const FLOOD_BAD_COMMANDS: usize = 5_000;
const MIB: f64 = 1024.0 * 1024.0;

/// The whole bench stays under about a minute.
const TOTAL_BUDGET: Duration = Duration::from_secs(58);
/// Part 2 must leave this much for part 3.
const RSS_PART_RESERVE: Duration = Duration::from_secs(20);

fn main() {
    let started = Instant::now();
    let deadline = started + TOTAL_BUDGET;
    let mut report = Report::default();
    println!("energy2mqtt mqtt_bench");
    println!(
        "machine: {} CPUs, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        process::cpu_model()
    );

    println!("\n== 1. state -> MQTT payload serialisation ==");
    bench_serialisation(&mut report);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            println!("cannot start a tokio runtime: {e}");
            report.print();
            return;
        }
    };

    println!("\n== 2. end-to-end publish rate through the embedded broker ==");
    let e2e_deadline = deadline - RSS_PART_RESERVE;
    if let Err(e) = runtime.block_on(bench_end_to_end(&mut report, e2e_deadline)) {
        println!("end-to-end bench failed: {e:#}");
        report.add(
            "end-to-end publish rate",
            format!("not measured: {e:#}"),
            "",
        );
    }

    println!("\n== 3. bridge resident memory ==");
    if let Err(e) = runtime.block_on(bench_rss(&mut report, deadline)) {
        println!("RSS bench failed: {e:#}");
        report.add("bridge RSS", format!("not measured: {e:#}"), "");
    }

    match read_mem(None) {
        Some(m) => report.add(
            "this bench process (in-process broker + clients), after all runs",
            format!("VmRSS {:.1} MiB, VmHWM {:.1} MiB", m.rss_mib(), m.hwm_mib()),
            "",
        ),
        None => report.add("this bench process RSS", "not readable (/proc)", ""),
    }
    // Do not wait for rumqttc or broker tasks that may still be running.
    runtime.shutdown_timeout(Duration::from_secs(1));
    report.print();
    println!("total bench time: {:.1} s", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------- report

#[derive(Default)]
struct Report {
    rows: Vec<(String, String, String)>,
}

impl Report {
    fn add(&mut self, what: impl Into<String>, measured: impl Into<String>, target: &str) {
        let (what, measured) = (what.into(), measured.into());
        println!("  {what}: {measured}");
        self.rows.push((what, measured, target.to_owned()));
    }

    fn print(&self) {
        let w0 = self
            .rows
            .iter()
            .map(|r| r.0.len())
            .max()
            .unwrap_or(0)
            .max(11);
        let w1 = self
            .rows
            .iter()
            .map(|r| r.1.len())
            .max()
            .unwrap_or(0)
            .max(8);
        println!("\n{:<w0$} | {:<w1$} | target", "measurement", "measured");
        println!(
            "{}-+-{}-+-{}",
            "-".repeat(w0),
            "-".repeat(w1),
            "-".repeat(24)
        );
        for (what, measured, target) in &self.rows {
            println!("{what:<w0$} | {measured:<w1$} | {target}");
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

// ------------------------------------------------------- 1. serialisation

/// Deterministic "noise" so that values have realistic, varied decimals.
fn jitter(seed: usize, k: usize, span: f64) -> f64 {
    let x = (seed.wrapping_mul(2_654_435_761) ^ k.wrapping_mul(40_503)) % 10_007;
    x as f64 / 10_007.0 * span
}

fn round(x: f64, decimals: i32) -> Value {
    let f = 10f64.powi(decimals);
    Value::from((x * f).round() / f)
}

/// A JK-BMS: 16 cell voltages and ten pack readings (26).
fn bms_readings(i: usize) -> Map<String, Value> {
    let mut m = Map::new();
    for c in 1..=16 {
        m.insert(
            format!("cell_voltage_{c:02}"),
            round(3.28 + jitter(i, c, 0.05), 3),
        );
    }
    m.insert(
        "battery_voltage".into(),
        round(52.4 + jitter(i, 17, 1.2), 2),
    );
    m.insert(
        "battery_current".into(),
        round(-25.0 + jitter(i, 18, 50.0), 2),
    );
    m.insert(
        "battery_power".into(),
        round(-1300.0 + jitter(i, 19, 2600.0), 1),
    );
    m.insert("battery_soc".into(), Value::from(20 + (i * 7) % 80));
    m.insert(
        "remaining_capacity".into(),
        round(150.0 + jitter(i, 20, 130.0), 2),
    );
    m.insert("cycle_count".into(), Value::from(100 + i * 3));
    m.insert("temperature_1".into(), round(18.0 + jitter(i, 21, 10.0), 1));
    m.insert("temperature_2".into(), round(18.0 + jitter(i, 22, 10.0), 1));
    m.insert(
        "mos_temperature".into(),
        round(25.0 + jitter(i, 23, 15.0), 1),
    );
    m.insert("cell_delta".into(), round(0.002 + jitter(i, 24, 0.03), 3));
    m
}

/// A Deye hybrid inverter (25 readings).
fn inverter_readings(i: usize) -> Map<String, Value> {
    let mut m = Map::new();
    let f = |k: usize, base: f64, span: f64, d: i32| round(base + jitter(i, k, span), d);
    m.insert("pv1_power".into(), f(1, 0.0, 4000.0, 0));
    m.insert("pv1_voltage".into(), f(2, 280.0, 120.0, 1));
    m.insert("pv1_current".into(), f(3, 0.0, 12.0, 1));
    m.insert("pv2_power".into(), f(4, 0.0, 3000.0, 0));
    m.insert("pv2_voltage".into(), f(5, 250.0, 120.0, 1));
    m.insert("pv2_current".into(), f(6, 0.0, 10.0, 1));
    m.insert("pv_energy_today".into(), f(7, 0.0, 30.0, 1));
    m.insert("pv_energy_total".into(), f(8, 1000.0, 9000.0, 1));
    m.insert("grid_power".into(), f(9, -3000.0, 6000.0, 0));
    m.insert("grid_voltage".into(), f(10, 225.0, 12.0, 1));
    m.insert("grid_frequency".into(), f(11, 49.9, 0.2, 2));
    m.insert("grid_import_today".into(), f(12, 0.0, 15.0, 1));
    m.insert("grid_export_today".into(), f(13, 0.0, 15.0, 1));
    m.insert("load_power".into(), f(14, 200.0, 5000.0, 0));
    m.insert("load_energy_today".into(), f(15, 0.0, 25.0, 1));
    m.insert("inverter_power".into(), f(16, 0.0, 6000.0, 0));
    m.insert("battery_power".into(), f(17, -3000.0, 6000.0, 0));
    m.insert("battery_voltage".into(), f(18, 48.0, 8.0, 2));
    m.insert("battery_current".into(), f(19, -60.0, 120.0, 2));
    m.insert("battery_soc".into(), Value::from(10 + (i * 13) % 90));
    m.insert("battery_temperature".into(), f(20, 15.0, 15.0, 1));
    m.insert("inverter_temperature".into(), f(21, 30.0, 25.0, 1));
    m.insert("dc_temperature".into(), f(22, 30.0, 30.0, 1));
    m.insert("rated_power".into(), Value::from(6000));
    m.insert("load_limit".into(), Value::from(5400));
    m
}

fn devices() -> Vec<(String, Map<String, Value>)> {
    (0..DEVICES)
        .map(|i| {
            if i % 2 == 0 {
                (format!("battery{i}"), bms_readings(i))
            } else {
                (format!("inverter{i}"), inverter_readings(i))
            }
        })
        .collect()
}

/// Median over several runs of `f` applied to every device, in ns per device.
fn time_per_device(
    devs: &[(String, Map<String, Value>)],
    f: impl Fn(&Map<String, Value>) -> usize,
) -> f64 {
    // Calibrate so that one run takes about 150 ms.
    let t = Instant::now();
    let mut calib = 0;
    while t.elapsed() < Duration::from_millis(30) {
        for (_, m) in devs {
            black_box(f(black_box(m)));
        }
        calib += 1;
    }
    let iters = (calib * 5).max(1);
    let runs: Vec<f64> = (0..9)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                for (_, m) in devs {
                    black_box(f(black_box(m)));
                }
            }
            t.elapsed().as_nanos() as f64 / (iters * devs.len()) as f64
        })
        .collect();
    median(runs)
}

fn bench_serialisation(report: &mut Report) {
    let devs = devices();
    let seen =
        OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let readings: usize = devs.iter().map(|(_, m)| m.len()).sum();
    let bytes: usize = devs
        .iter()
        .map(|(_, m)| payloads::device_state(m, seen).len())
        .sum();
    println!(
        "  {} devices, {:.1} readings and {} bytes per payload on average",
        devs.len(),
        readings as f64 / devs.len() as f64,
        bytes / devs.len()
    );
    let ns = time_per_device(&devs, |m| payloads::device_state(m, seen).len());
    report.add(
        "payloads::device_state, per device payload (median of 9 runs)",
        format!(
            "{ns:.0} ns ({:.0} payloads/s, {:.1} µs for all 100 devices)",
            1e9 / ns,
            ns * DEVICES as f64 / 1000.0
        ),
        "serialise 100 devices (no figure set)",
    );
    // For comparison: the same JSON object without cloning the map
    // (`last_seen` lands at the end instead of in key order).
    #[derive(serde::Serialize)]
    struct StateRef<'a> {
        #[serde(flatten)]
        readings: &'a Map<String, Value>,
        last_seen: String,
    }
    let ns_ref = time_per_device(&devs, |m| {
        let state = StateRef {
            readings: m,
            last_seen: payloads::timestamp(seen),
        };
        serde_json::to_string(&state).map_or(0, |s| s.len())
    });
    report.add(
        "  for comparison: same object serialised by reference (no map clone)",
        format!("{ns_ref:.0} ns ({:.0} payloads/s)", 1e9 / ns_ref),
        "",
    );
    // The bridge's path since the typed readings: the entries written
    // sorted by `model::StateJson`, no map built or cloned; the bytes are
    // `device_state`'s (checked here for every device).
    let written = |m: &Map<String, Value>| {
        let mut w = StateJson::with_capacity(m.len() + 1);
        w.fields(m)
            .and_then(|()| w.entry("last_seen", &payloads::timestamp(seen)))
            .and_then(|()| w.finish())
    };
    let identical = devs
        .iter()
        .all(|(_, m)| written(m).ok() == Some(payloads::device_state(m, seen)));
    let ns_written = time_per_device(&devs, |m| written(m).map_or(0, |s| s.len()));
    report.add(
        "  model::StateJson over the same map (the bridge's writer: no clone, keys sorted)",
        format!(
            "{ns_written:.0} ns ({:.0} payloads/s); same bytes as device_state: {}",
            1e9 / ns_written,
            if identical { "yes" } else { "NO" }
        ),
        "",
    );
    let ns_plain = time_per_device(&devs, |m| serde_json::to_string(m).map_or(0, |s| s.len()));
    report.add(
        "  for comparison: serde_json::to_string(&map) alone (no clone, no last_seen)",
        format!("{ns_plain:.0} ns ({:.0} payloads/s)", 1e9 / ns_plain),
        "",
    );
}

// ------------------------------------------------------- 2. end to end

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn client_options(id: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(4 * 1024 * 1024, 1024 * 1024);
    o
}

/// A rumqttc client that only subscribes and hands every publish to `on_publish`.
struct Subscriber {
    client: AsyncClient,
    task: JoinHandle<()>,
}

impl Subscriber {
    async fn start(
        id: &str,
        port: u16,
        filters: &[&str],
        on_publish: impl FnMut(&Publish) + Send + 'static,
    ) -> Result<Self> {
        let (client, mut eventloop) = AsyncClient::new(client_options(id, port), 1024);
        let (acked_tx, acked) = tokio::sync::oneshot::channel();
        let mut on_publish = on_publish;
        let task = tokio::spawn(async move {
            let mut acked_tx = Some(acked_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = acked_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => on_publish(&p),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let sub = Self { client, task };
        let filters = filters
            .iter()
            .map(|f| SubscribeFilter::new((*f).to_owned(), QoS::AtMostOnce));
        sub.client.subscribe_many(filters).await?;
        match tokio::time::timeout(Duration::from_secs(5), acked).await {
            Ok(Ok(())) => Ok(sub),
            _ => {
                sub.stop().await;
                Err(anyhow!("subscriber {id}: no SUBACK within 5 s"))
            }
        }
    }

    async fn stop(self) {
        let _ = tokio::time::timeout(Duration::from_millis(500), self.client.disconnect()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.task.abort();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `Message::transient`: QoS 0, not retained, bounded FIFO in the outbox.
    Transient,
    /// `Message::retained(Class::State, ..)`: QoS 1, retained, latest per topic.
    State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// Push all N as fast as possible: the outbox drops or coalesces.
    Flood,
    /// Push only what the outbox can hold without dropping or coalescing,
    /// so every message must arrive: the pipeline's sustained rate.
    Lossless,
}

struct E2e {
    sent: usize,
    delivered: u64,
    outbox_dropped: u64,
    push_secs: f64,
    /// From the first push to the last message the subscriber received.
    secs: f64,
    timed_out: bool,
}

impl E2e {
    fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.delivered as f64 / self.secs
        } else {
            0.0
        }
    }
}

async fn bench_end_to_end(report: &mut Report, deadline: Instant) -> Result<()> {
    let port = free_port()?;
    let cfg = BrokerConfig {
        enabled: true,
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        ..BrokerConfig::default()
    };
    tokio::time::timeout(Duration::from_secs(10), broker::start(&cfg))
        .await
        .map_err(|_| anyhow!("the embedded broker did not start within 10 s"))??;
    println!("  embedded broker on 127.0.0.1:{port}");
    if let Some(m) = read_mem(None) {
        report.add(
            "bench process (in-process broker started, nothing sent yet)",
            format!("VmRSS {:.1} MiB", m.rss_mib()),
            "",
        );
    }

    // Realistic payloads: the state of each of the 100 devices.
    let seen = OffsetDateTime::now_utc();
    let bodies: Vec<Bytes> = devices()
        .iter()
        .map(|(_, m)| Bytes::from(payloads::device_state(m, seen)))
        .collect();

    let runs = [
        (Kind::Transient, Pace::Lossless),
        (Kind::State, Pace::Lossless),
        (Kind::Transient, Pace::Flood),
        (Kind::State, Pace::Flood),
    ];
    for (n, (kind, pace)) in runs.into_iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left < Duration::from_secs(2) {
            report.add(
                format!("end to end, {kind:?} {pace:?}"),
                "not run: time budget used up",
                "",
            );
            continue;
        }
        let label = format!("{n}-{kind:?}-{pace:?}").to_lowercase();
        let what = match (kind, pace) {
            (Kind::Transient, Pace::Lossless) => {
                "end to end, transient QoS0, paced to outbox capacity (no loss allowed)"
            }
            (Kind::State, Pace::Lossless) => {
                "end to end, retained state QoS1, one round of 100 topics at a time"
            }
            (Kind::Transient, Pace::Flood) => "end to end, transient QoS0, 100k pushed at once",
            (Kind::State, Pace::Flood) => "end to end, retained state QoS1, 100k pushed at once",
        };
        let target = match (kind, pace) {
            (Kind::State, Pace::Lossless) => ">= 20 000 state msgs/s (2 cores)",
            (Kind::State, Pace::Flood) => "coalescing drops superseded states by design",
            (Kind::Transient, Pace::Flood) => "outbox keeps the last 1024 by design",
            _ => "",
        };
        let run_deadline = Instant::now() + left.min(Duration::from_secs(12));
        match e2e_run(port, &label, kind, pace, &bodies, run_deadline).await {
            Ok(r) => {
                let rss = read_mem(None).map_or("?".into(), |m| format!("{:.0}", m.rss_mib()));
                let partial = if r.timed_out {
                    " (TIMED OUT: partial)"
                } else {
                    ""
                };
                let measured = match pace {
                    Pace::Lossless => format!(
                        "{:.0} msgs/s; {}/{} received in {:.2} s, outbox dropped {}{partial}; bench RSS after: {rss} MiB",
                        r.rate(),
                        r.delivered,
                        r.sent,
                        r.secs,
                        r.outbox_dropped,
                    ),
                    Pace::Flood => format!(
                        "{}/{} received ({} dropped by the outbox, {} superseded in it), pushes took {:.3} s, last arrival after {:.2} s{partial}; bench RSS after: {rss} MiB",
                        r.delivered,
                        r.sent,
                        r.outbox_dropped,
                        (r.sent as u64).saturating_sub(r.delivered + r.outbox_dropped),
                        r.push_secs,
                        r.secs,
                    ),
                };
                report.add(what, measured, target)
            }
            Err(e) => report.add(what, format!("not measured: {e:#}"), target),
        }
    }
    Ok(())
}

async fn e2e_run(
    port: u16,
    label: &str,
    kind: Kind,
    pace: Pace,
    bodies: &[Bytes],
    deadline: Instant,
) -> Result<E2e> {
    let base = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let last_rx_ns = Arc::new(AtomicU64::new(0));
    let prefix = format!("bench/{label}/");
    let sub = {
        let (received, last_rx_ns, prefix) = (received.clone(), last_rx_ns.clone(), prefix.clone());
        Subscriber::start(
            &format!("bench-sub-{label}"),
            port,
            &[&format!("{prefix}#")],
            move |p| {
                if p.topic.starts_with(&prefix) {
                    received.fetch_add(1, Ordering::Relaxed);
                    last_rx_ns.store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }
            },
        )
        .await?
    };

    let mut conn = Connection::start(
        client_options(&format!("bench-pub-{label}"), port),
        Duration::from_secs(2),
    );
    // A statement of its own: the `Ref` that `wait_for` returns borrows `conn`.
    let connected = matches!(
        tokio::time::timeout(
            Duration::from_secs(5),
            conn.status.wait_for(|s| s.connected)
        )
        .await,
        Ok(Ok(_))
    );
    if !connected {
        conn.shutdown(None, Duration::from_millis(500)).await;
        sub.stop().await;
        return Err(anyhow!("our Connection did not connect within 5 s"));
    }

    let topics: Vec<String> = (0..bodies.len())
        .map(|i| format!("{prefix}device{i:03}"))
        .collect();
    let message = |i: usize| {
        let (topic, body) = (
            topics[i % topics.len()].clone(),
            bodies[i % bodies.len()].clone(),
        );
        match kind {
            Kind::Transient => Message::transient(topic, body),
            Kind::State => Message::retained(Class::State, topic, body),
        }
    };
    let outbox = conn.outbox.clone();
    let t0 = base.elapsed();
    let mut sent = 0;
    let mut timed_out = false;
    match pace {
        Pace::Flood => {
            while sent < E2E_MESSAGES {
                outbox.push(message(sent));
                sent += 1;
                if sent % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }
        Pace::Lossless => {
            let mut spins = 0u32;
            while sent < E2E_MESSAGES {
                if Instant::now() > deadline {
                    timed_out = true;
                    break;
                }
                let room = match kind {
                    Kind::Transient => TRANSIENT_CAPACITY.saturating_sub(outbox.with(|q| q.len())),
                    Kind::State if outbox.with(|q| q.is_empty()) => topics.len(),
                    Kind::State => 0,
                };
                if room == 0 {
                    spins += 1;
                    if spins < 64 {
                        tokio::task::yield_now().await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    continue;
                }
                spins = 0;
                for _ in 0..room.min(E2E_MESSAGES - sent) {
                    outbox.push(message(sent));
                    sent += 1;
                }
            }
        }
    }
    let push_secs = (base.elapsed() - t0).as_secs_f64();

    // Wait for everything, or for 1 s without news once the outbox is empty.
    let mut last_count = 0;
    let mut last_change = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let count = received.load(Ordering::Relaxed);
        if count >= sent as u64 {
            break;
        }
        if count != last_count {
            last_count = count;
            last_change = Instant::now();
        } else if last_change.elapsed() > Duration::from_secs(1) && outbox.with(|q| q.is_empty()) {
            break;
        }
        if Instant::now() > deadline {
            timed_out = true;
            break;
        }
    }
    let delivered = received.load(Ordering::Relaxed);
    let last_rx = Duration::from_nanos(last_rx_ns.load(Ordering::Relaxed));
    let outbox_dropped = outbox.with(|q| q.dropped());
    conn.shutdown(None, Duration::from_millis(500)).await;
    sub.stop().await;
    Ok(E2e {
        sent,
        delivered,
        outbox_dropped,
        push_secs,
        secs: last_rx.saturating_sub(t0).as_secs_f64(),
        timed_out,
    })
}

// ------------------------------------------------------- 3. bridge RSS

async fn bench_rss(report: &mut Report, deadline: Instant) -> Result<()> {
    let bin = find_binary().ok_or_else(|| {
        anyhow!("no energy2mqtt binary found (run `cargo build --release` first)")
    })?;
    println!("  binary: {}", bin.display());
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let port = free_port()?;
    // Declared after `dir`, so both are killed before the directory goes.
    let mut broker_proc = Proc::spawn(
        &bin,
        &["broker"],
        &[("E2M_BROKER__LISTEN", format!("127.0.0.1:{port}"))],
        dir.path(),
        "broker",
    )?;
    if !wait_for_port(port, Duration::from_secs(5)) {
        broker_proc.check_alive().context("energy2mqtt broker")?;
        return Err(anyhow!(
            "energy2mqtt broker did not listen on {port} within 5 s"
        ));
    }

    // The observer subscribes first, so it sees the bridge come online.
    let online = Arc::new(AtomicBool::new(false));
    let responses = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let last_rx = Arc::new(std::sync::Mutex::new(Instant::now()));
    let observer = {
        let (online, responses, errors, last_rx) = (
            online.clone(),
            responses.clone(),
            errors.clone(),
            last_rx.clone(),
        );
        Subscriber::start(
            "bench-observer",
            port,
            &[
                "energy2mqtt/bridge/state",
                "energy2mqtt/bridge/response/#",
                "energy2mqtt/bridge/event",
            ],
            move |p| {
                match p.topic.as_str() {
                    "energy2mqtt/bridge/state" => online.store(
                        p.payload.as_ref() == payloads::ONLINE.as_bytes(),
                        Ordering::Relaxed,
                    ),
                    "energy2mqtt/bridge/response/health_check" => {
                        responses.fetch_add(1, Ordering::Relaxed);
                    }
                    "energy2mqtt/bridge/event" => {
                        if p.payload.windows(13).any(|w| w == b"command_error") {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => return,
                }
                if let Ok(mut t) = last_rx.lock() {
                    *t = Instant::now();
                }
            },
        )
        .await?
    };
    let result = rss_with_bridge(
        report,
        &bin,
        dir.path(),
        port,
        &mut broker_proc,
        deadline,
        Counters {
            online,
            responses,
            errors,
            last_rx,
        },
    )
    .await;
    observer.stop().await;
    drop(broker_proc);
    result
}

struct Counters {
    online: Arc<AtomicBool>,
    responses: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    last_rx: Arc<std::sync::Mutex<Instant>>,
}

async fn rss_with_bridge(
    report: &mut Report,
    bin: &Path,
    dir: &Path,
    port: u16,
    broker_proc: &mut Proc,
    deadline: Instant,
    c: Counters,
) -> Result<()> {
    // `run` refuses to start without a configuration file or a device
    // (an empty bridge would clean up another's discovery): an empty file
    // is a bridge with no devices, which is what this part measures.
    let config = dir.join("config");
    std::fs::create_dir_all(&config).context("config dir")?;
    std::fs::write(config.join("energy2mqtt.toml"), "# no devices\n").context("config file")?;
    let spawned = Instant::now();
    let mut run = Proc::spawn(
        bin,
        &["run"],
        &[("E2M_MQTT__URL", format!("mqtt://127.0.0.1:{port}"))],
        dir,
        "run",
    )?;
    let pid = run.pid();
    // Wait 3 s, noting when the bridge said it is online.
    let mut online_after = None;
    while spawned.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if online_after.is_none() && c.online.load(Ordering::Relaxed) {
            online_after = Some(spawned.elapsed());
        }
    }
    run.check_alive().context("energy2mqtt run")?;
    match online_after {
        Some(t) => report.add(
            "bridge start to retained bridge/state online (no devices)",
            format!("{:.0} ms", t.as_secs_f64() * 1000.0),
            "start to first complete publish <= 1 s",
        ),
        None => report.add(
            "bridge start to bridge/state online",
            "not seen within 3 s",
            "",
        ),
    }
    let idle = read_mem(Some(pid)).ok_or_else(|| anyhow!("cannot read /proc/{pid}/status"))?;
    report.add(
        "`energy2mqtt run` idle 3 s after start (no devices, external broker)",
        format!(
            "VmRSS {:.2} MiB, VmHWM {:.2} MiB",
            idle.rss_mib(),
            idle.hwm_mib()
        ),
        "<= 8 MiB idle (issue); <= 12 MiB with 2 BMS + 1 inverter + 4 plugs (DESIGN)",
    );
    if let Some(b) = read_mem(Some(broker_proc.pid())) {
        report.add(
            "`energy2mqtt broker` idle (separate process)",
            format!("VmRSS {:.2} MiB, VmHWM {:.2} MiB", b.rss_mib(), b.hwm_mib()),
            "",
        );
    }

    // Load: flood the command topics and watch the memory.
    let left = deadline.saturating_duration_since(Instant::now());
    if left < Duration::from_secs(4) {
        report.add("bridge under load", "not run: time budget used up", "");
        return Ok(());
    }
    let (client, mut eventloop) = AsyncClient::new(client_options("bench-flooder", port), 1000);
    let flood_loop = tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut peak = 0u64;
            while sampling.load(Ordering::Relaxed) {
                if let Some(m) = read_mem(Some(pid)) {
                    peak = peak.max(m.rss_kib);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        })
    };
    let flood_started = Instant::now();
    let flood_budget = left
        .saturating_sub(Duration::from_secs(3))
        .min(Duration::from_secs(15));
    let flood = tokio::time::timeout(flood_budget, async {
        let request = "energy2mqtt/bridge/request/health_check";
        for i in 0..FLOOD_REQUESTS {
            let body = format!(r#"{{"transaction":{i}}}"#);
            client
                .publish(request, QoS::AtMostOnce, false, body)
                .await?;
            if i % (FLOOD_REQUESTS / FLOOD_BAD_COMMANDS) == 0 {
                client
                    .publish(
                        "energy2mqtt/ghost/set",
                        QoS::AtMostOnce,
                        false,
                        r#"{"state":"ON"}"#,
                    )
                    .await?;
            }
        }
        anyhow::Ok(())
    })
    .await;
    let flood_secs = flood_started.elapsed().as_secs_f64();
    // Let the answers drain: until 1 s of silence, bounded.
    let drain_until = Instant::now()
        + Duration::from_secs(5).min(deadline.saturating_duration_since(Instant::now()));
    while Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let quiet = c.last_rx.lock().map(|t| t.elapsed()).unwrap_or_default();
        if quiet > Duration::from_secs(1) {
            break;
        }
    }
    let answers_secs = c
        .last_rx
        .lock()
        .map(|t| t.saturating_duration_since(flood_started))
        .unwrap_or_default()
        .as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    let peak_kib = sampler.await.unwrap_or(0);
    let _ = tokio::time::timeout(Duration::from_millis(500), client.disconnect()).await;
    flood_loop.abort();
    let alive = run.check_alive();
    let after = read_mem(Some(pid));

    let flood_note = match flood {
        Ok(Ok(())) => format!("sent in {flood_secs:.2} s"),
        Ok(Err(e)) => format!("flood failed after {flood_secs:.2} s: {e}"),
        Err(_) => format!("flood cut at the {flood_secs:.1} s budget"),
    };
    report.add(
        "flood: health_check requests answered on bridge/response",
        format!(
            "{}/{} ({flood_note}; last answer {answers_secs:.2} s after the first request)",
            c.responses.load(Ordering::Relaxed),
            FLOOD_REQUESTS
        ),
        "",
    );
    report.add(
        "flood: ghost/set bad commands answered with command_error",
        format!(
            "{}/{}",
            c.errors.load(Ordering::Relaxed),
            FLOOD_BAD_COMMANDS
        ),
        "",
    );
    match (alive, after) {
        (Ok(()), Some(m)) => report.add(
            "`energy2mqtt run` under the flood",
            format!(
                "VmRSS peak sampled {:.2} MiB, VmRSS after {:.2} MiB, VmHWM {:.2} MiB",
                peak_kib as f64 * 1024.0 / MIB,
                m.rss_mib(),
                m.hwm_mib()
            ),
            "",
        ),
        (Err(e), _) => report.add(
            "`energy2mqtt run` under the flood",
            format!("DIED: {e:#}"),
            "",
        ),
        (Ok(()), None) => report.add("`energy2mqtt run` under the flood", "RSS not readable", ""),
    }
    if let Some(b) = read_mem(Some(broker_proc.pid())) {
        report.add(
            "`energy2mqtt broker` after the flood",
            format!("VmRSS {:.2} MiB, VmHWM {:.2} MiB", b.rss_mib(), b.hwm_mib()),
            "",
        );
    }
    drop(run);
    Ok(())
}
