//! One task per pack (spec §2): open the link, ask for device info then
//! the cell-info stream, assemble and decode what arrives, publish the
//! latest sample at most once per `publish_interval`, integrate energy,
//! and keep the link honest with a watchdog. Packs beep on every connect,
//! so reconnects back off and never hammer.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::StreamDecoder;
use super::assembler::{Assembler, AssemblerStats};
use super::cell_info::CellInfo;
use super::command::Request;
use super::frame::Variant;
use super::link::{PackConnector, PackLink};
use super::publish::{PackShape, fields};
use super::{DecodeError, Decoded};
use crate::config::BmsConfig;
use crate::core::energy::{EnergyCounters, Integrator};
use crate::drivers::health::{Failure, PollHealth};
use crate::drivers::poll::{Report, Words};
use crate::drivers::{Description, DeviceInfo, DriverEvent, DriverHandle};
use crate::model::{DeviceCommand, FieldSpec, PackReading, Reading};
use crate::storage::Store;

/// No valid frame for this long: ask for the cell-info stream again.
const RESEND_AFTER: Duration = Duration::from_secs(10);
/// No valid frame for this long: drop the link and start over.
const RECONNECT_AFTER: Duration = Duration::from_secs(30);
/// Reconnect backoff: from this, doubling, up to `BACKOFF_MAX`.
const BACKOFF_FIRST: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
const PACK_WORDS: Words = Words {
    unusable: "pack cannot be used",
    failed: "pack not reachable",
};
/// Energy counters are saved this often (and on shutdown).
const SAVE_EVERY: Duration = Duration::from_secs(60);
/// Power samples further apart are not integrated.
const MAX_GAP_S: f64 = 30.0;

/// The energy keys the bridge adds to a pack's state.
pub fn energy_fields() -> Vec<FieldSpec> {
    let kwh = |key, name| FieldSpec {
        unit: Some("kWh"),
        device_class: Some("energy"),
        state_class: Some("total_increasing"),
        precision: Some(3),
        ..FieldSpec::sensor(key, name)
    };
    vec![
        kwh("energy_charged", "Energy charged"),
        kwh("energy_discharged", "Energy discharged"),
    ]
}

/// Every field a pack of this shape publishes.
pub fn pack_fields(shape: &PackShape) -> Vec<FieldSpec> {
    let mut out = fields(shape);
    out.extend(energy_fields());
    out
}

/// What a pack's state looks like before it has spoken: a 32S pack without
/// per-cell entities (they follow once the cell count is known).
pub fn default_fields() -> Vec<FieldSpec> {
    pack_fields(&PackShape::of(&CellInfo::new(Variant::Jk02_32s)).with_settings(true))
}

/// A pack for discovery: what it said of itself (`info`) and the entities
/// of its shape, once known (`fields`; a 32S pack's until then).
pub fn describe(info: &DeviceInfo, fields: Option<&[FieldSpec]>) -> Description {
    Description {
        manufacturer: "JK BMS",
        model: "JK-BMS",
        // The pack's own serial identifies it too once it has said it, as
        // the other JK-BMS integrations do.
        identifiers: info
            .serial_number
            .iter()
            .map(|serial| format!("jkbms_{serial}"))
            .collect(),
        fields: fields
            .map(<[FieldSpec]>::to_vec)
            .unwrap_or_else(default_fields),
        complete: fields.is_some(),
    }
}

/// The shape a pack's entities follow: its cell info, and whether the
/// settings frame's keys are there.
pub fn pack_shape(info: &CellInfo, settings: &Map<String, Value>) -> PackShape {
    PackShape::of(info).with_settings(!settings.is_empty())
}

