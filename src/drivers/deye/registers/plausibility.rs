//! The plausibility filter that drops corrupted polls whole.

use thiserror::Error;

use super::Sample;

/// Why a sample was dropped.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum Implausible {
    #[error("{field} = {value} W is beyond the plausible {limit} W")]
    Power {
        field: &'static str,
        value: f64,
        limit: f64,
    },
    #[error("battery_soc = {0} % is above 100 %")]
    Soc(f64),
    #[error("{field} went down from {previous} to {value} kWh")]
    CounterDecreased {
        field: &'static str,
        previous: f64,
        value: f64,
    },
    #[error("{field} jumped from {previous} to {value} kWh")]
    CounterJumped {
        field: &'static str,
        previous: f64,
        value: f64,
    },
    #[error("rated power {0} W cannot bound anything; configure it")]
    Rating(f64),
}

/// Bounds for dropping corrupted polls whole (CRC-valid nonsense happens:
/// ha-solarman #471, #581, #822). Only the inverter output is bounded by the
/// rating; everything else gets a physical bound well above it, because a
/// false rejection loses data while these only need to catch garbage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plausibility {
    pub rated_power_w: f64,
    /// |175| ≤ 1.1 × rated: the inverter cannot deliver more (ha-solarman's
    /// own filter).
    pub inverter_limit_w: f64,
    /// PV per string (186/187) and battery (190) ≤ 2 × rated: DC inputs are
    /// oversized at most ~1.3× and the battery current limit (~120–135 A at
    /// ~55 V) lands just above the rating.
    pub dc_limit_w: f64,
    /// Inverter terminals (166, 167, LOAD port) ≤ 4 × rated: on-grid the
    /// pass-through relay carries more than the rating, but its current
    /// limit is well under 4×.
    pub terminal_limit_w: f64,
    /// Meter-side figures (169, 172, 178) ≤ 4 × rated + 10 kW: in CT mode
    /// they include the whole house, bounded only by the supply fuse.
    pub site_limit_w: f64,
    /// A lifetime counter moving more than this between two polls is
    /// corruption (ha-solarman uses the same 100 kWh).
    pub max_counter_step_kwh: f64,
}

impl Plausibility {
    pub fn new(rated_power_w: f64) -> Self {
        Self {
            rated_power_w,
            inverter_limit_w: 1.1 * rated_power_w,
            dc_limit_w: 2.0 * rated_power_w,
            terminal_limit_w: 4.0 * rated_power_w,
            site_limit_w: 4.0 * rated_power_w + 10_000.0,
            max_counter_step_kwh: 100.0,
        }
    }

    /// Checks `sample` against the bounds and against `previous`, the last
    /// accepted sample. Daily counters are not compared: they reset to 0 at
    /// the inverter's midnight. After a long outage a real 100 kWh step is
    /// possible; pass `None` then rather than reject forever.
    pub fn check(&self, sample: &Sample, previous: Option<&Sample>) -> Result<(), Implausible> {
        if !(self.rated_power_w.is_finite() && self.rated_power_w > 0.0) {
            return Err(Implausible::Rating(self.rated_power_w));
        }
        let powers = [
            (
                "inverter_power",
                sample.inverter_power_w,
                self.inverter_limit_w,
            ),
            ("battery_power", sample.battery_power_w, self.dc_limit_w),
            (
                "gen_port_power",
                sample.gen_port_power_w,
                self.terminal_limit_w,
            ),
            (
                "grid_port_power",
                sample.grid_port_power_w,
                self.terminal_limit_w,
            ),
            (
                "load_port_power",
                sample.load_port_power_w,
                self.terminal_limit_w,
            ),
            ("grid_power", sample.grid_power_w, self.site_limit_w),
            (
                "external_ct_power",
                sample.external_ct_power_w,
                self.site_limit_w,
            ),
            ("load_power", sample.load_power_w, self.site_limit_w),
        ];
        for (field, value, limit) in powers {
            if value.is_nan() || value.abs() > limit {
                return Err(Implausible::Power {
                    field,
                    value,
                    limit,
                });
            }
        }
        for &value in &sample.pv_string_power_w {
            if value.is_nan() || value.abs() > self.dc_limit_w {
                return Err(Implausible::Power {
                    field: "pv_string_power",
                    value,
                    limit: self.dc_limit_w,
                });
            }
        }
        if sample.battery_soc.is_nan() || sample.battery_soc > 100.0 {
            return Err(Implausible::Soc(sample.battery_soc));
        }
        let Some(previous) = previous else {
            return Ok(());
        };
        for &(field, value) in &sample.totals {
            let Some(&(_, before)) = previous.totals.iter().find(|(k, _)| *k == field) else {
                continue;
            };
            if value < before {
                return Err(Implausible::CounterDecreased {
                    field,
                    previous: before,
                    value,
                });
            }
            if value - before > self.max_counter_step_kwh {
                return Err(Implausible::CounterJumped {
                    field,
                    previous: before,
                    value,
                });
            }
        }
        Ok(())
    }
}

/// [`Plausibility::check`] with the default bounds for `rated_power_w`.
pub fn check(
    sample: &Sample,
    previous: Option<&Sample>,
    rated_power_w: f64,
) -> Result<(), Implausible> {
    Plausibility::new(rated_power_w).check(sample, previous)
}
