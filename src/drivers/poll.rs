//! What every polled device task shares (the plugs' loop and the
//! inverter's): waiting for the next poll, a command or the shutdown, and
//! reporting what a poll found: the reading, identity once, reachability
//! on change, and what a failure means ([`PollHealth`]'s verdict: logged
//! at its loudness, a problem once, offline after N).

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::drivers::health::{AfterFailure, Loudness};
use crate::drivers::inbox::CommandInbox;
use crate::drivers::{DeviceInfo as Identity, DriverEvent, Reachability};
use crate::model::DeviceCommand;

/// Why a device task woke up.
#[derive(Debug, PartialEq)]
pub(crate) enum Wake {
    /// The shutdown, or the bridge dropped its end of the inbox.
    Stop,
    /// The next poll is due.
    Due,
    Command(DeviceCommand),
}

/// Waits for whichever comes first: the shutdown, a command, or `next`.
pub(crate) async fn wait(
    shutdown: &CancellationToken,
    next: Instant,
    commands: &mut CommandInbox,
) -> Wake {
    tokio::select! {
        _ = shutdown.cancelled() => Wake::Stop,
        _ = tokio::time::sleep_until(next) => Wake::Due,
        cmd = commands.recv() => cmd.map_or(Wake::Stop, Wake::Command),
    }
}

/// How a device kind's failures read in the log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Words {
    /// A problem only the user can fix ("plug cannot be used").
    pub unusable: &'static str,
    /// One failed poll ("plug poll failed").
    pub failed: &'static str,
}

/// What a device task reports about its device.
pub(crate) struct Report {
    pub(crate) id: String,
    events: mpsc::Sender<DriverEvent>,
    online: Reachability,
    identity: Option<Identity>,
}

impl Report {
    pub(crate) fn new(id: &str, events: mpsc::Sender<DriverEvent>) -> Self {
        Self {
            id: id.to_owned(),
            events,
            online: Reachability::new(id),
            identity: None,
        }
    }

    pub(crate) async fn send(&self, ev: DriverEvent) {
        let _ = self.events.send(ev).await;
    }

    pub(crate) async fn set_online(&mut self, online: bool) {
        self.online.set(&self.events, online).await;
    }

    /// What the device says it is: an event when that changed. Whether it
    /// did.
    pub(crate) async fn identified(&mut self, id: Identity) -> bool {
        if self.identity.as_ref() == Some(&id) {
            return false;
        }
        self.identity = Some(id.clone());
        self.send(DriverEvent::Identity {
            device: self.id.clone(),
            info: id,
        })
        .await;
        true
    }

    /// Carries out [`PollHealth`](crate::drivers::health::PollHealth)'s
    /// verdict on a failed poll: the log line at its loudness, the problem
    /// (once), and offline when it is due.
    pub(crate) async fn failed(&mut self, a: &AfterFailure, message: &str, words: Words) {
        let failures = a.failures;
        match a.log {
            Loudness::Error => tracing::error!(%message, "{}", words.unusable),
            Loudness::Warn => tracing::warn!(error = %message, failures, "{}", words.failed),
            Loudness::Debug => tracing::debug!(error = %message, failures, "{}", words.failed),
            Loudness::Quiet => {}
        }
        if let Some(problem) = &a.problem {
            self.send(DriverEvent::Problem {
                device: self.id.clone(),
                message: problem.clone(),
            })
            .await;
        }
        if a.offline {
            self.set_online(false).await;
        }
    }
}
