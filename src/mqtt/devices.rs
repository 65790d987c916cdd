//! Discovery composed from what each driver describes of its devices
//! ([`crate::drivers::Description`]): the configured devices in order, each
//! with its device block, its entities and, for plugs, the switch and the
//! control entities; then the bridge's own devices (balancers, alerts, the
//! site). Which model has which entities is the driver's knowledge, not
//! this module's.

use std::collections::HashMap;

use crate::config::{Config, PlugConnection};
use crate::drivers::{Assume, Description, DeviceInfo};
use crate::model::FieldSpec;
use crate::mqtt::discovery::{self, DiscoveryMessage};
use crate::mqtt::topics::Topics;

/// The device id of the summed inverters (reserved in the configuration).
pub const SITE_ID: &str = "site";

/// What devices have told the bridge about themselves since start.
#[derive(Debug, Clone, Default)]
pub struct Known {
    pub identities: HashMap<String, DeviceInfo>,
    /// Entities of devices whose entities depend on the device.
    pub fields: HashMap<String, Vec<FieldSpec>>,
}

impl Known {
    /// Whether the configured device `id` has said everything its entities
    /// depend on. Anything that is not a configured device (the bridge's
    /// own devices, foreign ids) depends on nothing.
    pub fn describes(&self, config: &Config, id: &str) -> bool {
        describe(config, self, id, Assume::Common).is_none_or(|d| d.complete)
    }
}

/// What the driver of configured device `id` says of it.
fn describe(config: &Config, known: &Known, id: &str, assume: Assume) -> Option<Description> {
    let info = known.identities.get(id).cloned().unwrap_or_default();
    if config.bms.iter().any(|b| b.id == id) {
        let fields = known.fields.get(id).map(Vec::as_slice);
        return Some(crate::drivers::jkbms::task::describe(&info, fields));
    }
    if config.inverter.iter().any(|i| i.id == id) {
        return Some(crate::drivers::deye::describe());
    }
    let plug = config.plug.iter().find(|p| p.id == id)?;
    Some(match plug.connection {
        PlugConnection::Tapo(_) => crate::drivers::tapo::describe(&info, assume),
        PlugConnection::Shelly(_) => crate::drivers::shelly::describe(),
    })
}

/// Every discovery config the configuration may produce, with plugs of
/// unknown model assumed to meter (empty when discovery is off). What
/// `energy2mqtt discovery` prints.
pub fn discovery_messages(
    config: &Config,
    topics: &Topics,
    known: &Known,
) -> Vec<DiscoveryMessage> {
    compose(config, topics, known, Assume::Any)
}

/// The discovery configs the running bridge publishes: only what the
/// devices are known to have (empty when discovery is off, so the clean-up
/// removes what an earlier run left).
pub fn published_discovery(
    config: &Config,
    topics: &Topics,
    known: &Known,
) -> Vec<DiscoveryMessage> {
    compose(config, topics, known, Assume::Common)
}

fn compose(
    config: &Config,
    topics: &Topics,
    known: &Known,
    assume: Assume,
) -> Vec<DiscoveryMessage> {
    if !config.homeassistant.discovery {
        return Vec::new();
    }
    let mut out = discovery::bridge_device(topics);
    let mut device = |id: &str, name: &Option<String>, plug: Option<&crate::config::PlugConfig>| {
        let Some(description) = describe(config, known, id, assume) else {
            return;
        };
        let info = known.identities.get(id).cloned().unwrap_or_default();
        let block = device_block(topics, id, name, info, &description);
        let mut entities = discovery::DeviceEntities::new(topics, id, block);
        if let Some(plug) = plug {
            // The switch is the device's main feature: it takes the
            // device's name in Home Assistant.
            entities.switch("switch", None);
            crate::mqtt::control_entities::plug_entities(&mut entities, plug);
        }
        for f in &description.fields {
            entities.field_spec(f);
        }
        entities.refresh_button("refresh", "Refresh");
        out.extend(entities.messages());
    };
    for pack in &config.bms {
        device(&pack.id, &pack.name, None);
    }
    for inv in &config.inverter {
        device(&inv.id, &inv.name, None);
    }
    for plug in &config.plug {
        device(&plug.id, &plug.name, Some(plug));
    }
    out.extend(crate::mqtt::control_entities::balancer_devices(
        config, topics,
    ));
    out.extend(crate::mqtt::control_entities::alerts_device(
        &crate::core::alerts::Rules::from_config(&config.alerts),
        topics,
    ));
    if config.inverter.len() > 1 {
        let device = discovery::Device {
            identifiers: vec![discovery::device_identifier(topics, SITE_ID)],
            name: "Site".into(),
            manufacturer: Some("energy2mqtt".into()),
            model: Some(format!("Sum of {} inverters", config.inverter.len())),
            ..Default::default()
        };
        let mut entities = discovery::DeviceEntities::new(topics, SITE_ID, device);
        for f in &crate::core::site::fields() {
            entities.field_spec(f);
        }
        out.extend(entities.messages());
    }
    out
}

/// A configured device's HA device block: what it said about itself,
/// else the driver's defaults until it has.
fn device_block(
    topics: &Topics,
    id: &str,
    name: &Option<String>,
    info: DeviceInfo,
    description: &Description,
) -> discovery::Device {
    let mut identifiers = vec![discovery::device_identifier(topics, id)];
    identifiers.extend(description.identifiers.iter().cloned());
    discovery::Device {
        identifiers,
        name: name.clone().unwrap_or_else(|| id.to_owned()),
        manufacturer: Some(
            info.manufacturer
                .unwrap_or_else(|| description.manufacturer.into()),
        ),
        model: Some(info.model.unwrap_or_else(|| description.model.into())),
        serial_number: info.serial_number,
        sw_version: info.sw_version,
        hw_version: info.hw_version,
        ..Default::default()
    }
}
