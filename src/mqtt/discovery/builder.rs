//! [`DeviceEntities`], the per-device entity builder, and the specs its
//! sensors and numbers take.

use serde_json::Value;

use super::{
    Availability, BinarySensor, Button, Device, DiscoveryMessage, Entity, EntityBase,
    EntityCategory, Event, Number, Origin, Select, Sensor, Switch, bridge_identifier, origin,
};
use crate::mqtt::topics::Topics;

/// Builds entities for one device: ids, device block, availability.
#[derive(Debug, Clone)]
pub struct DeviceEntities<'t> {
    pub(super) topics: &'t Topics,
    /// Node id in the discovery topic and the prefix of entity ids.
    pub(super) node_id: String,
    /// `unique_id` = `<uid_prefix>_<object_id>`.
    pub(super) uid_prefix: String,
    pub(super) device: Device,
    pub(super) origin: Origin,
    pub(super) availability: Vec<Availability>,
    pub(super) state_topic: String,
    /// Where switches, selects and numbers write.
    pub(super) command_topic: String,
    pub(super) entities: Vec<(String, Entity)>,
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

    pub(super) fn base(&self, object_id: &str, name: &str, component: &str) -> EntityBase {
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
