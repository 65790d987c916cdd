//! Benchmarks of the Deye poll, as a plain binary (`harness = false`):
//!
//! 1. wall time of one full poll (two block reads) against the Solarman
//!    simulator answering after 150 ms per round trip, and, for
//!    comparison, the original app's ~30 single-register reads;
//! 2. CPU time the bridge's side spends per poll (the simulator answers
//!    at once and runs on another thread, whose CPU is not counted).
//!
//! `cargo bench --bench deye_bench`. Loopback only. Figures go to
//! docs/PERFORMANCE.md.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use energy2mqtt::config::{InverterConfig, InverterTransport};
use energy2mqtt::drivers::deye::task::Poller;
use energy2mqtt::drivers::deye::transport::{Link, LinkCounters};
use energy2mqtt::sim::deye_model::{InverterModel, ModelConfig, SimTime};
use energy2mqtt::sim::solarman::SolarmanSim;

const SERIAL: u32 = 2_712_345_678;
const RTT_MS: u64 = 150;

fn config(port: u16) -> InverterConfig {
    let mut c = InverterConfig::legacy("127.0.0.1".into());
    c.transport = InverterTransport::Solarman;
    c.port = Some(port);
    c.serial = Some(SERIAL);
    c
}

/// CPU time this thread has used (`/proc/thread-self/schedstat`, ns).
fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

fn main() {
    println!("energy2mqtt deye_bench");
    // The simulator on its own runtime and thread.
    let sim_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let sim = sim_rt
        .block_on(SolarmanSim::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            SERIAL,
            InverterModel::new(
                ModelConfig::default(),
                SimTime::from_system_time(std::time::SystemTime::now()),
            ),
        ))
        .expect("simulator");
    let port = sim.addr.port();

    // The bridge's side on a current-thread runtime: its CPU is this
    // thread's.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    println!("\n== 1. one poll at {RTT_MS} ms per round trip ==");
    sim.faults.latency_ms.store(RTT_MS, Ordering::Relaxed);
    let durations = rt.block_on(async {
        let mut poller = Poller::new(config(port));
        // The first poll also connects and reads the identity.
        let t = Instant::now();
        poller.poll().await.expect("first poll");
        let first = t.elapsed();
        let mut out = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            poller.poll().await.expect("poll");
            out.push(t.elapsed());
        }
        poller.close().await;
        (first, out)
    });
    let (first, mut polls) = durations;
    polls.sort();
    let median = polls[polls.len() / 2];
    let max = polls[polls.len() - 1];
    println!(
        "first poll (connect + identity + 2 blocks): {:.1} ms",
        first.as_secs_f64() * 1e3
    );
    println!(
        "steady poll (2 blocks): median {:.1} ms, max {:.1} ms over {} polls; target <= {} ms (3 x RTT + 50 ms)",
        median.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        polls.len(),
        3 * RTT_MS + 50
    );

    let original = rt.block_on(async {
        let counters = std::sync::Arc::new(LinkCounters::default());
        let mut link = Link::connect(&config(port), counters)
            .await
            .expect("connect");
        // The registers the original app read one at a time (~30).
        let regs: [u16; 30] = [
            70, 71, 72, 73, 74, 75, 76, 77, 78, 80, 81, 82, 84, 85, 86, 96, 97, 108, 169, 178, 183,
            184, 186, 187, 190, 191, 150, 79, 157, 192,
        ];
        let t = Instant::now();
        for r in regs {
            link.read(r, 1).await.expect("single read");
        }
        let d = t.elapsed();
        link.close().await;
        d
    });
    println!(
        "the original's 30 single-register reads on one connection: {:.0} ms",
        original.as_secs_f64() * 1e3
    );

    println!("\n== 2. CPU per poll, simulator answering at once ==");
    sim.faults.latency_ms.store(0, Ordering::Relaxed);
    const POLLS: u32 = 2000;
    let cpu = rt.block_on(async {
        let mut poller = Poller::new(config(port));
        poller.poll().await.expect("first poll");
        let c0 = thread_cpu();
        let t = Instant::now();
        for _ in 0..POLLS {
            let (sample, _) = poller.poll().await.expect("poll");
            std::hint::black_box(sample.to_map());
        }
        let wall = t.elapsed();
        let c1 = thread_cpu();
        poller.close().await;
        (c0.zip(c1).map(|(a, b)| b - a), wall)
    });
    match cpu {
        (Some(c), wall) => {
            let per = c / POLLS;
            println!(
                "CPU per poll (bridge side: V5 framing, tokio-modbus, decode, plausibility, JSON map): {:.1} us over {POLLS} polls ({:.1} us wall each)",
                per.as_secs_f64() * 1e6,
                (wall / POLLS).as_secs_f64() * 1e6
            );
            // Share of one core at the default 5 s poll interval.
            println!(
                "=> at one poll per 5 s: {:.5} % of one core",
                per.as_secs_f64() / 5.0 * 100.0
            );
        }
        (None, _) => println!("CPU per poll: not measured (/proc/thread-self/schedstat missing)"),
    }
    drop(sim);
}
