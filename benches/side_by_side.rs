//! Side by side (issue 15): one household, three contenders, the same
//! simulators, one run. The household: a Deye behind a Solarman V5 logger
//! (the simulator, answering 150 ms after each request) and 4 Tapo plugs
//! (3 P110 and a P100, KLAP). The contenders, one after the other so that
//! none competes with another for the 2 cores or the simulators:
//!
//! 1. `original`: benches/python/original_poll.py, the original app's
//!    method (../shared/specs/original-app.md §1, §6): pysolarmanv5 with
//!    a NEW connection per poll and ONE register per request (the 34
//!    registers the original read), 3 s sleep between polls, plus
//!    python-kasa polling the plugs every 5 s;
//! 2. `minimal`: benches/python/minimal_poll.py, pysolarmanv5 on one kept
//!    connection reading the bridge's two blocks (59..112, 150..194) every
//!    5 s, plus python-kasa polling the plugs every 5 s;
//! 3. `bridge`: the real `energy2mqtt run` with the same inverter and plugs,
//!    against the embedded broker running in this process.
//!
//! For each, over the same kind of window (60 s, `SIDE_WINDOW_S` to change
//! it; it is extended until 3 polls completed) after the first poll and a
//! 5 s warm-up:
//!
//! * time per inverter poll, median: measured on the wire, identically for
//!   all three, by a TCP tap in this process between the contender and the
//!   simulator. A poll is a burst of traffic (gaps under 1 s), from its first
//!   event (the TCP accept for the original, which connects per poll; the
//!   first request otherwise) to the last reply byte handed on. The Python
//!   scripts' own timings (`POLL` lines) are printed beside it as a check;
//! * VmRSS and RssAnon of the process (/proc/<pid>/status), mean of samples
//!   every 250 ms, and VmHWM at the end;
//! * CPU: utime + stime (/proc/<pid>/stat) over the window, as a % of one
//!   core. Those count in 10 ms ticks, coarse for the bridge's few ms per
//!   minute, so the threads' schedstat (ns, sampled every 250 ms; a lower
//!   bound, as a thread's last moments before it ends are missed) is shown
//!   beside it as `CPU % hr`.
//!
//! Then, optional: MQTT `set` → plug switched through the bridge (20
//! commands) against one `kasa` CLI invocation switching the plug (5 runs).
//!
//! `cargo bench --bench side_by_side` (about 4 minutes; `SIDE_WINDOW_S=20`
//! for a quick one). Loopback only. Needs the interop venv: the interpreter
//! in `E2M_INTEROP_PYTHON`, by default `.venv-interop/bin/python`
//! (`python3 -m venv .venv-interop && .venv-interop/bin/pip install
//! pysolarmanv5==3.0.6 python-kasa==0.12.0`, as .ci/run does).

#[path = "support/process.rs"]
mod process;

