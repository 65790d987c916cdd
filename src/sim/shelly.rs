//! A Shelly Plus Plug S (or Plug S Gen3) on loopback: the Gen2 RPC over
//! `GET /rpc/<Method>`, `POST /rpc/<Method>`, JSON-RPC frames on
//! `POST /rpc` and on the `/rpc` WebSocket (with `NotifyStatus` when the
//! relay changes), `/shelly`, SHA-256 digest authentication as the device
//! does it, a relay with a load behind it, a lifetime energy counter, and
//! knobs for the failures a driver must survive. Its answers are built
//! from its own state, shaped as Shelly's API documentation describes
//! them; aioshelly (Home Assistant's library) accepts it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::drivers::shelly::digest;

/// Which device the simulator is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimModel {
    /// SNPL-00112EU, Gen2.
    PlusPlugS,
    /// S3PL-00112EU, Gen3.
    PlugSGen3,
}

impl SimModel {
    fn ident(
        self,
    ) -> (
        &'static str,
        &'static str,
        &'static str,
        u8,
        &'static str,
        &'static str,
    ) {
        // (id prefix, SKU, app, gen, fw_id, ver)
        match self {
            Self::PlusPlugS => (
                "shellyplusplugs",
                "SNPL-00112EU",
                "PlugS",
                2,
                "20241011-114455/1.4.4-g6d2a586",
                "1.4.4",
            ),
            Self::PlugSGen3 => (
                "shellyplugsg3",
                "S3PL-00112EU",
                "PlugSG3",
                3,
                "20241011-114448/1.4.4-g6d2a586",
                "1.4.4",
            ),
        }
    }
}

/// What the simulated plug is and what is plugged in.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    pub model: SimModel,
    /// What the load draws while the relay is on, W.
    pub load_w: f64,
    /// Noise amplitude on the power, W (0 for exact numbers). The noise
    /// changes once a second and is a function of `seed` and the second.
    pub noise_w: f64,
    pub seed: u64,
    pub voltage_v: f64,
    pub temperature_c: f64,
    pub rssi_dbm: i64,
    /// `aenergy.total` at start, Wh.
    pub energy_wh: f64,
    /// Relay state at start.
    pub on: bool,
    /// The device's password (user `admin`); `None`: no authentication.
    pub password: Option<String>,
    /// `switch:0` trips (`overpower`, relay off) above this, W.
    pub power_limit_w: f64,
    /// The name set in the app.
    pub name: Option<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            model: SimModel::PlusPlugS,
            load_w: 500.0,
            noise_w: 0.0,
            seed: 0,
            voltage_v: 230.0,
            temperature_c: 38.5,
            rssi_dbm: -58,
            energy_wh: 0.0,
            on: true,
            password: None,
            power_limit_w: 2500.0,
            name: None,
        }
    }
}

/// Behaviour switchable while the simulator runs.
#[derive(Debug)]
pub struct Knobs {
    /// Delay before each answer (HTTP and WebSocket).
    pub latency_ms: AtomicU64,
    /// Every HTTP request is answered 503, as a device whose HTTP server
    /// is out of connections does.
    pub busy: AtomicBool,
    /// A nonce signs one HTTP request only (firmware before 2.0); by
    /// default it signs any number, `nc` growing, for its lifetime.
    pub single_use_nonces: AtomicBool,
    /// How long an issued nonce is valid; after that the device answers
    /// `stale=true` (firmware 2.0: an hour).
    pub nonce_ttl_ms: AtomicU64,
    /// Answers as a Gen1 Plug S would: `/shelly` in the Gen1 shape, no
    /// `/rpc` at all (404). For the driver's "this is a Gen1" message.
    pub gen1: AtomicBool,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            latency_ms: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            single_use_nonces: AtomicBool::new(false),
            nonce_ttl_ms: AtomicU64::new(3_600_000),
            gen1: AtomicBool::new(false),
        }
    }
}

/// A running simulated Shelly. Dropping it closes the port and every
/// connection.
pub struct ShellySim {
    pub addr: SocketAddr,
    pub knobs: Arc<Knobs>,
    shared: Arc<Shared>,
    _task: JoinHandle<()>,
}

