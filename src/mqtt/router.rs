//! Incoming MQTT messages → what the bridge is asked to do. Pure: (topic,
//! payload, retain flag, the configured devices) → a typed [`Route`], with
//! every refusal already worded for the user. `app` only carries routes
//! out; nothing here publishes, switches or reads a clock.
//!
//! The rules (docs/TOPICS.md):
//! * a retained message on a command topic is never carried out: it is
//!   cleared (an empty retained payload is how it is cleared, so that is
//!   ignored, as is an empty `set`);
//! * a payload too large to keep is refused like any bad command;
//! * `<device>/set` goes to plugs only; every device takes `<device>/get`;
//!   `bridge/get` republishes the bridge's own topics;
//! * `bridge/request/<cmd>` is answered on `bridge/response/<cmd>`, with
//!   the request's `transaction` echoed even when the request is refused.

use serde_json::Value;

use super::commands::{self, Command, ParseError, SetCommand};
use super::discovery;
use super::topics::{IncomingTopic, Topics};
use crate::control::{BalancerChange, ThresholdEdits};
use crate::core::registry::Registry;
use crate::model::DeviceKind;

/// What the router needs to know of the configured devices.
pub trait Devices {
    fn kind(&self, id: &str) -> Option<DeviceKind>;
    /// Every configured id, for "unknown device" errors.
    fn ids(&self) -> Vec<&str>;
}

impl Devices for Registry {
    fn kind(&self, id: &str) -> Option<DeviceKind> {
        self.get(id).map(|e| e.kind)
    }

    fn ids(&self) -> Vec<&str> {
        Registry::ids(self).collect()
    }
}

/// One incoming message as the connection hands it over.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub retain: bool,
    /// The size of a payload dropped for being too large to keep.
    pub oversized: Option<usize>,
}

/// A `bridge/request/<cmd>` the bridge knows.
#[derive(Debug, Clone, PartialEq)]
pub enum BridgeRequest {
    HealthCheck,
    Info,
    /// `{"inverter": id, ...changes}`; no changes: just the state.
    Balancer {
        inverter: String,
        change: BalancerChange,
    },
    /// `{"<rule>": value, ...}`; none: just the thresholds.
    AlertThresholds(ThresholdEdits),
}

/// What to do with one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Route<'a> {
    /// Not addressed to the bridge, or nothing to do.
    Nothing,
    /// An empty payload on a command topic: a cleared retained command.
    Empty,
    /// Home Assistant came online: republish after the birth delay.
    HaOnline,
    /// A retained discovery config made by a bridge on this base topic
    /// (what the start-up clean-up collects).
    OurDiscovery,
    /// A retained command: never carried out; clear it.
    ClearRetained,
    Request {
        cmd: &'a str,
        request: BridgeRequest,
        transaction: Option<Value>,
    },
    /// A request refused: answer with the error on `bridge/response/<cmd>`.
    RequestRefused {
        cmd: &'a str,
        error: String,
        transaction: Option<Value>,
        /// It was retained (too large to keep): clear it too.
        clear: bool,
    },
    /// `bridge/get`: republish the bridge's info and state.
    BridgeRefresh,
    /// `<device>/get` of a configured device.
    Refresh { device: &'a str },
    /// `<plug>/set`, parsed.
    Set { device: &'a str, set: SetCommand },
    /// `alerts/set`: new thresholds, not yet checked against the rules.
    AlertThresholds(ThresholdEdits),
    /// `balancer/<inverter>/set`: a change, each field in its range.
    Balancer {
        inverter: &'a str,
        change: BalancerChange,
    },
    /// A command refused: a `command_error` event for `device`.
    Refused {
        device: &'a str,
        error: String,
        /// It was retained (too large to keep): clear it too.
        clear: bool,
    },
}

/// Routes one message.
pub fn route<'a>(topics: &Topics, msg: Inbound<'a>, devices: &dyn Devices) -> Route<'a> {
    let kind = topics.classify(msg.topic);
    match kind {
        IncomingTopic::HaStatus if msg.payload.trim_ascii() == b"online" => Route::HaOnline,
        IncomingTopic::DiscoveryConfig
            if msg.retain && !msg.payload.is_empty() && discovery::is_ours(topics, msg.payload) =>
        {
            Route::OurDiscovery
        }
        k if k.is_command() => command(k, msg, devices),
        _ => Route::Nothing,
    }
}

