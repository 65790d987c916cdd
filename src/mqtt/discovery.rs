//! Home Assistant MQTT discovery: typed payloads for every entity kind the
//! bridge uses, the bridge's own device, and the clean-up of configs that
//! the current configuration no longer produces.

use serde::Serialize;
use serde_json::Value;

use super::topics::Topics;

/// Name in every payload's `origin` block; also how we recognise our own
/// retained configs at start-up.
pub const ORIGIN_NAME: &str = "energy2mqtt";

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

/// Builds entities for one device: ids, device block, availability.
#[derive(Debug, Clone)]
pub struct DeviceEntities<'t> {
    topics: &'t Topics,
    /// Node id in the discovery topic and the prefix of entity ids.
    node_id: String,
    /// `unique_id` = `<uid_prefix>_<object_id>`.
    uid_prefix: String,
    device: Device,
    origin: Origin,
    availability: Vec<Availability>,
    state_topic: String,
    /// Where switches, selects and numbers write.
    command_topic: String,
    entities: Vec<(String, Entity)>,
}

impl<'t> DeviceEntities<'t> {
    /// One of the bridge's own control devices (a balancer, the alerts):
    /// available with the bridge, with its own state and command topics.
    pub fn control(
        topics: &'t Topics,
        node_id: &str,
        mut device: Device,
        state_topic: String,
        command_topic: String,
    ) -> Self {
        device.via_device = Some(bridge_identifier(topics));
        Self {
            topics,
            node_id: node_id.to_owned(),
            uid_prefix: format!("{}_{node_id}", topics.base()),
            device,
            origin: origin(),
            availability: vec![Availability::json_state(topics.bridge_state())],
            state_topic,
            command_topic,
            entities: Vec::new(),
        }
    }

    /// A device behind the bridge: its entities are available only while
    /// both the bridge and the device are.
    pub fn new(topics: &'t Topics, device_id: &str, mut device: Device) -> Self {
        device.via_device = Some(bridge_identifier(topics));
        Self {
            topics,
            node_id: device_id.to_owned(),
            uid_prefix: format!("{}_{device_id}", topics.base()),
            device,
            origin: origin(),
            availability: vec![
                Availability::json_state(topics.bridge_state()),
                Availability::json_state(topics.availability(device_id)),
            ],
            state_topic: topics.device_state(device_id),
            command_topic: topics.set(device_id),
            entities: Vec::new(),
        }
    }

    fn base(&self, object_id: &str, name: &str, component: &str) -> EntityBase {
        EntityBase {
            name: Some(name.to_owned()),
            unique_id: format!("{}_{object_id}", self.uid_prefix),
            default_entity_id: format!("{component}.{}_{object_id}", self.node_id),
            device: self.device.clone(),
            origin: self.origin.clone(),
            availability_mode: (self.availability.len() > 1).then_some("all"),
            availability: self.availability.clone(),
            entity_category: None,
            icon: None,
            enabled_by_default: None,
            json_attributes_topic: None,
            json_attributes_template: None,
        }
    }

    fn field(field: &str) -> String {
        format!("{{{{ value_json.{field} }}}}")
    }

    /// A numeric reading from the device's state object.
    pub fn sensor(&mut self, object_id: &str, name: &str, spec: SensorSpec) {
        let mut base = self.base(object_id, name, "sensor");
        base.entity_category = spec.category;
        base.icon = spec.icon;
        let sensor = Sensor {
            base,
            state_topic: self.state_topic.clone(),
            value_template: Self::field(spec.field.unwrap_or(object_id)),
            device_class: spec.device_class,
            state_class: spec.state_class,
            unit_of_measurement: spec.unit,
            suggested_display_precision: spec.precision,
            expire_after: None,
        };
        self.entities
            .push((object_id.to_owned(), Entity::Sensor(sensor)));
    }

