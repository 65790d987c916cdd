//! Benchmarks of the overload balancer, as a plain binary (`harness = false`):
//!
//! 1. decision time of the pure core per inverter sample (`core::balancer::tick`)
//!    with 4, 16 and 64 plugs over a random load series
//!    (`BALANCER_DECISION_ONLY=1`: only this part);
//! 2. reaction, end to end: the whole bridge (`app::run`) polls a simulated
//!    Deye every second and switches a simulated Tapo plug; the house load
//!    steps over the limit and the time from the simulator's first answer
//!    after the step to the plug simulator's relay going off is measured,
//!    for the normal tier (shed_delay 900 ms, so the second over-limit
//!    sample sheds) and the emergency tier (no delay).
//!
//! `cargo bench --bench balancer_bench`. Loopback only. Figures go to
//! docs/PERFORMANCE.md.

#[path = "support/stats.rs"]
mod stats;

use stats::{ms, percentile};

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use energy2mqtt::config::{BalancerConfig, Sources, load_from};
use energy2mqtt::core::balancer::{
    self, BalancerState, InverterSnapshot, PlugPolicy, PlugSnapshot, Snapshot, Timestamp,
};
use energy2mqtt::model::PlugMode;
use energy2mqtt::sim::deye_model::{InverterModel, ModelConfig, SimTime};
use energy2mqtt::sim::solarman::SolarmanSim;
use energy2mqtt::sim::tapo::{Flavour, Load, TapoSim};
use tokio_util::sync::CancellationToken;

const USER: &str = "bench@example.com";
const PASS: &str = "bench-password";
const SERIAL: u32 = 2_712_345_678;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn main() {
    println!("energy2mqtt balancer_bench");
    decision_time(4);
    decision_time(16);
    decision_time(64);
    if std::env::var("BALANCER_DECISION_ONLY").is_ok_and(|v| v == "1") {
        return;
    }
    reaction();
}

/// Xorshift: the same load series on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn decision_time(n: usize) {
    println!("\n== 1. decision time per sample, {n} plugs ==");
    let config = BalancerConfig::default();
    let policies: Vec<PlugPolicy> = (0..n)
        .map(|i| PlugPolicy {
            id: format!("plug{i}"),
            priority: i as i32,
            sheddable: true,
            nominal_w: None,
            min_on: Duration::from_secs(60),
            min_off: Duration::from_secs(300),
            failsafe_shed: i % 2 == 0,
            pv_deficit_off: i % 3 == 0,
        })
        .collect();
    let mut state = BalancerState::new();
    let mut rng = Rng(0x5EED);
    let mut on = vec![true; n];
    let samples = 200_000u64;
    let mut times = Vec::with_capacity(samples as usize);
    let mut actions = 0usize;
    for k in 0..samples {
        let now = Timestamp::from_millis(1_700_000_000_000 + k * 1000);
        let plugs: Vec<PlugSnapshot> = (0..n)
            .map(|i| PlugSnapshot {
                id: format!("plug{i}"),
                reachable: true,
                on: Some(on[i]),
                power_w: Some(if on[i] { 300.0 + 100.0 * i as f64 } else { 0.0 }),
                last_seen: Some(now),
                mode: PlugMode::Auto,
                command_pending: false,
            })
            .collect();
        let plug_w: f64 = plugs.iter().filter_map(|p| p.power_w).sum();
        let snapshot = Snapshot {
            inverter: Some(InverterSnapshot {
                sample_time: now,
                rated_w: 6000.0,
                ac_output_w: 1000.0 + 4500.0 * rng.next() + plug_w * 0.3,
                grid_port_w: 500.0,
                gen_port_w: 0.0,
                grid_connected: rng.next() > 0.1,
                pv_w: Some(4000.0 * rng.next()),
                load_w: Some(3000.0 + 3000.0 * rng.next()),
                bms_discharge_limit_w: Some(5000.0),
                overload_fault: false,
            }),
            plugs,
        };
        let t = Instant::now();
        let d = balancer::tick(&snapshot, &config, &policies, &state, now);
        times.push(t.elapsed());
        for a in &d.actions {
            if let Some(i) = policies.iter().position(|p| p.id == a.plug) {
                on[i] = a.state == energy2mqtt::model::SwitchState::On;
            }
        }
        actions += d.actions.len();
        state = d.state;
    }
    times.sort();
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    println!(
        "{samples} samples, {actions} switch actions: mean {:.2} µs, median {:.2} µs, p99 {:.2} µs, max {:.2} µs (target <= 1 ms)",
        mean.as_secs_f64() * 1e6,
        percentile(&times, 0.5).as_secs_f64() * 1e6,
        percentile(&times, 0.99).as_secs_f64() * 1e6,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e6,
    );
}

