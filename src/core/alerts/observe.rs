//! Observing: one rule's view of one device at one moment (`Obs`), in
//! raise, hold, clear or unknown `Zone`.

use super::defaults::Check;
use super::rules::{RuleInfo, tidy};
use super::{Direction, Inputs};
use crate::model::{PackReading, Reading};

/// Charge current at or below this counts as "no charge current": BMS
/// current sensors read a few hundred mA of noise at rest.
const NO_CHARGE_A: f64 = 0.5;
/// A no-charging alert clears once this much charge current flows; the gap
/// to [`NO_CHARGE_A`] is the current's hysteresis.
pub(super) const CHARGING_AGAIN_A: f64 = 1.0;
/// Battery temperature sensors. `temperature_3` mirrors the MOSFET sensor
/// on JK02_32S (publish.rs), and the MOSFET has its own protection in the
/// BMS (reported through the alarm bits), so neither counts as the cells'
/// temperature.
const BATTERY_TEMPS: [u8; 4] = [1, 2, 4, 5];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Zone {
    /// Missing value or device offline: keep the state.
    #[default]
    Unknown,
    Raise,
    /// Between the raise and the clear threshold.
    Hold,
    Clear,
}

/// One rule's view of one device at one moment.
#[derive(Debug, Default)]
pub(super) struct Obs {
    pub(super) zone: Zone,
    pub(super) value: Option<f64>,
    pub(super) threshold: Option<f64>,
    pub(super) clear: Option<f64>,
    pub(super) what: &'static str,
    /// Which cell or sensor, e.g. " (cell 5)".
    pub(super) detail: String,
    /// The battery current, for the rules that combine it with a value.
    pub(super) current: Option<f64>,
    /// Alarm or fault names; for unreachable, set when never heard from.
    pub(super) text: Option<String>,
    /// Series cells, for the pack-voltage messages.
    pub(super) cells: Option<u64>,
}

impl Obs {
    fn flag(on: bool) -> Self {
        Self {
            zone: if on { Zone::Raise } else { Zone::Clear },
            ..Self::default()
        }
    }
}

pub(super) struct Target<'a> {
    pub(super) id: &'a str,
    pub(super) name: &'a str,
    online: Option<bool>,
    reading: Option<&'a Reading>,
    failsafe: bool,
}

impl Target<'_> {
    fn pack(&self) -> Option<&PackReading> {
        self.reading?.pack()
    }
}

pub(super) fn targets<'a>(check: Check, inputs: &Inputs<'a>) -> Vec<Target<'a>> {
    let mut out: Vec<Target<'a>> = inputs
        .devices
        .iter()
        .filter(|d| check.applies_to(d.kind))
        .map(|d| Target {
            id: d.id,
            name: d.name,
            online: d.online,
            reading: d.reading,
            failsafe: inputs.balancer_failsafe.contains(&d.id),
        })
        .collect();
    if check == Check::BalancerFailsafe {
        // A failsafe balancer whose inverter is not among the devices
        // still raises, named by its id.
        for id in &inputs.balancer_failsafe {
            if !out.iter().any(|t| t.id == *id) {
                out.push(Target {
                    id,
                    name: id,
                    online: None,
                    reading: None,
                    failsafe: true,
                });
            }
        }
    }
    out
}

/// A pack's value, when it is there and finite.
fn pack_value(p: Option<&PackReading>, get: impl Fn(&PackReading) -> Option<f64>) -> Option<f64> {
    p.and_then(get).filter(|v| v.is_finite())
}

fn zone(direction: Direction, v: f64, threshold: f64, clear: f64) -> Zone {
    match direction {
        Direction::Above if v > threshold => Zone::Raise,
        Direction::Above if v <= clear => Zone::Clear,
        Direction::Below if v < threshold => Zone::Raise,
        Direction::Below if v >= clear => Zone::Clear,
        _ => Zone::Hold,
    }
}

