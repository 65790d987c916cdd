//! The one task that owns the bridge's state: the registry of devices, the
//! control plane, discovery and the clean-up. It answers what arrives (MQTT
//! messages through `mqtt::router`, driver events, ticks) and leaves
//! everything it publishes in the outbox; `app` only wires it up and runs
//! its loop.

mod claim;
mod commands;
mod info;
mod outputs;
mod readings;
mod session;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use rumqttc::AsyncClient;
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::config::Config;
use crate::control::{self, Control};
use crate::core::registry::Registry;
use crate::drivers::DriverHandle;
use crate::mqtt::Topics;
use crate::mqtt::devices::{Known, published_discovery};
use crate::mqtt::discovery::DiscoveryMessage;
use crate::mqtt::outbox::Outbox;

pub use claim::{BaseTopicTaken, Claim};

/// Wall-clock time for the control plane (persisted times must mean the
/// same after a restart).
fn control_now() -> crate::core::balancer::Timestamp {
    crate::clock::now()
}

/// The control plane's time and the local civil time of the same instant
/// (control itself reads no clock).
fn control_moment() -> (
    crate::core::balancer::Timestamp,
    crate::core::timers::LocalTime,
) {
    let now = crate::clock::now();
    (now, crate::clock::local_at(now))
}

/// Our retained discovery configs seen since start-up, collected for a
/// short window so that those the configuration dropped can be cleared.
#[derive(Debug)]
pub(crate) struct Cleanup {
    pub(crate) deadline: Instant,
    found: BTreeSet<String>,
}

/// The state the bridge task owns.
pub struct Bridge {
    pub(crate) config: Config,
    pub(crate) topics: Topics,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) client: AsyncClient,
    discovery: Vec<DiscoveryMessage>,
    registry: Registry,
    pub(crate) drivers: HashMap<String, DriverHandle>,
    started: Instant,
    started_at: OffsetDateTime,
    reconnects: u64,
    commands_rejected: u64,
    /// Shared with the connection's poll task, which does the counting.
    pub incoming_dropped: Arc<std::sync::atomic::AtomicU64>,
    pub(crate) gc: Option<Cleanup>,
    cleanup_done: bool,
    /// What `health.json` says (None: not written yet).
    healthy: Option<bool>,
    /// The record waiting to be written (see `set_healthy`).
    health_latest: Arc<std::sync::Mutex<Option<crate::health::Health>>>,
    /// Until settled: whether another instance holds the base topic.
    pub(crate) claim: Option<Claim>,
    pub(crate) ha_birth_at: Option<Instant>,
    /// What devices said about themselves, for their discovery configs.
    known: Known,
    /// Configs an earlier run left under a device that has not described
    /// itself yet: judged once it has, so that a pack or plug unreachable
    /// at start keeps its entities (and the user's changes to them) in
    /// Home Assistant.
    deferred_stale: Vec<String>,
    control: Control,
    /// Writes `control.json` (made on first use).
    control_writer: Option<Arc<outputs::ControlWriter>>,
    /// Carries out switches after the state they rest on is saved
    /// (started on first use).
    actuator: Option<tokio::sync::mpsc::UnboundedSender<outputs::Actuation>>,
    /// Outputs of loading the control state, published with the rest.
    control_startup: Vec<control::Output>,
}

impl Bridge {
    pub fn new(config: Config, topics: Topics, outbox: Arc<Outbox>, client: AsyncClient) -> Self {
        let discovery = published_discovery(&config, &topics, &Known::default());
        let registry = Registry::from_config(&config);
        let (control, control_startup) = Control::new(
            &config,
            crate::storage::Store::new(config.storage.dir.clone()),
        );
        Self {
            config,
            topics,
            outbox,
            client,
            discovery,
            registry,
            drivers: HashMap::new(),
            started: Instant::now(),
            started_at: crate::clock::now_utc(),
            reconnects: 0,
            commands_rejected: 0,
            incoming_dropped: Arc::default(),
            gc: None,
            cleanup_done: false,
            healthy: None,
            health_latest: Arc::default(),
            claim: Some(Claim::pending()),
            ha_birth_at: None,
            known: Known::default(),
            deferred_stale: Vec::new(),
            control,
            control_writer: None,
            actuator: None,
            control_startup,
        }
    }
}

#[cfg(test)]
mod tests;
