//! Time-driven model of a Deye SUN-6K-SG03LP1 single-phase LV hybrid inverter.
//!
//! The model owns the holding-register image (addresses `0..=399`) that the
//! Solarman V5 simulator serves; it does no I/O. Callers drive it with
//! [`InverterModel::advance`], passing wall-clock time in the demo and fixed
//! times in tests, and then read the registers.
//!
//! Exogenous inputs (sun, clouds, house load, grid noise) are pure functions of
//! `(seed, time)`, so they do not depend on how often the caller advances. Only
//! the integrated state (battery energy, energy counters, temperatures) depends
//! on the step pattern, and that only through the integration step size.
//!
//! The model runs in "zero export to load" mode without an external CT, so
//! the identities from `deye-registers.md` hold exactly on the raw registers:
//! `178 = 175 + 169 − 166` and LOAD-port power `= 175 + 167 − 166`.

use std::f64::consts::PI;
use std::time::{SystemTime, UNIX_EPOCH};

/// Number of modelled holding registers; reads beyond this are rejected.
pub const REGISTER_COUNT: usize = 400;

/// Long gaps are integrated in steps of at most this many seconds so the
/// battery and the thermal states stay stable.
const MAX_STEP_S: f64 = 5.0;
/// Anything older than this is skipped on `advance` so a resumed laptop or a
/// bogus clock cannot make one call loop for minutes.
const MAX_GAP_S: f64 = 86_400.0;
/// Latest representable time; keeps the calendar arithmetic far from overflow
/// and the clock's year byte (2000 + 255) meaningful.
const SIM_TIME_MAX_S: f64 = 8.0e9;
/// Latest inverter-clock time (early 2258): a written clock can reach year
/// 2255, the largest the year byte holds, and must read back unchanged.
const CLOCK_MAX_S: f64 = 9.0e9;
const DAY_S: f64 = 86_400.0;

/// DC to AC conversion efficiency; the difference is the "losses" in
/// `175 = PV + battery − losses`.
const INVERTER_EFFICIENCY: f64 = 0.96;
/// Round-trip losses of the battery, applied on charging only so that the
/// discharge counters match what leaves the terminals.
const CHARGE_EFFICIENCY: f64 = 0.97;
/// Internal resistance of the pack, so the voltage sags under discharge and
/// rises under charge like a real 16S LFP pack.
const BATTERY_R_OHM: f64 = 0.012;
const BATTERY_OCV_EMPTY_V: f64 = 48.0;
const BATTERY_OCV_FULL_V: f64 = 54.4;
/// Pack voltage used for the Ah rating in register 204.
const BATTERY_NOMINAL_V: f64 = 51.2;
/// Max charge/discharge power as a fraction of capacity per hour (0.5 C).
const BATTERY_C_RATE: f64 = 0.5;

/// Keeps every S16 power register in range whatever the caller adds.
const MAX_DEMAND_W: f64 = 30_000.0;
const MAX_EXTRA_LOAD_W: f64 = 20_000.0;
/// Upper bound for the zero-export bias setting (206), so a stray write cannot
/// stop the inverter from serving the load at all.
const MAX_IMPORT_BIAS_W: f64 = 1_000.0;
/// Below this fraction of peak the MPPT does not start, which keeps PV at
/// exactly zero at night and at the fringes of dawn and dusk.
const PV_START_FRACTION: f64 = 0.003;

/// Starting totals in Wh. Several exceed 6553.5 kWh so the high words of the
/// U32 counters are exercised (notably the 78/80 split of grid import).
const START_TOTALS_WH: Totals = Totals {
    pv: 12_345_600.0,
    battery_charge: 4_321_000.0,
    battery_discharge: 3_987_600.0,
    grid_import: 8_765_400.0,
    grid_export: 3_456_700.0,
    load: 14_234_500.0,
    inverter: 11_876_500.0,
};

/// Register addresses used by the model (0-based, decimal as in the spec).
mod addr {
    pub const DEVICE_TYPE: usize = 0;
    pub const MODBUS_ADDRESS: usize = 1;
    pub const PROTOCOL_VERSION: usize = 2;
    pub const SERIAL: usize = 3;
    pub const SERIAL_WORDS: usize = 5;
    pub const RATED_PHASE: usize = 8;
    pub const FW: [usize; 5] = [10, 11, 12, 13, 14];
    pub const RATED_POWER_LO: usize = 16;
    pub const RATED_POWER_HI: usize = 17;
    pub const MPPT_PHASES: usize = 18;
    pub const CLOCK_YEAR_MONTH: usize = 22;
    pub const CLOCK_DAY_HOUR: usize = 23;
    pub const CLOCK_MINUTE_SECOND: usize = 24;
    pub const ON_OFF: usize = 43;
    pub const MAX_SOLAR_POWER: usize = 53;

    pub const RUNNING_STATE: usize = 59;
    pub const INVERTER_TODAY: usize = 60;
    pub const INVERTER_TOTAL_LO: usize = 63;
    pub const INVERTER_TOTAL_HI: usize = 64;
    pub const BATTERY_CHARGE_TODAY: usize = 70;
    pub const BATTERY_DISCHARGE_TODAY: usize = 71;
    pub const BATTERY_CHARGE_TOTAL_LO: usize = 72;
    pub const BATTERY_CHARGE_TOTAL_HI: usize = 73;
    pub const BATTERY_DISCHARGE_TOTAL_LO: usize = 74;
    pub const BATTERY_DISCHARGE_TOTAL_HI: usize = 75;
    pub const GRID_IMPORT_TODAY: usize = 76;
    pub const GRID_EXPORT_TODAY: usize = 77;
    pub const GRID_IMPORT_TOTAL_LO: usize = 78;
    pub const GRID_FREQUENCY: usize = 79;
    pub const GRID_IMPORT_TOTAL_HI: usize = 80;
    pub const GRID_EXPORT_TOTAL_LO: usize = 81;
    pub const GRID_EXPORT_TOTAL_HI: usize = 82;
    pub const LOAD_TODAY: usize = 84;
    pub const LOAD_TOTAL_LO: usize = 85;
    pub const LOAD_TOTAL_HI: usize = 86;
    pub const DC_TEMPERATURE: usize = 90;
    pub const HEATSINK_TEMPERATURE: usize = 91;
    pub const PV_TOTAL_LO: usize = 96;
    pub const PV_TOTAL_HI: usize = 97;
    pub const WARNING_LO: usize = 101;
    pub const WARNING_HI: usize = 102;
    pub const FAULT: usize = 103;
    pub const FAULT_WORDS: usize = 4;
    pub const PV_TODAY: usize = 108;
    pub const PV1_VOLTAGE: usize = 109;
    pub const PV1_CURRENT: usize = 110;
    pub const PV2_VOLTAGE: usize = 111;
    pub const PV2_CURRENT: usize = 112;

    pub const GRID_VOLTAGE: usize = 150;
    pub const GRID_VOLTAGE_L1_L2: usize = 152;
    pub const INVERTER_VOLTAGE: usize = 154;
    pub const INVERTER_VOLTAGE_2: usize = 156;
    pub const LOAD_VOLTAGE: usize = 157;
    pub const GRID_CURRENT: usize = 160;
    pub const EXTERNAL_CT_CURRENT: usize = 162;
    pub const INVERTER_CURRENT: usize = 164;
    pub const GEN_PORT_POWER: usize = 166;
    pub const GRID_PORT_POWER: usize = 167;
    pub const GRID_POWER: usize = 169;
    pub const EXTERNAL_CT_POWER_L1: usize = 170;
    pub const EXTERNAL_CT_POWER: usize = 172;
    pub const INVERTER_POWER_L1: usize = 173;
    pub const INVERTER_POWER: usize = 175;
    pub const LOAD_POWER_L1: usize = 176;
    pub const LOAD_POWER: usize = 178;
    pub const UPS_POWER_A: usize = 179;
    pub const BATTERY_TEMPERATURE: usize = 182;
    pub const BATTERY_VOLTAGE: usize = 183;
    pub const BATTERY_SOC: usize = 184;
    pub const UPS_POWER_B: usize = 185;
    pub const PV1_POWER: usize = 186;
    pub const PV2_POWER: usize = 187;
    pub const BATTERY_POWER: usize = 190;
    pub const BATTERY_CURRENT: usize = 191;
    pub const LOAD_FREQUENCY: usize = 192;
    pub const INVERTER_FREQUENCY: usize = 193;
    pub const GRID_RELAY: usize = 194;

    pub const SETTINGS_FIRST: usize = 200;
    pub const SETTINGS_LAST: usize = 280;
    pub const BATTERY_CONTROL_MODE: usize = 200;
    pub const EQUALISATION_V: usize = 201;
    pub const ABSORPTION_V: usize = 202;
    pub const FLOAT_V: usize = 203;
    pub const BATTERY_CAPACITY_AH: usize = 204;
    pub const ZERO_EXPORT_POWER: usize = 206;
    pub const MAX_CHARGE_A: usize = 210;
    pub const MAX_DISCHARGE_A: usize = 211;
    pub const BATTERY_OPERATION_MODE: usize = 213;
    pub const SHUTDOWN_SOC: usize = 217;
    pub const RESTART_SOC: usize = 218;
    pub const LOW_SOC: usize = 219;
    pub const SHUTDOWN_V: usize = 220;
    pub const RESTART_V: usize = 221;
    pub const LOW_V: usize = 222;
    pub const GRID_CHARGE_START_V: usize = 228;
    pub const GRID_CHARGE_START_SOC: usize = 229;
    pub const GRID_CHARGE_CURRENT: usize = 230;
    pub const GRID_CHARGE_ENABLE: usize = 232;
    pub const AUX_PORT_MODE: usize = 235;
    pub const ENERGY_PATTERN: usize = 243;
    pub const WORK_MODE: usize = 244;
    pub const MAX_SELL_POWER: usize = 245;
    pub const SOLAR_SELL: usize = 247;
    pub const TOU_FLAGS: usize = 248;
    pub const TOU_TIME: usize = 250;
    pub const TOU_POWER: usize = 256;
    pub const TOU_VOLTAGE: usize = 262;
    pub const TOU_SOC: usize = 268;
    pub const TOU_SLOT_FLAGS: usize = 274;
    pub const PEAK_SHAVING: usize = 280;