impl ShellySim {
    /// Listens on `listen` (port 0 for a free one), which must be a
    /// loopback address.
    pub async fn start(listen: SocketAddr, config: SimConfig) -> std::io::Result<Self> {
        if !listen.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("the Shelly simulator listens on loopback only, not {listen}"),
            ));
        }
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let knobs = Arc::new(Knobs::default());
        let shared = Arc::new(Shared::new(config, addr, knobs.clone()));
        let app = Router::new()
            .route("/shelly", get(shelly))
            .route("/rpc", get(ws_upgrade).post(rpc_frame))
            .route("/rpc/:method", get(rpc_get).post(rpc_post))
            .with_state(shared.clone());
        let stop = shared.stop.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "simulated Shelly: server ended");
            }
        });
        Ok(Self {
            addr,
            knobs,
            shared,
            _task: task,
        })
    }

    /// The device id (`shellyplusplugs-<mac>`), also its digest realm.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    pub fn mac(&self) -> &str {
        &self.shared.mac
    }

    /// A handle on the relay and load for other tasks; it does not keep
    /// the server running.
    pub fn handle(&self) -> ShellyHandle {
        ShellyHandle(self.shared.clone())
    }

    /// Requests and frames received, refused ones included.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// `Switch.Set` calls received.
    pub fn switch_sets(&self) -> u64 {
        self.shared.switch_sets.load(Ordering::Relaxed)
    }

    /// Sets, changes or removes the password (`Shelly.SetAuth`).
    pub fn set_password(&self, password: Option<&str>) {
        *lock(&self.shared.password) = password.map(str::to_owned);
    }

    /// Unreachable: requests get no answer (the client times out) and
    /// WebSocket connections are closed, until switched back.
    pub fn set_offline(&self, offline: bool) {
        self.shared.offline.send_replace(offline);
    }

    pub fn is_on(&self) -> bool {
        self.handle().is_on()
    }

    /// The button on the plug.
    pub fn set_on(&self, on: bool) {
        self.handle().set_on(on);
    }

    pub fn power_w(&self) -> f64 {
        self.handle().power_w()
    }

    pub fn set_load_w(&self, watts: f64) {
        self.handle().set_load_w(watts);
    }

    /// The lifetime counter, Wh.
    pub fn energy_wh(&self) -> f64 {
        self.handle().energy_wh()
    }

    /// The device overheats (`overtemp`; the relay goes off and stays off
    /// until cleared).
    pub fn set_overheated(&self, hot: bool) {
        self.shared.set_overheated(hot);
    }
}

impl Drop for ShellySim {
    fn drop(&mut self) {
        // The server stops accepting, closes idle keep-alive connections
        // and the WebSockets, and ends when the last one has gone.
        self.shared.stop.cancel();
    }
}

/// The relay and load of a running [`ShellySim`], shareable between tasks.
#[derive(Clone)]
pub struct ShellyHandle(Arc<Shared>);

impl ShellyHandle {
    pub fn is_on(&self) -> bool {
        self.0.state().on
    }

    pub fn set_on(&self, on: bool) {
        self.0.switch(on, "button");
    }

    /// What the plug measures now, W.
    pub fn power_w(&self) -> f64 {
        let st = self.0.state();
        self.0.power(&st, unix_now())
    }

    /// What is plugged in draws this much from now on (an appliance's
    /// thermostat; 0 for one that is off).
    pub fn set_load_w(&self, watts: f64) {
        let mut st = self.0.state();
        st.advance(Instant::now());
        st.load_w = watts.max(0.0);
        let limit = self.0.config.power_limit_w;
        st.trip_if_over(limit);
    }

    pub fn energy_wh(&self) -> f64 {
        let mut st = self.0.state();
        st.advance(Instant::now());
        st.total_wh
    }
}

// ---------------------------------------------------------------------------
// State

/// Nonces the device remembers; the oldest goes first.
const MAX_NONCES: usize = 64;

#[derive(Debug)]
struct PlugState {
    on: bool,
    load_w: f64,
    total_wh: f64,
    /// When `total_wh` was last brought up to date.
    at: Instant,
    source: &'static str,
    overpower: bool,
    overtemp: bool,
}

impl PlugState {
    fn advance(&mut self, now: Instant) {
        let dt_h = now.saturating_duration_since(self.at).as_secs_f64() / 3600.0;
        if self.on {
            self.total_wh += self.load_w * dt_h;
        }
        self.at = now;
    }

    /// The plug's protection: a load over the limit opens the relay.
    fn trip_if_over(&mut self, limit_w: f64) {
        if self.on && self.load_w > limit_w {
            self.on = false;
            self.overpower = true;
            self.source = "overpower";
        }
    }

    fn errors(&self) -> Vec<&'static str> {
        let mut e = Vec::new();
        if self.overtemp {
            e.push("overtemp");
        }
        if self.overpower {
            e.push("overpower");
        }
        e
    }
}

#[derive(Debug, Clone, Copy)]
struct Nonce {
    value: u64,
    issued: Instant,
    last_nc: u32,
}

/// How a presented nonce fares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NonceCheck {
    Good,
    /// Issued by us but expired: the credentials may be right.
    Stale,
    /// Never issued, forgotten, or replayed.
    Unknown,
}

