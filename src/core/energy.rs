//! Energy counters integrated from power, for devices that report power but
//! no energy (a BMS): what the Home Assistant Energy dashboard needs.

use serde::{Deserialize, Serialize};

/// kWh into and out of a battery, ever increasing; persisted so that a
/// restart does not reset the dashboard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct EnergyCounters {
    pub charged_kwh: f64,
    pub discharged_kwh: f64,
}

/// Trapezoidal integration of power samples.
#[derive(Debug, Clone)]
pub struct Integrator {
    pub counters: EnergyCounters,
    last: Option<(f64, f64)>,
    /// Samples further apart than this are not joined: the link was down
    /// and what happened meanwhile is unknown.
    max_gap_s: f64,
}

impl Integrator {
    pub fn new(counters: EnergyCounters, max_gap_s: f64) -> Self {
        Self {
            counters,
            last: None,
            max_gap_s,
        }
    }

    /// Adds a sample taken at `t_s` seconds (any monotonic origin) of
    /// `power_w` (> 0 = charging). Non-finite input is ignored.
    pub fn add(&mut self, t_s: f64, power_w: f64) {
        if !t_s.is_finite() || !power_w.is_finite() {
            return;
        }
        if let Some((t0, p0)) = self.last {
            let dt = t_s - t0;
            if dt > 0.0 && dt <= self.max_gap_s {
                // Split the trapezoid where the power crosses zero, so a
                // swing from charging to discharging is not netted out.
                let (charge_wh, discharge_wh) = split_trapezoid(p0, power_w, dt);
                self.counters.charged_kwh += charge_wh / 1000.0;
                self.counters.discharged_kwh += discharge_wh / 1000.0;
            }
            if dt <= 0.0 {
                // Time went backwards or stood still: keep the old anchor.
                return;
            }
        }
        self.last = Some((t_s, power_w));
    }

    /// Forget the last sample (the link dropped).
    pub fn break_chain(&mut self) {
        self.last = None;
    }
}

/// Wh charged (positive power) and discharged (negative) over `dt` seconds
/// of linear change from `p0` to `p1`.
fn split_trapezoid(p0: f64, p1: f64, dt: f64) -> (f64, f64) {
    let hours = dt / 3600.0;
    if (p0 >= 0.0) == (p1 >= 0.0) {
        let e = (p0 + p1) / 2.0 * hours;
        return if e >= 0.0 { (e, 0.0) } else { (0.0, -e) };
    }
    // Zero crossing at fraction f of the interval.
    let f = p0 / (p0 - p1);
    let first = p0 / 2.0 * hours * f;
    let second = p1 / 2.0 * hours * (1.0 - f);
    let (mut c, mut d) = (0.0, 0.0);
    for e in [first, second] {
        if e >= 0.0 {
            c += e;
        } else {
            d -= e;
        }
    }
    (c, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn constant_power_for_an_hour() {
        let mut i = Integrator::new(EnergyCounters::default(), 10.0);
        for s in 0..=3600 {
            i.add(s as f64, 1000.0);
        }
        assert!(close(i.counters.charged_kwh, 1.0), "{:?}", i.counters);
        assert_eq!(i.counters.discharged_kwh, 0.0);
    }

    #[test]
    fn charging_and_discharging_are_kept_apart() {
        let mut i = Integrator::new(EnergyCounters::default(), 10.0);
        // +1000 W to -1000 W over 2 s: a triangle of 1000 W x 1 s each way.
        i.add(0.0, 1000.0);
        i.add(2.0, -1000.0);
        let each = 1000.0 / 2.0 * (1.0 / 3600.0) / 1000.0;
        assert!(close(i.counters.charged_kwh, each));
        assert!(close(i.counters.discharged_kwh, each));
    }

    #[test]
    fn gaps_and_bad_samples_are_not_integrated() {
        let mut i = Integrator::new(EnergyCounters::default(), 10.0);
        i.add(0.0, 500.0);
        i.add(100.0, 500.0); // 100 s gap: link was down
        assert_eq!(i.counters.charged_kwh, 0.0);
        i.add(101.0, f64::NAN);
        i.add(100.5, 500.0); // backwards
        i.add(102.0, 500.0);
        assert!(close(i.counters.charged_kwh, 500.0 * 2.0 / 3600.0 / 1000.0));
        i.break_chain();
        i.add(103.0, 500.0);
        assert!(close(i.counters.charged_kwh, 500.0 * 2.0 / 3600.0 / 1000.0));
    }

    #[test]
    fn counters_start_from_the_persisted_values() {
        let mut i = Integrator::new(
            EnergyCounters {
                charged_kwh: 12.5,
                discharged_kwh: 3.0,
            },
            10.0,
        );
        i.add(0.0, -3600.0);
        i.add(1.0, -3600.0);
        assert!(close(i.counters.discharged_kwh, 3.001));
        assert_eq!(i.counters.charged_kwh, 12.5);
    }
}
