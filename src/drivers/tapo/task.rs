//! One task per plug: poll its state and power, switch it on command and
//! read it back, keep its availability true, and never hammer a plug that
//! refuses our credentials.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::api::{DeviceInfo, EnergyUsage};
use super::client::{PlugClient, TapoError};
use crate::drivers::health::{Failure, Loudness, PollHealth};
use crate::drivers::{DeviceInfo as Identity, DriverEvent, DriverHandle};
use crate::model::{DeviceCommand, FieldKind, FieldSpec, PlugReading, Reading, SwitchState, round};

/// Failed polls in a row before the plug is reported unavailable.
const UNAVAILABLE_AFTER: u32 = 2;
/// Energy counters change slowly: read them every this many polls.
const ENERGY_EVERY: u32 = 6;
/// After a credential failure, try again this rarely (or on `get`).
const CREDENTIALS_RETRY: Duration = Duration::from_secs(3600);
/// Backoff when the plug says it is rate limited.
const RATE_LIMIT_BACKOFF: Duration = Duration::from_secs(30);
/// Backoff cap when the plug is unreachable.
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// What the task needs to reach one plug.
#[derive(Clone)]
pub struct PlugLink {
    pub id: String,
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
    pub timeout: Duration,
    pub poll_interval: Duration,
}

impl std::fmt::Debug for PlugLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlugLink")
            .field("id", &self.id)
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// Every field a plug's state object can hold.
pub fn fields() -> Vec<FieldSpec> {
    let diag = |key, name| FieldSpec {
        diagnostic: true,
        ..FieldSpec::sensor(key, name)
    };
    vec![
        FieldSpec {
            unit: Some("W"),
            device_class: Some("power"),
            state_class: Some("measurement"),
            precision: Some(1),
            ..FieldSpec::sensor("power", "Power")
        },
        FieldSpec {
            unit: Some("kWh"),
            device_class: Some("energy"),
            state_class: Some("total_increasing"),
            precision: Some(3),
            ..FieldSpec::sensor("energy_today", "Energy today")
        },
        FieldSpec {
            unit: Some("kWh"),
            device_class: Some("energy"),
            state_class: Some("total_increasing"),
            precision: Some(3),
            ..FieldSpec::sensor("energy_month", "Energy this month")
        },
        FieldSpec {
            device_class: Some("heat"),
            kind: FieldKind::Binary,
            ..diag("overheated", "Overheated")
        },
        FieldSpec {
            device_class: Some("problem"),
            kind: FieldKind::Binary,
            ..diag("overloaded", "Overloaded")
        },
        FieldSpec {
            unit: Some("s"),
            device_class: Some("duration"),
            state_class: Some("measurement"),
            ..diag("on_time", "On time")
        },
        FieldSpec {
            unit: Some("dBm"),
            device_class: Some("signal_strength"),
            state_class: Some("measurement"),
            ..diag("rssi", "Signal strength")
        },
        diag("firmware", "Firmware"),
    ]
}

/// Which fields a plug without metering (P100) publishes.
pub fn fields_without_metering() -> Vec<FieldSpec> {
    fields()
        .into_iter()
        .filter(|f| {
            !matches!(
                f.key,
                "power" | "energy_today" | "energy_month" | "overloaded"
            )
        })
        .collect()
}

fn info_reading(info: &DeviceInfo) -> PlugReading {
    PlugReading {
        on: info.device_on,
        overheated: info.overheated.unwrap_or(false),
        // P110 power protection: "overloaded" when it cut the load off.
        overloaded: info.power_protection.as_deref() == Some("overloaded"),
        on_time_s: info.on_time_s,
        rssi_dbm: info.rssi,
        firmware: info.fw_ver.clone(),
        model: info.model.clone(),
        ..PlugReading::default()
    }
}

fn energy_reading(e: &EnergyUsage, r: &mut PlugReading) {
    r.power_w = e.current_power_w.map(|p| round(p, 1));
    r.energy_today_kwh = e.today_energy_wh.map(|wh| round(wh / 1000.0, 3));
    r.energy_month_kwh = e.month_energy_wh.map(|wh| round(wh / 1000.0, 3));
}

fn identity(info: &DeviceInfo) -> Identity {
    Identity {
        manufacturer: Some("TP-Link".into()),
        model: info.model.clone(),
        serial_number: info.mac.clone(),
        sw_version: info.fw_ver.clone(),
        hw_version: info.hw_ver.clone(),
    }
}

/// Starts the task for one plug.
pub fn spawn(
    link: PlugLink,
    events: mpsc::Sender<DriverEvent>,
    shutdown: CancellationToken,
) -> DriverHandle {
    let span = tracing::info_span!("plug", id = %link.id);
    crate::drivers::spawn_task(span, move |rx| run(link, events, rx, shutdown))
}

