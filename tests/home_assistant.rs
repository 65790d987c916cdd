//! A real Home Assistant Core (pinned in tests/ha/install.sh) against
//! Debian's Mosquitto and `energy2mqtt demo`: every entity the bridge
//! announces must show up in Home Assistant, on the right device, with a
//! state, without a warning in Home Assistant's log; commands from Home
//! Assistant must reach the devices; the Energy dashboard must accept the
//! energy sensors; restarts of either side and configuration changes must
//! leave no unavailable entity and no ghost.
//!
//! Slow (minutes: it waits for Home Assistant's 5-minute statistics run)
//! and needs the HA venv, so it only runs with `E2M_TEST_HA=1`; then it
//! fails, never skips, when Home Assistant cannot be installed or started.
//! `.ci/run` installs the venv (tests/ha/install.sh) and runs it.
//!
//! Everything listens on loopback, on free ports.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

#[path = "ha/demo_config.rs"]
mod demo_config;
use demo_config::{DEMO_PLUGS, demo_overlay};

const BIN: &str = env!("CARGO_BIN_EXE_energy2mqtt");
const HA_VERSION: &str = "2025.4.4";
/// The demo's `homeassistant.birth_delay`: the bridge republishes this
/// long after Home Assistant says it is online.
const BIRTH_DELAY: Duration = Duration::from_secs(1);

/// Entities whose `unknown` state is the truth, with the reason; the docs
/// (docs/HOME_ASSISTANT.md) list the same.
const UNKNOWN_ALLOWED: &[(&str, &str)] = &[
    ("button.", "a button has no state until it is first pressed"),
    ("event.", "an event entity is unknown until the first event"),
    (
        "_timer_off_at",
        "a plug's timer end: unknown while no timer runs",
    ),
];

/// Loggers whose warnings and errors fail the test: what the bridge's
/// discovery and states can cause.
const WATCHED_LOGGERS: &[&str] = &[
    "homeassistant.components.mqtt",
    "homeassistant.helpers.template",
    "homeassistant.helpers.entity",
    "homeassistant.helpers.event",
    "homeassistant.components.sensor",
    "homeassistant.components.binary_sensor",
    "homeassistant.components.switch",
    "homeassistant.components.number",
    "homeassistant.components.select",
    "homeassistant.components.button",
    "homeassistant.components.event",
    "homeassistant.components.energy",
    "homeassistant.components.recorder",
    "homeassistant.helpers.device_registry",
    "homeassistant.helpers.entity_registry",
    // The notification blueprints' automations, which also see the
    // demo's own alert and bridge events.
    "homeassistant.components.automation",
    "homeassistant.components.blueprint",
    "homeassistant.components.script",
    "homeassistant.helpers.script",
    "homeassistant.components.notify",
    "homeassistant.components.persistent_notification",
];

/// The Home Assistant blueprints (docs/NOTIFICATIONS.md), as
/// `blueprints/automation/energy2mqtt/` of HA's config dir holds them.
const BLUEPRINT_DIR: &str = "ha-discovery/blueprints/automation/energy2mqtt";
const BLUEPRINTS: &[&str] = &["alert_notifications.yaml", "balancer_notifications.yaml"];
/// The repository's URL (repository.yaml, addon/config.yaml).
const REPO_URL: &str = "https://github.com/energy2mqtt/energy2mqtt";

/// A stand-in for a phone's notify action (`notify.mobile_app_…`): a
/// script the blueprints call like one, which keeps what it got (title,
/// message and the companion app's `data`) as a persistent notification
/// `capture-<tag>`, the message as JSON.
const CAPTURE_SCRIPT: &str = r#"e2m_capture:
  alias: e2m capture
  mode: queued
  sequence:
    - action: persistent_notification.create
      data:
        notification_id: >-
          capture-{{ data.tag if data is defined and data is mapping and data.tag is defined else 'none' }}
        title: "{{ title | default('') }}"
        message: "{{ {'message': message | default(none), 'data': data | default(none)} | to_json }}"
"#;

