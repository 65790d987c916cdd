//! The start-up check that no other instance holds our base topic.

use std::time::Duration;

use rumqttc::{QoS, SubscribeFilter};
use serde_json::Value;
use tokio::time::Instant;

use super::Bridge;
use crate::mqtt::Topics;
use crate::mqtt::connection::Incoming;

/// How long after the broker acknowledged the subscription to
/// `bridge/state` and `bridge/info` their retained messages may still
/// arrive (brokers send them right behind the SUBACK).
const CLAIM_GRACE: Duration = Duration::from_millis(150);
/// The claim is settled after this even if the broker never acknowledged.
const CLAIM_MAX: Duration = Duration::from_secs(3);

/// Another instance is online on our base topic: starting would clean up
/// its discovery configs and overwrite its states.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "another energy2mqtt is online on base topic '{base}' ({other}); stop it, or give this \
     bridge its own mqtt.base_topic"
)]
pub struct BaseTopicTaken {
    pub base: String,
    /// The other instance as its `bridge/info` describes it.
    pub other: String,
}

/// The start-up check that no other instance holds our base topic: before
/// anything is published or cleaned up, the retained `bridge/state` and
/// `bridge/info` are read.
#[derive(Debug)]
pub struct Claim {
    /// SUBACKs counted when we subscribed; the next one is ours.
    subacks_before: u64,
    pub(crate) deadline: Option<Instant>,
    state: Option<Value>,
    info: Option<Value>,
    /// What else arrived meanwhile.
    held: Vec<Incoming>,
}

/// Messages kept while the claim is settled (commands queued for our
/// persistent session).
const HELD_MAX: usize = 1024;

impl Claim {
    /// Before the first session: nothing seen yet.
    pub(super) fn pending() -> Self {
        Self {
            subacks_before: 0,
            deadline: None,
            state: None,
            info: None,
            held: Vec::new(),
        }
    }

    pub(crate) fn on_status(&mut self, subacks: u64, now: Instant) {
        if subacks > self.subacks_before {
            let grace = now + CLAIM_GRACE;
            if self.deadline.is_none_or(|d| grace < d) {
                self.deadline = Some(grace);
            }
        }
    }

    /// Records a retained `bridge/state` or `bridge/info`; true once both
    /// are in (no need to wait longer).
    pub(crate) fn on_incoming(&mut self, topics: &Topics, msg: &Incoming) -> bool {
        let own = msg.topic == topics.bridge_state() || msg.topic == topics.bridge_info();
        if !own {
            // Commands the broker kept for our session while we were away:
            // carried out once the claim is settled.
            if self.held.len() < HELD_MAX {
                self.held.push(msg.clone());
            }
            return false;
        }
        if !msg.retain {
            return false;
        }
        let value = serde_json::from_slice::<Value>(&msg.payload).ok();
        if msg.topic == topics.bridge_state() {
            self.state = value.or(Some(Value::Null));
        } else if msg.topic == topics.bridge_info() {
            self.info = value.or(Some(Value::Null));
        }
        self.state.is_some() && self.info.is_some()
    }

    /// The other instance, if one is online under another client id. The
    /// same client id is this bridge's own earlier run (whose Last Will the
    /// broker has not sent yet) or a twin the connection task reports.
    pub fn other_instance(&self, own_client_id: &str) -> Option<String> {
        let online = self
            .state
            .as_ref()
            .and_then(|s| s.get("state"))
            .and_then(Value::as_str)
            == Some("online");
        if !online {
            return None;
        }
        let info = self.info.as_ref();
        let client_id = info
            .and_then(|i| {
                i.get("client_id")
                    .or_else(|| i.pointer("/config/mqtt/client_id"))
            })
            .and_then(Value::as_str);
        if client_id == Some(own_client_id) {
            return None;
        }
        let field = |k: &str| info.and_then(|i| i.get(k)).and_then(Value::as_str);
        let mut who = match client_id {
            Some(id) => format!("client_id {id}"),
            None => "client_id unknown".to_owned(),
        };
        if let Some(host) = field("host") {
            who.push_str(&format!(", host {host}"));
        }
        if let Some(at) = field("started_at") {
            who.push_str(&format!(", started {at}"));
        }
        Some(who)
    }
}

