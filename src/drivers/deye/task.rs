//! One task per inverter: connect, learn what it is, poll its two register
//! blocks, check the sample, report it. Gentle with the stick: one
//! connection, one request at a time, backoff when it is unreachable.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::registers::{self, Family, Identity, Registers, Sample};
use super::transport::{Link, LinkCounters, TransportError};
use crate::config::InverterConfig;
use crate::drivers::health::{Failure, PollHealth};
use crate::drivers::poll::{Report, Wake, Words, wait};
use crate::drivers::{DeviceInfo, DriverEvent, DriverHandle};
use crate::model::{DeviceCommand, InverterReading, Reading};

/// Identity (model, serial, rated power) is re-read this often.
const IDENTITY_EVERY: Duration = Duration::from_secs(3600);
/// Reconnect backoff: from the poll interval doubling to this.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// An unsupported model is checked again this rarely.
const UNSUPPORTED_RETRY: Duration = Duration::from_secs(3600);
const INVERTER_WORDS: Words = Words {
    unusable: "inverter cannot be read",
    failed: "inverter poll failed",
};

/// Why a poll produced nothing.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{0}")]
    Unsupported(String),
    #[error("sample dropped: {0}")]
    Implausible(String),
    #[error("cannot decode the registers: {0}")]
    Decode(String),
}

/// The poll loop's memory between polls.
pub struct Poller {
    config: InverterConfig,
    counters: Arc<LinkCounters>,
    link: Option<Link>,
    family: Option<&'static Family>,
    identity: Option<(Identity, Instant)>,
    previous: Option<Sample>,
    pub samples_rejected: u64,
    pub polls_failed: u64,
}

impl Poller {
    pub fn new(config: InverterConfig) -> Self {
        Self {
            config,
            counters: Arc::new(LinkCounters::default()),
            link: None,
            family: None,
            identity: None,
            previous: None,
            samples_rejected: 0,
            polls_failed: 0,
        }
    }

    /// One full poll: (re)connect when needed, identity when stale, then
    /// the blocks of the read plan. Returns the new identity as well when
    /// it was read.
    pub async fn poll(&mut self) -> Result<(Sample, Option<Identity>), PollError> {
        if self.link.is_none() {
            self.link = Some(Link::connect(&self.config, self.counters.clone()).await?);
        }
        let res = self.poll_connected().await;
        if let Err(PollError::Transport(e)) = &res {
            if e.needs_reconnect() {
                if let Some(link) = self.link.take() {
                    link.close().await;
                }
            }
        }
        res
    }

    async fn poll_connected(&mut self) -> Result<(Sample, Option<Identity>), PollError> {
        let max_block = self.config.max_block;
        let stale = self
            .identity
            .as_ref()
            .is_none_or(|(_, at)| at.elapsed() >= IDENTITY_EVERY);
        let mut fresh_identity = None;
        if stale {
            let mut regs = Registers::new();
            let id_block = registers::IDENTITY;
            for b in registers::plan(&[id_block], max_block) {
                let values = self.read_with_retry(b.start, b.count).await?;
                regs.insert_block(b.start, &values);
            }
            let device_type = regs.get(0).unwrap_or(0);
            let family = registers::detect_family(device_type)
                .map_err(|e| PollError::Unsupported(e.to_string()))?;
            let identity =
                registers::decode_identity(&regs).map_err(|e| PollError::Decode(e.to_string()))?;
            self.family = Some(family);
            self.identity = Some((identity.clone(), Instant::now()));
            fresh_identity = Some(identity);
        }
        let (Some(family), Some((identity, _))) = (self.family, self.identity.as_ref()) else {
            return Err(PollError::Decode("identity not read".into()));
        };
        let rated = identity.rated_power_w;
        let mut regs = Registers::new();
        for b in registers::plan(family.blocks, max_block) {
            let values = self.read_with_retry(b.start, b.count).await?;
            regs.insert_block(b.start, &values);
        }
        let options = registers::DecodeOptions {
            power_scale: self.config.power_scale,
        };
        let sample = registers::decode_sample(family, &regs, &options)
            .map_err(|e| PollError::Decode(e.to_string()))?;
        if let Err(e) = registers::check(&sample, self.previous.as_ref(), rated) {
            self.samples_rejected += 1;
            return Err(PollError::Implausible(e.to_string()));
        }
        self.previous = Some(sample.clone());
        Ok((sample, fresh_identity))
    }

