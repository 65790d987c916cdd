//! A Tapo P100/P110 plug on loopback speaking KLAP v2 over a hand-written
//! HTTP/1.1 server (`specs/tapo-klap.md` §1.10), with the plug's bad habits
//! as knobs. Its answers come from our own device identity and a
//! time-driven load model, never from captured responses.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::drivers::tapo::klap;

/// Which plug the simulator pretends to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Switch only: no metering, closes the connection after every reply.
    P100,
    /// Switch with energy monitoring (component `energy_monitoring` v2).
    P110,
}

/// What is plugged in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// A water heater's element: steady draw with little ripple.
    Boiler { watts: f64 },
    /// A fan heater: steady draw with more ripple.
    Heater { watts: f64 },
    /// The compressor runs `on_s`, rests `off_s`, starting with a run when
    /// the plug switches on.
    Fridge { watts: f64, on_s: f64, off_s: f64 },
    /// Exactly `watts`, no noise: for tests that compare numbers.
    Constant { watts: f64 },
}

impl Load {
    /// What the load draws in W once it has been powered for `since_on_s`
    /// seconds, at Unix time `unix_s` (the noise changes once a second):
    /// the simulator's own model, for callers that drive time themselves.
    pub fn draw_w(self, since_on_s: f64, unix_s: f64) -> f64 {
        draw(self, since_on_s, unix_s)
    }
}

/// The plug's behaviour, switchable while the simulator runs.
#[derive(Debug)]
pub struct Knobs {
    /// Server-side session lifetime in seconds. The cookie always says
    /// 86400, so a shorter value exercises the client's 403 recovery
    /// rather than its proactive refresh.
    pub session_ttl_s: AtomicU64,
    /// handshake1 answers with the server_hash of other credentials, which
    /// is all a real plug does when the e-mail or password is wrong.
    pub wrong_credentials: AtomicBool,
    /// 403 on handshake1, as with "Third-Party Compatibility" off; the TPAP
    /// discover answer then carries a `tpap` object.
    pub klap_disabled: AtomicBool,
    /// 429 on every request.
    pub rate_limited: AtomicBool,
    /// `Connection: close` after every response, as a P100 does.
    pub close_after_reply: AtomicBool,
    /// Delay before each reply.
    pub latency_ms: AtomicU64,
    /// Every connection is dropped without an answer: an unreachable plug.
    pub offline: AtomicBool,
    /// Pre-KLAP firmware (securePassthrough): no KLAP endpoints (404), and
    /// plain JSON on /app is understood (it answers the envelope error a
    /// passthrough plug gives to a request outside a session).
    pub legacy_firmware: AtomicBool,
}

impl Knobs {
    /// The defaults of a healthy plug of this flavour.
    pub fn new(flavour: Flavour) -> Self {
        Self {
            session_ttl_s: AtomicU64::new(COOKIE_TIMEOUT_S),
            wrong_credentials: AtomicBool::new(false),
            klap_disabled: AtomicBool::new(false),
            rate_limited: AtomicBool::new(false),
            close_after_reply: AtomicBool::new(flavour == Flavour::P100),
            latency_ms: AtomicU64::new(0),
            offline: AtomicBool::new(false),
            legacy_firmware: AtomicBool::new(false),
        }
    }
}

impl Default for Knobs {
    fn default() -> Self {
        Self::new(Flavour::P110)
    }
}