/// A pack's report: the live cell info, the last settings frame, the
/// frame counters of all its sessions and the energy counters. Its state
/// object holds every key that [`pack_fields`] advertises for
/// [`pack_shape`] (a test checks it): a key Home Assistant's template
/// cannot find is a warning in its log on every message, and an entity
/// stuck at `unknown`.
pub fn pack_reading(
    info: &CellInfo,
    settings: &Map<String, Value>,
    frames: &AssemblerStats,
    energy: &EnergyCounters,
) -> PackReading {
    let mut r = info.reading();
    // The one setting a consumer reads (the balancer's discharge limit).
    r.max_discharge_current_a = settings
        .get("max_discharge_current")
        .and_then(Value::as_f64);
    r.add_details(settings.clone());
    r.add_details(frames.to_map());
    r.details.insert(
        "energy_charged".into(),
        crate::model::round(energy.charged_kwh, 3).into(),
    );
    r.details.insert(
        "energy_discharged".into(),
        crate::model::round(energy.discharged_kwh, 3).into(),
    );
    r
}

/// Starts the task for one pack.
pub fn spawn<C: PackConnector>(
    pack: BmsConfig,
    connector: Arc<C>,
    store: Store,
    events: mpsc::Sender<DriverEvent>,
    shutdown: CancellationToken,
) -> DriverHandle {
    let span = tracing::info_span!("bms", id = %pack.id);
    crate::drivers::spawn_task(span, move |rx| {
        run(pack, connector, store, events, rx, shutdown)
    })
}

struct Pack {
    id: String,
    report: Report,
    store: Store,
    energy: Integrator,
    started: Instant,
    shape: Option<PackShape>,
    identity_sent: bool,
    settings: Map<String, Value>,
    /// Frame counters of the sessions that have ended.
    frames_before: AssemblerStats,
    last_saved: Instant,
}

impl Pack {
    fn store_key(&self) -> String {
        format!("bms-{}-energy", self.id)
    }

    async fn send(&self, ev: DriverEvent) {
        self.report.send(ev).await;
    }

    async fn set_online(&mut self, online: bool) {
        self.report.set_online(online).await;
    }

    /// On the blocking pool: the write ends in an fsync, and `run` drives
    /// every device from one thread.
    async fn save_energy(&mut self) {
        self.last_saved = Instant::now();
        let (store, key, counters) = (self.store.clone(), self.store_key(), self.energy.counters);
        let saved = tokio::task::spawn_blocking(move || store.save(&key, &counters)).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "energy counters not saved"),
            Err(e) => tracing::warn!(error = %e, "energy counters not saved"),
        }
    }

    /// `frames`: the counters of the running session.
    async fn publish(&mut self, info: &CellInfo, frames: AssemblerStats) {
        let shape = pack_shape(info, &self.settings);
        if self.shape.as_ref() != Some(&shape) {
            self.send(DriverEvent::Fields {
                device: self.id.clone(),
                fields: pack_fields(&shape),
            })
            .await;
            self.shape = Some(shape);
        }
        let frames = self.frames_before.plus(frames);
        let reading = pack_reading(info, &self.settings, &frames, &self.energy.counters);
        self.set_online(true).await;
        self.send(DriverEvent::Readings {
            device: self.id.clone(),
            reading: Reading::Pack(Box::new(reading)),
        })
        .await;
        if self.last_saved.elapsed() >= SAVE_EVERY {
            self.save_energy().await;
        }
    }
}

/// Why a session ended.
enum Ended {
    Shutdown,
    LinkLost,
    Silent,
}

async fn run<C: PackConnector>(
    cfg: BmsConfig,
    connector: Arc<C>,
    store: Store,
    events: mpsc::Sender<DriverEvent>,
    mut commands: crate::drivers::inbox::CommandInbox,
    shutdown: CancellationToken,
) {
    let counters = match store.load::<EnergyCounters>(&format!("bms-{}-energy", cfg.id)) {
        Ok(c) => c.unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, "energy counters start from 0");
            EnergyCounters::default()
        }
    };
    let mut pack = Pack {
        id: cfg.id.clone(),
        report: Report::new(&cfg.id, events),
        store,
        energy: Integrator::new(counters, MAX_GAP_S),
        started: Instant::now(),
        shape: None,
        identity_sent: false,
        settings: Map::new(),
        frames_before: AssemblerStats::default(),
        last_saved: Instant::now(),
    };
    let configured = Variant::from_config(cfg.variant);
    // Connecting is the "poll": the first failure makes the pack
    // unavailable, and the pause doubles from BACKOFF_FIRST.
    let mut health = PollHealth::new(BACKOFF_FIRST, 1, BACKOFF_MAX);
    loop {
        let opened = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = connector.open(&cfg) => r,
        };
        let link = match opened {
            Ok(link) => link,
            Err(e) => {
                let message = e.to_string();
                let a = health.failed(Failure::Transient, &message);
                pack.report.failed(&a, &message, PACK_WORDS).await;
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(a.wait) => {}
                }
                continue;
            }
        };
        tracing::info!("connected");
        let (ended, got_data) =
            session(link, &mut pack, configured, &cfg, &mut commands, &shutdown).await;
        pack.energy.break_chain();
        if got_data {
            health.succeeded();
        }
        let why = match ended {
            Ended::Shutdown => break,
            Ended::LinkLost => "link lost; reconnecting",
            Ended::Silent => "no valid frame for 30 s; reconnecting",
        };
        tracing::warn!("{why}");
        // The pause before the next connect, as after a failed one (the
        // line above is its log line).
        let wait = health.failed(Failure::Transient, why).wait;
        pack.set_online(false).await;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    pack.save_energy().await;
}

