//! What arrives on the command topics, routed by `mqtt::router` and
//! carried out here: `set`/`get`, `bridge/request/...`, the balancer and
//! alert settings, with one `command_error` for every refusal.

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::{Bridge, control_moment, control_now};
use crate::control::{BalancerChange, ThresholdEdits};
use crate::model::{DeviceCommand, SwitchState};
use crate::mqtt::commands::SetCommand;
use crate::mqtt::connection::Incoming;
use crate::mqtt::outbox::{Class, Message};
use crate::mqtt::router::{self, BridgeRequest, Inbound, Route};
use crate::mqtt::{payloads, publish};

impl Bridge {
    /// Carries out what the router made of an incoming message.
    pub(crate) fn on_incoming(&mut self, msg: Incoming) {
        let inbound = Inbound {
            topic: &msg.topic,
            payload: &msg.payload,
            retain: msg.retain,
            oversized: msg.oversized,
        };
        let topic = msg.topic.as_str();
        match router::route(&self.topics, inbound, &self.registry) {
            Route::Nothing => {}
            Route::Empty => {
                tracing::debug!(
                    topic,
                    "empty command payload (a cleared retained command) ignored"
                );
            }
            Route::HaOnline => {
                self.ha_birth_at = Some(Instant::now() + self.config.homeassistant.birth_delay);
            }
            Route::OurDiscovery => {
                if let Some(gc) = &mut self.gc {
                    gc.found.insert(msg.topic.clone());
                }
            }
            Route::ClearRetained => {
                tracing::warn!(
                    topic,
                    "ignoring a retained command and clearing it: commands must not be retained"
                );
                self.clear_retained(topic);
            }
            Route::Request {
                cmd,
                request,
                transaction,
            } => {
                let result = self.on_request(request);
                self.respond(cmd, result, transaction);
            }
            Route::RequestRefused {
                cmd,
                error,
                transaction,
                clear,
            } => {
                if clear {
                    self.clear_retained(topic);
                }
                self.respond(cmd, Err(error), transaction);
            }
            Route::BridgeRefresh => {
                self.publish_bridge_info();
                self.publish_bridge_state();
            }
            Route::Refresh { device } => {
                self.republish_device(device);
                self.send_to_driver(device, topic, DeviceCommand::Refresh);
            }
            Route::Set { device, set } => self.on_set(device, topic, set),
            Route::AlertThresholds(edits) => {
                let (now, local) = control_moment();
                match self
                    .control
                    .set_alert_thresholds(&self.registry, &edits, now, local)
                {
                    Ok(outputs) => self.apply(outputs),
                    Err(e) => self.command_error("alerts", topic, e.to_string()),
                }
            }
            Route::Balancer { inverter, change } => {
                let (now, local) = control_moment();
                match self
                    .control
                    .set_balancer(&self.registry, inverter, &change, now, local)
                {
                    Ok(outputs) => self.apply(outputs),
                    Err(e) => self.command_error(inverter, topic, e.to_string()),
                }
            }
            Route::Refused {
                device,
                error,
                clear,
            } => {
                if clear {
                    self.clear_retained(topic);
                }
                self.command_error(device, topic, error);
            }
        }
    }

    /// An empty retained payload: how a retained message is removed.
    pub(crate) fn clear_retained(&mut self, topic: &str) {
        self.outbox.push(Message::retained(
            Class::Info,
            topic.to_owned(),
            Vec::<u8>::new(),
        ));
    }

    pub(crate) fn on_request(&mut self, request: BridgeRequest) -> Result<Value, String> {
        match request {
            BridgeRequest::HealthCheck => Ok(json!({"healthy": true})),
            BridgeRequest::Info => Ok(self.bridge_info()),
            BridgeRequest::Balancer { inverter, change } => {
                self.request_balancer(&inverter, change)
            }
            BridgeRequest::AlertThresholds(edits) => self.request_alert_thresholds(edits),
        }
    }

