//! Carrying out what the control plane decided: the control state to the
//! disk (before any switch it justifies), switch commands to the drivers,
//! the rest to the outbox.

use serde_json::Map;

use super::{Bridge, control_now};
use crate::control;
use crate::model::{DeviceCommand, SwitchState};
use crate::mqtt::outbox::{Class, Message};
use crate::mqtt::payloads;

impl Bridge {
    /// Writes `control.json` off this task (it fsyncs). Writes may run in
    /// any order: each takes the newest state under one lock, so the file
    /// always ends with it. A failure is reported once (`state_error`) and
    /// the control plane hands the state out again at its next step.
    pub(crate) fn save_control(&mut self, saved: Box<control::Saved>) {
        *self
            .control_latest
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(saved);
        let writer = self.control_writer();
        tokio::task::spawn_blocking(writer);
    }

    /// The blocking write of the newest pending control state.
    pub(crate) fn control_writer(&self) -> impl FnOnce() + Send + 'static {
        let latest = self.control_latest.clone();
        let failed = self.control.save_failed();
        let store = crate::storage::Store::new(self.config.storage.dir.clone());
        let outbox = self.outbox.clone();
        let event_topic = self.topics.bridge_event();
        move || {
            let mut guard = latest.lock().unwrap_or_else(|e| e.into_inner());
            let Some(saved) = guard.take() else {
                return;
            };
            match control::persist::write(&store, &saved) {
                Ok(()) => {
                    if failed.swap(false, std::sync::atomic::Ordering::Relaxed) {
                        tracing::info!("control state saved again");
                    }
                }
                Err(e) => {
                    if !failed.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::error!(error = %e, "control state not saved; a restart would forget what is shed");
                        let mut fields = Map::new();
                        fields.insert("error".into(), e.to_string().into());
                        outbox.push(Message::transient(
                            event_topic,
                            payloads::event("state_error", None, fields),
                        ));
                    }
                }
            }
        }
    }

    /// Runs the control plane on the latest facts.
    pub(crate) fn control_step(&mut self) {
        let now = control_now();
        let outputs = self
            .control
            .step(&self.registry, now, crate::clock::local_at(now));
        self.apply(outputs);
    }

    pub(crate) fn apply(&mut self, outputs: Vec<control::Output>) {
        // The newest state to keep, handled before anything is carried out.
        let mut saved = None;
        let mut rest = Vec::with_capacity(outputs.len());
        for o in outputs {
            match o {
                control::Output::Save(s) => saved = Some(s),
                other => rest.push(other),
            }
        }
        if let Some(s) = saved {
            // Persist before acting: a plug switched (shed, restored,
            // locked) on a decision not yet on disk would be forgotten by
            // a crash in between, and a shed plug never restored. Such a
            // batch is written before its switches go out; the others
            // (bookkeeping: timers, alerts, limits) off this task.
            if rest
                .iter()
                .any(|o| matches!(o, control::Output::Switch { .. }))
            {
                *self
                    .control_latest
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(s);
                (self.control_writer())();
            } else {
                self.save_control(s);
            }
        }
        for o in rest {
            match o {
                control::Output::Save(_) => {}
                control::Output::Switch { plug, on } => {
                    let command = DeviceCommand::Switch(if on {
                        SwitchState::On
                    } else {
                        SwitchState::Off
                    });
                    // A task that has ended is not an error here: the
                    // executor resends until the plug confirms.
                    if let Some(d) = self.drivers.get(&plug) {
                        if d.commands.send(command).is_err() {
                            tracing::debug!(
                                plug,
                                "plug task not running; the switch command will be resent"
                            );
                        }
                    }
                }
                control::Output::BalancerStatus { inverter, status } => {
                    self.outbox.push(Message::retained(
                        Class::State,
                        self.topics.balancer(&inverter),
                        status.to_string(),
                    ));
                }
                control::Output::Event {
                    kind,
                    device,
                    fields,
                } => {
                    self.outbox.push(Message::transient(
                        self.topics.bridge_event(),
                        payloads::event(kind, device.as_deref(), fields),
                    ));
                }
                control::Output::Alerts(v) => {
                    self.outbox.push(Message::retained(
                        Class::State,
                        self.topics.alerts(),
                        v.to_string(),
                    ));
                }
                control::Output::AlertEvent(v) => {
                    self.outbox.push(Message::transient(
                        self.topics.alerts_event(),
                        v.to_string(),
                    ));
                }
                control::Output::PlugAttributes { plug, values } => {
                    if self.registry.annotate(&plug, values) {
                        self.republish_device(&plug);
                    }
                }
            }
        }
    }
}
