//! Carrying out what the control plane decided: the control state to the
//! disk, switch commands to the drivers (never before the state they rest
//! on is on disk), the rest to the outbox. Nothing here waits for the
//! disk: the actuator task does.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::Bridge;
use super::control_now;
use crate::control::{self, Event};
use crate::drivers::inbox::CommandSender;
use crate::model::{DeviceCommand, SwitchState};
use crate::mqtt::outbox::{Message, Outbox};
use crate::mqtt::publish;

/// Writes the newest pending control state to `control.json`.
#[derive(Debug)]
pub(crate) struct ControlWriter {
    /// The state waiting to be written: the bridge replaces it, a write
    /// takes it (each lock is held only for that).
    latest: Arc<Mutex<Option<Box<control::Saved>>>>,
    /// One write at a time; a write takes the state only once it holds
    /// this, so the file always ends with the newest state.
    pub(crate) writing: Mutex<()>,
    failed: Arc<AtomicBool>,
    dir: PathBuf,
    outbox: Arc<Outbox>,
    event_topic: String,
}

impl ControlWriter {
    /// The blocking write (it fsyncs). A failure is reported once (one
    /// `state_error`), and the control plane hands the state out again at
    /// its next step.
    pub(crate) fn write(&self) {
        let _one_at_a_time = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let Some(saved) = self.latest.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let store = crate::storage::Store::new(self.dir.clone());
        match control::persist::write(&store, &saved) {
            Ok(()) => {
                if self.failed.swap(false, Ordering::Relaxed) {
                    tracing::info!("control state saved again");
                }
            }
            Err(e) => {
                if !self.failed.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, "control state not saved; a restart would forget what is shed");
                    let event = Event::StateError {
                        error: e.to_string(),
                    };
                    self.outbox.push(Message::transient(
                        self.event_topic.clone(),
                        publish::event(&event),
                    ));
                }
            }
        }
    }
}

/// Switch commands to carry out in order, after the state in the
/// writer's slot (if `save`) is on disk.
#[derive(Debug)]
pub(crate) struct Actuation {
    save: bool,
    switches: Vec<(String, Arc<CommandSender>, DeviceCommand)>,
}

/// The actuator: one task, so that switches leave in the order they were
/// decided and the writes never overlap. What has queued up while it was
/// writing is taken together: the newest state covers them all.
async fn actuate(mut rx: mpsc::UnboundedReceiver<Actuation>, writer: Arc<ControlWriter>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        if batch.iter().any(|a| a.save) {
            let writer = writer.clone();
            if tokio::task::spawn_blocking(move || writer.write())
                .await
                .is_err()
            {
                tracing::error!("the control state writer panicked");
            }
        }
        for (plug, sender, command) in batch.into_iter().flat_map(|a| a.switches) {
            // A task that has ended is not an error here: the executor
            // resends until the plug confirms.
            if sender.send(command).is_err() {
                tracing::debug!(
                    plug,
                    "plug task not running; the switch command will be resent"
                );
            }
        }
    }
}

impl Bridge {
    /// The writer of `control.json`, shared with the actuator.
    pub(crate) fn control_writer(&mut self) -> Arc<ControlWriter> {
        self.control_writer
            .get_or_insert_with(|| {
                Arc::new(ControlWriter {
                    latest: Arc::default(),
                    writing: Mutex::new(()),
                    failed: self.control.save_failed(),
                    dir: self.config.storage.dir.clone(),
                    outbox: self.outbox.clone(),
                    event_topic: self.topics.bridge_event(),
                })
            })
            .clone()
    }

    /// Hands a batch to the actuator, starting it on first use.
    pub(crate) fn actuate(&mut self, actuation: Actuation) {
        let writer = self.control_writer();
        let tx = self.actuator.get_or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(actuate(rx, writer));
            tx
        });
        if let Err(mpsc::error::SendError(lost)) = tx.send(actuation) {
            // Only after the actuator has stopped (shutdown).
            tracing::warn!(
                switches = lost.switches.len(),
                "the actuator has stopped; switch commands dropped"
            );
        }
    }

    /// A switch for a plug's task, in order with the control plane's;
    /// false when no task takes it.
    pub(crate) fn switch(&mut self, plug: &str, state: SwitchState) -> Result<(), &'static str> {
        let Some(d) = self.drivers.get(plug) else {
            return Err("none");
        };
        if !d.commands.is_open() {
            return Err("stopped");
        }
        let switches = vec![(
            plug.to_owned(),
            d.commands.clone(),
            DeviceCommand::Switch(state),
        )];
        self.actuate(Actuation {
            save: false,
            switches,
        });
        Ok(())
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
        let mut saved = None;
        let mut switches = Vec::new();
        for o in outputs {
            match o {
                control::Output::Save(s) => saved = Some(s),
                control::Output::Switch { plug, on } => {
                    let state = if on {
                        SwitchState::On
                    } else {
                        SwitchState::Off
                    };
                    match self.drivers.get(&plug) {
                        Some(d) => {
                            switches.push((plug, d.commands.clone(), DeviceCommand::Switch(state)))
                        }
                        None => tracing::debug!(
                            plug,
                            "plug task not running; the switch command will be resent"
                        ),
                    }
                }
                control::Output::PlugAttributes { plug, attributes } => {
                    if self
                        .registry
                        .annotate(&plug, publish::plug_attributes(&attributes))
                    {
                        self.republish_device(&plug);
                    }
                }
                other => {
                    if let Some(m) = publish::message(&self.topics, &other) {
                        self.outbox.push(m);
                    }
                }
            }
        }
        // Persist before acting: a plug switched (shed, restored, locked)
        // on a decision not yet on disk would be forgotten by a crash in
        // between, and a shed plug never restored. The actuator writes
        // first, then switches; this task goes on meanwhile.
        let save = saved.is_some();
        if let Some(s) = saved {
            *self
                .control_writer()
                .latest
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(s);
        }
        if save || !switches.is_empty() {
            self.actuate(Actuation { save, switches });
        }
    }
}
