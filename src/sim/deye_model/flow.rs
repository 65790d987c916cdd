//! One step of the model: the power-flow decision, the battery and the
//! integration of energy and temperatures.

use super::{
    BATTERY_C_RATE, BATTERY_OCV_EMPTY_V, BATTERY_OCV_FULL_V, BATTERY_R_OHM, CHARGE_EFFICIENCY,
    Flows, INVERTER_EFFICIENCY, InverterModel, MAX_IMPORT_BIAS_W, Temps, addr,
};

impl InverterModel {
    /// Moves the model to `t`, integrating `dt` seconds of energy (0 = just
    /// recompute the instantaneous flows, e.g. after a knob changed).
    pub(super) fn step(&mut self, t: f64, dt: f64) {
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
