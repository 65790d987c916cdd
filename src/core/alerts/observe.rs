//! Observing: one rule's view of one device at one moment (`Obs`), in
//! raise, hold, clear or unknown `Zone`.

use super::defaults::Check;
use super::rules::{RuleInfo, tidy};
use super::{DeviceInput, Direction, Inputs};
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
pub(super) struct Obs<'a> {
    pub(super) zone: Zone,
    pub(super) value: Option<f64>,
    pub(super) threshold: Option<f64>,
    pub(super) clear: Option<f64>,
    pub(super) what: &'static str,
    /// Which cell or sensor, e.g. " (cell 5)".
    pub(super) detail: Detail,
    /// The battery current, for the rules that combine it with a value.
    pub(super) current: Option<f64>,
    /// Alarm or fault names; for unreachable, set when never heard from.
    /// Borrowed from the reading: the rules look at every device every
    /// second and allocate nothing unless a message is written.
    pub(super) text: Option<&'a str>,
    /// Series cells, for the pack-voltage messages.
    pub(super) cells: Option<u64>,
}

impl Obs<'_> {
    fn flag(on: bool) -> Self {
        Self {
            zone: if on { Zone::Raise } else { Zone::Clear },
            ..Self::default()
        }
    }
}

/// Which cell or sensor a value is of, written into messages as
/// " (cell 5)" or " (sensor 2)", and as nothing when there is none.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum Detail {
    #[default]
    None,
    Cell(u64),
    Sensor(u8),
}

impl std::fmt::Display for Detail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => Ok(()),
            Self::Cell(n) => write!(f, " (cell {n})"),
            Self::Sensor(n) => write!(f, " (sensor {n})"),
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

impl<'a> Target<'a> {
    fn pack(&self) -> Option<&'a PackReading> {
        self.reading?.pack()
    }
}

pub(super) fn targets<'a, 'b>(
    check: Check,
    inputs: &'b Inputs<'a>,
) -> impl Iterator<Item = Target<'a>> + 'b {
    let applies = move |d: &&DeviceInput<'a>| check.applies_to(d.kind);
    let devices = inputs.devices.iter().filter(applies).map(|d| Target {
        id: d.id,
        name: d.name,
        online: d.online,
        reading: d.reading,
        failsafe: inputs.balancer_failsafe.contains(&d.id),
    });
    // A failsafe balancer whose inverter is not among the devices still
    // raises, named by its id.
    let orphans = inputs
        .balancer_failsafe
        .iter()
        .filter(move |id| {
            check == Check::BalancerFailsafe
                && !inputs.devices.iter().filter(applies).any(|d| d.id == **id)
        })
        .map(|id| Target {
            id,
            name: id,
            online: None,
            reading: None,
            failsafe: true,
        });
    // An iterator, not a Vec: this runs for every rule every second.
    devices.chain(orphans)
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

fn numeric<'a>(rule: &RuleInfo, value: Option<f64>, what: &'static str, detail: Detail) -> Obs<'a> {
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

fn cell_detail(cell: Option<u64>) -> Detail {
    cell.map_or(Detail::None, Detail::Cell)
}

pub(super) fn observe<'a>(rule: &RuleInfo, t: &Target<'a>) -> Obs<'a> {
    let p = t.pack();
    let value = |get: fn(&PackReading) -> Option<f64>| pack_value(p, get);
    match rule.check {
        Check::Unreachable => Obs {
            text: t.online.is_none().then_some(""),
            ..Obs::flag(t.online != Some(true))
        },
        Check::BalancerFailsafe => Obs::flag(t.failsafe),
        // The last readings of an offline device are stale: they must
        // neither raise nor clear anything; device_unreachable covers it.
        _ if t.online == Some(false) => Obs::default(),
        Check::Soc => numeric(rule, value(|p| p.soc_pct), "SOC", Detail::None),
        Check::Soh => numeric(rule, value(|p| p.soh_pct), "SOH", Detail::None),
        Check::CellDelta => numeric(
            rule,
            value(|p| p.cell_delta_voltage_v),
            "cell delta",
            Detail::None,
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
            Detail::None,
        ),
        Check::TempHigh => {
            let t = battery_temperature(p, true);
            numeric(
                rule,
                t.map(|t| t.0),
                "temperature",
                t.map_or(Detail::None, |t| Detail::Sensor(t.1)),
            )
        }
        Check::ChargeCurrent => {
            numeric(rule, value(|p| p.current_a), "charge current", Detail::None)
        }
        Check::DischargeCurrent => numeric(
            rule,
            value(|p| p.current_a).map(|i| -i),
            "discharge current",
            Detail::None,
        ),
        Check::WireResistance => {
            let w = wire_resistance(p);
            numeric(
                rule,
                w.map(|w| w.0),
                "wire resistance",
                w.map_or(Detail::None, |w| Detail::Cell(u64::from(w.1))),
            )
        }
        Check::PackHigh | Check::PackLow => pack(rule, p),
        Check::NoCharging => no_charging(rule, p),
        Check::TempLowCharging => cold_charging(rule, p),
        Check::BmsAlarm => match p.and_then(|p| p.problem) {
            Some(problem) => Obs {
                text: p.and_then(|p| p.alarms.as_deref()),
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
                    text: Some(f),
                    ..Obs::flag(!f.is_empty() && f != "none")
                }
            }
            None => Obs::default(),
        },
    }
}

fn pack<'a>(rule: &RuleInfo, p: Option<&PackReading>) -> Obs<'a> {
    let cells = p.map(|p| p.cell_count).filter(|n| *n > 0);
    let mut o = numeric(
        rule,
        pack_value(p, |p| p.voltage_v),
        "pack voltage",
        Detail::None,
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
fn no_charging<'a>(rule: &RuleInfo, p: Option<&PackReading>) -> Obs<'a> {
    let mut o = numeric(rule, pack_value(p, |p| p.soc_pct), "SOC", Detail::None);
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
fn cold_charging<'a>(rule: &RuleInfo, p: Option<&PackReading>) -> Obs<'a> {
    let t = battery_temperature(p, false);
    let mut o = numeric(
        rule,
        t.map(|t| t.0),
        "temperature",
        t.map_or(Detail::None, |t| Detail::Sensor(t.1)),
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