fn numeric(rule: &RuleInfo, value: Option<f64>, what: &'static str, detail: String) -> Obs {
    let mut o = Obs {
        value,
        threshold: rule.threshold,
        clear: rule.clear,
        what,
        detail,
        ..Obs::default()
    };
    if let (Some(v), Some(t), Some(c), Some(dir)) =
        (value, rule.threshold, rule.clear, rule.direction)
    {
        o.zone = zone(dir, v, t, c);
    }
    o
}

/// The highest (or lowest) battery temperature and its sensor.
fn battery_temperature(p: Option<&PackReading>, highest: bool) -> Option<(f64, u8)> {
    p?.temperatures_c
        .iter()
        .filter(|(n, t)| BATTERY_TEMPS.contains(n) && t.is_finite())
        .map(|&(n, t)| (t, n))
        .reduce(|a, b| {
            let b_wins = if highest { b.0 > a.0 } else { b.0 < a.0 };
            if b_wins { b } else { a }
        })
}

/// The highest non-zero wire resistance and its cell: zero means "not
/// measured" on JK firmware that does not report it. A tie goes to the
/// lower cell.
fn wire_resistance(p: Option<&PackReading>) -> Option<(f64, u8)> {
    p?.cells
        .iter()
        .filter(|c| c.resistance_mohm.is_finite() && c.resistance_mohm > 0.0)
        .map(|c| (c.resistance_mohm, c.number))
        .reduce(|a, b| {
            if b.0 > a.0 || (b.0 == a.0 && b.1 < a.1) {
                b
            } else {
                a
            }
        })
}

fn cell_detail(cell: Option<u64>) -> String {
    cell.map(|n| format!(" (cell {n})")).unwrap_or_default()
}

pub(super) fn observe(rule: &RuleInfo, t: &Target) -> Obs {
    let p = t.pack();
    let value = |get: fn(&PackReading) -> Option<f64>| pack_value(p, get);
    match rule.check {
        Check::Unreachable => Obs {
            text: t.online.is_none().then(String::new),
            ..Obs::flag(t.online != Some(true))
        },
        Check::BalancerFailsafe => Obs::flag(t.failsafe),
        // The last readings of an offline device are stale: they must
        // neither raise nor clear anything; device_unreachable covers it.
        _ if t.online == Some(false) => Obs::default(),
        Check::Soc => numeric(rule, value(|p| p.soc_pct), "SOC", String::new()),
        Check::Soh => numeric(rule, value(|p| p.soh_pct), "SOH", String::new()),
        Check::CellDelta => numeric(
            rule,
            value(|p| p.cell_delta_voltage_v),
            "cell delta",
            String::new(),
        ),
        Check::CellMin => numeric(
            rule,
            value(|p| p.cell_min_voltage_v),
            "lowest cell",
            cell_detail(p.and_then(|p| p.cell_min_number)),
        ),
        Check::CellMax => numeric(
            rule,
            value(|p| p.cell_max_voltage_v),
            "highest cell",
            cell_detail(p.and_then(|p| p.cell_max_number)),
        ),
        Check::CellAverage => numeric(
            rule,
            value(|p| p.cell_average_voltage_v),
            "average cell voltage",
            String::new(),
        ),
        Check::TempHigh => {
            let t = battery_temperature(p, true);
            numeric(
                rule,
                t.map(|t| t.0),
                "temperature",
                t.map(|t| format!(" (sensor {})", t.1)).unwrap_or_default(),
            )
        }
        Check::ChargeCurrent => numeric(
            rule,
            value(|p| p.current_a),
            "charge current",
            String::new(),
        ),
        Check::DischargeCurrent => numeric(
            rule,
            value(|p| p.current_a).map(|i| -i),
            "discharge current",
            String::new(),
        ),
        Check::WireResistance => {
            let w = wire_resistance(p);
            numeric(
                rule,
                w.map(|w| w.0),
                "wire resistance",
                w.map(|w| format!(" (cell {})", w.1)).unwrap_or_default(),
            )
        }
        Check::PackHigh | Check::PackLow => pack(rule, p),
        Check::NoCharging => no_charging(rule, p),
        Check::TempLowCharging => cold_charging(rule, p),
        Check::BmsAlarm => match p.and_then(|p| p.problem) {
            Some(problem) => Obs {
                text: p.and_then(|p| p.alarms.clone()),
                ..Obs::flag(problem)
            },
            None => Obs::default(),
        },
        Check::Emergency => match value(|p| p.emergency_countdown_s) {
            Some(v) => Obs {
                value: Some(v),
                ..Obs::flag(v > 0.0)
            },
            None => Obs::default(),
        },
        Check::InverterFault => match t.reading.and_then(Reading::inverter) {
            Some(i) => {
                let f = i.faults.trim();
                Obs {
                    text: Some(f.to_owned()),
                    ..Obs::flag(!f.is_empty() && f != "none")
                }
            }
            None => Obs::default(),
        },
    }
}