#[path = "support/stats.rs"]
mod stats;

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use energy2mqtt::config::{Sources, load_from};
use energy2mqtt::sim::deye_model::{InverterModel, ModelConfig, SimTime};
use energy2mqtt::sim::solarman::SolarmanSim;
use energy2mqtt::sim::tapo::{Flavour, Load, TapoSim};
use process::{
    Proc, clock_ticks_per_second, cpu_model, cpu_ticks, find_binary, status_fields, thread_cpu_ns,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use stats::{ms, percentile};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USER: &str = "bench@example.com";
const PASS: &str = "bench-password";
const SERIAL: u32 = 2_712_345_678;
const RTT_MS: u64 = 150;
const PLUGS: [(&str, Flavour, f64); 4] = [
    ("boiler", Flavour::P110, 2000.0),
    ("heater", Flavour::P110, 1500.0),
    ("fridge", Flavour::P110, 120.0),
    ("lamp", Flavour::P100, 60.0),
];
const PINS: &str = "pysolarmanv5==3.0.6 python-kasa==0.12.0";
/// Traffic gaps longer than this separate two polls.
const POLL_GAP: Duration = Duration::from_secs(1);
/// From spawning a contender to its first complete poll.
const FIRST_POLL_TIMEOUT: Duration = Duration::from_secs(60);
const WARM_UP: Duration = Duration::from_secs(5);
const WINDOW: Duration = Duration::from_secs(60);
const MIN_POLLS: usize = 3;
/// How long the window may be extended to see `MIN_POLLS` polls.
const EXTRA: Duration = Duration::from_secs(60);
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
const SWITCH_COMMANDS: usize = 20;
const KASA_RUNS: usize = 5;
const KASA_TIMEOUT: Duration = Duration::from_secs(60);

fn window() -> Duration {
    std::env::var("SIDE_WINDOW_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(WINDOW, Duration::from_secs)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("side_by_side bench failed: {e:#}");
        std::process::exit(1);
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

// ---------------------------------------------------------------------------
// The wire tap between a contender and the inverter simulator.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// A contender connected.
    Accept,
    /// Bytes from the contender to the simulator (a request).
    Up,
    /// Bytes from the simulator handed on to the contender (a reply).
    Down,
}

type Events = Arc<Mutex<Vec<(Instant, Dir)>>>;

fn record(events: &Events, dir: Dir) {
    if let Ok(mut e) = events.lock() {
        e.push((Instant::now(), dir));
    }
}

fn snapshot(events: &Events) -> Vec<(Instant, Dir)> {
    let mut v = events.lock().map(|e| e.clone()).unwrap_or_default();
    v.sort_by_key(|e| e.0);
    v
}

/// A TCP forwarder on a free loopback port in front of `upstream`,
/// recording when each connection, request and reply passes.
async fn start_tap(upstream: SocketAddr, events: Events) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            record(&events, Dir::Accept);
            let events = events.clone();
            tokio::spawn(async move {
                let connect = tokio::net::TcpStream::connect(upstream);
                let Ok(Ok(server)) = tokio::time::timeout(Duration::from_secs(5), connect).await
                else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up_events = events.clone();
                let up = tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                record(&up_events, Dir::Up);
                                if sw.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = sw.shutdown().await;
                });
                let mut buf = vec![0u8; 4096];
                loop {
                    match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            record(&events, Dir::Down);
                        }
                    }
                }
                let _ = cw.shutdown().await;
                up.abort();
            });
        }
    });
    Ok(addr)
}

#[derive(Debug, Clone, Copy)]
struct Poll {
    start: Instant,
    end: Instant,
    requests: usize,
    connects: usize,
}

impl Poll {
    fn duration(&self) -> Duration {
        self.end.duration_since(self.start)
    }
}

/// Splits the traffic into polls: bursts separated by `POLL_GAP`, each
/// ending at its last reply. A burst still going on `now` is left out.
fn polls(events: &[(Instant, Dir)], now: Instant) -> Vec<Poll> {
    let mut out = Vec::new();
    let mut current: Option<(Instant, Option<Instant>, usize, usize)> = None;
    let mut last_at: Option<Instant> = None;
    let close = |c: Option<(Instant, Option<Instant>, usize, usize)>, out: &mut Vec<Poll>| {
        if let Some((start, Some(end), requests, connects)) = c {
            out.push(Poll {
                start,
                end,
                requests,
                connects,
            });
        }
    };
    for &(at, dir) in events {
        if last_at.is_some_and(|l| at.duration_since(l) > POLL_GAP) {
            close(current.take(), &mut out);
        }
        let c = current.get_or_insert((at, None, 0, 0));
        match dir {
            Dir::Accept => c.3 += 1,
            Dir::Up => c.2 += 1,
            Dir::Down => c.1 = Some(at),
        }
        last_at = Some(at);
    }
    if last_at.is_some_and(|l| now.duration_since(l) > POLL_GAP) {
        close(current.take(), &mut out);
    }
    out
}

// ---------------------------------------------------------------------------
// Process figures.