/// A running simulated plug; dropping it stops the server and closes every
/// connection.
pub struct TapoSim {
    pub addr: SocketAddr,
    pub knobs: Arc<Knobs>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl TapoSim {
    /// Listens on `listen` (port 0 for a free one). The plug starts switched
    /// on, with empty energy counters; `username`/`password` are the
    /// account it is bound to.
    pub async fn start(
        listen: SocketAddr,
        flavour: Flavour,
        load: Load,
        username: &str,
        password: &str,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let knobs = Arc::new(Knobs::new(flavour));
        let now = SystemTime::now();
        let shared = Arc::new(Shared {
            flavour,
            load,
            knobs: knobs.clone(),
            auth: klap::auth_hash(username, password),
            identity: Identity::new(flavour, load, addr),
            meter: Mutex::new(Meter::new(now)),
            sessions: Mutex::new(HashMap::new()),
            handshakes: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        });
        let server = shared.clone();
        let task = tokio::spawn(async move {
            // Owned here so that aborting this task drops the set, which
            // aborts every connection with it.
            let mut conns = JoinSet::new();
            loop {
                while conns.try_join_next().is_some() {}
                let sock = match listener.accept().await {
                    Ok((sock, _)) => sock,
                    Err(e) => {
                        // Out of descriptors and the like: don't spin.
                        tracing::debug!(error = %e, "simulated plug: accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                if server.knobs.offline.load(Ordering::Relaxed) {
                    drop(sock);
                    continue;
                }
                let shared = server.clone();
                conns.spawn(async move {
                    if let Err(e) = serve(sock, &shared).await {
                        tracing::debug!(error = %e, "simulated plug: connection ended");
                    }
                });
            }
        });
        Ok(Self {
            addr,
            knobs,
            shared,
            task,
        })
    }

    /// Relay state.
    pub fn is_on(&self) -> bool {
        self.shared.meter().on
    }

    /// The button on the plug.
    pub fn set_on(&self, on: bool) {
        self.shared.switch(on, SystemTime::now());
    }

    /// What the load draws now, in W (0 when the relay is off).
    pub fn power_w(&self) -> f64 {
        self.shared.power_at(SystemTime::now())
    }

    /// The appliance's own switch or thermostat: `false` leaves the relay
    /// as it is but the plug measures 0 W (a heater that is warm enough).
    /// Plugs start drawing.
    pub fn set_drawing(&self, drawing: bool) {
        self.shared.set_drawing(drawing, SystemTime::now());
    }

    pub fn is_drawing(&self) -> bool {
        !self.shared.meter().idle
    }

    /// A handle that reads and drives this plug's load from another task;
    /// it does not keep the server running.
    pub fn handle(&self) -> PlugHandle {
        PlugHandle(self.shared.clone())
    }

    /// handshake1 attempts, refused ones included, so that tests see login
    /// storms whatever the plug answered.
    pub fn handshakes(&self) -> u64 {
        self.shared.handshakes.load(Ordering::Relaxed)
    }

    /// HTTP requests received, refused and malformed ones included.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }
}

impl Drop for TapoSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The relay and load of a running [`TapoSim`], shareable between tasks.
#[derive(Clone)]
pub struct PlugHandle(Arc<Shared>);

impl PlugHandle {
    /// Relay state.
    pub fn is_on(&self) -> bool {
        self.0.meter().on
    }

    /// What the load draws now, in W (0 when the relay is off).
    pub fn power_w(&self) -> f64 {
        self.0.power_at(SystemTime::now())
    }

    /// See [`TapoSim::set_drawing`].
    pub fn set_drawing(&self, drawing: bool) {
        self.0.set_drawing(drawing, SystemTime::now());
    }

    pub fn is_drawing(&self) -> bool {
        !self.0.meter().idle
    }
}

// ---------------------------------------------------------------------------
// Device identity and JSON methods

/// The lifetime the cookie announces, as real plugs do.
const COOKIE_TIMEOUT_S: u64 = 86_400;
/// Sessions a plug remembers; the oldest goes first. Bounded so a client
/// that handshakes in a loop cannot grow the map.
const MAX_SESSIONS: usize = 32;

const UNKNOWN_METHOD: i64 = -1002;
const JSON_DECODE_FAIL: i64 = -1003;
const PARAMS_ERROR: i64 = -1008;
const TRANSPORT_UNKNOWN: i64 = 1003;

/// The simulated plugs live in UTC so that "today" and "this month" need no
/// time-zone database; `time_diff` is minutes from UTC.
const REGION: &str = "UTC";
const TIME_DIFF_MIN: i64 = 0;

#[derive(Debug)]
struct Identity {
    model: &'static str,
    fw_ver: &'static str,
    hw_ver: &'static str,
    nickname: String,
    mac: String,
    device_id: String,
    hw_id: String,
    fw_id: String,
    oem_id: String,
    ip: String,
    port: u16,
}

impl Identity {
    fn new(flavour: Flavour, load: Load, addr: SocketAddr) -> Self {
        let (model, fw_ver, hw_ver) = match flavour {
            Flavour::P110 => ("P110", "1.3.4 Build 250117 Rel.101500", "1.0"),
            Flavour::P100 => ("P100", "1.4.3 Build 20250110 Rel. 40213", "1.0.0"),
        };
        let name = match load {
            Load::Boiler { .. } => "E2M Sim Boiler",
            Load::Heater { .. } => "E2M Sim Heater",
            Load::Fridge { .. } => "E2M Sim Fridge",
            Load::Constant { .. } => "E2M Sim Plug",
        };
        // Locally administered (02-…) so it can never be a real vendor's
        // address; the port makes several simulators distinguishable.
        let [hi, lo] = addr.port().to_be_bytes();
        let mac = format!("02-E2-4D-00-{hi:02X}-{lo:02X}");
        Self {
            model,
            fw_ver,
            hw_ver,
            nickname: name.to_owned(),
            device_id: hex_id(&["energy2mqtt sim device", &mac], 40),
            hw_id: hex_id(&["energy2mqtt sim hw", model], 32),
            fw_id: hex_id(&["energy2mqtt sim fw", fw_ver], 32),
            oem_id: hex_id(&["energy2mqtt sim oem", model], 32),
            mac,
            ip: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

fn hex_id(parts: &[&str], len: usize) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    let mut s = hex_upper(&h.finalize());
    s.truncate(len);
    s
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

struct Shared {
    flavour: Flavour,
    load: Load,
    knobs: Arc<Knobs>,
    auth: [u8; 32],
    identity: Identity,
    meter: Mutex<Meter>,
    sessions: Mutex<HashMap<String, Slot>>,
    handshakes: AtomicU64,
    requests: AtomicU64,
}

/// A handshake1 the plug remembers; `session` is set once handshake2 proved
/// the client holds the same credentials.
struct Slot {
    local_seed: [u8; 16],
    remote_seed: [u8; 16],
    auth: [u8; 32],
    created: Instant,
    session: Option<klap::Session>,
}

/// A poisoned lock only means another connection panicked mid-update; the
/// plug's state is still usable, and the server must keep answering.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn meter(&self) -> MutexGuard<'_, Meter> {
        lock(&self.meter)
    }

    fn metering(&self) -> bool {
        self.flavour == Flavour::P110
    }

    fn switch(&self, on: bool, now: SystemTime) {
        let mut m = self.meter();
        m.advance(self.load, now);
        if m.on != on {
            m.on = on;
            m.on_since = now;
        }
    }

    fn power_at(&self, now: SystemTime) -> f64 {
        let m = self.meter();
        m.power(self.load, now)
    }

    fn set_drawing(&self, drawing: bool, now: SystemTime) {
        let mut m = self.meter();
        m.advance(self.load, now);
        m.idle = !drawing;
    }

    /// One smart-protocol request (already decrypted) to its JSON answer.
    fn dispatch(&self, plaintext: &[u8]) -> Value {
        let Ok(req) = serde_json::from_slice::<Value>(plaintext) else {
            return json!({ "error_code": JSON_DECODE_FAIL });
        };
        let Some(method) = req.get("method").and_then(Value::as_str) else {
            return json!({ "error_code": JSON_DECODE_FAIL });
        };
        let params = req.get("params");
        if method == "multipleRequest" {
            return self.multiple(params);
        }
        envelope(self.call(method, params, SystemTime::now()))
    }

    fn multiple(&self, params: Option<&Value>) -> Value {
        let Some(requests) = params
            .and_then(|p| p.get("requests"))
            .and_then(Value::as_array)
        else {
            return json!({ "error_code": PARAMS_ERROR });
        };
        // One clock reading for the whole batch, so that device info and
        // energy agree with each other.
        let now = SystemTime::now();
        let responses: Vec<Value> = requests
            .iter()
            .map(|r| {
                let method = r.get("method").and_then(Value::as_str).unwrap_or("");
                let outcome = match method {
                    "" => Err(PARAMS_ERROR),
                    // Batches do not nest.
                    "multipleRequest" => Err(UNKNOWN_METHOD),
                    m => self.call(m, r.get("params"), now),
                };
                let mut v = envelope(outcome);
                if let Value::Object(o) = &mut v {
                    o.insert("method".into(), Value::from(method));
                }
                v
            })
            .collect();
        json!({ "error_code": 0, "result": { "responses": responses } })
    }

    /// `Ok(None)` is a success without `result`, as setters answer.
    fn call(
        &self,
        method: &str,
        params: Option<&Value>,
        now: SystemTime,
    ) -> Result<Option<Value>, i64> {
        let p110 = self.metering();
        let v = match method {
            "component_nego" => self.components(),
            "get_device_info" => self.device_info(now),
            "set_device_info" => {
                self.set_device_info(params, now)?;
                return Ok(None);
            }
            "get_device_usage" => self.device_usage(now),
            "get_device_time" => json!({
                "timestamp": unix_secs(now),
                "time_diff": TIME_DIFF_MIN,
                "region": REGION,
            }),
            "get_connect_cloud_state" => json!({ "status": 0 }),
            "get_led_info" => json!({
                "led_rule": "always",
                "led_status": self.meter().on,
            }),
            "get_latest_fw" => json!({
                "fw_ver": self.identity.fw_ver,
                "need_to_upgrade": false,
                "type": 0,
                "fw_size": 0,
                "release_date": "",
                "release_note": "",
                "hw_id": "",
                "oem_id": "",
            }),
            "get_schedule_rules" => json!({
                "enable": false,
                "rule_list": [],
                "schedule_rule_max_count": 32,
                "start_index": 0,
                "sum": 0,
            }),
            "get_countdown_rules" => json!({
                "countdown_rule_max_count": 1,
                "enable": false,
                "rule_list": [],
            }),
            "get_auto_update_info" if p110 => json!({
                "enable": false,
                "time": 180,
                "random_range": 120,
            }),
            "get_auto_off_config" if p110 => json!({ "enable": false, "delay_min": 60 }),
            "get_protection_power" if p110 => json!({ "enabled": false, "protection_power": 0 }),
            // 16 A at 230 V.
            "get_max_power" if p110 => json!({ "max_power": 3680 }),
            "get_energy_usage" if p110 => self.energy_usage(now),
            "get_current_power" if p110 => {
                let w = self.power_at(now);
                json!({ "current_power": w.round() as u64 })
            }
            "get_emeter_data" if p110 => self.emeter_data(now),
            // python-kasa drops the whole Energy module when this is missing
            // on energy_monitoring v2 (spec §4.6); the values are our
            // calibration constants, not a real plug's.
            "get_emeter_vgain_igain" if p110 => json!({ "vgain": 125_000, "igain": 11_500 }),
            _ => return Err(UNKNOWN_METHOD),
        };
        Ok(Some(v))
    }

    fn components(&self) -> Value {
        let mut list: Vec<(&str, u32)> = vec![
            ("device", 2),
            ("firmware", if self.metering() { 2 } else { 1 }),
            ("quick_setup", 3),
            ("time", 1),
            ("wireless", 1),
            ("schedule", 2),
            ("countdown", 2),
            ("led", 1),
            ("cloud_connect", 1),
            ("default_states", 1),
        ];
        if self.metering() {
            list.extend([
                ("auto_off", 2),
                ("energy_monitoring", 2),
                ("power_protection", 1),
            ]);
        }
        let list: Vec<Value> = list
            .into_iter()
            .map(|(id, ver)| json!({ "id": id, "ver_code": ver }))
            .collect();
        json!({ "component_list": list })
    }

    fn device_info(&self, now: SystemTime) -> Value {
        let (on, on_time) = {
            let m = self.meter();
            let on_time = if m.on {
                now.duration_since(m.on_since)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            } else {
                0
            };
            (m.on, on_time)
        };
        let id = &self.identity;
        // A plug on a shelf near the router: the signal wanders a little.
        let rssi = -52 + (noise((unix_secs(now) / 60) ^ 0x7255) * 3.0).round() as i64;
        let signal_level = match rssi {
            r if r > -60 => 3,
            r if r > -70 => 2,
            r if r > -80 => 1,
            _ => 0,
        };
        let mut info = json!({
            "device_id": id.device_id,
            "fw_ver": id.fw_ver,
            "hw_ver": id.hw_ver,
            "type": "SMART.TAPOPLUG",
            "model": id.model,
            "mac": id.mac,
            "hw_id": id.hw_id,
            "fw_id": id.fw_id,
            "oem_id": id.oem_id,
            "ip": id.ip,
            "time_diff": TIME_DIFF_MIN,
            "ssid": b64("energy2mqtt-sim"),
            "rssi": rssi,
            "signal_level": signal_level,
            "latitude": 0,
            "longitude": 0,
            "lang": "en_US",
            "avatar": "plug",
            "region": REGION,
            "specs": "",
            "nickname": b64(&id.nickname),
            "has_set_location_info": false,
            "device_on": on,
            "on_time": on_time,
            "default_states": { "type": "last_states", "state": {} },
        });
        if let Value::Object(o) = &mut info {
            match self.flavour {
                Flavour::P110 => {
                    for (k, v) in [
                        ("overheat_status", "normal"),
                        ("power_protection_status", "normal"),
                        ("overcurrent_status", "normal"),
                        ("charging_status", "normal"),
                        ("auto_off_status", "off"),
                    ] {
                        o.insert(k.into(), Value::from(v));
                    }
                    o.insert("auto_off_remain_time".into(), Value::from(0));
                }
                // P100 firmware still reports the older boolean.
                Flavour::P100 => {
                    o.insert("overheated".into(), Value::from(false));
                }
            }
        }
        info
    }

    fn set_device_info(&self, params: Option<&Value>, now: SystemTime) -> Result<(), i64> {
        let Some(p) = params.and_then(Value::as_object) else {
            return Err(PARAMS_ERROR);
        };
        match p.get("device_on") {
            None => Ok(()),
            Some(Value::Bool(on)) => {
                self.switch(*on, now);
                Ok(())
            }
            Some(_) => Err(PARAMS_ERROR),
        }
    }

    fn device_usage(&self, now: SystemTime) -> Value {
        let totals = {
            let mut m = self.meter();
            m.advance(self.load, now);
            m.totals(now)
        };
        let minutes = |s: f64| (s / 60.0).floor() as u64;
        let wh = |e: f64| e.floor() as u64;
        let time_usage = json!({
            "today": minutes(totals.today.on_s),
            "past7": minutes(totals.past7.on_s),
            "past30": minutes(totals.past30.on_s),
        });
        if !self.metering() {
            return json!({ "time_usage": time_usage });
        }
        json!({
            "time_usage": time_usage,
            "power_usage": {
                "today": wh(totals.today.wh),
                "past7": wh(totals.past7.wh),
                "past30": wh(totals.past30.wh),
            },
            // What a standby-killing plug "saved" is the firmware's own
            // estimate; ours saves nothing.
            "saved_power": { "today": 0, "past7": 0, "past30": 0 },
        })
    }

    fn energy_usage(&self, now: SystemTime) -> Value {
        let (totals, power) = {
            let mut m = self.meter();
            m.advance(self.load, now);
            (m.totals(now), m.power(self.load, now))
        };
        json!({
            "current_power": (power * 1000.0).round() as u64,
            "today_energy": totals.today.wh.floor() as u64,
            "month_energy": totals.month.wh.floor() as u64,
            "today_runtime": (totals.today.on_s / 60.0).floor() as u64,
            "month_runtime": (totals.month.on_s / 60.0).floor() as u64,
            "local_time": local_time(now),
            "electricity_charge": [0, 0, 0],
        })
    }

    fn emeter_data(&self, now: SystemTime) -> Value {
        let (power, since_boot_wh) = {
            let mut m = self.meter();
            m.advance(self.load, now);
            (m.power(self.load, now), m.since_boot_wh)
        };
        let volts = 230.0 + 1.5 * noise(unix_secs(now) ^ 0x5654);
        json!({
            "voltage_mv": (volts * 1000.0).round() as u64,
            "current_ma": (power / volts * 1000.0).round() as u64,
            "power_mw": (power * 1000.0).round() as u64,
            "energy_wh": since_boot_wh.floor() as u64,
        })
    }

    /// The answer to the TPAP probe the `tapo` crate sends first.
    fn tpap(&self, body: &[u8]) -> Response {
        let Ok(req) = serde_json::from_slice::<Value>(body) else {
            return Response::json(json!({ "error_code": JSON_DECODE_FAIL }));
        };
        let discover = req.get("method").and_then(Value::as_str) == Some("login")
            && req
                .get("params")
                .and_then(|p| p.get("sub_method"))
                .and_then(Value::as_str)
                == Some("discover");
        if !discover {
            return Response::json(json!({ "error_code": TRANSPORT_UNKNOWN }));
        }
        let mut result = Map::new();
        result.insert("sub_method".into(), "discover".into());
        if self.knobs.klap_disabled.load(Ordering::Relaxed) {
            result.insert("tpap_preferred".into(), true.into());
            result.insert("mac".into(), self.identity.mac.replace('-', "").into());
            result.insert(
                "tpap".into(),
                json!({ "tls": 0, "dac": 0, "noc": 0, "pake": [2], "port": self.identity.port }),
            );
        } else {
            result.insert("tpap_preferred".into(), false.into());
        }
        Response::json(json!({ "error_code": 0, "result": result }))
    }

    // ---- KLAP ----------------------------------------------------------

    fn handle(&self, req: &Request) -> Response {
        let (path, query) = match req.target.split_once('?') {
            Some((p, q)) => (p, q),
            None => (req.target.as_str(), ""),
        };
        if path == "/app/handshake1" {
            self.handshakes.fetch_add(1, Ordering::Relaxed);
        }
        if self.knobs.rate_limited.load(Ordering::Relaxed) {
            return Response::status(429);
        }
        let known = matches!(
            path,
            "/" | "/app" | "/app/handshake1" | "/app/handshake2" | "/app/request"
        );
        if !known {
            return Response::status(404);
        }
        if req.method != "POST" {
            return Response::status(405);
        }
        if self.knobs.legacy_firmware.load(Ordering::Relaxed) {
            return match path {
                // -1010: what passthrough firmware says to a handshake
                // without a valid RSA key; it is JSON, so it proves the
                // old protocol is there.
                "/app" => Response::json(json!({ "error_code": -1010 })),
                _ => Response::status(404),
            };
        }
        match path {
            "/app/handshake1" => self.handshake1(&req.body),
            "/app/handshake2" => self.handshake2(req),
            "/app/request" => self.klap_request(req, query),
            "/" => self.tpap(&req.body),
            // Plain JSON to /app is the legacy passthrough, which this
            // firmware no longer speaks.
            _ => Response::json(json!({ "error_code": TRANSPORT_UNKNOWN })),
        }
    }

    fn handshake1(&self, body: &[u8]) -> Response {
        if self.knobs.klap_disabled.load(Ordering::Relaxed) {
            return Response::status(403);
        }
        let Ok(local_seed) = <[u8; 16]>::try_from(body) else {
            return Response::status(400);
        };
        let mut remote_seed = [0u8; 16];
        let mut id = [0u8; 16];
        if getrandom::fill(&mut remote_seed).is_err() || getrandom::fill(&mut id).is_err() {
            return Response::status(500);
        }
        let auth = if self.knobs.wrong_credentials.load(Ordering::Relaxed) {
            // The plug is bound to another account; neither blank nor the
            // factory defaults, which clients also try.
            klap::auth_hash("someone-else@energy2mqtt.invalid", "not-your-password")
        } else {
            self.auth
        };
        let server_hash = klap::handshake1_hash(&local_seed, &remote_seed, &auth);
        let id = hex_upper(&id);
        {
            let mut sessions = lock(&self.sessions);
            let ttl = self.ttl();
            sessions.retain(|_, s| s.created.elapsed() < ttl);
            while sessions.len() >= MAX_SESSIONS {
                let oldest = sessions
                    .iter()
                    .min_by_key(|(_, s)| s.created)
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => sessions.remove(&k),
                    None => break,
                };
            }
            sessions.insert(
                id.clone(),
                Slot {
                    local_seed,
                    remote_seed,
                    auth,
                    created: Instant::now(),
                    session: None,
                },
            );
        }
        let mut body = Vec::with_capacity(48);
        body.extend_from_slice(&remote_seed);
        body.extend_from_slice(&server_hash);
        Response {
            set_cookie: Some(format!("TP_SESSIONID={id};TIMEOUT={COOKIE_TIMEOUT_S}")),
            ..Response::bytes(body)
        }
    }

    fn handshake2(&self, req: &Request) -> Response {
        let Some(id) = session_cookie(req) else {
            return Response::status(403);
        };
        let ttl = self.ttl();
        let mut sessions = lock(&self.sessions);
        let Some(slot) = sessions.get_mut(&id) else {
            return Response::status(403);
        };
        if slot.created.elapsed() >= ttl {
            sessions.remove(&id);
            return Response::status(403);
        }
        let expected = klap::handshake2_hash(&slot.local_seed, &slot.remote_seed, &slot.auth);
        if !ct_eq(&req.body, &expected) {
            sessions.remove(&id);
            return Response::status(403);
        }
        slot.session = Some(klap::Session::new(
            &slot.local_seed,
            &slot.remote_seed,
            &slot.auth,
        ));
        Response::bytes(Vec::new())
    }

    fn klap_request(&self, req: &Request, query: &str) -> Response {
        let Some(seq) = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("seq="))
            .and_then(|v| v.parse::<i32>().ok())
        else {
            return Response::status(400);
        };
        let Some(id) = session_cookie(req) else {
            return Response::status(403);
        };
        let session = {
            let ttl = self.ttl();
            let mut sessions = lock(&self.sessions);
            match sessions.get(&id) {
                Some(slot) if slot.created.elapsed() >= ttl => {
                    sessions.remove(&id);
                    None
                }
                Some(slot) => slot.session.clone(),
                None => None,
            }
        };
        let Some(session) = session else {
            return Response::status(403);
        };
        if !session.verify(seq, &req.body) {
            return Response::status(400);
        }
        let Ok(plaintext) = session.decrypt(seq, &req.body) else {
            return Response::status(400);
        };
        let answer = self.dispatch(&plaintext);
        Response::bytes(session.encrypt(seq, answer.to_string().as_bytes()))
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.knobs.session_ttl_s.load(Ordering::Relaxed))
    }
}

fn envelope(outcome: Result<Option<Value>, i64>) -> Value {
    match outcome {
        Ok(Some(result)) => json!({ "error_code": 0, "result": result }),
        Ok(None) => json!({ "error_code": 0 }),
        Err(code) => json!({ "error_code": code }),
    }
}

fn session_cookie(req: &Request) -> Option<String> {
    req.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("cookie"))
        .flat_map(|(_, v)| v.split(';'))
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| k.trim() == "TP_SESSIONID")
        .map(|(_, v)| v.trim().to_owned())
}

