//! The device model: the relay, the load and its energy counter, the
//! identity, and the state every handler shares.

use super::*;

/// Nonces the device remembers; the oldest goes first.
pub(super) const MAX_NONCES: usize = 64;

#[derive(Debug)]
pub(super) struct PlugState {
    pub(super) on: bool,
    pub(super) load_w: f64,
    pub(super) total_wh: f64,
    /// When `total_wh` was last brought up to date.
    pub(super) at: Instant,
    pub(super) source: &'static str,
    pub(super) overpower: bool,
    pub(super) overtemp: bool,
}

impl PlugState {
    pub(super) fn advance(&mut self, now: Instant) {
        let dt_h = now.saturating_duration_since(self.at).as_secs_f64() / 3600.0;
        if self.on {
            self.total_wh += self.load_w * dt_h;
        }
        self.at = now;
    }

    /// The plug's protection: a load over the limit opens the relay.
    pub(super) fn trip_if_over(&mut self, limit_w: f64) {
        if self.on && self.load_w > limit_w {
            self.on = false;
            self.overpower = true;
            self.source = "overpower";
        }
    }

    pub(super) fn errors(&self) -> Vec<&'static str> {
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
pub(super) struct Nonce {
    pub(super) value: u64,
    pub(super) issued: Instant,
    pub(super) last_nc: u32,
}

/// How a presented nonce fares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NonceCheck {
    Good,
    /// Issued by us but expired: the credentials may be right.
    Stale,
    /// Never issued, forgotten, or replayed.
    Unknown,
}

pub(super) struct Shared {
    pub(super) config: SimConfig,
    pub(super) id: String,
    pub(super) mac: String,
    pub(super) sku: &'static str,
    pub(super) app: &'static str,
    pub(super) gen_: u8,
    pub(super) fw_id: &'static str,
    pub(super) ver: &'static str,
    pub(super) knobs: Arc<Knobs>,
    pub(super) password: Mutex<Option<String>>,
    pub(super) state: Mutex<PlugState>,
    pub(super) nonces: Mutex<(VecDeque<Nonce>, u64)>,
    /// Status changes for the WebSocket peers.
    pub(super) notify: broadcast::Sender<Value>,
    pub(super) offline: watch::Sender<bool>,
    pub(super) stop: CancellationToken,
    pub(super) started: Instant,
    pub(super) requests: AtomicU64,
    pub(super) switch_sets: AtomicU64,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update is a few assignments: a panic cannot leave it torn.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A number in [-1, 1] from `seed` and `n` (splitmix64).
pub(super) fn noise(seed: u64, n: u64) -> f64 {
    let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

pub(super) fn round(v: f64, decimals: u8) -> f64 {
    crate::model::round(v, decimals)
}

impl Shared {
    pub(super) fn new(config: SimConfig, addr: SocketAddr, knobs: Arc<Knobs>) -> Self {
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

    pub(super) fn state(&self) -> MutexGuard<'_, PlugState> {
        lock(&self.state)
    }

    pub(super) fn power(&self, st: &PlugState, unix: f64) -> f64 {
        if !st.on {
            return 0.0;
        }
        let n = noise(self.config.seed, unix.max(0.0) as u64);
        (st.load_w + self.config.noise_w * n).max(0.0)
    }

    /// Switches the relay; returns whether it was on.
    pub(super) fn switch(&self, on: bool, source: &'static str) -> bool {
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

    pub(super) fn set_overheated(&self, hot: bool) {
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

    pub(super) fn notify_switch(&self) {
        let sw = self.switch_status();
        let _ = self.notify.send(json!({
            "ts": round(unix_now(), 2),
            "switch:0": sw,
        }));
    }

    pub(super) fn realm(&self) -> &str {
        &self.id
    }

    pub(super) fn ha1(&self) -> Option<String> {
        lock(&self.password)
            .as_deref()
            .map(|pw| digest::ha1(digest::USER, self.realm(), pw))
    }
}
