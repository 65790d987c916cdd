//! The configured devices and the latest facts about each of them.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::model::{DeviceKind, Reading, StateJson, StateJsonError};

#[derive(Debug, Clone, PartialEq)]
pub struct DeviceEntry {
    pub kind: DeviceKind,
    pub name: String,
    /// `None` until the driver has said anything.
    pub online: Option<bool>,
    /// The latest report, `None` until the device has sent one.
    pub reading: Option<Reading>,
    /// What the bridge itself adds to the state object (a plug's mode,
    /// whether it is shed).
    pub annotations: Map<String, Value>,
    pub last_seen: Option<OffsetDateTime>,
}

impl DeviceEntry {
    /// The state object published on `<base>/<id>` (without `last_seen`).
    pub fn state(&self) -> Map<String, Value> {
        let mut m = self
            .reading
            .as_ref()
            .map(Reading::to_state)
            .unwrap_or_default();
        m.extend(self.annotations.clone());
        m
    }

    /// The state object with `last_seen` (already formatted: the format is
    /// the topic contract's, not the core's) as JSON text: the same bytes
    /// as serialising [`Self::state`] with `last_seen` inserted, written
    /// without building the map (the bridge does this for every report).
    /// An error means a reading type the writer cannot take; the caller
    /// can fall back to the map.
    pub fn state_json(&self, last_seen: &str) -> Result<String, StateJsonError> {
        // A 16-cell pack has about 70 entries, a plug about 15.
        let mut out = StateJson::with_capacity(match self.kind {
            DeviceKind::Bms => 80,
            DeviceKind::Inverter | DeviceKind::Plug => 24,
        });
        if let Some(r) = &self.reading {
            r.write_state(&mut out)?;
        }
        out.fields(&self.annotations)?;
        out.entry("last_seen", last_seen)?;
        out.finish()
    }

    pub fn pack(&self) -> Option<&crate::model::PackReading> {
        self.reading.as_ref()?.pack()
    }

    pub fn inverter(&self) -> Option<&crate::model::InverterReading> {
        self.reading.as_ref()?.inverter()
    }

    pub fn plug(&self) -> Option<&crate::model::PlugReading> {
        self.reading.as_ref()?.plug()
    }
}

/// Devices by id, in id order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registry {
    devices: BTreeMap<String, DeviceEntry>,
}

impl Registry {
    pub fn from_config(config: &crate::config::Config) -> Self {
        let devices = config
            .devices()
            .into_iter()
            .map(|(id, kind, name, _)| {
                (
                    id,
                    DeviceEntry {
                        kind,
                        name,
                        online: None,
                        reading: None,
                        annotations: Map::new(),
                        last_seen: None,
                    },
                )
            })
            .collect();
        Self { devices }
    }

    pub fn get(&self, id: &str) -> Option<&DeviceEntry> {
        self.devices.get(id)
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.devices.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &DeviceEntry)> {
        self.devices.iter()
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Devices whose driver last reported them reachable.
    pub fn online_count(&self) -> usize {
        self.devices
            .values()
            .filter(|d| d.online == Some(true))
            .count()
    }

    /// Records a reading; returns false for an unknown device.
    pub fn record(&mut self, id: &str, reading: Reading, now: OffsetDateTime) -> bool {
        match self.devices.get_mut(id) {
            Some(d) => {
                match &mut d.reading {
                    Some(old) => old.merge(reading),
                    slot => *slot = Some(reading),
                }
                d.last_seen = Some(now);
                true
            }
            None => false,
        }
    }

    /// Merges facts the bridge itself keeps about a device (a plug's mode,
    /// whether it is shed) into its state object without touching
    /// `last_seen`, which says when the device last spoke.
    pub fn annotate(&mut self, id: &str, values: Map<String, Value>) -> bool {
        match self.devices.get_mut(id) {
            Some(d) => {
                d.annotations.extend(values);
                true
            }
            None => false,
        }
    }

    /// Records reachability; returns whether it changed.
    pub fn set_online(&mut self, id: &str, online: bool) -> bool {
        match self.devices.get_mut(id) {
            Some(d) if d.online != Some(online) => {
                d.online = Some(online);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_online_devices_and_merges_readings() {
        let config: crate::config::Config = toml::from_str(
            r#"
            [tapo]
            email = "a@b.c"
            password = "x"
            [[plug]]
            id = "boiler"
            host = "127.0.0.1"
            [[plug]]
            id = "fridge"
            host = "127.0.0.2"
            "#,
        )
        .unwrap();
        let mut r = Registry::from_config(&config);
        assert_eq!(r.len(), 2);
        assert_eq!(r.online_count(), 0);
        assert!(r.set_online("boiler", true));
        assert!(!r.set_online("boiler", true));
        assert!(!r.set_online("ghost", true));
        assert_eq!(r.online_count(), 1);
        let now = OffsetDateTime::UNIX_EPOCH;
        let reading = Reading::Plug(crate::model::PlugReading {
            power_w: Some(5.0),
            ..Default::default()
        });
        assert!(r.record("fridge", reading.clone(), now));
        assert!(!r.record("ghost", reading, now));
        assert_eq!(r.get("fridge").unwrap().state()["power"], 5.0);
    }
}
