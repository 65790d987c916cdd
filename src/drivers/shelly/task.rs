//! One task per Shelly plug: poll its switch (one `Shelly.GetStatus` per
//! poll), switch it on command and read it back, keep its availability
//! true, and never hammer a device that refuses our password.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::client::{ShellyClient, ShellyError};
use super::rpc::{DeviceInfo, DeviceStatus};
use crate::drivers::health::Failure;
use crate::drivers::plug_loop::{self, PlugDevice, Polling, Report, field};
use crate::drivers::{DeviceInfo as Identity, DriverEvent, DriverHandle};
use crate::model::{FieldSpec, PlugReading, round};

/// What the task needs to reach one Shelly.
#[derive(Clone)]
pub struct ShellyLink {
    pub id: String,
    pub host: String,
    pub port: u16,
    /// The device's password (user `admin`); `None` when it has none.
    pub password: Option<String>,
    /// Which `switch:<id>` of the device is the plug (0 on a plug).
    pub switch_id: u8,
    pub timeout: Duration,
    pub poll_interval: Duration,
}

impl std::fmt::Debug for ShellyLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShellyLink")
            .field("id", &self.id)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("switch_id", &self.switch_id)
            .field("timeout", &self.timeout)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

/// Every field a Shelly plug's state object can hold (the relay itself,
/// `state`, is the switch entity made elsewhere).
pub fn fields() -> Vec<FieldSpec> {
    vec![
        field::POWER,
        field::energy("energy_total", "Energy"),
        FieldSpec {
            unit: Some("V"),
            device_class: Some("voltage"),
            state_class: Some("measurement"),
            precision: Some(1),
            ..FieldSpec::sensor("voltage", "Voltage")
        },
        FieldSpec {
            unit: Some("A"),
            device_class: Some("current"),
            state_class: Some("measurement"),
            precision: Some(3),
            ..FieldSpec::sensor("current", "Current")
        },
        FieldSpec {
            unit: Some("°C"),
            device_class: Some("temperature"),
            state_class: Some("measurement"),
            precision: Some(1),
            ..field::diag("temperature", "Device temperature")
        },
        field::OVERHEATED,
        field::OVERLOADED,
        field::RSSI,
        field::FIRMWARE,
    ]
}

/// The state object's values from one status and the device's identity.
pub fn reading(status: &DeviceStatus, info: Option<&DeviceInfo>) -> PlugReading {
    let sw = &status.switch;
    PlugReading {
        on: sw.output,
        power_w: sw.apower.map(|p| round(p, 1)),
        energy_total_kwh: sw.aenergy.map(|e| round(e.total / 1000.0, 3)),
        voltage_v: sw.voltage.map(|v| round(v, 1)),
        current_a: sw.current.map(|a| round(a, 3)),
        temperature_c: sw.temperature.and_then(|t| t.t_c).map(|t| round(t, 1)),
        overheated: sw.has_error("overtemp"),
        overloaded: sw.has_error("overpower"),
        rssi_dbm: status.rssi,
        firmware: info.and_then(DeviceInfo::firmware),
        model: info.and_then(DeviceInfo::model_name),
        ..PlugReading::default()
    }
}

/// What the device block in Home Assistant says.
pub fn identity(info: &DeviceInfo) -> Identity {
    Identity {
        manufacturer: Some("Shelly".into()),
        model: info.model_name(),
        serial_number: Some(info.mac.clone()),
        sw_version: info.firmware(),
        // The SKU tells the hardware revision apart (SNPL-00112EU,
        // SNPL-10112EU) where the name does not.
        hw_version: info.model.clone(),
    }
}

/// Starts the task for one plug.
pub fn spawn(
    link: ShellyLink,
    events: mpsc::Sender<DriverEvent>,
    shutdown: CancellationToken,
) -> DriverHandle {
    let span = tracing::info_span!("shelly", id = %link.id, host = %link.host);
    crate::drivers::spawn_task(span, move |rx| async move {
        let plug = Plug::new(&link);
        let polling = Polling::every(link.poll_interval);
        plug_loop::run(&link.id, plug, polling, events, rx, shutdown).await;
    })
}

struct Plug {
    switch_id: u8,
    client: ShellyClient,
    /// What the device said it is; read again after a failure or a
    /// restart (it may come back with new firmware, or be another one).
    info: Option<DeviceInfo>,
    uptime_s: Option<u64>,
    /// The last known relay state, for TOGGLE.
    output: Option<bool>,
}

impl Plug {
    fn new(link: &ShellyLink) -> Self {
        Self {
            switch_id: link.switch_id,
            client: ShellyClient::new(
                &link.host,
                link.port,
                link.password.as_deref(),
                link.timeout,
            ),
            info: None,
            uptime_s: None,
            output: None,
        }
    }
}

impl PlugDevice for Plug {
    type Error = ShellyError;

