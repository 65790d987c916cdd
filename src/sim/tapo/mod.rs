//! A Tapo P100/P110 plug on loopback speaking KLAP v2 over a hand-written
//! HTTP/1.1 server (`specs/tapo-klap.md` §1.10), with the plug's bad habits
//! as knobs. Its answers come from our own device identity and a
//! time-driven load model, never from captured responses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::drivers::tapo::klap;

mod device;
mod http;
mod klap_server;
mod meter;

use device::Identity;
use http::serve;
use meter::{Meter, draw};

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

#[cfg(test)]
mod tests;
