//! Alert rules about the batteries, the inverters, the plugs and the
//! balancer: which alerts are active, and which raise and clear events to
//! publish.
//!
//! Pure: [`evaluate`] maps (inputs, rules, state, now) to events, the
//! active list and the next state. The caller reads the clock, publishes
//! `<base>/alerts` (the active list, retained) when [`Outcome::changed`] is
//! set and every event on `<base>/alerts/event`.
//!
//! Each rule is evaluated on its own for each device it applies to, so one
//! active alert never hides another (the original app aborted a whole
//! evaluation on the first suppressed duplicate). Per (rule, device):
//!
//! * **Raise** when the raise condition (value beyond `threshold`) has held
//!   continuously for the rule's minimum duration (`for`), and the start-up
//!   grace is over. Time spent in the condition during the grace counts, so
//!   a real condition raises as soon as the grace ends.
//! * **Clear** when the clear condition (value back past the clear
//!   threshold, `threshold ∓ hysteresis`) has held for [`clear_after`]
//!   (the rule's `for`, at most 30 s): a value oscillating around the
//!   threshold neither clears nor re-raises.
//! * **Unknown** (key missing, device offline) neither raises nor clears
//!   and keeps every timer as it was: the rule keeps its state.
//! * **Repeat window**: while an alert stays active, a reminder raise event
//!   (`repeat: true`) is emitted each `repeat_after` after the last
//!   notification. An alert that clears and raises again within the window
//!   of its last notification is active again, but its raise event has
//!   `notify: false`, so push notifications can skip a flapping condition
//!   while Home Assistant still sees the state. Clear events are always
//!   emitted for alerts that were raised.
//!
//! [`clear_after`]: RuleInfo::clear_after

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{AlertsConfig, BatteryChemistry, RuleOverride};
use crate::core::balancer::Timestamp;
use crate::model::{DeviceKind, PackReading, Reading};

/// Charge current at or below this counts as "no charge current": BMS
/// current sensors read a few hundred mA of noise at rest.
const NO_CHARGE_A: f64 = 0.5;
/// A no-charging alert clears once this much charge current flows; the gap
/// to [`NO_CHARGE_A`] is the current's hysteresis.
const CHARGING_AGAIN_A: f64 = 1.0;
/// A clear condition must hold this long at most (the rule's `for` when
/// shorter): long enough to ride out one odd reading, short enough that a
/// recovered value clears promptly.
const MAX_CLEAR_HOLD: Duration = Duration::from_secs(30);
/// Battery temperature sensors. `temperature_3` mirrors the MOSFET sensor
/// on JK02_32S (publish.rs), and the MOSFET has its own protection in the
/// BMS (reported through the alarm bits), so neither counts as the cells'
/// temperature.
const BATTERY_TEMPS: [u8; 4] = [1, 2, 4, 5];

/// Alert families, in display order: one Home Assistant problem sensor each.
pub const FAMILIES: &[&str] = &[
    "soc",
    "no_charging",
    "cell_delta",
    "cell_voltage",
    "temperature",
    "current",
    "soh",
    "wire_resistance",
    "pack_voltage",
    "bms_alarm",
    "emergency",
    "unreachable",
    "inverter_fault",
    "balancer_failsafe",
];

/// A family's human name, for entity names.
pub fn family_name(family: &str) -> Option<&'static str> {
    Some(match family {
        "soc" => "Battery low",
        "no_charging" => "Not charging",
        "cell_delta" => "Cell imbalance",
        "cell_voltage" => "Cell voltage",
        "temperature" => "Battery temperature",
        "current" => "Battery current",
        "soh" => "Battery health",
        "wire_resistance" => "Wire resistance",
        "pack_voltage" => "Pack voltage",
        "bms_alarm" => "BMS alarm",
        "emergency" => "BMS emergency mode",
        "unreachable" => "Device unreachable",
        "inverter_fault" => "Inverter fault",
        "balancer_failsafe" => "Balancer failsafe",
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Warning,
    Error,
    Critical,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warning => "warning",
            Self::Error => "error",
            Self::Critical => "critical",
        }
    }
}

/// Which side of the threshold raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Above,
    Below,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Raise,
    Clear,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum AlertError {
    #[error("unknown alert rule `{0}`")]
    UnknownRule(String),
    #[error("the alert rule `{0}` has no threshold")]
    NoThreshold(String),
    #[error("{value} is not a finite number")]
    NotFinite { rule: String, value: f64 },
    #[error("{value} is outside {min} to {max} {unit}")]
    OutOfRange {
        rule: String,
        value: f64,
        min: f64,
        max: f64,
        unit: &'static str,
    },
}

// ------------------------------------------------------------ inputs

/// What the engine knows about one configured device.
#[derive(Debug, Clone)]
pub struct DeviceInput<'a> {
    pub id: &'a str,
    /// Human name, for messages.
    pub name: &'a str,
    pub kind: DeviceKind,
    /// `None`: the driver has said nothing yet.
    pub online: Option<bool>,
    /// The latest report; `None` before the first.
    pub reading: Option<&'a Reading>,
}

#[derive(Debug, Clone, Default)]
pub struct Inputs<'a> {
    pub devices: Vec<DeviceInput<'a>>,
    /// Inverter ids whose overload balancer is in failsafe (no inverter
    /// data, plugs shed).
    pub balancer_failsafe: Vec<&'a str>,
}

// ------------------------------------------------------------ outputs

/// One raise or clear: the payload of `<base>/alerts/event`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertEvent {
    pub kind: EventKind,
    pub rule: String,
    pub family: String,
    pub level: Level,
    pub device: String,
    pub device_name: String,
    pub value: Option<f64>,
    /// The raise threshold on a raise, the clear threshold on a clear.
    pub threshold: Option<f64>,
    pub message: String,
    pub at: Timestamp,
    /// A reminder for an alert that has stayed active.
    pub repeat: bool,
    /// False for a raise within the repeat window of the last notification.
    pub notify: bool,
}

/// One entry of the retained `<base>/alerts` list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActiveAlert {
    pub rule: String,
    pub family: String,
    pub level: Level,
    pub device: String,
    pub device_name: String,
    /// As of the last raise or reminder.
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    pub message: String,
    /// When it was raised.
    pub since: Timestamp,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub events: Vec<AlertEvent>,
    /// Sorted by level (critical first), then by `since`.
    pub active: Vec<ActiveAlert>,
    pub state: AlertState,
    /// The active list differs from the previous call's: an alert was
    /// raised or cleared, or a reminder refreshed its value and message.
    pub changed: bool,
}

// ------------------------------------------------------------ state

/// Everything the engine remembers between calls. Serializable so that a
/// caller may keep it across restarts; the start time is not kept, so the
/// start-up grace always applies after a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertState {
    #[serde(skip)]
    started: Option<Timestamp>,
    /// rule id → device id → slot.
    slots: BTreeMap<String, BTreeMap<String, Slot>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Slot {
    /// Since when the raise condition has held (not yet raised).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending: Option<Timestamp>,
    /// Since when the clear condition has held (raised).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    clearing: Option<Timestamp>,
    /// The last raise event with `notify: true`, reminders included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_notified: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    active: Option<Raised>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Raised {
    since: Timestamp,
    /// When the condition began, for "unreachable for 2 h" reminders.
    condition_since: Timestamp,
    level: Level,
    device_name: String,
    value: Option<f64>,
    threshold: Option<f64>,
    message: String,
}

impl AlertState {
    pub fn new() -> Self {
        Self::default()
    }

    /// The first `now` the engine saw.
    pub fn started(&self) -> Option<Timestamp> {
        self.started
    }

    pub fn is_active(&self, rule: &str, device: &str) -> bool {
        self.slots
            .get(rule)
            .and_then(|s| s.get(device))
            .is_some_and(|s| s.active.is_some())
    }

    /// The active list, sorted as in [`Outcome::active`].
    pub fn active(&self) -> Vec<ActiveAlert> {
        let mut out: Vec<ActiveAlert> = self
            .slots
            .iter()
            .flat_map(|(rule, devices)| {
                devices.iter().filter_map(move |(device, slot)| {
                    let a = slot.active.as_ref()?;
                    Some(ActiveAlert {
                        rule: rule.clone(),
                        family: def(rule).map_or("", |d| d.family).to_owned(),
                        level: a.level,
                        device: device.clone(),
                        device_name: a.device_name.clone(),
                        value: a.value,
                        threshold: a.threshold,
                        message: a.message.clone(),
                        since: a.since,
                    })
                })
            })
            .collect();
        out.sort_by(|a, b| {
            b.level
                .cmp(&a.level)
                .then(a.since.cmp(&b.since))
                .then_with(|| a.rule.cmp(&b.rule))
                .then_with(|| a.device.cmp(&b.device))
        });
        out
    }
}

// ------------------------------------------------------------ the rules

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Soc,
    NoCharging,
    CellDelta,
    CellMin,
    CellMax,
    CellAverage,
    TempHigh,
    TempLowCharging,
    ChargeCurrent,
    DischargeCurrent,
    Soh,
    WireResistance,
    PackHigh,
    PackLow,
    BmsAlarm,
    Emergency,
    Unreachable,
    InverterFault,
    BalancerFailsafe,
}

impl Check {
    fn applies_to(self, kind: DeviceKind) -> bool {
        match self {
            Self::Unreachable => true,
            Self::InverterFault | Self::BalancerFailsafe => kind == DeviceKind::Inverter,
            _ => kind == DeviceKind::Bms,
        }
    }

