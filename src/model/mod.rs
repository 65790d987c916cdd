//! Shared vocabulary of drivers, core and the MQTT surface.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// What kind of device an id stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Bms,
    Inverter,
    Plug,
}

impl DeviceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bms => "bms",
            Self::Inverter => "inverter",
            Self::Plug => "plug",
        }
    }

    /// "a BMS", "an inverter", "a plug": for messages.
    pub fn with_article(self) -> &'static str {
        match self {
            Self::Bms => "a BMS",
            Self::Inverter => "an inverter",
            Self::Plug => "a plug",
        }
    }
}

/// A plug's wanted relay state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SwitchState {
    On,
    Off,
    Toggle,
}

/// Who decides a plug's state: the automation, or the user's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PlugMode {
    #[default]
    Auto,
    On,
    Off,
}

/// A command addressed to one device's driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceCommand {
    /// Switch the relay (plugs only).
    Switch(SwitchState),
    /// `<device>/get`: read the device now and republish.
    Refresh,
}

/// What a plug's timer is told: run for this long (switching the plug on
/// now), or stop (switching it off now).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerCommand {
    Start(std::time::Duration),
    Cancel,
}

/// How one field of a device's state object is presented. Drivers describe
/// their readings with these; the MQTT layer turns them into discovery
/// entities. The strings are Home Assistant's vocabulary because that is
/// what users compare with, but nothing here knows about topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    /// Key in the device's JSON state object, also the entity's object id.
    pub key: &'static str,
    /// Human name of the entity.
    pub name: &'static str,
    pub unit: Option<&'static str>,
    pub device_class: Option<&'static str>,
    pub state_class: Option<&'static str>,
    /// Decimal places Home Assistant should show.
    pub precision: Option<u8>,
    /// Diagnostic entities are hidden from default dashboards.
    pub diagnostic: bool,
    /// Created disabled in Home Assistant (noisy or rarely wanted values);
    /// the user can enable them.
    pub disabled_by_default: bool,
    pub kind: FieldKind,
}

/// What kind of value a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// A number or a string.
    Sensor,
    /// `true` / `false` in the state object.
    Binary,
}

impl FieldSpec {
    /// A plain sensor; adjust the optional parts with struct update syntax.
    pub const fn sensor(key: &'static str, name: &'static str) -> Self {
        Self {
            key,
            name,
            unit: None,
            device_class: None,
            state_class: None,
            precision: None,
            diagnostic: false,
            disabled_by_default: false,
            kind: FieldKind::Sensor,
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    /// A clock before 1970 reads as the epoch.
    pub fn from_system_time(t: SystemTime) -> Self {
        Self(t.duration_since(UNIX_EPOCH).map(millis).unwrap_or(0))
    }

    /// How long after `earlier` this is; zero if it is not after it.
    pub fn since(self, earlier: Self) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    pub fn plus(self, d: Duration) -> Self {
        Self(self.0.saturating_add(millis(d)))
    }
}

/// A duration in whole milliseconds, saturating.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Rounds to `decimals` places for publishing (3 × 0.1 as 0.3, not
/// 0.30000000000000004), and never gives -0.0: a tiny negative or a sum
/// of nothing reads 0 to JSON readers and Home Assistant.
pub fn round(v: f64, decimals: u8) -> f64 {
    const POW10: [f64; 7] = [1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6];
    let p = POW10.get(usize::from(decimals)).copied().unwrap_or(1e6);
    (v * p).round() / p + 0.0
}

pub mod reading;
pub mod state_json;
pub use reading::{CellReading, InverterReading, PackReading, PlugReading, Reading};
pub use state_json::{StateJson, StateJsonError};