struct Shared {
    config: SimConfig,
    id: String,
    mac: String,
    sku: &'static str,
    app: &'static str,
    gen_: u8,
    fw_id: &'static str,
    ver: &'static str,
    knobs: Arc<Knobs>,
    password: Mutex<Option<String>>,
    state: Mutex<PlugState>,
    nonces: Mutex<(VecDeque<Nonce>, u64)>,
    /// Status changes for the WebSocket peers.
    notify: broadcast::Sender<Value>,
    offline: watch::Sender<bool>,
    stop: CancellationToken,
    started: Instant,
    requests: AtomicU64,
    switch_sets: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update is a few assignments: a panic cannot leave it torn.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A number in [-1, 1] from `seed` and `n` (splitmix64).
fn noise(seed: u64, n: u64) -> f64 {
    let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

fn round(v: f64, decimals: u8) -> f64 {
    crate::model::round(v, decimals)
}

impl Shared {
    fn new(config: SimConfig, addr: SocketAddr, knobs: Arc<Knobs>) -> Self {
        let (prefix, sku, app, gen_, fw_id, ver) = config.model.ident();
        // Locally administered (02…) so it can never be a real device's
        // address; the port tells several simulators apart.
        let [hi, lo] = addr.port().to_be_bytes();
        let mac = format!("02E24D00{hi:02X}{lo:02X}");
        let id = format!("{prefix}-{}", mac.to_ascii_lowercase());
        let mut state = PlugState {
            on: config.on,
            load_w: config.load_w.max(0.0),
            total_wh: config.energy_wh.max(0.0),
            at: Instant::now(),
            source: "init",
            overpower: false,
            overtemp: false,
        };
        state.trip_if_over(config.power_limit_w);
        let (notify, _) = broadcast::channel(16);
        let first_nonce = unix_now() as u64;
        Self {
            password: Mutex::new(config.password.clone().filter(|p| !p.is_empty())),
            config,
            id,
            mac,
            sku,
            app,
            gen_,
            fw_id,
            ver,
            knobs,
            state: Mutex::new(state),
            nonces: Mutex::new((VecDeque::new(), first_nonce)),
            notify,
            offline: watch::channel(false).0,
            stop: CancellationToken::new(),
            started: Instant::now(),
            requests: AtomicU64::new(0),
            switch_sets: AtomicU64::new(0),
        }
    }

    fn state(&self) -> MutexGuard<'_, PlugState> {
        lock(&self.state)
    }

    fn power(&self, st: &PlugState, unix: f64) -> f64 {
        if !st.on {
            return 0.0;
        }
        let n = noise(self.config.seed, unix.max(0.0) as u64);
        (st.load_w + self.config.noise_w * n).max(0.0)
    }

    /// Switches the relay; returns whether it was on.
    fn switch(&self, on: bool, source: &'static str) -> bool {
        let changed;
        let was_on;
        {
            let mut st = self.state();
            st.advance(Instant::now());
            was_on = st.on;
            if on {
                // A new attempt clears a past trip; heat still forbids it.
                st.overpower = false;
                st.on = !st.overtemp;
                st.trip_if_over(self.config.power_limit_w);
            } else {
                st.on = false;
            }
            st.source = source;
            changed = st.on != was_on;
        }
        if changed {
            self.notify_switch();
        }
        was_on
    }

    fn set_overheated(&self, hot: bool) {
        {
            let mut st = self.state();
            st.advance(Instant::now());
            st.overtemp = hot;
            if hot {
                st.on = false;
                st.source = "overtemp";
            }
        }
        self.notify_switch();
    }

    fn notify_switch(&self) {
        let sw = self.switch_status();
        let _ = self.notify.send(json!({
            "ts": round(unix_now(), 2),
            "switch:0": sw,
        }));
    }

    fn realm(&self) -> &str {
        &self.id
    }

    fn ha1(&self) -> Option<String> {
        lock(&self.password)
            .as_deref()
            .map(|pw| digest::ha1(digest::USER, self.realm(), pw))
    }

    // -- nonces ------------------------------------------------------------

    fn issue_nonce(&self) -> u64 {
        let mut g = lock(&self.nonces);
        let (list, next) = &mut *g;
        let value = *next;
        *next += 1;
        if list.len() >= MAX_NONCES {
            list.pop_front();
        }
        list.push_back(Nonce {
            value,
            issued: Instant::now(),
            last_nc: 0,
        });
        value
    }

    /// Checks a nonce; `nc` (HTTP only) must grow with every use.
    fn check_nonce(&self, nonce: &str, nc: Option<u32>) -> NonceCheck {
        let Ok(value) = nonce.parse::<u64>() else {
            return NonceCheck::Unknown;
        };
        let ttl = Duration::from_millis(self.knobs.nonce_ttl_ms.load(Ordering::Relaxed));
        let single_use = self.knobs.single_use_nonces.load(Ordering::Relaxed);
        let mut g = lock(&self.nonces);
        let list = &mut g.0;
        let Some(i) = list.iter().position(|n| n.value == value) else {
            return NonceCheck::Unknown;
        };
        if list[i].issued.elapsed() > ttl {
            list.remove(i);
            return NonceCheck::Stale;
        }
        if let Some(nc) = nc {
            if nc <= list[i].last_nc {
                return NonceCheck::Unknown;
            }
            list[i].last_nc = nc;
            if single_use {
                list.remove(i);
            }
        }
        NonceCheck::Good
    }

    /// Whether an HTTP request may call `method`: `Err(stale)` asks for
    /// (new) credentials.
    fn http_auth(
        &self,
        method: &str,
        headers: &HeaderMap,
        verb: &str,
        uri: &str,
    ) -> Result<(), bool> {
        let Some(ha1) = self.ha1() else { return Ok(()) };
        if is_open(method) {
            return Ok(());
        }
        let Some(a) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|h| digest::parse_authorization(h).ok())
        else {
            return Err(false);
        };
        if a.username != digest::USER || a.realm != self.realm() || a.uri != uri || a.qop != "auth"
        {
            return Err(false);
        }
        if !a.verifies(&ha1, verb) {
            return Err(false);
        }
        match self.check_nonce(&a.nonce, Some(a.count().unwrap_or(0))) {
            NonceCheck::Good => Ok(()),
            NonceCheck::Stale => Err(true),
            NonceCheck::Unknown => Err(false),
        }
    }

