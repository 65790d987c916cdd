//! Our Tapo plug simulator driven by python-kasa (PyPI), the library behind
//! Home Assistant's tplink integration: proof that the simulator speaks real
//! KLAP v2 and the smart protocol, so the driver's tests against it mean
//! something.

mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use energy2mqtt::sim::tapo::{Flavour, Load, TapoSim};

const USER: &str = "plug-owner@example.com";
const PASS: &str = "correct horse battery staple";
const PIN: &str = "python-kasa==0.12.0";

fn not_run(what: &Path) -> Option<PathBuf> {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but there is no {} (.ci/run installs {PIN} in .venv-interop)",
        what.display()
    );
    eprintln!(
        "python-kasa interop test not run: no {} (python3 -m venv .venv-interop && .venv-interop/bin/pip install {PIN})",
        what.display()
    );
    None
}

/// The interpreter with python-kasa (the shared rule: under CI it must
/// be there).
fn interop_python() -> Option<PathBuf> {
    support::interop_python("python-kasa interop test", PIN)
}

/// The `kasa` CLI that pip installed beside the interpreter.
fn kasa_cli(python: &Path) -> Option<PathBuf> {
    let cli = python.with_file_name("kasa");
    if cli.exists() {
        Some(cli)
    } else {
        not_run(&cli)
    }
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs a command to completion, killing it after `limit` so a client
/// that hangs fails the test instead of stalling the suite.
fn run(mut cmd: Command, limit: Duration) -> Run {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the client");
    // Drained on threads: a client that writes more than a pipe holds
    // would otherwise block before exiting.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the client") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the client ran longer than {limit:?}:\n{}\n{}",
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Run {
        ok: status.success(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// `kasa … <command>` against the simulator, as spec §9 runs it.
async fn kasa(cli: &Path, sim: &TapoSim, command: &str) -> Run {
    let mut cmd = Command::new(cli);
    cmd.args(["--host", "127.0.0.1", "--port"])
        .arg(sim.addr.port().to_string())
        .args(["--username", USER, "--password", PASS])
        .args([
            "--type",
            "smart",
            "--encrypt-type",
            "KLAP",
            "--login-version",
            "2",
        ])
        .args(["--timeout", "10", command]);
    tokio::task::spawn_blocking(move || run(cmd, Duration::from_secs(90)))
        .await
        .expect("join")
}

fn assert_ok(what: &str, r: &Run) {
    assert!(r.ok, "kasa {what} failed:\n{}\n{}", r.stdout, r.stderr);
}

async fn start(flavour: Flavour, load: Load) -> TapoSim {
    TapoSim::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        flavour,
        load,
        USER,
        PASS,
    )
    .await
    .expect("simulator")
}

/// state, off, on through the CLI; the simulator's relay must follow.
async fn state_off_on(cli: &Path, sim: &TapoSim, nickname: &str, model: &str) -> String {
    assert!(sim.is_on(), "the simulated plug starts switched on");
    let state = kasa(cli, sim, "state").await;
    assert_ok("state", &state);
    assert!(
        state.stdout.contains(nickname) && state.stdout.contains(model),
        "state names the device ({nickname}, {model}):\n{}",
        state.stdout
    );
    assert_ok("off", &kasa(cli, sim, "off").await);
    assert!(!sim.is_on(), "kasa off switched the simulated relay off");
    assert_eq!(sim.power_w(), 0.0);
    assert_ok("on", &kasa(cli, sim, "on").await);
    assert!(sim.is_on(), "kasa on switched it back on");
    state.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_kasa_reads_and_switches_a_p110() {
    let Some(cli) = interop_python().and_then(|p| kasa_cli(&p)) else {
        return;
    };
    let sim = start(Flavour::P110, Load::Boiler { watts: 2000.0 }).await;
    let state = state_off_on(&cli, &sim, "E2M Sim Boiler", "P110").await;
    // python-kasa only shows the energy module when our component list,
    // get_energy_usage and get_emeter_data all satisfied it.
    assert!(
        state.contains("Current consumption") && state.contains("Voltage"),
        "energy features present:\n{state}"
    );
    // One login per CLI run: no re-handshakes while the session lives.
    assert_eq!(sim.handshakes(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_kasa_reads_and_switches_a_p100_that_closes_connections() {
    let Some(cli) = interop_python().and_then(|p| kasa_cli(&p)) else {
        return;
    };
    let sim = start(Flavour::P100, Load::Heater { watts: 1500.0 }).await;
    assert!(sim.knobs.close_after_reply.load(Ordering::Relaxed));
    let state = state_off_on(&cli, &sim, "E2M Sim Heater", "P100").await;
    assert!(
        !state.contains("Current consumption"),
        "a P100 has no energy module:\n{state}"
    );
    assert_eq!(sim.handshakes(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_kasa_logs_in_again_after_the_session_expires() {
    let Some(python) = interop_python() else {
        return;
    };
    let sim = start(Flavour::P110, Load::Constant { watts: 2000.0 }).await;
    sim.knobs.session_ttl_s.store(1, Ordering::Relaxed);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/kasa_client.py");
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .arg(sim.addr.port().to_string())
        .args([USER, PASS, "2"]);
    let r = tokio::task::spawn_blocking(move || run(cmd, Duration::from_secs(90)))
        .await
        .expect("join");
    assert!(r.ok, "kasa_client.py failed:\n{}\n{}", r.stdout, r.stderr);
    let out: serde_json::Value = serde_json::from_str(&r.stdout).expect("the script prints JSON");
    for read in ["first", "second"] {
        assert_eq!(out[read]["alias"], "E2M Sim Plug", "{out}");
        assert_eq!(out[read]["model"], "P110");
        assert_eq!(out[read]["is_on"], true);
        assert_eq!(out[read]["power_w"], 2000.0);
    }
    assert!(
        sim.handshakes() >= 2,
        "the second update needed a new session, got {} handshakes",
        sim.handshakes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_kasa_refuses_a_plug_bound_to_another_account() {
    let Some(cli) = interop_python().and_then(|p| kasa_cli(&p)) else {
        return;
    };
    let sim = start(Flavour::P110, Load::Constant { watts: 100.0 }).await;
    sim.knobs.wrong_credentials.store(true, Ordering::Relaxed);
    let r = kasa(&cli, &sim, "state").await;
    let all = format!("{}\n{}", r.stdout, r.stderr);
    assert!(
        !all.contains("E2M Sim Plug"),
        "no device data without the right credentials:\n{all}"
    );
    assert!(
        all.contains("did not match our challenge"),
        "python-kasa's wrong-credentials error:\n{all}"
    );
    // A credential error is not retried.
    assert_eq!(sim.handshakes(), 1);
    assert!(sim.is_on());
}