/// The binary under test; `E2M_HA_BRIDGE_BIN` points at a copy, so that
/// a rebuild during a long run does not swap it.
fn bridge_bin() -> PathBuf {
    std::env::var_os("E2M_HA_BRIDGE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(BIN))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn wait_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Polls `f` every 250 ms until it returns `Ok`, or returns its last
/// error after `timeout`.
fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`.
fn terminate(child: &mut Child, grace: Duration) -> Option<i32> {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

struct Mosquitto {
    port: u16,
    child: Child,
}

impl Mosquitto {
    /// With persistence, as a real installation runs it: retained
    /// discovery survives a broker restart.
    fn start(dir: &Path) -> Self {
        let port = free_port();
        let data = dir.join("mosquitto");
        std::fs::create_dir_all(&data).expect("mosquitto dir");
        let conf = data.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n",
                data.display()
            ),
        )
        .expect("mosquitto.conf");
        let child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start /usr/sbin/mosquitto (apt-get install mosquitto)");
        assert!(
            wait_port(port, Duration::from_secs(10)),
            "mosquitto not listening on {port}"
        );
        Self { port, child }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Home Assistant Core in its own process, config in a temp dir.
struct HomeAssistant {
    python: PathBuf,
    config: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl HomeAssistant {
    fn new(python: PathBuf, dir: &Path) -> Self {
        let config = dir.join("ha");
        std::fs::create_dir_all(&config).expect("ha dir");
        let port = free_port();
        // No default_config: only what the test needs. Latitude and
        // longitude 0 make the onboarding's weather integration (met)
        // skip itself; it would try the internet.
        let yaml = format!(
            "homeassistant:
  name: energy2mqtt test
  latitude: 0
  longitude: 0
  elevation: 0
  unit_system: metric
  time_zone: UTC
  country: DE
  currency: EUR
http:
  server_host: 127.0.0.1
  server_port: {port}
recorder:
  db_url: sqlite:///{db}
  commit_interval: 1
energy:
logger:
  default: warning
automation: !include automations.yaml
script: !include scripts.yaml
notify:
",
            db = config.join("home-assistant_v2.db").display()
        );
        std::fs::write(config.join("configuration.yaml"), yaml).expect("configuration.yaml");
        // The blueprints, where a manual install puts them; the
        // automations made from them are written once MQTT is set up.
        let blueprints = config.join("blueprints/automation/energy2mqtt");
        std::fs::create_dir_all(&blueprints).expect("blueprints dir");
        for file in BLUEPRINTS {
            std::fs::copy(
                repo(&format!("{BLUEPRINT_DIR}/{file}")),
                blueprints.join(file),
            )
            .unwrap_or_else(|e| panic!("copy blueprint {file}: {e}"));
        }
        std::fs::write(config.join("automations.yaml"), "[]\n").expect("automations.yaml");
        std::fs::write(config.join("scripts.yaml"), CAPTURE_SCRIPT).expect("scripts.yaml");
        Self {
            python,
            config,
            port,
            child: None,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.config.join("home-assistant.log")
    }

    fn start(&mut self) -> Duration {
        let started = Instant::now();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.config.join("stdout.log"))
            .expect("ha stdout log");
        let err = out.try_clone().expect("ha stderr log");
        let child = Command::new(&self.python)
            .args(["-m", "homeassistant", "--skip-pip", "-c"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start Home Assistant with {:?}: {e}", self.python));
        self.child = Some(child);
        assert!(
            wait_port(self.port, Duration::from_secs(180)),
            "Home Assistant did not listen on {} within 180 s\n{}",
            self.port,
            tail(&self.config.join("stdout.log"), 40)
        );
        started.elapsed()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(60));
        }
    }
}

impl Drop for HomeAssistant {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// tests/ha/ha_client.py: one JSON request per line, one answer per line.
struct HaClient {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl HaClient {
    fn start(python: &Path, url: &str) -> Self {
        let mut child = Command::new(python)
            .arg(repo("tests/ha/ha_client.py"))
            .arg(url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tests/ha/ha_client.py");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Self {
            child,
            stdin,
            stdout,
        }
    }

    fn call(&mut self, req: Value) -> Result<Value, String> {
        writeln!(self.stdin, "{req}").map_err(|e| format!("ha_client: {e}"))?;
        self.stdin.flush().map_err(|e| format!("ha_client: {e}"))?;
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| format!("ha_client: {e}"))?;
        let v: Value =
            serde_json::from_str(&line).map_err(|e| format!("ha_client answered {line:?}: {e}"))?;
        if v["ok"] == true {
            Ok(v)
        } else {
            Err(format!("{}: {}", req, v["error"]))
        }
    }

    fn ws(&mut self, msg: Value) -> Result<Value, String> {
        let v = self.call(json!({"op": "ws", "msg": msg}))?;
        if v["success"] == true {
            Ok(v["result"].clone())
        } else {
            Err(format!("{msg}: {}", v["error"]))
        }
    }

    fn rest(&mut self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let v = self.call(json!({"op": "rest", "method": method, "path": path, "json": body}))?;
        match v["status"].as_u64() {
            Some(200..=299) => Ok(v["body"].clone()),
            _ => Err(format!(
                "{method} {path}: HTTP {}: {}",
                v["status"], v["body"]
            )),
        }
    }

    fn states(&mut self) -> BTreeMap<String, Value> {
        let list = self
            .rest("GET", "/api/states", None)
            .expect("GET /api/states");
        list.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| Some((s["entity_id"].as_str()?.to_owned(), s.clone())))
            .collect()
    }

    fn state(&mut self, entity_id: &str) -> String {
        match self.rest("GET", &format!("/api/states/{entity_id}"), None) {
            Ok(v) => v["state"].as_str().unwrap_or("").to_owned(),
            Err(e) => format!("<{e}>"),
        }
    }

    fn service(&mut self, domain: &str, service: &str, entity_id: &str, data: Value) {
        self.ws(json!({
            "type": "call_service",
            "domain": domain,
            "service": service,
            "service_data": data,
            "target": {"entity_id": entity_id},
        }))
        .unwrap_or_else(|e| panic!("{domain}.{service} on {entity_id}: {e}"));
    }

    fn entities(&mut self) -> Vec<Value> {
        let v = self
            .ws(json!({"type": "config/entity_registry/list"}))
            .expect("entity registry");
        v.as_array().cloned().unwrap_or_default()
    }

    fn devices(&mut self) -> Vec<Value> {
        let v = self
            .ws(json!({"type": "config/device_registry/list"}))
            .expect("device registry");
        v.as_array().cloned().unwrap_or_default()
    }
}

impl Drop for HaClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `energy2mqtt demo` with a config overlay, its log in a file.
struct Bridge {
    child: Option<Child>,
}

impl Bridge {
    fn start(config: &Path, mqtt_port: u16, storage: &Path, log: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("bridge log");
        let child = Command::new(bridge_bin())
            .arg("demo")
            .arg("--config")
            .arg(config)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("E2M_BROKER__ENABLED", "false")
            .env("E2M_MQTT__URL", format!("mqtt://127.0.0.1:{mqtt_port}"))
            .env("E2M_STORAGE__DIR", storage)
            .env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start energy2mqtt demo");
        Self { child: Some(child) }
    }

    fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        terminate(&mut c, Duration::from_secs(10))
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Retained discovery configs as the broker holds them (topic → payload):
/// what the running bridge announces. The assertions are made on Home
/// Assistant's side; this only says what to expect.
fn watch_discovery(port: u16) -> Arc<Mutex<BTreeMap<String, Value>>> {
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let out = seen.clone();
    let mut opts = rumqttc::MqttOptions::new(format!("e2m-ha-test-{port}"), "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut connection) = rumqttc::Client::new(opts, 64);
    std::thread::spawn(move || {
        let _client = client.clone();
        for ev in connection.iter() {
            match ev {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    let _ =
                        client.subscribe("homeassistant/+/+/+/config", rumqttc::QoS::AtLeastOnce);
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let mut map = out.lock().expect("discovery map");
                    if p.payload.is_empty() {
                        map.remove(&p.topic);
                    } else if let Ok(v) = serde_json::from_slice::<Value>(&p.payload) {
                        map.insert(p.topic.clone(), v);
                    }
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    });
    seen
}

fn publish(port: u16, topic: &str, payload: &str) {
    let opts = rumqttc::MqttOptions::new(format!("e2m-ha-pub-{}", free_port()), "127.0.0.1", port);
    let (client, mut connection) = rumqttc::Client::new(opts, 8);
    client
        .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.as_bytes())
        .expect("queue publish");
    for ev in connection.iter() {
        match ev {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => break,
            Ok(_) => {}
            Err(e) => panic!("publish {topic}: {e}"),
        }
    }
    let _ = client.disconnect();
}

/// One warning or error line of home-assistant.log, with its traceback.
#[derive(Debug, Clone)]
struct LogEntry {
    level: String,
    logger: String,
    text: String,
}

/// The entries of home-assistant.log and of the run before it: Home
/// Assistant rotates its log to `.log.1` when it starts, and the test
/// restarts it once.
fn log_entries(path: &Path) -> Vec<LogEntry> {
    let mut previous = path.as_os_str().to_owned();
    previous.push(".1");
    let mut out = log_file_entries(Path::new(&previous));
    out.extend(log_file_entries(path));
    out
}

fn log_file_entries(path: &Path) -> Vec<LogEntry> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out: Vec<LogEntry> = Vec::new();
    let mut in_entry = false;
    for line in text.lines() {
        // "2025-04-30 12:00:00.123 WARNING (MainThread) [logger] message"
        let mut parts = line.splitn(5, ' ');
        let (_, _, level) = (parts.next(), parts.next(), parts.next());
        let is_head = line.len() > 24
            && line.as_bytes().get(4) == Some(&b'-')
            && line.as_bytes().get(10) == Some(&b' ');
        if is_head {
            in_entry = false;
            let level = level.unwrap_or("");
            if matches!(level, "WARNING" | "ERROR" | "CRITICAL") {
                let logger = line
                    .split_once('[')
                    .and_then(|(_, r)| r.split_once(']'))
                    .map(|(l, _)| l.to_owned())
                    .unwrap_or_default();
                out.push(LogEntry {
                    level: level.to_owned(),
                    logger,
                    text: line.to_owned(),
                });
                in_entry = true;
            }
        } else if in_entry {
            if let Some(last) = out.last_mut() {
                last.text.push('\n');
                last.text.push_str(line);
            }
        }
    }
    out
}

fn watched(e: &LogEntry) -> bool {
    WATCHED_LOGGERS.iter().any(|w| e.logger.starts_with(w))
}

/// An entity the bridge announced, as the discovery payload has it.
#[derive(Debug, Clone)]
struct Announced {
    topic: String,
    unique_id: String,
    device_ids: Vec<String>,
    device_name: String,
}

fn announced(map: &BTreeMap<String, Value>) -> Vec<Announced> {
    map.iter()
        .map(|(topic, p)| Announced {
            topic: topic.clone(),
            unique_id: p["unique_id"].as_str().unwrap_or("").to_owned(),
            device_ids: p["device"]["identifiers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            device_name: p["device"]["name"].as_str().unwrap_or("").to_owned(),
        })
        .collect()
}

/// Our entities in HA's registry, by unique_id.
fn registry_by_uid(entities: &[Value]) -> BTreeMap<String, Value> {
    entities
        .iter()
        .filter(|e| e["platform"] == "mqtt")
        .filter_map(|e| Some((e["unique_id"].as_str()?.to_owned(), e.clone())))
        .collect()
}

fn entity_id_of(reg: &BTreeMap<String, Value>, uid: &str) -> String {
    reg.get(uid)
        .and_then(|e| e["entity_id"].as_str())
        .unwrap_or_else(|| panic!("no entity with unique_id {uid} in HA's registry"))
        .to_owned()
}

/// Patterns: a domain prefix of the entity id (`button.`) or a suffix of
/// the unique id (`_timer_off_at`).
fn unknown_allowed(entity_id: &str, unique_id: &str) -> bool {
    UNKNOWN_ALLOWED
        .iter()
        .any(|(pat, _)| entity_id.starts_with(pat) || unique_id.ends_with(pat))
}

/// Entities (enabled ones) whose state is missing, unavailable, or
/// unknown where that is not the truth.
fn bad_states(
    client: &mut HaClient,
    reg: &BTreeMap<String, Value>,
    uids: &BTreeSet<String>,
) -> Vec<String> {
    let states = client.states();
    let mut bad = Vec::new();
    for uid in uids {
        let Some(e) = reg.get(uid) else {
            bad.push(format!("{uid}: not in the registry"));
            continue;
        };
        if !e["disabled_by"].is_null() {
            continue;
        }
        let id = e["entity_id"].as_str().unwrap_or("");
        match states.get(id).and_then(|s| s["state"].as_str()) {
            None => bad.push(format!("{id}: no state")),
            Some("unavailable") => bad.push(format!("{id}: unavailable")),
            Some("unknown") if !unknown_allowed(id, uid) => bad.push(format!("{id}: unknown")),
            Some(_) => {}
        }
    }
    bad
}

struct Failure<'a> {
    ha_log: PathBuf,
    bridge_log: &'a Path,
}

impl Failure<'_> {
    /// Panics with `msg`, Home Assistant's warnings and the bridge's log.
    fn fail(&self, msg: &str) -> ! {
        let ha: Vec<String> = log_entries(&self.ha_log)
            .into_iter()
            .map(|e| e.text)
            .collect();
        let ha = ha[ha.len().saturating_sub(30)..].join("\n");
        panic!(
            "{msg}\n--- Home Assistant warnings/errors (last 30) ---\n{ha}\n--- bridge log (last 60 lines) ---\n{}",
            tail(self.bridge_log, 60)
        );
    }

    fn check(&self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.fail(&msg());
        }
    }
}

fn ha_python() -> Option<PathBuf> {
    if std::env::var("E2M_TEST_HA").as_deref() != Ok("1") {
        eprintln!(
            "Home Assistant test not run: set E2M_TEST_HA=1 (after tests/ha/install.sh; E2M_HA_PYTHON = the venv's python)"
        );
        return None;
    }
    let python = std::env::var_os("E2M_HA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo(".venv-ha/bin/python"));
    let ok = Command::new(&python)
        .args([
            "-c",
            "import homeassistant.const as c; print(c.__version__)",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    assert_eq!(
        ok.as_deref(),
        Some(HA_VERSION),
        "E2M_TEST_HA=1 but {python:?} has no Home Assistant {HA_VERSION} (run tests/ha/install.sh)"
    );
    Some(python)
}

// ------------------------------------------------- notification blueprints

/// `HH:MM:SS` (UTC, Home Assistant's time zone here) of a unix time.
fn hms(secs: u64) -> String {
    let s = secs % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// "2024.10.0" → [2024, 10, 0].
fn version(v: &str) -> Vec<u32> {
    v.split('.')
        .map(|p| p.parse().unwrap_or(u32::MAX))
        .collect()
}

/// The automations made from the blueprints, as automations.yaml holds
/// them (JSON is YAML), each on its own base topic except where the
/// default is tested:
///
/// * alerts with every default (base topic `energy2mqtt`, every level,
///   clears replacing, reminders sent, no quiet hours);
/// * alerts on `e2m-quiet`, clears removing, quiet hours around `now`
///   (only critical passes), and without the domain in one action name;
/// * alerts on `e2m-critical`, critical only, no reminders;
/// * the balancer with its default events.
///
/// They send to Home Assistant's own notifications and (but the critical
/// one) to the capture script, a phone's stand-in.
fn notification_automations(now: u64) -> Value {
    let targets = json!(["notify.persistent_notification", "script.e2m_capture"]);
    let alerts =
        |input: Value| json!({"path": "energy2mqtt/alert_notifications.yaml", "input": input});
    json!([
        {"id": "e2m_alerts_replace", "alias": "energy2mqtt alerts (replace)",
         "use_blueprint": alerts(json!({"notify_actions": targets}))},
        {"id": "e2m_alerts_remove", "alias": "energy2mqtt alerts (remove, quiet)",
         "use_blueprint": alerts(json!({"base_topic": "e2m-quiet",
                                        "notify_actions": ["persistent_notification", "script.e2m_capture"],
                                        "clear_mode": "remove",
                                        "quiet_start": hms(now + 86_400 - 7200),
                                        "quiet_end": hms(now + 7200)}))},
        {"id": "e2m_alerts_critical", "alias": "energy2mqtt alerts (critical only)",
         "use_blueprint": alerts(json!({"base_topic": "e2m-critical",
                                        "notify_actions": ["notify.persistent_notification"],
                                        "min_level": "critical",
                                        "send_reminders": false}))},
        {"id": "e2m_balancer", "alias": "energy2mqtt balancer",
         "use_blueprint": {"path": "energy2mqtt/balancer_notifications.yaml",
                           "input": {"notify_actions": targets}}},
    ])
}

const NOTIFICATION_AUTOMATIONS: &[&str] =
    &["e2m_alerts_replace", "e2m_alerts_remove", "e2m_balancer"];

/// Automation config id → state.
fn automation_states(client: &mut HaClient) -> BTreeMap<String, String> {
    client
        .states()
        .into_iter()
        .filter(|(id, _)| id.starts_with("automation."))
        .filter_map(|(_, s)| {
            Some((
                s["attributes"]["id"].as_str()?.to_owned(),
                s["state"].as_str().unwrap_or("").to_owned(),
            ))
        })
        .collect()
}

fn automations_on(client: &mut HaClient) -> Result<(), String> {
    let states = automation_states(client);
    let off: Vec<&&str> = NOTIFICATION_AUTOMATIONS
        .iter()
        .filter(|id| states.get(**id).map(String::as_str) != Some("on"))
        .collect();
    if off.is_empty() {
        Ok(())
    } else {
        Err(format!("automations {off:?} not on: {states:?}"))
    }
}

/// Home Assistant lists both blueprints as valid, with their source URL;
/// then the automations made from them are written and loaded.
fn install_notification_automations(client: &mut HaClient, config: &Path) -> Result<(), String> {
    let listed = client.ws(json!({"type": "blueprint/list", "domain": "automation"}))?;
    for file in BLUEPRINTS {
        let entry = &listed[format!("energy2mqtt/{file}")];
        let meta = &entry["metadata"];
        let url = format!("{REPO_URL}/blob/main/{BLUEPRINT_DIR}/{file}");
        let min = meta["homeassistant"]["min_version"].as_str().unwrap_or("");
        let ok = entry["error"].is_null()
            && meta["domain"] == "automation"
            && meta["source_url"] == url.as_str()
            && meta["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("energy2mqtt "))
            && !min.is_empty()
            && version(min) <= version(HA_VERSION)
            && meta["input"]["delivery"]["input"]["notify_actions"]["selector"]["text"]["multiple"]
                == true;
        if !ok {
            return Err(format!("blueprint/list: {file}: {entry}\nall: {listed}"));
        }
    }
    let autos = notification_automations(secs_since_epoch());
    std::fs::write(
        config.join("automations.yaml"),
        serde_json::to_string_pretty(&autos).expect("automations JSON"),
    )
    .map_err(|e| format!("automations.yaml: {e}"))?;
    client.ws(
        json!({"type": "call_service", "domain": "automation", "service": "reload",
                     "service_data": {}}),
    )?;
    wait_for(Duration::from_secs(10), || automations_on(client))
}

/// Persistent notifications by id.
fn notifications(client: &mut HaClient) -> Result<BTreeMap<String, Value>, String> {
    let list = client.ws(json!({"type": "persistent_notification/get"}))?;
    Ok(list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| Some((n["notification_id"].as_str()?.to_owned(), n.clone())))
        .collect())
}

/// Waits for the persistent notification `id` with this title and message.
fn wait_notification(
    client: &mut HaClient,
    id: &str,
    title: &str,
    message: &str,
) -> Result<(), String> {
    wait_for(Duration::from_secs(5), || {
        let all = notifications(client)?;
        match all.get(id) {
            Some(n) if n["title"] == title && n["message"] == message => Ok(()),
            n => Err(format!(
                "notification {id}: {n:?}, want title {title:?}, message {message:?}"
            )),
        }
    })
}

/// Waits until the persistent notification `id` is gone.
fn wait_dismissed(client: &mut HaClient, id: &str) -> Result<(), String> {
    wait_for(Duration::from_secs(5), || {
        match notifications(client)?.get(id) {
            None => Ok(()),
            Some(n) => Err(format!("notification {id} still there: {n}")),
        }
    })
}

/// Waits until the capture script got exactly this call for `tag`: what a
/// phone's notify action would get.
fn wait_capture(
    client: &mut HaClient,
    tag: &str,
    title: &str,
    message: &str,
    data: Value,
) -> Result<(), String> {
    let id = format!("capture-{tag}");
    let want = json!({"message": message, "data": data});
    wait_for(Duration::from_secs(5), || {
        let all = notifications(client)?;
        let n = all.get(&id).ok_or(format!("no {id}"))?;
        let got: Value = serde_json::from_str(n["message"].as_str().unwrap_or(""))
            .map_err(|e| format!("{id}: {e}: {n}"))?;
        if n["title"] == title && got == want {
            Ok(())
        } else {
            Err(format!(
                "{id}: title {}, {got}\n  want title {title:?}, {want}",
                n["title"]
            ))
        }
    })
}

/// An event as the bridge publishes it on `<base>/alerts/event`.
fn alert_event(kind: &str, rule: &str, level: &str, device: (&str, &str), message: &str) -> Value {
    json!({"kind": kind, "event_type": kind, "rule": rule, "family": "soc", "level": level,
           "device": device.0, "device_name": device.1, "value": 8.0, "threshold": 10.0,
           "message": message, "at": "2026-11-21T18:04:00Z", "repeat": false, "notify": true})
}

/// The test's fictional devices: no notification of the demo's own
/// (real) alerts and balancer events has these in its id.
const FICTIONAL: &[&str] = &[
    "battery7",
    "battery8",
    "battery9",
    "boiler9",
    "inverter8",
    "inverter9",
];

/// Alert and balancer events on MQTT, through the blueprints' automations,
/// to persistent notifications (id = tag, title, message) and to the
/// capture script (the companion app's data by level).
fn check_notification_blueprints(client: &mut HaClient, mqtt: u16) -> Result<(), String> {
    automations_on(client)?;
    let send = |topic: &str, v: Value| publish(mqtt, topic, &v.to_string());
    let group = |tag: &str| json!({"tag": tag, "group": "energy2mqtt"});
    let b9 = ("battery9", "Battery 9");

    // --- alerts, replace mode, base topic `energy2mqtt` (the default) ---
    let (tag, raise) = (
        "cell_delta_error-battery9",
        "Battery 9: cell delta 0.062 V is above 0.050 V",
    );
    send(
        "energy2mqtt/alerts/event",
        alert_event("raise", "cell_delta_error", "error", b9, raise),
    );
    wait_notification(client, tag, "Error: Battery 9", raise)?;
    wait_capture(
        client,
        tag,
        "Error: Battery 9",
        raise,
        json!({"tag": tag, "group": "energy2mqtt",
        "push": {"interruption-level": "time-sensitive"}, "ttl": 0, "priority": "high"}),
    )?;

    let (crit_tag, crit) = ("soc_critical-battery9", "Battery 9: SOC 8 % is below 10 %");
    send(
        "energy2mqtt/alerts/event",
        alert_event("raise", "soc_critical", "critical", b9, crit),
    );
    wait_notification(client, crit_tag, "Critical: Battery 9", crit)?;
    wait_capture(
        client,
        crit_tag,
        "Critical: Battery 9",
        crit,
        json!({"tag": crit_tag, "group": "energy2mqtt",
        "push": {"interruption-level": "critical", "sound": {"name": "default", "critical": 1, "volume": 1.0}},
        "channel": "alarm_stream", "ttl": 0, "priority": "high"}),
    )?;

    let (warn_tag, warn) = ("soh_low-battery9", "Battery 9: SOH 78 % is below 80 %");
    send(
        "energy2mqtt/alerts/event",
        alert_event("raise", "soh_low", "warning", b9, warn),
    );
    wait_notification(client, warn_tag, "Warning: Battery 9", warn)?;
    wait_capture(
        client,
        warn_tag,
        "Warning: Battery 9",
        warn,
        group(warn_tag),
    )?;

    // Raised again within the repeat window: `notify: false`, skipped.
    let mut suppressed = alert_event(
        "raise",
        "soc_low",
        "error",
        b9,
        "Battery 9: SOC 18 % is below 20 %",
    );
    suppressed["notify"] = json!(false);
    send("energy2mqtt/alerts/event", suppressed);
    // A reminder (`repeat: true`) replaces the raise; the automation runs
    // events in order, so the skipped one above has been handled by then.
    let reminder_text = format!("{raise} (active for 12 h)");
    let mut reminder = alert_event("raise", "cell_delta_error", "error", b9, &reminder_text);
    reminder["repeat"] = json!(true);
    send("energy2mqtt/alerts/event", reminder);
    wait_notification(client, tag, "Error: Battery 9", &reminder_text)?;

    let clear = "Battery 9: cell delta 0.038 V is back at or below 0.040 V";
    send(
        "energy2mqtt/alerts/event",
        alert_event("clear", "cell_delta_error", "error", b9, clear),
    );
    wait_notification(client, tag, "Cleared: Battery 9", clear)?;
    wait_capture(
        client,
        tag,
        "Cleared: Battery 9",
        clear,
        json!({"tag": tag, "group": "energy2mqtt",
        "push": {"interruption-level": "passive"}, "alert_once": true}),
    )?;

    // --- alerts on `e2m-quiet`: quiet hours now, clears remove ---------
    let b8 = ("battery8", "Battery 8");
    let quiet_warning = "Battery 8: SOH 78 % is below 80 %";
    let quiet_error = "Battery 8: SOC 18 % is below 20 %";
    send(
        "e2m-quiet/alerts/event",
        alert_event("raise", "soh_low", "warning", b8, quiet_warning),
    );
    send(
        "e2m-quiet/alerts/event",
        alert_event("raise", "soc_low", "error", b8, quiet_error),
    );
    // Critical passes the quiet hours.
    let (tag8, crit8) = ("soc_critical-battery8", "Battery 8: SOC 8 % is below 10 %");
    send(
        "e2m-quiet/alerts/event",
        alert_event("raise", "soc_critical", "critical", b8, crit8),
    );
    wait_notification(client, tag8, "Critical: Battery 8", crit8)?;
    wait_capture(
        client,
        tag8,
        "Critical: Battery 8",
        crit8,
        json!({"tag": tag8, "group": "energy2mqtt",
        "push": {"interruption-level": "critical", "sound": {"name": "default", "critical": 1, "volume": 1.0}},
        "channel": "alarm_stream", "ttl": 0, "priority": "high"}),
    )?;
    send(
        "e2m-quiet/alerts/event",
        alert_event(
            "clear",
            "soc_critical",
            "critical",
            b8,
            "Battery 8: SOC 13 % is back at or above 12 %",
        ),
    );
    wait_dismissed(client, tag8)?;
    wait_capture(client, tag8, "", "clear_notification", json!({"tag": tag8}))?;

    // --- alerts on `e2m-critical`: critical only, no reminders ----------
    let b7 = ("battery7", "Battery 7");
    send(
        "e2m-critical/alerts/event",
        alert_event(
            "raise",
            "soc_low",
            "error",
            b7,
            "Battery 7: SOC 18 % is below 20 %",
        ),
    );
    let mut reminder = alert_event(
        "raise",
        "cell_min_low",
        "critical",
        b7,
        "Battery 7: lowest cell 2.850 V (cell 5) is below 2.900 V (active for 12 h)",
    );
    reminder["repeat"] = json!(true);
    send("e2m-critical/alerts/event", reminder);
    let (tag7, crit7) = ("soc_critical-battery7", "Battery 7: SOC 8 % is below 10 %");
    send(
        "e2m-critical/alerts/event",
        alert_event("raise", "soc_critical", "critical", b7, crit7),
    );
    wait_notification(client, tag7, "Critical: Battery 7", crit7)?;

    // --- the balancer, base topic `energy2mqtt`, default events ---
    let balancer = |group_tag: &str| json!({"tag": group_tag, "group": "energy2mqtt-balancer"});
    let plug_tag = "balancer-boiler9";
    send(
        "energy2mqtt/bridge/event",
        json!({"type": "balancer_action", "device": "boiler9",
        "inverter": "inverter9", "action": "shed", "plug": "boiler9", "reason": "overload",
        "load_w": 7810.0, "limit_w": 7400.0, "plug_w": 2000.0}),
    );
    let shed = "boiler9 was switched off: overload (load 7810 W, limit 7400 W)";
    wait_notification(client, plug_tag, "Balancer: boiler9 switched off", shed)?;
    wait_capture(
        client,
        plug_tag,
        "Balancer: boiler9 switched off",
        shed,
        balancer(plug_tag),
    )?;
    // `stale` is not among the default events.
    send(
        "energy2mqtt/bridge/event",
        json!({"type": "balancer_state", "device": "inverter8", "state": "stale"}),
    );
    let state_tag = "balancer-state-inverter9";
    send(
        "energy2mqtt/bridge/event",
        json!({"type": "balancer_state", "device": "inverter9", "state": "failsafe"}),
    );
    let failsafe = "No fresh data from inverter9: the balancer switched its sheddable plugs off";
    wait_notification(client, state_tag, "Balancer failsafe: inverter9", failsafe)?;
    let mut data = balancer(state_tag);
    data["push"] = json!({"interruption-level": "time-sensitive"});
    data["ttl"] = json!(0);
    data["priority"] = json!("high");
    wait_capture(
        client,
        state_tag,
        "Balancer failsafe: inverter9",
        failsafe,
        data,
    )?;
    send(
        "energy2mqtt/bridge/event",
        json!({"type": "balancer_action", "device": "boiler9",
        "inverter": "inverter9", "action": "restore", "plug": "boiler9", "reason": "restore",
        "load_w": 3000.0, "limit_w": 7400.0, "plug_w": 2000.0}),
    );
    let restored = "boiler9 was switched on again";
    wait_notification(client, plug_tag, "Balancer: boiler9 back on", restored)?;
    let mut data = balancer(plug_tag);
    data["push"] = json!({"interruption-level": "passive"});
    data["alert_once"] = json!(true);
    wait_capture(
        client,
        plug_tag,
        "Balancer: boiler9 back on",
        restored,
        data,
    )?;
    send(
        "energy2mqtt/bridge/event",
        json!({"type": "balancer_state", "device": "inverter9", "state": "idle"}),
    );
    wait_notification(
        client,
        state_tag,
        "Balancer: inverter9 back to normal",
        "The balancer of inverter9 is idle again",
    )?;

    // Nothing else: not the `notify: false` raise, not the warning and
    // the error in the quiet hours, not the removed critical one, not the
    // error below the minimum level, not the reminder with reminders off,
    // not the stale state; and only the critical-only automation's own
    // target for battery 7.
    let all = notifications(client)?;
    let ours: BTreeSet<String> = all
        .keys()
        .filter(|id| FICTIONAL.iter().any(|d| id.ends_with(d)))
        .cloned()
        .collect();
    let mut want: BTreeSet<String> = [tag, crit_tag, warn_tag, plug_tag, state_tag]
        .iter()
        .flat_map(|t| [t.to_string(), format!("capture-{t}")])
        .collect();
    want.insert(format!("capture-{tag8}"));
    want.insert(tag7.to_owned());
    if ours != want {
        return Err(format!("notifications {ours:?}, want {want:?}"));
    }
    Ok(())
}

fn secs_since_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[test]
fn home_assistant_shows_and_drives_the_demo() {
    let Some(python) = ha_python() else { return };
    let test_started = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let bridge_log = dir.join("bridge.log");
    let storage = dir.join("data");

    let mosquitto = Mosquitto::start(dir);
    let discovery = watch_discovery(mosquitto.port);

    let mut ha = HomeAssistant::new(python.clone(), dir);
    let failure = Failure {
        ha_log: ha.log_path(),
        bridge_log: &bridge_log,
    };
    let listen = ha.start();
    let mut client = HaClient::start(&python, &ha.url());
    client
        .call(json!({"op": "wait_up", "timeout": 180, "path": "/api/onboarding", "auth": false}))
        .unwrap_or_else(|e| failure.fail(&format!("HA's onboarding API: {e}")));
    let onboarded = client
        .call(json!({"op": "onboard", "mqtt_port": mosquitto.port}))
        .unwrap_or_else(|e| failure.fail(&format!("onboarding failed: {e}")));
    let ha_ready = test_started.elapsed();
    eprintln!(
        "Home Assistant {HA_VERSION}: listening after {:.1} s, onboarded with MQTT after {:.1} s",
        listen.as_secs_f64(),
        ha_ready.as_secs_f64()
    );
    failure.check(onboarded["entry"]["state"] == "loaded", || {
        format!("MQTT config entry not loaded: {}", onboarded["entry"])
    });
    // The onboarding's own integrations (text-to-speech, radio) are not
    // what this test is about, and the radio one retries the internet.
    let entries = client
        .ws(json!({"type": "config_entries/get"}))
        .expect("config entries");
    for e in entries.as_array().into_iter().flatten() {
        if matches!(
            e["domain"].as_str(),
            Some("radio_browser" | "google_translate")
        ) {
            let id = e["entry_id"].as_str().unwrap_or("");
            client
                .rest(
                    "DELETE",
                    &format!("/api/config/config_entries/entry/{id}"),
                    None,
                )
                .ok();
        }
    }
    // The notification blueprints are listed; automations from them load.
    install_notification_automations(&mut client, &ha.config)
        .unwrap_or_else(|e| failure.fail(&format!("notification blueprints: {e}")));

    // --- the bridge ---------------------------------------------------
    let inverter_port = free_port();
    let plug_ports: Vec<u16> = (0..DEMO_PLUGS).map(|_| free_port()).collect();
    let full = dir.join("demo-full.toml");
    std::fs::write(&full, demo_overlay(inverter_port, &plug_ports, |_| {})).expect("overlay");
    let bridge_started = Instant::now();
    let mut bridge = Bridge::start(&full, mosquitto.port, &storage, &bridge_log);

    // What `energy2mqtt discovery` prints for this config: each of these
    // must reach HA, unless the running bridge withdrew it (a P100 has no
    // power metering; the printed list assumes a P110).
    let printed = Command::new(bridge_bin())
        .args(["discovery", "--config"])
        .arg(&full)
        .env_clear()
        .output()
        .expect("energy2mqtt discovery");
    assert!(printed.status.success(), "energy2mqtt discovery failed");
    let printed: Vec<Value> = serde_json::from_slice(&printed.stdout).expect("discovery JSON");
    let printed_uids: BTreeSet<String> = printed
        .iter()
        .filter_map(|m| m["payload"]["unique_id"].as_str().map(str::to_owned))
        .collect();

    // Settle: the packs send their shape (cells, sensors) after the first
    // frames and the plugs their model; discovery follows them.
    let mut last_count = 0;
    let mut stable_since = Instant::now();
    while bridge_started.elapsed() < Duration::from_secs(30) {
        let n = discovery.lock().expect("map").len();
        if n != last_count {
            last_count = n;
            stable_since = Instant::now();
        } else if n > 0 && stable_since.elapsed() > Duration::from_secs(5) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let want = announced(&discovery.lock().expect("map"));
    failure.check(want.len() > 100, || {
        format!("the bridge announced only {} entities", want.len())
    });
    let want_uids: BTreeSet<String> = want.iter().map(|a| a.unique_id.clone()).collect();
    let withdrawn: Vec<&String> = printed_uids.difference(&want_uids).collect();
    for uid in &withdrawn {
        failure.check(uid.starts_with("energy2mqtt_lamp_"), || {
            format!("`energy2mqtt discovery` prints {uid}, the running bridge did not announce it")
        });
    }

    // --- every announced entity is in HA's registry, on its device -----
    let reg = wait_for(Duration::from_secs(30), || {
        let reg = registry_by_uid(&client.entities());
        let missing: Vec<&String> = want_uids.iter().filter(|u| !reg.contains_key(*u)).collect();
        if missing.is_empty() {
            Ok(reg)
        } else {
            Err(format!(
                "{} announced entities not in HA's registry: {missing:?}",
                missing.len()
            ))
        }
    })
    .unwrap_or_else(|e| failure.fail(&e));
    eprintln!(
        "{} entities in HA's registry after {:.1} s",
        want.len(),
        bridge_started.elapsed().as_secs_f64()
    );
    let devices = client.devices();
    let device_by_ident = |ident: &str| -> Option<Value> {
        devices
            .iter()
            .find(|d| {
                d["identifiers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|pair| pair[0] == "mqtt" && pair[1] == ident)
            })
            .cloned()
    };
    let bridge_ident = "energy2mqtt_bridge_energy2mqtt";
    let bridge_dev = device_by_ident(bridge_ident)
        .unwrap_or_else(|| failure.fail("no device for the bridge in HA's device registry"));
    failure.check(bridge_dev["via_device_id"].is_null(), || {
        "the bridge device hangs below another".into()
    });
    let mut device_names = BTreeSet::new();
    for a in &want {
        let ident = a.device_ids.first().map(String::as_str).unwrap_or("");
        let dev = device_by_ident(ident)
            .unwrap_or_else(|| failure.fail(&format!("{}: no HA device {ident}", a.topic)));
        let entity = &reg[&a.unique_id];
        failure.check(entity["device_id"] == dev["id"], || {
            format!(
                "{} is on device {} in HA, announced on {ident}",
                a.unique_id, entity["device_id"]
            )
        });
        failure.check(dev["name"] == a.device_name.as_str(), || {
            format!(
                "device {ident} is named {} in HA, announced {}",
                dev["name"], a.device_name
            )
        });
        if ident != bridge_ident {
            failure.check(dev["via_device_id"] == bridge_dev["id"], || {
                format!(
                    "device {} is not via the bridge: {}",
                    a.device_name, dev["via_device_id"]
                )
            });
        }
        device_names.insert(a.device_name.clone());
    }
    for name in [
        "energy2mqtt Bridge",
        "Deye SUN-6K (simulated)",
        "Battery 1 (simulated)",
        "Battery 2 (simulated)",
        "Boiler (simulated)",
        "Heater (simulated)",
        "Fridge (simulated)",
        "Lamp (simulated P100)",
    ] {
        failure.check(device_names.contains(name), || {
            format!("no device {name:?} in HA; devices: {device_names:?}")
        });
    }
    failure.check(
        device_names.iter().any(|n| n.contains("alancer"))
            && device_names.iter().any(|n| n.contains("lert")),
        || format!("balancer and alerts devices missing: {device_names:?}"),
    );
    for pack in ["Battery 1 (simulated)", "Battery 2 (simulated)"] {
        let dev = devices
            .iter()
            .find(|d| d["name"] == pack)
            .cloned()
            .unwrap_or_default();
        failure.check(
            dev["serial_number"].as_str().is_some_and(|s| !s.is_empty()),
            || format!("{pack} has no serial number in HA: {dev}"),
        );
    }

    // --- every sensor has a state after one poll -----------------------
    let enabled: BTreeSet<String> = want_uids.clone();
    wait_for(Duration::from_secs(30), || {
        let bad = bad_states(&mut client, &reg, &enabled);
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!("{bad:#?}"))
        }
    })
    .unwrap_or_else(|e| failure.fail(&format!("entities without a proper state:\n{e}")));

    // --- commands from HA round-trip -----------------------------------
    let lamp_switch = entity_id_of(&reg, "energy2mqtt_lamp_switch");
    client.service("switch", "turn_on", &lamp_switch, json!({}));
    wait_for(Duration::from_secs(3), || {
        (client.state(&lamp_switch) == "on")
            .then_some(())
            .ok_or_else(|| "not on".to_string())
    })
    .unwrap_or_else(|_| failure.fail(&format!("{lamp_switch} did not turn on")));
    let t = Instant::now();
    client.service("switch", "turn_off", &lamp_switch, json!({}));
    wait_for(Duration::from_secs(2), || {
        let s = client.state(&lamp_switch);
        (s == "off").then_some(()).ok_or(s)
    })
    .unwrap_or_else(|s| failure.fail(&format!("{lamp_switch} is {s} 2 s after switch.turn_off")));
    eprintln!(
        "switch.turn_off → off in HA after {} ms",
        t.elapsed().as_millis()
    );

    let boiler_mode = entity_id_of(&reg, "energy2mqtt_boiler_mode");
    let boiler_switch = entity_id_of(&reg, "energy2mqtt_boiler_switch");
    client.service(
        "select",
        "select_option",
        &boiler_mode,
        json!({"option": "off"}),
    );
    wait_for(Duration::from_secs(3), || {
        let (m, s) = (client.state(&boiler_mode), client.state(&boiler_switch));
        (m == "off" && s == "off")
            .then_some(())
            .ok_or(format!("mode {m}, switch {s}"))
    })
    .unwrap_or_else(|e| failure.fail(&format!("boiler mode off: {e}")));
    client.service(
        "select",
        "select_option",
        &boiler_mode,
        json!({"option": "auto"}),
    );
    wait_for(Duration::from_secs(3), || {
        let m = client.state(&boiler_mode);
        (m == "auto").then_some(()).ok_or(m)
    })
    .unwrap_or_else(|e| failure.fail(&format!("boiler mode auto: {e}")));

    let limit = entity_id_of(&reg, "energy2mqtt_balancer_inverter_on_grid_limit");
    let limit_sensor = entity_id_of(&reg, "energy2mqtt_balancer_inverter_limit");
    client.service("number", "set_value", &limit, json!({"value": 5500}));
    wait_for(Duration::from_secs(3), || {
        let (n, s) = (client.state(&limit), client.state(&limit_sensor));
        let ok = n.parse::<f64>().ok() == Some(5500.0);
        ok.then_some(())
            .ok_or(format!("number {n}, limit sensor {s}"))
    })
    .unwrap_or_else(|e| failure.fail(&format!("balancer on-grid limit 5500: {e}")));

    let soc_low = entity_id_of(&reg, "energy2mqtt_energy2mqtt_alerts_threshold_soc_low");
    client.service("number", "set_value", &soc_low, json!({"value": 23}));
    wait_for(Duration::from_secs(3), || {
        let n = client.state(&soc_low);
        (n.parse::<f64>().ok() == Some(23.0)).then_some(()).ok_or(n)
    })
    .unwrap_or_else(|e| failure.fail(&format!("alert threshold soc_low 23: {e}")));

    let heater_timer = entity_id_of(&reg, "energy2mqtt_heater_timer");
    let heater_off_at = entity_id_of(&reg, "energy2mqtt_heater_timer_off_at");
    let heater_cancel = entity_id_of(&reg, "energy2mqtt_heater_timer_cancel");
    client.service("number", "set_value", &heater_timer, json!({"value": 30}));
    wait_for(Duration::from_secs(3), || {
        let (n, at) = (client.state(&heater_timer), client.state(&heater_off_at));
        let ok = n.parse::<f64>().is_ok_and(|v| v > 0.0) && at != "unknown" && at != "unavailable";
        ok.then_some(()).ok_or(format!("timer {n}, off at {at}"))
    })
    .unwrap_or_else(|e| failure.fail(&format!("heater timer 30 min: {e}")));
    client.service("button", "press", &heater_cancel, json!({}));
    wait_for(Duration::from_secs(3), || {
        let (n, at) = (client.state(&heater_timer), client.state(&heater_off_at));
        let ok = n.parse::<f64>().ok() == Some(0.0) && at == "unknown";
        ok.then_some(()).ok_or(format!("timer {n}, off at {at}"))
    })
    .unwrap_or_else(|e| failure.fail(&format!("heater timer cancel button: {e}")));

    // --- the Energy dashboard's configuration --------------------------
    let sensor = |uid: &str| entity_id_of(&reg, uid);
    // The P110s; the lamp is a P100 without metering.
    let consumption: Vec<Value> = ["boiler", "heater", "fridge"]
        .iter()
        .map(|p| json!({"stat_consumption": sensor(&format!("energy2mqtt_{p}_energy_month"))}))
        .collect();
    let prefs = json!({
        "type": "energy/save_prefs",
        "energy_sources": [
            {"type": "solar", "stat_energy_from": sensor("energy2mqtt_inverter_pv_energy_total"), "config_entry_solar_forecast": null},
            {"type": "grid",
             "flow_from": [{"stat_energy_from": sensor("energy2mqtt_inverter_grid_import_total"), "stat_cost": null, "entity_energy_price": null, "number_energy_price": null}],
             "flow_to": [{"stat_energy_to": sensor("energy2mqtt_inverter_grid_export_total"), "stat_compensation": null, "entity_energy_price": null, "number_energy_price": null}],
             "cost_adjustment_day": 0},
            {"type": "battery", "stat_energy_from": sensor("energy2mqtt_battery1_energy_discharged"), "stat_energy_to": sensor("energy2mqtt_battery1_energy_charged")},
            {"type": "battery", "stat_energy_from": sensor("energy2mqtt_battery2_energy_discharged"), "stat_energy_to": sensor("energy2mqtt_battery2_energy_charged")},
        ],
        "device_consumption": consumption,
    });
    client
        .ws(prefs.clone())
        .unwrap_or_else(|e| failure.fail(&format!("energy/save_prefs refused: {e}")));

    // --- names and areas the user set must survive restarts -------------
    let area = client
        .ws(json!({"type": "config/area_registry/create", "name": "energy2mqtt test area"}))
        .unwrap_or_else(|e| failure.fail(&format!("area: {e}")));
    let area_id = area["area_id"].as_str().unwrap_or("").to_owned();
    client
        .ws(
            json!({"type": "config/entity_registry/update", "entity_id": lamp_switch,
                   "name": "Reading lamp", "area_id": area_id}),
        )
        .unwrap_or_else(|e| failure.fail(&format!("entity registry update: {e}")));
    let lamp_device = reg["energy2mqtt_lamp_switch"]["device_id"].clone();
    client
        .ws(
            json!({"type": "config/device_registry/update", "device_id": lamp_device,
                   "area_id": area_id, "name_by_user": "My lamp"}),
        )
        .unwrap_or_else(|e| failure.fail(&format!("device registry update: {e}")));

    // --- HA's birth message: the bridge republishes ---------------------
    publish(mosquitto.port, "homeassistant/status", "offline");
    publish(mosquitto.port, "homeassistant/status", "online");
    std::thread::sleep(BIRTH_DELAY + Duration::from_secs(1));
    let bad = bad_states(&mut client, &reg, &enabled);
    failure.check(bad.is_empty(), || {
        format!("after homeassistant/status online: {bad:#?}")
    });

    // --- HA really restarts ---------------------------------------------
    ha.stop();
    let restart = Instant::now();
    ha.start();
    client
        .call(json!({"op": "wait_up", "timeout": 180}))
        .unwrap_or_else(|e| failure.fail(&format!("HA did not come back: {e}")));
    let up = restart.elapsed();
    wait_for(BIRTH_DELAY + Duration::from_secs(5), || {
        let bad = bad_states(&mut client, &reg, &enabled);
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!("{bad:#?}"))
        }
    })
    .unwrap_or_else(|e| {
        failure.fail(&format!(
            "not available within birth_delay + 5 s of HA's restart (API up after {:.1} s):\n{e}",
            up.as_secs_f64()
        ))
    });
    eprintln!(
        "HA restart: API up after {:.1} s, every entity available {:.1} s after restart",
        up.as_secs_f64(),
        restart.elapsed().as_secs_f64()
    );

    // --- the bridge restarts (SIGTERM) ----------------------------------
    let code = bridge.stop();
    failure.check(code == Some(0), || {
        format!("the bridge exited with {code:?} on SIGTERM")
    });
    wait_for(Duration::from_secs(5), || {
        let s = client.state(&boiler_switch);
        (s == "unavailable").then_some(()).ok_or(s)
    })
    .unwrap_or_else(|s| failure.fail(&format!("{boiler_switch} is {s} with the bridge stopped")));
    let restart = Instant::now();
    bridge = Bridge::start(&full, mosquitto.port, &storage, &bridge_log);
    wait_for(BIRTH_DELAY + Duration::from_secs(5), || {
        let bad = bad_states(&mut client, &reg, &enabled);
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!("{bad:#?}"))
        }
    })
    .unwrap_or_else(|e| {
        failure.fail(&format!(
            "not available within birth_delay + 5 s of the bridge's restart:\n{e}"
        ))
    });
    eprintln!(
        "bridge restart: every entity available after {:.1} s",
        restart.elapsed().as_secs_f64()
    );

    // --- the notification blueprints, in automations loaded at start ----
    let t = Instant::now();
    check_notification_blueprints(&mut client, mosquitto.port)
        .unwrap_or_else(|e| failure.fail(&format!("notification blueprints: {e}")));
    eprintln!(
        "notification blueprints: alert and balancer events → notifications in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // --- HA's log: nothing from the bridge's entities --------------------
    let window = Duration::from_secs(60);
    if bridge_started.elapsed() < window {
        std::thread::sleep(window - bridge_started.elapsed());
    }
    let entries = log_entries(&ha.log_path());
    let bad: Vec<&LogEntry> = entries.iter().filter(|e| watched(e)).collect();
    for e in entries.iter().filter(|e| !watched(e)) {
        eprintln!(
            "(not counted, {} from {}) {}",
            e.level,
            e.logger,
            e.text.lines().next().unwrap_or("")
        );
    }
    failure.check(bad.is_empty(), || {
        let text: Vec<&str> = bad.iter().map(|e| e.text.as_str()).collect();
        format!(
            "{} warnings/errors in HA's log from entity code:\n{}",
            bad.len(),
            text.join("\n")
        )
    });

    // --- statistics and the Energy dashboard's validation --------------
    // HA compiles statistics every 5 minutes, ~10 s past :00, :05, ...
    let stat_ids: Vec<String> = prefs["energy_sources"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| {
            let mut v = Vec::new();
            for k in ["stat_energy_from", "stat_energy_to"] {
                if let Some(x) = s[k].as_str() {
                    v.push(x.to_owned());
                }
            }
            for flow in ["flow_from", "flow_to"] {
                for f in s[flow].as_array().into_iter().flatten() {
                    for k in ["stat_energy_from", "stat_energy_to"] {
                        if let Some(x) = f[k].as_str() {
                            v.push(x.to_owned());
                        }
                    }
                }
            }
            v
        })
        .chain(
            prefs["device_consumption"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["stat_consumption"].as_str().map(str::to_owned)),
        )
        .collect();
    let now = secs_since_epoch();
    let next_compile = (now / 300 + 1) * 300 + 12;
    eprintln!(
        "waiting {} s for HA's statistics run",
        next_compile.saturating_sub(now)
    );
    std::thread::sleep(Duration::from_secs(next_compile.saturating_sub(now)));
    wait_for(Duration::from_secs(60), || {
        let listed =
            client.ws(json!({"type": "recorder/list_statistic_ids", "statistic_type": "sum"}))?;
        let have: BTreeSet<&str> = listed
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["statistic_id"].as_str())
            .collect();
        let missing: Vec<&String> = stat_ids
            .iter()
            .filter(|s| !have.contains(s.as_str()))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("no statistics for {missing:?}"))
        }
    })
    .unwrap_or_else(|e| failure.fail(&e));
    let validation = client
        .ws(json!({"type": "energy/validate"}))
        .unwrap_or_else(|e| failure.fail(&format!("energy/validate: {e}")));
    let issues: Vec<String> = validation["energy_sources"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            validation["device_consumption"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .flat_map(|list| list.as_array().cloned().unwrap_or_default())
        .map(|i| i.to_string())
        .collect();
    failure.check(issues.is_empty(), || {
        format!("energy/validate found issues: {issues:#?}\n{validation}")
    });
    failure.check(
        validation["energy_sources"].as_array().map(Vec::len) == Some(4),
        || format!("energy/validate checked {validation}"),
    );

    // --- a removed plug goes, an unreachable one stays -----------------
    let closed = free_port();
    let edited = dir.join("demo-edited.toml");
    std::fs::write(
        &edited,
        demo_overlay(inverter_port, &plug_ports, |plugs| {
            plugs.retain(|p| p["id"].as_str() != Some("fridge"));
            for p in plugs.iter_mut() {
                if p["id"].as_str() == Some("lamp") {
                    // A name the demo does not simulate (it only simulates
                    // plugs on a loopback IP literal), on a closed port:
                    // the lamp is configured but unreachable.
                    p["host"] = toml::Value::String("localhost".into());
                    p["port"] = toml::Value::Integer(i64::from(closed));
                }
            }
        }),
    )
    .expect("edited overlay");
    bridge.stop();
    bridge = Bridge::start(&edited, mosquitto.port, &storage, &bridge_log);
    let fridge_uids: BTreeSet<String> = want_uids
        .iter()
        .filter(|u| u.starts_with("energy2mqtt_fridge_"))
        .cloned()
        .collect();
    failure.check(!fridge_uids.is_empty(), || {
        "no fridge entities to remove".into()
    });
    wait_for(Duration::from_secs(20), || {
        let reg = registry_by_uid(&client.entities());
        let ghosts: Vec<&String> = fridge_uids
            .iter()
            .filter(|u| reg.contains_key(*u))
            .collect();
        let dev = client
            .devices()
            .into_iter()
            .find(|d| d["name"] == "Fridge (simulated)");
        if ghosts.is_empty() && dev.is_none() {
            Ok(())
        } else {
            Err(format!("ghosts: {ghosts:?}, device: {dev:?}"))
        }
    })
    .unwrap_or_else(|e| failure.fail(&format!("the removed fridge stayed in HA: {e}")));
    wait_for(Duration::from_secs(30), || {
        let s = client.state(&lamp_switch);
        (s == "unavailable").then_some(()).ok_or(s)
    })
    .unwrap_or_else(|s| failure.fail(&format!("the unreachable lamp is {s}, not unavailable")));
    let reg_now = registry_by_uid(&client.entities());
    // Unreachable is not removed: every lamp entity stays.
    let lamp_lost: Vec<&String> = want_uids
        .iter()
        .filter(|u| u.starts_with("energy2mqtt_lamp_") && !reg_now.contains_key(*u))
        .collect();
    failure.check(lamp_lost.is_empty(), || {
        format!("the unreachable lamp lost entities: {lamp_lost:?}")
    });
    let lamp = reg_now
        .get("energy2mqtt_lamp_switch")
        .cloned()
        .unwrap_or_default();
    failure.check(
        lamp["entity_id"] == lamp_switch.as_str()
            && lamp["name"] == "Reading lamp"
            && lamp["area_id"] == area_id.as_str(),
        || format!("the lamp's entity lost its id, name or area: {lamp}"),
    );
    let lamp_dev = client
        .devices()
        .into_iter()
        .find(|d| d["id"] == lamp_device)
        .unwrap_or_default();
    failure.check(
        lamp_dev["area_id"] == area_id.as_str() && lamp_dev["name_by_user"] == "My lamp",
        || format!("the lamp's device lost its area or name: {lamp_dev}"),
    );
    // The other entities are still fine.
    let rest: BTreeSet<String> = want_uids
        .iter()
        .filter(|u| !u.starts_with("energy2mqtt_fridge_") && !u.starts_with("energy2mqtt_lamp_"))
        .cloned()
        .collect();
    wait_for(Duration::from_secs(10), || {
        let bad = bad_states(&mut client, &reg, &rest);
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!("{bad:#?}"))
        }
    })
    .unwrap_or_else(|e| failure.fail(&format!("after the config change: {e}")));

    // The whole run, log included, once more.
    let bad: Vec<String> = log_entries(&ha.log_path())
        .into_iter()
        .filter(watched)
        .map(|e| e.text)
        .collect();
    failure.check(bad.is_empty(), || {
        format!("HA's log at the end:\n{}", bad.join("\n"))
    });
    bridge.stop();
    ha.stop();
    eprintln!(
        "Home Assistant test passed in {:.0} s",
        test_started.elapsed().as_secs_f64()
    );
}
