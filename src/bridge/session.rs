//! The bridge's life on the broker: what it publishes first, each new
//! session, Home Assistant's birth, the clean-up of configs the
//! configuration no longer produces, and `health.json`.

use std::collections::BTreeSet;

use rumqttc::{QoS, SubscribeFilter};
use tokio::time::Instant;

use super::{Bridge, Cleanup};
use crate::mqtt::devices::published_discovery;
use crate::mqtt::discovery;
use crate::mqtt::outbox::{Class, Message};
use crate::mqtt::{payloads, settings};

impl Bridge {
    /// Everything retained the bridge publishes before any device speaks.
    pub(crate) fn publish_initial(&mut self) {
        for m in &self.discovery {
            self.outbox.push(Message::retained(
                Class::Discovery,
                m.topic.clone(),
                m.payload.to_string(),
            ));
        }
        self.publish_bridge_info();
        self.publish_bridge_state();
        let startup = std::mem::take(&mut self.control_startup);
        self.apply(startup);
    }

    /// Keeps `health.json` (for `energy2mqtt health`) true: written only
    /// when the state changes, off the async threads.
    pub(crate) fn set_healthy(&mut self, connected: bool) {
        if self.healthy == Some(connected) {
            return;
        }
        self.healthy = Some(connected);
        let store = crate::storage::Store::new(self.config.storage.dir.clone());
        let record = crate::health::Health {
            pid: std::process::id(),
            connected,
            since: payloads::timestamp(crate::clock::now_utc()),
            broker: settings::endpoint(&self.config)
                .map(|e| e.to_string())
                .unwrap_or_default(),
        };
        // Blocking writes may run in any order: each writes the latest
        // record under one lock, so the file always ends with the newest.
        let latest = self.health_latest.clone();
        *latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(record);
        tokio::task::spawn_blocking(move || {
            let mut guard = latest.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(record) = guard.take() {
                if let Err(e) = crate::health::write(&store, &record) {
                    tracing::warn!(error = %e, "cannot write the health file");
                }
            }
        });
    }

    pub(crate) async fn on_session(&mut self, session: u64) {
        if session > 1 {
            self.reconnects += 1;
        }
        self.set_healthy(true);
        let mut filters: Vec<SubscribeFilter> = self
            .topics
            .command_filters()
            .into_iter()
            .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce))
            .collect();
        if self.gc.is_none() && !self.cleanup_done {
            // Retained configs arrive right after the subscription; the
            // window only bounds how long we wait for a slow broker.
            filters.push(SubscribeFilter::new(
                self.topics.discovery_filter(),
                QoS::AtLeastOnce,
            ));
            self.gc = Some(Cleanup {
                deadline: Instant::now() + self.config.homeassistant.cleanup_window,
                found: BTreeSet::new(),
            });
        }
        if let Err(e) = self.client.subscribe_many(filters).await {
            tracing::error!(error = %e, "subscribing to command topics failed");
        }
        self.outbox.push(Message::retained(
            Class::BridgeState,
            self.topics.bridge_state(),
            payloads::ONLINE,
        ));
        self.publish_bridge_state();
        // After a reconnect the broker may have lost retained messages
        // (the embedded one keeps them in memory only): publish everything again.
        self.outbox.requeue(|_| true);
    }

    pub(crate) fn on_ha_birth(&mut self) {
        self.ha_birth_at = None;
        tracing::info!("Home Assistant is online: republishing availability and states");
        self.outbox
            .requeue(|c| matches!(c, Class::BridgeState | Class::Availability | Class::State));
    }

    pub(crate) async fn finish_cleanup(&mut self) {
        let Some(gc) = self.gc.take() else { return };
        self.cleanup_done = true;
        if let Err(e) = self
            .client
            .unsubscribe(self.topics.discovery_filter())
            .await
        {
            tracing::debug!(error = %e, "unsubscribe from discovery topics failed");
        }
        for topic in discovery::stale_topics(&gc.found, &self.discovery) {
            if self.waits_for_description(&topic) {
                tracing::debug!(%topic, "keeping discovery config until its device has described itself");
                self.deferred_stale.push(topic);
            } else {
                self.remove_discovery(topic);
            }
        }
    }

    pub(crate) fn waits_for_description(&self, topic: &str) -> bool {
        // With discovery off every config of ours goes, described or not.
        self.config.homeassistant.discovery
            && self
                .topics
                .discovery_node(topic)
                .is_some_and(|node| !self.known.describes(&self.config, node))
    }

    pub(crate) fn remove_discovery(&mut self, topic: String) {
        tracing::info!(%topic, "removing discovery config the configuration no longer produces");
        self.outbox
            .push(Message::retained(Class::Discovery, topic, Vec::<u8>::new()));
    }

    /// Recomputes every discovery config, publishes those that changed and
    /// clears those no longer produced (a plug found to be a P100 loses its
    /// power entities).
    pub(crate) fn refresh_discovery(&mut self) {
        let fresh = published_discovery(&self.config, &self.topics, &self.known);
        for old in &self.discovery {
            if !fresh.iter().any(|m| m.topic == old.topic) {
                self.outbox.push(Message::retained(
                    Class::Discovery,
                    old.topic.clone(),
                    Vec::<u8>::new(),
                ));
            }
        }
        for m in &fresh {
            if !self.discovery.contains(m) {
                self.outbox.push(Message::retained(
                    Class::Discovery,
                    m.topic.clone(),
                    m.payload.to_string(),
                ));
            }
        }
        self.discovery = fresh;
        let (waiting, judged): (Vec<String>, Vec<String>) =
            std::mem::take(&mut self.deferred_stale)
                .into_iter()
                .partition(|t| self.waits_for_description(t));
        self.deferred_stale = waiting;
        for topic in judged {
            if !self.discovery.iter().any(|m| m.topic == topic) {
                self.remove_discovery(topic);
            }
        }
    }
}
