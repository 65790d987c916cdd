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

mod environment;
mod flow;
mod image;
mod types;

use environment::Noise;
pub use types::{HouseProfile, ModelConfig, ModelSnapshot, SimTime, WriteError};

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
mod addr;

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

fn finite_in(v: f64, lo: f64, hi: f64, default: f64) -> f64 {
    if v.is_finite() {
        v.clamp(lo, hi)
    } else {
        default
    }
}

#[cfg(test)]
mod tests;
