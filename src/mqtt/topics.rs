//! Every topic string of the bridge is built or recognised here: this file
//! is the topic contract of docs/TOPICS.md in code.

/// The topic tree of one bridge instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    base: String,
    discovery_prefix: String,
    ha_status: String,
}

/// What an incoming topic means to the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncomingTopic<'a> {
    /// Home Assistant's birth / last will.
    HaStatus,
    /// `<base>/<device>/set`
    Set(&'a str),
    /// `<base>/<device>/set/<attribute>` with a bare value.
    SetAttribute(&'a str, &'a str),
    /// `<base>/<device>/get`
    Get(&'a str),
    /// `<base>/bridge/request/<cmd>`
    Request(&'a str),
    /// `<base>/balancer/<inverter>/set`
    BalancerSet(&'a str),
    /// `<base>/alerts/set`
    AlertsSet,
    /// `<prefix>/<component>/<node>/<object>/config`
    DiscoveryConfig,
    Other,
}

impl IncomingTopic<'_> {
    /// Command topics must never carry retained messages.
    pub fn is_command(&self) -> bool {
        matches!(
            self,
            Self::Set(_)
                | Self::SetAttribute(..)
                | Self::Get(_)
                | Self::Request(_)
                | Self::BalancerSet(_)
                | Self::AlertsSet
        )
    }
}

impl Topics {
    pub fn new(base: &str, discovery_prefix: &str, ha_status: &str) -> Self {
        Self {
            base: base.to_owned(),
            discovery_prefix: discovery_prefix.to_owned(),
            ha_status: ha_status.to_owned(),
        }
    }

    pub fn from_config(config: &crate::config::Config) -> Self {
        Self::new(
            &config.mqtt.base_topic,
            &config.homeassistant.discovery_prefix,
            &config.homeassistant.status_topic,
        )
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Retained `{"state":"online"|"offline"}`, also the Last Will.
    pub fn bridge_state(&self) -> String {
        format!("{}/bridge/state", self.base)
    }

    /// The push sidecar's retained `{"state":"online"|"offline"}` (its
    /// Last Will), so that it never touches the bridge's own state.
    pub fn push_state(&self) -> String {
        format!("{}/push/state", self.base)
    }

    pub fn bridge_info(&self) -> String {
        format!("{}/bridge/info", self.base)
    }

    pub fn bridge_event(&self) -> String {
        format!("{}/bridge/event", self.base)
    }

    /// The bridge's own state object (version, uptime, counters): the
    /// `<base>/<device>` rule applied to the device called `bridge`.
    pub fn bridge_device_state(&self) -> String {
        format!("{}/bridge", self.base)
    }

    pub fn bridge_request(&self, cmd: &str) -> String {
        format!("{}/bridge/request/{cmd}", self.base)
    }

    pub fn bridge_response(&self, cmd: &str) -> String {
        format!("{}/bridge/response/{cmd}", self.base)
    }

    pub fn device_state(&self, device: &str) -> String {
        format!("{}/{device}", self.base)
    }

    pub fn availability(&self, device: &str) -> String {
        format!("{}/{device}/availability", self.base)
    }

    pub fn set(&self, device: &str) -> String {
        format!("{}/{device}/set", self.base)
    }

    pub fn get(&self, device: &str) -> String {
        format!("{}/{device}/get", self.base)
    }

    pub fn balancer(&self, inverter: &str) -> String {
        format!("{}/balancer/{inverter}", self.base)
    }

    pub fn balancer_set(&self, inverter: &str) -> String {
        format!("{}/balancer/{inverter}/set", self.base)
    }

    pub fn alerts(&self) -> String {
        format!("{}/alerts", self.base)
    }

    pub fn alerts_event(&self) -> String {
        format!("{}/alerts/event", self.base)
    }

    pub fn alerts_set(&self) -> String {
        format!("{}/alerts/set", self.base)
    }

    pub fn ha_status(&self) -> &str {
        &self.ha_status
    }

    pub fn discovery_config(&self, component: &str, node: &str, object: &str) -> String {
        format!(
            "{}/{component}/{node}/{object}/config",
            self.discovery_prefix
        )
    }

    /// The node (our device id) of a per-entity discovery config topic.
    pub fn discovery_node<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let rest = topic.strip_prefix(self.discovery_prefix.as_str())?;
        let mut parts = rest.strip_prefix('/')?.split('/');
        let (_component, node, _object, config) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        (config == "config" && parts.next().is_none()).then_some(node)
    }

    /// Matches every per-entity discovery config, ours and others'.
    pub fn discovery_filter(&self) -> String {
        format!("{}/+/+/+/config", self.discovery_prefix)
    }

    /// What the bridge subscribes to on every connect.
    pub fn command_filters(&self) -> Vec<String> {
        vec![
            format!("{}/+/set", self.base),
            format!("{}/+/set/+", self.base),
            format!("{}/+/get", self.base),
            format!("{}/bridge/request/+", self.base),
            format!("{}/balancer/+/set", self.base),
            self.ha_status.clone(),
        ]
    }

    pub fn classify<'a>(&self, topic: &'a str) -> IncomingTopic<'a> {
        if topic == self.ha_status {
            return IncomingTopic::HaStatus;
        }
        if let Some(rest) = strip_level(topic, &self.base) {
            let parts: Vec<&'a str> = rest.split('/').collect();
            return match parts.as_slice() {
                ["bridge", "request", cmd] if !cmd.is_empty() => IncomingTopic::Request(cmd),
                ["balancer", inv, "set"] if !inv.is_empty() => IncomingTopic::BalancerSet(inv),
                ["alerts", "set"] => IncomingTopic::AlertsSet,
                [dev, "set"] if !dev.is_empty() => IncomingTopic::Set(dev),
                [dev, "set", attr] if !dev.is_empty() && !attr.is_empty() => {
                    IncomingTopic::SetAttribute(dev, attr)
                }
                [dev, "get"] if !dev.is_empty() => IncomingTopic::Get(dev),
                _ => IncomingTopic::Other,
            };
        }
        if let Some(rest) = strip_level(topic, &self.discovery_prefix) {
            let parts: Vec<&str> = rest.split('/').collect();
            if let [_, _, _, "config"] = parts.as_slice() {
                return IncomingTopic::DiscoveryConfig;
            }
        }
        IncomingTopic::Other
    }
}

