//! The typed discovery payloads: origin, device and availability blocks,
//! every entity kind and the config message as it goes on the wire.

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Origin {
    pub name: &'static str,
    pub sw_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub support_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Device {
    pub identifiers: Vec<String>,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sw_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hw_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub configuration_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via_device: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Availability {
    pub topic: String,
    pub value_template: &'static str,
}

impl Availability {
    /// Our availability payloads are JSON `{"state":"online"}`.
    pub fn json_state(topic: String) -> Self {
        Self {
            topic,
            value_template: "{{ value_json.state }}",
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EntityCategory {
    Diagnostic,
    Config,
}

/// Keys every entity carries.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EntityBase {
    pub name: Option<String>,
    pub unique_id: String,
    pub default_entity_id: String,
    pub device: Device,
    pub origin: Origin,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub availability: Vec<Availability>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub availability_mode: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity_category: Option<EntityCategory>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icon: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled_by_default: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json_attributes_topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json_attributes_template: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sensor {
    #[serde(flatten)]
    pub base: EntityBase,
    pub state_topic: String,
    pub value_template: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_class: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_class: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit_of_measurement: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggested_display_precision: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expire_after: Option<u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BinarySensor {
    #[serde(flatten)]
    pub base: EntityBase,
    pub state_topic: String,
    pub value_template: String,
    /// JSON booleans, as zigbee2mqtt sends them: Home Assistant reads them
    /// as the strings "True"/"False", which is what the template renders
    /// for a JSON `true`/`false`. The strings "true"/"false" would never
    /// match.
    pub payload_on: Value,
    pub payload_off: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_class: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expire_after: Option<u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Switch {
    #[serde(flatten)]
    pub base: EntityBase,
    pub state_topic: String,
    pub value_template: String,
    pub command_topic: String,
    pub payload_on: String,
    pub payload_off: String,
    pub state_on: String,
    pub state_off: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_class: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Number {
    #[serde(flatten)]
    pub base: EntityBase,
    pub state_topic: String,
    pub value_template: String,
    pub command_topic: String,
    pub command_template: String,
    pub min: f64,
    pub max: f64,
    pub step: f64,
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit_of_measurement: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_class: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Select {
    #[serde(flatten)]
    pub base: EntityBase,
    pub state_topic: String,
    pub value_template: String,
    pub command_topic: String,
    pub command_template: String,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Button {
    #[serde(flatten)]
    pub base: EntityBase,
    pub command_topic: String,
    pub payload_press: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_class: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    #[serde(flatten)]
    pub base: EntityBase,
    pub state_topic: String,
    pub value_template: String,
    pub event_types: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_class: Option<&'static str>,
}

/// One entity of any kind, with the ids that place its config topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Entity {
    Sensor(Sensor),
    BinarySensor(BinarySensor),
    Switch(Switch),
    Number(Number),
    Select(Select),
    Button(Button),
    Event(Event),
}

impl Entity {
    /// The HA integration (`homeassistant/<component>/...`).
    pub fn component(&self) -> &'static str {
        match self {
            Self::Sensor(_) => "sensor",
            Self::BinarySensor(_) => "binary_sensor",
            Self::Switch(_) => "switch",
            Self::Number(_) => "number",
            Self::Select(_) => "select",
            Self::Button(_) => "button",
            Self::Event(_) => "event",
        }
    }

    pub fn base(&self) -> &EntityBase {
        match self {
            Self::Sensor(e) => &e.base,
            Self::BinarySensor(e) => &e.base,
            Self::Switch(e) => &e.base,
            Self::Number(e) => &e.base,
            Self::Select(e) => &e.base,
            Self::Button(e) => &e.base,
            Self::Event(e) => &e.base,
        }
    }

    pub fn base_mut(&mut self) -> &mut EntityBase {
        match self {
            Self::Sensor(e) => &mut e.base,
            Self::BinarySensor(e) => &mut e.base,
            Self::Switch(e) => &mut e.base,
            Self::Number(e) => &mut e.base,
            Self::Select(e) => &mut e.base,
            Self::Button(e) => &mut e.base,
            Self::Event(e) => &mut e.base,
        }
    }

    pub fn to_json(&self) -> Value {
        let v = match self {
            Self::Sensor(e) => serde_json::to_value(e),
            Self::BinarySensor(e) => serde_json::to_value(e),
            Self::Switch(e) => serde_json::to_value(e),
            Self::Number(e) => serde_json::to_value(e),
            Self::Select(e) => serde_json::to_value(e),
            Self::Button(e) => serde_json::to_value(e),
            Self::Event(e) => serde_json::to_value(e),
        };
        // Plain structs of strings and numbers cannot fail to serialise.
        let mut v = v.unwrap_or(Value::Null);
        // Home Assistant publishes commands with the entity's `qos` (0 by
        // default). At QoS 1 the broker queues them in the bridge's
        // persistent session while it reconnects; at QoS 0 they are lost.
        if let Value::Object(m) = &mut v {
            if m.contains_key("command_topic") {
                m.insert("qos".into(), 1.into());
            }
        }
        v
    }
}

/// A discovery config as it goes on the wire.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiscoveryMessage {
    pub topic: String,
    pub payload: Value,
}