    fn direction(self) -> Option<Direction> {
        match self {
            Self::Soc
            | Self::NoCharging
            | Self::CellMin
            | Self::CellAverage
            | Self::TempLowCharging
            | Self::Soh
            | Self::PackLow => Some(Direction::Below),
            Self::CellDelta
            | Self::CellMax
            | Self::TempHigh
            | Self::ChargeCurrent
            | Self::DischargeCurrent
            | Self::WireResistance
            | Self::PackHigh => Some(Direction::Above),
            Self::BmsAlarm
            | Self::Emergency
            | Self::Unreachable
            | Self::InverterFault
            | Self::BalancerFailsafe => None,
        }
    }
}

/// A rule's defaults.
struct Def {
    id: &'static str,
    family: &'static str,
    name: &'static str,
    check: Check,
    level: Level,
    /// (LiFePO4, NMC); `None` for conditions without a threshold.
    threshold: Option<(f64, f64)>,
    hysteresis: f64,
    for_secs: u64,
    unit: &'static str,
    /// Decimals of values and thresholds in messages.
    decimals: usize,
    /// Allowed thresholds and the step of a Home Assistant number entity.
    range: (f64, f64, f64),
}

const fn both(v: f64) -> Option<(f64, f64)> {
    Some((v, v))
}

const PERCENT: (f64, f64, f64) = (1.0, 99.0, 1.0);
const CELL_V: (f64, f64, f64) = (2.0, 4.5, 0.01);
const AMPS: (f64, f64, f64) = (1.0, 1000.0, 1.0);
const NO_RANGE: (f64, f64, f64) = (0.0, 0.0, 0.0);

// Cell-voltage presets. LiFePO4 cells (e.g. EVE LF280K, CATL 280 Ah
// datasheets) charge to 3.65 V and cut off at 2.5 V; the discharge curve
// falls off its ~3.2–3.3 V plateau below ~3.0 V, so an average of 3.0 V
// means the pack is nearly empty and a single cell at 2.9 V is close to
// the knee. NMC cells charge to 4.2 V, cut off at 2.75–3.0 V, and sit near
// 3.3–3.4 V at ~10 % SOC. Pack limits are per cell × cell_count so that any
// series count works: 16S LFP charges at up to 56.8–58.4 V, which the
// original's fixed 55 V "critical" flagged every day. The delta and every
// other number are the original app's (docs/ALERTS.md lists them).
const DEFS: &[Def] = &[
    Def {
        id: "soc_critical",
        family: "soc",
        name: "SOC critical",
        check: Check::Soc,
        level: Level::Critical,
        threshold: both(10.0),
        hysteresis: 2.0,
        for_secs: 60,
        unit: "%",
        decimals: 0,
        range: PERCENT,
    },
    Def {
        id: "soc_low",
        family: "soc",
        name: "SOC low",
        check: Check::Soc,
        level: Level::Error,
        threshold: both(20.0),
        hysteresis: 2.0,
        for_secs: 60,
        unit: "%",
        decimals: 0,
        range: PERCENT,
    },
    Def {
        id: "no_charging",
        family: "no_charging",
        name: "Low SOC, not charging",
        check: Check::NoCharging,
        level: Level::Warning,
        threshold: both(30.0),
        hysteresis: 2.0,
        for_secs: 600,
        unit: "%",
        decimals: 0,
        range: PERCENT,
    },
    Def {
        id: "cell_delta_error",
        family: "cell_delta",
        name: "Cell imbalance",
        check: Check::CellDelta,
        level: Level::Error,
        threshold: both(0.05),
        hysteresis: 0.01,
        for_secs: 60,
        unit: "V",
        decimals: 3,
        range: (0.01, 1.0, 0.005),
    },
    Def {
        id: "cell_delta_critical",
        family: "cell_delta",
        name: "Cell imbalance critical",
        check: Check::CellDelta,
        level: Level::Critical,
        threshold: both(0.1),
        hysteresis: 0.01,
        for_secs: 60,
        unit: "V",
        decimals: 3,
        range: (0.01, 1.0, 0.005),
    },
    Def {
        id: "cell_min_low",
        family: "cell_voltage",
        name: "Lowest cell voltage low",
        check: Check::CellMin,
        level: Level::Critical,
        threshold: Some((2.9, 3.0)),
        hysteresis: 0.05,
        for_secs: 30,
        unit: "V",
        decimals: 3,
        range: CELL_V,
    },
    Def {
        id: "cell_average_low",
        family: "cell_voltage",
        name: "Average cell voltage low",
        check: Check::CellAverage,
        level: Level::Error,
        threshold: Some((3.0, 3.3)),
        hysteresis: 0.05,
        for_secs: 60,
        unit: "V",
        decimals: 3,
        range: CELL_V,
    },
    Def {
        id: "cell_max_high",
        family: "cell_voltage",
        name: "Highest cell voltage high",
        check: Check::CellMax,
        level: Level::Error,
        threshold: Some((3.65, 4.2)),
        hysteresis: 0.05,
        for_secs: 30,
        unit: "V",
        decimals: 3,
        range: CELL_V,
    },
    Def {
        id: "temperature_high",
        family: "temperature",
        name: "Battery temperature high",
        check: Check::TempHigh,
        level: Level::Error,
        threshold: both(50.0),
        hysteresis: 5.0,
        for_secs: 60,
        unit: "°C",
        decimals: 1,
        range: (20.0, 100.0, 1.0),
    },
    Def {
        id: "temperature_critical",
        family: "temperature",
        name: "Battery temperature critical",
        check: Check::TempHigh,
        level: Level::Critical,
        threshold: both(60.0),
        hysteresis: 5.0,
        for_secs: 30,
        unit: "°C",
        decimals: 1,
        range: (20.0, 100.0, 1.0),
    },
    // Lithium cells must not be charged below 0 °C (lithium plating); both
    // chemistries' datasheets give 0 °C as the lowest charge temperature.
    Def {
        id: "temperature_low_charging",
        family: "temperature",
        name: "Charging while cold",
        check: Check::TempLowCharging,
        level: Level::Error,
        threshold: both(0.0),
        hysteresis: 2.0,
        for_secs: 60,
        unit: "°C",
        decimals: 1,
        range: (-30.0, 20.0, 1.0),
    },
    Def {
        id: "charge_current_high",
        family: "current",
        name: "Charge current high",
        check: Check::ChargeCurrent,
        level: Level::Error,
        threshold: both(80.0),
        hysteresis: 10.0,
        for_secs: 30,
        unit: "A",
        decimals: 1,
        range: AMPS,
    },
    Def {
        id: "charge_current_critical",
        family: "current",
        name: "Charge current critical",
        check: Check::ChargeCurrent,
        level: Level::Critical,
        threshold: both(100.0),
        hysteresis: 10.0,
        for_secs: 30,
        unit: "A",
        decimals: 1,
        range: AMPS,
    },
    Def {
        id: "discharge_current_high",
        family: "current",
        name: "Discharge current high",
        check: Check::DischargeCurrent,
        level: Level::Error,
        threshold: both(80.0),
        hysteresis: 10.0,
        for_secs: 30,
        unit: "A",
        decimals: 1,
        range: AMPS,
    },
    Def {
        id: "discharge_current_critical",
        family: "current",
        name: "Discharge current critical",
        check: Check::DischargeCurrent,
        level: Level::Critical,
        threshold: both(100.0),
        hysteresis: 10.0,
        for_secs: 30,
        unit: "A",
        decimals: 1,
        range: AMPS,
    },
    // One SOH rule: the original's "< 90 critical" made its "< 80" branch
    // unreachable and called a merely aged pack critical.
    Def {
        id: "soh_low",
        family: "soh",
        name: "Battery health low",
        check: Check::Soh,
        level: Level::Warning,
        threshold: both(80.0),
        hysteresis: 1.0,
        for_secs: 300,
        unit: "%",
        decimals: 0,
        range: (1.0, 100.0, 1.0),
    },
    Def {
        id: "wire_resistance_high",
        family: "wire_resistance",
        name: "Wire resistance high",
        check: Check::WireResistance,
        level: Level::Error,
        threshold: both(300.0),
        hysteresis: 20.0,
        for_secs: 300,
        unit: "mΩ",
        decimals: 0,
        range: (10.0, 5000.0, 10.0),
    },
    Def {
        id: "wire_resistance_critical",
        family: "wire_resistance",
        name: "Wire resistance critical",
        check: Check::WireResistance,
        level: Level::Critical,
        threshold: both(500.0),
        hysteresis: 20.0,
        for_secs: 300,
        unit: "mΩ",
        decimals: 0,
        range: (10.0, 5000.0, 10.0),
    },
    Def {
        id: "pack_voltage_high",
        family: "pack_voltage",
        name: "Pack voltage high",
        check: Check::PackHigh,
        level: Level::Error,
        threshold: Some((3.65, 4.2)),
        hysteresis: 0.05,
        for_secs: 30,
        unit: "V/cell",
        decimals: 2,
        range: CELL_V,
    },
    Def {
        id: "pack_voltage_low",
        family: "pack_voltage",
        name: "Pack voltage low",
        check: Check::PackLow,
        level: Level::Critical,
        threshold: Some((2.8, 3.0)),
        hysteresis: 0.05,
        for_secs: 30,
        unit: "V/cell",
        decimals: 2,
        range: CELL_V,
    },
    Def {
        id: "bms_alarm",
        family: "bms_alarm",
        name: "BMS alarm",
        check: Check::BmsAlarm,
        level: Level::Error,
        threshold: None,
        hysteresis: 0.0,
        for_secs: 10,
        unit: "",
        decimals: 0,
        range: NO_RANGE,
    },
    Def {
        id: "emergency_countdown",
        family: "emergency",
        name: "BMS emergency mode",
        check: Check::Emergency,
        level: Level::Critical,
        threshold: None,
        hysteresis: 0.0,
        for_secs: 0,
        unit: "s",
        decimals: 0,
        range: NO_RANGE,
    },
    // `for` comes from `[alerts] unreachable_after`.
    Def {
        id: "device_unreachable",
        family: "unreachable",
        name: "Device unreachable",
        check: Check::Unreachable,
        level: Level::Error,
        threshold: None,
        hysteresis: 0.0,
        for_secs: 300,
        unit: "",
        decimals: 0,
        range: NO_RANGE,
    },
    Def {
        id: "inverter_fault",
        family: "inverter_fault",
        name: "Inverter fault",
        check: Check::InverterFault,
        level: Level::Error,
        threshold: None,
        hysteresis: 0.0,
        for_secs: 30,
        unit: "",
        decimals: 0,
        range: NO_RANGE,
    },
    // The balancer has already waited `failsafe_after` before it sheds.
    Def {
        id: "balancer_failsafe",
        family: "balancer_failsafe",
        name: "Balancer failsafe",
        check: Check::BalancerFailsafe,
        level: Level::Error,
        threshold: None,
        hysteresis: 0.0,
        for_secs: 0,
        unit: "",
        decimals: 0,
        range: NO_RANGE,
    },
];