fn pack(rule: &RuleInfo, p: Option<&PackReading>) -> Obs {
    let cells = p.map(|p| p.cell_count).filter(|n| *n > 0);
    let mut o = numeric(
        rule,
        pack_value(p, |p| p.voltage_v),
        "pack voltage",
        String::new(),
    );
    // Without the series count the per-cell limit means nothing.
    let (Some(n), Some(t), Some(c)) = (cells, rule.threshold, rule.clear) else {
        o.zone = Zone::Unknown;
        return o;
    };
    // Lossless: a pack has at most a few hundred cells.
    let nf = n as f64;
    o.threshold = Some(tidy(t * nf));
    o.clear = Some(tidy(c * nf));
    o.cells = Some(n);
    if let (Some(v), Some(t), Some(c), Some(dir)) = (o.value, o.threshold, o.clear, rule.direction)
    {
        o.zone = zone(dir, v, t, c);
    }
    o
}

/// Low SOC while no charge current flows. The original used the charge
/// MOSFET bit, which only says charging is allowed, not that a source is
/// there. Raises when SOC < threshold and current ≤ 0.5 A; clears when
/// SOC ≥ clear or at least 1 A flows; a missing value only matters when
/// the other one does not decide.
fn no_charging(rule: &RuleInfo, p: Option<&PackReading>) -> Obs {
    let mut o = numeric(rule, pack_value(p, |p| p.soc_pct), "SOC", String::new());
    let soc_zone = o.zone;
    o.current = pack_value(p, |p| p.current_a);
    o.zone = match (soc_zone, o.current) {
        (_, Some(i)) if i >= CHARGING_AGAIN_A => Zone::Clear,
        (Zone::Clear, _) => Zone::Clear,
        (Zone::Unknown, _) | (_, None) => Zone::Unknown,
        (Zone::Raise, Some(i)) if i <= NO_CHARGE_A => Zone::Raise,
        _ => Zone::Hold,
    };
    o
}

/// Charging while the coldest battery sensor is below the threshold.
/// Clears when the temperature is back above clear or charging stops.
fn cold_charging(rule: &RuleInfo, p: Option<&PackReading>) -> Obs {
    let t = battery_temperature(p, false);
    let mut o = numeric(
        rule,
        t.map(|t| t.0),
        "temperature",
        t.map(|t| format!(" (sensor {})", t.1)).unwrap_or_default(),
    );
    let temp_zone = o.zone;
    o.current = pack_value(p, |p| p.current_a);
    o.zone = match (temp_zone, o.current) {
        (_, Some(i)) if i <= 0.0 => Zone::Clear,
        (Zone::Clear, _) => Zone::Clear,
        (Zone::Unknown, _) | (_, None) => Zone::Unknown,
        (Zone::Raise, Some(i)) if i > NO_CHARGE_A => Zone::Raise,
        _ => Zone::Hold,
    };
    o
}