/// Local 03:00 in the model: no sun, no random appliances.
fn night_offset() -> i32 {
    let sod = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() % 86_400)
        .unwrap_or(0) as i64;
    let mut offset = 3 * 3600 - sod;
    if offset > 43_200 {
        offset -= 86_400;
    } else if offset < -43_200 {
        offset += 86_400;
    }
    offset as i32
}

fn reaction() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let broker_port = free_port();
    let broker = load_from(&Sources {
        base_toml: Some(format!(
            "[broker]\nenabled = true\nlisten = \"127.0.0.1:{broker_port}\"\n"
        )),
        file: None,
        file_required: false,
        env: Vec::new(),
    })
    .expect("broker config");
    rt.block_on(energy2mqtt::broker::start(&broker.broker))
        .expect("broker");
    let (inverter, boiler) = rt.block_on(async {
        let model = InverterModel::new(
            ModelConfig {
                base_load_w: 250.0,
                utc_offset_s: night_offset(),
                ..ModelConfig::default()
            },
            SimTime::from_system_time(SystemTime::now()),
        );
        let inverter = SolarmanSim::start(SocketAddr::from(([127, 0, 0, 1], 0)), SERIAL, model)
            .await
            .expect("inverter simulator");
        inverter.faults.latency_ms.store(5, Ordering::Relaxed);
        let boiler = TapoSim::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Flavour::P110,
            Load::Constant { watts: 2000.0 },
            USER,
            PASS,
        )
        .await
        .expect("plug simulator");
        (inverter, boiler)
    });
    for (tier, step_w, shed_delay, trials) in [
        ("normal tier (shed_delay 900 ms)", 1900.0, "900ms", 20),
        ("emergency tier (> 110 %)", 3000.0, "5s", 20),
    ] {
        println!("\n== 2. overload reported -> plug off, {tier}, poll 1 s ==");
        let mut out = Vec::new();
        for _ in 0..trials {
            let data = tempfile::tempdir().expect("tempdir");
            let toml = format!(
                r#"
[mqtt]
url = "mqtt://127.0.0.1:{broker_port}"
client_id = "balancer-bench"
[storage]
dir = "{dir}"
[tapo]
email = "{USER}"
password = "{PASS}"
[[inverter]]
id = "inverter"
host = "127.0.0.1"
port = {inv}
serial = {SERIAL}
poll_interval = "1s"
[balancer]
on_grid_w = 4000.0
shed_delay = "{shed_delay}"
[[plug]]
id = "boiler"
host = "127.0.0.1"
port = {plug}
poll_interval = "1s"
inverter = "inverter"
min_on = "1s"
"#,
                dir = data.path().display(),
                inv = inverter.addr.port(),
                plug = boiler.addr.port(),
            );
            let config = load_from(&Sources {
                base_toml: Some(toml),
                file: None,
                file_required: false,
                env: Vec::new(),
            })
            .expect("config");
            boiler.set_on(true);
            inverter.model.lock().expect("model").set_extra_load(2000.0);
            let shutdown = CancellationToken::new();
            let r = rt.block_on(async {
                let bridge = tokio::spawn(energy2mqtt::app::run(config, shutdown.clone()));
                // Two fresh samples and the plug read: the balancer is armed.
                tokio::time::sleep(Duration::from_millis(3500)).await;
                let before = inverter.stats.requests.load(Ordering::Relaxed);
                inverter
                    .model
                    .lock()
                    .expect("model")
                    .set_extra_load(2000.0 + step_w);
                let t0 = Instant::now();
                while inverter.stats.requests.load(Ordering::Relaxed) == before {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                let reported = Instant::now();
                while boiler.is_on() && t0.elapsed() < Duration::from_secs(10) {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                let off = (!boiler.is_on()).then(|| reported.elapsed());
                shutdown.cancel();
                let _ = bridge.await;
                off
            });
            match r {
                Some(d) => out.push(d),
                None => println!("trial without a shed within 10 s"),
            }
        }
        out.sort();
        if out.is_empty() {
            println!("no trial shed the plug");
            continue;
        }
        println!(
            "{} trials: min {:.1} ms, median {:.1} ms, p90 {:.1} ms, max {:.1} ms (target <= poll 1000 ms + 100 ms; emergency: 100 ms)",
            out.len(),
            ms(out[0]),
            ms(percentile(&out, 0.5)),
            ms(percentile(&out, 0.9)),
            ms(*out.last().unwrap_or(&Duration::ZERO)),
        );
    }
}
