//! Shelly Gen2+ plugs: our client and device task against the simulated
//! Plus Plug S on loopback (identity, values, switching with read-back,
//! passwords, a busy or unreachable device), and the simulator driven by
//! aioshelly, Home Assistant's Shelly library, so that what our driver is
//! tested against is what Home Assistant accepts as a Shelly.

mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use energy2mqtt::drivers::health::Failure;
use energy2mqtt::drivers::shelly::client::{BUSY_BACKOFF, NEEDS_USER_RETRY};
use energy2mqtt::drivers::shelly::{ShellyClient, ShellyError, ShellyLink};
use energy2mqtt::drivers::{DeviceInfo, DriverEvent, DriverHandle};
use energy2mqtt::model::{DeviceCommand, PlugReading, SwitchState};
use energy2mqtt::sim::shelly::{ShellySim, SimConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "plug pass 42";
const PIN: &str = "aioshelly==13.35.0";

/// Exact numbers: 100 W at 230 V, 38.5 °C, −58 dBm, 12 345.9 Wh so far.
fn config() -> SimConfig {
    SimConfig {
        load_w: 100.0,
        voltage_v: 230.0,
        temperature_c: 38.5,
        rssi_dbm: -58,
        energy_wh: 12_345.9,
        ..SimConfig::default()
    }
}

async fn sim(config: SimConfig) -> ShellySim {
    ShellySim::start(SocketAddr::from(([127, 0, 0, 1], 0)), config)
        .await
        .expect("simulator")
}

fn client(sim: &ShellySim, password: Option<&str>) -> ShellyClient {
    ShellyClient::new(
        "127.0.0.1",
        sim.addr.port(),
        password,
        Duration::from_secs(2),
    )
}

fn link(sim: &ShellySim, password: Option<&str>, poll: Duration) -> ShellyLink {
    ShellyLink {
        id: "kettle".into(),
        host: "127.0.0.1".into(),
        port: sim.addr.port(),
        password: password.map(str::to_owned),
        switch_id: 0,
        timeout: Duration::from_millis(500),
        poll_interval: poll,
    }
}

struct Task {
    events: mpsc::Receiver<DriverEvent>,
    handle: DriverHandle,
    stop: CancellationToken,
    seen: Vec<DriverEvent>,
}

impl Task {
    fn start(link: ShellyLink) -> Self {
        let (tx, events) = mpsc::channel(64);
        let stop = CancellationToken::new();
        let handle = energy2mqtt::drivers::shelly::spawn(link, tx, stop.clone());
        Self {
            events,
            handle,
            stop,
            seen: Vec::new(),
        }
    }

    /// The first event `want` accepts within `within`; fails the test with
    /// everything seen meanwhile.
    async fn next(
        &mut self,
        within: Duration,
        mut want: impl FnMut(&DriverEvent) -> bool,
    ) -> DriverEvent {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(ev)) => {
                    self.seen.push(ev.clone());
                    if want(&ev) {
                        return ev;
                    }
                }
                Ok(None) => panic!("the task ended; seen: {:#?}", self.seen),
                Err(_) => panic!("no such event within {within:?}; seen: {:#?}", self.seen),
            }
        }
    }

    async fn reading(&mut self, mut want: impl FnMut(&PlugReading) -> bool) -> PlugReading {
        let ev = self
            .next(Duration::from_secs(5), |ev| match ev {
                DriverEvent::Readings { reading, .. } => reading.plug().is_some_and(&mut want),
                _ => false,
            })
            .await;
        match ev {
            DriverEvent::Readings { reading, .. } => reading.plug().cloned().unwrap_or_default(),
            _ => unreachable!(),
        }
    }

    fn switch(&self, state: SwitchState) {
        self.handle
            .commands
            .send(DeviceCommand::Switch(state))
            .expect("task running");
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[tokio::test]
async fn the_client_reads_identity_and_status_in_one_request_each() {
    let plug = sim(config()).await;
    let mut c = client(&plug, None);
    let info = c.device_info().await.expect("device info");
    assert_eq!(info.id, plug.id());
    assert_eq!(info.mac, plug.mac());
    assert_eq!(info.model.as_deref(), Some("SNPL-00112EU"));
    assert_eq!(info.generation, Some(2));
    assert_eq!(info.firmware().as_deref(), Some("1.4.4"));
    assert!(!info.auth_en);

    let before = c.requests();
    let s = c.status(0).await.expect("status");
    assert_eq!(c.requests() - before, 1, "one request per poll");
    assert!(s.switch.output);
    assert_eq!(s.switch.apower, Some(100.0));
    assert_eq!(s.switch.voltage, Some(230.0));
    assert_eq!(s.switch.current, Some(0.435));
    assert_eq!(s.switch.temperature.and_then(|t| t.t_c), Some(38.5));
    let total = s.switch.aenergy.map(|e| e.total).expect("aenergy");
    assert!((12_345.9..12_346.5).contains(&total), "{total}");
    assert_eq!(s.rssi, Some(-58));
    assert!(s.uptime_s.is_some());

    // A switch the device does not have is the user's to fix.
    let e = c.status(3).await.expect_err("no switch 3");
    assert!(matches!(e, ShellyError::NoSuchSwitch(_)), "{e}");
    assert!(e.to_string().contains("it has: 0"), "{e}");
    assert!(matches!(e.failure(), Failure::NeedsUser { .. }));
}

#[tokio::test]
async fn a_gen1_device_is_named_as_such() {
    let plug = sim(config()).await;
    plug.knobs.gen1.store(true, Ordering::Relaxed);
    let e = client(&plug, None).device_info().await.expect_err("gen1");
    assert!(matches!(e, ShellyError::Unsupported(_)), "{e}");
    assert!(e.to_string().contains("Gen1 device (SHPLG-S)"), "{e}");
    assert!(matches!(e.failure(), Failure::NeedsUser { .. }));
    let mut task = Task::start(link(&plug, None, Duration::from_secs(60)));
    let ev = task
        .next(Duration::from_secs(5), |ev| {
            matches!(ev, DriverEvent::Problem { .. })
        })
        .await;
    assert!(
        matches!(ev, DriverEvent::Problem { message, .. } if message.contains("Gen2 and later"))
    );
}

#[tokio::test]
async fn the_energy_counter_counts_up_with_time() {
    let plug = sim(SimConfig {
        load_w: 2000.0,
        ..config()
    })
    .await;
    let mut c = client(&plug, None);
    let total = |s: &energy2mqtt::drivers::shelly::rpc::DeviceStatus| {
        s.switch.aenergy.map(|e| e.total).expect("aenergy")
    };
    let first = total(&c.status(0).await.expect("status"));
    // 2 kW adds 0.556 Wh a second: poll until the counter has moved.
    let deadline = Instant::now() + Duration::from_secs(5);
    let later = loop {
        let t = total(&c.status(0).await.expect("status"));
        if t >= first + 0.05 || Instant::now() > deadline {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(later >= first + 0.05, "{first} -> {later}");
    // Off, it stands still.
    plug.set_on(false);
    let off = plug.energy_wh();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(plug.energy_wh(), off);
}

#[tokio::test]
async fn the_task_publishes_identity_and_the_plug_reading() {
    let plug = sim(config()).await;
    let mut task = Task::start(link(&plug, None, Duration::from_secs(60)));
    let ev = task
        .next(Duration::from_secs(5), |ev| {
            matches!(ev, DriverEvent::Identity { .. })
        })
        .await;
    let DriverEvent::Identity { device, info } = ev else {
        unreachable!()
    };
    assert_eq!(device, "kettle");
    assert_eq!(
        info,
        DeviceInfo {
            manufacturer: Some("Shelly".into()),
            model: Some("Shelly Plus Plug S".into()),
            serial_number: Some(plug.mac().to_owned()),
            sw_version: Some("1.4.4".into()),
            hw_version: Some("SNPL-00112EU".into()),
        }
    );
    let r = task.reading(|_| true).await;
    assert_eq!(
        r,
        PlugReading {
            on: true,
            power_w: Some(100.0),
            energy_total_kwh: Some(12.346),
            voltage_v: Some(230.0),
            current_a: Some(0.435),
            temperature_c: Some(38.5),
            overheated: false,
            overloaded: false,
            rssi_dbm: Some(-58),
            firmware: Some("1.4.4".into()),
            model: Some("Shelly Plus Plug S".into()),
            ..PlugReading::default()
        }
    );
    assert!(
        task.seen
            .iter()
            .any(|ev| matches!(ev, DriverEvent::Availability { online: true, .. })),
        "{:#?}",
        task.seen
    );
}

#[tokio::test]
async fn switching_reads_the_plug_back_at_once() {
    let plug = sim(config()).await;
    // A poll a minute: every reading after the first is a read-back.
    let mut task = Task::start(link(&plug, None, Duration::from_secs(60)));
    task.reading(|r| r.on).await;

    task.switch(SwitchState::Off);
    let r = task.reading(|r| !r.on).await;
    assert_eq!(r.power_w, Some(0.0));
    assert!(!plug.is_on());

    task.switch(SwitchState::Toggle);
    let r = task.reading(|r| r.on).await;
    assert_eq!(r.power_w, Some(100.0));
    assert!(plug.is_on());

    task.switch(SwitchState::Toggle);
    task.reading(|r| !r.on).await;
    assert!(!plug.is_on());

    task.switch(SwitchState::On);
    task.reading(|r| r.on).await;
    assert!(plug.is_on());
    assert_eq!(plug.switch_sets(), 4);
    // The button on the plug, seen at the next read (`get`).
    plug.set_on(false);
    task.handle
        .commands
        .send(DeviceCommand::Refresh)
        .expect("task running");
    task.reading(|r| !r.on).await;
    assert!(
        !task
            .seen
            .iter()
            .any(|ev| matches!(ev, DriverEvent::CommandFailed { .. })),
        "{:#?}",
        task.seen
    );
}

#[tokio::test]
async fn protection_trips_show_as_overloaded_and_overheated() {
    let plug = sim(config()).await;
    let mut task = Task::start(link(&plug, None, Duration::from_millis(100)));
    task.reading(|r| r.on && !r.overloaded).await;
    plug.set_load_w(3000.0);
    let r = task.reading(|r| r.overloaded).await;
    assert!(!r.on, "the relay opened: {r:?}");
    // The trip holds until the plug is switched on again.
    plug.set_load_w(100.0);
    task.switch(SwitchState::On);
    let r = task.reading(|r| r.on).await;
    assert!(!r.overloaded && !r.overheated, "{r:?}");
    plug.set_overheated(true);
    let r = task.reading(|r| r.overheated).await;
    assert!(!r.on && !r.overloaded, "{r:?}");
    // Too hot to switch on.
    task.switch(SwitchState::On);
    let r = task.reading(|r| r.overheated).await;
    assert!(!r.on, "{r:?}");
}

#[tokio::test]
async fn a_password_is_answered_with_digest_authentication() {
    let plug = sim(SimConfig {
        password: Some(PASSWORD.into()),
        ..config()
    })
    .await;
    let mut c = client(&plug, Some(PASSWORD));
    // The identity needs no password, and says one is set.
    let info = c.device_info().await.expect("device info");
    assert!(info.auth_en);
    assert_eq!(info.realm(), plug.id());

    // The first protected call learns the nonce (401, then the answer);
    // later calls reuse it with a growing nc: one request each.
    let before = c.requests();
    assert!(c.status(0).await.expect("status").switch.output);
    assert_eq!(c.requests() - before, 2);
    for _ in 0..3 {
        let before = c.requests();
        c.status(0).await.expect("status");
        assert_eq!(c.requests() - before, 1, "nonce reused");
    }
    assert!(c.set(0, false).await.expect("Switch.Set"));
    assert!(!plug.is_on());

    // Firmware that wants a fresh nonce each time: two requests, no error.
    plug.knobs.single_use_nonces.store(true, Ordering::Relaxed);
    // (The nonce in hand is good for one more.)
    c.switch_status(0).await.expect("status");
    for _ in 0..2 {
        let before = c.requests();
        assert!(!c.switch_status(0).await.expect("status").output);
        assert_eq!(c.requests() - before, 2);
    }
    plug.knobs.single_use_nonces.store(false, Ordering::Relaxed);
    // An expired nonce (stale=true) is renewed, not taken for a wrong
    // password.
    plug.knobs.nonce_ttl_ms.store(300, Ordering::Relaxed);
    c.status(0).await.expect("a nonce of 300 ms");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = c.requests();
    c.status(0).await.expect("renewed after stale=true");
    assert_eq!(c.requests() - before, 2);
    plug.knobs.nonce_ttl_ms.store(3_600_000, Ordering::Relaxed);

    // No password: the user must configure one.
    let e = client(&plug, None)
        .status(0)
        .await
        .expect_err("no password");
    assert_eq!(e, ShellyError::AuthRequired);
    assert_eq!(
        e.failure(),
        Failure::NeedsUser {
            offline_for: Some(NEEDS_USER_RETRY)
        }
    );
    assert!(e.to_string().contains("set `password`"), "{e}");

    // A wrong one, and the password changed on the device.
    let e = client(&plug, Some("guess"))
        .status(0)
        .await
        .expect_err("wrong password");
    assert!(matches!(e, ShellyError::WrongPassword { .. }), "{e}");
    assert!(matches!(e.failure(), Failure::NeedsUser { .. }));
    plug.set_password(Some("changed"));
    let e = c.status(0).await.expect_err("changed on the device");
    assert!(matches!(e, ShellyError::WrongPassword { .. }), "{e}");
    plug.set_password(Some(PASSWORD));
    c.status(0).await.expect("right again");
}

#[tokio::test]
async fn a_wrong_or_missing_password_is_reported_once_to_the_user() {
    let plug = sim(SimConfig {
        password: Some(PASSWORD.into()),
        ..config()
    })
    .await;
    for (password, says) in [
        (Some("guess"), "refused the password"),
        (None, "has a password"),
    ] {
        let mut task = Task::start(link(&plug, password, Duration::from_millis(100)));
        let ev = task
            .next(Duration::from_secs(5), |ev| {
                matches!(ev, DriverEvent::Problem { .. })
            })
            .await;
        let DriverEvent::Problem { device, message } = ev else {
            unreachable!()
        };
        assert_eq!(device, "kettle");
        assert!(message.contains(says), "{message}");
        task.next(Duration::from_secs(5), |ev| {
            matches!(ev, DriverEvent::Availability { online: false, .. })
        })
        .await;
        assert!(
            !task
                .seen
                .iter()
                .any(|ev| matches!(ev, DriverEvent::Readings { .. })),
            "{:#?}",
            task.seen
        );
    }
    // The right one: identity and readings.
    let mut task = Task::start(link(&plug, Some(PASSWORD), Duration::from_secs(60)));
    let r = task.reading(|_| true).await;
    assert_eq!(r.power_w, Some(100.0));
}

#[tokio::test]
async fn a_busy_device_is_rate_limited() {
    let plug = sim(config()).await;
    let mut c = client(&plug, None);
    c.status(0).await.expect("status");
    plug.knobs.busy.store(true, Ordering::Relaxed);
    let e = c.status(0).await.expect_err("503");
    assert_eq!(
        e,
        ShellyError::Busy {
            status: 503,
            retry_after: None
        }
    );
    assert_eq!(e.failure(), Failure::RateLimited { wait: BUSY_BACKOFF });
    plug.knobs.busy.store(false, Ordering::Relaxed);
    c.status(0).await.expect("back");
}

#[tokio::test]
async fn an_unreachable_device_times_out_goes_offline_and_comes_back() {
    let plug = sim(config()).await;
    let mut c = ShellyClient::new(
        "127.0.0.1",
        plug.addr.port(),
        None,
        Duration::from_millis(300),
    );
    c.status(0).await.expect("status");
    plug.set_offline(true);
    let started = Instant::now();
    let e = c.status(0).await.expect_err("offline");
    assert_eq!(e, ShellyError::Timeout(Duration::from_millis(300)));
    assert_eq!(e.failure(), Failure::Transient);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    plug.set_offline(false);
    c.status(0).await.expect("back");

    // The task: online, offline after two failed polls, online again.
    let mut task = Task::start(link(&plug, None, Duration::from_millis(100)));
    let availability = |want: bool| move |ev: &DriverEvent| matches!(ev, DriverEvent::Availability { online, .. } if *online == want);
    task.next(Duration::from_secs(5), availability(true)).await;
    plug.set_offline(true);
    task.next(Duration::from_secs(5), availability(false)).await;
    plug.set_offline(false);
    task.next(Duration::from_secs(5), availability(true)).await;

    // A closed port is unreachable at once.
    let port = plug.addr.port();
    drop(plug);
    let mut c = ShellyClient::new("127.0.0.1", port, None, Duration::from_millis(500));
    let deadline = Instant::now() + Duration::from_secs(3);
    let e = loop {
        match c.status(0).await {
            Err(e @ ShellyError::Unreachable(_)) => break e,
            other if Instant::now() > deadline => panic!("still answering: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    assert_eq!(e.failure(), Failure::Transient);
}

/// `POST /rpc` with JSON-RPC frames, as scripts and the Shelly app use it:
/// the 401 frame carries the challenge, the frame's `auth` object answers
/// it; `POST /rpc/<Method>` takes the parameters as a JSON body.
#[tokio::test]
async fn json_rpc_frames_over_http_post() {
    use energy2mqtt::drivers::shelly::digest;
    let plug = sim(SimConfig {
        password: Some(PASSWORD.into()),
        ..config()
    })
    .await;
    let http = energy2mqtt::https::plain_client_builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let url = format!("http://127.0.0.1:{}/rpc", plug.addr.port());
    let post = |body: serde_json::Value| {
        let req = http.post(&url).body(body.to_string());
        async move {
            let resp = req.send().await.expect("POST /rpc");
            let status = resp.status().as_u16();
            let text = resp.text().await.expect("body");
            let frame: serde_json::Value = serde_json::from_str(&text).expect("a frame");
            (status, frame)
        }
    };
    let (status, refused) =
        post(serde_json::json!({"id": 1, "src": "e2m-test", "method": "Switch.GetStatus", "params": {"id": 0}}))
            .await;
    assert_eq!(status, 401);
    assert_eq!(refused["id"], 1);
    assert_eq!(refused["src"], plug.id());
    assert_eq!(refused["dst"], "e2m-test");
    assert_eq!(refused["error"]["code"], 401);
    let challenge: serde_json::Value =
        serde_json::from_str(refused["error"]["message"].as_str().expect("text")).expect("JSON");
    assert_eq!(challenge["auth_type"], "digest");
    assert_eq!(challenge["algorithm"], "SHA-256");
    assert_eq!(challenge["realm"], plug.id());
    let nonce = challenge["nonce"]
        .as_u64()
        .expect("a numeric nonce")
        .to_string();

    let auth = digest::rpc_auth(plug.id(), &nonce, PASSWORD, 1, "e2m-cnonce");
    let (status, ok) = post(serde_json::json!({
        "id": 2, "src": "e2m-test", "method": "Switch.Set", "params": {"id": 0, "on": false}, "auth": auth,
    }))
    .await;
    assert_eq!(status, 200, "{ok}");
    assert_eq!(ok["result"]["was_on"], true);
    assert!(!plug.is_on());
    let wrong = digest::rpc_auth(plug.id(), &nonce, "guess", 2, "e2m-cnonce");
    let (status, no) = post(serde_json::json!({
        "id": 3, "src": "e2m-test", "method": "Switch.Set", "params": {"id": 0, "on": true}, "auth": wrong,
    }))
    .await;
    assert_eq!(
        (status, no["error"]["code"].clone()),
        (401, serde_json::json!(401))
    );
    assert!(!plug.is_on());

    // Without a password every frame is answered; unknown methods are 404.
    let open = sim(config()).await;
    let url = format!("http://127.0.0.1:{}/rpc", open.addr.port());
    let resp = http
        .post(&url)
        .body(r#"{"id":"a","src":"t","method":"Nope.Nope"}"#)
        .send()
        .await
        .expect("POST");
    let frame: serde_json::Value =
        serde_json::from_str(&resp.text().await.expect("body")).expect("frame");
    assert_eq!(frame["id"], "a");
    assert_eq!(frame["error"]["code"], 404);
    let resp = http
        .post(format!("{url}/Switch.Set"))
        .body(r#"{"id":0,"on":false}"#)
        .send()
        .await
        .expect("POST /rpc/Switch.Set");
    assert_eq!(resp.status().as_u16(), 200);
    let v: serde_json::Value =
        serde_json::from_str(&resp.text().await.expect("body")).expect("JSON");
    assert_eq!(v, serde_json::json!({"was_on": true}));
    assert!(!open.is_on());
}

/// curl's own RFC 7616 digest (SHA-256) against the simulator's HTTP RPC:
/// an independent check that the simulator authenticates as a device does.
#[tokio::test]
async fn curl_digest_is_accepted_by_the_simulator() {
    if Command::new("curl").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but curl is missing"
        );
        eprintln!("curl digest check not run: no curl");
        return;
    }
    let plug = sim(SimConfig {
        password: Some(PASSWORD.into()),
        ..config()
    })
    .await;
    let url = format!(
        "http://127.0.0.1:{}/rpc/Switch.GetStatus?id=0",
        plug.addr.port()
    );
    let curl = |user: String| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let out = Command::new("curl")
                .args(["-s", "--max-time", "10", "--digest", "-u"])
                .arg(user)
                .args(["-w", "\n%{http_code}"])
                .arg(url)
                .output()
                .expect("curl");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    let ok = curl(format!("admin:{PASSWORD}")).await.expect("join");
    let (body, code) = ok.rsplit_once('\n').expect("status line");
    assert_eq!(code, "200", "{ok}");
    let v: serde_json::Value = serde_json::from_str(body).expect("JSON");
    assert_eq!(v["output"], true);
    assert_eq!(v["apower"], 100.0);
    let wrong = curl("admin:guess".into()).await.expect("join");
    assert!(wrong.ends_with("\n401"), "{wrong}");
}

// ---------------------------------------------------------------------------
// aioshelly

/// Runs tests/interop/shelly_client.py to completion (killed after
/// `limit`) and reads its JSON.
fn aioshelly(
    python: &Path,
    port: u16,
    password: Option<&str>,
    limit: Duration,
) -> serde_json::Value {
    let mut cmd = Command::new(python);
    cmd.arg(support::repo_path("tests/interop/shelly_client.py"))
        .arg(port.to_string());
    if let Some(pw) = password {
        cmd.arg(pw);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the aioshelly client");
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
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the aioshelly client ran longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    assert!(
        status.success(),
        "aioshelly client failed:\n{stdout}\n{stderr}"
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"))
}

async fn run_aioshelly(
    python: &Path,
    sim: &ShellySim,
    password: Option<&str>,
) -> serde_json::Value {
    let python = python.to_owned();
    let port = sim.addr.port();
    let password = password.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        aioshelly(&python, port, password.as_deref(), Duration::from_secs(90))
    })
    .await
    .expect("join")
}

fn assert_drove_the_plug(v: &serde_json::Value, sim: &ShellySim, auth: bool) {
    assert_eq!(v.get("error"), None, "{v:#}");
    assert_eq!(v["info"]["id"], sim.id());
    assert_eq!(v["info"]["mac"], sim.mac());
    assert_eq!(v["info"]["model"], "SNPL-00112EU");
    assert_eq!(v["info"]["gen"], 2);
    assert_eq!(v["info"]["auth_en"], auth);
    assert_eq!(v["initialized"], true);
    assert_eq!(v["requires_auth"], auth);
    assert_eq!(v["gen"], 2);
    assert_eq!(v["model"], "SNPL-00112EU");
    assert_eq!(v["hostname"], sim.id());
    assert_eq!(v["name"], sim.id(), "no name set: the hostname");
    assert_eq!(v["firmware_version"], "20241011-114455/1.4.4-g6d2a586");
    assert_eq!(v["firmware_supported"], true);
    let s = &v["status"];
    assert_eq!(s["output"], true);
    assert_eq!(s["apower"], 100.0);
    assert_eq!(s["voltage"], 230.0);
    assert_eq!(s["current"], 0.435);
    assert_eq!(s["temperature_c"], 38.5);
    assert_eq!(s["errors"], serde_json::json!([]));
    let total = s["aenergy_total"].as_f64().expect("aenergy.total");
    assert!((12_345.9..12_350.0).contains(&total), "{total}");
    assert_eq!(v["rssi"], -58);
    assert_eq!(v["power_limit"], 2500.0);
    // Switch.Set off and on, seen through NotifyStatus and read back.
    assert_eq!(v["notified_off"], true);
    assert_eq!(v["after_off"], false);
    assert_eq!(v["apower_off"], 0.0);
    assert_eq!(v["notified_on"], true);
    assert_eq!(v["after_on"], true);
    assert_eq!(v["polled"]["output"], true);
    assert_eq!(v["polled"]["apower"], 100.0);
    assert_eq!(v["updates"], serde_json::json!(["INITIALIZED", "STATUS"]));
    assert_eq!(v["bad_switch"], -105);
    // aiohttp's digest on the plain HTTP RPC.
    assert_eq!(v["http_status"], 200);
    assert_eq!(v["http_output"], true);
    assert!(sim.is_on());
}

#[tokio::test]
async fn aioshelly_drives_the_simulator_with_and_without_a_password() {
    let Some(python) = support::interop_python("aioshelly interop test", PIN) else {
        return;
    };
    let open = sim(config()).await;
    let v = run_aioshelly(&python, &open, None).await;
    assert_drove_the_plug(&v, &open, false);
    assert_eq!(open.switch_sets(), 2);

    let locked = sim(SimConfig {
        password: Some(PASSWORD.into()),
        ..config()
    })
    .await;
    let v = run_aioshelly(&python, &locked, Some(PASSWORD)).await;
    assert_drove_the_plug(&v, &locked, true);
    assert_eq!(locked.switch_sets(), 2);

    // Home Assistant's "invalid authentication", for a wrong or missing
    // password; the relay untouched.
    for password in [Some("guess"), None] {
        let v = run_aioshelly(&python, &locked, password).await;
        assert_eq!(v["error"], "InvalidAuthError", "{password:?}: {v:#}");
        assert_eq!(v["info"]["auth_en"], true);
    }
    assert_eq!(locked.switch_sets(), 2);
}
