//! The bridge's footprint with the DESIGN's reference household, as a plain
//! binary (`harness = false`): the real `energy2mqtt run` process with
//! 2 JK-BMS packs (through the fake BlueZ on a private dbus-daemon, each
//! streaming a cell-info frame twice a second), 1 Deye inverter (the
//! Solarman V5 simulator, polled every 5 s) and 4 Tapo plugs (3 P110 and a
//! P100, the default 5 s poll), against a broker in this process. The
//! simulators and the broker run in this process, the bridge in its own, so
//! what is measured is the bridge alone:
//!
//! 1. start to first complete publish: from spawning the process to the
//!    last device's first state message;
//! 2. CPU: user + system time of the process over a steady window, as a
//!    share of one core, and its wake-ups (context switches of all its
//!    threads) per second;
//! 3. memory: VmRSS sampled every 100 ms over that window, VmHWM, and the
//!    RssAnon/RssFile split at the end;
//! 4. with `FOOTPRINT_ALLOCS=1`: calls to malloc/calloc/realloc/… per
//!    second over the window, counted by benches/support/alloc_count.c
//!    (built here with `cc`, preloaded into the bridge).
//!
//! `cargo bench --bench footprint_bench`. Loopback only; about 2 minutes.
//! Needs `dbus-daemon` when there are packs. Knobs:
//! - `FOOTPRINT_PLUGS`, `FOOTPRINT_INVERTERS`, `FOOTPRINT_PACKS`: the
//!   household (default 4, 1, 2; all 0 = the idle bridge);
//! - `FOOTPRINT_EMBEDDED=1`: the bridge runs its own embedded broker
//!   (`[broker] enabled`) instead of talking to this process's;
//! - `FOOTPRINT_WINDOW_S`: the window (default 90 s);
//! - `FOOTPRINT_GROWTH=1`: the household grown step by step (plugs 4 → 16
//!   → 64, inverters 1 → 4, packs 2 → 8) with the cost per added device;
//! - `E2M_BENCH_BIN`: the binary to measure (default: the one cargo built).
//!
//! Every run ends with a `RESULT footprint …` line. Figures go to
//! docs/PERFORMANCE.md.

#[path = "support/process.rs"]
mod process;

#[allow(dead_code)]
#[path = "../tests/support/fake_bluez.rs"]
mod fake_bluez;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use energy2mqtt::config::{Sources, load_from};
use energy2mqtt::sim::deye_model::{InverterModel, ModelConfig, SimTime};
use energy2mqtt::sim::jkbms::{SimPack, cell_frames, device_info_frame, settings_frame};
use energy2mqtt::sim::solarman::SolarmanSim;
use energy2mqtt::sim::tapo::{Flavour, Load, TapoSim};
use fake_bluez::{FakeBluez, Generation, PrivateBus};
use process::{Proc, clock_ticks_per_second, cpu_ticks, find_binary, read_mem, status_fields};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const USER: &str = "bench@example.com";
const PASS: &str = "bench-password";
const SERIAL: u32 = 2_712_345_678;
/// The reference household's plugs; more plugs repeat this pattern.
const PLUGS: [(&str, Flavour, f64); 4] = [
    ("boiler", Flavour::P110, 2000.0),
    ("heater", Flavour::P110, 1500.0),
    ("fridge", Flavour::P110, 120.0),
    ("lamp", Flavour::P100, 60.0),
];
/// After every device has published: let start-up work settle.
const WARM_UP: Duration = Duration::from_secs(15);
const WINDOW: Duration = Duration::from_secs(90);
/// Distinct cell-info frames each pack cycles through.
const FRAMES_PER_PACK: usize = 120;