    pub const BMS_CHARGE_V: usize = 312;
    pub const BMS_DISCHARGE_V: usize = 313;
    pub const BMS_CHARGE_LIMIT_A: usize = 314;
    pub const BMS_DISCHARGE_LIMIT_A: usize = 315;
    pub const BMS_SOC: usize = 316;
    pub const BMS_VOLTAGE: usize = 317;
    pub const BMS_CURRENT: usize = 318;
    pub const BMS_TEMPERATURE: usize = 319;
    pub const BMS_MAX_CHARGE_A: usize = 320;
    pub const BMS_MAX_DISCHARGE_A: usize = 321;
}

/// Instant in simulated time: seconds since the Unix epoch (UTC).
///
/// Values are clamped to `0 ..= 8e9` s (year 2223) and non-finite input maps
/// to the epoch, so the calendar arithmetic behind the clock registers can
/// never overflow.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct SimTime(f64);

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
    fn sanitized(mut self) -> Self {
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

/// The simulated inverter: state, settings and the register image.
#[derive(Debug, Clone)]
pub struct InverterModel {
    config: ModelConfig,
    noise: Noise,
    /// Unix seconds of the instant the registers describe.
    t: f64,
    soc_wh: f64,
    counters: Counters,
    /// Offset written through the clock registers, on top of UTC + utc_offset.
    clock_adjust_s: f64,
    /// Inverter-clock day number of `t`; a change resets the daily counters.
    day: i64,
    grid_connected: bool,
    extra_load_w: f64,
    plug_load_w: f64,
    fault_bits: u64,
    warning_bits: u32,
    temps: Temps,
    flows: Flows,
    regs: [u16; REGISTER_COUNT],
}

impl InverterModel {
    pub fn new(config: ModelConfig, start: SimTime) -> Self {
        let config = config.sanitized();
        let mut model = Self {
            noise: Noise { seed: config.seed },
            t: start.unix_secs(),
            soc_wh: config.battery_capacity_wh * config.initial_soc_pct / 100.0,
            counters: Counters::starting(),
            clock_adjust_s: 0.0,
            day: 0,
            grid_connected: config.grid_connected,
            extra_load_w: 0.0,
            plug_load_w: 0.0,
            fault_bits: 0,
            warning_bits: 0,
            temps: Temps::default(),
            flows: Flows::default(),
            regs: [0; REGISTER_COUNT],
            config,
        };
        model.day = model.clock_day();
        model.write_static_registers();
        model.write_default_settings();
        let ambient = model.environment(model.t).ambient_c;
        model.temps = Temps::at_rest(ambient);
        model.step(model.t, 0.0);
        model.refresh_registers();
        model
    }

    /// Integrates from the last time to `now`. A `now` before the last time
    /// re-anchors the model there without accounting energy (the wall clock
    /// was stepped back); a gap over a day only integrates its last day.
    pub fn advance(&mut self, now: SimTime) {
        let target = now.unix_secs();
        if target <= self.t {
            self.step(target, 0.0);
        } else {
            let mut from = self.t.max(target - MAX_GAP_S);
            while from < target {
                let next = (from + MAX_STEP_S).min(target);
                self.step(next, next - from);
                from = next;
            }
        }
        self.refresh_registers();
    }

    /// The whole register image, addresses `0..REGISTER_COUNT`.
    pub fn registers(&self) -> &[u16] {
        &self.regs
    }

    /// `qty` registers from `addr`; `None` if the window is empty or leaves
    /// the modelled range. Unmodelled addresses inside it read as 0.
    pub fn read(&self, addr: u16, qty: u16) -> Option<Vec<u16>> {
        if qty == 0 {
            return None;
        }
        let start = usize::from(addr);
        let end = start.checked_add(usize::from(qty))?;
        self.regs.get(start..end).map(<[u16]>::to_vec)
    }

    /// Stores `values` from `addr`. Only the settings (200..=280) and the
    /// clock (22..=24) are writable, and a write must lie wholly within one of
    /// them. A clock write moves the inverter's clock (and so its midnight)
    /// without moving the sun.
    pub fn write(&mut self, addr: u16, values: &[u16]) -> Result<(), WriteError> {
        let last_offset = values.len().checked_sub(1).ok_or(WriteError::Empty)?;
        let start = usize::from(addr);
        let illegal = || WriteError::IllegalAddress {
            addr,
            count: values.len(),
        };
        let end = start.checked_add(last_offset).ok_or_else(illegal)?;
        let within = |first: usize, last: usize| start >= first && end <= last;
        if within(addr::CLOCK_YEAR_MONTH, addr::CLOCK_MINUTE_SECOND) {
            self.write_clock(start, values)?;
        } else if within(addr::SETTINGS_FIRST, addr::SETTINGS_LAST) {
            let slots = self.regs.get_mut(start..=end).ok_or_else(illegal)?;
            slots.copy_from_slice(values);
        } else {
            return Err(illegal());
        }
        // Settings act immediately, like on the real inverter.
        self.step(self.t, 0.0);
        self.refresh_registers();
        Ok(())
    }

    /// Opens (`false`) or closes the grid relay; takes effect immediately.
    pub fn set_grid_connected(&mut self, on: bool) {
        self.grid_connected = on;
        self.step(self.t, 0.0);
        self.refresh_registers();
    }

    /// Additional load on the LOAD port in W (a load step, an appliance not
    /// behind a plug); clamped to `0..=20 000`, NaN counts as 0. Takes
    /// effect immediately.
    pub fn set_extra_load(&mut self, w: f64) {
        self.extra_load_w = finite_in(w, 0.0, MAX_EXTRA_LOAD_W, 0.0);
        self.step(self.t, 0.0);
        self.refresh_registers();
    }

    /// What the simulated plugs on the LOAD port draw together, in W; kept
    /// apart from [`Self::set_extra_load`] so that a plug feed and a test's
    /// (or a script's) extra load do not overwrite each other. Same
    /// clamping; takes effect immediately.
    pub fn set_plug_load(&mut self, w: f64) {
        self.plug_load_w = finite_in(w, 0.0, MAX_EXTRA_LOAD_W, 0.0);
        self.step(self.t, 0.0);
        self.refresh_registers();
    }

    /// Fault bits for registers 103–106 (bit n−1 = Deye code F*n*); non-zero
    /// also sets the running state (59) to 4 = fault.
    pub fn set_fault_bits(&mut self, bits: u64) {
        self.fault_bits = bits;
        self.refresh_registers();
    }

    /// Warning bits for registers 101–102.
    pub fn set_warning_bits(&mut self, bits: u32) {
        self.warning_bits = bits;
        self.refresh_registers();
    }

    /// The instant the registers describe.
    pub fn time(&self) -> SimTime {
        SimTime(self.t)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn snapshot(&self) -> ModelSnapshot {
        let f = &self.flows;
        let pv_w = f.pv_used[0] + f.pv_used[1];
        let unserved_w = (f.demand_w - f.load_w).max(0.0);
        ModelSnapshot {
            time: SimTime(self.t),
            pv1_w: f.pv_used[0],
            pv2_w: f.pv_used[1],
            pv_w,
            pv_available_w: f.pv_avail[0] + f.pv_avail[1],
            load_demand_w: f.demand_w,
            load_w: f.load_w,
            extra_load_w: self.extra_load_w,
            plug_load_w: self.plug_load_w,
            inverter_w: f.inverter_w,
            grid_w: f.grid_w,
            battery_w: f.battery_w,
            battery_v: f.battery_v,
            battery_a: f.battery_a,
            soc_pct: self.soc_pct(),
            grid_connected: self.grid_connected,
            unserved_w,
            at_limit: unserved_w > 0.5 || f.inverter_w >= self.config.rated_power_w - 0.5,
            rated_power_w: self.config.rated_power_w,
        }
    }

    fn soc_pct(&self) -> f64 {
        (self.soc_wh / self.config.battery_capacity_wh * 100.0).clamp(0.0, 100.0)
    }

    fn setting(&self, address: usize) -> u16 {
        self.regs.get(address).copied().unwrap_or(0)
    }

    /// Inverter-clock local time in seconds since the epoch.
    fn clock_local_secs(&self) -> f64 {
        let local = self.t + f64::from(self.config.utc_offset_s) + self.clock_adjust_s;
        local.clamp(0.0, CLOCK_MAX_S)
    }

    fn clock_day(&self) -> i64 {
        // f64 -> i64 saturates; the clamp above keeps it far from that anyway.
        (self.clock_local_secs() / DAY_S).floor() as i64
    }

    /// Load added from outside the model: scripted appliances and plugs.
    fn added_load_w(&self) -> f64 {
        (self.extra_load_w + self.plug_load_w).min(MAX_EXTRA_LOAD_W)
    }

    /// Moves the model to `t`, integrating `dt` seconds of energy (0 = just
    /// recompute the instantaneous flows, e.g. after a knob changed).
    fn step(&mut self, t: f64, dt: f64) {
        self.t = t;
        let env = self.environment(t);
        let grid_on = self.grid_connected;
        let (charge_max, discharge_max) = self.battery_limits(dt, grid_on);
        let export_cap = if self.setting(addr::SOLAR_SELL) & 1 == 1 {
            f64::from(self.setting(addr::MAX_SELL_POWER))
        } else {
            0.0
        };
        let import_bias = f64::from(self.setting(addr::ZERO_EXPORT_POWER)).min(MAX_IMPORT_BIAS_W);
        let d = dispatch(&DispatchIn {
            pv_avail: env.pv_avail[0] + env.pv_avail[1],
            demand: env.demand_w + self.added_load_w(),
            charge_max,
            discharge_max,
            grid_on,
            export_cap,
            import_bias,
            rated: self.config.rated_power_w,
        });

        let pv_total_avail = env.pv_avail[0] + env.pv_avail[1];
        let used_ratio = if pv_total_avail > 0.0 {
            (d.pv_used / pv_total_avail).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let mut pv_used = [0.0; 2];
        let mut pv_v = [0.0; 2];
        for i in 0..2 {
            pv_used[i] = env.pv_avail[i] * used_ratio;
            if env.pv_avail[i] > 0.0 {
                // A curtailed MPPT backs off towards open-circuit voltage.
                let (vmpp, voc) = env.pv_mpp_voc[i];
                pv_v[i] = vmpp + (voc - vmpp) * (1.0 - used_ratio);
            }
        }

        let ocv = battery_ocv(self.soc_pct());
        let battery_v = battery_terminal_v(ocv, d.battery_w);
        let battery_a = if battery_v > 0.0 {
            d.battery_w / battery_v
        } else {
            0.0
        };

        let (grid_v, grid_hz, inverter_v, inverter_hz) = if grid_on {
            // Importing drags the local voltage down, exporting pushes it up.
            let v = (env.grid_v - 0.35 * d.grid_w / 1000.0).clamp(228.0, 232.0);
            (v, env.grid_hz, v, env.grid_hz)
        } else {
            (0.0, 0.0, env.island_v, env.island_hz)
        };
        let load_v = inverter_v + 0.2 + 0.4 * d.inverter_w.max(0.0) / 1000.0;

        let new_day = self.clock_day();
        if new_day != self.day {
            self.day = new_day;
            self.counters.reset_today();
        }

        if dt > 0.0 {
            let hours = dt / 3600.0;
            let charge_w = (-d.battery_w).max(0.0);
            let discharge_w = d.battery_w.max(0.0);
            self.soc_wh = (self.soc_wh + (charge_w * CHARGE_EFFICIENCY - discharge_w) * hours)
                .clamp(0.0, self.config.battery_capacity_wh);
            let c = &mut self.counters;
            c.pv.add((pv_used[0] + pv_used[1]) * hours);
            c.battery_charge.add(charge_w * hours);
            c.battery_discharge.add(discharge_w * hours);
            c.grid_import.add(d.grid_w.max(0.0) * hours);
            c.grid_export.add((-d.grid_w).max(0.0) * hours);
            c.load.add(d.load_w * hours);
            c.inverter.add(d.inverter_w.max(0.0) * hours);

            let battery_max_w = self.config.battery_capacity_wh * BATTERY_C_RATE;
            self.temps.relax(
                dt,
                &Temps::targets(
                    env.ambient_c,
                    d.inverter_w / self.config.rated_power_w,
                    (d.pv_used + d.battery_w.abs()) / self.config.rated_power_w,
                    d.battery_w.abs() / battery_max_w,
                ),
            );
        }

        self.flows = Flows {
            pv_avail: env.pv_avail,
            pv_used,
            pv_v,
            demand_w: env.demand_w + self.added_load_w(),
            load_w: d.load_w,
            inverter_w: d.inverter_w,
            grid_w: d.grid_w,
            battery_w: d.battery_w,
            battery_v,
            battery_a,
            grid_v,
            grid_hz,
            inverter_v,
            load_v,
            inverter_hz,
        };
    }

    /// Max charge and discharge power in W for the next `dt` seconds: the
    /// lower of 0.5 C and the current settings, tapered near full and near
    /// the SOC floor, and never more than the energy left for this step.
    fn battery_limits(&self, dt: f64, grid_on: bool) -> (f64, f64) {
        let capacity = self.config.battery_capacity_wh;
        let soc = self.soc_pct();
        let ocv = battery_ocv(soc);
        let c_rate_w = capacity * BATTERY_C_RATE;
        let charge_a = f64::from(self.setting(addr::MAX_CHARGE_A));
        let discharge_a = f64::from(self.setting(addr::MAX_DISCHARGE_A));
        // Deye stops discharging at "low batt" on-grid but keeps the LOAD
        // port alive down to "shutdown" when islanded.
        let floor_reg = if grid_on {
            addr::LOW_SOC
        } else {
            addr::SHUTDOWN_SOC
        };
        let floor_pct = f64::from(self.setting(floor_reg)).min(100.0);

        let charge_taper = if soc >= 100.0 {
            0.0
        } else {
            ((100.0 - soc) / 5.0).clamp(0.05, 1.0)
        };
        let discharge_taper = if soc <= floor_pct {
            0.0
        } else {
            ((soc - floor_pct) / 2.0).clamp(0.05, 1.0)
        };
        let mut charge_max = c_rate_w.min(charge_a * ocv) * charge_taper;
        let mut discharge_max = c_rate_w.min(discharge_a * ocv) * discharge_taper;
        if dt > 0.0 {
            let hours = dt / 3600.0;
            let room_wh = (capacity - self.soc_wh).max(0.0);
            let above_floor_wh = (self.soc_wh - capacity * floor_pct / 100.0).max(0.0);
            charge_max = charge_max.min(room_wh / hours / CHARGE_EFFICIENCY);
            discharge_max = discharge_max.min(above_floor_wh / hours);
        }
        (charge_max.max(0.0), discharge_max.max(0.0))
    }

    /// Sun, clouds, house load and grid noise at `t`: a pure function of the
    /// seed, the configuration and `t`.
    fn environment(&self, t: f64) -> Env {
        let n = self.noise;
        let local = t + f64::from(self.config.utc_offset_s);
        let hour = local.rem_euclid(DAY_S) / 3600.0;
        let local_day = (local / DAY_S).floor() as i64;

        // Some days are clear, some overcast; within a day clouds drift by.
        let clearness = 0.3 + 0.7 * n.unit(stream::WEATHER, local_day).sqrt();
        let drift =
            0.75 * n.smooth(stream::CLOUD, t, 420.0) + 0.25 * n.smooth(stream::CLOUD_FAST, t, 45.0);
        let cloud = 1.0 - (1.0 - clearness) * (0.3 + 0.7 * drift);

        // String 2 faces a little further west, so it peaks later.
        let windows = [(6.0, 19.5), (6.5, 20.0)];
        let mut pv_avail = [0.0; 2];
        let mut pv_mpp_voc = [(0.0, 0.0); 2];
        for i in 0..2 {
            let (rise, set) = windows[i];
            let frac = sun_fraction(hour, rise, set) * cloud;
            if frac > PV_START_FRACTION {
                pv_avail[i] = self.config.pv_peak_w[i] * frac;
                let base = if i == 0 { 305.0 } else { 295.0 };
                let jitter = 4.0 * (n.smooth(stream::PV_VOLTAGE + i as u64, t, 20.0) - 0.5);
                let vmpp = base + 50.0 * frac.sqrt() + jitter;
                pv_mpp_voc[i] = (vmpp, base + 80.0);
            }
        }

        let flicker = 80.0 * (n.smooth(stream::LOAD_NOISE, t, 15.0) - 0.5);
        let lively = match self.config.house {
            HouseProfile::Lively => {
                let profile = 350.0 * gauss_hour(hour, 7.25, 0.7)
                    + 200.0 * gauss_hour(hour, 12.75, 1.0)
                    + 800.0 * gauss_hour(hour, 19.5, 1.4);
                let appliances: f64 = APPLIANCES.iter().map(|a| a.power_at(n, t, local)).sum();
                let fridge_phase = n.unit(stream::FRIDGE, 0) * FRIDGE_PERIOD_S;
                let fridge =
                    if (t + fridge_phase).rem_euclid(FRIDGE_PERIOD_S) < FRIDGE_PERIOD_S * 0.35 {
                        110.0
                    } else {
                        0.0
                    };
                profile + appliances + fridge
            }
            HouseProfile::Steady => 0.0,
        };
        let demand_w = (self.config.base_load_w + lively + flicker).clamp(0.0, MAX_DEMAND_W);

        Env {
            pv_avail,
            pv_mpp_voc,
            demand_w,
            grid_v: 230.0 + 3.0 * (n.smooth(stream::GRID_VOLTAGE, t, 45.0) - 0.5),
            grid_hz: 50.0 + 0.05 * (n.smooth(stream::GRID_FREQUENCY, t, 10.0) - 0.5),
            island_v: 230.0 + 0.6 * (n.smooth(stream::ISLAND_VOLTAGE, t, 30.0) - 0.5),
            island_hz: 50.0 + 0.01 * (n.smooth(stream::ISLAND_FREQUENCY, t, 30.0) - 0.5),
            // Warmer in the afternoon.
            ambient_c: 22.0 + 3.0 * ((hour - 9.0) / 24.0 * 2.0 * PI).sin(),
        }
    }

    fn write_static_registers(&mut self) {
        let serial = serial_words(&self.config.inverter_serial);
        let rated_raw = tenths(self.config.rated_power_w);
        let mut r = Regs(&mut self.regs);
        r.set(addr::DEVICE_TYPE, 0x0003);
        r.set(addr::MODBUS_ADDRESS, 1);
        r.set(addr::PROTOCOL_VERSION, 0x0104);
        for (i, word) in serial.iter().enumerate() {
            r.set(addr::SERIAL + i, *word);
        }
        r.set(addr::RATED_PHASE, 0);
        // Made-up but well-formed firmware words (4 hex nibbles each).
        for (a, word) in addr::FW
            .iter()
            .zip([0x1051_u16, 0x0001, 0x2137, 0x3027, 0x1108])
        {
            r.set(*a, word);
        }
        r.u32(addr::RATED_POWER_LO, addr::RATED_POWER_HI, rated_raw);
        r.set(addr::MPPT_PHASES, 0x0201);
        r.set(addr::ON_OFF, 1);
        r.set(addr::MAX_SOLAR_POWER, 7800);
        // Only the BMS limits are static; the live BMS values follow the battery.
        r.u16(addr::BMS_CHARGE_V, 5600.0);
        r.u16(addr::BMS_DISCHARGE_V, 4700.0);
        let bms_limit_a =
            (self.config.battery_capacity_wh * BATTERY_C_RATE / BATTERY_NOMINAL_V).round();
        for a in [
            addr::BMS_CHARGE_LIMIT_A,
            addr::BMS_DISCHARGE_LIMIT_A,
            addr::BMS_MAX_CHARGE_A,
            addr::BMS_MAX_DISCHARGE_A,
        ] {
            r.u16(a, bms_limit_a);
        }
    }

    fn write_default_settings(&mut self) {
        let rated = self.config.rated_power_w;
        let capacity_ah = self.config.battery_capacity_wh / BATTERY_NOMINAL_V;
        let mut r = Regs(&mut self.regs);
        let defaults: [(usize, f64); 26] = [
            (addr::BATTERY_CONTROL_MODE, 1.0),
            (addr::EQUALISATION_V, 5600.0),
            (addr::ABSORPTION_V, 5600.0),
            (addr::FLOAT_V, 5500.0),
            (addr::ZERO_EXPORT_POWER, 20.0),
            (addr::MAX_CHARGE_A, 120.0),
            (addr::MAX_DISCHARGE_A, 120.0),
            (addr::BATTERY_OPERATION_MODE, 1.0),
            (addr::SHUTDOWN_SOC, 5.0),
            (addr::RESTART_SOC, 10.0),
            (addr::LOW_SOC, 10.0),
            (addr::SHUTDOWN_V, 4600.0),
            (addr::RESTART_V, 5000.0),
            (addr::LOW_V, 4750.0),
            (addr::GRID_CHARGE_START_V, 4900.0),
            (addr::GRID_CHARGE_START_SOC, 30.0),
            (addr::GRID_CHARGE_CURRENT, 40.0),
            (addr::GRID_CHARGE_ENABLE, 0.0),
            (addr::AUX_PORT_MODE, 0.0),
            (addr::ENERGY_PATTERN, 1.0),
            (addr::WORK_MODE, 1.0),
            (addr::MAX_SELL_POWER, rated),
            (addr::SOLAR_SELL, 1.0),
            // All weekdays selected, time-of-use itself off.
            (addr::TOU_FLAGS, f64::from(0x00FE_u16)),
            (addr::PEAK_SHAVING, 0.0),
            (addr::BATTERY_CAPACITY_AH, capacity_ah),
        ];
        for (a, v) in defaults {
            r.u16(a, v);
        }
        let tou_times = [100.0, 500.0, 900.0, 1300.0, 1700.0, 2100.0];
        let tou_soc = [20.0, 20.0, 10.0, 10.0, 20.0, 20.0];
        for slot in 0..6 {
            r.u16(addr::TOU_TIME + slot, tou_times[slot]);
            r.u16(addr::TOU_POWER + slot, rated);
            r.u16(addr::TOU_VOLTAGE + slot, 4900.0);
            r.u16(addr::TOU_SOC + slot, tou_soc[slot]);
            r.u16(addr::TOU_SLOT_FLAGS + slot, 0.0);
        }
    }

    /// Writes every live register from the current state. Settings and
    /// identity are left alone so written values stick.
    fn refresh_registers(&mut self) {
        let clock = clock_words(self.clock_local_secs());
        let soc = self.soc_pct();
        let state = if self.fault_bits == 0 { 2 } else { 4 };
        let c = self.counters;
        let f = self.flows;
        let temps = self.temps;
        let grid_on = self.grid_connected;
        let warnings = self.warning_bits;
        let faults = self.fault_bits;
        let mut r = Regs(&mut self.regs);

        r.set(addr::CLOCK_YEAR_MONTH, clock[0]);
        r.set(addr::CLOCK_DAY_HOUR, clock[1]);
        r.set(addr::CLOCK_MINUTE_SECOND, clock[2]);

        r.set(addr::RUNNING_STATE, state);
        r.u16(
            addr::INVERTER_TODAY,
            f64::from(tenth_kwh(c.inverter.today_wh).min(0x7FFF)),
        );
        r.u32(
            addr::INVERTER_TOTAL_LO,
            addr::INVERTER_TOTAL_HI,
            tenth_kwh(c.inverter.total_wh).min(0x7FFF_FFFF),
        );
        r.u16(
            addr::BATTERY_CHARGE_TODAY,
            f64::from(tenth_kwh(c.battery_charge.today_wh)),
        );
        r.u16(
            addr::BATTERY_DISCHARGE_TODAY,
            f64::from(tenth_kwh(c.battery_discharge.today_wh)),
        );
        r.u32(
            addr::BATTERY_CHARGE_TOTAL_LO,
            addr::BATTERY_CHARGE_TOTAL_HI,
            tenth_kwh(c.battery_charge.total_wh),
        );
        r.u32(
            addr::BATTERY_DISCHARGE_TOTAL_LO,
            addr::BATTERY_DISCHARGE_TOTAL_HI,
            tenth_kwh(c.battery_discharge.total_wh),
        );
        r.u16(
            addr::GRID_IMPORT_TODAY,
            f64::from(tenth_kwh(c.grid_import.today_wh)),
        );
        r.u16(
            addr::GRID_EXPORT_TODAY,
            f64::from(tenth_kwh(c.grid_export.today_wh)),
        );
        // The one split counter: 79 in between holds the grid frequency.
        r.u32(
            addr::GRID_IMPORT_TOTAL_LO,
            addr::GRID_IMPORT_TOTAL_HI,
            tenth_kwh(c.grid_import.total_wh),
        );
        r.u16(addr::GRID_FREQUENCY, f.grid_hz * 100.0);
        r.u32(
            addr::GRID_EXPORT_TOTAL_LO,
            addr::GRID_EXPORT_TOTAL_HI,
            tenth_kwh(c.grid_export.total_wh),
        );
        r.u16(addr::LOAD_TODAY, f64::from(tenth_kwh(c.load.today_wh)));
        r.u32(
            addr::LOAD_TOTAL_LO,
            addr::LOAD_TOTAL_HI,
            tenth_kwh(c.load.total_wh),
        );
        r.temperature(addr::DC_TEMPERATURE, temps.dc_c);
        r.temperature(addr::HEATSINK_TEMPERATURE, temps.heatsink_c);
        r.u32(
            addr::PV_TOTAL_LO,
            addr::PV_TOTAL_HI,
            tenth_kwh(c.pv.total_wh),
        );
        r.u32(addr::WARNING_LO, addr::WARNING_HI, warnings);
        for word in 0..addr::FAULT_WORDS {
            r.set(
                addr::FAULT + word,
                ((faults >> (16 * word)) & 0xFFFF) as u16,
            );
        }
        r.u16(addr::PV_TODAY, f64::from(tenth_kwh(c.pv.today_wh)));
        r.u16(addr::PV1_VOLTAGE, f.pv_v[0] * 10.0);
        r.u16(addr::PV1_CURRENT, amps(f.pv_used[0], f.pv_v[0]) * 10.0);
        r.u16(addr::PV2_VOLTAGE, f.pv_v[1] * 10.0);
        r.u16(addr::PV2_CURRENT, amps(f.pv_used[1], f.pv_v[1]) * 10.0);

        r.u16(addr::GRID_VOLTAGE, f.grid_v * 10.0);
        r.u16(addr::GRID_VOLTAGE_L1_L2, f.grid_v * 10.0);
        r.u16(addr::INVERTER_VOLTAGE, f.inverter_v * 10.0);
        r.u16(addr::INVERTER_VOLTAGE_2, f.inverter_v * 10.0);
        r.u16(addr::LOAD_VOLTAGE, f.load_v * 10.0);
        // The real unit reports current magnitudes (160 stays positive while
        // exporting), so direction lives only in the power registers.
        r.s16(addr::GRID_CURRENT, amps(f.grid_w.abs(), f.grid_v) * 100.0);
        r.s16(addr::EXTERNAL_CT_CURRENT, 0.0);
        r.s16(
            addr::INVERTER_CURRENT,
            amps(f.inverter_w.abs(), f.inverter_v) * 100.0,
        );

        // Integer identities are built from the rounded parts so they hold
        // exactly on the raw registers, not just approximately.
        let gen_port = 0_i32;
        let grid_port = s16_int(f.grid_w);
        let inverter = s16_int(f.inverter_w);
        let load =
            (inverter + grid_port - gen_port).clamp(i32::from(i16::MIN), i32::from(i16::MAX));
        r.s16(addr::GEN_PORT_POWER, f64::from(gen_port));
        r.s16(addr::GRID_PORT_POWER, f64::from(grid_port));
        r.s16(addr::GRID_POWER, f64::from(grid_port));
        r.s16(addr::EXTERNAL_CT_POWER_L1, 0.0);
        r.s16(addr::EXTERNAL_CT_POWER, 0.0);
        r.s16(addr::INVERTER_POWER_L1, f64::from(inverter));
        r.s16(addr::INVERTER_POWER, f64::from(inverter));
        r.s16(addr::LOAD_POWER_L1, f64::from(load));
        r.s16(addr::LOAD_POWER, f64::from(load));
        // The public dump shows both holding 175 + 167 (LOAD-port power).
        r.s16(addr::UPS_POWER_A, f64::from(load));
        r.s16(addr::UPS_POWER_B, f64::from(load));

        r.temperature(addr::BATTERY_TEMPERATURE, temps.battery_c);
        r.u16(addr::BATTERY_VOLTAGE, f.battery_v * 100.0);
        r.u16(addr::BATTERY_SOC, soc);
        r.u16(addr::PV1_POWER, f.pv_used[0]);
        r.u16(addr::PV2_POWER, f.pv_used[1]);
        r.s16(addr::BATTERY_POWER, f.battery_w);
        r.s16(addr::BATTERY_CURRENT, f.battery_a * 100.0);
        r.u16(addr::LOAD_FREQUENCY, f.inverter_hz * 100.0);
        r.u16(addr::INVERTER_FREQUENCY, f.inverter_hz * 100.0);
        r.set(addr::GRID_RELAY, u16::from(grid_on));

        r.u16(addr::BMS_SOC, soc);
        r.u16(addr::BMS_VOLTAGE, f.battery_v * 100.0);
        r.s16(addr::BMS_CURRENT, f.battery_a);
        r.u16(addr::BMS_TEMPERATURE, temps.battery_c * 10.0);
    }

    fn write_clock(&mut self, start: usize, values: &[u16]) -> Result<(), WriteError> {
        // Merge so a partial write keeps the other fields of the current clock.
        let mut words = clock_words(self.clock_local_secs());
        for (i, value) in values.iter().enumerate() {
            let slot = start
                .checked_add(i)
                .and_then(|a| a.checked_sub(addr::CLOCK_YEAR_MONTH))
                .and_then(|k| words.get_mut(k));
            if let Some(slot) = slot {
                *slot = *value;
            }
        }
        let local = clock_secs_from_words(words).ok_or(WriteError::IllegalValue {
            addr: u16::try_from(start).unwrap_or(u16::MAX),
        })?;
        self.clock_adjust_s = local - (self.t + f64::from(self.config.utc_offset_s));
        Ok(())
    }
}

/// Inputs of one power-flow decision, all in W.
struct DispatchIn {
    pv_avail: f64,
    demand: f64,
    charge_max: f64,
    discharge_max: f64,
    grid_on: bool,
    /// Max export (max sell power, or 0 without solar sell).
    export_cap: f64,
    /// Grid import the zero-export controller leaves in place (setting 206).
    import_bias: f64,
    rated: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct DispatchOut {
    pv_used: f64,
    /// + discharging.
    battery_w: f64,
    inverter_w: f64,
    /// + importing.
    grid_w: f64,
    /// Served load; `inverter_w + grid_w` by construction.
    load_w: f64,
}

/// Self-consumption priority: PV serves the load, then charges the battery,
/// then is exported (up to the sell limit) or curtailed; a deficit is met by
/// the battery, then the grid. The inverter never outputs more than its
/// rating; off-grid whatever PV + battery cannot serve stays unserved.
fn dispatch(i: &DispatchIn) -> DispatchOut {
    let eta = INVERTER_EFFICIENCY;
    let pv = i.pv_avail.max(0.0);
    let demand = i.demand.max(0.0);
    let rated = i.rated.max(0.0);

    if !i.grid_on {
        let cap_ac = ((pv + i.discharge_max) * eta).min(rated);
        let served = demand.min(cap_ac);
        let need_dc = served / eta;
        let (pv_used, battery_w) = if pv >= need_dc {
            let charge = (pv - need_dc).min(i.charge_max);
            (need_dc + charge, -charge)
        } else {
            (pv, need_dc - pv)
        };
        return DispatchOut {
            pv_used,
            battery_w,
            inverter_w: served,
            grid_w: 0.0,
            load_w: served,
        };
    }

    let pv_ac = pv * eta;
    if pv_ac >= demand {
        let surplus_dc = pv - demand / eta;
        let charge = surplus_dc.min(i.charge_max);
        let export = ((surplus_dc - charge) * eta)
            .min(i.export_cap)
            .min((rated - demand).max(0.0));
        let inverter_w = (demand + export).min(rated);
        return DispatchOut {
            pv_used: inverter_w / eta + charge,
            battery_w: -charge,
            inverter_w,
            grid_w: demand - inverter_w,
            load_w: demand,
        };
    }

    let want_ac = (demand - i.import_bias).clamp(0.0, rated);
    let (pv_used, battery_w, inverter_w) = if pv_ac >= want_ac {
        // PV covers all but the bias: no point cycling the battery for it.
        let inverter_w = pv_ac.min(rated);
        (inverter_w / eta, 0.0, inverter_w)
    } else {
        let discharge = (want_ac / eta - pv).min(i.discharge_max).max(0.0);
        (pv, discharge, (pv + discharge) * eta)
    };
    DispatchOut {
        pv_used,
        battery_w,
        inverter_w,
        grid_w: demand - inverter_w,
        load_w: demand,
    }
}

/// Exogenous conditions at one instant.
struct Env {
    pv_avail: [f64; 2],
    /// MPP and open-circuit voltage per string; (0, 0) when dark.
    pv_mpp_voc: [(f64, f64); 2],
    /// House load without the extra and plug loads.
    demand_w: f64,
    grid_v: f64,
    grid_hz: f64,
    island_v: f64,
    island_hz: f64,
    ambient_c: f64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Flows {
    pv_avail: [f64; 2],
    pv_used: [f64; 2],
    pv_v: [f64; 2],
    demand_w: f64,
    load_w: f64,
    inverter_w: f64,
    grid_w: f64,
    battery_w: f64,
    battery_v: f64,
    battery_a: f64,
    grid_v: f64,
    grid_hz: f64,
    inverter_v: f64,
    load_v: f64,
    inverter_hz: f64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Counter {
    total_wh: f64,
    today_wh: f64,
}

impl Counter {
    fn add(&mut self, wh: f64) {
        // Only positive, finite energy, so totals can only grow.
        if wh.is_finite() && wh > 0.0 {
            self.total_wh += wh;
            self.today_wh += wh;
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Counters {
    pv: Counter,
    battery_charge: Counter,
    battery_discharge: Counter,
    grid_import: Counter,
    grid_export: Counter,
    load: Counter,
    inverter: Counter,
}

struct Totals {
    pv: f64,
    battery_charge: f64,
    battery_discharge: f64,
    grid_import: f64,
    grid_export: f64,
    load: f64,
    inverter: f64,
}

impl Counters {
    fn starting() -> Self {
        let t = &START_TOTALS_WH;
        let c = |total_wh| Counter {
            total_wh,
            today_wh: 0.0,
        };
        Self {
            pv: c(t.pv),
            battery_charge: c(t.battery_charge),
            battery_discharge: c(t.battery_discharge),
            grid_import: c(t.grid_import),
            grid_export: c(t.grid_export),
            load: c(t.load),
            inverter: c(t.inverter),
        }
    }

    fn reset_today(&mut self) {
        for counter in [
            &mut self.pv,
            &mut self.battery_charge,
            &mut self.battery_discharge,
            &mut self.grid_import,
            &mut self.grid_export,
            &mut self.load,
            &mut self.inverter,
        ] {
            counter.today_wh = 0.0;
        }
    }
}

/// First-order thermal states in °C.
#[derive(Debug, Clone, Copy, Default)]
struct Temps {
    dc_c: f64,
    heatsink_c: f64,
    battery_c: f64,
}

impl Temps {
    fn at_rest(ambient_c: f64) -> Self {
        Self::targets(ambient_c, 0.0, 0.0, 0.0)
    }

    /// Steady-state temperatures for the given loads (fractions of rating).
    fn targets(ambient_c: f64, inverter_load: f64, dc_load: f64, battery_load: f64) -> Self {
        Self {
            dc_c: ambient_c + 3.0 + 20.0 * dc_load.clamp(0.0, 1.5),
            heatsink_c: ambient_c + 4.0 + 28.0 * inverter_load.clamp(0.0, 1.5),
            battery_c: (21.0 + 0.5 * (ambient_c - 22.0) + 5.0 * battery_load.clamp(0.0, 1.0))
                .clamp(20.0, 30.0),
        }
    }

    fn relax(&mut self, dt: f64, target: &Self) {
        let approach = |current: &mut f64, target: f64, tau_s: f64| {
            *current += (target - *current) * (1.0 - (-dt / tau_s).exp());
        };
        approach(&mut self.dc_c, target.dc_c, 900.0);
        approach(&mut self.heatsink_c, target.heatsink_c, 600.0);
        approach(&mut self.battery_c, target.battery_c, 3600.0);
    }
}

/// Noise streams, one per quantity, so adding a new noisy quantity does not
/// reshuffle the existing ones.
mod stream {
    pub const WEATHER: u64 = 1;
    pub const CLOUD: u64 = 2;
    pub const CLOUD_FAST: u64 = 3;
    pub const PV_VOLTAGE: u64 = 4; // and 5
    pub const LOAD_NOISE: u64 = 6;
    pub const FRIDGE: u64 = 7;
    pub const GRID_VOLTAGE: u64 = 8;
    pub const GRID_FREQUENCY: u64 = 9;
    pub const ISLAND_VOLTAGE: u64 = 10;
    pub const ISLAND_FREQUENCY: u64 = 11;
    pub const KETTLE: u64 = 20; // each appliance uses two streams
    pub const MICROWAVE: u64 = 22;
    pub const OVEN: u64 = 24;
    pub const WASHER: u64 = 26;
}

/// Counter-based PRNG: every draw is a hash of (seed, stream, index), so a
/// value at a given time is the same however the caller slices time.
#[derive(Debug, Clone, Copy)]
struct Noise {
    seed: u64,
}

impl Noise {
    fn bits(self, stream: u64, index: i64) -> u64 {
        let keyed = splitmix64(self.seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        // Reinterpreting the index bits is the intent; negative indices stay distinct.
        splitmix64(keyed ^ u64::from_ne_bytes(index.to_ne_bytes()))
    }

    /// Uniform in `[0, 1)`.
    fn unit(self, stream: u64, index: i64) -> f64 {
        (self.bits(stream, index) >> 11) as f64 / (1_u64 << 53) as f64
    }

    /// Value noise in `[0, 1)`: random knots every `period_s`, eased between.
    fn smooth(self, stream: u64, t: f64, period_s: f64) -> f64 {
        let x = t / period_s;
        let knot = x.floor();
        let frac = x - knot;
        let k = knot as i64;
        let a = self.unit(stream, k);
        let b = self.unit(stream, k.saturating_add(1));
        let ease = (1.0 - (PI * frac).cos()) / 2.0;
        a + (b - a) * ease
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const FRIDGE_PERIOD_S: f64 = 2700.0;

/// A household appliance switched on at random within time-of-day windows.
struct Appliance {
    stream: u64,
    power_w: f64,
    duration_s: f64,
    /// At most one run starts per slot.
    slot_s: f64,
    /// (from hour, to hour, probability of a run per slot) in local time.
    windows: &'static [(f64, f64, f64)],
}

const APPLIANCES: [Appliance; 4] = [
    Appliance {
        stream: stream::KETTLE,
        power_w: 2000.0,
        duration_s: 180.0,
        slot_s: 1800.0,
        windows: &[
            (6.0, 9.0, 0.45),
            (9.0, 12.0, 0.12),
            (12.0, 14.0, 0.25),
            (14.0, 16.0, 0.12),
            (16.0, 21.0, 0.25),
            (21.0, 23.0, 0.10),
        ],
    },
    Appliance {
        stream: stream::MICROWAVE,
        power_w: 1150.0,
        duration_s: 240.0,
        slot_s: 3600.0,
        windows: &[(7.0, 9.0, 0.15), (11.5, 13.5, 0.35), (17.0, 20.0, 0.35)],
    },
    Appliance {
        stream: stream::OVEN,
        power_w: 2300.0,
        duration_s: 2700.0,
        slot_s: 3600.0,
        windows: &[(11.0, 12.0, 0.12), (17.0, 19.0, 0.30)],
    },
    Appliance {
        stream: stream::WASHER,
        power_w: 1900.0,
        duration_s: 1200.0,
        slot_s: 3600.0,
        windows: &[(8.0, 18.0, 0.07)],
    },
];

impl Appliance {
    /// Power drawn at `t` (UTC seconds); `local` is the same instant in local time.
    fn power_at(&self, noise: Noise, t: f64, local: f64) -> f64 {
        let offset = local - t;
        let current = (local / self.slot_s).floor() as i64;
        let lookback = (self.duration_s / self.slot_s).ceil() as i64;
        let mut power = 0.0;
        for slot in current.saturating_sub(lookback)..=current {
            let slot_start = slot as f64 * self.slot_s;
            let hour = slot_start.rem_euclid(DAY_S) / 3600.0;
            let p = self
                .windows
                .iter()
                .find(|(from, to, _)| hour >= *from && hour < *to)
                .map_or(0.0, |w| w.2);
            if noise.unit(self.stream, slot) < p {
                let start = slot_start + noise.unit(self.stream + 1, slot) * self.slot_s - offset;
                if t >= start && t < start + self.duration_s {
                    power += self.power_w;
                }
            }
        }
        power
    }
}

/// Clear-sky output as a fraction of peak: sin² between sunrise and sunset.
fn sun_fraction(hour: f64, rise: f64, set: f64) -> f64 {
    if hour <= rise || hour >= set {
        return 0.0;
    }
    let s = (PI * (hour - rise) / (set - rise)).sin();
    s * s
}

/// Gaussian bump over the hour of day, wrapping at midnight.
fn gauss_hour(hour: f64, mean: f64, sigma: f64) -> f64 {
    let d = (hour - mean + 12.0).rem_euclid(24.0) - 12.0;
    (-0.5 * (d / sigma).powi(2)).exp()
}

fn battery_ocv(soc_pct: f64) -> f64 {
    BATTERY_OCV_EMPTY_V
        + (BATTERY_OCV_FULL_V - BATTERY_OCV_EMPTY_V) * soc_pct.clamp(0.0, 100.0) / 100.0
}

/// Terminal voltage for power `p` (+ discharge): solves `V = ocv − R·P/V`
/// so that `P = V·I` holds exactly with `I = P/V`.
fn battery_terminal_v(ocv: f64, p: f64) -> f64 {
    let disc = (ocv * ocv - 4.0 * BATTERY_R_OHM * p).max(0.0);
    (ocv + disc.sqrt()) / 2.0
}

fn amps(power_w: f64, volts: f64) -> f64 {
    if volts > 1.0 { power_w / volts } else { 0.0 }
}

fn finite_in(v: f64, lo: f64, hi: f64, default: f64) -> f64 {
    if v.is_finite() {
        v.clamp(lo, hi)
    } else {
        default
    }
}

/// Energy in Wh as the registers' 0.1 kWh units; floored like a meter so a
/// growing total never shows a decrease.
fn tenth_kwh(wh: f64) -> u32 {
    if wh.is_finite() {
        (wh / 100.0).floor().clamp(0.0, f64::from(u32::MAX)) as u32
    } else {
        0
    }
}

/// `v × 10` as a U32 (the ×0.1 W rated-power encoding).
fn tenths(v: f64) -> u32 {
    if v.is_finite() {
        (v * 10.0).round().clamp(0.0, f64::from(u32::MAX)) as u32
    } else {
        0
    }
}

fn s16_int(v: f64) -> i32 {
    if v.is_finite() {
        v.round().clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i32
    } else {
        0
    }
}

/// Writer over the register image; constant addresses only, so a miss is a
/// programming error and is ignored rather than panicking in the server.
struct Regs<'a>(&'a mut [u16; REGISTER_COUNT]);

impl Regs<'_> {
    fn set(&mut self, address: usize, value: u16) {
        if let Some(slot) = self.0.get_mut(address) {
            *slot = value;
        }
    }

    fn u16(&mut self, address: usize, value: f64) {
        let raw = if value.is_finite() {
            value.round().clamp(0.0, f64::from(u16::MAX)) as u16
        } else {
            0
        };
        self.set(address, raw);
    }

    fn s16(&mut self, address: usize, value: f64) {
        let raw = s16_int(value) as i16;
        self.set(address, u16::from_ne_bytes(raw.to_ne_bytes()));
    }

    fn u32(&mut self, lo: usize, hi: usize, value: u32) {
        self.set(lo, (value & 0xFFFF) as u16);
        self.set(hi, (value >> 16) as u16);
    }

    /// Deye temperature encoding: raw = (°C + 100) × 10.
    fn temperature(&mut self, address: usize, celsius: f64) {
        self.u16(address, (celsius + 100.0) * 10.0);
    }
}

/// Serial as 5 words, 2 ASCII chars each, high byte first.
fn serial_words(serial: &str) -> [u16; addr::SERIAL_WORDS] {
    let mut bytes = [b' '; 2 * addr::SERIAL_WORDS];
    for (slot, ch) in bytes.iter_mut().zip(serial.chars()) {
        *slot = if ch.is_ascii_graphic() || ch == ' ' {
            // is_ascii_* guarantees the char fits in one byte.
            u8::try_from(ch).unwrap_or(b'?')
        } else {
            b'?'
        };
    }
    let mut words = [0; addr::SERIAL_WORDS];
    for (word, pair) in words.iter_mut().zip(bytes.chunks_exact(2)) {
        if let [hi, lo] = pair {
            *word = u16::from_be_bytes([*hi, *lo]);
        }
    }
    words
}

/// Clock registers 22–24 for a local time in seconds since the epoch.
fn clock_words(local_secs: f64) -> [u16; 3] {
    let secs = local_secs.floor() as i64;
    let days = secs.div_euclid(86_400);
    let second_of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let hour = second_of_day / 3600;
    let minute = second_of_day % 3600 / 60;
    let second = second_of_day % 60;
    let year_byte = u16::try_from((year - 2000).clamp(0, 255)).unwrap_or(0);
    let byte = |v: i64| u16::try_from(v.clamp(0, 255)).unwrap_or(0);
    [
        (year_byte << 8) | byte(i64::from(month)),
        (byte(i64::from(day)) << 8) | byte(hour),
        (byte(minute) << 8) | byte(second),
    ]
}

/// Inverse of [`clock_words`]; `None` for an impossible date or time.
fn clock_secs_from_words(words: [u16; 3]) -> Option<f64> {
    let [year_month, day_hour, minute_second] = words.map(u16::to_be_bytes);
    let year = 2000 + i64::from(year_month[0]);
    let month = u32::from(year_month[1]);
    let day = u32::from(day_hour[0]);
    let hour = i64::from(day_hour[1]);
    let minute = i64::from(minute_second[0]);
    let second = i64::from(minute_second[1]);
    let valid = (1..=12).contains(&month)
        && day >= 1
        && day <= days_in_month(year, month)
        && hour < 24
        && minute < 60
        && second < 60;
    if !valid {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some((days * 86_400 + hour * 3600 + minute * 60 + second) as f64)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 0,
    }
}

/// Proleptic Gregorian date for days since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both are small by construction (1..=31, 1..=12).
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

/// Days since 1970-01-01 for a proleptic Gregorian date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let month = i64::from(month);
    let day = i64::from(day);
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-06-15 00:00:00 UTC.
    const JUNE_15: f64 = 1_718_409_600.0;
    const RATED: f64 = 6000.0;

    fn at_hour(hour: f64) -> SimTime {
        SimTime::from_unix_secs(JUNE_15 + hour * 3600.0)
    }

    fn model_at(hour: f64) -> InverterModel {
        InverterModel::new(ModelConfig::default(), at_hour(hour))
    }

    fn reg(m: &InverterModel, a: usize) -> u16 {
        m.registers()
            .get(a)
            .copied()
            .unwrap_or_else(|| panic!("register {a} missing"))
    }

    fn s16(m: &InverterModel, a: usize) -> i32 {
        i32::from(i16::from_ne_bytes(reg(m, a).to_ne_bytes()))
    }

    fn u32_at(m: &InverterModel, lo: usize, hi: usize) -> u32 {
        u32::from(reg(m, lo)) | (u32::from(reg(m, hi)) << 16)
    }

    /// All cumulative counters in raw 0.1 kWh, in a fixed order.
    fn totals(m: &InverterModel) -> [u32; 7] {
        [
            u32_at(m, 63, 64),
            u32_at(m, 72, 73),
            u32_at(m, 74, 75),
            u32_at(m, 78, 80),
            u32_at(m, 81, 82),
            u32_at(m, 85, 86),
            u32_at(m, 96, 97),
        ]
    }

    const DAILY: [usize; 7] = [60, 70, 71, 76, 77, 84, 108];

    /// Invariants that must hold at every instant.
    fn check_invariants(m: &InverterModel) {
        let (p166, p167, p169, p175, p178) = (
            s16(m, 166),
            s16(m, 167),
            s16(m, 169),
            s16(m, 175),
            s16(m, 178),
        );
        assert_eq!(p178, p175 + p169 - p166, "178 = 175 + 169 - 166");
        assert_eq!(s16(m, 176), p178);
        assert_eq!(p169, p167, "zero export to load: 169 = 167");
        assert_eq!(s16(m, 179), p175 + p167 - p166, "LOAD-port power");
        assert_eq!((s16(m, 170), s16(m, 172), p166), (0, 0, 0));
        assert!(
            f64::from(p175) <= 1.1 * RATED,
            "175 = {p175} over 1.1 x rated"
        );
        assert!(p175 >= 0);
        assert!(reg(m, 184) <= 100);
        let snap = m.snapshot();
        assert!((0.0..=100.0).contains(&snap.soc_pct));
        // 175 = PV + battery - losses, with losses >= 0 and small.
        let dc = i32::from(reg(m, 186)) + i32::from(reg(m, 187)) + s16(m, 190);
        let losses = dc - p175;
        assert!(losses >= -3, "negative losses {losses}");
        assert!(
            f64::from(losses) <= 0.05 * f64::from(dc.max(0)) + 3.0,
            "losses {losses} for dc {dc}"
        );
        // P = V x I for the battery (0.01 V x 0.01 A) and the strings (0.1 V x 0.1 A).
        let batt = f64::from(reg(m, 183)) * f64::from(s16(m, 191)) / 10_000.0;
        assert!(
            (batt - f64::from(s16(m, 190))).abs() <= 2.0,
            "battery P != V x I"
        );
        for (p, v, i) in [(186, 109, 110), (187, 111, 112)] {
            let vi = f64::from(reg(m, v)) * f64::from(reg(m, i)) / 100.0;
            assert!(
                (vi - f64::from(reg(m, p))).abs() <= 25.0,
                "PV P != V x I at {p}"
            );
        }
        assert_eq!(reg(m, 59), 2);
    }

    #[test]
    fn pv_produces_at_noon_and_not_at_midnight() {
        for day in 0..10 {
            let noon = model_at(f64::from(day) * 24.0 + 12.0);
            assert!(noon.snapshot().pv_w > 0.0, "day {day}");
            assert!(reg(&noon, 186) > 0 && reg(&noon, 187) > 0);
            let v = f64::from(reg(&noon, 109)) / 10.0;
            assert!((300.0..=380.0).contains(&v), "PV1 voltage {v}");

            let midnight = model_at(f64::from(day) * 24.0);
            assert_eq!(midnight.snapshot().pv_w, 0.0);
            for a in [109, 110, 111, 112, 186, 187] {
                assert_eq!(reg(&midnight, a), 0, "register {a} at midnight");
            }
        }
    }

    #[test]
    fn forty_eight_hours_keep_invariants_counters_and_midnight_reset() {
        let mut m = model_at(0.5);
        let mut last_totals = totals(&m);
        let mut last_day = reg(&m, 23) >> 8;
        let mut last_pv_today = reg(&m, 108);
        let mut last_load_today = reg(&m, 84);
        let mut finished_days = Vec::new();
        let mut saw_charge = false;
        let mut saw_discharge = false;
        let mut saw_export = false;
        for i in 1..=(48 * 720) {
            m.advance(at_hour(0.5).add_secs(f64::from(i) * 5.0));
            check_invariants(&m);
            let now = totals(&m);
            for (before, after) in last_totals.iter().zip(now) {
                assert!(after >= *before, "a total decreased at step {i}");
            }
            last_totals = now;
            let day = reg(&m, 23) >> 8;
            let pv_today = reg(&m, 108);
            if day == last_day {
                assert!(pv_today >= last_pv_today, "PV today decreased within a day");
            } else {
                finished_days.push((last_pv_today, last_load_today));
                assert_eq!(pv_today, 0);
                for a in DAILY {
                    assert!(reg(&m, a) <= 1, "daily register {a} not reset");
                }
            }
            last_day = day;
            last_pv_today = pv_today;
            last_load_today = reg(&m, 84);
            saw_charge |= s16(&m, 190) < -100;
            saw_discharge |= s16(&m, 190) > 100;
            saw_export |= s16(&m, 169) < -100;
        }
        assert_eq!(finished_days.len(), 2);
        assert!(saw_charge && saw_discharge && saw_export);
        // Plausible days: several kWh of PV and of load (0.1 kWh units).
        for (pv, load) in finished_days {
            assert!(pv > 50, "PV per day {pv}");
            assert!(load > 30, "load per day {load}");
        }
    }

    #[test]
    fn daily_counters_reset_at_local_midnight_with_offset() {
        let config = ModelConfig {
            utc_offset_s: 7200,
            ..ModelConfig::default()
        };
        // Local 06:00 is 04:00 UTC.
        let start = at_hour(4.0);
        let mut m = InverterModel::new(config, start);
        let before_midnight = start.add_secs(18.0 * 3600.0 - 5.0);
        let mut t = start;
        while t < before_midnight {
            t = t.add_secs(5.0);
            m.advance(t);
        }
        assert_eq!(reg(&m, 23), (15 << 8) | 23, "local 23:59 on the 15th");
        assert!(reg(&m, 108) > 0 && reg(&m, 84) > 0);
        let totals_before = totals(&m);
        m.advance(before_midnight.add_secs(10.0));
        assert_eq!(reg(&m, 23), 16 << 8, "local 00:00 on the 16th");
        assert_eq!(reg(&m, 108), 0);
        for a in DAILY {
            assert!(reg(&m, a) <= 1, "register {a}");
        }
        for (before, after) in totals_before.iter().zip(totals(&m)) {
            assert!(after >= *before);
        }
    }

    #[test]
    fn identity_holds_in_every_mode() {
        let mut m = model_at(0.0);
        for step in 0..(24 * 12) {
            let t = at_hour(0.0).add_secs(f64::from(step) * 300.0);
            m.advance(t);
            m.set_extra_load(f64::from(step % 7) * 1500.0);
            m.set_grid_connected(step % 5 != 0);
            check_invariants(&m);
            if step % 5 == 0 {
                assert_eq!((s16(&m, 169), reg(&m, 194), reg(&m, 79)), (0, 0, 0));
                assert_eq!(s16(&m, 178), s16(&m, 175));
            } else {
                assert_eq!(reg(&m, 194), 1);
            }
        }
    }

    #[test]
    fn soc_stays_within_bounds_and_floors() {
        for (soc, grid, hours) in [(12.0, true, 0.0), (8.0, false, 20.0), (98.0, true, 9.0)] {
            let config = ModelConfig {
                initial_soc_pct: soc,
                grid_connected: grid,
                ..ModelConfig::default()
            };
            let mut m = InverterModel::new(config, at_hour(hours));
            m.set_extra_load(if soc > 50.0 { 0.0 } else { 3000.0 });
            for i in 1..=(12 * 720) {
                m.advance(at_hour(hours).add_secs(f64::from(i) * 5.0));
                let s = m.snapshot().soc_pct;
                assert!((0.0..=100.0).contains(&s));
                // Floors: 10 % on-grid (219), 5 % off-grid (217), never undershot.
                let floor: f64 = if grid { 10.0 } else { 5.0 };
                assert!(s >= floor.min(soc) - 0.01, "SOC {s} below floor");
            }
        }
    }

    #[test]
    fn battery_charges_in_the_afternoon_and_discharges_at_night() {
        let mut m = model_at(22.0);
        let start_soc = m.snapshot().soc_pct;
        for i in 1..=(720 * 2) {
            m.advance(at_hour(22.0).add_secs(f64::from(i) * 5.0));
        }
        let night = m.snapshot();
        assert!(night.soc_pct < start_soc, "night SOC did not fall");
        assert!(night.battery_w > 0.0 && night.pv_w == 0.0);
    }

    #[test]
    fn overload_is_capped_by_the_rating() {
        let mut m = model_at(19.5);
        m.set_extra_load(15_000.0);
        let on_grid = m.snapshot();
        assert!(on_grid.inverter_w <= RATED + 1e-9);
        assert!(on_grid.grid_w > 9_000.0, "grid carries the rest via bypass");
        assert!((on_grid.load_w - on_grid.load_demand_w).abs() < 1e-6);
        assert!(
            f64::from(s16(&m, 178)) > RATED,
            "178 is not bounded by the rating"
        );
        check_invariants(&m);

        m.set_grid_connected(false);
        let island = m.snapshot();
        assert_eq!(island.grid_w, 0.0);
        assert!(island.inverter_w <= RATED + 1e-9);
        assert!(island.unserved_w > 0.0 && island.at_limit);
        assert!(f64::from(s16(&m, 175)) <= 1.1 * RATED);
        check_invariants(&m);
    }

    #[test]
    fn extra_load_shows_up_in_the_load() {
        let mut m = model_at(3.0);
        let before = m.snapshot();
        m.set_extra_load(1000.0);
        let after = m.snapshot();
        assert!((after.load_demand_w - before.load_demand_w - 1000.0).abs() < 1e-6);
        assert!((after.load_w - before.load_w - 1000.0).abs() < 1e-6);
        assert_eq!(after.extra_load_w, 1000.0);
        m.set_extra_load(f64::NAN);
        assert_eq!(m.snapshot().extra_load_w, 0.0);
    }

    /// LOAD-port power as the balancer computes it: 175 + 167 − 166.
    fn load_port(m: &InverterModel) -> i32 {
        s16(m, 175) + s16(m, 167) - s16(m, 166)
    }

    #[test]
    fn plug_load_adds_to_the_extra_load_and_reaches_the_load_port() {
        for hour in [3.0, 12.0, 19.5] {
            let mut m = model_at(hour);
            let base = load_port(&m);
            m.set_extra_load(2200.0);
            m.set_plug_load(3500.0);
            let both = m.snapshot();
            assert_eq!(both.extra_load_w, 2200.0);
            assert_eq!(both.plug_load_w, 3500.0);
            assert!((load_port(&m) - base - 5700).abs() <= 1, "at {hour} h");
            check_invariants(&m);
            // Each input leaves the other alone.
            m.set_plug_load(1500.0);
            assert_eq!(m.snapshot().extra_load_w, 2200.0);
            assert!((load_port(&m) - base - 3700).abs() <= 1, "at {hour} h");
            m.set_extra_load(0.0);
            assert_eq!(m.snapshot().plug_load_w, 1500.0);
            assert!((load_port(&m) - base - 1500).abs() <= 1, "at {hour} h");
            m.set_plug_load(f64::INFINITY);
            assert_eq!(m.snapshot().plug_load_w, 0.0);
            assert!((load_port(&m) - base).abs() <= 1);
        }
    }

    #[test]
    fn a_steady_house_draws_its_base_load_at_any_hour() {
        let config = ModelConfig {
            house: HouseProfile::Steady,
            ..ModelConfig::default()
        };
        let mut m = InverterModel::new(config, at_hour(0.0));
        for step in 0..(48 * 60) {
            m.advance(at_hour(f64::from(step) / 60.0));
            let demand = m.snapshot().load_demand_w;
            assert!(
                (259.0..=341.0).contains(&demand),
                "{demand} W at minute {step}"
            );
            check_invariants(&m);
        }
    }

    #[test]
    fn identity_registers() {
        let m = model_at(12.0);
        assert_eq!(reg(&m, 0), 0x0003);
        assert_eq!(reg(&m, 1), 1);
        assert_eq!(reg(&m, 2), 0x0104);
        assert_eq!(reg(&m, 8), 0);
        assert_eq!(reg(&m, 18), 0x0201);
        let rated_tenths = u32_at(&m, 16, 17);
        assert_eq!(rated_tenths, 60_000);
        assert_eq!(f64::from(rated_tenths) * 0.1, 6000.0);
        for a in 10..=14 {
            assert_ne!(reg(&m, a), 0, "firmware word {a}");
        }
    }

    #[test]
    fn serial_round_trips_as_ascii() {
        let m = model_at(12.0);
        let bytes: Vec<u8> = (3..=7).flat_map(|a| reg(&m, a).to_be_bytes()).collect();
        assert_eq!(String::from_utf8(bytes).ok().as_deref(), Some("2409123456"));

        let short = InverterModel::new(
            ModelConfig {
                inverter_serial: "AB\u{e9}".to_owned(),
                ..ModelConfig::default()
            },
            at_hour(12.0),
        );
        assert_eq!(reg(&short, 3), u16::from_be_bytes(*b"AB"));
        assert_eq!(reg(&short, 4), u16::from_be_bytes(*b"? "));
        assert_eq!(reg(&short, 7), u16::from_be_bytes(*b"  "));
    }

    #[test]
    fn clock_registers_for_a_known_timestamp() {
        // 2023-11-14 22:13:20 UTC.
        let m = InverterModel::new(
            ModelConfig::default(),
            SimTime::from_unix_secs(1_700_000_000.0),
        );
        assert_eq!(reg(&m, 22), (23 << 8) | 11);
        assert_eq!(reg(&m, 23), (14 << 8) | 22);
        assert_eq!(reg(&m, 24), (13 << 8) | 20);

        let local = InverterModel::new(
            ModelConfig {
                utc_offset_s: 3 * 3600,
                ..ModelConfig::default()
            },
            SimTime::from_unix_secs(1_700_000_000.0),
        );
        assert_eq!(reg(&local, 23), (15 << 8) | 1, "UTC+3 is past midnight");
    }

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_675), (2023, 11, 14));
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(days_in_month(2100, 2), 28);
        assert_eq!(days_in_month(2000, 2), 29);
    }

    #[test]
    fn grid_import_total_is_split_around_the_frequency() {
        // An empty battery at night makes the grid carry the house.
        let config = ModelConfig {
            initial_soc_pct: 10.0,
            ..ModelConfig::default()
        };
        let mut m = InverterModel::new(config, at_hour(0.0));
        m.advance(at_hour(1.0));
        let lo = reg(&m, 78);
        let hi = reg(&m, 80);
        assert_eq!(hi, 1, "start total 8765.4 kWh needs the high word");
        let total = u32::from(lo) | (u32::from(hi) << 16);
        assert!(total > 87_654, "imported overnight: {total}");
        let hz = f64::from(reg(&m, 79)) * 0.01;
        assert!(
            (49.97..=50.03).contains(&hz),
            "79 is the frequency, got {hz}"
        );
        let volts = f64::from(reg(&m, 150)) * 0.1;
        assert!((228.0..=232.0).contains(&volts));
    }

    #[test]
    fn settings_write_is_stored_and_acts() {
        let config = ModelConfig {
            initial_soc_pct: 100.0,
            ..ModelConfig::default()
        };
        let mut m = InverterModel::new(config, at_hour(12.0));
        assert_eq!(m.read(244, 2), Some(vec![1, 6000]));
        assert_eq!(m.write(245, &[600]), Ok(()));
        assert_eq!(m.read(245, 1), Some(vec![600]));
        // Battery full at noon: surplus is limited by the max sell power.
        assert!(m.snapshot().grid_w >= -600.0 - 1e-9);
        check_invariants(&m);
        m.advance(at_hour(12.1));
        assert_eq!(m.read(245, 1), Some(vec![600]), "advance keeps settings");

        assert_eq!(m.write(200, &[1; 81]), Ok(()));
        assert_eq!(m.read(280, 1), Some(vec![1]));
    }

    #[test]
    fn writes_outside_settings_and_clock_are_rejected() {
        let mut m = model_at(12.0);
        let before = m.registers().to_vec();
        for (a, n) in [
            (175, 1),
            (21, 2),
            (24, 2),
            (199, 2),
            (280, 2),
            (0, 1),
            (399, 1),
            (u16::MAX, 3),
        ] {
            let err = m.write(a, &vec![7; n]);
            assert!(
                matches!(err, Err(WriteError::IllegalAddress { .. })),
                "write {a}+{n}: {err:?}"
            );
            assert_eq!(err.map_err(|e| e.exception_code()), Err(0x02));
        }
        assert_eq!(m.write(245, &[]), Err(WriteError::Empty));
        assert_eq!(m.registers(), &before[..]);
    }

    #[test]
    fn clock_write_moves_the_inverter_clock() {
        let mut m = model_at(12.0);
        // 2025-01-31 23:59:50.
        let words = [(25 << 8) | 1, (31 << 8) | 23, (59 << 8) | 50];
        assert_eq!(m.write(22, &words), Ok(()));
        assert_eq!(m.read(22, 3), Some(words.to_vec()));
        m.advance(at_hour(12.0).add_secs(20.0));
        assert_eq!(m.read(22, 3), Some(vec![(25 << 8) | 2, 1 << 8, 10]));
        // The sun still follows real time.
        assert!(m.snapshot().pv_w > 0.0);

        // Single-field write keeps the others.
        assert_eq!(m.write(24, &[(30 << 8) | 5]), Ok(()));
        assert_eq!(
            m.read(22, 3),
            Some(vec![(25 << 8) | 2, 1 << 8, (30 << 8) | 5])
        );

        let invalid = m.write(22, &[(25 << 8) | 13]);
        assert_eq!(invalid, Err(WriteError::IllegalValue { addr: 22 }));
        assert_eq!(invalid.map_err(|e| e.exception_code()), Err(0x03));
        assert_eq!(
            m.write(23, &[(30 << 8) | 1]),
            Err(WriteError::IllegalValue { addr: 23 }),
            "30 Feb"
        );
        assert_eq!(
            m.write(24, &[60 << 8]),
            Err(WriteError::IllegalValue { addr: 24 })
        );
    }

    #[test]
    fn read_windows() {
        let m = model_at(12.0);
        assert_eq!(m.registers().len(), REGISTER_COUNT);
        assert_eq!(m.read(0, 400).map(|v| v.len()), Some(400));
        assert_eq!(m.read(399, 1).map(|v| v.len()), Some(1));
        assert_eq!(m.read(399, 2), None);
        assert_eq!(m.read(400, 1), None);
        assert_eq!(m.read(u16::MAX, u16::MAX), None);
        assert_eq!(m.read(10, 0), None);
        assert_eq!(m.read(390, 1), Some(vec![0]), "unmodelled reads as 0");
        assert_eq!(m.read(59, 54).map(|v| v.len()), Some(54));
    }

    #[test]
    fn same_seed_and_times_give_identical_registers() {
        let times = [0.3, 0.3, 5.9, 6.4, 11.0, 12.25, 12.26, 19.0, 47.5];
        let run = |seed: u64| {
            let config = ModelConfig {
                seed,
                ..ModelConfig::default()
            };
            let mut m = InverterModel::new(config, at_hour(0.0));
            let mut images = Vec::new();
            for h in times {
                m.advance(at_hour(h));
                images.push(m.registers().to_vec());
            }
            images
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn exogenous_inputs_do_not_depend_on_step_pattern() {
        let mut fine = model_at(6.0);
        let mut coarse = model_at(6.0);
        for i in 1..=3600 {
            fine.advance(at_hour(6.0).add_secs(f64::from(i)));
        }
        coarse.advance(at_hour(7.0));
        let (a, b) = (fine.snapshot(), coarse.snapshot());
        assert_eq!(a.pv_available_w, b.pv_available_w);
        assert_eq!(a.load_demand_w, b.load_demand_w);
        assert!((a.soc_pct - b.soc_pct).abs() < 0.5);
    }

    #[test]
    fn time_going_backwards_or_jumping_far_is_safe() {
        let mut m = model_at(12.0);
        let totals_before = totals(&m);
        m.advance(at_hour(11.0));
        assert_eq!(totals(&m), totals_before, "no energy for a backward jump");
        m.advance(at_hour(24.0 * 365.0));
        for (before, after) in totals_before.iter().zip(totals(&m)) {
            assert!(after >= *before);
        }
        check_invariants(&m);
        m.advance(SimTime::from_unix_secs(f64::INFINITY));
        check_invariants(&m);
    }

    #[test]
    fn fault_bits_map_to_registers_and_state() {
        let mut m = model_at(12.0);
        m.set_fault_bits((1 << 34) | (1 << 63) | 1);
        assert_eq!(m.read(103, 4), Some(vec![1, 0, 0b100, 0x8000]));
        assert_eq!(reg(&m, 59), 4);
        m.set_fault_bits(0);
        assert_eq!(reg(&m, 59), 2);
        m.set_warning_bits(1 << 30 | 2);
        assert_eq!(m.read(101, 2), Some(vec![2, 0x4000]));
    }

    #[test]
    fn temperatures_are_plausible() {
        let mut m = model_at(10.0);
        for i in 1..=720 {
            m.advance(at_hour(10.0).add_secs(f64::from(i) * 5.0));
        }
        let celsius = |a| (f64::from(reg(&m, a)) - 1000.0) * 0.1;
        assert!(
            (20.0..=30.0).contains(&celsius(182)),
            "battery {}",
            celsius(182)
        );
        for a in [90, 91] {
            assert!(
                (15.0..=70.0).contains(&celsius(a)),
                "register {a}: {}",
                celsius(a)
            );
        }
    }

    #[test]
    fn bad_config_is_sanitized() {
        let config = ModelConfig {
            rated_power_w: f64::NAN,
            pv_peak_w: [-1.0, f64::INFINITY],
            battery_capacity_wh: 0.0,
            initial_soc_pct: 250.0,
            utc_offset_s: i32::MAX,
            ..ModelConfig::default()
        };
        let mut m = InverterModel::new(config, at_hour(12.0));
        assert_eq!(u32_at(&m, 16, 17), 60_000);
        assert_eq!(reg(&m, 184), 100);
        assert_eq!(m.config().battery_capacity_wh, 100.0);
        check_invariants(&m);
        m.advance(at_hour(13.0));
        check_invariants(&m);
    }
}
