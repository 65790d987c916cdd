//! The model's public value types: simulated time, configuration, write
//! errors and snapshots.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{SIM_TIME_MAX_S, finite_in};

/// Instant in simulated time: seconds since the Unix epoch (UTC).
///
/// Values are clamped to `0 ..= 8e9` s (year 2223) and non-finite input maps
/// to the epoch, so the calendar arithmetic behind the clock registers can
/// never overflow.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct SimTime(pub(super) f64);

impl SimTime {
    pub fn from_unix_secs(secs: f64) -> Self {
        if secs.is_finite() {
            Self(secs.clamp(0.0, SIM_TIME_MAX_S))
        } else {
            Self(0.0)
        }
    }

    /// Wall clock for the demo; times before the epoch map to the epoch.
    pub fn from_system_time(time: SystemTime) -> Self {
        match time.duration_since(UNIX_EPOCH) {
            Ok(since) => Self::from_unix_secs(since.as_secs_f64()),
            Err(_) => Self(0.0),
        }
    }

    pub fn unix_secs(self) -> f64 {
        self.0
    }

    /// `self` shifted by `secs` (negative goes back); non-finite shifts are ignored.
    pub fn add_secs(self, secs: f64) -> Self {
        if secs.is_finite() {
            Self::from_unix_secs(self.0 + secs)
        } else {
            self
        }
    }
}

/// Static configuration of the simulated inverter, its PV strings, battery and house.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Rated AC output in W (registers 16–17 as ×0.1 W); clamped to 100..=30 000.
    pub rated_power_w: f64,
    /// Peak DC power of MPPT 1 and 2 in W under a clear sky.
    pub pv_peak_w: [f64; 2],
    /// Usable battery energy in Wh (200 Ah × 51.2 V = 10 240 Wh).
    pub battery_capacity_wh: f64,
    /// Always-on house load in W, before the daily profile and appliances.
    pub base_load_w: f64,
    /// Seed for clouds, appliance spikes and measurement noise.
    pub seed: u64,
    /// Inverter serial served in registers 3–7; printable ASCII, cut or
    /// space-padded to 10 characters, other characters become `?`.
    pub inverter_serial: String,
    /// Initial grid relay state (register 194).
    pub grid_connected: bool,
    /// Local time = UTC + this; drives the sun, the load profile, the clock
    /// registers and the midnight reset. Clamped to ±14 h.
    pub utc_offset_s: i32,
    /// Battery state of charge at start, in %.
    pub initial_soc_pct: f64,
    /// What the house does by itself, besides the base load.
    pub house: HouseProfile,
}

/// The house's own load on top of `base_load_w`; switched plugs and
/// scripted appliances come through [`InverterModel::set_plug_load`] and
/// [`InverterModel::set_extra_load`].
///
/// [`InverterModel::set_plug_load`]: super::InverterModel::set_plug_load
/// [`InverterModel::set_extra_load`]: super::InverterModel::set_extra_load
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HouseProfile {
    /// A daily pattern (breakfast, lunch, evening), a fridge and random
    /// runs of a kettle, microwave, oven and washer, by time of day.
    #[default]
    Lively,
    /// Only the base load with a little flicker, whatever the hour: the
    /// demo's scripted scenario brings the appliances, and its fridge hangs
    /// behind a plug.
    Steady,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            rated_power_w: 6000.0,
            pv_peak_w: [3000.0, 2600.0],
            battery_capacity_wh: 10_240.0,
            base_load_w: 300.0,
            seed: 0x00DE_7E5E_ED00_0001,
            inverter_serial: "2409123456".to_owned(),
            grid_connected: true,
            utc_offset_s: 0,
            initial_soc_pct: 60.0,
            house: HouseProfile::Lively,
        }
    }
}

impl ModelConfig {
    /// Replaces values the physics cannot handle (NaN, negative, absurdly
    /// large) so a bad demo config degrades instead of producing garbage.
    pub(super) fn sanitized(mut self) -> Self {
        let defaults = Self::default();
        self.rated_power_w = finite_in(self.rated_power_w, 100.0, 30_000.0, defaults.rated_power_w);
        for (peak, default) in self.pv_peak_w.iter_mut().zip(defaults.pv_peak_w) {
            *peak = finite_in(*peak, 0.0, 20_000.0, default);
        }
        self.battery_capacity_wh = finite_in(
            self.battery_capacity_wh,
            100.0,
            200_000.0,
            defaults.battery_capacity_wh,
        );
        self.base_load_w = finite_in(self.base_load_w, 0.0, 10_000.0, defaults.base_load_w);
        self.utc_offset_s = self.utc_offset_s.clamp(-50_400, 50_400);
        self.initial_soc_pct =
            finite_in(self.initial_soc_pct, 0.0, 100.0, defaults.initial_soc_pct);
        self
    }
}

/// Why [`InverterModel::write`] refused a write.
///
/// [`InverterModel::write`]: super::InverterModel::write
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// Part of the range is read-only or outside the model; Modbus exception 02.
    #[error("registers {addr}..+{count} are not writable")]
    IllegalAddress { addr: u16, count: usize },
    /// The value is out of range for the register (e.g. month 13); Modbus exception 03.
    #[error("illegal value for register {addr}")]
    IllegalValue { addr: u16 },
    /// A write without values; Modbus exception 03.
    #[error("write without values")]
    Empty,
}

impl WriteError {
    /// Modbus exception code the server should answer with.
    pub fn exception_code(&self) -> u8 {
        match self {
            Self::IllegalAddress { .. } => 0x02,
            Self::IllegalValue { .. } | Self::Empty => 0x03,
        }
    }
}

/// Key powers of the last computed instant, in W unless stated, same signs
/// as the registers: battery + = discharging, grid + = importing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelSnapshot {
    pub time: SimTime,
    pub pv1_w: f64,
    pub pv2_w: f64,
    /// PV actually used (186 + 187); below `pv_available_w` when curtailed.
    pub pv_w: f64,
    /// What the strings could deliver at their MPP right now.
    pub pv_available_w: f64,
    /// What the house asks for, including [`InverterModel::set_extra_load`]
    /// and [`InverterModel::set_plug_load`].
    ///
    /// [`InverterModel::set_extra_load`]: super::InverterModel::set_extra_load
    /// [`InverterModel::set_plug_load`]: super::InverterModel::set_plug_load
    pub load_demand_w: f64,
    /// Load actually served (register 178).
    pub load_w: f64,
    pub extra_load_w: f64,
    pub plug_load_w: f64,
    /// Inverter AC output (register 175).
    pub inverter_w: f64,
    /// Grid power (register 169, = 167).
    pub grid_w: f64,
    /// Battery power (register 190).
    pub battery_w: f64,
    pub battery_v: f64,
    pub battery_a: f64,
    pub soc_pct: f64,
    pub grid_connected: bool,
    /// Demand the inverter could not serve off-grid (PV + battery or rating exhausted).
    pub unserved_w: f64,
    /// Inverter output is at its rating or the off-grid supply is exhausted.
    pub at_limit: bool,
    pub rated_power_w: f64,
}