/// Constant time, so a network peer cannot probe handshake2 byte by byte.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ---------------------------------------------------------------------------
// Load and energy model

#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    wh: f64,
    on_s: f64,
}

#[derive(Debug, Clone, Copy)]
struct Day {
    /// Days since 1970-01-01 in plug-local time.
    day: i64,
    totals: Totals,
}

#[derive(Debug, Default)]
struct Summary {
    today: Totals,
    past7: Totals,
    past30: Totals,
    month: Totals,
}

/// Days of history kept: enough for "past30" and a full calendar month.
const KEEP_DAYS: usize = 62;

#[derive(Debug)]
struct Meter {
    on: bool,
    /// The appliance itself is off: the relay may be on, nothing draws.
    idle: bool,
    on_since: SystemTime,
    /// Up to when the counters have been integrated.
    last: SystemTime,
    /// Energy since the simulator started: `get_emeter_data.energy_wh`
    /// counts since the plug's last restart.
    since_boot_wh: f64,
    days: VecDeque<Day>,
}

impl Meter {
    fn new(now: SystemTime) -> Self {
        Self {
            on: true,
            idle: false,
            on_since: now,
            last: now,
            since_boot_wh: 0.0,
            days: VecDeque::new(),
        }
    }

    fn power(&self, load: Load, now: SystemTime) -> f64 {
        if !self.on || self.idle {
            return 0.0;
        }
        let since_on = now
            .duration_since(self.on_since)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        draw(load, since_on, unix_f64(now))
    }

