//! Shared vocabulary of drivers, core and the MQTT surface.

use serde::Serialize;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PlugMode {
    Auto,
    On,
    Off,
}

/// A command addressed to one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceCommand {
    /// `<device>/set`: any of the fields may be given.
    Set {
        state: Option<SwitchState>,
        mode: Option<PlugMode>,
    },
    /// `<device>/get`: read the device now and republish.
    Refresh,
}
