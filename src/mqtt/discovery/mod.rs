//! Home Assistant MQTT discovery: typed payloads for every entity kind the
//! bridge uses, the bridge's own device, and the clean-up of configs that
//! the current configuration no longer produces.

use serde_json::Value;

use super::topics::Topics;

mod bridge;
mod builder;
mod entity;

pub use bridge::bridge_device;
pub use builder::{DeviceEntities, NumberRange, SensorSpec};
pub use entity::{
    Availability, BinarySensor, Button, Device, DiscoveryMessage, Entity, EntityBase,
    EntityCategory, Event, Number, Origin, Select, Sensor, Switch,
};

/// Name in every payload's `origin` block; also how we recognise our own
/// retained configs at start-up.
pub const ORIGIN_NAME: &str = "energy2mqtt";

pub fn origin() -> Origin {
    Origin {
        name: ORIGIN_NAME,
        sw_version: env!("CARGO_PKG_VERSION").to_owned(),
        support_url: None,
    }
}

/// The identifier every device's `via_device` points to.
pub fn bridge_identifier(topics: &Topics) -> String {
    format!("energy2mqtt_bridge_{}", topics.base())
}

/// A configured device's identifier: stable across renames and firmware
/// updates because it is built from the base topic and the user's id.
pub fn device_identifier(topics: &Topics, device_id: &str) -> String {
    format!("energy2mqtt_{}_{device_id}", topics.base())
}

/// Is this retained config one of ours (same origin, same bridge)?
pub fn is_ours(topics: &Topics, payload: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(payload) else {
        return false;
    };
    let origin = v.get("origin").or_else(|| v.get("o"));
    let origin_ok = origin.and_then(|o| o.get("name")).and_then(Value::as_str) == Some(ORIGIN_NAME);
    let device = v.get("device").or_else(|| v.get("dev"));
    let bridge = bridge_identifier(topics);
    let device_ok = device.is_some_and(|d| {
        let via = d.get("via_device").and_then(Value::as_str) == Some(bridge.as_str());
        let is_bridge = d
            .get("identifiers")
            .and_then(Value::as_array)
            .is_some_and(|ids| ids.iter().any(|i| i.as_str() == Some(bridge.as_str())));
        via || is_bridge
    });
    origin_ok && device_ok
}

/// Retained configs we found that the current configuration does not
/// produce: clear them with an empty retained payload.
pub fn stale_topics<'a>(
    found: impl IntoIterator<Item = &'a String>,
    current: &[DiscoveryMessage],
) -> Vec<String> {
    let mut stale: Vec<String> = found
        .into_iter()
        .filter(|t| !current.iter().any(|m| &m.topic == *t))
        .cloned()
        .collect();
    stale.sort();
    stale.dedup();
    stale
}

#[cfg(test)]
mod tests;