    /// Reads the switch (and, when not known yet, what the device is).
    async fn poll(&mut self, report: &mut Report) -> Result<PlugReading, ShellyError> {
        if self.info.is_none() {
            let info = self.client.device_info().await?;
            if report.identified(identity(&info)).await {
                let (model, firmware) = (info.model_name(), info.firmware());
                tracing::info!(?model, ?firmware, "Shelly identified");
            }
            self.info = Some(info);
        }
        let status = self.client.status(self.switch_id).await?;
        if let (Some(before), Some(now)) = (self.uptime_s, status.uptime_s) {
            if now < before {
                // Restarted: the identity is read again next time.
                tracing::info!(uptime_s = now, "Shelly restarted");
                self.info = None;
            }
        }
        self.uptime_s = status.uptime_s;
        self.output = Some(status.switch.output);
        Ok(reading(&status, self.info.as_ref()))
    }

    fn last_on(&self) -> Option<bool> {
        self.output
    }

    async fn read_on(&mut self) -> Result<bool, ShellyError> {
        Ok(self.client.switch_status(self.switch_id).await?.output)
    }

    async fn set_on(&mut self, on: bool) -> Result<(), ShellyError> {
        let was_on = self.client.set(self.switch_id, on).await?;
        self.output = Some(on);
        tracing::info!(on, was_on, "plug switched");
        Ok(())
    }

    fn failure(&mut self, e: &ShellyError) -> Failure {
        // Whatever answers next may be another device or firmware.
        self.info = None;
        e.failure()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::shelly::rpc;
    use crate::model::Reading;

    const INFO: &str = r#"{"name":null,"id":"shellyplusplugs-e86beae2a5f0","mac":"E86BEAE2A5F0","model":"SNPL-00112EU","gen":2,"fw_id":"20241011-114455/1.4.4-g6d2a586","ver":"1.4.4","app":"PlugS","auth_en":false,"auth_domain":null}"#;

    #[test]
    fn a_status_becomes_the_plug_reading() {
        let info = rpc::parse_device_info(INFO.as_bytes()).expect("info");
        let status = rpc::parse_status(
            br#"{"switch:0":{"id":0,"source":"init","output":true,"apower":1234.56,"voltage":229.84,
                "current":5.3721,"aenergy":{"total":98765.4321},"temperature":{"tC":41.26,"tF":106.3},
                "errors":["overpower"]},"wifi":{"rssi":-61},"sys":{"uptime":10}}"#,
            0,
        )
        .expect("status");
        let r = reading(&status, Some(&info));
        assert_eq!(
            r,
            PlugReading {
                on: true,
                power_w: Some(1234.6),
                energy_total_kwh: Some(98.765),
                voltage_v: Some(229.8),
                current_a: Some(5.372),
                temperature_c: Some(41.3),
                overheated: false,
                overloaded: true,
                rssi_dbm: Some(-61),
                firmware: Some("1.4.4".into()),
                model: Some("Shelly Plus Plug S".into()),
                ..PlugReading::default()
            }
        );
        let state = Reading::Plug(r).to_state();
        assert_eq!(state["state"], "ON");
        assert_eq!(state["energy_total"], 98.765);
        assert_eq!(state["overloaded"], true);
    }

    #[test]
    fn every_field_is_a_key_the_reading_serialises() {
        let full = PlugReading {
            power_w: Some(1.0),
            energy_total_kwh: Some(1.0),
            voltage_v: Some(1.0),
            current_a: Some(1.0),
            temperature_c: Some(1.0),
            rssi_dbm: Some(-1),
            firmware: Some("1".into()),
            ..PlugReading::default()
        };
        let state = Reading::Plug(full).to_state();
        for f in fields() {
            assert!(state.contains_key(f.key), "{} not in {state:?}", f.key);
        }
        let energy = fields()
            .into_iter()
            .find(|f| f.key == "energy_total")
            .expect("energy_total");
        assert_eq!(
            (energy.unit, energy.device_class, energy.state_class),
            (Some("kWh"), Some("energy"), Some("total_increasing"))
        );
    }

    #[test]
    fn identity_names_the_maker_and_uses_the_mac_as_serial() {
        let info = rpc::parse_device_info(INFO.as_bytes()).expect("info");
        assert_eq!(
            identity(&info),
            Identity {
                manufacturer: Some("Shelly".into()),
                model: Some("Shelly Plus Plug S".into()),
                serial_number: Some("E86BEAE2A5F0".into()),
                sw_version: Some("1.4.4".into()),
                hw_version: Some("SNPL-00112EU".into()),
            }
        );
    }

    #[test]
    fn the_link_never_shows_its_password() {
        let link = ShellyLink {
            id: "kettle".into(),
            host: "10.0.0.5".into(),
            port: 80,
            password: Some("hunter2".into()),
            switch_id: 0,
            timeout: Duration::from_secs(3),
            poll_interval: Duration::from_secs(5),
        };
        let d = format!("{link:?}");
        assert!(!d.contains("hunter2"), "{d}");
        assert!(d.contains("kettle") && d.contains("<redacted>"), "{d}");
    }
}