/// One connected session; returns why it ended and whether any valid frame
/// came.
async fn session<L: PackLink>(
    mut link: L,
    pack: &mut Pack,
    configured: Option<Variant>,
    cfg: &BmsConfig,
    commands: &mut crate::drivers::inbox::CommandInbox,
    shutdown: &CancellationToken,
) -> (Ended, bool) {
    let mut assembler = Assembler::new();
    let mut decoder = StreamDecoder::new(configured);
    let mut latest: Option<CellInfo> = None;
    let mut fresh = false;
    let mut published = false;
    let mut got_data = false;
    let mut last_valid = Instant::now();
    let mut resent = false;
    // Device info first (it decides the variant), then the stream.
    for req in [Request::DeviceInfo, Request::CellInfo] {
        if let Err(e) = link.write(&req.encode()).await {
            tracing::warn!(error = %e, "writing a command failed");
            link.disconnect().await;
            return (Ended::LinkLost, false);
        }
    }
    let mut tick = tokio::time::interval(cfg.publish_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ended = loop {
        let deadline = last_valid
            + if resent {
                RECONNECT_AFTER
            } else {
                RESEND_AFTER
            };
        tokio::select! {
            _ = shutdown.cancelled() => break Ended::Shutdown,
            cmd = commands.recv() => match cmd {
                None => break Ended::Shutdown,
                Some(DeviceCommand::Refresh) => fresh = latest.is_some(),
                Some(DeviceCommand::Switch(_)) => {
                    pack.send(DriverEvent::CommandFailed {
                        device: pack.id.clone(),
                        reason: "a BMS takes no set commands (writes are off)".into(),
                    }).await;
                }
            },
            n = link.recv() => {
                let Some(bytes) = n else { break Ended::LinkLost };
                let mut frames = Vec::new();
                assembler.feed(&bytes, |f| frames.push(f));
                for frame in frames {
                    match decoder.decode(&frame) {
                        Ok(Decoded::CellInfo(info)) => {
                            last_valid = Instant::now();
                            resent = false;
                            got_data = true;
                            if let Some(p) = info.power() {
                                pack.energy.add(pack.started.elapsed().as_secs_f64(), p);
                            }
                            // The session's first sample goes out at once,
                            // not at the next tick up to a second later: a
                            // pack that just connected is complete sooner
                            // (issue 15).
                            if !published {
                                published = true;
                                pack.publish(&info, assembler.stats()).await;
                                tick.reset();
                                fresh = false;
                            } else {
                                fresh = true;
                            }
                            latest = Some(info);
                        }
                        Ok(Decoded::DeviceInfo(di)) => {
                            last_valid = Instant::now();
                            if !pack.identity_sent {
                                pack.identity_sent = true;
                                tracing::info!(
                                    variant = ?decoder.variant().map(|(v, _)| v.as_str()),
                                    "device info received"
                                );
                            }
                            pack.send(DriverEvent::Identity {
                                device: pack.id.clone(),
                                info: di.identity(),
                            }).await;
                        }
                        Ok(Decoded::Settings(s)) => {
                            last_valid = Instant::now();
                            pack.settings = s.state_map();
                        }
                        Ok(Decoded::Logbook { .. }) => {}
                        Err(e @ DecodeError::Inconsistent { .. }) => {
                            tracing::warn!(error = %e, "frame dropped");
                        }
                        Err(e) => tracing::debug!(error = %e, "frame dropped"),
                    }
                }
            }
            _ = tick.tick() => {
                if fresh {
                    if let Some(info) = latest.clone() {
                        pack.publish(&info, assembler.stats()).await;
                    }
                    fresh = false;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                if resent {
                    break Ended::Silent;
                }
                tracing::info!("no valid frame for 10 s; asking for cell info again");
                resent = true;
                if link.write(&Request::CellInfo.encode()).await.is_err() {
                    break Ended::LinkLost;
                }
            }
        }
    };
    link.disconnect().await;
    pack.frames_before = pack.frames_before.plus(assembler.stats());
    (ended, got_data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::jkbms::StreamDecoder;
    use crate::drivers::jkbms::settings::Settings;
    use crate::sim::jkbms::{SimPack, cell_frames, settings_frame};

    /// The simulated pack's stream as the task decodes it.
    fn sim_sample() -> (CellInfo, Map<String, Value>) {
        let mut bytes = settings_frame().expect("settings frame");
        for f in cell_frames(&SimPack::default(), 3, Duration::from_millis(500)) {
            bytes.extend(f);
        }
        let mut assembler = Assembler::new();
        let mut decoder = StreamDecoder::new(Some(Variant::Jk02_32s));
        let mut frames = Vec::new();
        assembler.feed(&bytes, |f| frames.push(f));
        let (mut info, mut settings) = (None, Map::new());
        for frame in frames {
            match decoder.decode(&frame) {
                Ok(Decoded::CellInfo(i)) => info = Some(i),
                Ok(Decoded::Settings(s)) => settings = s.state_map(),
                _ => {}
            }
        }
        (info.expect("cell info decoded"), settings)
    }

    /// Home Assistant renders `value_json.<key>` for every advertised key
    /// on every state message; a missing key is a template warning each
    /// time (the frame counters were advertised and never published).
    #[test]
    fn every_advertised_key_is_in_the_published_state() {
        let (info, settings) = sim_sample();
        assert!(!settings.is_empty(), "the simulator sends settings");
        for settings in [Map::new(), settings] {
            let state = pack_reading(
                &info,
                &settings,
                &AssemblerStats::default(),
                &EnergyCounters::default(),
            )
            .to_state();
            let shape = pack_shape(&info, &settings);
            let missing: Vec<&str> = pack_fields(&shape)
                .iter()
                .map(|f| f.key)
                .filter(|k| !state.contains_key(*k))
                .collect();
            assert!(
                missing.is_empty(),
                "advertised, not in the state (settings: {}): {missing:?}",
                !settings.is_empty()
            );
        }
    }

    #[test]
    fn settings_keys_are_advertised_only_once_a_settings_frame_came() {
        let (info, settings) = sim_sample();
        let keys = |s: &Map<String, Value>| -> Vec<&'static str> {
            pack_fields(&pack_shape(&info, s))
                .iter()
                .map(|f| f.key)
                .collect()
        };
        assert!(!keys(&Map::new()).contains(&"nominal_capacity"));
        assert!(!keys(&Map::new()).contains(&"balancer_enabled"));
        assert!(keys(&settings).contains(&"nominal_capacity"));
        let jk04 = Settings::example(Variant::Jk04).state_map();
        assert_eq!(
            jk04.keys().collect::<Vec<_>>(),
            ["balancer_enabled"],
            "a JK04 settings frame has one published key"
        );
    }

    #[test]
    fn frame_counters_add_up_over_sessions() {
        let a = AssemblerStats {
            frames: 3,
            bad_checksums: 1,
            junk_bytes: 10,
            ..AssemblerStats::default()
        };
        let total = a.plus(a);
        assert_eq!(total.frames, 6);
        let state = total.to_map();
        assert_eq!(state["frames_bad_checksum"], 2);
        assert_eq!(state["junk_bytes"], 20);
    }
}