fn command<'a>(kind: IncomingTopic<'a>, msg: Inbound<'a>, devices: &dyn Devices) -> Route<'a> {
    if let Some(size) = msg.oversized {
        let error = ParseError::TooLarge(size).to_string();
        let clear = msg.retain;
        return match kind {
            IncomingTopic::Request(cmd) => Route::RequestRefused {
                cmd,
                error,
                transaction: None,
                clear,
            },
            _ => Route::Refused {
                device: addressee(kind),
                error,
                clear,
            },
        };
    }
    // An empty payload is how a retained command is cleared (by us or by
    // the user); it must never switch anything and is no error. Reads and
    // requests may be empty (`mosquitto_pub -n`).
    let is_set = matches!(
        kind,
        IncomingTopic::Set(_)
            | IncomingTopic::SetAttribute(..)
            | IncomingTopic::AlertsSet
            | IncomingTopic::BalancerSet(_)
    );
    if msg.payload.is_empty() && (is_set || msg.retain) {
        return Route::Empty;
    }
    if msg.retain {
        return Route::ClearRetained;
    }
    match kind {
        IncomingTopic::Request(cmd) => request(cmd, msg.payload),
        IncomingTopic::Set(device) => device_command(
            device,
            commands::parse_set(msg.payload).map(Command::Set),
            devices,
        ),
        IncomingTopic::SetAttribute(device, attribute) => device_command(
            device,
            commands::parse_set_attribute(attribute, msg.payload).map(Command::Set),
            devices,
        ),
        IncomingTopic::Get(device) => device_command(device, Ok(Command::Refresh), devices),
        IncomingTopic::AlertsSet => match commands::parse_thresholds_set(msg.payload) {
            Ok(edits) => Route::AlertThresholds(edits),
            Err(e) => Route::Refused {
                device: "alerts",
                error: e.to_string(),
                clear: false,
            },
        },
        IncomingTopic::BalancerSet(inverter) => match commands::parse_balancer_set(msg.payload) {
            Ok(change) => Route::Balancer { inverter, change },
            Err(e) => Route::Refused {
                device: inverter,
                error: e.to_string(),
                clear: false,
            },
        },
        _ => Route::Nothing,
    }
}

/// Who a refused command was for, in its `command_error`.
fn addressee<'a>(kind: IncomingTopic<'a>) -> &'a str {
    match kind {
        IncomingTopic::Set(d) | IncomingTopic::SetAttribute(d, _) | IncomingTopic::Get(d) => d,
        IncomingTopic::BalancerSet(d) => d,
        IncomingTopic::AlertsSet => "alerts",
        _ => "bridge",
    }
}

fn request<'a>(cmd: &'a str, payload: &[u8]) -> Route<'a> {
    let refused = |error: String, transaction| Route::RequestRefused {
        cmd,
        error,
        transaction,
        clear: false,
    };
    let req = match commands::parse_request(payload) {
        Ok(r) => r,
        Err(e) => return refused(e.to_string(), commands::salvage_transaction(payload)),
    };
    let mut body = req.body;
    let request = match cmd {
        "health_check" => BridgeRequest::HealthCheck,
        "info" => BridgeRequest::Info,
        "balancer" => match body.remove("inverter") {
            Some(Value::String(inverter)) => match commands::balancer_change(&body) {
                Ok(change) => BridgeRequest::Balancer { inverter, change },
                Err(e) => return refused(e.to_string(), req.transaction),
            },
            _ => {
                return refused(
                    "give the balancer's inverter: {\"inverter\": \"<id>\"}".into(),
                    req.transaction,
                );
            }
        },
        "alert_thresholds" => match commands::threshold_edits(&body) {
            Ok(edits) => BridgeRequest::AlertThresholds(edits),
            Err(e) => return refused(e.to_string(), req.transaction),
        },
        other => {
            return refused(
                format!(
                    "unknown request '{other}'; available: health_check, info, balancer, alert_thresholds"
                ),
                req.transaction,
            );
        }
    };
    Route::Request {
        cmd,
        request,
        transaction: req.transaction,
    }
}

fn device_command<'a>(
    device: &'a str,
    parsed: Result<Command, ParseError>,
    devices: &dyn Devices,
) -> Route<'a> {
    let refused = |error: String| Route::Refused {
        device,
        error,
        clear: false,
    };
    if device == "bridge" {
        return match parsed {
            Ok(Command::Refresh) => Route::BridgeRefresh,
            _ => refused("the bridge takes requests on bridge/request/<command>, not set".into()),
        };
    }
    let Some(kind) = devices.kind(device) else {
        let known = devices.ids();
        let known = if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        };
        return refused(format!(
            "unknown device '{device}'; configured devices: {known}"
        ));
    };
    // Only `get` parses without error and is not a set: any other command,
    // well-formed or not, is a set, and only plugs take sets (saying which
    // fields a plug accepts would mislead here).
    if !matches!(parsed, Ok(Command::Refresh)) && kind != DeviceKind::Plug {
        return refused(format!(
            "'{device}' is {} and accepts no set commands (only {device}/get)",
            kind.with_article()
        ));
    }
    match parsed {
        Ok(Command::Refresh) => Route::Refresh { device },
        Ok(Command::Set(set)) => Route::Set { device, set },
        Err(e) => refused(e.to_string()),
    }
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