    /// Integrates the power from `last` to `now`. Steps of at most a second
    /// follow the fridge's cycles; very long gaps use coarser steps so a
    /// simulator left idle for weeks costs bounded work.
    fn advance(&mut self, load: Load, now: SystemTime) {
        let Ok(gap) = now.duration_since(self.last) else {
            // The wall clock went back: count nothing rather than twice.
            self.last = now;
            return;
        };
        if self.on {
            let total = gap.as_secs_f64();
            let step = (total / 20_000.0).max(1.0);
            let start = unix_f64(self.last);
            let since_on = self
                .last
                .duration_since(self.on_since)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            let mut t = 0.0;
            while t < total {
                let dt = step.min(total - t);
                let mid = t + dt / 2.0;
                let w = if self.idle {
                    0.0
                } else {
                    draw(load, since_on + mid, start + mid)
                };
                let wh = w * dt / 3600.0;
                self.add(local_day(start + mid), wh, dt);
                self.since_boot_wh += wh;
                t += dt;
            }
        }
        self.last = now;
    }

    fn add(&mut self, day: i64, wh: f64, on_s: f64) {
        match self.days.back_mut() {
            Some(d) if d.day >= day => {
                d.totals.wh += wh;
                d.totals.on_s += on_s;
            }
            _ => self.days.push_back(Day {
                day,
                totals: Totals { wh, on_s },
            }),
        }
        while self.days.len() > KEEP_DAYS {
            self.days.pop_front();
        }
    }

    fn totals(&self, now: SystemTime) -> Summary {
        let today = local_day(unix_f64(now));
        let this_month = year_month(today);
        let mut s = Summary::default();
        for d in &self.days {
            let age = today - d.day;
            let add = |t: &mut Totals| {
                t.wh += d.totals.wh;
                t.on_s += d.totals.on_s;
            };
            if age == 0 {
                add(&mut s.today);
            }
            if (0..7).contains(&age) {
                add(&mut s.past7);
            }
            if (0..30).contains(&age) {
                add(&mut s.past30);
            }
            if age >= 0 && year_month(d.day) == this_month {
                add(&mut s.month);
            }
        }
        s
    }
}

/// Instantaneous draw in W of a load that has been powered for `since_on`
/// seconds. The noise changes once a second so that two reads in the same
/// second agree.
fn draw(load: Load, since_on: f64, unix: f64) -> f64 {
    let sec = unix.floor() as u64;
    let w = match load {
        Load::Constant { watts } => watts,
        Load::Boiler { watts } => watts * (1.0 + 0.004 * noise(sec ^ 0xB011)),
        Load::Heater { watts } => watts * (1.0 + 0.015 * noise(sec ^ 0x4EA7)),
        Load::Fridge { watts, on_s, off_s } => {
            let period = on_s + off_s;
            let running = if period.is_finite() && period > 0.0 {
                since_on.rem_euclid(period) < on_s
            } else {
                true
            };
            if running {
                watts * (1.0 + 0.02 * noise(sec ^ 0xF1D6))
            } else {
                0.0
            }
        }
    };
    if w.is_finite() { w.max(0.0) } else { 0.0 }
}

/// Deterministic noise in [-1, 1] (splitmix64).
fn noise(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

fn unix_f64(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn local_day(unix: f64) -> i64 {
    ((unix + TIME_DIFF_MIN as f64 * 60.0) / 86_400.0).floor() as i64
}

fn year_month(day: i64) -> (i32, u8) {
    time::OffsetDateTime::from_unix_timestamp(day.saturating_mul(86_400))
        .map(|t| (t.year(), u8::from(t.month())))
        .unwrap_or((1970, 1))
}

fn local_time(now: SystemTime) -> String {
    let secs = unix_secs(now) as i64 + TIME_DIFF_MIN * 60;
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| "1970-01-01 00:00:00".to_owned())
}

// ---------------------------------------------------------------------------
// HTTP/1.1

/// Request bodies above this are refused with 413; KLAP bodies are a few KiB.
const MAX_BODY: usize = 64 * 1024;
const MAX_HEAD: usize = 8 * 1024;
const MAX_HEADERS: usize = 64;
/// A keep-alive connection with nothing to say for this long is closed.
const IDLE: Duration = Duration::from_secs(120);
/// How often a waiting connection looks at the `offline` knob.
const KNOB_POLL: Duration = Duration::from_millis(50);

#[derive(Debug)]
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The client asked for the connection to end after this exchange.
    close: bool,
}

#[derive(Debug)]
struct Head {
    method: String,
    target: String,
    http10: bool,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn wants_close(&self) -> bool {
        let tokens = || {
            self.header("connection")
                .flat_map(|v| v.split(','))
                .map(str::trim)
        };
        if self.http10 {
            !tokens().any(|t| t.eq_ignore_ascii_case("keep-alive"))
        } else {
            tokens().any(|t| t.eq_ignore_ascii_case("close"))
        }
    }