/// utime + stime of `pid`, in clock ticks (threads that ended included).
/// CPU of a process over a window at nanosecond resolution, from its
/// threads' schedstat sampled every `SAMPLE_EVERY`: a thread's time is its
/// last sample minus its first (0 for a thread born in the window). What a
/// thread spends after its last sample before it ends is missed, so this is
/// a lower bound; utime + stime (10 ms ticks) is the exact total.
#[derive(Default)]
struct ThreadCpu {
    base: HashMap<u32, u64>,
    last: HashMap<u32, u64>,
}

impl ThreadCpu {
    fn start(pid: u32) -> Self {
        let base: HashMap<u32, u64> = thread_cpu_ns(pid).into_iter().collect();
        Self {
            last: base.clone(),
            base,
        }
    }

    fn sample(&mut self, pid: u32) {
        self.last.extend(thread_cpu_ns(pid));
    }

    fn total(&self) -> Duration {
        let ns = self
            .last
            .iter()
            .map(|(tid, ns)| ns.saturating_sub(self.base.get(tid).copied().unwrap_or(0)))
            .sum();
        Duration::from_nanos(ns)
    }
}

fn mib(kib: f64) -> f64 {
    kib / 1024.0
}

/// What one contender measured.
#[derive(Debug, Clone)]
struct Figures {
    name: &'static str,
    what: &'static str,
    poll_median: Duration,
    poll_max: Duration,
    polls: usize,
    requests_per_poll: usize,
    connects_per_poll: usize,
    /// The Python scripts' own `POLL` timings (median), first one left out.
    self_reported: Option<Duration>,
    rss_mean_kib: f64,
    anon_mean_kib: f64,
    hwm_kib: u64,
    cpu_pct: f64,
    cpu_s: f64,
    /// From the threads' schedstat (a lower bound, ns resolution).
    cpu_hr_pct: f64,
    cpu_hr_s: f64,
    /// HTTP requests (handshakes among them) the 4 plug simulators got in
    /// the window.
    plug_requests: u64,
    plug_handshakes: u64,
    /// Lines saying `ERROR` in the contender's log.
    errors: usize,
    secs: f64,
    threads: usize,
}

// ---------------------------------------------------------------------------
// Running things with a time limit.

struct Ran {
    ok: bool,
    stderr: String,
}

