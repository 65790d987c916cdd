//! `bridge/info` (who this bridge is, with its redacted configuration)
//! and the bridge's own state object (uptime and counters).

use serde_json::{Value, json};

use super::Bridge;
use crate::mqtt::outbox::{Class, Message};
use crate::mqtt::payloads;

/// This machine's name, for `bridge/info` (so that a second instance can
/// say where the first one runs).
fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

impl Bridge {
    pub(crate) fn bridge_info(&self) -> Value {
        let devices: Vec<Value> = self
            .registry
            .iter()
            .map(|(id, d)| json!({"id": id, "kind": d.kind, "name": d.name, "online": d.online}))
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "base_topic": self.topics.base(),
            "client_id": self.config.mqtt.client_id,
            "host": hostname(),
            "started_at": payloads::timestamp(self.started_at),
            "devices": devices,
            "config": self.config.redacted_json(),
        })
    }

    pub(crate) fn publish_bridge_info(&mut self) {
        self.outbox.push(Message::retained(
            Class::Info,
            self.topics.bridge_info(),
            self.bridge_info().to_string(),
        ));
    }

    pub(crate) fn publish_bridge_state(&mut self) {
        let state = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.started.elapsed().as_secs(),
            "devices_configured": self.registry.len(),
            "devices_online": self.registry.online_count(),
            "mqtt_reconnects": self.reconnects,
            "commands_rejected": self.commands_rejected,
            "commands_superseded": self
                .drivers
                .values()
                .map(|d| d.commands.superseded())
                .sum::<u64>(),
            "outbox_dropped": self.outbox.with(|q| q.dropped()),
            "incoming_dropped": self
                .incoming_dropped
                .load(std::sync::atomic::Ordering::Relaxed),
            "last_seen": payloads::timestamp(crate::clock::now_utc()),
        });
        self.outbox.push(Message::retained(
            Class::State,
            self.topics.bridge_device_state(),
            state.to_string(),
        ));
    }
}