    /// Whether a JSON-RPC frame may call `method`.
    fn frame_auth(&self, method: &str, frame: &Value) -> Result<(), bool> {
        let Some(ha1) = self.ha1() else { return Ok(()) };
        if is_open(method) {
            return Ok(());
        }
        let Some(auth) = frame.get("auth") else {
            return Err(false);
        };
        if auth.get("realm").and_then(Value::as_str) != Some(self.realm()) {
            return Err(false);
        }
        let Some(nonce) = digest::rpc_auth_verifies(auth, &ha1) else {
            return Err(false);
        };
        // Over a frame the nonce is reused with the same or any nc: Shelly
        // documents building the auth object once per connection.
        match self.check_nonce(&nonce, None) {
            NonceCheck::Good => Ok(()),
            NonceCheck::Stale => Err(true),
            NonceCheck::Unknown => Err(false),
        }
    }

    /// The `error.message` of a 401 frame: the challenge as JSON text.
    fn frame_challenge(&self, stale: bool) -> String {
        let mut c = json!({
            "auth_type": "digest",
            "nonce": self.issue_nonce(),
            "nc": 1,
            "realm": self.realm(),
            "algorithm": digest::ALGORITHM,
        });
        if stale {
            c["stale"] = Value::Bool(true);
        }
        c.to_string()
    }