/// Runs `cmd` to completion; kills it after `limit`.
fn run_limited(mut cmd: Command, limit: Duration) -> Result<Ran> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the command")?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut s);
            }
            s
        })
    };
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Ran {
        ok: status.success(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// The interop interpreter, checked to import both client libraries.
fn interop_python(manifest: &Path) -> Result<PathBuf> {
    let python = std::env::var_os("E2M_INTEROP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join(".venv-interop/bin/python"));
    let fix = format!(
        "python3 -m venv .venv-interop && .venv-interop/bin/pip install {PINS} (or set E2M_INTEROP_PYTHON)"
    );
    if !python.is_file() {
        bail!("no Python interpreter at {}: {fix}", python.display());
    }
    let mut cmd = Command::new(&python);
    cmd.args(["-c", "import pysolarmanv5, kasa"]);
    let ran = run_limited(cmd, Duration::from_secs(60))
        .with_context(|| format!("running {}", python.display()))?;
    if !ran.ok {
        bail!(
            "{} cannot import pysolarmanv5 and kasa ({}): {fix}",
            python.display(),
            ran.stderr.trim()
        );
    }
    Ok(python)
}

// ---------------------------------------------------------------------------

struct House {
    inverter: SolarmanSim,
    plugs: Vec<TapoSim>,
    tap: SocketAddr,
    events: Events,
    broker_port: u16,
}

fn run() -> Result<()> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = interop_python(&manifest)?;
    let scripts = manifest.join("benches/python");
    for s in ["original_poll.py", "minimal_poll.py"] {
        if !scripts.join(s).is_file() {
            bail!("missing {}", scripts.join(s).display());
        }
    }
    let bin = find_binary()
        .ok_or_else(|| anyhow!("no energy2mqtt binary (run `cargo build --release` first)"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

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

    let house = rt.block_on(async {
        let model = InverterModel::new(
            ModelConfig::default(),
            SimTime::from_system_time(SystemTime::now()),
        );
        let inverter =
            SolarmanSim::start(SocketAddr::from(([127, 0, 0, 1], 0)), SERIAL, model).await?;
        inverter.faults.latency_ms.store(RTT_MS, Ordering::Relaxed);
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
        let events: Events = Arc::new(Mutex::new(Vec::new()));
        let tap = start_tap(inverter.addr, events.clone()).await?;
        anyhow::Ok(House {
            inverter,
            plugs,
            tap,
            events,
            broker_port,
        })
    })?;

    println!("energy2mqtt side_by_side ({})", cpu_model());
    println!(
        "household: 1 Deye (Solarman V5 simulator, {RTT_MS} ms per round trip), plugs {}",
        PLUGS
            .iter()
            .map(|p| format!("{} ({:?})", p.0, p.1))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "window {} s per contender after the first poll and a {} s warm-up; bridge {}; python {}",
        window().as_secs(),
        WARM_UP.as_secs(),
        bin.display(),
        python.display()
    );

    let dir = tempfile::tempdir()?;
    let plug_ports: Vec<String> = house
        .plugs
        .iter()
        .map(|p| p.addr.port().to_string())
        .collect();
    let mut script_args = vec![
        house.tap.port().to_string(),
        SERIAL.to_string(),
        USER.to_string(),
        PASS.to_string(),
    ];
    script_args.extend(plug_ports);

    let mut results = Vec::new();
    let mut switch = None;
    for (name, what) in [
        (
            "original",
            "Python, new connection per poll, 34 single-register reads",
        ),
        ("minimal", "Python, kept connection, 2 block reads"),
        ("bridge", "energy2mqtt run"),
    ] {
        // Every plug on again, whatever the previous contender did.
        for p in &house.plugs {
            p.set_on(true);
        }
        println!("\n-- {name}: {what} --");
        let mut proc = match name {
            "bridge" => {
                let config = bridge_config(&house, dir.path())?;
                let config_arg = config.display().to_string();
                let env = [("E2M_LOG__LEVEL", "info".to_string())];
                Proc::spawn(
                    &bin,
                    &["run", "--config", &config_arg],
                    &env,
                    dir.path(),
                    name,
                )?
            }
            _ => {
                let script = scripts.join(format!("{name}_poll.py"));
                let mut args = vec![script.display().to_string()];
                args.extend(script_args.iter().cloned());
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                Proc::spawn(&python, &args, &[], dir.path(), name)?
            }
        };
        let figures = rt.block_on(measure(
            &mut proc,
            name,
            what,
            &house,
            &dir.path().join(format!("{name}.log")),
        ))?;
        print_one(&figures);
        if name == "bridge" {
            switch = Some(rt.block_on(bridge_switch(&house, &mut proc)));
        }
        drop(proc);
        results.push(figures);
    }
    for p in &house.plugs {
        p.set_on(true);
    }
    let kasa = python.with_file_name("kasa");
    let kasa_switch = if kasa.is_file() {
        rt.block_on(kasa_switch(&kasa, &house.plugs[0]))
    } else {
        Err(anyhow!("no kasa CLI at {}", kasa.display()))
    };

    report(&results, switch, kasa_switch);
    println!(
        "(the inverter simulator served {} requests on {} connections in all)",
        house.inverter.stats.requests.load(Ordering::Relaxed),
        house.inverter.stats.connections.load(Ordering::Relaxed)
    );
    drop(house);
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

fn bridge_config(house: &House, dir: &Path) -> Result<PathBuf> {
    let mut toml = format!(
        r#"
[mqtt]
url = "mqtt://127.0.0.1:{broker}"
client_id = "side-by-side-bridge"
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
        broker = house.broker_port,
        data = dir.join("data").display(),
        inv = house.tap.port(),
    );
    for ((id, _, watts), sim) in PLUGS.iter().zip(&house.plugs) {
        toml.push_str(&format!(
            "[[plug]]\nid = \"{id}\"\nhost = \"127.0.0.1\"\nport = {}\ninverter = \"inverter\"\nnominal_w = {watts}\n",
            sim.addr.port()
        ));
    }
    let path = dir.join("energy2mqtt.toml");
    std::fs::write(&path, toml)?;
    Ok(path)
}

async fn measure(
    proc: &mut Proc,
    name: &'static str,
    what: &'static str,
    house: &House,
    log: &Path,
) -> Result<Figures> {
    let spawned = Instant::now();
    // The first complete poll.
    loop {
        proc.check_alive()
            .with_context(|| format!("{name} before its first poll"))?;
        let now = Instant::now();
        let ev: Vec<_> = snapshot(&house.events)
            .into_iter()
            .filter(|e| e.0 >= spawned)
            .collect();
        if let Some(first) = polls(&ev, now).first() {
            println!(
                "first poll done {:.1} s after the start ({:.1} ms, {} requests)",
                first.end.duration_since(spawned).as_secs_f64(),
                ms(first.duration()),
                first.requests
            );
            break;
        }
        if spawned.elapsed() > FIRST_POLL_TIMEOUT {
            bail!(
                "{name}: no complete inverter poll within {FIRST_POLL_TIMEOUT:?}: {}",
                proc.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(WARM_UP).await;
    proc.check_alive()?;
    let pid = proc.pid();
    let ticks_per_s = clock_ticks_per_second();
    let cpu0 = cpu_ticks(pid).ok_or_else(|| anyhow!("cannot read /proc/{pid}/stat"))?;
    let plug_counts = || {
        house
            .plugs
            .iter()
            .fold((0, 0), |(r, h), p| (r + p.requests(), h + p.handshakes()))
    };
    let (req0, hs0) = plug_counts();
    let mut hr = ThreadCpu::start(pid);
    let t0 = Instant::now();
    let (mut samples, mut rss_sum, mut anon_sum) = (0u64, 0u64, 0u64);
    let in_window = |t0: Instant, now: Instant| -> Vec<Poll> {
        polls(&snapshot(&house.events), now)
            .into_iter()
            .filter(|p| p.start >= t0)
            .collect()
    };
    loop {
        tokio::time::sleep(SAMPLE_EVERY).await;
        hr.sample(pid);
        if let Some([rss, anon]) = status_fields(Some(pid), ["VmRSS:", "RssAnon:"]) {
            samples += 1;
            rss_sum += rss;
            anon_sum += anon;
        }
        let elapsed = t0.elapsed();
        if elapsed >= window() {
            let seen = in_window(t0, Instant::now()).len();
            if seen >= MIN_POLLS || elapsed >= window() + EXTRA {
                break;
            }
        }
    }
    hr.sample(pid);
    let cpu1 = cpu_ticks(pid).ok_or_else(|| anyhow!("cannot read /proc/{pid}/stat"))?;
    let t1 = Instant::now();
    let (req1, hs1) = plug_counts();
    let secs = t1.duration_since(t0).as_secs_f64();
    let [hwm_kib] =
        status_fields(Some(pid), ["VmHWM:"]).ok_or_else(|| anyhow!("/proc/{pid}/status"))?;
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    proc.check_alive()?;
    let window_polls: Vec<Poll> = in_window(t0, t1)
        .into_iter()
        .filter(|p| p.end <= t1)
        .collect();
    if window_polls.is_empty() {
        bail!(
            "{name}: no complete inverter poll in the {secs:.0} s window: {}",
            proc.log_tail()
        );
    }
    let mut durations: Vec<Duration> = window_polls.iter().map(Poll::duration).collect();
    durations.sort();
    let mut requests: Vec<usize> = window_polls.iter().map(|p| p.requests).collect();
    requests.sort_unstable();
    let mut connects: Vec<usize> = window_polls.iter().map(|p| p.connects).collect();
    connects.sort_unstable();
    let cpu_s = cpu1.saturating_sub(cpu0) as f64 / ticks_per_s;
    Ok(Figures {
        name,
        what,
        poll_median: percentile(&durations, 0.5),
        poll_max: percentile(&durations, 1.0),
        polls: durations.len(),
        requests_per_poll: requests[requests.len() / 2],
        connects_per_poll: connects[connects.len() / 2],
        self_reported: self_reported(log),
        rss_mean_kib: rss_sum as f64 / samples.max(1) as f64,
        anon_mean_kib: anon_sum as f64 / samples.max(1) as f64,
        hwm_kib,
        cpu_pct: 100.0 * cpu_s / secs,
        cpu_s,
        cpu_hr_pct: 100.0 * hr.total().as_secs_f64() / secs,
        cpu_hr_s: hr.total().as_secs_f64(),
        plug_requests: req1.saturating_sub(req0),
        plug_handshakes: hs1.saturating_sub(hs0),
        errors: std::fs::read_to_string(log)
            .map(|t| t.lines().filter(|l| l.contains("ERROR")).count())
            .unwrap_or(0),
        secs,
        threads,
    })
}

/// Median of the script's own `POLL <ms>` lines, the first left out.
fn self_reported(log: &Path) -> Option<Duration> {
    let text = std::fs::read_to_string(log).ok()?;
    let mut v: Vec<Duration> = text
        .lines()
        .filter_map(|l| l.strip_prefix("POLL "))
        .filter_map(|s| s.trim().parse::<f64>().ok())
        .filter(|x| x.is_finite() && *x >= 0.0)
        .map(|x| Duration::from_secs_f64(x / 1e3))
        .skip(1)
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort();
    Some(percentile(&v, 0.5))
}

fn print_one(f: &Figures) {
    println!(
        "{} polls in {:.1} s: median {:.1} ms, max {:.1} ms, {} requests and {} connects per poll{}",
        f.polls,
        f.secs,
        ms(f.poll_median),
        ms(f.poll_max),
        f.requests_per_poll,
        f.connects_per_poll,
        f.self_reported
            .map(|d| format!(" (the script's own timing: median {:.1} ms)", ms(d)))
            .unwrap_or_default()
    );
    println!(
        "VmRSS mean {:.2} MiB, RssAnon mean {:.2} MiB, VmHWM {:.2} MiB, {} threads at the end",
        mib(f.rss_mean_kib),
        mib(f.anon_mean_kib),
        mib(f.hwm_kib as f64),
        f.threads
    );
    println!(
        "CPU: utime+stime {:.2} s = {:.3} % of one core; threads' schedstat {:.4} s = {:.4} % of one core",
        f.cpu_s, f.cpu_pct, f.cpu_hr_s, f.cpu_hr_pct
    );
    println!(
        "plugs: {} HTTP requests at the 4 simulators ({:.1}/min; {} of them handshakes) in the window; {} ERROR lines in the log",
        f.plug_requests,
        f.plug_requests as f64 * 60.0 / f.secs,
        f.plug_handshakes,
        f.errors
    );
}

// ---------------------------------------------------------------------------
// Switching a plug: MQTT `set` through the bridge, and the kasa CLI.

#[derive(Debug, Clone)]
struct Switch {
    median: Duration,
    max: Duration,
    done: usize,
    tried: usize,
}

async fn bridge_switch(house: &House, bridge: &mut Proc) -> Result<Switch> {
    let plug = &house.plugs[0];
    let topic = format!("energy2mqtt/{}/set", PLUGS[0].0);
    let mut opts = MqttOptions::new("side-by-side-switch", "127.0.0.1", house.broker_port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let pump = tokio::spawn(async move {
        let mut tx = Some(tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    let result = async {
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .context("no CONNACK from the embedded broker within 10 s")?
            .context("MQTT client ended")?;
        let mut out = Vec::new();
        for i in 0..SWITCH_COMMANDS {
            bridge.check_alive()?;
            let want = i % 2 == 0;
            if plug.is_on() == want {
                plug.set_on(!want);
                // Let the bridge's next poll see the flipped relay.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let payload = if want { "ON" } else { "OFF" };
            let t = Instant::now();
            client
                .publish(topic.as_str(), QoS::AtMostOnce, false, payload)
                .await?;
            while plug.is_on() != want && t.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            if plug.is_on() == want {
                out.push(t.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if out.is_empty() {
            bail!("the plug never followed an MQTT set within 5 s");
        }
        out.sort();
        anyhow::Ok(Switch {
            median: percentile(&out, 0.5),
            max: percentile(&out, 1.0),
            done: out.len(),
            tried: SWITCH_COMMANDS,
        })
    }
    .await;
    pump.abort();
    result
}

async fn kasa_switch(kasa: &Path, plug: &TapoSim) -> Result<Switch> {
    let mut out = Vec::new();
    let port = plug.addr.port().to_string();
    let mut failures = Vec::new();
    for i in 0..KASA_RUNS {
        let want = i % 2 == 1;
        if plug.is_on() == want {
            plug.set_on(!want);
        }
        let mut child = Command::new(kasa)
            .args(["--host", "127.0.0.1", "--port", &port])
            .args(["--username", USER, "--password", PASS])
            .args(["--type", "smart", "--encrypt-type", "KLAP"])
            .args(["--login-version", "2", "--timeout", "10"])
            .arg(if want { "on" } else { "off" })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", kasa.display()))?;
        let t = Instant::now();
        let mut flipped = None;
        let mut exit = None;
        while t.elapsed() < KASA_TIMEOUT {
            if flipped.is_none() && plug.is_on() == want {
                flipped = Some(t.elapsed());
            }
            if let Ok(Some(status)) = child.try_wait() {
                if flipped.is_none() && plug.is_on() == want {
                    flipped = Some(t.elapsed());
                }
                exit = Some(status);
                break;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        if exit.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        match (flipped, exit) {
            (Some(d), Some(s)) if s.success() => out.push(d),
            (f, s) => failures.push(format!("run {i}: flipped after {f:?}, exit {s:?}")),
        }
    }
    if out.is_empty() {
        bail!("kasa never switched the plug: {}", failures.join("; "));
    }
    out.sort();
    Ok(Switch {
        median: percentile(&out, 0.5),
        max: percentile(&out, 1.0),
        done: out.len(),
        tried: KASA_RUNS,
    })
}

// ---------------------------------------------------------------------------

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.1}x", a / b)
    } else {
        "n/a (bridge 0)".into()
    }
}

fn report(results: &[Figures], switch: Option<Result<Switch>>, kasa: Result<Switch>) {
    println!(
        "\n== side by side: same household, same simulators, {RTT_MS} ms per inverter round trip =="
    );
    println!(
        "{:<9} {:>10} {:>8} {:>5} {:>9} {:>9} {:>11} {:>7} {:>7} {:>9}  what",
        "contender",
        "poll ms",
        "req/poll",
        "polls",
        "self ms",
        "VmRSS MiB",
        "RssAnon MiB",
        "HWM MiB",
        "CPU %",
        "CPU % hr"
    );
    for f in results {
        println!(
            "{:<9} {:>10.1} {:>8} {:>5} {:>9} {:>9.2} {:>11.2} {:>7.2} {:>7.3} {:>9.4}  {}",
            f.name,
            ms(f.poll_median),
            f.requests_per_poll,
            f.polls,
            f.self_reported
                .map_or("-".into(), |d| format!("{:.1}", ms(d))),
            mib(f.rss_mean_kib),
            mib(f.anon_mean_kib),
            mib(f.hwm_kib as f64),
            f.cpu_pct,
            f.cpu_hr_pct,
            f.what
        );
    }
    println!(
        "poll ms: median time per inverter poll on the wire (tap); self ms: the script's own timing; \
         CPU %: utime+stime (10 ms ticks) over the window; CPU % hr: threads' schedstat (ns, lower bound)"
    );
    let bridge = results.iter().find(|f| f.name == "bridge");
    if let Some(b) = bridge {
        println!("\nratios (contender / bridge):");
        println!(
            "{:<18} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "", "poll", "VmRSS", "RssAnon", "CPU", "CPU hr"
        );
        for f in results.iter().filter(|f| f.name != "bridge") {
            println!(
                "{:<18} {:>10} {:>10} {:>10} {:>10} {:>10}",
                format!("{}/bridge", f.name),
                ratio(ms(f.poll_median), ms(b.poll_median)),
                ratio(f.rss_mean_kib, b.rss_mean_kib),
                ratio(f.anon_mean_kib, b.anon_mean_kib),
                ratio(f.cpu_pct, b.cpu_pct),
                ratio(f.cpu_hr_pct, b.cpu_hr_pct)
            );
        }
    }
    println!("\n== switching a plug ==");
    let bridge_switch = match switch {
        Some(Ok(s)) => {
            println!(
                "bridge: MQTT set -> plug switched, {} of {} commands: median {:.2} ms, max {:.2} ms",
                s.done,
                s.tried,
                ms(s.median),
                ms(s.max)
            );
            Some(s)
        }
        Some(Err(e)) => {
            println!("bridge: MQTT set -> plug switched not measured: {e:#}");
            None
        }
        None => None,
    };
    let kasa = match kasa {
        Ok(s) => {
            println!(
                "kasa CLI: process start -> plug switched, {} of {} runs: median {:.1} ms, max {:.1} ms",
                s.done,
                s.tried,
                ms(s.median),
                ms(s.max)
            );
            Some(s)
        }
        Err(e) => {
            println!("kasa CLI: not measured: {e:#}");
            None
        }
    };
    if let (Some(b), Some(k)) = (&bridge_switch, &kasa) {
        println!("kasa CLI / bridge: {}", ratio(ms(k.median), ms(b.median)));
    }
    println!();
    for f in results {
        println!(
            "RESULT side_by_side {} poll_ms={:.1} rss_mib={:.2} rss_anon_mib={:.2} cpu_pct={:.3} cpu_hr_pct={:.4} polls={} requests_per_poll={} hwm_mib={:.2}",
            f.name,
            ms(f.poll_median),
            mib(f.rss_mean_kib),
            mib(f.anon_mean_kib),
            f.cpu_pct,
            f.cpu_hr_pct,
            f.polls,
            f.requests_per_poll,
            mib(f.hwm_kib as f64)
        );
    }
    if let Some(b) = bridge {
        for f in results.iter().filter(|f| f.name != "bridge") {
            let r = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
            println!(
                "RESULT side_by_side ratio_{}_bridge poll={:.2} rss={:.2} rss_anon={:.2} cpu={:.2} cpu_hr={:.2}",
                f.name,
                r(ms(f.poll_median), ms(b.poll_median)),
                r(f.rss_mean_kib, b.rss_mean_kib),
                r(f.anon_mean_kib, b.anon_mean_kib),
                r(f.cpu_pct, b.cpu_pct),
                r(f.cpu_hr_pct, b.cpu_hr_pct)
            );
        }
    }
    if let (Some(b), Some(k)) = (&bridge_switch, &kasa) {
        println!(
            "RESULT side_by_side switch bridge_ms={:.2} kasa_cli_ms={:.1} ratio={:.1}",
            ms(b.median),
            ms(k.median),
            ms(k.median) / ms(b.median).max(1e-6)
        );
    }
}