/// `a/b/c` minus the prefix `a` (whole levels only).
fn strip_level<'a>(topic: &'a str, prefix: &str) -> Option<&'a str> {
    topic.strip_prefix(prefix)?.strip_prefix('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Topics {
        Topics::new("energy2mqtt", "homeassistant", "homeassistant/status")
    }

    #[test]
    fn builds_the_contract() {
        let t = t();
        assert_eq!(t.bridge_state(), "energy2mqtt/bridge/state");
        assert_eq!(
            t.bridge_response("info"),
            "energy2mqtt/bridge/response/info"
        );
        assert_eq!(t.availability("boiler"), "energy2mqtt/boiler/availability");
        assert_eq!(t.balancer("inverter"), "energy2mqtt/balancer/inverter");
        assert_eq!(
            t.discovery_config("sensor", "battery1", "soc"),
            "homeassistant/sensor/battery1/soc/config"
        );
        assert_eq!(
            t.discovery_node("homeassistant/sensor/battery1/soc/config"),
            Some("battery1")
        );
        assert_eq!(t.discovery_node("homeassistant/sensor/battery1/soc"), None);
        assert_eq!(t.discovery_node("other/sensor/battery1/soc/config"), None);
        assert_eq!(
            t.discovery_node("homeassistant/sensor/battery1/soc/config/x"),
            None
        );
    }

    #[test]
    fn classifies_incoming() {
        let t = t();
        assert_eq!(t.classify("homeassistant/status"), IncomingTopic::HaStatus);
        assert_eq!(
            t.classify("energy2mqtt/boiler/set"),
            IncomingTopic::Set("boiler")
        );
        assert_eq!(
            t.classify("energy2mqtt/boiler/set/state"),
            IncomingTopic::SetAttribute("boiler", "state")
        );
        assert_eq!(
            t.classify("energy2mqtt/boiler/get"),
            IncomingTopic::Get("boiler")
        );
        assert_eq!(
            t.classify("energy2mqtt/bridge/request/health_check"),
            IncomingTopic::Request("health_check")
        );
        assert_eq!(
            t.classify("homeassistant/sensor/x/y/config"),
            IncomingTopic::DiscoveryConfig
        );
        assert_eq!(
            t.classify("energy2mqtt/balancer/inverter/set"),
            IncomingTopic::BalancerSet("inverter")
        );
        assert_eq!(
            t.classify("energy2mqtt/alerts/set"),
            IncomingTopic::AlertsSet
        );
        assert!(IncomingTopic::AlertsSet.is_command());
        assert_eq!(t.classify("energy2mqttx/boiler/set"), IncomingTopic::Other);
        assert_eq!(t.classify("energy2mqtt//set"), IncomingTopic::Other);
        assert_eq!(t.classify("energy2mqtt/boiler"), IncomingTopic::Other);
    }
}