    fn unauthorized(&self, stale: bool) -> Response {
        let nonce = self.issue_nonce().to_string();
        (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                digest::challenge_header(self.realm(), &nonce, stale),
            )],
            axum::Json(json!({"code": 401, "message": "Unauthorized"})),
        )
            .into_response()
    }

    // -- answers -------------------------------------------------------------

    fn device_info(&self) -> Value {
        let auth = lock(&self.password).is_some();
        json!({
            "name": self.config.name,
            "id": self.id,
            "mac": self.mac,
            "slot": 0,
            "model": self.sku,
            "gen": self.gen_,
            "fw_id": self.fw_id,
            "ver": self.ver,
            "app": self.app,
            "auth_en": auth,
            "auth_domain": if auth { Value::from(self.id.as_str()) } else { Value::Null },
        })
    }

    fn switch_status(&self) -> Value {
        let unix = unix_now();
        let mut st = self.state();
        st.advance(Instant::now());
        let power = round(self.power(&st, unix), 1);
        let voltage = round(self.config.voltage_v, 1);
        let current = if voltage > 0.0 {
            round(power / voltage, 3)
        } else {
            0.0
        };
        // mWh in each of the last three whole minutes, newest first.
        let per_minute = if st.on {
            round(st.load_w * 1000.0 / 60.0, 3)
        } else {
            0.0
        };
        let t = self.config.temperature_c;
        let mut sw = json!({
            "id": 0,
            "source": st.source,
            "output": st.on,
            "apower": power,
            "voltage": voltage,
            "current": current,
            "aenergy": {
                "total": round(st.total_wh, 3),
                "by_minute": [per_minute, per_minute, per_minute],
                "minute_ts": (unix as u64 / 60) * 60,
            },
            "temperature": {"tC": round(t, 1), "tF": round(t * 9.0 / 5.0 + 32.0, 1)},
        });
        let errors = st.errors();
        if !errors.is_empty() {
            sw["errors"] = json!(errors);
        }
        sw
    }

    fn sys_status(&self) -> Value {
        let unix = unix_now() as u64;
        let day = unix % 86_400;
        json!({
            "mac": self.mac,
            "restart_required": false,
            "time": format!("{:02}:{:02}", day / 3600, day % 3600 / 60),
            "unixtime": unix,
            "uptime": self.started.elapsed().as_secs(),
            "ram_size": 262_144,
            "ram_free": 118_000,
            "fs_size": 458_752,
            "fs_free": 135_168,
            "cfg_rev": 7,
            "kvs_rev": 0,
            "schedule_rev": 0,
            "webhook_rev": 0,
            "available_updates": {},
            "reset_reason": 3,
        })
    }

    fn wifi_status(&self) -> Value {
        json!({
            "sta_ip": "127.0.0.1",
            "status": "got ip",
            "ssid": "energy2mqtt-sim",
            "rssi": self.config.rssi_dbm,
        })
    }

    fn status(&self) -> Value {
        json!({
            "ble": {},
            "cloud": {"connected": false},
            "mqtt": {"connected": false},
            "plugs_ui": {},
            "switch:0": self.switch_status(),
            "sys": self.sys_status(),
            "wifi": self.wifi_status(),
            "ws": {"connected": false},
        })
    }

    fn switch_config(&self) -> Value {
        json!({
            "id": 0,
            "name": null,
            "initial_state": "restore_last",
            "auto_on": false,
            "auto_on_delay": 60.0,
            "auto_off": false,
            "auto_off_delay": 60.0,
            "power_limit": self.config.power_limit_w,
            "voltage_limit": 280,
            "autorecover_voltage_errors": false,
            "current_limit": 12.0,
        })
    }

    fn config(&self) -> Value {
        json!({
            "ble": {"enable": true, "rpc": {"enable": true}, "observer": {"enable": false}},
            "cloud": {"enable": false, "server": null},
            "mqtt": {"enable": false, "server": null, "client_id": self.id, "topic_prefix": self.id},
            "plugs_ui": {"leds": {"mode": "power", "night_mode": {"enable": false}}},
            "switch:0": self.switch_config(),
            "sys": {
                "device": {
                    "name": self.config.name,
                    "mac": self.mac,
                    "fw_id": self.fw_id,
                    "discoverable": true,
                    "eco_mode": false,
                },
                "location": {"tz": "UTC", "lat": null, "lon": null},
                "ui_data": {},
                "cfg_rev": 7,
            },
            "wifi": {
                "ap": {"ssid": self.id, "is_open": true, "enable": false},
                "sta": {"ssid": "energy2mqtt-sim", "is_open": false, "enable": true, "ipv4mode": "dhcp"},
            },
            "ws": {"enable": false, "server": null, "ssl_ca": "ca.pem"},
        })
    }

    /// One RPC call.
    fn call(&self, method: &str, params: &Value, source: &'static str) -> Result<Value, RpcError> {
        match method {
            "Shelly.GetDeviceInfo" => Ok(self.device_info()),
            "Shelly.GetStatus" => Ok(self.status()),
            "Shelly.GetConfig" => Ok(self.config()),
            "Shelly.GetComponents" => Ok(json!({
                "components": [], "cfg_rev": 7, "offset": 0, "total": 0,
            })),
            "Shelly.ListMethods" => Ok(json!({"methods": METHODS})),
            "Sys.GetStatus" => Ok(self.sys_status()),
            "WiFi.GetStatus" => Ok(self.wifi_status()),
            "Switch.GetStatus" => {
                switch_id(params)?;
                Ok(self.switch_status())
            }
            "Switch.GetConfig" => {
                switch_id(params)?;
                Ok(self.switch_config())
            }
            "Switch.Set" => {
                switch_id(params)?;
                let on = match params.get("on") {
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err(RpcError::invalid("on")),
                    None => return Err(RpcError::missing("on")),
                };
                self.switch_sets.fetch_add(1, Ordering::Relaxed);
                Ok(json!({"was_on": self.switch(on, source)}))
            }
            "Switch.Toggle" => {
                switch_id(params)?;
                let on = !self.state().on;
                Ok(json!({"was_on": self.switch(on, source)}))
            }
            _ => Err(RpcError {
                code: 404,
                message: format!("No handler for {method}"),
            }),
        }
    }

    /// What a Gen1 plug answers on `path`.
    fn gen1_answer(&self, path: &str) -> Response {
        if path == "/shelly" {
            axum::Json(json!({
                "type": "SHPLG-S",
                "mac": self.mac,
                "auth": false,
                "fw": "20230913-112003/v1.14.0-gcb84623",
                "discoverable": false,
                "longid": 1,
                "num_outputs": 1,
                "num_meters": 1,
            }))
            .into_response()
        } else {
            (StatusCode::NOT_FOUND, "Not Found").into_response()
        }
    }

    /// Waits out the knobs before an HTTP answer on `path`; `Some`
    /// answers instead.
    async fn gate(&self, path: &str) -> Option<Response> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut offline = self.offline.subscribe();
        tokio::select! {
            _ = self.stop.cancelled() => return Some(StatusCode::SERVICE_UNAVAILABLE.into_response()),
            _ = offline.wait_for(|o| !*o) => {}
        }
        let latency = self.knobs.latency_ms.load(Ordering::Relaxed);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        if self.knobs.gen1.load(Ordering::Relaxed) {
            return Some(self.gen1_answer(path));
        }
        if self.knobs.busy.load(Ordering::Relaxed) {
            return Some(
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(json!({"code": 503, "message": "Service unavailable"})),
                )
                    .into_response(),
            );
        }
        None
    }

    /// A JSON-RPC request frame → the response frame (`None` for a
    /// notification, which gets no answer).
    /// `authenticated`: the sender proved itself another way (the digest
    /// header of `POST /rpc`).
    fn frame(
        &self,
        frame: &Value,
        peer: Option<&str>,
        source: &'static str,
        authenticated: bool,
    ) -> Option<Value> {
        let id = frame.get("id").filter(|v| !v.is_null())?.clone();
        let mut out = Map::new();
        out.insert("id".into(), id);
        out.insert("src".into(), Value::from(self.id.as_str()));
        if let Some(p) = peer {
            out.insert("dst".into(), Value::from(p));
        }
        let Some(method) = frame.get("method").and_then(Value::as_str) else {
            out.insert(
                "error".into(),
                json!({"code": -103, "message": "Missing required argument 'method'!"}),
            );
            return Some(Value::Object(out));
        };
        let empty = Value::Object(Map::new());
        let params = frame.get("params").unwrap_or(&empty);
        let checked = if authenticated {
            Ok(())
        } else {
            self.frame_auth(method, frame)
        };
        let answer = match checked {
            Err(stale) => Err(RpcError {
                code: 401,
                message: self.frame_challenge(stale),
            }),
            Ok(()) => self.call(method, params, source),
        };
        match answer {
            Ok(result) => out.insert("result".into(), result),
            Err(e) => out.insert(
                "error".into(),
                json!({"code": e.code, "message": e.message}),
            ),
        };
        Some(Value::Object(out))
    }
}