    /// One retry for the errors a second try can cure: a lost reply or an
    /// inverter busy for a moment (same connection, fresh sequence byte),
    /// or a stick that dropped the connection (some firmware resets it
    /// every few seconds: reconnect and send again, as ha-solarman does).
    async fn read_with_retry(
        &mut self,
        start: u16,
        count: u16,
    ) -> Result<Vec<u16>, TransportError> {
        let first = match self.link.as_mut() {
            Some(link) => link.read(start, count).await,
            None => Err(TransportError::Io(std::io::ErrorKind::NotConnected.into())),
        };
        match first {
            Err(e) if retryable(&e) => {
                tracing::debug!(error = %e, start, count, "read failed, retrying once");
                match self.link.as_mut() {
                    Some(link) => link.read(start, count).await,
                    None => Err(e),
                }
            }
            Err(TransportError::Io(e)) => {
                tracing::debug!(error = %e, start, count, "connection lost, reconnecting once");
                if let Some(link) = self.link.take() {
                    link.close().await;
                }
                let mut link = Link::connect(&self.config, self.counters.clone()).await?;
                let res = link.read(start, count).await;
                self.link = Some(link);
                res
            }
            other => other,
        }
    }

    /// Writes registers (function 0x10) on the open connection.
    pub async fn write(&mut self, start: u16, values: &[u16]) -> Result<(), TransportError> {
        if self.link.is_none() {
            self.link = Some(Link::connect(&self.config, self.counters.clone()).await?);
        }
        match self.link.as_mut() {
            Some(link) => link.write(start, values).await,
            None => Err(TransportError::Io(std::io::ErrorKind::NotConnected.into())),
        }
    }

    pub async fn close(&mut self) {
        if let Some(link) = self.link.take() {
            link.close().await;
        }
    }

    /// The diagnostics published with every sample.
    fn diagnostics(&self) -> Map<String, Value> {
        let c = &self.counters;
        let mut m = Map::new();
        m.insert(
            "link_errors".into(),
            (LinkCounters::get(&c.bad_frames) + LinkCounters::get(&c.stray_replies)).into(),
        );
        m.insert("samples_rejected".into(), self.samples_rejected.into());
        m.insert("polls_failed".into(), self.polls_failed.into());
        if let Some((id, _)) = &self.identity {
            m.extend(id.to_map());
        }
        if self.config.transport == crate::config::InverterTransport::Solarman {
            if let Some(serial) = self.config.serial {
                m.insert("logger_serial".into(), serial.to_string().into());
            }
        }
        m
    }
}

fn retryable(e: &TransportError) -> bool {
    match e {
        TransportError::Timeout(_) | TransportError::NoAnswer => true,
        TransportError::Exception(code) => {
            let code: u8 = (*code).into();
            matches!(code, 0x04 | 0x06 | 0x0B)
        }
        _ => false,
    }
}

/// Starts the task for one inverter.
pub fn spawn(
    config: InverterConfig,
    events: mpsc::Sender<DriverEvent>,
    shutdown: CancellationToken,
) -> DriverHandle {
    let span = tracing::info_span!("inverter", id = %config.id);
    crate::drivers::spawn_task(span, move |rx| run(config, events, rx, shutdown))
}