    /// Body length, or the status that refuses the request.
    fn body_len(&self) -> Result<usize, u16> {
        // We speak only Content-Length; a chunked body is refused before it
        // could be mistaken for the next request.
        if self.header("transfer-encoding").next().is_some() {
            return Err(411);
        }
        let mut len = None;
        for v in self.header("content-length") {
            let v = v.trim();
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(400);
            }
            // Digits only, so a parse error can only be an overflow.
            let n = v.parse::<usize>().unwrap_or(usize::MAX);
            if len.is_some_and(|l| l != n) {
                return Err(400);
            }
            len = Some(n);
        }
        match len {
            Some(n) if n > MAX_BODY => Err(413),
            Some(n) => Ok(n),
            None if self.method == "POST" => Err(411),
            None => Ok(0),
        }
    }
}

/// Parses a request head (request line and headers, without the blank
/// line).
fn parse_head(raw: &[u8]) -> Result<Head, u16> {
    let text = std::str::from_utf8(raw).map_err(|_| 400u16)?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(400);
    }
    if !target.starts_with('/') || target.bytes().any(|b| b.is_ascii_control()) {
        return Err(400);
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        v if v.starts_with("HTTP/") => return Err(505),
        _ => return Err(400),
    };
    let mut headers = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(400);
        };
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            return Err(400);
        }
        if headers.len() == MAX_HEADERS {
            return Err(431);
        }
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    Ok(Head {
        method: method.to_owned(),
        target: target.to_owned(),
        http10,
        headers,
    })
}

enum Incoming {
    Request(Request),
    /// A broken request: answer with this status, then close.
    Reject(u16),
    /// The peer left, idled out, or the plug went offline.
    Gone,
}

/// Reads more bytes into `buf`; false when the connection should end.
async fn fill(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
    knobs: &Knobs,
    since: Instant,
) -> std::io::Result<bool> {
    loop {
        if knobs.offline.load(Ordering::Relaxed) || since.elapsed() > IDLE {
            return Ok(false);
        }
        tokio::select! {
            r = sock.read_buf(buf) => return Ok(r? > 0),
            _ = tokio::time::sleep(KNOB_POLL) => {}
        }
    }
}

