//! The bridge's footprint with the DESIGN's reference household, as a plain
//! binary (`harness = false`): the real `energy2mqtt run` process with
//! 2 JK-BMS packs (through the fake BlueZ on a private dbus-daemon, each
//! streaming a cell-info frame twice a second), 1 Deye inverter (the
//! Solarman V5 simulator, polled every 5 s) and 4 Tapo plugs (3 P110 and a
//! P100, the default 5 s poll), against the embedded broker. The simulators
//! and the broker run in this process, the bridge in its own, so what is
//! measured is the bridge alone:
//!
//! 1. start to first complete publish: from spawning the process to the
//!    last of the seven devices' first state message;
//! 2. CPU: user + system time of the process over a steady window, as a
//!    share of one core;
//! 3. memory: VmRSS sampled every 100 ms over that window, and VmHWM.
//!
//! `cargo bench --bench footprint_bench`. Loopback only; about 2 minutes.
//! Needs `dbus-daemon` (the JK-BMS packs speak BLE through it). Figures go
//! to docs/PERFORMANCE.md.

#[path = "support/process.rs"]
mod process;

#[allow(dead_code)]
#[path = "../tests/support/fake_bluez.rs"]
mod fake_bluez;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use energy2mqtt::config::{Sources, load_from};
use energy2mqtt::sim::deye_model::{InverterModel, ModelConfig, SimTime};
use energy2mqtt::sim::jkbms::{SimPack, cell_frames, device_info_frame, settings_frame};
use energy2mqtt::sim::solarman::SolarmanSim;
use energy2mqtt::sim::tapo::{Flavour, Load, TapoSim};
use fake_bluez::{FakeBluez, Generation, PrivateBus};
use process::{Proc, find_binary, read_mem};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const USER: &str = "bench@example.com";
const PASS: &str = "bench-password";
const SERIAL: u32 = 2_712_345_678;
const PACKS: [&str; 2] = ["C8:47:8C:00:20:01", "C8:47:8C:00:20:02"];
const PLUGS: [(&str, Flavour, f64); 4] = [
    ("boiler", Flavour::P110, 2000.0),
    ("heater", Flavour::P110, 1500.0),
    ("fridge", Flavour::P110, 120.0),
    ("lamp", Flavour::P100, 60.0),
];
/// After every device has published: let start-up work settle.
const WARM_UP: Duration = Duration::from_secs(15);
const WINDOW: Duration = Duration::from_secs(90);

