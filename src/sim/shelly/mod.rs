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

mod auth;
mod device;
mod http;
mod rpc;
#[cfg(test)]
mod tests;
mod ws;

use device::*;
use http::*;
use rpc::*;
use ws::*;

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