    pub fn binary_sensor(
        &mut self,
        object_id: &str,
        name: &str,
        device_class: Option<&'static str>,
        category: Option<EntityCategory>,
    ) {
        let mut base = self.base(object_id, name, "binary_sensor");
        base.entity_category = category;
        let e = BinarySensor {
            base,
            state_topic: self.state_topic.clone(),
            value_template: Self::field(object_id),
            payload_on: Value::Bool(true),
            payload_off: Value::Bool(false),
            device_class,
            expire_after: None,
        };
        self.entities
            .push((object_id.to_owned(), Entity::BinarySensor(e)));
    }

    /// The entity a driver's field description asks for.
    pub fn field_spec(&mut self, f: &crate::model::FieldSpec) {
        let category = f.diagnostic.then_some(EntityCategory::Diagnostic);
        match f.kind {
            crate::model::FieldKind::Binary => {
                self.binary_sensor(f.key, f.name, f.device_class, category)
            }
            crate::model::FieldKind::Sensor => self.sensor(
                f.key,
                f.name,
                SensorSpec {
                    field: None,
                    device_class: f.device_class,
                    state_class: f.state_class,
                    unit: f.unit,
                    precision: f.precision,
                    category,
                    icon: None,
                },
            ),
        }
        if f.disabled_by_default {
            if let Some((_, e)) = self.entities.last_mut() {
                e.base_mut().enabled_by_default = Some(false);
            }
        }
    }

    /// An on/off switch driven by `<device>/set` with `{"state":"ON"}`.
    pub fn switch(&mut self, object_id: &str, name: Option<&str>) {
        let mut base = self.base(object_id, name.unwrap_or(object_id), "switch");
        base.name = name.map(str::to_owned);
        let e = Switch {
            base,
            state_topic: self.state_topic.clone(),
            value_template: Self::field("state"),
            command_topic: self.command_topic.clone(),
            payload_on: r#"{"state":"ON"}"#.into(),
            payload_off: r#"{"state":"OFF"}"#.into(),
            state_on: "ON".into(),
            state_off: "OFF".into(),
            device_class: Some("outlet"),
        };
        self.entities
            .push((object_id.to_owned(), Entity::Switch(e)));
    }

    /// A choice written as `{"<field>":"<option>"}` to `<device>/set`.
    pub fn select(&mut self, object_id: &str, name: &str, field: &str, options: &[&str]) {
        let mut base = self.base(object_id, name, "select");
        base.entity_category = Some(EntityCategory::Config);
        let e = Select {
            base,
            state_topic: self.state_topic.clone(),
            value_template: Self::field(field),
            command_topic: self.command_topic.clone(),
            command_template: format!("{{\"{field}\": \"{{{{ value }}}}\"}}"),
            options: options.iter().map(|s| (*s).to_owned()).collect(),
        };
        self.entities
            .push((object_id.to_owned(), Entity::Select(e)));
    }

    /// A value written as `{"<field>":<number>}` to `<device>/set`.
    pub fn number(&mut self, object_id: &str, name: &str, field: &str, range: NumberRange) {
        let mut base = self.base(object_id, name, "number");
        base.entity_category = Some(EntityCategory::Config);
        let e = Number {
            base,
            state_topic: self.state_topic.clone(),
            value_template: Self::field(field),
            command_topic: self.command_topic.clone(),
            command_template: format!("{{\"{field}\": {{{{ value }}}}}}"),
            min: range.min,
            max: range.max,
            step: range.step,
            mode: "box",
            unit_of_measurement: range.unit,
            device_class: range.device_class,
        };
        self.entities
            .push((object_id.to_owned(), Entity::Number(e)));
    }

    /// A number whose state is at `state_path` (`a.b`) and which is written
    /// as `{"<field>": <number>}`.
    pub fn number_at(
        &mut self,
        object_id: &str,
        name: &str,
        field: &str,
        state_path: &str,
        range: NumberRange,
    ) {
        self.number(object_id, name, field, range);
        if let Some((_, Entity::Number(e))) = self.entities.last_mut() {
            e.value_template = Self::field(state_path);
        }
    }

