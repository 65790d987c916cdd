//! The bridge's own Home Assistant device.

use super::{
    Availability, BinarySensor, Device, DeviceEntities, DiscoveryMessage, Entity, EntityCategory,
    SensorSpec, bridge_identifier, origin,
};
use crate::mqtt::topics::Topics;

/// The bridge itself as a Home Assistant device with diagnostic entities.
/// Its state object is `<base>/bridge`; its availability is `bridge/state`.
pub fn bridge_device(topics: &Topics) -> Vec<DiscoveryMessage> {
    let node_id = format!("{}_bridge", topics.base());
    let device = Device {
        identifiers: vec![bridge_identifier(topics)],
        name: "energy2mqtt Bridge".into(),
        manufacturer: Some("energy2mqtt".into()),
        model: Some("Bridge".into()),
        sw_version: Some(env!("CARGO_PKG_VERSION").into()),
        ..Device::default()
    };
    let mut b = DeviceEntities {
        topics,
        uid_prefix: node_id.clone(),
        node_id,
        device,
        origin: origin(),
        availability: vec![Availability::json_state(topics.bridge_state())],
        state_topic: topics.bridge_device_state(),
        command_topic: topics.set("bridge"),
        entities: Vec::new(),
    };
    let diag = SensorSpec::default().diagnostic();
    b.sensor(
        "version",
        "Version",
        SensorSpec {
            icon: Some("mdi:tag"),
            ..diag
        },
    );
    b.sensor(
        "uptime",
        "Uptime",
        SensorSpec {
            field: Some("uptime_s"),
            device_class: Some("duration"),
            state_class: Some("measurement"),
            unit: Some("s"),
            ..diag
        },
    );
    b.sensor(
        "devices_online",
        "Connected devices",
        SensorSpec {
            state_class: Some("measurement"),
            icon: Some("mdi:devices"),
            ..diag
        },
    );
    b.sensor(
        "mqtt_reconnects",
        "MQTT reconnects",
        SensorSpec {
            state_class: Some("total_increasing"),
            icon: Some("mdi:connection"),
            ..diag
        },
    );
    // The connection state reads the Last Will topic itself, so it must not
    // be made unavailable by that same topic.
    let mut state = b.base("connection_state", "Connection state", "binary_sensor");
    state.availability.clear();
    state.availability_mode = None;
    state.entity_category = Some(EntityCategory::Diagnostic);
    b.entities.push((
        "connection_state".into(),
        Entity::BinarySensor(BinarySensor {
            base: state,
            state_topic: topics.bridge_state(),
            value_template: "{{ value_json.state }}".into(),
            payload_on: "online".into(),
            payload_off: "offline".into(),
            device_class: Some("connectivity"),
            expire_after: None,
        }),
    ));
    b.messages()
}
