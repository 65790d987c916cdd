//! One task per plug: poll its state and power, switch it on command and
//! read it back, keep its availability true, and never hammer a plug that
//! refuses our credentials.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::api::{self, ApiError, DeviceInfo, EnergyUsage, ErrorClass};
use super::client::{PlugClient, TapoError};
use crate::drivers::health::Failure;
use crate::drivers::plug_loop::{self, PlugDevice, Polling, Report, field};
use crate::drivers::{DeviceInfo as Identity, DriverEvent, DriverHandle};
use crate::model::{FieldSpec, PlugReading, round};

/// Energy counters change slowly: read them every this many polls.
const ENERGY_EVERY: u32 = 6;
/// After a credential failure, try again this rarely (or on `get`).
const CREDENTIALS_RETRY: Duration = Duration::from_secs(3600);
/// Backoff when the plug says it is rate limited.
const RATE_LIMIT_BACKOFF: Duration = Duration::from_secs(30);

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
    vec![
        field::POWER,
        field::energy("energy_today", "Energy today"),
        field::energy("energy_month", "Energy this month"),
        field::OVERHEATED,
        field::OVERLOADED,
        FieldSpec {
            unit: Some("s"),
            device_class: Some("duration"),
            state_class: Some("measurement"),
            ..field::diag("on_time", "On time")
        },
        field::RSSI,
        field::FIRMWARE,
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
    crate::drivers::spawn_task(span, move |rx| async move {
        let plug = Plug::new(&link);
        let polling = Polling::every(link.poll_interval);
        plug_loop::run(&link.id, plug, polling, events, rx, shutdown).await;
    })
}

struct Plug {
    client: PlugClient,
    polls: u32,
    metering: Option<bool>,
    /// The last known relay state, for TOGGLE.
    device_on: Option<bool>,
    /// Whether the plug takes multipleRequest (`None` until it was tried).
    batches: Option<bool>,
}

impl Plug {
    fn new(link: &PlugLink) -> Self {
        Self {
            client: PlugClient::new(
                &link.host,
                link.port,
                &link.username,
                &link.password,
                link.timeout,
            ),
            polls: 0,
            metering: None,
            device_on: None,
            batches: None,
        }
    }
}

/// What the poll asks of a metering plug besides its device info.
#[derive(Debug, Clone, Copy)]
enum Meter {
    /// get_energy_usage: power and the energy counters.
    Energy,
    /// get_current_power: power only, between two energy reads.
    Power,
}

impl Meter {
    fn method(self) -> &'static str {
        match self {
            Self::Energy => "get_energy_usage",
            Self::Power => "get_current_power",
        }
    }
}

/// What a poll learnt of the meter.
enum Metered {
    Energy(EnergyUsage),
    Power(f64),
    /// The plug answered "unknown method": it has no meter (P100).
    Unmetered,
    /// The meter was not asked (a plug known to have none).
    NotAsked,
}

impl Plug {
    /// Device info and `meter` in one request.
    async fn poll_batch(&mut self, meter: Meter) -> Result<(DeviceInfo, Metered), TapoError> {
        let entries = self
            .client
            .get_many(&["get_device_info", meter.method()])
            .await?;
        self.batches = Some(true);
        let entry = |name: &str| {
            entries
                .iter()
                .find(|(m, _)| m == name)
                .map(|(_, r)| r)
                .ok_or_else(|| {
                    TapoError::Protocol(format!("the multipleRequest reply has no {name}"))
                })
        };
        let info = match entry("get_device_info")? {
            Ok(v) => api::parse_device_info(v)?,
            Err(e) => return Err(e.clone().into()),
        };
        let metered = match (meter, entry(meter.method())?) {
            (
                Meter::Energy,
                Err(ApiError::Device {
                    class: ErrorClass::UnknownMethod,
                    ..
                }),
            ) => Metered::Unmetered,
            // Some models answer energy but not current power: the meter
            // is there, this read just has no value.
            (
                Meter::Power,
                Err(ApiError::Device {
                    class: ErrorClass::UnknownMethod,
                    ..
                }),
            ) => Metered::NotAsked,
            (_, Err(e)) => return Err(e.clone().into()),
            (Meter::Energy, Ok(v)) => Metered::Energy(api::parse_energy_usage(v)?),
            (Meter::Power, Ok(v)) => Metered::Power(api::parse_current_power(v)?),
        };
        Ok((info, metered))
    }

    /// The same with one request each (a P100 asks only for device info).
    async fn poll_single(&mut self, meter: Meter) -> Result<(DeviceInfo, Metered), TapoError> {
        let info = self.client.get_device_info().await?;
        let unmetered_model = info.model.as_deref().is_some_and(super::is_unmetered);
        if self.metering == Some(false) || unmetered_model {
            return Ok((info, Metered::NotAsked));
        }
        let metered = match meter {
            Meter::Energy => self
                .client
                .get_energy_usage()
                .await?
                .map_or(Metered::Unmetered, Metered::Energy),
            Meter::Power => self
                .client
                .get_current_power()
                .await?
                .map_or(Metered::NotAsked, Metered::Power),
        };
        Ok((info, metered))
    }
}

impl PlugDevice for Plug {
    type Error = TapoError;

    /// Reads the plug (state always, power/energy when it meters): one
    /// multipleRequest on a metering plug, a plain get_device_info on a
    /// P100 or on firmware that refuses batches.
    async fn poll(&mut self, report: &mut Report) -> Result<PlugReading, TapoError> {
        let energy_due = self.polls.is_multiple_of(ENERGY_EVERY) || self.metering.is_none();
        let meter = if energy_due {
            Meter::Energy
        } else {
            Meter::Power
        };
        let (info, metered) = if self.metering != Some(false) && self.batches != Some(false) {
            match self.poll_batch(meter).await {
                Ok(got) => got,
                Err(TapoError::Api(ApiError::Device { code, .. })) if self.batches.is_none() => {
                    tracing::info!(
                        code,
                        "the plug refuses multipleRequest: polling with single requests"
                    );
                    self.batches = Some(false);
                    self.poll_single(meter).await?
                }
                Err(e) => return Err(e),
            }
        } else {
            self.poll_single(meter).await?
        };
        self.device_on = Some(info.device_on);
        let mut reading = info_reading(&info);
        let metering_model = info.model.as_deref().map(|m| !super::is_unmetered(m));
        match metered {
            _ if metering_model == Some(false) => self.metering = Some(false),
            Metered::Unmetered => self.metering = Some(false),
            Metered::Energy(e) => {
                self.metering = Some(true);
                energy_reading(&e, &mut reading);
            }
            Metered::Power(p) => reading.power_w = Some(p),
            Metered::NotAsked => {}
        }
        self.polls = self.polls.wrapping_add(1);
        report.identified(identity(&info)).await;
        Ok(reading)
    }

    fn last_on(&self) -> Option<bool> {
        self.device_on
    }

    async fn read_on(&mut self) -> Result<bool, TapoError> {
        Ok(self.client.get_device_info().await?.device_on)
    }

    async fn set_on(&mut self, on: bool) -> Result<(), TapoError> {
        self.client.set_on(on).await?;
        tracing::info!(on, "plug switched");
        Ok(())
    }

    fn failure(&mut self, e: &TapoError) -> Failure {
        if e.needs_user() {
            Failure::NeedsUser {
                offline_for: Some(CREDENTIALS_RETRY),
            }
        } else if e.is_rate_limit() {
            Failure::RateLimited {
                wait: RATE_LIMIT_BACKOFF,
            }
        } else {
            Failure::Transient
        }
    }
}