async fn read_request(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
    knobs: &Knobs,
) -> std::io::Result<Incoming> {
    let since = Instant::now();
    let head_end = loop {
        // Tolerate the stray CRLF some clients put between requests.
        while buf.starts_with(b"\r\n") {
            buf.drain(..2);
        }
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Ok(Incoming::Reject(431));
        }
        if !fill(sock, buf, knobs, since).await? {
            return Ok(Incoming::Gone);
        }
    };
    if head_end > MAX_HEAD {
        return Ok(Incoming::Reject(431));
    }
    let head = match parse_head(&buf[..head_end]) {
        Ok(h) => h,
        Err(status) => return Ok(Incoming::Reject(status)),
    };
    let len = match head.body_len() {
        Ok(n) => n,
        Err(status) => return Ok(Incoming::Reject(status)),
    };
    buf.drain(..head_end + 4);
    // curl holds back bodies over 1 KiB for a second unless told to go on.
    let expects = head
        .header("expect")
        .any(|v| v.eq_ignore_ascii_case("100-continue"));
    if expects && buf.len() < len {
        sock.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    while buf.len() < len {
        if !fill(sock, buf, knobs, since).await? {
            return Ok(Incoming::Gone);
        }
    }
    let body: Vec<u8> = buf.drain(..len).collect();
    Ok(Incoming::Request(Request {
        close: head.wants_close(),
        method: head.method,
        target: head.target,
        headers: head.headers,
        body,
    }))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[derive(Debug)]
struct Response {
    status: u16,
    content_type: Option<&'static str>,
    set_cookie: Option<String>,
    body: Vec<u8>,
}

impl Response {
    fn status(status: u16) -> Self {
        Self {
            status,
            content_type: None,
            set_cookie: None,
            body: Vec::new(),
        }
    }

    fn bytes(body: Vec<u8>) -> Self {
        Self {
            content_type: Some("application/octet-stream"),
            body,
            ..Self::status(200)
        }
    }

    fn json(v: Value) -> Self {
        Self {
            content_type: Some("application/json;charset=UTF-8"),
            body: v.to_string().into_bytes(),
            ..Self::status(200)
        }
    }

    fn encode(&self, close: bool) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Length: {}\r\n",
            self.status,
            reason(self.status),
            self.body.len()
        );
        if let Some(ct) = self.content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        if let Some(c) = &self.set_cookie {
            head.push_str(&format!("Set-Cookie: {c}\r\n"));
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Sleeps `ms`, but gives up (false) as soon as the plug goes offline.
async fn pause(ms: u64, knobs: &Knobs) -> bool {
    let until = Instant::now() + Duration::from_millis(ms);
    loop {
        if knobs.offline.load(Ordering::Relaxed) {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        tokio::time::sleep(left.min(KNOB_POLL)).await;
    }
}

/// Reads and discards what the peer still sends after our last answer
/// (the body of a refused request, say): closing a socket with unread data
/// makes the kernel send a reset, which can destroy the answer before the
/// client has read it.
async fn linger(sock: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    let mut left = 4 * MAX_BODY;
    while left > 0 {
        match tokio::time::timeout_at(deadline, sock.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => return,
        }
    }
}

async fn serve(mut sock: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let knobs = &shared.knobs;
    let _ = sock.set_nodelay(true);
    let mut buf = Vec::with_capacity(2048);
    loop {
        let incoming = read_request(&mut sock, &mut buf, knobs).await?;
        if matches!(incoming, Incoming::Gone) {
            return Ok(());
        }
        shared.requests.fetch_add(1, Ordering::Relaxed);
        if !pause(knobs.latency_ms.load(Ordering::Relaxed), knobs).await {
            return Ok(());
        }
        let (response, close) = match incoming {
            Incoming::Request(req) => {
                let response = shared.handle(&req);
                let close = req.close || knobs.close_after_reply.load(Ordering::Relaxed);
                (response, close)
            }
            // Whatever follows a broken request cannot be framed.
            Incoming::Reject(status) => (Response::status(status), true),
            Incoming::Gone => return Ok(()),
        };
        sock.write_all(&response.encode(close)).await?;
        if close {
            let _ = sock.shutdown().await;
            linger(&mut sock).await;
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = "user@example.com";
    const PASS: &str = "secret";

    async fn start(flavour: Flavour, load: Load) -> TapoSim {
        TapoSim::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            flavour,
            load,
            USER,
            PASS,
        )
        .await
        .expect("simulator starts")
    }

    #[derive(Debug)]
    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).expect("a JSON body")
        }
    }

    /// Reads one response; None when the server closed without answering.
    async fn read_reply(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Reply> {
        let end = loop {
            if let Some(i) = find(buf, b"\r\n\r\n") {
                break i;
            }
            let n = sock.read_buf(buf).await.ok()?;
            if n == 0 {
                return None;
            }
        };
        let head = std::str::from_utf8(&buf[..end])
            .expect("ASCII head")
            .to_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .expect("a Content-Length");
        buf.drain(..end + 4);
        while buf.len() < len {
            let n = sock.read_buf(buf).await.ok()?;
            if n == 0 {
                return None;
            }
        }
        let body = buf.drain(..len).collect();
        Some(Reply {
            status,
            headers,
            body,
        })
    }

    /// One request on a fresh connection.
    async fn exchange(addr: SocketAddr, raw: &[u8]) -> Option<Reply> {
        let mut sock = TcpStream::connect(addr).await.expect("connect");
        sock.write_all(raw).await.expect("send");
        read_reply(&mut sock, &mut Vec::new()).await
    }

    fn post(target: &str, cookie: Option<&str>, body: &[u8]) -> Vec<u8> {
        let mut raw = format!(
            "POST {target} HTTP/1.1\r\nHost: plug\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(c) = cookie {
            raw.push_str(&format!("Cookie: {c}\r\n"));
        }
        raw.push_str("\r\n");
        let mut raw = raw.into_bytes();
        raw.extend_from_slice(body);
        raw
    }

    /// A minimal KLAP client built on the shared crypto.
    struct Client {
        addr: SocketAddr,
        cookie: String,
        session: klap::Session,
    }

    async fn handshake1(addr: SocketAddr, local: [u8; 16]) -> Reply {
        exchange(addr, &post("/app/handshake1", None, &local))
            .await
            .expect("a handshake1 answer")
    }

    fn cookie_of(reply: &Reply) -> String {
        let set = reply.header("set-cookie").expect("Set-Cookie");
        let (id, timeout) = klap::parse_session_cookie(set).expect("TP_SESSIONID");
        assert_eq!(timeout, Some(86_400));
        assert_eq!(id.len(), 32);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
        );
        format!("TP_SESSIONID={id}")
    }

    async fn login(addr: SocketAddr) -> Client {
        let local = [7u8; 16];
        let r = handshake1(addr, local).await;
        assert_eq!(r.status, 200);
        let (remote, server_hash) = klap::parse_handshake1(&r.body).expect("48 bytes");
        let auth = klap::auth_hash(USER, PASS);
        assert_eq!(server_hash, klap::handshake1_hash(&local, &remote, &auth));
        let cookie = cookie_of(&r);
        let proof = klap::handshake2_hash(&local, &remote, &auth);
        let r = exchange(addr, &post("/app/handshake2", Some(&cookie), &proof))
            .await
            .expect("a handshake2 answer");
        assert_eq!(r.status, 200);
        assert!(r.body.is_empty());
        Client {
            addr,
            cookie,
            session: klap::Session::new(&local, &remote, &auth),
        }
    }

    impl Client {
        async fn raw(&mut self, body: Vec<u8>, seq: i32) -> Reply {
            let target = format!("/app/request?seq={seq}");
            exchange(self.addr, &post(&target, Some(&self.cookie), &body))
                .await
                .expect("an answer")
        }

        async fn call(&mut self, request: Value) -> Result<Value, u16> {
            let seq = self.session.next_seq().expect("seq");
            let body = self.session.encrypt(seq, request.to_string().as_bytes());
            let r = self.raw(body, seq).await;
            if r.status != 200 {
                return Err(r.status);
            }
            assert!(self.session.verify(seq, &r.body), "signed reply");
            let plain = self.session.decrypt(seq, &r.body).expect("decrypts");
            Ok(serde_json::from_slice(&plain).expect("JSON"))
        }

        async fn method(&mut self, method: &str) -> Value {
            self.call(json!({ "method": method })).await.expect("200")
        }
    }

    #[tokio::test]
    async fn oversized_body_gets_413_and_the_server_keeps_serving() {
        let sim = start(Flavour::P110, Load::Constant { watts: 100.0 }).await;
        let raw = b"POST /app/handshake1 HTTP/1.1\r\nHost: plug\r\nContent-Length: 70000\r\n\r\n";
        let r = exchange(sim.addr, raw).await.expect("an answer");
        assert_eq!(r.status, 413);
        assert_eq!(r.header("connection"), Some("close"));
        // Sent with the body as well: the answer must survive the unread
        // bytes.
        let mut raw = raw.to_vec();
        raw.extend(std::iter::repeat_n(b'x', 70_000));
        let r = exchange(sim.addr, &raw).await.expect("an answer");
        assert_eq!(r.status, 413);
        assert_eq!(handshake1(sim.addr, [1; 16]).await.status, 200);
    }

    #[tokio::test]
    async fn post_without_content_length_is_refused() {
        let sim = start(Flavour::P110, Load::Constant { watts: 100.0 }).await;
        let r = exchange(
            sim.addr,
            b"POST /app/handshake1 HTTP/1.1\r\nHost: plug\r\n\r\n",
        )
        .await
        .expect("an answer");
        assert_eq!(r.status, 411);
        let r = exchange(
            sim.addr,
            b"POST /app/handshake1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n",
        )
        .await
        .expect("an answer");
        assert_eq!(r.status, 411);
        let r = exchange(
            sim.addr,
            b"POST /app HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        )
        .await
        .expect("an answer");
        assert_eq!(r.status, 400);
        let r = exchange(
            sim.addr,
            b"POST /app HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        )
        .await
        .expect("an answer");
        assert_eq!(r.status, 400);
        assert_eq!(handshake1(sim.addr, [1; 16]).await.status, 200);
    }

    #[tokio::test]
    async fn garbage_gets_400_and_the_server_keeps_serving() {
        let sim = start(Flavour::P110, Load::Constant { watts: 100.0 }).await;
        for raw in [
            &b"GARBAGE\r\n\r\n"[..],
            b"POST  /app HTTP/1.1\r\n\r\n",
            b"post /app HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"POST app HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"POST /app FTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"POST /app HTTP/1.1\r\nno colon here\r\n\r\n",
            b"POST /app HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
        ] {
            let r = exchange(sim.addr, raw).await.expect("an answer");
            assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(raw));
        }
        let r = exchange(sim.addr, b"POST /app HTTP/2.0\r\n\r\n")
            .await
            .expect("an answer");
        assert_eq!(r.status, 505);
        let mut huge = b"POST /app HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 10_000));
        let r = exchange(sim.addr, &huge).await.expect("an answer");
        assert_eq!(r.status, 431);
        let r = exchange(sim.addr, b"GET /nothing HTTP/1.1\r\n\r\n")
            .await
            .expect("an answer");
        assert_eq!(r.status, 404);
        let r = exchange(sim.addr, b"GET /app/handshake1 HTTP/1.1\r\n\r\n")
            .await
            .expect("an answer");
        assert_eq!(r.status, 405);
        let r = exchange(sim.addr, &post("/app/handshake1", None, b"short"))
            .await
            .expect("an answer");
        assert_eq!(r.status, 400);
        assert_eq!(handshake1(sim.addr, [1; 16]).await.status, 200);
        assert_eq!(sim.requests(), 14);
        assert_eq!(sim.handshakes(), 3);
    }

    #[tokio::test]
    async fn expect_100_continue_gets_an_interim_answer() {
        let sim = start(Flavour::P110, Load::Constant { watts: 100.0 }).await;
        let mut sock = TcpStream::connect(sim.addr).await.expect("connect");
        sock.write_all(
            b"POST /app/handshake1 HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 16\r\n\r\n",
        )
        .await
        .expect("send");
        let mut buf = Vec::new();
        let interim = read_interim(&mut sock, &mut buf).await;
        assert_eq!(interim, "HTTP/1.1 100 Continue");
        sock.write_all(&[1; 16]).await.expect("send");
        let r = read_reply(&mut sock, &mut buf).await.expect("an answer");
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 48);
    }

    async fn read_interim(sock: &mut TcpStream, buf: &mut Vec<u8>) -> String {
        loop {
            if let Some(i) = find(buf, b"\r\n\r\n") {
                let line = String::from_utf8_lossy(&buf[..i]).into_owned();
                buf.drain(..i + 4);
                return line;
            }
            let n = sock.read_buf(buf).await.expect("read");
            assert!(n > 0, "closed");
        }
    }

    #[tokio::test]
    async fn keep_alive_and_pipelining_on_one_connection() {
        let sim = start(Flavour::P110, Load::Constant { watts: 100.0 }).await;
        let mut sock = TcpStream::connect(sim.addr).await.expect("connect");
        let mut raw = post("/app/handshake1", None, &[1; 16]);
        raw.extend(post("/app", None, b"{\"method\":\"component_nego\"}"));
        sock.write_all(&raw).await.expect("send");
        let mut buf = Vec::new();
        let a = read_reply(&mut sock, &mut buf).await.expect("first");
        assert_eq!(a.status, 200);
        assert_eq!(a.body.len(), 48);
        assert_eq!(a.header("connection"), None);
        let b = read_reply(&mut sock, &mut buf).await.expect("second");
        assert_eq!(b.json(), json!({ "error_code": 1003 }));
        sock.write_all(b"POST /app HTTP/1.1\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}")
            .await
            .expect("send");
        let c = read_reply(&mut sock, &mut buf).await.expect("third");
        assert_eq!(c.header("connection"), Some("close"));
        assert!(read_reply(&mut sock, &mut buf).await.is_none(), "closed");
    }

    #[tokio::test]
    async fn wrong_credentials_change_the_server_hash() {
        let sim = start(Flavour::P110, Load::Constant { watts: 100.0 }).await;
        let local = [3u8; 16];
        let auth = klap::auth_hash(USER, PASS);
        let check = |r: &Reply| {
            let (remote, hash) = klap::parse_handshake1(&r.body).expect("48 bytes");
            hash == klap::handshake1_hash(&local, &remote, &auth)
        };
        assert!(check(&handshake1(sim.addr, local).await));
        sim.knobs.wrong_credentials.store(true, Ordering::Relaxed);
        let r = handshake1(sim.addr, local).await;
        assert_eq!(r.status, 200);
        assert!(!check(&r), "a plug bound to another account");
        // Nor does it match the defaults clients fall back to.
        let (remote, hash) = klap::parse_handshake1(&r.body).expect("48 bytes");
        for (u, p) in [
            ("", ""),
            ("test@tp-link.net", "test"),
            ("kasa@tp-link.net", "kasaSetup"),
        ] {
            assert_ne!(
                hash,
                klap::handshake1_hash(&local, &remote, &klap::auth_hash(u, p))
            );
        }
        // Our own credentials cannot complete handshake2 either.
        let cookie = cookie_of(&r);
        let proof = klap::handshake2_hash(&local, &remote, &auth);
        let r = exchange(sim.addr, &post("/app/handshake2", Some(&cookie), &proof))
            .await
            .expect("an answer");
        assert_eq!(r.status, 403);
        sim.knobs.wrong_credentials.store(false, Ordering::Relaxed);
        assert!(check(&handshake1(sim.addr, local).await));
    }

    #[tokio::test]
    async fn p110_speaks_klap_and_switches() {
        let sim = start(Flavour::P110, Load::Constant { watts: 1500.0 }).await;
        let mut c = login(sim.addr).await;
        let info = c.method("get_device_info").await;
        assert_eq!(info["error_code"], 0);
        let info = &info["result"];
        assert_eq!(info["model"], "P110");
        assert_eq!(info["type"], "SMART.TAPOPLUG");
        assert_eq!(info["device_on"], true);
        assert_eq!(info["overheat_status"], "normal");
        assert_eq!(info["device_id"].as_str().map(str::len), Some(40));
        let nick = base64::engine::general_purpose::STANDARD
            .decode(info["nickname"].as_str().expect("nickname"))
            .expect("base64");
        assert_eq!(nick, b"E2M Sim Plug");
        assert!(info["rssi"].as_i64().is_some_and(|r| r < 0));

        let e = c.method("get_energy_usage").await;
        assert_eq!(e["result"]["current_power"], 1_500_000);
        assert!(
            e["result"]["local_time"]
                .as_str()
                .is_some_and(|t| t.len() == 19)
        );
        let p = c.method("get_current_power").await;
        assert_eq!(p["result"]["current_power"], 1500);
        let m = c.method("get_emeter_data").await;
        assert_eq!(m["result"]["power_mw"], 1_500_000);
        let v = m["result"]["voltage_mv"].as_u64().expect("voltage");
        let i = m["result"]["current_ma"].as_u64().expect("current");
        assert!((228_000..232_000).contains(&v));
        assert!((i as f64 * v as f64 / 1e6 - 1500.0).abs() < 2.0);

        let nego = c.method("component_nego").await;
        let list = nego["result"]["component_list"].as_array().expect("list");
        assert!(list.contains(&json!({ "id": "energy_monitoring", "ver_code": 2 })));

        let off = c
            .call(
                json!({ "method": "set_device_info", "params": { "device_on": false },
                          "request_time_milis": 1, "terminal_uuid": "x" }),
            )
            .await
            .expect("200");
        assert_eq!(off, json!({ "error_code": 0 }));
        assert!(!sim.is_on());
        assert_eq!(sim.power_w(), 0.0);
        let bad = c
            .call(json!({ "method": "set_device_info", "params": { "device_on": "yes" } }))
            .await
            .expect("200");
        assert_eq!(bad["error_code"], -1008);

        let batch = c
            .call(
                json!({ "method": "multipleRequest", "params": { "requests": [
                { "method": "get_device_info" },
                { "method": "get_energy_usage" },
                { "method": "no_such_method" },
            ] } }),
            )
            .await
            .expect("200");
        let r = batch["result"]["responses"].as_array().expect("responses");
        assert_eq!(r.len(), 3);
        assert_eq!(r[0]["method"], "get_device_info");
        assert_eq!(r[0]["result"]["device_on"], false);
        assert_eq!(r[1]["result"]["current_power"], 0);
        assert_eq!(
            r[2],
            json!({ "method": "no_such_method", "error_code": -1002 })
        );

        sim.set_on(true);
        let info = c.method("get_device_info").await;
        assert_eq!(info["result"]["device_on"], true);
        assert_eq!(sim.handshakes(), 1);

        let not_json = c
            .session
            .next_seq()
            .map(|seq| (seq, c.session.encrypt(seq, b"not json")))
            .expect("seq");
        let r = c.raw(not_json.1, not_json.0).await;
        assert_eq!(r.status, 200);
        let plain = c.session.decrypt(not_json.0, &r.body).expect("decrypts");
        assert_eq!(plain, br#"{"error_code":-1003}"#);
    }

    #[tokio::test]
    async fn dead_sessions_and_bad_requests() {
        let sim = start(Flavour::P110, Load::Constant { watts: 100.0 }).await;
        let mut c = login(sim.addr).await;

        // A bad signature.
        let seq = c.session.next_seq().expect("seq");
        let mut body = c.session.encrypt(seq, br#"{"method":"get_device_info"}"#);
        body[0] ^= 1;
        assert_eq!(c.raw(body, seq).await.status, 400);
        // The wrong seq for the body.
        let body = c.session.encrypt(seq, br#"{"method":"get_device_info"}"#);
        assert_eq!(c.raw(body.clone(), seq.wrapping_add(5)).await.status, 400);
        // Too short for a signature, and no seq at all.
        assert_eq!(c.raw(vec![1, 2, 3], seq).await.status, 400);
        let r = exchange(sim.addr, &post("/app/request", Some(&c.cookie), &body))
            .await
            .expect("an answer");
        assert_eq!(r.status, 400);
        // Unknown and missing cookies.
        let r = exchange(
            sim.addr,
            &post(
                &format!("/app/request?seq={seq}"),
                Some("TP_SESSIONID=00"),
                &body,
            ),
        )
        .await
        .expect("an answer");
        assert_eq!(r.status, 403);
        let r = exchange(
            sim.addr,
            &post(&format!("/app/request?seq={seq}"), None, &body),
        )
        .await
        .expect("an answer");
        assert_eq!(r.status, 403);

        // handshake1 without handshake2 is not a session yet.
        let local = [9u8; 16];
        let r = handshake1(sim.addr, local).await;
        let half = cookie_of(&r);
        let r = exchange(
            sim.addr,
            &post(&format!("/app/request?seq={seq}"), Some(&half), &body),
        )
        .await
        .expect("an answer");
        assert_eq!(r.status, 403);
        // A wrong handshake2 proof.
        let r = exchange(sim.addr, &post("/app/handshake2", Some(&half), &[0; 32]))
            .await
            .expect("an answer");
        assert_eq!(r.status, 403);

        // The session still works, until the server forgets it.
        assert!(c.call(json!({ "method": "get_device_info" })).await.is_ok());
        sim.knobs.session_ttl_s.store(0, Ordering::Relaxed);
        assert_eq!(
            c.call(json!({ "method": "get_device_info" })).await,
            Err(403)
        );
        sim.knobs.session_ttl_s.store(86_400, Ordering::Relaxed);
        assert_eq!(
            c.call(json!({ "method": "get_device_info" })).await,
            Err(403),
            "an expired session stays dead"
        );
        let mut c = login(sim.addr).await;
        assert!(c.call(json!({ "method": "get_device_info" })).await.is_ok());
    }

    #[tokio::test]
    async fn p100_has_no_metering_and_closes_connections() {
        let sim = start(Flavour::P100, Load::Heater { watts: 2000.0 }).await;
        assert!(sim.knobs.close_after_reply.load(Ordering::Relaxed));
        let r = handshake1(sim.addr, [1; 16]).await;
        assert_eq!(r.header("connection"), Some("close"));
        let mut c = login(sim.addr).await;
        let info = c.method("get_device_info").await;
        assert_eq!(info["result"]["model"], "P100");
        assert_eq!(info["result"]["overheated"], false);
        for m in ["get_energy_usage", "get_current_power", "get_emeter_data"] {
            assert_eq!(c.method(m).await, json!({ "error_code": -1002 }), "{m}");
        }
        let nego = c.method("component_nego").await;
        let list = nego["result"]["component_list"].as_array().expect("list");
        assert!(!list.iter().any(|c| c["id"] == "energy_monitoring"));
        let usage = c.method("get_device_usage").await;
        assert!(usage["result"].get("power_usage").is_none());
        assert!(usage["result"]["time_usage"].get("today").is_some());
        // The load still draws power; the plug just cannot tell.
        let w = sim.power_w();
        assert!((1960.0..=2040.0).contains(&w), "{w}");
    }

    #[tokio::test]
    async fn knobs_rate_limit_disable_offline_latency() {
        let sim = start(Flavour::P110, Load::Constant { watts: 100.0 }).await;
        let discover = br#"{"method":"login","params":{"sub_method":"discover"}}"#;
        let r = exchange(sim.addr, &post("/", None, discover))
            .await
            .expect("answer");
        assert_eq!(
            r.json(),
            json!({"error_code":0,"result":{"sub_method":"discover","tpap_preferred":false}})
        );
        let r = exchange(
            sim.addr,
            &post(
                "/app",
                None,
                br#"{"method":"component_nego","params":null}"#,
            ),
        )
        .await
        .expect("answer");
        assert_eq!(r.json(), json!({ "error_code": 1003 }));

        sim.knobs.klap_disabled.store(true, Ordering::Relaxed);
        assert_eq!(handshake1(sim.addr, [1; 16]).await.status, 403);
        let r = exchange(sim.addr, &post("/", None, discover))
            .await
            .expect("answer");
        let j = r.json();
        assert_eq!(j["result"]["tpap_preferred"], true);
        assert_eq!(j["result"]["tpap"]["pake"], json!([2]));
        assert_eq!(j["result"]["tpap"]["port"], sim.addr.port());
        sim.knobs.klap_disabled.store(false, Ordering::Relaxed);

        sim.knobs.rate_limited.store(true, Ordering::Relaxed);
        assert_eq!(handshake1(sim.addr, [1; 16]).await.status, 429);
        sim.knobs.rate_limited.store(false, Ordering::Relaxed);

        sim.knobs.latency_ms.store(200, Ordering::Relaxed);
        let t = Instant::now();
        assert_eq!(handshake1(sim.addr, [1; 16]).await.status, 200);
        assert!(t.elapsed() >= Duration::from_millis(200));
        sim.knobs.latency_ms.store(0, Ordering::Relaxed);

        // An idle keep-alive connection is dropped when the plug goes away.
        let mut idle = TcpStream::connect(sim.addr).await.expect("connect");
        idle.write_all(&post("/app/handshake1", None, &[1; 16]))
            .await
            .expect("send");
        let mut buf = Vec::new();
        assert!(read_reply(&mut idle, &mut buf).await.is_some());
        sim.knobs.offline.store(true, Ordering::Relaxed);
        let closed = tokio::time::timeout(Duration::from_secs(2), read_reply(&mut idle, &mut buf))
            .await
            .expect("closed promptly");
        assert!(closed.is_none());
        assert!(
            exchange(sim.addr, &post("/app/handshake1", None, &[1; 16]))
                .await
                .is_none()
        );
        sim.knobs.offline.store(false, Ordering::Relaxed);
        assert_eq!(handshake1(sim.addr, [1; 16]).await.status, 200);
        // Refused attempts count; the one dropped while offline never
        // reached the plug.
        assert_eq!(sim.handshakes(), 5);
    }

    #[tokio::test]
    async fn dropping_the_simulator_closes_its_connections() {
        let sim = start(Flavour::P110, Load::Constant { watts: 100.0 }).await;
        let addr = sim.addr;
        let mut open = TcpStream::connect(addr).await.expect("connect");
        open.write_all(&post("/app/handshake1", None, &[1; 16]))
            .await
            .expect("send");
        let mut buf = Vec::new();
        assert!(read_reply(&mut open, &mut buf).await.is_some());
        drop(sim);
        let closed = tokio::time::timeout(Duration::from_secs(2), read_reply(&mut open, &mut buf))
            .await
            .expect("closed promptly");
        assert!(closed.is_none());
    }

    fn at(unix: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(unix)
    }

    #[test]
    fn energy_accumulates_while_on_and_rolls_over_at_midnight() {
        let load = Load::Constant { watts: 1000.0 };
        // 2025-03-31 22:00 UTC.
        let start = 1_743_458_400;
        let mut m = Meter::new(at(start));
        m.advance(load, at(start + 3600));
        let s = m.totals(at(start + 3600));
        assert!((s.today.wh - 1000.0).abs() < 1e-6, "{s:?}");
        assert!((s.today.on_s - 3600.0).abs() < 1e-6);
        assert!((s.month.wh - 1000.0).abs() < 1e-6);
        // Off for an hour: nothing counts.
        m.on = false;
        m.advance(load, at(start + 7200));
        // Midnight passed into April: a new day and a new month.
        let s = m.totals(at(start + 7200));
        assert_eq!(s.today.wh, 0.0);
        assert_eq!(s.month.wh, 0.0);
        assert!((s.past7.wh - 1000.0).abs() < 1e-6);
        assert!((m.since_boot_wh - 1000.0).abs() < 1e-6);
        m.on = true;
        m.on_since = at(start + 7200);
        m.advance(load, at(start + 7200 + 1800));
        let s = m.totals(at(start + 7200 + 1800));
        assert!((s.today.wh - 500.0).abs() < 1e-6);
        assert!((s.month.wh - 500.0).abs() < 1e-6);
        assert!((s.past30.wh - 1500.0).abs() < 1e-6);
        // A wall clock that jumps back counts nothing.
        m.advance(load, at(start));
        m.advance(load, at(start + 1));
        // Only the one second after the jump.
        assert!((m.since_boot_wh - 1500.0 - 1000.0 / 3600.0).abs() < 1e-6);
    }

    #[test]
    fn the_fridge_cycles_its_compressor() {
        let load = Load::Fridge {
            watts: 120.0,
            on_s: 600.0,
            off_s: 1200.0,
        };
        let t = 1_750_000_000.0;
        let running = draw(load, 10.0, t);
        assert!((115.0..=125.0).contains(&running), "{running}");
        assert_eq!(draw(load, 700.0, t), 0.0);
        assert!(draw(load, 1800.0 + 10.0, t) > 100.0, "the next cycle");
        // Three full cycles: a third of the time at ~120 W.
        let start = 1_750_000_000;
        let mut m = Meter::new(at(start));
        m.advance(load, at(start + 3 * 1800));
        let expected = 120.0 * 3.0 * 600.0 / 3600.0;
        assert!(
            (m.since_boot_wh - expected).abs() < 0.03 * expected,
            "{}",
            m.since_boot_wh
        );
        // Nonsense periods do not panic or produce NaN.
        let odd = Load::Fridge {
            watts: f64::NAN,
            on_s: -1.0,
            off_s: 0.0,
        };
        assert_eq!(draw(odd, 5.0, t), 0.0);
        assert_eq!(draw(Load::Constant { watts: -5.0 }, 0.0, t), 0.0);
    }

    #[test]
    fn an_idle_appliance_draws_nothing_but_the_relay_stays_on() {
        let load = Load::Constant { watts: 1000.0 };
        let start = 1_750_000_000;
        let mut m = Meter::new(at(start));
        m.idle = true;
        assert_eq!(m.power(load, at(start + 10)), 0.0);
        m.advance(load, at(start + 3600));
        let s = m.totals(at(start + 3600));
        assert_eq!(s.today.wh, 0.0);
        assert!((s.today.on_s - 3600.0).abs() < 1e-6, "the relay was on");
        m.idle = false;
        assert_eq!(m.power(load, at(start + 3600)), 1000.0);
        m.advance(load, at(start + 7200));
        assert!((m.since_boot_wh - 1000.0).abs() < 1e-6);
        assert_eq!(load.draw_w(1.0, 0.0), 1000.0);
    }

    #[tokio::test]
    async fn set_drawing_and_the_handle_agree_with_the_plug() {
        let sim = start(Flavour::P110, Load::Constant { watts: 1500.0 }).await;
        let handle = sim.handle();
        assert!(sim.is_drawing() && handle.is_drawing());
        assert_eq!(handle.power_w(), 1500.0);
        handle.set_drawing(false);
        assert!(sim.is_on() && handle.is_on(), "the relay is untouched");
        assert!(!sim.is_drawing());
        assert_eq!(sim.power_w(), 0.0);
        sim.set_drawing(true);
        assert_eq!(handle.power_w(), 1500.0);
        sim.set_on(false);
        assert!(!handle.is_on());
        assert_eq!(handle.power_w(), 0.0);
    }

    #[test]
    fn boiler_and_heater_stay_near_their_rating() {
        for s in 0..1000u64 {
            let t = 1_750_000_000.0 + s as f64;
            let b = draw(Load::Boiler { watts: 3000.0 }, 1.0, t);
            assert!((2985.0..=3015.0).contains(&b), "{b}");
            let h = draw(Load::Heater { watts: 2000.0 }, 1.0, t);
            assert!((1965.0..=2035.0).contains(&h), "{h}");
        }
    }
}