fn is_open(method: &str) -> bool {
    method == "Shelly.GetDeviceInfo"
}

const METHODS: &[&str] = &[
    "Shelly.GetDeviceInfo",
    "Shelly.GetStatus",
    "Shelly.GetConfig",
    "Shelly.GetComponents",
    "Shelly.ListMethods",
    "Sys.GetStatus",
    "WiFi.GetStatus",
    "Switch.GetStatus",
    "Switch.GetConfig",
    "Switch.Set",
    "Switch.Toggle",
];

#[derive(Debug)]
struct RpcError {
    code: i64,
    message: String,
}

impl RpcError {
    fn missing(arg: &str) -> Self {
        Self {
            code: -103,
            message: format!("Missing required argument '{arg}'!"),
        }
    }

    fn invalid(arg: &str) -> Self {
        Self {
            code: -103,
            message: format!("Invalid argument '{arg}'!"),
        }
    }

    fn http_status(&self) -> StatusCode {
        match self.code {
            401 => StatusCode::UNAUTHORIZED,
            404 | -105 => StatusCode::NOT_FOUND,
            -103 => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The simulated plug has one switch, `switch:0`.
fn switch_id(params: &Value) -> Result<(), RpcError> {
    match params.get("id") {
        None => Err(RpcError::missing("id")),
        Some(v) if v.as_u64() == Some(0) => Ok(()),
        Some(v) if v.is_u64() => Err(RpcError {
            code: -105,
            message: format!("Argument 'id', value {v} not found!"),
        }),
        Some(_) => Err(RpcError::invalid("id")),
    }
}

/// `?id=0&on=true` → `{"id":0,"on":true}`: each value as JSON, else as a
/// string.
fn query_params(query: Option<&str>) -> Value {
    let mut m = Map::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let value = serde_json::from_str(&v).unwrap_or_else(|_| Value::String(v.into_owned()));
        m.insert(k.into_owned(), value);
    }
    Value::Object(m)
}

fn http_answer(r: Result<Value, RpcError>) -> Response {
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => (
            e.http_status(),
            axum::Json(json!({"code": e.code, "message": e.message})),
        )
            .into_response(),
    }
}

// ---------------------------------------------------------------------------
// Handlers

type Sim = State<Arc<Shared>>;

async fn shelly(State(sim): Sim) -> Response {
    if let Some(r) = sim.gate("/shelly").await {
        return r;
    }
    axum::Json(sim.device_info()).into_response()
}

fn path_and_query(uri: &Uri) -> &str {
    uri.path_and_query()
        .map_or_else(|| uri.path(), |p| p.as_str())
}

async fn rpc_get(
    State(sim): Sim,
    Path(method): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = sim.gate(uri.path()).await {
        return r;
    }
    if let Err(stale) = sim.http_auth(&method, &headers, "GET", path_and_query(&uri)) {
        return sim.unauthorized(stale);
    }
    http_answer(sim.call(&method, &query_params(uri.query()), "http"))
}

/// `POST /rpc/<Method>` with the parameters as a JSON body.
async fn rpc_post(
    State(sim): Sim,
    Path(method): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = sim.gate(uri.path()).await {
        return r;
    }
    if let Err(stale) = sim.http_auth(&method, &headers, "POST", path_and_query(&uri)) {
        return sim.unauthorized(stale);
    }
    let params = if body.is_empty() {
        Value::Object(Map::new())
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return http_answer(Err(RpcError {
                    code: -103,
                    message: format!("Bad JSON: {e}"),
                }));
            }
        }
    };
    http_answer(sim.call(&method, &params, "http"))
}

