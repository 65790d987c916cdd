//! Wiring: the embedded broker, the MQTT connection and the one task that
//! owns the bridge's state and answers what arrives.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, QoS, SubscribeFilter};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, PlugConnection};
use crate::control::{self, Control};
use crate::core::registry::Registry;
use crate::drivers::{DriverEvent, DriverHandle};
use crate::model::{DeviceCommand, DeviceKind, SwitchState};
use crate::mqtt::commands::SetCommand;
use crate::mqtt::connection::{Connection, Incoming};
use crate::mqtt::discovery::{self, DiscoveryMessage};
use crate::mqtt::outbox::{Class, Message, Outbox};
use crate::mqtt::router::{self, BridgeRequest, Inbound, Route};
use crate::mqtt::{Topics, payloads, settings};

/// How often the bridge's own state (uptime, counters) is refreshed.
pub const BRIDGE_STATE_INTERVAL: Duration = Duration::from_secs(60);
/// The control plane also runs on every fresh reading; this bounds how
/// late timers, retries and staleness are noticed.
pub const CONTROL_INTERVAL: Duration = Duration::from_secs(1);

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

/// Starts the task of one BMS pack; which transport it uses is the
/// caller's choice (BlueZ, or the demo's simulated packs).
pub type BmsSpawner = Box<
    dyn Fn(
            crate::config::BmsConfig,
            crate::storage::Store,
            mpsc::Sender<DriverEvent>,
            CancellationToken,
        ) -> DriverHandle
        + Send
        + Sync,
>;

/// Packs over BlueZ (or, without the `ble` feature, a clear error per pack).
pub fn bluez_packs() -> BmsSpawner {
    #[cfg(feature = "ble")]
    {
        let connector = Arc::new(crate::drivers::jkbms::link::BluezConnector::default());
        Box::new(move |pack, store, events, shutdown| {
            crate::drivers::jkbms::task::spawn(pack, connector.clone(), store, events, shutdown)
        })
    }
    #[cfg(not(feature = "ble"))]
    {
        Box::new(|pack, _store, events, _shutdown| {
            let (tx, _rx) = crate::drivers::inbox::channel();
            let id = pack.id.clone();
            tokio::spawn(async move {
                let _ = events
                    .send(DriverEvent::Problem {
                        device: id,
                        message:
                            "this build has no Bluetooth support (built without the `ble` feature)"
                                .into(),
                    })
                    .await;
            });
            DriverHandle {
                commands: tx,
                task: None,
            }
        })
    }
}

/// Runs the bridge until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with(config, shutdown, bluez_packs()).await
}