fn window() -> Duration {
    std::env::var("FOOTPRINT_WINDOW_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(WINDOW, Duration::from_secs)
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

#[derive(Debug, Clone, Copy)]
struct Household {
    plugs: usize,
    inverters: usize,
    packs: usize,
    embedded: bool,
}

impl Household {
    const REFERENCE: Self = Self {
        plugs: 4,
        inverters: 1,
        packs: 2,
        embedded: false,
    };

    fn from_env() -> Self {
        Self {
            plugs: env_count("FOOTPRINT_PLUGS", 4),
            inverters: env_count("FOOTPRINT_INVERTERS", 1),
            packs: env_count("FOOTPRINT_PACKS", 2),
            embedded: env_flag("FOOTPRINT_EMBEDDED"),
        }
    }

    fn label(&self) -> String {
        format!(
            "{} packs, {} inverters, {} plugs, {} broker",
            self.packs,
            self.inverters,
            self.plugs,
            if self.embedded {
                "embedded"
            } else {
                "external"
            }
        )
    }

    fn plug_id(i: usize) -> String {
        match PLUGS.get(i) {
            Some(p) => p.0.to_string(),
            None => format!("plug{:02}", i + 1),
        }
    }

    fn inverter_id(k: usize) -> String {
        if k == 0 {
            "inverter".into()
        } else {
            format!("inverter{}", k + 1)
        }
    }

    fn pack_mac(i: usize) -> String {
        format!("C8:47:8C:00:20:{:02X}", i + 1)
    }
}

#[derive(Debug, Clone, Default)]
struct Figures {
    firsts: Vec<(String, Duration)>,
    complete: Option<Duration>,
    secs: f64,
    cpu_s: f64,
    wakeups: u64,
    notifications: u64,
    rss_peak_kib: u64,
    rss_mean_kib: f64,
    rss_end_kib: u64,
    hwm_kib: u64,
    anon_kib: u64,
    file_kib: u64,
    threads: usize,
    /// Allocation calls and bytes asked over the window.
    allocs: Option<(u64, u64)>,
}

impl Figures {
    fn cpu_pct(&self) -> f64 {
        100.0 * self.cpu_s / self.secs
    }
    fn per_s(&self, n: u64) -> f64 {
        n as f64 / self.secs
    }
}

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
    let bin = match std::env::var_os("E2M_BENCH_BIN") {
        Some(p) => PathBuf::from(p),
        None => find_binary()
            .ok_or_else(|| anyhow!("no energy2mqtt binary (run `cargo build --release` first)"))?,
    };
    println!("binary: {}", bin.display());
    let allocs = env_flag("FOOTPRINT_ALLOCS");
    if !env_flag("FOOTPRINT_GROWTH") {
        let h = Household::from_env();
        let f = measure_household(&bin, h, allocs)?;
        report(&h, &f);
        return Ok(());
    }
    let r = Household::REFERENCE;
    let steps = [
        r,
        Household { plugs: 16, ..r },
        Household { plugs: 64, ..r },
        Household { inverters: 4, ..r },
        Household { packs: 8, ..r },
    ];
    let mut done = Vec::new();
    for h in steps {
        let f = measure_household(&bin, h, allocs)?;
        report(&h, &f);
        done.push((h, f));
    }
    println!("\n== cost per added device (against the reference household) ==");
    let (_, base) = &done[0];
    for (h, f) in &done[1..] {
        let (kind, added) = if h.plugs != r.plugs {
            ("plug", h.plugs - r.plugs)
        } else if h.inverters != r.inverters {
            ("inverter", h.inverters - r.inverters)
        } else {
            ("pack", h.packs - r.packs)
        };
        let n = added as f64;
        let rss = (f.rss_end_kib as f64 - base.rss_end_kib as f64) / n;
        let anon = (f.anon_kib as f64 - base.anon_kib as f64) / n;
        let cpu = (f.cpu_pct() - base.cpu_pct()) / n;
        let wake = (f.per_s(f.wakeups) - base.per_s(base.wakeups)) / n;
        println!(
            "  +{added:>2} {kind:<8} ({}): {rss:>7.1} KiB RSS ({anon:>6.1} KiB anonymous), {cpu:.4} % CPU, {wake:.2} wake-ups/s per {kind}",
            h.label()
        );
        println!(
            "RESULT footprint_growth kind={kind} added={added} rss_kib_per_device={rss:.1} anon_kib_per_device={anon:.1} cpu_pct_per_device={cpu:.5} wakeups_per_s_per_device={wake:.3}"
        );
    }
    Ok(())
}

fn report(h: &Household, f: &Figures) {
    println!("\n##### {} #####", h.label());
    println!("== 1. start to first complete publish ==");
    for (id, t) in &f.firsts {
        println!(
            "  {id:<10} first state after {:>7.1} ms",
            t.as_secs_f64() * 1e3
        );
    }
    match f.complete {
        Some(c) => println!(
            "  complete after {:.1} ms (target <= 1500 ms)",
            c.as_secs_f64() * 1e3
        ),
        None if h.embedded => println!(
            "  not timed with the embedded broker (the watcher can only connect once the bridge has started it)"
        ),
        None => println!("  no device"),
    }
    println!(
        "== 2. CPU over {:.0} s after a {} s warm-up ==",
        f.secs,
        WARM_UP.as_secs()
    );
    println!(
        "  {:.3} s of CPU = {:.3} % of one core; {:.1} wake-ups/s (context switches, all threads); {} BLE notifications ({:.0}/s) reached the bridge",
        f.cpu_s,
        f.cpu_pct(),
        f.per_s(f.wakeups),
        f.notifications,
        f.per_s(f.notifications)
    );
    println!("== 3. memory ({} threads) ==", f.threads);
    println!(
        "  VmRSS peak {:.2} MiB, mean {:.2} MiB; at the end VmRSS {:.2} MiB (RssAnon {:.2}, RssFile {:.2}), VmHWM {:.2} MiB",
        f.rss_peak_kib as f64 / 1024.0,
        f.rss_mean_kib / 1024.0,
        f.rss_end_kib as f64 / 1024.0,
        f.anon_kib as f64 / 1024.0,
        f.file_kib as f64 / 1024.0,
        f.hwm_kib as f64 / 1024.0
    );
    let (allocs, bytes) = match f.allocs {
        Some((n, b)) => {
            println!(
                "== 4. allocations: {:.1} calls/s, {:.1} KiB/s asked ==",
                f.per_s(n),
                f.per_s(b) / 1024.0
            );
            (
                format!("{:.1}", f.per_s(n)),
                format!("{:.1}", f.per_s(b) / 1024.0),
            )
        }
        None => ("na".into(), "na".into()),
    };
    println!(
        "RESULT footprint packs={} inverters={} plugs={} embedded={} complete_ms={} cpu_pct={:.4} wakeups_per_s={:.2} rss_mib={:.2} rss_anon_mib={:.2} rss_file_mib={:.2} threads={} allocs_per_s={allocs} alloc_kib_per_s={bytes}",
        h.packs,
        h.inverters,
        h.plugs,
        u8::from(h.embedded),
        f.complete
            .map_or("na".into(), |c| format!("{:.1}", c.as_secs_f64() * 1e3)),
        f.cpu_pct(),
        f.per_s(f.wakeups),
        f.rss_end_kib as f64 / 1024.0,
        f.anon_kib as f64 / 1024.0,
        f.file_kib as f64 / 1024.0,
        f.threads,
    );
}

/// Starts the household's simulators, runs the bridge against them and
/// measures it; everything stops when this returns.
fn measure_household(bin: &Path, h: Household, allocs: bool) -> Result<Figures> {
    if h.packs > 0 && !PrivateBus::available() {
        bail!("dbus-daemon is not installed (apt-get install dbus-daemon)");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    let fake = (h.packs > 0).then(FakeBluez::start);
    let macs: Vec<String> = (0..h.packs).map(Household::pack_mac).collect();
    if let Some(fake) = &fake {
        for (i, mac) in macs.iter().enumerate() {
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
    }

    let broker_port = free_port()?;
    if !h.embedded {
        let broker = load_from(&Sources {
            base_toml: Some(format!(
                "[broker]\nenabled = true\nlisten = \"127.0.0.1:{broker_port}\"\n"
            )),
            ..Sources::default()
        })
        .map_err(|e| anyhow!("broker config: {e}"))?;
        rt.block_on(energy2mqtt::broker::start(&broker.broker))
            .context("the bench's broker")?;
    }

    let (inverters, plugs) = rt.block_on(async {
        let mut inverters = Vec::new();
        for k in 0..h.inverters {
            let model = InverterModel::new(
                ModelConfig::default(),
                SimTime::from_system_time(SystemTime::now()),
            );
            inverters.push(
                SolarmanSim::start(
                    SocketAddr::from(([127, 0, 0, 1], 0)),
                    SERIAL + k as u32,
                    model,
                )
                .await?,
            );
        }
        let mut plugs = Vec::new();
        for i in 0..h.plugs {
            let (_, flavour, watts) = PLUGS[i % PLUGS.len()];
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
        anyhow::Ok((inverters, plugs))
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
"#,
        data = dir.path().join("data").display(),
    );
    if h.embedded {
        toml.push_str(&format!(
            "[broker]\nenabled = true\nlisten = \"127.0.0.1:{broker_port}\"\n"
        ));
    }
    for (k, sim) in inverters.iter().enumerate() {
        toml.push_str(&format!(
            "[[inverter]]\nid = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\nserial = {}\npoll_interval = \"5s\"\n",
            Household::inverter_id(k),
            sim.addr.port(),
            SERIAL + k as u32
        ));
    }
    for (i, sim) in plugs.iter().enumerate() {
        let watts = PLUGS[i % PLUGS.len()].2;
        toml.push_str(&format!(
            "[[plug]]\nid = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\nnominal_w = {watts}\n",
            Household::plug_id(i),
            sim.addr.port()
        ));
        if h.inverters > 0 {
            toml.push_str(&format!(
                "inverter = \"{}\"\n",
                Household::inverter_id(i % h.inverters)
            ));
        }
    }
    for (i, mac) in macs.iter().enumerate() {
        toml.push_str(&format!(
            "[[bms]]\nid = \"battery{}\"\nmac = \"{mac}\"\n",
            i + 1
        ));
    }
    let config_path = dir.path().join("energy2mqtt.toml");
    std::fs::write(&config_path, toml)?;

    let devices: BTreeSet<String> = (0..h.inverters)
        .map(Household::inverter_id)
        .chain((0..h.packs).map(|i| format!("battery{}", i + 1)))
        .chain((0..h.plugs).map(Household::plug_id))
        .collect();
    let shim = if allocs {
        Some(build_alloc_shim(dir.path())?)
    } else {
        None
    };
    let run = Run {
        bin,
        config: &config_path,
        dir: dir.path(),
        fake: fake.as_ref(),
        macs: &macs,
        broker_port,
        embedded: h.embedded,
        shim: shim.as_deref(),
    };
    rt.block_on(measure(run, devices))
}

struct Run<'a> {
    bin: &'a Path,
    config: &'a Path,
    dir: &'a Path,
    fake: Option<&'a FakeBluez>,
    macs: &'a [String],
    broker_port: u16,
    embedded: bool,
    /// The allocation-counting library to preload.
    shim: Option<&'a Path>,
}

/// benches/support/alloc_count.c, compiled into `dir`.
fn build_alloc_shim(dir: &Path) -> Result<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/support/alloc_count.c");
    let out = dir.join("alloc_count.so");
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .context("running cc for the allocation counter")?;
    if !status.success() {
        bail!("cc could not build {}", src.display());
    }
    Ok(out)
}

/// The counters alloc_count.c keeps in `file`: (calls, bytes).
fn read_alloc_counts(file: &Path) -> Option<(u64, u64)> {
    let bytes = std::fs::read(file).ok()?;
    let word = |i: usize| -> Option<u64> {
        Some(u64::from_ne_bytes(
            bytes.get(i * 8..i * 8 + 8)?.try_into().ok()?,
        ))
    };
    Some((word(0)?, word(1)?))
}

/// Time on the CPU of every thread of `pid` now, in ns; `None` without
/// schedstats.
fn run_ns(pid: u32) -> Option<u64> {
    let threads = process::thread_cpu_ns(pid);
    (!threads.is_empty()).then(|| threads.iter().map(|t| t.1).sum())
}

/// Context switches of every thread of `pid`, voluntary and not: each is
/// the process going to sleep or being put off the CPU, i.e. a wake-up.
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let mut sum = 0;
    for task in tasks.flatten() {
        let status = task.path().join("status");
        let Ok(text) = std::fs::read_to_string(status) else {
            continue;
        };
        for line in text.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                sum += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    sum
}

async fn watcher(
    port: u16,
    devices: &BTreeSet<String>,
) -> Result<(
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::UnboundedReceiver<(Instant, String)>,
)> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut opts = MqttOptions::new("footprint-watch", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 256);
    for id in devices {
        client
            .subscribe(format!("energy2mqtt/{id}"), QoS::AtMostOnce)
            .await?;
    }
    let watch = tokio::spawn(async move {
        let _client = client;
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
    Ok((watch, rx))
}

async fn measure(run: Run<'_>, devices: BTreeSet<String>) -> Result<Figures> {
    let mut figures = Figures::default();
    let mut env = vec![("E2M_LOG__LEVEL", "info".to_string())];
    if let Some(fake) = run.fake {
        env.push(("DBUS_SYSTEM_BUS_ADDRESS", fake.address().to_string()));
    }
    // The allocator's knob, to compare with and without it.
    if let Ok(v) = std::env::var("MALLOC_ARENA_MAX") {
        env.push(("MALLOC_ARENA_MAX", v));
    }
    let counts = run.dir.join("alloc_counts");
    if let Some(shim) = run.shim {
        env.push(("LD_PRELOAD", shim.display().to_string()));
        env.push(("E2M_ALLOC_COUNTS", counts.display().to_string()));
    }
    // With an external broker the watcher is subscribed before the bridge
    // starts, so every first publish is timed.
    let mut watch = if run.embedded {
        None
    } else {
        Some(watcher(run.broker_port, &devices).await?)
    };
    let spawned = Instant::now();
    let config_arg = run.config.display().to_string();
    let mut bridge = Proc::spawn(
        run.bin,
        &["run", "--config", &config_arg],
        &env,
        run.dir,
        "bridge",
    )?;
    if run.embedded {
        if !process::wait_for_port(run.broker_port, Duration::from_secs(10)) {
            bail!("the embedded broker did not listen: {}", bridge.log_tail());
        }
        watch = Some(watcher(run.broker_port, &devices).await?);
    }
    if let Some((task, rx)) = &mut watch {
        let mut waiting = devices.clone();
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
                    figures
                        .firsts
                        .push((id.to_string(), at.duration_since(spawned)));
                }
            }
        }
        task.abort();
        if !run.embedded {
            figures.complete = figures.firsts.iter().map(|f| f.1).max();
        }
    }

    tokio::time::sleep(WARM_UP).await;
    bridge.check_alive()?;
    let pid = bridge.pid();
    let ticks_per_s = clock_ticks_per_second();
    let notifications = || -> u64 {
        run.fake.map_or(0, |fake| {
            run.macs
                .iter()
                .map(|m| fake.notifications_delivered(m))
                .sum()
        })
    };
    let cpu0 = cpu_ticks(pid).ok_or_else(|| anyhow!("cannot read /proc/{pid}/stat"))?;
    let run0 = run_ns(pid);
    let wake0 = context_switches(pid);
    let notes0 = notifications();
    let allocs0 = run.shim.and_then(|_| read_alloc_counts(&counts));
    let t0 = Instant::now();
    let (mut samples, mut sum) = (0u64, 0u64);
    while t0.elapsed() < window() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(m) = read_mem(Some(pid)) {
            figures.rss_peak_kib = figures.rss_peak_kib.max(m.rss_kib);
            samples += 1;
            sum += m.rss_kib;
        }
    }
    let cpu1 = cpu_ticks(pid).ok_or_else(|| anyhow!("cannot read /proc/{pid}/stat"))?;
    let run1 = run_ns(pid);
    figures.wakeups = context_switches(pid).saturating_sub(wake0);
    figures.secs = t0.elapsed().as_secs_f64();
    figures.notifications = notifications() - notes0;
    if let (Some((n0, b0)), Some((n1, b1))) = (allocs0, read_alloc_counts(&counts)) {
        figures.allocs = Some((n1 - n0, b1 - b0));
    }
    let end = read_mem(Some(pid)).ok_or_else(|| anyhow!("cannot read /proc/{pid}/status"))?;
    bridge.check_alive()?;
    // Clock ticks count threads that ended in the window (the blocking
    // pool's) but only in 10 ms steps; the scheduler's nanoseconds are
    // exact for the threads still there (an idle bridge uses less than one
    // tick a minute). The larger of the two.
    let ticks_s = (cpu1 - cpu0) as f64 / ticks_per_s;
    figures.cpu_s = match (run0, run1) {
        (Some(a), Some(b)) if b >= a => ticks_s.max((b - a) as f64 / 1e9),
        _ => ticks_s,
    };
    figures.threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    let [anon, file] = status_fields(Some(pid), ["RssAnon:", "RssFile:"]).unwrap_or_default();
    figures.anon_kib = anon;
    figures.file_kib = file;
    figures.rss_mean_kib = sum as f64 / samples.max(1) as f64;
    figures.rss_end_kib = end.rss_kib;
    figures.hwm_kib = end.hwm_kib;
    Ok(figures)
}
