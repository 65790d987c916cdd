//! Real parts for end-to-end tests: brokers (the embedded broker in its
//! own process, Debian's Mosquitto), the bridge binary, an MQTT client.
#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub const BIN: &str = env!("CARGO_BIN_EXE_energy2mqtt");

/// The logger serial the tests' Deye simulators answer to.
pub const DEYE_SERIAL: u32 = 2_712_345_678;

/// A simulated Deye behind a Solarman V5 logger on a free loopback port,
/// answering after 5 ms.
pub async fn deye_sim() -> energy2mqtt::sim::solarman::SolarmanSim {
    use energy2mqtt::sim::deye_model::{InverterModel, ModelConfig, SimTime};
    let model = InverterModel::new(
        ModelConfig::default(),
        SimTime::from_system_time(std::time::SystemTime::now()),
    );
    let sim = energy2mqtt::sim::solarman::SolarmanSim::start(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        DEYE_SERIAL,
        model,
    )
    .await
    .expect("simulator");
    sim.faults
        .latency_ms
        .store(5, std::sync::atomic::Ordering::Relaxed);
    sim
}

/// Which broker a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    Embedded,
    Mosquitto,
}

/// The embedded broker always; Mosquitto when `E2M_TEST_MOSQUITTO=1`, and
/// then it must be installed: a missing mosquitto fails the test.
pub fn brokers() -> Vec<BrokerKind> {
    let mut out = vec![BrokerKind::Embedded];
    if std::env::var("E2M_TEST_MOSQUITTO").is_ok_and(|v| v == "1") {
        let found = Command::new("mosquitto")
            .arg("-h")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(
            found,
            "E2M_TEST_MOSQUITTO=1 but `mosquitto` is not installed (apt-get install mosquitto)"
        );
        out.push(BrokerKind::Mosquitto);
    } else {
        eprintln!("Mosquitto suite not run: set E2M_TEST_MOSQUITTO=1 to run it");
    }
    out
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while std::time::Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A broker in its own process, so it can be stopped and started again.
pub struct Broker {
    pub kind: BrokerKind,
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Mosquitto with `persistence true` (sessions survive a restart).
    persistent: bool,
}

impl Broker {
    pub fn start(kind: BrokerKind) -> Self {
        let mut b = Self {
            kind,
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            persistent: false,
        };
        b.spawn();
        b
    }

    /// Mosquitto keeping sessions and retained messages on disk across a
    /// [`restart_gracefully`](Self::restart_gracefully), as a real
    /// installation does.
    pub fn mosquitto_persistent() -> Self {
        let mut b = Self {
            kind: BrokerKind::Mosquitto,
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            persistent: true,
        };
        b.spawn();
        b
    }

    /// SIGTERM (Mosquitto writes its database), then start again on the
    /// same port after `down`.
    pub fn restart_gracefully(&mut self, down: Duration) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
        std::thread::sleep(down);
        self.spawn();
    }

    fn spawn(&mut self) {
        let child = match self.kind {
            BrokerKind::Embedded => Command::new(BIN)
                .arg("broker")
                .env_clear()
                .env("E2M_BROKER__LISTEN", format!("127.0.0.1:{}", self.port))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn(),
            BrokerKind::Mosquitto => {
                let conf = self.dir.path().join("mosquitto.conf");
                let persistence = if self.persistent {
                    // Started as root, Mosquitto drops to its own user, which
                    // must be able to write its database here.
                    use std::os::unix::fs::PermissionsExt;
                    let db = self.dir.path().join("db");
                    std::fs::create_dir_all(&db).expect("db dir");
                    for (p, mode) in [(self.dir.path(), 0o711), (db.as_path(), 0o777)] {
                        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                            .expect("chmod");
                    }
                    format!("persistence true\npersistence_location {}/\n", db.display())
                } else {
                    "persistence false\n".to_owned()
                };
                std::fs::write(
                    &conf,
                    format!(
                        "listener {} 127.0.0.1\nallow_anonymous true\n{persistence}",
                        self.port
                    ),
                )
                .expect("write mosquitto.conf");
                Command::new("mosquitto")
                    .arg("-c")
                    .arg(&conf)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
            }
        }
        .expect("start the broker");
        self.child = Some(child);
        assert!(
            wait_for_port(self.port, Duration::from_secs(10)),
            "{:?} broker did not listen on {}",
            self.kind,
            self.port
        );
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The bridge binary, its log captured in a file.
pub struct Bridge {
    child: Option<Child>,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Bridge {
    /// `energy2mqtt run` against `broker_url` with `toml` as its config file
    /// and quick Home Assistant timings.
    pub fn start(broker_url: &str, toml: &str, extra_env: &[(&str, &str)]) -> Self {
        Self::start_with_args(broker_url, toml, extra_env, &[])
    }

    /// [`start`](Self::start) with extra arguments after `run`.
    pub fn start_with_args(
        broker_url: &str,
        toml: &str,
        extra_env: &[(&str, &str)],
        args: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("config.toml");
        std::fs::write(&config, toml).expect("write config");
        let log = dir.path().join("bridge.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(BIN);
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--log-level")
            .arg("debug")
            .env_clear()
            .env("E2M_MQTT__URL", broker_url)
            .env("E2M_MQTT__CLIENT_ID", format!("e2m-test-{}", free_port()))
            .env("E2M_HOMEASSISTANT__BIRTH_DELAY", "0s")
            .env("E2M_HOMEASSISTANT__CLEANUP_WINDOW", "1s")
            .env("E2M_STORAGE__DIR", dir.path().join("data"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(log_file);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start the bridge");
        Self {
            child: Some(child),
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Its `[storage] dir`.
    pub fn data_dir(&self) -> PathBuf {
        self._dir.path().join("data")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The exit code, if the bridge ends by itself within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// `kill -9`: no chance to say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, as `docker stop` sends; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let started = std::time::Instant::now();
        let deadline = started + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                if status.code() != Some(0) {
                    // The caller's assertion shows only the code: say why.
                    eprintln!(
                        "bridge ended with {status} after {:?} of SIGTERM:\n{}",
                        started.elapsed(),
                        self.log_text()
                    );
                }
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        eprintln!(
            "bridge still running 10 s after SIGTERM, killed:\n{}",
            self.log_text()
        );
        None
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A received message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
}

impl Msg {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

/// A plain MQTT client, as Home Assistant or a user would be.
pub struct Client {
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Msg>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    pub async fn connect(port: u16, subscriptions: &[&str]) -> Self {
        let mut opts = MqttOptions::new(format!("test-{}", free_port()), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(Msg {
                            topic: p.topic,
                            payload: p.payload,
                            retain: p.retain,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx.recv())
            .await
            .expect("test client connects");
        for s in subscriptions {
            client
                .subscribe(*s, QoS::AtLeastOnce)
                .await
                .expect("subscribe");
            tokio::time::timeout(Duration::from_secs(5), ready_rx.recv())
                .await
                .expect("suback");
        }
        Self { client, rx, task }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.into())
            .await
            .expect("publish");
    }

    /// The first message for which `pred` holds, within `timeout`.
    pub async fn expect(&mut self, timeout: Duration, pred: impl Fn(&Msg) -> bool) -> Option<Msg> {
        let deadline = Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) if pred(&m) => return Some(m),
                Ok(Some(_)) => continue,
                _ => return None,
            }
        }
    }

    /// Everything that arrives within `window`.
    pub async fn collect(&mut self, window: Duration) -> Vec<Msg> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            out.push(m);
        }
        out
    }

    pub fn drain(&mut self) {
        while self.rx.try_recv().is_ok() {}
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn topic_is(t: &'static str) -> impl Fn(&Msg) -> bool {
    move |m| m.topic == t
}

pub fn online(m: &Msg) -> bool {
    m.topic == "energy2mqtt/bridge/state" && m.json()["state"] == "online"
}

pub fn offline(m: &Msg) -> bool {
    m.topic == "energy2mqtt/bridge/state" && m.json()["state"] == "offline"
}

/// A file beside the crate, for tests that compare with checked-in output.
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The demo's configuration with every simulator on a free port, for
/// `energy2mqtt demo --config`: the file's `[[inverter]]` and `[[plug]]`
/// arrays replace the built-in ones, so tests never depend on the fixed
/// ports the demo documents for users.
pub fn demo_config_on_free_ports() -> String {
    let demo = std::fs::read_to_string(repo_path("config/demo.toml")).expect("config/demo.toml");
    demo.lines()
        .map(|line| {
            if line.trim_start().starts_with("port =") {
                format!("port = {}", free_port())
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn write_file(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).expect("create");
    f.write_all(content.as_bytes()).expect("write");
    p
}

/// The interpreter of the interop venv (`E2M_INTEROP_PYTHON`, else the
/// `.venv-interop` that `.ci/run` makes), for tests against independent
/// Python implementations. `None`, said on stderr, when it is missing;
/// under `CI=true` a missing venv fails the test. `what` names the test
/// for that message, `pip` what to install.
pub fn interop_python(what: &str, pip: &str) -> Option<PathBuf> {
    let p = std::env::var_os("E2M_INTEROP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_path(".venv-interop/bin/python"));
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but there is no interop venv at {} (.ci/run installs {pip} there)",
        p.display()
    );
    eprintln!(
        "{what} not run: no venv at {} (python3 -m venv .venv-interop && .venv-interop/bin/pip install {pip})",
        p.display()
    );
    None
}

/// What tests/interop/fake_push.py needs.
pub const FAKE_PUSH_PIP: &str = "http_ece==1.2.1 cryptography==50.0.2";

pub const PUSH_BIN: &str = env!("CARGO_BIN_EXE_energy2mqtt-push");

/// tests/interop/fake_push.py `serve`: a push service that decrypts with
/// `http_ece` and checks VAPID with `cryptography`, and an ntfy server,
/// on a free loopback port; killed when dropped.
pub struct FakePush {
    child: Child,
    pub port: u16,
    /// `{"ok": <PushSubscription JSON>, "gone": …, "busy": …, "small": …}`.
    pub subscriptions: serde_json::Value,
}

impl FakePush {
    pub fn start(python: &Path) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(python)
            .arg(repo_path("tests/interop/fake_push.py"))
            .arg("serve")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the fake push service");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the fake's first line");
        let info: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the fake's JSON line {line:?}: {e}"));
        Self {
            child,
            port: info["port"].as_u64().expect("port") as u16,
            subscriptions: info["subscriptions"].clone(),
        }
    }

    /// Everything it received so far, in order (GET /messages).
    pub fn messages(&self) -> Vec<serde_json::Value> {
        use std::io::Read;
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return Vec::new();
        };
        let _ = write!(s, "GET /messages HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        buf.split_once("\r\n\r\n")
            .and_then(|(_, body)| serde_json::from_str(body).ok())
            .unwrap_or_default()
    }
}

/// A child process killed when the test ends, however it ends.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` every 50 ms until it holds; panics naming `what` after
/// `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

impl Drop for FakePush {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(feature = "ble")]
pub mod balancer_house;
pub mod fake_bluez;