    /// A switch over a JSON boolean field, written as `{"<field>": true}`.
    pub fn flag_switch(&mut self, object_id: &str, name: &str, field: &str) {
        let mut base = self.base(object_id, name, "switch");
        base.entity_category = Some(EntityCategory::Config);
        let e = Switch {
            base,
            state_topic: self.state_topic.clone(),
            value_template: Self::field(field),
            command_topic: self.command_topic.clone(),
            payload_on: format!("{{\"{field}\": true}}"),
            payload_off: format!("{{\"{field}\": false}}"),
            // What the template renders for a JSON boolean.
            state_on: "True".into(),
            state_off: "False".into(),
            device_class: Some("switch"),
        };
        self.entities
            .push((object_id.to_owned(), Entity::Switch(e)));
    }

    /// A button that writes `payload` to the command topic.
    pub fn command_button(&mut self, object_id: &str, name: &str, payload: &str) {
        let base = self.base(object_id, name, "button");
        let e = Button {
            base,
            command_topic: self.command_topic.clone(),
            payload_press: payload.into(),
            device_class: None,
        };
        self.entities
            .push((object_id.to_owned(), Entity::Button(e)));
    }

    /// A binary sensor over a field that is not the object id.
    pub fn binary_field(
        &mut self,
        object_id: &str,
        name: &str,
        field: &str,
        device_class: Option<&'static str>,
    ) {
        self.binary_sensor(object_id, name, device_class, None);
        if let Some((_, Entity::BinarySensor(e))) = self.entities.last_mut() {
            e.value_template = Self::field(field);
        }
    }

    /// A button that publishes `payload` to the device's `get` topic.
    pub fn refresh_button(&mut self, object_id: &str, name: &str) {
        let mut base = self.base(object_id, name, "button");
        base.entity_category = Some(EntityCategory::Diagnostic);
        let e = Button {
            base,
            command_topic: self.topics.get(&self.node_id),
            payload_press: "{}".into(),
            device_class: None,
        };
        self.entities
            .push((object_id.to_owned(), Entity::Button(e)));
    }

    /// An event entity fed from `state_topic` with `{"event_type": ...}`.
    pub fn event(&mut self, object_id: &str, name: &str, state_topic: String, types: &[&str]) {
        let base = self.base(object_id, name, "event");
        let e = Event {
            base,
            state_topic,
            value_template: "{{ value_json | tojson }}".into(),
            event_types: types.iter().map(|s| (*s).to_owned()).collect(),
            device_class: None,
        };
        self.entities.push((object_id.to_owned(), Entity::Event(e)));
    }

    /// The retained discovery configs of this device, in a stable order.
    pub fn messages(&self) -> Vec<DiscoveryMessage> {
        self.entities
            .iter()
            .map(|(object_id, e)| DiscoveryMessage {
                topic: self
                    .topics
                    .discovery_config(e.component(), &self.node_id, object_id),
                payload: e.to_json(),
            })
            .collect()
    }

    pub fn entities(&self) -> impl Iterator<Item = &Entity> {
        self.entities.iter().map(|(_, e)| e)
    }
}

/// How a sensor reads and presents its value.
#[derive(Debug, Clone, Copy, Default)]
pub struct SensorSpec {
    /// JSON field in the state object; the object id when `None`.
    pub field: Option<&'static str>,
    pub device_class: Option<&'static str>,
    pub state_class: Option<&'static str>,
    pub unit: Option<&'static str>,
    pub precision: Option<u8>,
    pub category: Option<EntityCategory>,
    pub icon: Option<&'static str>,
}

impl SensorSpec {
    pub fn measurement(device_class: &'static str, unit: &'static str) -> Self {
        Self {
            device_class: Some(device_class),
            state_class: Some("measurement"),
            unit: Some(unit),
            ..Self::default()
        }
    }