fn def(id: &str) -> Option<&'static Def> {
    DEFS.iter().find(|d| d.id == id)
}

/// Every rule id, in display order.
pub fn rule_ids() -> impl Iterator<Item = &'static str> {
    DEFS.iter().map(|d| d.id)
}

/// Whether `value` is an allowed threshold of rule `id` (configuration
/// and Home Assistant edits alike).
pub fn check_threshold(id: &str, value: f64) -> Result<(), String> {
    let d = def(id).ok_or_else(|| AlertError::UnknownRule(id.to_owned()).to_string())?;
    threshold_ok(d, value).map_err(|e| e.to_string())
}

/// Whether `value` is an allowed hysteresis of rule `id`: not negative and
/// not wider than the rule's threshold range.
pub fn check_hysteresis(id: &str, value: f64) -> Result<(), String> {
    let d = def(id).ok_or_else(|| AlertError::UnknownRule(id.to_owned()).to_string())?;
    if d.threshold.is_none() {
        return Err(format!("the alert rule `{id}` has no threshold"));
    }
    let (min, max, _) = d.range;
    let span = tidy(max - min);
    if !value.is_finite() {
        return Err(format!("{value} is not a finite number"));
    }
    if !(0.0..=span).contains(&value) {
        return Err(format!("{value} is outside 0 to {span} {}", d.unit));
    }
    Ok(())
}

fn threshold_ok(d: &Def, value: f64) -> Result<(), AlertError> {
    if d.threshold.is_none() {
        return Err(AlertError::NoThreshold(d.id.to_owned()));
    }
    if !value.is_finite() {
        return Err(AlertError::NotFinite {
            rule: d.id.to_owned(),
            value,
        });
    }
    let (min, max, _) = d.range;
    if !(min..=max).contains(&value) {
        return Err(AlertError::OutOfRange {
            rule: d.id.to_owned(),
            value,
            min,
            max,
            unit: d.unit,
        });
    }
    Ok(())
}

/// Sums like 0.1 − 0.01 print as 0.09 rather than 0.09000000000000001.
fn tidy(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// One rule as configured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleInfo {
    pub id: &'static str,
    pub family: &'static str,
    pub name: &'static str,
    pub level: Level,
    /// Unit of `threshold`; pack-voltage rules are per cell (`V/cell`).
    pub unit: &'static str,
    /// `None`: a condition without a threshold (alarm bits, unreachable).
    pub direction: Option<Direction>,
    pub threshold: Option<f64>,
    pub hysteresis: f64,
    /// `threshold − hysteresis` (above-rules) or `+` (below-rules).
    pub clear: Option<f64>,
    /// How long the raise condition must hold before raising (`for`).
    #[serde(serialize_with = "crate::config::duration::serialize")]
    pub min_duration: Duration,
    /// How long the clear condition must hold before clearing.
    #[serde(serialize_with = "crate::config::duration::serialize")]
    pub clear_after: Duration,
    /// Zero: no reminders, and every raise notifies.
    #[serde(serialize_with = "crate::config::duration::serialize")]
    pub repeat_after: Duration,
    /// Range and step of the threshold, for a Home Assistant number entity.
    pub min: f64,
    pub max: f64,
    pub step: f64,
    pub enabled: bool,
    #[serde(skip)]
    check: Check,
    #[serde(skip)]
    decimals: usize,
}

impl RuleInfo {
    fn new(d: &Def, chemistry: BatteryChemistry, repeat_after: Duration) -> Self {
        let threshold = d.threshold.map(|(lfp, nmc)| match chemistry {
            BatteryChemistry::Lifepo4 => lfp,
            BatteryChemistry::Nmc => nmc,
        });
        let mut r = Self {
            id: d.id,
            family: d.family,
            name: d.name,
            level: d.level,
            unit: d.unit,
            direction: d.check.direction(),
            threshold,
            hysteresis: d.hysteresis,
            clear: None,
            min_duration: Duration::from_secs(d.for_secs),
            clear_after: Duration::ZERO,
            repeat_after,
            min: d.range.0,
            max: d.range.1,
            step: d.range.2,
            enabled: true,
            check: d.check,
            decimals: d.decimals,
        };
        r.derive();
        r
    }

    /// Values already rejected at load are skipped rather than trusted, so
    /// a hand-built configuration cannot produce a rule that never clears.
    fn apply(&mut self, d: &Def, o: &RuleOverride) {
        if let Some(e) = o.enabled {
            self.enabled = e;
        }
        if let Some(t) = o.threshold.filter(|t| threshold_ok(d, *t).is_ok()) {
            self.threshold = Some(t);
        }
        if let Some(h) = o.hysteresis.filter(|h| check_hysteresis(d.id, *h).is_ok()) {
            self.hysteresis = h;
        }
        if let Some(f) = o.for_duration {
            self.min_duration = f;
        }
        if let Some(l) = o.level {
            self.level = l;
        }
        if let Some(r) = o.repeat_after {
            self.repeat_after = r;
        }
        self.derive();
    }

    fn derive(&mut self) {
        self.clear = match (self.threshold, self.direction) {
            (Some(t), Some(Direction::Above)) => Some(tidy(t - self.hysteresis)),
            (Some(t), Some(Direction::Below)) => Some(tidy(t + self.hysteresis)),
            _ => None,
        };
        self.clear_after = self.min_duration.min(MAX_CLEAR_HOLD);
    }
}

/// The rules as configured: built from `[alerts]`, thresholds editable.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    enabled: bool,
    chemistry: BatteryChemistry,
    startup_grace: Duration,
    rules: Vec<RuleInfo>,
}

impl Default for Rules {
    fn default() -> Self {
        Self::from_config(&AlertsConfig::default())
    }
}

impl Rules {
    pub fn from_config(c: &AlertsConfig) -> Self {
        let rules = DEFS
            .iter()
            .map(|d| {
                let mut r = RuleInfo::new(d, c.chemistry, c.repeat_after);
                if d.check == Check::Unreachable {
                    r.min_duration = c.unreachable_after;
                    r.derive();
                }
                if let Some(o) = c.rules.get(d.id) {
                    r.apply(d, o);
                }
                r
            })
            .collect();
        Self {
            enabled: c.enabled,
            chemistry: c.chemistry,
            startup_grace: c.startup_grace,
            rules,
        }
    }

    /// `[alerts] enabled`: when false, nothing is raised and active alerts clear.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn chemistry(&self) -> BatteryChemistry {
        self.chemistry
    }

    pub fn startup_grace(&self) -> Duration {
        self.startup_grace
    }

    /// Every rule, enabled or not, in display order.
    pub fn iter(&self) -> impl Iterator<Item = &RuleInfo> {
        self.rules.iter()
    }

    pub fn get(&self, id: &str) -> Option<&RuleInfo> {
        self.rules.iter().find(|r| r.id == id)
    }

    /// Sets a rule's threshold (a Home Assistant number entity, or a
    /// persisted edit re-applied at start); the clear threshold moves with
    /// it, keeping the hysteresis.
    pub fn set_threshold(&mut self, id: &str, value: f64) -> Result<(), AlertError> {
        let d = def(id).ok_or_else(|| AlertError::UnknownRule(id.to_owned()))?;
        threshold_ok(d, value)?;
        let rule = self
            .rules
            .iter_mut()
            .find(|r| r.id == id)
            .ok_or_else(|| AlertError::UnknownRule(id.to_owned()))?;
        rule.threshold = Some(value);
        rule.derive();
        Ok(())
    }

    /// Families with at least one enabled rule, in display order; none
    /// when alerts are disabled.
    pub fn families(&self) -> Vec<&'static str> {
        FAMILIES
            .iter()
            .copied()
            .filter(|f| self.enabled && self.rules.iter().any(|r| r.enabled && r.family == *f))
            .collect()
    }
}

// ------------------------------------------------------------ observing

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Zone {
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
struct Obs {
    zone: Zone,
    value: Option<f64>,
    threshold: Option<f64>,
    clear: Option<f64>,
    what: &'static str,
    /// Which cell or sensor, e.g. " (cell 5)".
    detail: String,
    /// The battery current, for the rules that combine it with a value.
    current: Option<f64>,
    /// Alarm or fault names; for unreachable, set when never heard from.
    text: Option<String>,
    /// Series cells, for the pack-voltage messages.
    cells: Option<u64>,
}

impl Obs {
    fn flag(on: bool) -> Self {
        Self {
            zone: if on { Zone::Raise } else { Zone::Clear },
            ..Self::default()
        }
    }
}

struct Target<'a> {
    id: &'a str,
    name: &'a str,
    online: Option<bool>,
    reading: Option<&'a Reading>,
    failsafe: bool,
}