/// [`run`] with the packs' transport chosen by the caller.
pub async fn run_with(
    config: Config,
    shutdown: CancellationToken,
    packs: BmsSpawner,
) -> anyhow::Result<()> {
    if config.broker.enabled {
        crate::broker::start(&config.broker)
            .await
            .context("embedded broker")?;
    }
    let topics = Topics::from_config(&config);
    let options = settings::mqtt_options(&config, &topics)?;
    let endpoint = settings::endpoint(&config).map_err(anyhow::Error::msg)?;
    tracing::info!(broker = %endpoint, base = topics.base(), "starting energy2mqtt {}", env!("CARGO_PKG_VERSION"));
    // Held until the base-topic claim is settled: nothing of ours reaches
    // the broker before we know no other instance holds the base topic.
    let outbox = Outbox::default();
    outbox.hold();
    let mut conn = Connection::start_with(options, config.mqtt.reconnect_max, outbox);
    let (driver_tx, mut driver_rx) = mpsc::channel::<DriverEvent>(256);
    let drivers = spawn_drivers(&config, &driver_tx, &shutdown, &packs);
    let mut bridge = Bridge::new(config, topics, conn.outbox.clone(), conn.client.clone());
    bridge.drivers = drivers;
    bridge.incoming_dropped = conn.incoming_dropped.clone();
    bridge.set_healthy(false);
    bridge.publish_initial();

    let mut stats_tick = tokio::time::interval(BRIDGE_STATE_INTERVAL);
    stats_tick.tick().await;
    let mut control_tick = tokio::time::interval(CONTROL_INTERVAL);
    control_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sessions_seen = 0;
    let refused = loop {
        let gc_deadline = bridge.gc.as_ref().map(|g| g.deadline);
        let birth_deadline = bridge.ha_birth_at;
        let claim_deadline = bridge.claim.as_ref().and_then(|c| c.deadline);
        tokio::select! {
            _ = shutdown.cancelled() => break None,
            changed = conn.status.changed() => {
                if changed.is_err() {
                    anyhow::bail!("the MQTT connection task stopped");
                }
                let status = *conn.status.borrow_and_update();
                if !status.connected {
                    bridge.set_healthy(false);
                }
                if status.connected && status.sessions > sessions_seen {
                    sessions_seen = status.sessions;
                    if bridge.claim.is_some() {
                        bridge.start_claim(status.subacks).await;
                    } else {
                        bridge.on_session(status.sessions).await;
                    }
                }
                if let Some(claim) = &mut bridge.claim {
                    claim.on_status(status.subacks, Instant::now());
                }
            }
            _ = sleep_until(claim_deadline), if claim_deadline.is_some() => {
                if let Err(refusal) = bridge.settle_claim(sessions_seen).await {
                    break Some(refusal);
                }
            }
            Some(msg) = conn.incoming.recv() => {
                if let Some(claim) = &mut bridge.claim {
                    if claim.on_incoming(&bridge.topics, &msg) {
                        if let Err(refusal) = bridge.settle_claim(sessions_seen).await {
                            break Some(refusal);
                        }
                    }
                    continue;
                }
                bridge.on_incoming(msg)
            }
            Some(ev) = driver_rx.recv() => bridge.on_driver_event(ev),
            _ = sleep_until(gc_deadline), if gc_deadline.is_some() => bridge.finish_cleanup().await,
            _ = sleep_until(birth_deadline), if birth_deadline.is_some() => bridge.on_ha_birth(),
            _ = stats_tick.tick() => bridge.publish_bridge_state(),
            _ = control_tick.tick() => bridge.control_step(),
        }
    };
    if let Some(refusal) = refused {
        // Leave without a trace on the other instance's topics: no offline
        // state (the clean DISCONNECT also keeps our Last Will unsent).
        bridge.outbox.with(|q| q.set_held(true));
        conn.shutdown(None, Duration::from_secs(2)).await;
        return Err(anyhow::Error::new(refusal));
    }
    tracing::info!("shutting down");
    bridge.set_healthy(false);
    // Whatever control state is still pending reaches the disk first.
    let _ = tokio::task::spawn_blocking(bridge.control_writer()).await;
    // The drivers' tokens are children of `shutdown`: give them a moment to
    // release their devices (a pack must be free for the phone app, a
    // logger stick runs out of sockets when clients vanish).
    let releases: Vec<_> = bridge
        .drivers
        .values_mut()
        .filter_map(|d| d.task.take())
        .collect();
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        for t in releases {
            let _ = t.await;
        }
    })
    .await;
    // Stopped before the claim was settled: the base topic may be another
    // instance's, so say nothing on it.
    let offline = bridge.claim.is_none().then(|| {
        Message::retained(
            Class::BridgeState,
            bridge.topics.bridge_state(),
            payloads::OFFLINE,
        )
    });
    conn.shutdown(offline, Duration::from_secs(2)).await;
    Ok(())
}

/// One task per configured device that has a driver.
fn spawn_drivers(
    config: &Config,
    events: &mpsc::Sender<DriverEvent>,
    shutdown: &CancellationToken,
    packs: &BmsSpawner,
) -> HashMap<String, DriverHandle> {
    let mut out = HashMap::new();
    let store = crate::storage::Store::new(config.storage.dir.clone());
    for pack in &config.bms {
        let handle = packs(
            pack.clone(),
            store.clone(),
            events.clone(),
            shutdown.child_token(),
        );
        out.insert(pack.id.clone(), handle);
    }
    for inv in &config.inverter {
        let handle =
            crate::drivers::deye::task::spawn(inv.clone(), events.clone(), shutdown.child_token());
        out.insert(inv.id.clone(), handle);
    }
    for plug in &config.plug {
        let handle = match &plug.connection {
            PlugConnection::Tapo(tapo) => {
                let link = crate::drivers::tapo::link_for(config, plug, tapo);
                crate::drivers::tapo::task::spawn(link, events.clone(), shutdown.child_token())
            }
            PlugConnection::Shelly(shelly) => {
                let link = crate::drivers::shelly::link_for(plug, shelly);
                crate::drivers::shelly::task::spawn(link, events.clone(), shutdown.child_token())
            }
        };
        out.insert(plug.id.clone(), handle);
    }
    out
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

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
    deadline: Option<Instant>,
    state: Option<Value>,
    info: Option<Value>,
    /// What else arrived meanwhile.
    held: Vec<Incoming>,
}