    /// An energy counter the Energy dashboard accepts.
    pub fn energy_total() -> Self {
        Self {
            device_class: Some("energy"),
            state_class: Some("total_increasing"),
            unit: Some("kWh"),
            precision: Some(2),
            ..Self::default()
        }
    }

    pub fn diagnostic(mut self) -> Self {
        self.category = Some(EntityCategory::Diagnostic);
        self
    }
}

#[derive(Debug, Clone, Copy)]
pub struct NumberRange {
    pub min: f64,
    pub max: f64,
    pub step: f64,
    pub unit: Option<&'static str>,
    pub device_class: Option<&'static str>,
}

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
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics::new("energy2mqtt", "homeassistant", "homeassistant/status")
    }

    #[test]
    fn device_entities_point_to_bridge_and_need_both_availabilities() {
        let t = topics();
        let mut d = DeviceEntities::new(
            &t,
            "inverter",
            Device {
                identifiers: vec!["energy2mqtt_inverter".into()],
                name: "Inverter".into(),
                ..Device::default()
            },
        );
        d.sensor(
            "pv_power",
            "PV power",
            SensorSpec::measurement("power", "W"),
        );
        d.sensor("pv_energy_total", "PV energy", SensorSpec::energy_total());
        d.switch("switch", None);
        let msgs = d.messages();
        assert_eq!(
            msgs[0].topic,
            "homeassistant/sensor/inverter/pv_power/config"
        );
        let p = &msgs[0].payload;
        assert_eq!(p["unique_id"], "energy2mqtt_inverter_pv_power");
        assert_eq!(p["default_entity_id"], "sensor.inverter_pv_power");
        assert_eq!(p["device"]["via_device"], "energy2mqtt_bridge_energy2mqtt");
        assert_eq!(p["availability_mode"], "all");
        assert_eq!(p["availability"][0]["topic"], "energy2mqtt/bridge/state");
        assert_eq!(
            p["availability"][1]["topic"],
            "energy2mqtt/inverter/availability"
        );
        assert_eq!(p["state_topic"], "energy2mqtt/inverter");
        assert_eq!(p["value_template"], "{{ value_json.pv_power }}");
        assert_eq!(p["state_class"], "measurement");
        assert_eq!(msgs[1].payload["state_class"], "total_increasing");
        assert_eq!(msgs[1].payload["unit_of_measurement"], "kWh");
        assert_eq!(msgs[2].payload["command_topic"], "energy2mqtt/inverter/set");
        // Commands at QoS 1, so the broker keeps them while we reconnect.
        assert_eq!(msgs[2].payload["qos"], 1);
        assert!(msgs[0].payload.get("qos").is_none());
        assert!(is_ours(&t, msgs[0].payload.to_string().as_bytes()));
    }

    #[test]
    fn bridge_device_is_diagnostic_and_recognised_as_ours() {
        let t = topics();
        let msgs = bridge_device(&t);
        assert!(msgs.len() >= 5);
        for m in &msgs {
            assert_eq!(m.payload["entity_category"], "diagnostic", "{}", m.topic);
            assert!(m.topic.starts_with("homeassistant/"));
            assert!(m.payload["device"].get("via_device").is_none());
            assert!(is_ours(&t, m.payload.to_string().as_bytes()));
        }
        let other = Topics::new("other", "homeassistant", "homeassistant/status");
        assert!(!is_ours(&other, msgs[0].payload.to_string().as_bytes()));
        assert!(!is_ours(&t, br#"{"origin":{"name":"Zigbee2MQTT"}}"#));
        assert!(!is_ours(&t, b"not json"));
    }

    #[test]
    fn stale_is_found_minus_current() {
        let current = vec![DiscoveryMessage {
            topic: "a".into(),
            payload: Value::Null,
        }];
        let found = ["a".to_string(), "b".to_string(), "b".to_string()];
        assert_eq!(stale_topics(found.iter(), &current), vec!["b".to_string()]);
    }
}
