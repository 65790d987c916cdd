//! Our Solarman V5 simulator read by pysolarmanv5 (PyPI), the client most
//! Deye tools are built on: proof that the simulator speaks real V5, so
//! the bridge's tests against it mean something.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;

use energy2mqtt::sim::deye_model::{InverterModel, ModelConfig, SimTime};
use energy2mqtt::sim::solarman::SolarmanSim;

const SERIAL: u32 = 2_712_345_678;

/// What tests/interop/pysolarmanv5_client.py needs in the interop venv.
const PYSOLARMANV5: &str = "pysolarmanv5==3.0.6";

fn model() -> InverterModel {
    InverterModel::new(
        ModelConfig::default(),
        SimTime::from_system_time(std::time::SystemTime::now()),
    )
}

async fn run_client(python: &Path, sim: &SolarmanSim) -> serde_json::Value {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/pysolarmanv5_client.py");
    let port = sim.addr.port().to_string();
    let python = python.to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(port)
            .arg(SERIAL.to_string())
            .arg("1234567890")
            .output()
            .expect("run python")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "pysolarmanv5 failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

fn regs(v: &serde_json::Value) -> Vec<u16> {
    v.as_array()
        .expect("a register list")
        .iter()
        .map(|x| x.as_u64().expect("a number") as u16)
        .collect()
}

fn check(out: &serde_json::Value) {
    let identity = regs(&out["identity"]);
    assert_eq!(identity.len(), 23);
    assert_eq!(identity[0], 0x0003, "single-phase LV hybrid");
    let rated = u32::from(identity[16]) | (u32::from(identity[17]) << 16);
    assert_eq!(rated, 60_000, "6000.0 W in 0.1 W");
    assert_eq!(regs(&out["block_a"]).len(), 54);
    let b = regs(&out["block_b"]);
    assert_eq!(b.len(), 45);
    // 178 = 175 + 169 − 166, read through a foreign client.
    let s = |a: usize| i32::from(b[a - 150] as i16);
    assert_eq!(s(178), s(175) + s(169) - s(166));
    // The signed read comes a round trip later and the model moves with
    // the clock: the same value within a few watts, with the same sign
    // (read unsigned, a charge would show as ~65 kW).
    let signed = out["battery_power"].as_i64().unwrap_or(i64::MAX);
    let block = i64::from(b[190 - 150] as i16);
    assert!((signed - block).abs() <= 50, "{signed} vs {block}");
    assert!(
        signed.abs() < 20_000,
        "battery power read as unsigned: {signed}"
    );
    assert_eq!(regs(&out["written"]), vec![3210]);
    assert_eq!(out["too_many"], "IllegalDataValueError");
    let wrong = out["wrong_serial"].as_str().unwrap_or_default();
    assert!(
        wrong.contains("serial"),
        "a wrong serial is refused with a serial error, got {wrong:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pysolarmanv5_reads_and_writes_the_simulator() {
    let python = support::interop_python("pysolarmanv5 interop test", PYSOLARMANV5);
    let Some(python) = python else {
        return;
    };
    let sim = SolarmanSim::start(SocketAddr::from(([127, 0, 0, 1], 0)), SERIAL, model())
        .await
        .expect("simulator");
    let out = run_client(&python, &sim).await;
    check(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pysolarmanv5_copes_with_the_simulated_quirks() {
    let python = support::interop_python("pysolarmanv5 interop test", PYSOLARMANV5);
    let Some(python) = python else {
        return;
    };
    let sim = SolarmanSim::start(SocketAddr::from(([127, 0, 0, 1], 0)), SERIAL, model())
        .await
        .expect("simulator");
    // What pysolarmanv5 3.0.6 handles: the double CRC, heartbeats sent as
    // their own writes before the reply, and the AT banner on connect.
    sim.faults.double_crc.store(true, Ordering::Relaxed);
    sim.faults.heartbeat.store(true, Ordering::Relaxed);
    sim.faults.at_banner.store(true, Ordering::Relaxed);
    let out = run_client(&python, &sim).await;
    check(&out);
}
