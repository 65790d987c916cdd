//! What the drivers report: readings into the registry and out as state
//! objects, identities and fields into discovery, availability and
//! problems as events; the `site` totals over several inverters.

use serde_json::Map;
use time::OffsetDateTime;

use super::Bridge;
use crate::drivers::DriverEvent;
use crate::model::DeviceKind;
use crate::mqtt::devices::SITE_ID;
use crate::mqtt::outbox::{Class, Message};
use crate::mqtt::payloads;

impl Bridge {
    pub(crate) fn on_driver_event(&mut self, ev: DriverEvent) {
        match ev {
            DriverEvent::Readings { device, reading } => {
                let now = crate::clock::now_utc();
                if self.registry.record(&device, reading, now) {
                    self.republish_device(&device);
                    let kind = self.registry.get(&device).map(|d| d.kind);
                    if kind == Some(DeviceKind::Inverter) {
                        self.publish_site(now);
                    }
                    // React to an overload on the sample that shows it,
                    // not on the next tick.
                    if matches!(kind, Some(DeviceKind::Inverter | DeviceKind::Plug)) {
                        self.control_step();
                    }
                }
            }
            DriverEvent::Identity { device, info } => {
                if self.known.identities.get(&device) != Some(&info) {
                    self.known.identities.insert(device, info);
                    self.refresh_discovery();
                }
            }
            DriverEvent::Fields { device, fields } => {
                if self.known.fields.get(&device) != Some(&fields) {
                    self.known.fields.insert(device, fields);
                    self.refresh_discovery();
                }
            }
            DriverEvent::Problem { device, message } => {
                let mut fields = Map::new();
                fields.insert("error".into(), message.into());
                self.outbox.push(Message::transient(
                    self.topics.bridge_event(),
                    payloads::event("device_error", Some(&device), fields),
                ));
            }
            DriverEvent::Availability { device, online } => {
                let was = self.registry.get(&device).and_then(|d| d.online);
                if self.registry.set_online(&device, online) {
                    if online && was == Some(false) {
                        tracing::info!(device = %device, "device reachable again");
                    }
                    if self.registry.get(&device).map(|d| d.kind) == Some(DeviceKind::Inverter) {
                        self.publish_site(crate::clock::now_utc());
                    }
                    self.outbox.push_if_changed(Message::retained(
                        Class::Availability,
                        self.topics.availability(&device),
                        payloads::availability(online),
                    ));
                    let kind = if online {
                        "device_connected"
                    } else {
                        "device_lost"
                    };
                    self.outbox.push(Message::transient(
                        self.topics.bridge_event(),
                        payloads::event(kind, Some(&device), Map::new()),
                    ));
                    self.publish_bridge_state();
                }
            }
            DriverEvent::CommandFailed { device, reason } => {
                let topic = self.topics.set(&device);
                self.command_error(&device, &topic, reason);
            }
        }
    }

    /// The `site` device: only with more than one inverter.
    pub(crate) fn publish_site(&mut self, now: OffsetDateTime) {
        if self.config.inverter.len() < 2 {
            return;
        }
        let reporting: Vec<&crate::model::InverterReading> = self
            .config
            .inverter
            .iter()
            .filter_map(|inv| self.registry.get(&inv.id))
            .filter(|d| d.online == Some(true) && d.last_seen.is_some())
            .filter_map(|d| d.inverter())
            .collect();
        let any_online = !reporting.is_empty();
        let totals = crate::core::site::totals(reporting);
        self.outbox.push(Message::retained(
            Class::State,
            self.topics.device_state(SITE_ID),
            payloads::device_state(&totals, now),
        ));
        self.outbox.push_if_changed(Message::retained(
            Class::Availability,
            self.topics.availability(SITE_ID),
            payloads::availability(any_online),
        ));
    }

    pub(crate) fn republish_device(&mut self, device: &str) {
        let Some(entry) = self.registry.get(device) else {
            return;
        };
        if let Some(seen) = entry.last_seen {
            // Written straight from the typed reading (no map per report);
            // the map is the definition and the way if the writer refuses.
            let state = entry
                .state_json(&payloads::timestamp(seen))
                .unwrap_or_else(|e| {
                    tracing::debug!(device, error = %e, "state written through the map");
                    payloads::device_state(&entry.state(), seen)
                });
            self.outbox.push(Message::retained(
                Class::State,
                self.topics.device_state(device),
                state,
            ));
        }
        if let Some(online) = entry.online {
            self.outbox.push_if_changed(Message::retained(
                Class::Availability,
                self.topics.availability(device),
                payloads::availability(online),
            ));
        }
    }
}
