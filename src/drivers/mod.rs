//! The driver contract. Each driver speaks one protocol, knows nothing of
//! MQTT, sends [`DriverEvent`]s and takes [`DeviceCommand`]s.

pub mod deye;

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::model::DeviceCommand;

/// What a driver reports about one device.
#[derive(Debug, Clone, PartialEq)]
pub enum DriverEvent {
    /// Fresh readings: field name → number, string or bool, in the units of
    /// docs/DEVICES.md.
    Readings {
        device: String,
        values: Map<String, Value>,
    },
    /// The device became reachable or unreachable.
    Availability { device: String, online: bool },
    /// A command could not be carried out.
    CommandFailed { device: String, reason: String },
}

/// How the bridge reaches the task that owns a device.
#[derive(Debug, Clone)]
pub struct DriverHandle {
    pub commands: mpsc::Sender<DeviceCommand>,
}