/// Messages kept while the claim is settled (commands queued for our
/// persistent session).
const HELD_MAX: usize = 1024;

impl Claim {
    fn on_status(&mut self, subacks: u64, now: Instant) {
        if subacks > self.subacks_before {
            let grace = now + CLAIM_GRACE;
            if self.deadline.is_none_or(|d| grace < d) {
                self.deadline = Some(grace);
            }
        }
    }

    /// Records a retained `bridge/state` or `bridge/info`; true once both
    /// are in (no need to wait longer).
    fn on_incoming(&mut self, topics: &Topics, msg: &Incoming) -> bool {
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

/// This machine's name, for `bridge/info` (so that a second instance can
/// say where the first one runs).
fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

/// Our retained discovery configs seen since start-up, collected for a
/// short window so that those the configuration dropped can be cleared.
#[derive(Debug)]
struct Cleanup {
    deadline: Instant,
    found: BTreeSet<String>,
}

/// The state the bridge task owns.
pub struct Bridge {
    config: Config,
    topics: Topics,
    outbox: Arc<Outbox>,
    client: AsyncClient,
    discovery: Vec<DiscoveryMessage>,
    registry: Registry,
    drivers: HashMap<String, DriverHandle>,
    started: Instant,
    started_at: OffsetDateTime,
    reconnects: u64,
    commands_rejected: u64,
    /// Shared with the connection's poll task, which does the counting.
    pub incoming_dropped: Arc<std::sync::atomic::AtomicU64>,
    gc: Option<Cleanup>,
    cleanup_done: bool,
    /// What `health.json` says (None: not written yet).
    healthy: Option<bool>,
    /// The record waiting to be written (see `set_healthy`).
    health_latest: Arc<std::sync::Mutex<Option<crate::health::Health>>>,
    /// Until settled: whether another instance holds the base topic.
    claim: Option<Claim>,
    ha_birth_at: Option<Instant>,
    /// What devices said about themselves, for their discovery configs.
    known: Known,
    /// Configs an earlier run left under a device that has not described
    /// itself yet: judged once it has, so that a pack or plug unreachable
    /// at start keeps its entities (and the user's changes to them) in
    /// Home Assistant.
    deferred_stale: Vec<String>,
    control: Control,
    /// The control state waiting to be written (see `save_control`).
    control_latest: Arc<std::sync::Mutex<Option<Box<control::Saved>>>>,
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
            claim: Some(Claim {
                subacks_before: 0,
                deadline: None,
                state: None,
                info: None,
                held: Vec::new(),
            }),
            ha_birth_at: None,
            known: Known::default(),
            deferred_stale: Vec::new(),
            control,
            control_latest: Arc::default(),
            control_startup,
        }
    }

    /// Writes `control.json` off this task (it fsyncs). Writes may run in
    /// any order: each takes the newest state under one lock, so the file
    /// always ends with it. A failure is reported once (`state_error`) and
    /// the control plane hands the state out again at its next step.
    fn save_control(&mut self, saved: Box<control::Saved>) {
        *self
            .control_latest
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(saved);
        let writer = self.control_writer();
        tokio::task::spawn_blocking(writer);
    }

    /// The blocking write of the newest pending control state.
    fn control_writer(&self) -> impl FnOnce() + Send + 'static {
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