impl Target<'_> {
    fn pack(&self) -> Option<&PackReading> {
        self.reading?.pack()
    }
}

fn targets<'a>(check: Check, inputs: &Inputs<'a>) -> Vec<Target<'a>> {
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

fn observe(rule: &RuleInfo, t: &Target) -> Obs {
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

// ------------------------------------------------------------ messages

fn show(v: Option<f64>, unit: &str, decimals: usize) -> String {
    match v {
        Some(v) if unit.is_empty() => format!("{v:.decimals$}"),
        Some(v) => format!("{v:.decimals$} {unit}"),
        None => "?".to_owned(),
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        _ if s % 3600 < 60 => format!("{} h", s / 3600),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

fn raise_message(rule: &RuleInfo, name: &str, o: &Obs, held: Duration) -> String {
    let (u, d) = (rule.unit, rule.decimals);
    let dir = match rule.direction {
        Some(Direction::Below) => "below",
        _ => "above",
    };
    match rule.check {
        Check::Unreachable => {
            let never = if o.text.is_some() {
                " (nothing received since start-up)"
            } else {
                ""
            };
            format!("{name} unreachable for {}{never}", human(held))
        }
        Check::BmsAlarm => match o.text.as_deref().filter(|t| !t.is_empty() && *t != "none") {
            Some(a) => format!("{name}: BMS alarm: {a}"),
            None => format!("{name}: BMS reports a problem"),
        },
        Check::InverterFault => format!(
            "{name}: inverter fault: {}",
            o.text.as_deref().unwrap_or("unknown")
        ),
        Check::Emergency => format!(
            "{name}: BMS emergency mode on, {} left",
            show(o.value, "s", 0)
        ),
        Check::BalancerFailsafe => format!(
            "{name}: overload balancer in failsafe (no inverter data), failsafe plugs switched off"
        ),
        Check::NoCharging => format!(
            "{name}: SOC {} is below {} and no charge current flows ({})",
            show(o.value, u, d),
            show(o.threshold, u, d),
            show(o.current, "A", 1)
        ),
        Check::TempLowCharging => format!(
            "{name}: charging at {} while temperature {}{} is below {}",
            show(o.current, "A", 1),
            show(o.value, u, d),
            o.detail,
            show(o.threshold, u, d)
        ),
        Check::PackHigh | Check::PackLow => format!(
            "{name}: pack voltage {} is {dir} {} ({} × {})",
            show(o.value, "V", 1),
            show(o.threshold, "V", 1),
            o.cells.unwrap_or(0),
            show(rule.threshold, "V", 2)
        ),
        _ => format!(
            "{name}: {} {}{} is {dir} {}",
            o.what,
            show(o.value, u, d),
            o.detail,
            show(o.threshold, u, d)
        ),
    }
}

fn clear_message(rule: &RuleInfo, name: &str, o: &Obs) -> String {
    let (u, d) = (rule.unit, rule.decimals);
    let back = match rule.direction {
        Some(Direction::Below) => "at or above",
        _ => "at or below",
    };
    match rule.check {
        Check::Unreachable => format!("{name} reachable again"),
        Check::BmsAlarm => format!("{name}: BMS alarm cleared"),
        Check::InverterFault => format!("{name}: inverter faults cleared"),
        Check::Emergency => format!("{name}: BMS emergency mode ended"),
        Check::BalancerFailsafe => format!("{name}: overload balancer out of failsafe"),
        Check::NoCharging if o.current.is_some_and(|i| i >= CHARGING_AGAIN_A) => {
            format!("{name}: charging again ({})", show(o.current, "A", 1))
        }
        Check::TempLowCharging if o.current.is_some_and(|i| i <= 0.0) => {
            format!("{name}: no longer charging while cold")
        }
        Check::PackHigh | Check::PackLow => format!(
            "{name}: pack voltage {} is back {back} {}",
            show(o.value, "V", 1),
            show(o.clear, "V", 1)
        ),
        _ => format!(
            "{name}: {} {}{} is back {back} {}",
            o.what,
            show(o.value, u, d),
            o.detail,
            show(o.clear, u, d)
        ),
    }
}

// ------------------------------------------------------------ evaluating

/// One evaluation: see the module documentation for the semantics.
pub fn evaluate(inputs: &Inputs, rules: &Rules, state: &AlertState, now: Timestamp) -> Outcome {
    let mut next = state.clone();
    let started = *next.started.get_or_insert(now);
    let may_raise = now >= started.plus(rules.startup_grace);
    let mut events = Vec::new();
    for rule in &rules.rules {
        if !(rules.enabled && rule.enabled) {
            switch_off(rule, &mut next, now, &mut events);
            continue;
        }
        let slots = next.slots.entry(rule.id.to_owned()).or_default();
        for t in targets(rule.check, inputs) {
            let obs = observe(rule, &t);
            let slot = slots.entry(t.id.to_owned()).or_default();
            step(rule, &t, obs, slot, now, may_raise, &mut events);
        }
    }
    prune(&mut next, rules, now);

    let active = next.active();
    let changed = active != state.active();
    Outcome {
        events,
        active,
        state: next,
        changed,
    }
}

struct Event<'a> {
    kind: EventKind,
    value: Option<f64>,
    threshold: Option<f64>,
    message: String,
    repeat: bool,
    notify: bool,
    device: &'a str,
    device_name: &'a str,
    level: Level,
}

fn emit(events: &mut Vec<AlertEvent>, rule: &RuleInfo, now: Timestamp, e: Event) {
    events.push(AlertEvent {
        kind: e.kind,
        rule: rule.id.to_owned(),
        family: rule.family.to_owned(),
        level: e.level,
        device: e.device.to_owned(),
        device_name: e.device_name.to_owned(),
        value: e.value,
        threshold: e.threshold,
        message: e.message,
        at: now,
        repeat: e.repeat,
        notify: e.notify,
    });
}

fn step(
    rule: &RuleInfo,
    t: &Target,
    obs: Obs,
    slot: &mut Slot,
    now: Timestamp,
    may_raise: bool,
    events: &mut Vec<AlertEvent>,
) {
    let Some(active) = slot.active.as_mut() else {
        match obs.zone {
            Zone::Raise => {
                let since = *slot.pending.get_or_insert(now);
                if may_raise && now.since(since) >= rule.min_duration {
                    raise(rule, t, &obs, slot, since, now, events);
                }
            }
            Zone::Hold | Zone::Clear => slot.pending = None,
            Zone::Unknown => {}
        }
        return;
    };

    match obs.zone {
        Zone::Clear => {
            let since = *slot.clearing.get_or_insert(now);
            if now.since(since) >= rule.clear_after {
                emit(
                    events,
                    rule,
                    now,
                    Event {
                        kind: EventKind::Clear,
                        value: obs.value,
                        threshold: obs.clear,
                        message: clear_message(rule, t.name, &obs),
                        repeat: false,
                        notify: true,
                        device: t.id,
                        device_name: t.name,
                        level: active.level,
                    },
                );
                slot.active = None;
                slot.clearing = None;
                slot.pending = None;
                return;
            }
        }
        Zone::Raise | Zone::Hold => slot.clearing = None,
        Zone::Unknown => {}
    }

    // Reminders run whatever the current reading: the alert is active
    // until it clears.
    let last = slot.last_notified.unwrap_or(active.since);
    if !rule.repeat_after.is_zero() && now.since(last) >= rule.repeat_after {
        if obs.zone == Zone::Raise {
            active.value = obs.value;
            active.threshold = obs.threshold;
            active.message = raise_message(rule, t.name, &obs, now.since(active.condition_since));
        }
        active.device_name = t.name.to_owned();
        emit(
            events,
            rule,
            now,
            Event {
                kind: EventKind::Raise,
                value: active.value,
                threshold: active.threshold,
                message: format!(
                    "{} (active for {})",
                    active.message,
                    human(now.since(active.since))
                ),
                repeat: true,
                notify: true,
                device: t.id,
                device_name: t.name,
                level: active.level,
            },
        );
        slot.last_notified = Some(now);
    }
}

fn raise(
    rule: &RuleInfo,
    t: &Target,
    obs: &Obs,
    slot: &mut Slot,
    condition_since: Timestamp,
    now: Timestamp,
    events: &mut Vec<AlertEvent>,
) {
    let notify = rule.repeat_after.is_zero()
        || slot
            .last_notified
            .is_none_or(|l| now.since(l) >= rule.repeat_after);
    let message = raise_message(rule, t.name, obs, now.since(condition_since));
    emit(
        events,
        rule,
        now,
        Event {
            kind: EventKind::Raise,
            value: obs.value,
            threshold: obs.threshold,
            message: message.clone(),
            repeat: false,
            notify,
            device: t.id,
            device_name: t.name,
            level: rule.level,
        },
    );
    if notify {
        slot.last_notified = Some(now);
    }
    slot.pending = None;
    slot.clearing = None;
    slot.active = Some(Raised {
        since: now,
        condition_since,
        level: rule.level,
        device_name: t.name.to_owned(),
        value: obs.value,
        threshold: obs.threshold,
        message,
    });
}

/// A disabled rule clears what it had raised, so nothing stays active
/// that no longer has a rule to clear it.
fn switch_off(
    rule: &RuleInfo,
    state: &mut AlertState,
    now: Timestamp,
    events: &mut Vec<AlertEvent>,
) {
    let Some(slots) = state.slots.remove(rule.id) else {
        return;
    };
    for (device, slot) in &slots {
        if let Some(a) = &slot.active {
            emit(
                events,
                rule,
                now,
                Event {
                    kind: EventKind::Clear,
                    value: None,
                    threshold: None,
                    message: format!("{}: {} alert switched off", a.device_name, rule.name),
                    repeat: false,
                    notify: true,
                    device,
                    device_name: &a.device_name,
                    level: a.level,
                },
            );
        }
    }
}

/// Forgets slots that hold nothing: no alert, no running timer, no
/// notification still inside its repeat window.
fn prune(state: &mut AlertState, rules: &Rules, now: Timestamp) {
    state.slots.retain(|id, slots| {
        let repeat = rules.get(id).map_or(Duration::ZERO, |r| r.repeat_after);
        slots.retain(|_, s| {
            s.active.is_some()
                || s.pending.is_some()
                || s.clearing.is_some()
                || s.last_notified.is_some_and(|l| now.since(l) < repeat)
        });
        !slots.is_empty()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value, json};

    /// A published state object read back as the device's typed report.
    /// Leaked: the tests' inputs borrow it, and a test process is short.
    fn reading(kind: DeviceKind, r: &Map<String, Value>) -> Option<&'static Reading> {
        let reading = Reading::from_state(kind, r).expect("a state object of that kind");
        Some(Box::leak(Box::new(reading)))
    }

    const T0: u64 = 1_750_000_000_000;
    const GRACE: u64 = 180;

    fn at(secs: u64) -> Timestamp {
        Timestamp(T0 + secs * 1000)
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    /// A healthy 16S LiFePO4 pack, charging gently.
    fn healthy() -> Map<String, Value> {
        obj(json!({
            "soc": 80, "soh": 100, "current": 5.0, "voltage": 53.1, "cell_count": 16,
            "cell_min_voltage": 3.30, "cell_max_voltage": 3.33, "cell_average_voltage": 3.31,
            "cell_delta_voltage": 0.03, "cell_min_number": 3, "cell_max_number": 9,
            "temperature_1": 25.0, "temperature_2": 24.0, "mosfet_temperature": 30.0,
            "cell_01_resistance": 50.0, "cell_02_resistance": 0.0,
            "problem": false, "alarms": "none", "emergency_countdown": 0,
        }))
    }

    fn with(mut m: Map<String, Value>, changes: Value) -> Map<String, Value> {
        for (k, v) in obj(changes) {
            if v.is_null() {
                m.remove(&k);
            } else {
                m.insert(k, v);
            }
        }
        m
    }

    fn bms<'a>(id: &'a str, name: &'a str, r: &'a Map<String, Value>) -> DeviceInput<'a> {
        DeviceInput {
            id,
            name,
            kind: DeviceKind::Bms,
            online: Some(true),
            reading: reading(DeviceKind::Bms, r),
        }
    }

    fn rules_with(f: impl FnOnce(&mut AlertsConfig)) -> Rules {
        let mut c = AlertsConfig::default();
        f(&mut c);
        Rules::from_config(&c)
    }

    /// A fake clock and the engine's state; `t` is seconds since T0.
    struct Harness {
        rules: Rules,
        state: AlertState,
        t: u64,
    }

    impl Harness {
        fn new(rules: Rules) -> Self {
            Self {
                rules,
                state: AlertState::new(),
                t: 0,
            }
        }

        /// Started at 0 with nothing to report, now at the end of the grace.
        fn after_grace(rules: Rules) -> Self {
            let mut h = Self::new(rules);
            h.eval(&Inputs::default());
            h.t = GRACE;
            h
        }

        fn eval(&mut self, inputs: &Inputs) -> Outcome {
            let out = evaluate(inputs, &self.rules, &self.state, at(self.t));
            self.state = out.state.clone();
            out
        }

        fn battery(&mut self, r: &Map<String, Value>) -> Vec<AlertEvent> {
            self.eval(&Inputs {
                devices: vec![bms("bat1", "Battery 1", r)],
                ..Inputs::default()
            })
            .events
        }

        /// Evaluates every `every` seconds for `secs` seconds, starting now;
        /// `t` ends `secs` later.
        fn battery_for(
            &mut self,
            secs: u64,
            every: u64,
            r: &Map<String, Value>,
        ) -> Vec<AlertEvent> {
            let end = self.t + secs;
            let mut events = Vec::new();
            while self.t < end {
                events.extend(self.battery(r));
                self.t += every;
            }
            self.t = end;
            events
        }
    }

    fn ids(events: &[AlertEvent]) -> Vec<(EventKind, &str)> {
        events.iter().map(|e| (e.kind, e.rule.as_str())).collect()
    }

    fn raised(events: &[AlertEvent]) -> Vec<&str> {
        let mut v: Vec<&str> = events
            .iter()
            .filter(|e| e.kind == EventKind::Raise)
            .map(|e| e.rule.as_str())
            .collect();
        v.sort_unstable();
        v
    }

    // ------------------------------------------------------------ SOC

    #[test]
    fn soc_below_10_raises_critical_and_low_with_human_messages() {
        let mut h = Harness::after_grace(Rules::default());
        let low = with(healthy(), json!({"soc": 8, "current": -20.0}));
        let events = h.battery_for(61, 1, &low);
        assert_eq!(raised(&events), ["soc_critical", "soc_low"]);
        let crit = events.iter().find(|e| e.rule == "soc_critical").unwrap();
        assert_eq!(crit.message, "Battery 1: SOC 8 % is below 10 %");
        assert_eq!(crit.level, Level::Critical);
        assert_eq!(crit.family, "soc");
        assert_eq!(crit.value, Some(8.0));
        assert_eq!(crit.threshold, Some(10.0));
        assert_eq!(crit.at, at(GRACE + 60));
        assert!(crit.notify && !crit.repeat);
        let low_ev = events.iter().find(|e| e.rule == "soc_low").unwrap();
        assert_eq!(low_ev.level, Level::Error);
        assert_eq!(low_ev.message, "Battery 1: SOC 8 % is below 20 %");
    }

    #[test]
    fn soc_hysteresis_clears_only_at_threshold_plus_2() {
        let mut h = Harness::after_grace(Rules::default());
        let events = h.battery_for(61, 1, &with(healthy(), json!({"soc": 19})));
        assert_eq!(raised(&events), ["soc_low"]);
        // 20 and 21 % are not below 20 % but not yet at the clear threshold 22 %.
        for soc in [20, 21, 19, 21, 20] {
            let events = h.battery_for(60, 1, &with(healthy(), json!({"soc": soc})));
            assert!(events.is_empty(), "soc {soc}: {events:?}");
        }
        assert!(h.state.is_active("soc_low", "bat1"));
        let events = h.battery_for(31, 1, &with(healthy(), json!({"soc": 22})));
        assert_eq!(ids(&events), [(EventKind::Clear, "soc_low")]);
        assert_eq!(events[0].threshold, Some(22.0));
        assert_eq!(
            events[0].message,
            "Battery 1: SOC 22 % is back at or above 22 %"
        );
    }

    // ------------------------------------------------------------ no charging

    #[test]
    fn no_charging_raises_after_10_min_without_charge_current() {
        let mut h = Harness::after_grace(Rules::default());
        let idle = with(healthy(), json!({"soc": 25, "current": 0.2}));
        assert!(h.battery_for(599, 1, &idle).is_empty());
        let events = h.battery_for(2, 1, &idle);
        assert_eq!(ids(&events), [(EventKind::Raise, "no_charging")]);
        assert_eq!(events[0].level, Level::Warning);
        assert_eq!(
            events[0].message,
            "Battery 1: SOC 25 % is below 30 % and no charge current flows (0.2 A)"
        );
        // A charge source comes back: cleared after the 30 s clear hold.
        let charging = with(healthy(), json!({"soc": 25, "current": 3.0}));
        let events = h.battery_for(31, 1, &charging);
        assert_eq!(ids(&events), [(EventKind::Clear, "no_charging")]);
        assert_eq!(events[0].message, "Battery 1: charging again (3.0 A)");
    }

    #[test]
    fn no_charging_stays_quiet_while_charge_current_flows_whatever_the_mosfet() {
        let mut h = Harness::after_grace(Rules::default());
        // The original's defect: it read the charge-MOSFET bit.
        let r = with(
            healthy(),
            json!({"soc": 25, "current": 5.0, "charging_mosfet": false}),
        );
        assert!(h.battery_for(3600, 10, &r).is_empty());
        // Discharging at low SOC is exactly "no charging source".
        let r = with(
            healthy(),
            json!({"soc": 25, "current": -12.0, "charging_mosfet": true}),
        );
        let events = h.battery_for(601, 1, &r);
        assert_eq!(raised(&events), ["no_charging"]);
    }

    // ------------------------------------------------------------ cell delta

    #[test]
    fn cell_delta_hysteresis_no_flapping_around_the_threshold() {
        let mut h = Harness::after_grace(Rules::default());
        let r = |d: f64| with(healthy(), json!({"cell_delta_voltage": d}));
        let events = h.battery_for(61, 1, &r(0.112));
        assert_eq!(raised(&events), ["cell_delta_critical", "cell_delta_error"]);
        let crit = events
            .iter()
            .find(|e| e.rule == "cell_delta_critical")
            .unwrap();
        assert_eq!(
            crit.message,
            "Battery 1: cell delta 0.112 V is above 0.100 V"
        );
        // Oscillating around 0.1 V: nothing is cleared or raised again.
        let mut events = Vec::new();
        for i in 0..600 {
            let d = if i % 2 == 0 { 0.099 } else { 0.101 };
            events.extend(h.battery_for(1, 1, &r(d)));
        }
        assert!(events.is_empty(), "{events:?}");
        // 0.09 V is the clear threshold of the critical rule.
        let events = h.battery_for(31, 1, &r(0.09));
        assert_eq!(ids(&events), [(EventKind::Clear, "cell_delta_critical")]);
        assert_eq!(events[0].threshold, Some(0.09));
        assert!(h.state.is_active("cell_delta_error", "bat1"));
    }

    #[test]
    fn clear_needs_the_clear_condition_to_hold() {
        let mut h = Harness::after_grace(Rules::default());
        let bad = with(healthy(), json!({"cell_delta_voltage": 0.07}));
        let good = with(healthy(), json!({"cell_delta_voltage": 0.02}));
        assert_eq!(raised(&h.battery_for(61, 1, &bad)), ["cell_delta_error"]);
        // 20 s good (less than the 30 s clear hold), then bad again.
        assert!(h.battery_for(20, 1, &good).is_empty());
        assert!(h.battery_for(5, 1, &bad).is_empty());
        assert!(h.battery_for(29, 1, &good).is_empty());
        let events = h.battery_for(2, 1, &good);
        assert_eq!(ids(&events), [(EventKind::Clear, "cell_delta_error")]);
    }

    // ------------------------------------------------------------ duration

    #[test]
    fn short_spike_raises_nothing() {
        let mut h = Harness::after_grace(Rules::default());
        let hot = with(healthy(), json!({"temperature_2": 65.0}));
        // temperature_critical needs 30 s, temperature_high 60 s.
        assert!(h.battery_for(29, 1, &hot).is_empty());
        assert!(h.battery_for(60, 1, &healthy()).is_empty());
        // Each spike starts the clock again.
        assert!(h.battery_for(29, 1, &hot).is_empty());
        assert!(h.battery_for(1, 1, &healthy()).is_empty());
        assert!(h.battery_for(29, 1, &hot).is_empty());
        let events = h.battery_for(2, 1, &hot);
        assert_eq!(raised(&events), ["temperature_critical"]);
        assert_eq!(
            events[0].message,
            "Battery 1: temperature 65.0 °C (sensor 2) is above 60.0 °C"
        );
    }

    #[test]
    fn temperature_ignores_the_mosfet_sensors() {
        let mut h = Harness::after_grace(Rules::default());
        let r = with(
            healthy(),
            json!({"mosfet_temperature": 75.0, "temperature_3": 75.0}),
        );
        assert!(h.battery_for(600, 5, &r).is_empty());
    }

    #[test]
    fn charging_below_freezing_raises_and_stopping_charge_clears() {
        let mut h = Harness::after_grace(Rules::default());
        let cold = with(
            healthy(),
            json!({"temperature_1": -3.0, "temperature_2": 4.0, "current": 6.0}),
        );
        let events = h.battery_for(61, 1, &cold);
        assert_eq!(raised(&events), ["temperature_low_charging"]);
        assert_eq!(
            events[0].message,
            "Battery 1: charging at 6.0 A while temperature -3.0 °C (sensor 1) is below 0.0 °C"
        );
        // Cold but discharging: clears.
        let events = h.battery_for(31, 1, &with(cold.clone(), json!({"current": -4.0})));
        assert_eq!(
            ids(&events),
            [(EventKind::Clear, "temperature_low_charging")]
        );
        // Cold and not charging from the start: nothing.
        let mut h = Harness::after_grace(Rules::default());
        assert!(
            h.battery_for(600, 5, &with(cold, json!({"current": -4.0})))
                .is_empty()
        );
    }

    // ------------------------------------------------------------ repeat

    #[test]
    fn reminder_every_12_h_while_active() {
        let mut h = Harness::after_grace(Rules::default());
        let r = with(healthy(), json!({"soh": 75}));
        let events = h.battery_for(301, 1, &r);
        assert_eq!(raised(&events), ["soh_low"]);
        let raised_at = events[0].at;
        // Nothing more until 12 h after the notification.
        let events = h.battery_for(12 * 3600 - 11, 10, &r);
        assert!(events.is_empty(), "{events:?}");
        let events = h.battery_for(20, 10, &r);
        assert_eq!(events.len(), 1, "{events:?}");
        let e = &events[0];
        assert_eq!((e.kind, e.repeat, e.notify), (EventKind::Raise, true, true));
        assert_eq!(e.at.since(raised_at), Duration::from_secs(12 * 3600));
        assert_eq!(
            e.message,
            "Battery 1: SOH 75 % is below 80 % (active for 12 h)"
        );
        // The reminder does not change the list's since.
        let active = h.state.active();
        assert_eq!(active[0].since, raised_at);
        assert_eq!(active[0].message, "Battery 1: SOH 75 % is below 80 %");
    }

    #[test]
    fn reraise_within_the_repeat_window_does_not_notify() {
        let mut h = Harness::after_grace(Rules::default());
        let bad = with(healthy(), json!({"current": 90.0}));
        let good = with(healthy(), json!({"current": 10.0}));
        let first = h.battery_for(31, 1, &bad);
        assert_eq!(raised(&first), ["charge_current_high"]);
        assert!(first[0].notify);
        let cleared = h.battery_for(31, 1, &good);
        assert_eq!(ids(&cleared), [(EventKind::Clear, "charge_current_high")]);
        assert!(cleared[0].notify, "clear events are always emitted");

        // An hour later: raised again, active, but not notified.
        h.battery_for(3600, 10, &good);
        let again = h.battery_for(31, 1, &bad);
        assert_eq!(raised(&again), ["charge_current_high"]);
        assert!(!again[0].notify && !again[0].repeat);
        assert!(h.state.is_active("charge_current_high", "bat1"));
        assert_eq!(h.state.active().len(), 1);

        // The reminder comes 12 h after the first (notified) raise.
        let events = h.battery_for(12 * 3600, 10, &bad);
        assert_eq!(events.len(), 1);
        assert!(events[0].repeat && events[0].notify);
        let after = events[0].at.since(first[0].at);
        let window = Duration::from_secs(12 * 3600);
        assert!(
            after >= window && after < window + Duration::from_secs(10),
            "at the first evaluation after the window: {after:?}"
        );

        // Cleared, then raised again more than 12 h after that reminder: notified.
        h.battery_for(31, 1, &good);
        h.battery_for(13 * 3600, 60, &good);
        let later = h.battery_for(31, 1, &bad);
        assert_eq!(raised(&later), ["charge_current_high"]);
        assert!(later[0].notify);
    }

    #[test]
    fn repeat_window_per_rule_override() {
        let rules = rules_with(|c| {
            c.rules.insert(
                "soh_low".into(),
                RuleOverride {
                    repeat_after: Some(Duration::from_secs(3600)),
                    ..RuleOverride::default()
                },
            );
        });
        let mut h = Harness::after_grace(rules);
        let r = with(healthy(), json!({"soh": 70}));
        let events = h.battery_for(301 + 3600, 1, &r);
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(events[1].repeat);
        assert_eq!(events[1].at.since(events[0].at), Duration::from_secs(3600));
    }

    // ------------------------------------------------------------ grace

    #[test]
    fn startup_grace_holds_raises_but_counts_the_duration() {
        let mut h = Harness::new(Rules::default());
        let low = with(healthy(), json!({"soc": 15}));
        // soc_low needs 60 s; the condition holds from the very start.
        let events = h.battery_for(GRACE, 1, &low);
        assert!(events.is_empty(), "{events:?}");
        let events = h.battery(&low);
        assert_eq!(raised(&events), ["soc_low"]);
        assert_eq!(events[0].at, at(GRACE));
    }

    #[test]
    fn startup_grace_counts_from_the_first_evaluation() {
        let mut h = Harness::new(Rules::default());
        h.t = 1000;
        let r = with(healthy(), json!({"emergency_countdown": 120}));
        assert!(h.battery_for(GRACE, 1, &r).is_empty());
        let events = h.battery(&r);
        assert_eq!(raised(&events), ["emergency_countdown"]);
        assert_eq!(events[0].at, at(1000 + GRACE));
        assert_eq!(
            events[0].message,
            "Battery 1: BMS emergency mode on, 120 s left"
        );
    }

    // ------------------------------------------------------------ independence

    #[test]
    fn two_simultaneous_alerts_are_both_raised() {
        let mut h = Harness::after_grace(Rules::default());
        let r = with(healthy(), json!({"soc": 15, "temperature_1": 55.0}));
        let events = h.battery_for(61, 1, &r);
        assert_eq!(raised(&events), ["soc_low", "temperature_high"]);
        assert_eq!(h.state.active().len(), 2);
    }

    #[test]
    fn an_active_alert_does_not_hide_a_later_one() {
        // The original aborted the evaluation on the first suppressed
        // duplicate, so an active low-SOC hid a later overheat.
        let mut h = Harness::after_grace(Rules::default());
        let low = with(healthy(), json!({"soc": 15}));
        assert_eq!(raised(&h.battery_for(61, 1, &low)), ["soc_low"]);
        h.battery_for(3600, 10, &low);
        let hot = with(low, json!({"temperature_1": 62.0}));
        let events = h.battery_for(61, 1, &hot);
        assert_eq!(
            raised(&events),
            ["temperature_critical", "temperature_high"]
        );
        let active: Vec<String> = h.state.active().into_iter().map(|a| a.rule).collect();
        assert_eq!(
            active,
            ["temperature_critical", "soc_low", "temperature_high"],
            "critical first, then by since"
        );
    }

    #[test]
    fn every_battery_is_evaluated_on_its_own() {
        let mut h = Harness::after_grace(Rules::default());
        let a = with(healthy(), json!({"soc": 15}));
        let b = with(healthy(), json!({"soc": 16}));
        let mut events = Vec::new();
        for _ in 0..61 {
            events.extend(
                h.eval(&Inputs {
                    devices: vec![bms("bat1", "Battery 1", &a), bms("bat2", "Battery 2", &b)],
                    ..Inputs::default()
                })
                .events,
            );
            h.t += 1;
        }
        let devices: Vec<&str> = events.iter().map(|e| e.device.as_str()).collect();
        assert_eq!(devices, ["bat1", "bat2"]);
    }

    // ------------------------------------------------------------ unknown

    #[test]
    fn missing_value_keeps_the_state() {
        let mut h = Harness::after_grace(Rules::default());
        let low = with(healthy(), json!({"soc": 15}));
        assert_eq!(raised(&h.battery_for(61, 1, &low)), ["soc_low"]);
        let no_soc = with(healthy(), json!({"soc": null}));
        assert!(h.battery_for(3600, 10, &no_soc).is_empty());
        assert!(h.state.is_active("soc_low", "bat1"));
        // A pending condition keeps its clock as well.
        let hot = with(no_soc.clone(), json!({"temperature_1": 55.0}));
        assert!(h.battery_for(40, 1, &hot).is_empty());
        let no_temp = with(
            no_soc,
            json!({"temperature_1": null, "temperature_2": null}),
        );
        assert!(h.battery_for(100, 1, &no_temp).is_empty());
        let events = h.battery(&hot);
        assert_eq!(raised(&events), ["temperature_high"]);
    }

    #[test]
    fn offline_device_freezes_its_alerts() {
        let mut h = Harness::after_grace(Rules::default());
        let low = with(healthy(), json!({"soc": 15}));
        assert_eq!(raised(&h.battery_for(61, 1, &low)), ["soc_low"]);
        // The last readings say SOC 80 %, but the device is offline.
        let r = healthy();
        let mut events = Vec::new();
        for _ in 0..400 {
            events.extend(
                h.eval(&Inputs {
                    devices: vec![DeviceInput {
                        online: Some(false),
                        ..bms("bat1", "Battery 1", &r)
                    }],
                    ..Inputs::default()
                })
                .events,
            );
            h.t += 1;
        }
        assert_eq!(raised(&events), ["device_unreachable"]);
        assert!(h.state.is_active("soc_low", "bat1"));
    }

    // ------------------------------------------------------------ unreachable

    fn plug<'a>(online: Option<bool>, r: &'a Map<String, Value>) -> DeviceInput<'a> {
        DeviceInput {
            id: "boiler",
            name: "Boiler",
            kind: DeviceKind::Plug,
            online,
            reading: reading(DeviceKind::Plug, r),
        }
    }

    #[test]
    fn unreachable_after_5_min_and_back() {
        let mut h = Harness::after_grace(Rules::default());
        let r = Map::new();
        let run = |h: &mut Harness, secs: u64, online| {
            let mut events = Vec::new();
            for _ in 0..secs {
                events.extend(
                    h.eval(&Inputs {
                        devices: vec![plug(online, &r)],
                        ..Inputs::default()
                    })
                    .events,
                );
                h.t += 1;
            }
            events
        };
        assert!(run(&mut h, 60, Some(true)).is_empty());
        assert!(run(&mut h, 300, Some(false)).is_empty());
        let events = run(&mut h, 1, Some(false));
        assert_eq!(ids(&events), [(EventKind::Raise, "device_unreachable")]);
        assert_eq!(events[0].message, "Boiler unreachable for 5 min");
        assert_eq!(events[0].family, "unreachable");
        assert_eq!(events[0].device, "boiler");
        let events = run(&mut h, 31, Some(true));
        assert_eq!(ids(&events), [(EventKind::Clear, "device_unreachable")]);
        assert_eq!(events[0].message, "Boiler reachable again");
    }

    #[test]
    fn never_heard_from_counts_from_start() {
        let mut h = Harness::new(rules_with(|c| {
            c.unreachable_after = Duration::from_secs(600);
        }));
        let r = Map::new();
        let mut events = Vec::new();
        for _ in 0..=600 {
            events.extend(
                h.eval(&Inputs {
                    devices: vec![plug(None, &r)],
                    ..Inputs::default()
                })
                .events,
            );
            h.t += 1;
        }
        assert_eq!(ids(&events), [(EventKind::Raise, "device_unreachable")]);
        assert_eq!(events[0].at, at(600));
        assert_eq!(
            events[0].message,
            "Boiler unreachable for 10 min (nothing received since start-up)"
        );
    }

    // ------------------------------------------------------------ presets

    #[test]
    fn lifepo4_16s_charging_at_56_8_v_raises_nothing() {
        let mut h = Harness::after_grace(Rules::default());
        let r = with(
            healthy(),
            json!({"voltage": 56.8, "cell_max_voltage": 3.55, "cell_min_voltage": 3.549,
                   "cell_average_voltage": 3.55, "current": 40.0, "soc": 99}),
        );
        assert!(h.battery_for(3600, 5, &r).is_empty());
    }

    #[test]
    fn pack_voltage_limits_scale_with_the_cell_count() {
        let rules = Rules::default();
        let mut h = Harness::after_grace(rules);
        let r = with(
            healthy(),
            json!({"voltage": 58.6, "cell_max_voltage": 3.64}),
        );
        let events = h.battery_for(31, 1, &r);
        assert_eq!(raised(&events), ["pack_voltage_high"]);
        assert_eq!(events[0].threshold, Some(58.4));
        assert_eq!(
            events[0].message,
            "Battery 1: pack voltage 58.6 V is above 58.4 V (16 × 3.65 V)"
        );
        // The original's "< 43 V critical" is 2.8 V/cell × 16 = 44.8 V here.
        let mut h = Harness::after_grace(Rules::default());
        let r = with(healthy(), json!({"voltage": 44.0, "current": -5.0}));
        let events = h.battery_for(31, 1, &r);
        assert_eq!(raised(&events), ["pack_voltage_low"]);
        assert_eq!(events[0].level, Level::Critical);
        assert_eq!(events[0].threshold, Some(44.8));
        // Without the series count the rule cannot decide.
        let mut h = Harness::after_grace(Rules::default());
        let r = with(healthy(), json!({"voltage": 70.0, "cell_count": null}));
        assert!(h.battery_for(60, 1, &r).is_empty());
    }

    #[test]
    fn nmc_preset_moves_the_voltage_thresholds() {
        let lfp = Rules::default();
        let nmc = rules_with(|c| c.chemistry = BatteryChemistry::Nmc);
        let t = |r: &Rules, id| r.get(id).and_then(|r| r.threshold);
        assert_eq!(t(&lfp, "cell_max_high"), Some(3.65));
        assert_eq!(t(&nmc, "cell_max_high"), Some(4.2));
        assert_eq!(t(&lfp, "cell_min_low"), Some(2.9));
        assert_eq!(t(&nmc, "cell_min_low"), Some(3.0));
        assert_eq!(t(&lfp, "cell_average_low"), Some(3.0));
        assert_eq!(t(&nmc, "cell_average_low"), Some(3.3));
        assert_eq!(t(&nmc, "pack_voltage_high"), Some(4.2));
        assert_eq!(t(&nmc, "pack_voltage_low"), Some(3.0));
        // The rest is the same for both.
        assert_eq!(t(&nmc, "cell_delta_error"), t(&lfp, "cell_delta_error"));
        assert_eq!(t(&nmc, "soc_low"), t(&lfp, "soc_low"));

        // A 14S NMC pack at 4.1 V/cell, charging: fine for NMC...
        let r = with(
            healthy(),
            json!({"voltage": 57.4, "cell_count": 14, "cell_max_voltage": 4.11,
                   "cell_min_voltage": 4.09, "cell_average_voltage": 4.1}),
        );
        let mut h = Harness::after_grace(nmc.clone());
        assert!(h.battery_for(600, 5, &r).is_empty());
        // ...far above the LiFePO4 limits.
        let mut h = Harness::after_grace(lfp);
        let events = h.battery_for(31, 1, &r);
        assert_eq!(raised(&events), ["cell_max_high", "pack_voltage_high"]);

        // A LiFePO4 pack resting at 3.2 V/cell is low for NMC.
        let r = with(
            healthy(),
            json!({"cell_average_voltage": 3.2, "cell_min_voltage": 3.19, "voltage": 51.2}),
        );
        let mut h = Harness::after_grace(nmc);
        let events = h.battery_for(61, 1, &r);
        assert_eq!(raised(&events), ["cell_average_low"]);
        assert_eq!(
            events[0].message,
            "Battery 1: average cell voltage 3.200 V is below 3.300 V"
        );
    }

    #[test]
    fn lifepo4_cell_voltage_rules() {
        let mut h = Harness::after_grace(Rules::default());
        let r = with(
            healthy(),
            json!({"cell_min_voltage": 2.85, "cell_min_number": 5,
                   "cell_average_voltage": 2.98, "current": -30.0}),
        );
        let events = h.battery_for(61, 1, &r);
        assert_eq!(raised(&events), ["cell_average_low", "cell_min_low"]);
        let min = events.iter().find(|e| e.rule == "cell_min_low").unwrap();
        assert_eq!(min.level, Level::Critical);
        assert_eq!(
            min.message,
            "Battery 1: lowest cell 2.850 V (cell 5) is below 2.900 V"
        );
    }

    // ------------------------------------------------------------ the rest

    #[test]
    fn discharge_current_over_100_a_raises_both_levels() {
        let mut h = Harness::after_grace(Rules::default());
        let r = with(healthy(), json!({"current": -110.0}));
        let events = h.battery_for(31, 1, &r);
        assert_eq!(
            raised(&events),
            ["discharge_current_critical", "discharge_current_high"]
        );
        let e = events
            .iter()
            .find(|e| e.rule == "discharge_current_critical")
            .unwrap();
        assert_eq!(
            e.message,
            "Battery 1: discharge current 110.0 A is above 100.0 A"
        );
        assert_eq!(e.value, Some(110.0));
    }

    #[test]
    fn soh_below_80_is_a_warning_and_85_is_fine() {
        let mut h = Harness::after_grace(Rules::default());
        assert!(
            h.battery_for(600, 5, &with(healthy(), json!({"soh": 85})))
                .is_empty()
        );
        let events = h.battery_for(301, 1, &with(healthy(), json!({"soh": 79})));
        assert_eq!(raised(&events), ["soh_low"]);
        assert_eq!(events[0].level, Level::Warning);
    }

    #[test]
    fn wire_resistance_takes_the_highest_measured_cell() {
        let mut h = Harness::after_grace(Rules::default());
        let r = with(
            healthy(),
            json!({"cell_05_resistance": 350.0, "cell_06_resistance": 120.0}),
        );
        let events = h.battery_for(301, 1, &r);
        assert_eq!(raised(&events), ["wire_resistance_high"]);
        assert_eq!(
            events[0].message,
            "Battery 1: wire resistance 350 mΩ (cell 5) is above 300 mΩ"
        );
    }

    #[test]
    fn bms_alarm_message_lists_the_alarms() {
        let mut h = Harness::after_grace(Rules::default());
        let r = with(
            healthy(),
            json!({"problem": true, "alarms": "cell overvoltage, charge overtemperature"}),
        );
        let events = h.battery_for(11, 1, &r);
        assert_eq!(raised(&events), ["bms_alarm"]);
        assert_eq!(
            events[0].message,
            "Battery 1: BMS alarm: cell overvoltage, charge overtemperature"
        );
        let events = h.battery_for(11, 1, &healthy());
        assert_eq!(ids(&events), [(EventKind::Clear, "bms_alarm")]);
    }

    #[test]
    fn inverter_fault_and_balancer_failsafe() {
        let mut h = Harness::after_grace(Rules::default());
        let faulty = obj(json!({"faults": "F35 no AC grid", "warnings": "none"}));
        let ok = obj(json!({"faults": "none"}));
        let inverter = |r| DeviceInput {
            id: "deye",
            name: "Deye",
            kind: DeviceKind::Inverter,
            online: Some(true),
            reading: reading(DeviceKind::Inverter, r),
        };
        let mut events = Vec::new();
        for _ in 0..31 {
            events.extend(
                h.eval(&Inputs {
                    devices: vec![inverter(&faulty)],
                    balancer_failsafe: vec!["deye"],
                })
                .events,
            );
            h.t += 1;
        }
        assert_eq!(raised(&events), ["balancer_failsafe", "inverter_fault"]);
        let fault = events.iter().find(|e| e.rule == "inverter_fault").unwrap();
        assert_eq!(fault.message, "Deye: inverter fault: F35 no AC grid");
        let fs = events
            .iter()
            .find(|e| e.rule == "balancer_failsafe")
            .unwrap();
        assert_eq!(fs.at, at(GRACE), "no minimum duration");
        let out = h.eval(&Inputs {
            devices: vec![inverter(&ok)],
            balancer_failsafe: vec![],
        });
        assert_eq!(ids(&out.events), [(EventKind::Clear, "balancer_failsafe")]);
        assert_eq!(
            out.events[0].message,
            "Deye: overload balancer out of failsafe"
        );
        assert!(out.changed);
    }

    #[test]
    fn rules_of_one_kind_skip_other_kinds() {
        let mut h = Harness::after_grace(Rules::default());
        let r = obj(json!({"soc": 1, "faults": "F13 working mode change"}));
        let mut events = Vec::new();
        for _ in 0..700 {
            events.extend(
                h.eval(&Inputs {
                    devices: vec![plug(Some(true), &r)],
                    ..Inputs::default()
                })
                .events,
            );
            h.t += 1;
        }
        assert!(events.is_empty(), "{events:?}");
    }

    // ------------------------------------------------------------ configuration

    #[test]
    fn overrides_from_config_apply() {
        let rules = rules_with(|c| {
            c.rules.insert(
                "soc_low".into(),
                RuleOverride {
                    threshold: Some(25.0),
                    hysteresis: Some(5.0),
                    for_duration: Some(Duration::from_secs(120)),
                    level: Some(Level::Critical),
                    ..RuleOverride::default()
                },
            );
            c.rules.insert(
                "soh_low".into(),
                RuleOverride {
                    enabled: Some(false),
                    ..RuleOverride::default()
                },
            );
        });
        let soc = rules.get("soc_low").unwrap();
        assert_eq!(
            (soc.threshold, soc.clear, soc.level),
            (Some(25.0), Some(30.0), Level::Critical)
        );
        assert_eq!(soc.min_duration, Duration::from_secs(120));
        assert_eq!(soc.clear_after, Duration::from_secs(30));
        assert!(!rules.families().contains(&"soh"));
        assert!(rules.families().contains(&"soc"));

        let mut h = Harness::after_grace(rules);
        let r = with(healthy(), json!({"soc": 24, "soh": 50}));
        assert!(h.battery_for(120, 1, &r).is_empty());
        let events = h.battery(&r);
        assert_eq!(raised(&events), ["soc_low"]);
        assert_eq!(events[0].level, Level::Critical);
    }

    #[test]
    fn disabled_alerts_raise_nothing_and_clear_what_was_active() {
        let mut h = Harness::after_grace(Rules::default());
        let low = with(healthy(), json!({"soc": 15}));
        assert_eq!(raised(&h.battery_for(61, 1, &low)), ["soc_low"]);
        h.rules = rules_with(|c| c.enabled = false);
        let events = h.battery(&low);
        assert_eq!(ids(&events), [(EventKind::Clear, "soc_low")]);
        assert!(h.battery_for(3600, 10, &low).is_empty());
        assert!(h.rules.families().is_empty());
    }

    #[test]
    fn set_threshold_validates_and_moves_the_clear_threshold() {
        let mut rules = Rules::default();
        assert_eq!(
            rules.set_threshold("bogus", 1.0),
            Err(AlertError::UnknownRule("bogus".into()))
        );
        assert_eq!(
            rules.set_threshold("bms_alarm", 1.0),
            Err(AlertError::NoThreshold("bms_alarm".into()))
        );
        assert!(matches!(
            rules.set_threshold("soc_low", f64::NAN),
            Err(AlertError::NotFinite { .. })
        ));
        assert!(matches!(
            rules.set_threshold("soc_low", f64::INFINITY),
            Err(AlertError::NotFinite { .. })
        ));
        let err = rules.set_threshold("soc_low", 150.0).unwrap_err();
        assert_eq!(err.to_string(), "150 is outside 1 to 99 %");
        assert_eq!(rules.get("soc_low").unwrap().threshold, Some(20.0));

        rules.set_threshold("soc_low", 25.0).unwrap();
        let r = rules.get("soc_low").unwrap();
        assert_eq!((r.threshold, r.clear), (Some(25.0), Some(27.0)));
        rules.set_threshold("cell_delta_error", 0.08).unwrap();
        let r = rules.get("cell_delta_error").unwrap();
        assert_eq!((r.threshold, r.clear), (Some(0.08), Some(0.07)));

        // The edit takes effect at the next evaluation.
        let mut h = Harness::after_grace(rules);
        let events = h.battery_for(61, 1, &with(healthy(), json!({"soc": 23})));
        assert_eq!(raised(&events), ["soc_low"]);
    }

    #[test]
    fn every_family_has_a_rule_and_a_name() {
        let rules = Rules::default();
        assert_eq!(rules.families(), FAMILIES);
        for f in FAMILIES {
            assert!(family_name(f).is_some(), "{f}");
        }
        for r in rules.iter() {
            assert!(FAMILIES.contains(&r.family), "{}", r.id);
            if let Some(t) = r.threshold {
                assert!((r.min..=r.max).contains(&t), "{}: default in range", r.id);
                assert!(r.step > 0.0, "{}", r.id);
            }
        }
    }

    // ------------------------------------------------------------ payloads

    #[test]
    fn event_and_active_list_serialize_as_documented() {
        let mut h = Harness::after_grace(Rules::default());
        let events = h.battery_for(61, 1, &with(healthy(), json!({"soc": 8})));
        let e = events.iter().find(|e| e.rule == "soc_critical").unwrap();
        let json = serde_json::to_value(e).unwrap();
        assert_eq!(
            json,
            json!({
                "kind": "raise", "rule": "soc_critical", "family": "soc",
                "level": "critical", "device": "bat1", "device_name": "Battery 1",
                "value": 8.0, "threshold": 10.0,
                "message": "Battery 1: SOC 8 % is below 10 %",
                "at": T0 + (GRACE + 60) * 1000, "repeat": false, "notify": true,
            })
        );
        let active = serde_json::to_value(h.state.active()).unwrap();
        assert_eq!(active[0]["rule"], "soc_critical");
        assert_eq!(active[0]["level"], "critical");
        assert_eq!(active[0]["since"], T0 + (GRACE + 60) * 1000);
        assert_eq!(active[1]["rule"], "soc_low");
    }

    #[test]
    fn changed_only_when_the_active_list_changes() {
        let mut h = Harness::after_grace(Rules::default());
        let r = with(healthy(), json!({"soc": 15}));
        let mut flags = Vec::new();
        for _ in 0..70 {
            flags.push(
                h.eval(&Inputs {
                    devices: vec![bms("bat1", "Battery 1", &r)],
                    ..Inputs::default()
                })
                .changed,
            );
            h.t += 1;
        }
        assert_eq!(flags.iter().filter(|c| **c).count(), 1);
        assert!(flags[60]);
    }

    #[test]
    fn quiet_slots_are_forgotten() {
        let mut h = Harness::after_grace(Rules::default());
        h.battery_for(600, 10, &healthy());
        assert!(h.state.slots.is_empty(), "{:?}", h.state.slots);
    }
}
