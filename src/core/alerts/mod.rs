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

use serde::{Deserialize, Serialize};

use crate::core::balancer::Timestamp;
use crate::model::{DeviceKind, Reading};

mod defaults;
mod evaluation;
mod messages;
mod observe;
mod rules;

pub use evaluation::evaluate;
pub use rules::{RuleInfo, Rules, check_hysteresis, check_threshold, rule_ids};

use defaults::def;

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

#[cfg(test)]
mod tests;