    /// Everything retained the bridge publishes before any device speaks.
    fn publish_initial(&mut self) {
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

    /// Runs the control plane on the latest facts.
    fn control_step(&mut self) {
        let now = control_now();
        let outputs = self
            .control
            .step(&self.registry, now, crate::clock::local_at(now));
        self.apply(outputs);
    }

    fn apply(&mut self, outputs: Vec<control::Output>) {
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

    /// First contact with the broker: read who holds the base topic
    /// before publishing anything (the outbox is held meanwhile).
    async fn start_claim(&mut self, subacks: u64) {
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
    async fn settle_claim(&mut self, session: u64) -> Result<(), BaseTopicTaken> {
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

    /// Keeps `health.json` (for `energy2mqtt health`) true: written only
    /// when the state changes, off the async threads.
    fn set_healthy(&mut self, connected: bool) {
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

    async fn on_session(&mut self, session: u64) {
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
        // (rumqttd keeps them in memory only): publish everything again.
        self.outbox.requeue(|_| true);
    }

    fn on_ha_birth(&mut self) {
        self.ha_birth_at = None;
        tracing::info!("Home Assistant is online: republishing availability and states");
        self.outbox
            .requeue(|c| matches!(c, Class::BridgeState | Class::Availability | Class::State));
    }

    async fn finish_cleanup(&mut self) {
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

    fn waits_for_description(&self, topic: &str) -> bool {
        // With discovery off every config of ours goes, described or not.
        self.config.homeassistant.discovery
            && self
                .topics
                .discovery_node(topic)
                .is_some_and(|node| !self.known.describes(&self.config, node))
    }

    fn remove_discovery(&mut self, topic: String) {
        tracing::info!(%topic, "removing discovery config the configuration no longer produces");
        self.outbox
            .push(Message::retained(Class::Discovery, topic, Vec::<u8>::new()));
    }

    /// Carries out what the router made of an incoming message.
    fn on_incoming(&mut self, msg: Incoming) {
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
            Route::AlertThresholds(v) => {
                let (now, local) = control_moment();
                match self
                    .control
                    .set_alert_thresholds(&self.registry, &v, now, local)
                {
                    Ok(outputs) => self.apply(outputs),
                    Err(e) => self.command_error("alerts", topic, e.to_string()),
                }
            }
            Route::Balancer { inverter, changes } => {
                let (now, local) = control_moment();
                match self
                    .control
                    .set_balancer(&self.registry, inverter, &changes, now, local)
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
    fn clear_retained(&mut self, topic: &str) {
        self.outbox.push(Message::retained(
            Class::Info,
            topic.to_owned(),
            Vec::<u8>::new(),
        ));
    }

    fn on_request(&mut self, request: BridgeRequest) -> Result<Value, String> {
        match request {
            BridgeRequest::HealthCheck => Ok(json!({"healthy": true})),
            BridgeRequest::Info => Ok(self.bridge_info()),
            BridgeRequest::Balancer { inverter, changes } => {
                self.request_balancer(&inverter, changes)
            }
            BridgeRequest::AlertThresholds(body) => self.request_alert_thresholds(body),
        }
    }

    /// The answer on `bridge/response/<cmd>`; a refusal is counted and
    /// logged once.
    fn respond(&mut self, cmd: &str, result: Result<Value, String>, transaction: Option<Value>) {
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
    fn request_balancer(
        &mut self,
        inverter: &str,
        changes: Map<String, Value>,
    ) -> Result<Value, String> {
        if !changes.is_empty() {
            let (now, local) = control_moment();
            let outputs = self
                .control
                .set_balancer(
                    &self.registry,
                    inverter,
                    &Value::Object(changes),
                    now,
                    local,
                )
                .map_err(|e| e.to_string())?;
            self.apply(outputs);
        }
        self.control
            .balancer_status(inverter)
            .ok_or_else(|| format!("no balancer for '{inverter}'"))
    }

    /// `bridge/request/alert_thresholds` `{"<rule>": value, ...}`: answers
    /// with every threshold in force.
    fn request_alert_thresholds(&mut self, body: Map<String, Value>) -> Result<Value, String> {
        if !body.is_empty() {
            let (now, local) = control_moment();
            let outputs = self
                .control
                .set_alert_thresholds(&self.registry, &Value::Object(body), now, local)
                .map_err(|e| e.to_string())?;
            self.apply(outputs);
        }
        Ok(self.control.alert_thresholds())
    }

    /// `<plug>/set`: the mode and the timer are the bridge's business, the
    /// state goes to the plug.
    fn on_set(&mut self, device: &str, topic: &str, set: SetCommand) {
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

    fn send_to_driver(&mut self, device: &str, topic: &str, command: DeviceCommand) {
        match self.drivers.get(device) {
            Some(driver) => {
                if driver.commands.send(command).is_err() {
                    self.command_error(
                        device,
                        topic,
                        format!(
                            "the driver of '{device}' has stopped; the command was not carried out"
                        ),
                    );
                }
            }
            None if command == DeviceCommand::Refresh => {}
            None => self.command_error(
                device,
                topic,
                format!("no driver is running for '{device}'; the command was not carried out"),
            ),
        }
    }

    fn command_error(&mut self, device: &str, topic: &str, error: String) {
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

    fn on_driver_event(&mut self, ev: DriverEvent) {
        match ev {
            DriverEvent::Readings { device, reading } => {
                let now = crate::clock::now_utc();
                if self.registry.record(&device, reading, now) {
                    self.republish_device(&device);
                    let kind = self.registry.get(&device).map(|d| d.kind);
                    if kind == Some(DeviceKind::Inverter) {
                        self.publish_site(now);
                    }
                    // React to an overload on the sample that shows it,
                    // not on the next tick.
                    if matches!(kind, Some(DeviceKind::Inverter | DeviceKind::Plug)) {
                        self.control_step();
                    }
                }
            }
            DriverEvent::Identity { device, info } => {
                if self.known.identities.get(&device) != Some(&info) {
                    self.known.identities.insert(device, info);
                    self.refresh_discovery();
                }
            }
            DriverEvent::Fields { device, fields } => {
                if self.known.fields.get(&device) != Some(&fields) {
                    self.known.fields.insert(device, fields);
                    self.refresh_discovery();
                }
            }
            DriverEvent::Problem { device, message } => {
                let mut fields = Map::new();
                fields.insert("error".into(), message.into());
                self.outbox.push(Message::transient(
                    self.topics.bridge_event(),
                    payloads::event("device_error", Some(&device), fields),
                ));
            }
            DriverEvent::Availability { device, online } => {
                let was = self.registry.get(&device).and_then(|d| d.online);
                if self.registry.set_online(&device, online) {
                    if online && was == Some(false) {
                        tracing::info!(device = %device, "device reachable again");
                    }
                    if self.registry.get(&device).map(|d| d.kind) == Some(DeviceKind::Inverter) {
                        self.publish_site(crate::clock::now_utc());
                    }
                    self.outbox.push_if_changed(Message::retained(
                        Class::Availability,
                        self.topics.availability(&device),
                        payloads::availability(online),
                    ));
                    let kind = if online {
                        "device_connected"
                    } else {
                        "device_lost"
                    };
                    self.outbox.push(Message::transient(
                        self.topics.bridge_event(),
                        payloads::event(kind, Some(&device), Map::new()),
                    ));
                    self.publish_bridge_state();
                }
            }
            DriverEvent::CommandFailed { device, reason } => {
                let topic = self.topics.set(&device);
                self.command_error(&device, &topic, reason);
            }
        }
    }

    /// Recomputes every discovery config, publishes those that changed and
    /// clears those no longer produced (a plug found to be a P100 loses its
    /// power entities).
    fn refresh_discovery(&mut self) {
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

    /// The `site` device: only with more than one inverter.
    fn publish_site(&mut self, now: OffsetDateTime) {
        if self.config.inverter.len() < 2 {
            return;
        }
        let reporting: Vec<&crate::model::InverterReading> = self
            .config
            .inverter
            .iter()
            .filter_map(|inv| self.registry.get(&inv.id))
            .filter(|d| d.online == Some(true) && d.last_seen.is_some())
            .filter_map(|d| d.inverter())
            .collect();
        let any_online = !reporting.is_empty();
        let totals = crate::core::site::totals(reporting);
        self.outbox.push(Message::retained(
            Class::State,
            self.topics.device_state(SITE_ID),
            payloads::device_state(&totals, now),
        ));
        self.outbox.push_if_changed(Message::retained(
            Class::Availability,
            self.topics.availability(SITE_ID),
            payloads::availability(any_online),
        ));
    }

    fn republish_device(&mut self, device: &str) {
        let Some(entry) = self.registry.get(device) else {
            return;
        };
        if let Some(seen) = entry.last_seen {
            self.outbox.push(Message::retained(
                Class::State,
                self.topics.device_state(device),
                payloads::device_state(&entry.state(), seen),
            ));
        }
        if let Some(online) = entry.online {
            self.outbox.push_if_changed(Message::retained(
                Class::Availability,
                self.topics.availability(device),
                payloads::availability(online),
            ));
        }
    }

    fn bridge_info(&self) -> Value {
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

    fn publish_bridge_info(&mut self) {
        self.outbox.push(Message::retained(
            Class::Info,
            self.topics.bridge_info(),
            self.bridge_info().to_string(),
        ));
    }

    fn publish_bridge_state(&mut self) {
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

use crate::mqtt::devices::published_discovery;
pub use crate::mqtt::devices::{Known, SITE_ID, discovery_messages};

#[cfg(test)]
mod tests {
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