impl Bridge {
    /// First contact with the broker: read who holds the base topic
    /// before publishing anything (the outbox is held meanwhile).
    pub(crate) async fn start_claim(&mut self, subacks: u64) {
        self.outbox.hold();
        let claim = Claim {
            subacks_before: subacks,
            deadline: Some(Instant::now() + CLAIM_MAX),
            state: None,
            info: None,
            held: self.claim.take().map(|c| c.held).unwrap_or_default(),
        };
        self.claim = Some(claim);
        let filters = vec![
            SubscribeFilter::new(self.topics.bridge_state(), QoS::AtLeastOnce),
            SubscribeFilter::new(self.topics.bridge_info(), QoS::AtLeastOnce),
        ];
        if let Err(e) = self.client.subscribe_many(filters).await {
            tracing::error!(error = %e, "subscribing to the bridge's own topics failed");
        }
    }

    /// Decides the claim: refuse to start, or take the base topic and set
    /// up the session.
    pub(crate) async fn settle_claim(&mut self, session: u64) -> Result<(), BaseTopicTaken> {
        let Some(claim) = self.claim.take() else {
            return Ok(());
        };
        for topic in [self.topics.bridge_state(), self.topics.bridge_info()] {
            if let Err(e) = self.client.unsubscribe(topic).await {
                tracing::debug!(error = %e, "unsubscribe from the bridge's own topics failed");
            }
        }
        tracing::debug!(
            state = ?claim.state,
            info_seen = claim.info.is_some(),
            held = claim.held.len(),
            "base topic claim settled"
        );
        if let Some(other) = claim.other_instance(&self.config.mqtt.client_id) {
            return Err(BaseTopicTaken {
                base: self.topics.base().to_owned(),
                other,
            });
        }
        // `bridge/state` online is queued before anything is let out, so it
        // is the first message of this bridge (discovery follows).
        self.on_session(session).await;
        self.outbox.release();
        for msg in claim.held {
            self.on_incoming(msg);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claim(state: Option<Value>, info: Option<Value>) -> Claim {
        Claim {
            subacks_before: 0,
            deadline: None,
            state,
            info,
            held: Vec::new(),
        }
    }

    #[test]
    fn another_client_id_online_on_the_base_topic_is_another_instance() {
        let online = Some(json!({"state": "online"}));
        let info = |id: &str| Some(json!({"client_id": id, "host": "pi", "started_at": "t0"}));
        assert_eq!(
            claim(online.clone(), info("first")).other_instance("second"),
            Some("client_id first, host pi, started t0".into())
        );
        // Our own client id: an earlier run of this bridge.
        assert_eq!(
            claim(online.clone(), info("first")).other_instance("first"),
            None
        );
        // Offline, or nothing retained: free.
        assert_eq!(
            claim(Some(json!({"state": "offline"})), info("first")).other_instance("second"),
            None
        );
        assert_eq!(claim(None, None).other_instance("second"), None);
        // An older bridge/info without `client_id` still names it.
        let old = Some(json!({"config": {"mqtt": {"client_id": "first"}}}));
        assert_eq!(
            claim(online.clone(), old).other_instance("second"),
            Some("client_id first".into())
        );
        // Online without any info: someone holds it, unknown who.
        assert_eq!(
            claim(online, None).other_instance("second"),
            Some("client_id unknown".into())
        );
    }

    #[test]
    fn the_claim_settles_shortly_after_its_suback() {
        let t0 = Instant::now();
        let mut c = claim(None, None);
        c.subacks_before = 3;
        c.deadline = Some(t0 + CLAIM_MAX);
        c.on_status(3, t0);
        assert_eq!(c.deadline, Some(t0 + CLAIM_MAX));
        c.on_status(4, t0 + Duration::from_millis(10));
        assert_eq!(
            c.deadline,
            Some(t0 + Duration::from_millis(10) + CLAIM_GRACE)
        );
        // A later status change does not push it back.
        c.on_status(5, t0 + Duration::from_millis(100));
        assert_eq!(
            c.deadline,
            Some(t0 + Duration::from_millis(10) + CLAIM_GRACE)
        );
    }
}