/// `POST /rpc` with a JSON-RPC frame: credentials either as the digest
/// header or as the frame's `auth` object.
async fn rpc_frame(State(sim): Sim, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = sim.gate(uri.path()).await {
        return r;
    }
    let Ok(frame) = serde_json::from_slice::<Value>(&body) else {
        return http_answer(Err(RpcError {
            code: -103,
            message: "Bad JSON-RPC frame".into(),
        }));
    };
    let method = frame
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let peer = frame.get("src").and_then(Value::as_str).map(str::to_owned);
    let by_header = headers.contains_key(header::AUTHORIZATION);
    if by_header {
        if let Err(stale) = sim.http_auth(&method, &headers, "POST", path_and_query(&uri)) {
            return sim.unauthorized(stale);
        }
    }
    match sim.frame(&frame, peer.as_deref(), "http", by_header) {
        Some(out) => {
            let refused = out
                .get("error")
                .and_then(|e| e.get("code"))
                .and_then(Value::as_i64)
                == Some(401);
            if refused {
                // An HTTP client gets the header challenge too.
                let nonce = sim.issue_nonce().to_string();
                (
                    StatusCode::UNAUTHORIZED,
                    [(
                        header::WWW_AUTHENTICATE,
                        digest::challenge_header(sim.realm(), &nonce, false),
                    )],
                    axum::Json(out),
                )
                    .into_response()
            } else {
                axum::Json(out).into_response()
            }
        }
        None => StatusCode::OK.into_response(),
    }
}

async fn ws_upgrade(State(sim): Sim, ws: WebSocketUpgrade) -> Response {
    if let Some(r) = sim.gate("/rpc").await {
        return r;
    }
    ws.on_upgrade(move |socket| serve_ws(sim, socket))
}

enum WsEvent {
    Frame(Option<Result<Message, axum::Error>>),
    Note(Result<Value, broadcast::error::RecvError>),
    Close,
}