    /// The answer on `bridge/response/<cmd>`; a refusal is counted and
    /// logged once.
    pub(crate) fn respond(
        &mut self,
        cmd: &str,
        result: Result<Value, String>,
        transaction: Option<Value>,
    ) {
        if let Err(error) = &result {
            self.commands_rejected += 1;
            tracing::warn!(request = cmd, %error, "bridge request failed");
        }
        self.outbox.push(Message::transient(
            self.topics.bridge_response(cmd),
            payloads::response(result, transaction),
        ));
    }

    /// `bridge/request/balancer` `{"inverter": id, ...changes}`: answers
    /// with the balancer's state after the change (none: just the state).
    pub(crate) fn request_balancer(
        &mut self,
        inverter: &str,
        change: BalancerChange,
    ) -> Result<Value, String> {
        if !change.is_empty() {
            let (now, local) = control_moment();
            let outputs = self
                .control
                .set_balancer(&self.registry, inverter, &change, now, local)
                .map_err(|e| e.to_string())?;
            self.apply(outputs);
        }
        match self.control.balancer_status(inverter) {
            Some(status) => Ok(status.map_or(Value::Null, publish::balancer_status)),
            None => Err(format!("no balancer for '{inverter}'")),
        }
    }

    /// `bridge/request/alert_thresholds` `{"<rule>": value, ...}`: answers
    /// with every threshold in force.
    pub(crate) fn request_alert_thresholds(
        &mut self,
        edits: ThresholdEdits,
    ) -> Result<Value, String> {
        if !edits.is_empty() {
            let (now, local) = control_moment();
            let outputs = self
                .control
                .set_alert_thresholds(&self.registry, &edits, now, local)
                .map_err(|e| e.to_string())?;
            self.apply(outputs);
        }
        Ok(publish::thresholds(&self.control.alert_thresholds()))
    }

    /// `<plug>/set`: the mode and the timer are the bridge's business, the
    /// state goes to the plug.
    pub(crate) fn on_set(&mut self, device: &str, topic: &str, set: SetCommand) {
        let now = control_now();
        if let Some(mode) = set.mode {
            match self.control.set_mode(
                &self.registry,
                device,
                mode,
                now,
                crate::clock::local_at(now),
            ) {
                Ok(outputs) => self.apply(outputs),
                Err(e) => return self.command_error(device, topic, e.to_string()),
            }
        }
        if let Some(timer) = set.timer {
            let local = crate::clock::local_at(now);
            match self
                .control
                .timer(&self.registry, device, timer, now, local)
            {
                Ok(outputs) => self.apply(outputs),
                Err(e) => return self.command_error(device, topic, e.to_string()),
            }
        }
        if let Some(state) = set.state {
            self.control.user_switched(device, state == SwitchState::On);
            self.send_to_driver(device, topic, DeviceCommand::Switch(state));
        }
    }

    pub(crate) fn send_to_driver(&mut self, device: &str, topic: &str, command: DeviceCommand) {
        let refresh = command == DeviceCommand::Refresh;
        // A switch queues behind the control plane's own (see `switch`).
        let sent = match command {
            DeviceCommand::Switch(state) => self.switch(device, state),
            DeviceCommand::Refresh => match self.drivers.get(device) {
                Some(d) => d.commands.send(command).map_err(|_| "stopped"),
                None => Err("none"),
            },
        };
        match sent {
            Ok(()) => {}
            Err("stopped") => self.command_error(
                device,
                topic,
                format!("the driver of '{device}' has stopped; the command was not carried out"),
            ),
            Err(_) if refresh => {}
            Err(_) => self.command_error(
                device,
                topic,
                format!("no driver is running for '{device}'; the command was not carried out"),
            ),
        }
    }

    pub(crate) fn command_error(&mut self, device: &str, topic: &str, error: String) {
        self.commands_rejected += 1;
        tracing::warn!(device, topic, %error, "command rejected");
        let mut fields = Map::new();
        fields.insert("topic".into(), topic.into());
        fields.insert("error".into(), error.into());
        self.outbox.push(Message::transient(
            self.topics.bridge_event(),
            payloads::event("command_error", Some(device), fields),
        ));
    }
}