struct Plug {
    id: String,
    client: PlugClient,
    events: mpsc::Sender<DriverEvent>,
    online: crate::drivers::Reachability,
    health: PollHealth,
    polls: u32,
    metering: Option<bool>,
    identity: Option<Identity>,
    /// The last known relay state, for TOGGLE.
    device_on: Option<bool>,
}

impl Plug {
    async fn send(&self, ev: DriverEvent) {
        let _ = self.events.send(ev).await;
    }

    async fn set_online(&mut self, online: bool) {
        self.online.set(&self.events, online).await;
    }

    /// Reads the plug (state always, power/energy when it meters) and
    /// publishes it.
    async fn poll(&mut self) -> Result<(), TapoError> {
        let info = self.client.get_device_info().await?;
        self.device_on = Some(info.device_on);
        let mut reading = info_reading(&info);
        let metering_model = info.model.as_deref().map(|m| !super::is_unmetered(m));
        if self.metering != Some(false) && metering_model != Some(false) {
            let energy_due = self.polls.is_multiple_of(ENERGY_EVERY) || self.metering.is_none();
            if energy_due {
                match self.client.get_energy_usage().await? {
                    Some(e) => {
                        self.metering = Some(true);
                        energy_reading(&e, &mut reading);
                    }
                    None => self.metering = Some(false),
                }
            } else if let Some(p) = self.client.get_current_power().await? {
                reading.power_w = Some(p);
            }
        } else {
            self.metering = Some(false);
        }
        self.polls = self.polls.wrapping_add(1);
        let id = identity(&info);
        if self.identity.as_ref() != Some(&id) {
            self.identity = Some(id.clone());
            self.send(DriverEvent::Identity {
                device: self.id.clone(),
                info: id,
            })
            .await;
        }
        self.health.succeeded();
        self.set_online(true).await;
        self.send(DriverEvent::Readings {
            device: self.id.clone(),
            reading: Reading::Plug(reading),
        })
        .await;
        Ok(())
    }

    async fn switch(&mut self, state: SwitchState) -> Result<(), TapoError> {
        let on = match state {
            SwitchState::On => true,
            SwitchState::Off => false,
            SwitchState::Toggle => match self.device_on {
                Some(current) => !current,
                None => !self.client.get_device_info().await?.device_on,
            },
        };
        self.client.set_on(on).await?;
        tracing::info!(on, "plug switched");
        Ok(())
    }

    /// What a failed poll means; returns how long to wait before the next.
    async fn failed(&mut self, e: TapoError) -> Duration {
        let message = e.to_string();
        let kind = if e.needs_user() {
            Failure::NeedsUser {
                offline_for: Some(CREDENTIALS_RETRY),
            }
        } else if e.is_rate_limit() {
            Failure::RateLimited {
                wait: RATE_LIMIT_BACKOFF,
            }
        } else {
            Failure::Transient
        };
        let a = self.health.failed(kind, &message);
        let failures = a.failures;
        match a.log {
            Loudness::Error => tracing::error!(%message, "plug cannot be used"),
            Loudness::Warn => tracing::warn!(error = %message, failures, "plug poll failed"),
            Loudness::Debug => tracing::debug!(error = %message, failures, "plug poll failed"),
            Loudness::Quiet => {}
        }
        if let Some(message) = a.problem {
            self.send(DriverEvent::Problem {
                device: self.id.clone(),
                message,
            })
            .await;
        }
        if a.offline {
            self.set_online(false).await;
        }
        a.wait
    }
}

async fn run(
    link: PlugLink,
    events: mpsc::Sender<DriverEvent>,
    mut commands: crate::drivers::inbox::CommandInbox,
    shutdown: CancellationToken,
) {
    let interval = link.poll_interval;
    let mut plug = Plug {
        id: link.id.clone(),
        client: PlugClient::new(
            &link.host,
            link.port,
            &link.username,
            &link.password,
            link.timeout,
        ),
        events,
        online: crate::drivers::Reachability::new(&link.id),
        health: PollHealth::new(interval, UNAVAILABLE_AFTER, BACKOFF_MAX),
        polls: 0,
        metering: None,
        identity: None,
        device_on: None,
    };
    let mut next = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(next) => {}
            cmd = commands.recv() => match cmd {
                None => break,
                Some(DeviceCommand::Refresh) => {}
                Some(DeviceCommand::Switch(state)) => {
                    if let Err(e) = plug.switch(state).await {
                        plug.send(DriverEvent::CommandFailed {
                            device: plug.id.clone(),
                            reason: format!("switching failed: {e}"),
                        }).await;
                    }
                    // Read back at once: Home Assistant shows the plug's
                    // real state, whether the command worked or not.
                }
            },
        }
        let started = Instant::now();
        let delay = match plug.poll().await {
            Ok(()) => interval,
            Err(e) => plug.failed(e).await,
        };
        next = started + delay;
    }
}