fn window() -> Duration {
    std::env::var("FOOTPRINT_WINDOW_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(WINDOW, Duration::from_secs)
}
/// Distinct cell-info frames each pack cycles through.
const FRAMES_PER_PACK: usize = 120;

fn main() {
    if let Err(e) = run() {
        eprintln!("footprint bench failed: {e:#}");
        std::process::exit(1);
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn run() -> Result<()> {
    if !PrivateBus::available() {
        bail!("dbus-daemon is not installed (apt-get install dbus-daemon)");
    }
    let bin = find_binary()
        .ok_or_else(|| anyhow!("no energy2mqtt binary (run `cargo build --release` first)"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    let fake = FakeBluez::start();
    for (i, mac) in PACKS.iter().enumerate() {
        let pack = SimPack {
            seed: i as u64 + 1,
            ..SimPack::default()
        };
        fake.add_pack(
            mac,
            "JK_B2A16S20P",
            Generation::OneCharacteristic,
            true,
            false,
        );
        fake.set_responses(mac, 0x97, vec![device_info_frame(&pack)]);
        let mut frames: Vec<Vec<u8>> = settings_frame().into_iter().collect();
        frames.extend(cell_frames(
            &pack,
            FRAMES_PER_PACK,
            Duration::from_millis(500),
        ));
        fake.set_responses(mac, 0x96, frames);
        fake.set_stream_interval(mac, Duration::from_millis(500));
    }

    let broker_port = free_port()?;
    let broker = load_from(&Sources {
        base_toml: Some(format!(
            "[broker]\nenabled = true\nlisten = \"127.0.0.1:{broker_port}\"\n"
        )),
        ..Sources::default()
    })
    .map_err(|e| anyhow!("broker config: {e}"))?;
    rt.block_on(energy2mqtt::broker::start(&broker.broker))
        .context("embedded broker")?;

    let (inverter, plugs) = rt.block_on(async {
        let model = InverterModel::new(
            ModelConfig::default(),
            SimTime::from_system_time(SystemTime::now()),
        );
        let inverter =
            SolarmanSim::start(SocketAddr::from(([127, 0, 0, 1], 0)), SERIAL, model).await?;
        let mut plugs = Vec::new();
        for (_, flavour, watts) in PLUGS {
            plugs.push(
                TapoSim::start(
                    SocketAddr::from(([127, 0, 0, 1], 0)),
                    flavour,
                    Load::Constant { watts },
                    USER,
                    PASS,
                )
                .await?,
            );
        }
        anyhow::Ok((inverter, plugs))
    })?;

    let dir = tempfile::tempdir()?;
    let mut toml = format!(
        r#"
[mqtt]
url = "mqtt://127.0.0.1:{broker_port}"
client_id = "footprint-bench"
[storage]
dir = "{data}"
[tapo]
email = "{USER}"
password = "{PASS}"
[[inverter]]
id = "inverter"
host = "127.0.0.1"
port = {inv}
serial = {SERIAL}
poll_interval = "5s"
"#,
        data = dir.path().join("data").display(),
        inv = inverter.addr.port(),
    );
    for ((id, _, watts), sim) in PLUGS.iter().zip(&plugs) {
        toml.push_str(&format!(
            "[[plug]]\nid = \"{id}\"\nhost = \"127.0.0.1\"\nport = {}\ninverter = \"inverter\"\nnominal_w = {watts}\n",
            sim.addr.port()
        ));
    }
    for (i, mac) in PACKS.iter().enumerate() {
        toml.push_str(&format!(
            "[[bms]]\nid = \"battery{}\"\nmac = \"{mac}\"\n",
            i + 1
        ));
    }
    let config_path = dir.path().join("energy2mqtt.toml");
    std::fs::write(&config_path, toml)?;

    let devices: BTreeSet<String> = ["inverter", "battery1", "battery2"]
        .into_iter()
        .chain(PLUGS.iter().map(|p| p.0))
        .map(String::from)
        .collect();
    rt.block_on(measure(&bin, &config_path, dir.path(), &fake, devices))
}

async fn measure(
    bin: &std::path::Path,
    config: &std::path::Path,
    dir: &std::path::Path,
    fake: &FakeBluez,
    devices: BTreeSet<String>,
) -> Result<()> {
    let broker_port = std::fs::read_to_string(config)?
        .lines()
        .find_map(|l| l.strip_prefix("url = \"mqtt://127.0.0.1:"))
        .and_then(|p| p.trim_end_matches('"').parse::<u16>().ok())
        .ok_or_else(|| anyhow!("broker port"))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut opts = MqttOptions::new("footprint-watch", "127.0.0.1", broker_port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    for id in &devices {
        client
            .subscribe(format!("energy2mqtt/{id}"), QoS::AtMostOnce)
            .await?;
    }
    let watch = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send((Instant::now(), p.topic));
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = tx.send((Instant::now(), String::new()));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    for _ in 0..devices.len() {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .context("watcher subscribed")?;
    }

    let mut env = vec![
        ("DBUS_SYSTEM_BUS_ADDRESS", fake.address().to_string()),
        ("E2M_LOG__LEVEL", "info".to_string()),
    ];
    // The allocator's knob, to compare with and without it.
    if let Ok(v) = std::env::var("MALLOC_ARENA_MAX") {
        env.push(("MALLOC_ARENA_MAX", v));
    }
    let spawned = Instant::now();
    let config_arg = config.display().to_string();
    let mut bridge = Proc::spawn(bin, &["run", "--config", &config_arg], &env, dir, "bridge")?;
    let mut waiting = devices.clone();
    let mut first = Vec::new();
    let deadline = spawned + Duration::from_secs(30);
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some((at, topic))) = tokio::time::timeout(left, rx.recv()).await else {
            bridge.check_alive()?;
            bail!(
                "no state within 30 s from {waiting:?}: {}",
                bridge.log_tail()
            );
        };
        if let Some(id) = topic.strip_prefix("energy2mqtt/") {
            if waiting.remove(id) {
                first.push((id.to_string(), at.duration_since(spawned)));
            }
        }
    }
    watch.abort();
    println!("== 1. start to first complete publish (2 BMS, 1 inverter, 4 plugs) ==");
    for (id, t) in &first {
        println!(
            "  {id:<9} first state after {:>7.1} ms",
            t.as_secs_f64() * 1e3
        );
    }
    let complete = first.iter().map(|f| f.1).max().unwrap_or_default();
    println!(
        "  complete after {:.1} ms (target <= 1000 ms)",
        complete.as_secs_f64() * 1e3
    );

    tokio::time::sleep(WARM_UP).await;
    bridge.check_alive()?;
    let pid = bridge.pid();
    let ticks_per_s = clock_ticks_per_second();
    let cpu0 = cpu_ticks(pid).ok_or_else(|| anyhow!("cannot read /proc/{pid}/stat"))?;
    let notes0 = PACKS
        .iter()
        .map(|m| fake.notifications_delivered(m))
        .sum::<u64>();
    let t0 = Instant::now();
    let (mut peak, mut samples, mut sum) = (0u64, 0u64, 0u64);
    while t0.elapsed() < window() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(m) = read_mem(Some(pid)) {
            peak = peak.max(m.rss_kib);
            samples += 1;
            sum += m.rss_kib;
        }
    }
    let cpu1 = cpu_ticks(pid).ok_or_else(|| anyhow!("cannot read /proc/{pid}/stat"))?;
    let secs = t0.elapsed().as_secs_f64();
    let notes = PACKS
        .iter()
        .map(|m| fake.notifications_delivered(m))
        .sum::<u64>()
        - notes0;
    let end = read_mem(Some(pid)).ok_or_else(|| anyhow!("cannot read /proc/{pid}/status"))?;
    bridge.check_alive()?;
    let cpu_s = (cpu1 - cpu0) as f64 / ticks_per_s;
    println!(
        "\n== 2. CPU over {secs:.0} s after a {} s warm-up ==",
        WARM_UP.as_secs()
    );
    println!(
        "  {:.3} s of CPU = {:.3} % of one core (target <= 0.2 %); {notes} BLE notifications ({:.0}/s) reached the bridge",
        cpu_s,
        100.0 * cpu_s / secs,
        notes as f64 / secs
    );
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kinds: Vec<String> = status
        .lines()
        .filter(|l| l.starts_with("Rss"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    println!(
        "\n== 3. memory ({threads} threads; {}) ==",
        kinds.join(", ")
    );
    println!(
        "  VmRSS peak {:.2} MiB, mean {:.2} MiB over {samples} samples; at the end VmRSS {:.2} MiB, VmHWM {:.2} MiB (target <= 12 MiB)",
        peak as f64 / 1024.0,
        sum as f64 / samples.max(1) as f64 / 1024.0,
        end.rss_mib(),
        end.hwm_mib()
    );
    Ok(())
}

/// utime + stime of `pid`, in clock ticks (threads that ended included).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: count fields after its ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of proc(5); `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