async fn run(
    config: InverterConfig,
    events: mpsc::Sender<DriverEvent>,
    mut commands: crate::drivers::inbox::CommandInbox,
    shutdown: CancellationToken,
) {
    let id = config.id.clone();
    let interval = config.poll_interval;
    let mut health = PollHealth::new(interval, config.unavailable_after, BACKOFF_MAX);
    let mut poller = Poller::new(config);
    let mut report = Report::new(&id, events);
    let mut next = Instant::now();
    loop {
        match wait(&shutdown, next, &mut commands).await {
            Wake::Stop => break,
            Wake::Due | Wake::Command(DeviceCommand::Refresh) => {}
            Wake::Command(DeviceCommand::Switch(_)) => {
                report
                    .send(DriverEvent::CommandFailed {
                        device: id.clone(),
                        reason: "an inverter accepts no set commands".into(),
                    })
                    .await;
                continue;
            }
        }
        let started = Instant::now();
        let result = poller.poll().await;
        let mut delay = interval;
        match result {
            Ok((sample, identity)) => {
                health.succeeded();
                if let Some(identity) = identity {
                    tracing::info!(
                        model = %identity.model_name(),
                        serial = %identity.inverter_serial,
                        rated_w = identity.rated_power_w,
                        "inverter identified"
                    );
                    report.identified(device_info(&identity)).await;
                }
                report.set_online(true).await;
                let mut details = sample.to_map();
                details.extend(poller.diagnostics());
                details.insert(
                    "poll_ms".into(),
                    Value::from(started.elapsed().as_millis() as u64),
                );
                let rated = poller.identity.as_ref().map(|(i, _)| i.rated_power_w);
                let reading = inverter_reading(&sample, rated).with_details(details);
                report
                    .send(DriverEvent::Readings {
                        device: id.clone(),
                        reading: Reading::Inverter(Box::new(reading)),
                    })
                    .await;
            }
            Err(PollError::Implausible(reason)) => {
                // The stick answered: the inverter is reachable, only this
                // sample is not to be trusted.
                tracing::warn!(%reason, "implausible sample dropped");
            }
            Err(e) => {
                poller.polls_failed += 1;
                let message = e.to_string();
                let user_must_act = matches!(
                    e,
                    PollError::Unsupported(_)
                        | PollError::Transport(TransportError::WrongSerial { .. })
                );
                let kind = if user_must_act {
                    Failure::NeedsUser { offline_for: None }
                } else {
                    Failure::Transient
                };
                let a = health.failed(kind, &message);
                report.failed(&a, &message, INVERTER_WORDS).await;
                delay = a.wait;
                if matches!(e, PollError::Unsupported(_)) {
                    poller.close().await;
                    delay = delay.max(UNSUPPORTED_RETRY);
                }
            }
        }
        next = started + delay;
    }
    poller.close().await;
}

/// The typed part of a sample; the rest of the register map travels as
/// details.
fn inverter_reading(sample: &Sample, rated_power_w: Option<f64>) -> InverterReading {
    InverterReading {
        rated_power_w,
        inverter_power_w: sample.inverter_power_w,
        grid_port_power_w: sample.grid_port_power_w,
        gen_port_power_w: sample.gen_port_power_w,
        load_power_w: sample.load_power_w,
        grid_power_w: sample.grid_power_w,
        pv_power_w: sample.pv_power_w,
        battery_power_w: sample.battery_power_w,
        battery_soc_pct: sample.battery_soc,
        grid_connected: sample.grid_connected,
        fault_bits: sample.fault_bits,
        // The register map's `Role::Faults` field, as names.
        faults: sample
            .get("faults")
            .and_then(registers::Value::text)
            .unwrap_or_else(|| "none".into()),
        details: Default::default(),
    }
}

fn device_info(identity: &Identity) -> DeviceInfo {
    DeviceInfo {
        manufacturer: Some("Deye".into()),
        model: Some(identity.model_name()),
        serial_number: Some(identity.inverter_serial.clone()),
        sw_version: Some(identity.fw_control_board.clone()),
        hw_version: Some(identity.fw_comm_board.clone()),
    }
}