async fn serve_ws(sim: Arc<Shared>, mut socket: WebSocket) {
    let mut notes = sim.notify.subscribe();
    let mut offline = sim.offline.subscribe();
    // Who the device sends notifications to: the `src` of the peer's
    // requests, as the real device learns it.
    let mut peer: Option<String> = None;
    loop {
        let ev = tokio::select! {
            _ = sim.stop.cancelled() => WsEvent::Close,
            _ = offline.wait_for(|o| *o) => WsEvent::Close,
            m = socket.recv() => WsEvent::Frame(m),
            n = notes.recv() => WsEvent::Note(n),
        };
        let reply = match ev {
            WsEvent::Close | WsEvent::Frame(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => break,
            WsEvent::Frame(Some(Ok(Message::Text(text)))) => {
                sim.requests.fetch_add(1, Ordering::Relaxed);
                let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                if let Some(src) = frame.get("src").and_then(Value::as_str) {
                    peer = Some(src.to_owned());
                }
                let latency = sim.knobs.latency_ms.load(Ordering::Relaxed);
                if latency > 0 {
                    tokio::time::sleep(Duration::from_millis(latency)).await;
                }
                sim.frame(&frame, peer.as_deref(), "WS_in", false)
            }
            // Pings are answered by the WebSocket layer itself.
            WsEvent::Frame(Some(Ok(_))) => None,
            WsEvent::Note(Ok(params)) => peer.as_deref().map(|dst| {
                json!({"src": sim.id, "dst": dst, "method": "NotifyStatus", "params": params})
            }),
            WsEvent::Note(Err(broadcast::error::RecvError::Lagged(_))) => None,
            WsEvent::Note(Err(broadcast::error::RecvError::Closed)) => break,
        };
        if let Some(out) = reply {
            if socket.send(Message::Text(out.to_string())).await.is_err() {
                break;
            }
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim(password: Option<&str>) -> Shared {
        let config = SimConfig {
            load_w: 100.0,
            password: password.map(str::to_owned),
            ..SimConfig::default()
        };
        Shared::new(
            config,
            SocketAddr::from(([127, 0, 0, 1], 0x1234)),
            Arc::new(Knobs::default()),
        )
    }

    #[test]
    fn identity_follows_the_port_and_model() {
        let s = sim(None);
        assert_eq!(s.mac, "02E24D001234");
        assert_eq!(s.id, "shellyplusplugs-02e24d001234");
        let info = s.device_info();
        assert_eq!(info["gen"], 2);
        assert_eq!(info["model"], "SNPL-00112EU");
        assert_eq!(info["auth_en"], false);
        assert_eq!(info["auth_domain"], Value::Null);
        assert_eq!(
            sim(Some("pw")).device_info()["auth_domain"],
            "shellyplusplugs-02e24d001234"
        );
    }

    #[test]
    fn noise_is_deterministic_and_bounded() {
        let a: Vec<f64> = (0..100).map(|n| noise(7, n)).collect();
        let b: Vec<f64> = (0..100).map(|n| noise(7, n)).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|x| (-1.0..=1.0).contains(x)));
        assert_ne!(noise(7, 1), noise(8, 1));
    }

    #[test]
    fn switching_and_protection() {
        let s = sim(None);
        assert!(s.switch(false, "http"));
        assert_eq!(s.switch_status()["output"], false);
        assert_eq!(s.switch_status()["apower"], 0.0);
        assert!(!s.switch(true, "http"));
        assert_eq!(s.switch_status()["apower"], 100.0);
        // Overheating opens the relay and keeps it open.
        s.set_overheated(true);
        assert!(!s.switch(true, "http"));
        let st = s.switch_status();
        assert_eq!(
            (st["output"].clone(), st["errors"].clone()),
            (json!(false), json!(["overtemp"]))
        );
        s.set_overheated(false);
        s.switch(true, "http");
        // Overpower trips at once, and again at the next switch-on.
        let s = Arc::new(sim(None));
        ShellyHandle(s.clone()).set_load_w(3000.0);
        let st = s.switch_status();
        assert_eq!(
            (st["output"].clone(), st["errors"].clone()),
            (json!(false), json!(["overpower"]))
        );
        s.switch(true, "http");
        assert_eq!(s.switch_status()["errors"], json!(["overpower"]));
        ShellyHandle(s.clone()).set_load_w(2000.0);
        s.switch(true, "http");
        assert_eq!(s.switch_status()["output"], true);
        assert_eq!(s.switch_status().get("errors"), None);
    }

    #[test]
    fn rpc_arguments_are_checked() {
        let s = sim(None);
        let err = |m: &str, p: Value| s.call(m, &p, "http").map(|_| ()).map_err(|e| e.code);
        assert_eq!(err("Switch.Set", json!({"id": 0})), Err(-103));
        assert_eq!(err("Switch.Set", json!({"id": 1, "on": true})), Err(-105));
        assert_eq!(err("Switch.Set", json!({"id": 0, "on": "yes"})), Err(-103));
        assert_eq!(err("Switch.GetStatus", json!({})), Err(-103));
        assert_eq!(err("Nope.Nope", json!({})), Err(404));
        assert_eq!(err("Switch.Set", json!({"id": 0, "on": false})), Ok(()));
        assert_eq!(
            query_params(Some("id=0&on=true&name=%22x%22&raw=abc")),
            json!({"id": 0, "on": true, "name": "x", "raw": "abc"})
        );
    }

    #[test]
    fn http_nonces_need_a_growing_count_and_expire() {
        let s = sim(Some("pw"));
        let n = s.issue_nonce().to_string();
        assert_eq!(s.check_nonce(&n, Some(1)), NonceCheck::Good);
        assert_eq!(s.check_nonce(&n, Some(1)), NonceCheck::Unknown, "replayed");
        assert_eq!(s.check_nonce(&n, Some(2)), NonceCheck::Good);
        assert_eq!(s.check_nonce("123", Some(1)), NonceCheck::Unknown);
        s.knobs.single_use_nonces.store(true, Ordering::Relaxed);
        let n = s.issue_nonce().to_string();
        assert_eq!(s.check_nonce(&n, Some(1)), NonceCheck::Good);
        assert_eq!(s.check_nonce(&n, Some(2)), NonceCheck::Unknown);
        s.knobs.nonce_ttl_ms.store(0, Ordering::Relaxed);
        let n = s.issue_nonce().to_string();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(s.check_nonce(&n, None), NonceCheck::Stale);
    }

    #[test]
    fn frames_are_answered_and_challenged() {
        let s = sim(Some("secret"));
        let open = s
            .frame(
                &json!({"id": 1, "src": "me", "method": "Shelly.GetDeviceInfo"}),
                Some("me"),
                "WS_in",
                false,
            )
            .expect("answer");
        assert_eq!(open["result"]["auth_en"], true);
        assert_eq!(open["dst"], "me");
        let refused = s
            .frame(
                &json!({"id": 2, "src": "me", "method": "Shelly.GetStatus"}),
                Some("me"),
                "WS_in",
                false,
            )
            .expect("answer");
        assert_eq!(refused["error"]["code"], 401);
        let challenge: Value =
            serde_json::from_str(refused["error"]["message"].as_str().expect("text"))
                .expect("challenge JSON");
        assert_eq!(challenge["auth_type"], "digest");
        assert_eq!(challenge["realm"], s.id.as_str());
        let nonce = challenge["nonce"]
            .as_u64()
            .expect("numeric nonce")
            .to_string();
        let auth = digest::rpc_auth(&s.id, &nonce, "secret", 1, "c1");
        let ok = s
            .frame(
                &json!({"id": 3, "src": "me", "method": "Shelly.GetStatus", "auth": auth}),
                Some("me"),
                "WS_in",
                false,
            )
            .expect("answer");
        assert_eq!(ok["result"]["switch:0"]["output"], true);
        let wrong = digest::rpc_auth(&s.id, &nonce, "guess", 2, "c2");
        let no = s
            .frame(
                &json!({"id": 4, "src": "me", "method": "Shelly.GetStatus", "auth": wrong}),
                Some("me"),
                "WS_in",
                false,
            )
            .expect("answer");
        assert_eq!(no["error"]["code"], 401);
        // A notification (no id) gets no answer.
        assert_eq!(
            s.frame(&json!({"src": "me", "method": "X"}), None, "WS_in", false),
            None
        );
    }
}
