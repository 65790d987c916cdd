//! Benchmarks of the Tapo path, as a plain binary (`harness = false`):
//!
//! 1. MQTT `set` → simulated plug switched: the whole bridge (`app::run`)
//!    with the embedded broker, a KLAP plug simulator, and an MQTT client
//!    publishing ON/OFF; time until the simulator's relay flips;
//! 2. handshake cost: a fresh session (handshake1 + handshake2 + the first
//!    request) against a request on a live session;
//! 3. CPU per plug poll on the bridge's side (get_device_info +
//!    get_current_power), the simulator on another thread.
//!
//! `cargo bench --bench tapo_bench`. Loopback only. Figures go to
//! docs/PERFORMANCE.md.

#[path = "support/stats.rs"]
mod stats;

use stats::{ms, percentile};

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use energy2mqtt::config::{Sources, load_from};
use energy2mqtt::drivers::tapo::client::PlugClient;
use energy2mqtt::sim::tapo::{Flavour, Load, TapoSim};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio_util::sync::CancellationToken;

const USER: &str = "bench@example.com";
const PASS: &str = "bench-password";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

fn main() {
    println!("energy2mqtt tapo_bench");
    let sim_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let plug = sim_rt
        .block_on(TapoSim::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Flavour::P110,
            Load::Boiler { watts: 2000.0 },
            USER,
            PASS,
        ))
        .expect("simulator");
    let port = plug.addr.port();

    println!("\n== 1. MQTT set -> plug switched (whole bridge, embedded broker) ==");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let broker_port = free_port();
    let toml = format!(
        r#"
[broker]
enabled = true
listen = "127.0.0.1:{broker_port}"
[mqtt]
client_id = "tapo-bench"
[tapo]
email = "{USER}"
password = "{PASS}"
[[plug]]
id = "boiler"
host = "127.0.0.1"
port = {port}
poll_interval = "5s"
"#
    );
    let config = load_from(&Sources {
        base_toml: Some(toml),
        file: None,
        file_required: false,
        env: Vec::new(),
    })
    .expect("config");
    let shutdown = CancellationToken::new();
    let latencies = rt.block_on(async {
        let bridge = tokio::spawn(energy2mqtt::app::run(config, shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut opts = MqttOptions::new("bench-client", "127.0.0.1", broker_port);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
        // Let the bridge's session be up before timing.
        let warm = Instant::now();
        while plug.handshakes() == 0 && warm.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut out = Vec::new();
        for i in 0..200 {
            let want = i % 2 == 0;
            if plug.is_on() == want {
                plug.set_on(!want);
            }
            let payload = if want { "ON" } else { "OFF" };
            let t = Instant::now();
            client
                .publish("energy2mqtt/boiler/set", QoS::AtMostOnce, false, payload)
                .await
                .expect("publish");
            while plug.is_on() != want {
                if t.elapsed() > Duration::from_secs(5) {
                    break;
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            out.push(t.elapsed());
            // Let the read-back finish before the next command.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        let _ = bridge.await;
        out
    });
    let mut sorted = latencies.clone();
    sorted.sort();
    println!(
        "set -> switched over {} commands: median {:.2} ms, p99 {:.2} ms, max {:.2} ms (target median <= 50 ms); handshakes {}",
        sorted.len(),
        ms(percentile(&sorted, 0.5)),
        ms(percentile(&sorted, 0.99)),
        ms(percentile(&sorted, 1.0)),
        plug.handshakes()
    );

    println!("\n== 2. handshake cost ==");
    let local = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (fresh, live) = local.block_on(async {
        let mut fresh = Vec::new();
        for _ in 0..50 {
            let mut c = PlugClient::new("127.0.0.1", port, USER, PASS, Duration::from_secs(2));
            let t = Instant::now();
            c.get_device_info().await.expect("info");
            fresh.push(t.elapsed());
        }
        let mut c = PlugClient::new("127.0.0.1", port, USER, PASS, Duration::from_secs(2));
        c.get_device_info().await.expect("info");
        let mut live = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            c.get_device_info().await.expect("info");
            live.push(t.elapsed());
        }
        fresh.sort();
        live.sort();
        (fresh, live)
    });
    println!(
        "new session + first request: median {:.2} ms; request on a live session: median {:.2} ms => handshake ~ {:.2} ms",
        ms(percentile(&fresh, 0.5)),
        ms(percentile(&live, 0.5)),
        ms(percentile(&fresh, 0.5).saturating_sub(percentile(&live, 0.5)))
    );

    println!("\n== 3. CPU per plug poll (bridge side) ==");
    const POLLS: u32 = 2000;
    let cpu = local.block_on(async {
        let mut c = PlugClient::new("127.0.0.1", port, USER, PASS, Duration::from_secs(2));
        c.get_device_info().await.expect("info");
        let c0 = thread_cpu();
        let t = Instant::now();
        for _ in 0..POLLS {
            std::hint::black_box(c.get_device_info().await.expect("info"));
            std::hint::black_box(c.get_current_power().await.expect("power"));
        }
        let wall = t.elapsed();
        (c0.zip(thread_cpu()).map(|(a, b)| b - a), wall)
    });
    match cpu {
        (Some(c), wall) => println!(
            "CPU per poll (2 KLAP requests: encrypt, HTTP, decrypt, parse): {:.1} us ({:.1} us wall) => {:.4} % of one core per plug at 5 s",
            (c / POLLS).as_secs_f64() * 1e6,
            (wall / POLLS).as_secs_f64() * 1e6,
            (c / POLLS).as_secs_f64() / 5.0 * 100.0
        ),
        (None, _) => println!("CPU per poll: not measured (/proc/thread-self/schedstat missing)"),
    }
    drop(plug);
}
