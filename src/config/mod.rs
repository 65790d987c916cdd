//! The configuration tree: defaults < TOML file < `E2M_*` environment <
//! the original app's variables. Loading lives in [`load`], checks in
//! [`validate`]; every key is documented in `config/energy2mqtt.example.toml`.

mod alerts;
pub mod duration;
mod load;
mod plug;
pub mod push;
pub mod schedule;
pub mod secret;
mod validate;
pub use validate::is_loopback;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::model::DeviceKind;

pub use alerts::{AlertsConfig, BatteryChemistry, RuleOverride};
pub use load::{ConfigError, ConfigErrors, DEFAULT_PATH, Sources, load, load_from};
pub use plug::{PlugConfig, PlugConnection, PlugKind, ShellyPlug, TapoPlug};
pub use push::{NtfyConfig, PushConfig, TelegramConfig};
pub use secret::Secret;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub mqtt: MqttConfig,
    pub homeassistant: HomeAssistantConfig,
    pub broker: BrokerConfig,
    pub log: LogConfig,
    pub storage: StorageConfig,
    pub tapo: TapoConfig,
    pub bms: Vec<BmsConfig>,
    pub inverter: Vec<InverterConfig>,
    pub plug: Vec<PlugConfig>,
    pub balancer: BalancerConfig,
    pub alerts: AlertsConfig,
    /// The sidecar `energy2mqtt-push`; the bridge ignores it.
    #[serde(skip_serializing_if = "PushConfig::is_default")]
    pub push: PushConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host:port` or `mqtts://host:port`. Unset: the embedded broker
    /// when it is enabled, else `mqtt://127.0.0.1:1883`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    pub client_id: String,
    #[serde(with = "duration")]
    pub keepalive: Duration,
    /// PEM file with the CA that signed the broker's certificate (`mqtts://`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    pub base_topic: String,
    /// Cap of the exponential reconnect backoff.
    #[serde(with = "duration")]
    pub reconnect_max: Duration,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: None,
            username: None,
            password: None,
            client_id: "energy2mqtt".into(),
            keepalive: Duration::from_secs(30),
            ca_file: None,
            base_topic: "energy2mqtt".into(),
            reconnect_max: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HomeAssistantConfig {
    pub discovery: bool,
    pub discovery_prefix: String,
    pub status_topic: String,
    /// Wait after Home Assistant announces itself before republishing states.
    #[serde(with = "duration")]
    pub birth_delay: Duration,
    /// How long to collect our own retained discovery configs at start-up
    /// before clearing those the current configuration no longer produces.
    #[serde(with = "duration")]
    pub cleanup_window: Duration,
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        Self {
            discovery: true,
            discovery_prefix: "homeassistant".into(),
            status_topic: "homeassistant/status".into(),
            birth_delay: Duration::from_secs(5),
            cleanup_window: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    pub max_connections: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            username: None,
            password: None,
            max_connections: 64,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, `energy2mqtt=debug,rumqttc=info`.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub dir: PathBuf,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./data"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TapoConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for TapoConfig {
    fn default() -> Self {
        Self {
            email: None,
            password: None,
            timeout: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum BmsVariant {
    #[default]
    Auto,
    Jk02_24s,
    Jk02_32s,
    Jk04,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BmsConfig {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Bluetooth address `AA:BB:CC:DD:EE:FF`.
    pub mac: String,
    #[serde(default)]
    pub variant: BmsVariant,
    /// Bond through a BlueZ agent (firmware ≥ 19.30 / V21 needs it).
    #[serde(default)]
    pub pair: bool,
    #[serde(default = "default_bms_publish_interval", with = "duration")]
    pub publish_interval: Duration,
}

fn default_bms_publish_interval() -> Duration {
    Duration::from_secs(1)
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum InverterTransport {
    /// Solarman V5 through the WiFi logger stick (TCP 8899).
    #[default]
    Solarman,
    /// Plain Modbus TCP (TCP 502).
    ModbusTcp,
    /// Modbus RTU on a serial port.
    ModbusRtu,
}

impl InverterTransport {
    pub fn default_port(self) -> Option<u16> {
        match self {
            Self::Solarman => Some(8899),
            Self::ModbusTcp => Some(502),
            Self::ModbusRtu => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InverterConfig {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub transport: InverterTransport,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Logger stick serial number (Solarman only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<u32>,
    /// Serial device (Modbus RTU only), e.g. `/dev/ttyUSB0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<PathBuf>,
    #[serde(default = "default_baud")]
    pub baud: u32,
    #[serde(default = "default_slave_id")]
    pub slave_id: u8,
    #[serde(default = "default_inverter_poll", with = "duration")]
    pub poll_interval: Duration,
    #[serde(default = "default_inverter_timeout", with = "duration")]
    pub timeout: Duration,
    /// Most registers per read request; lower it for sticks or gateways
    /// that time out on large reads.
    #[serde(default = "default_max_block")]
    pub max_block: u16,
    /// Failed polls in a row before the inverter is reported unavailable.
    #[serde(default = "default_unavailable_after")]
    pub unavailable_after: u32,
    /// Multiplier for the grid/load/CT power registers (167–178): 10 on
    /// models that report them in 10 W units (some SUN-12K-SG02LP1).
    #[serde(default = "default_power_scale")]
    pub power_scale: f64,
}

impl InverterConfig {
    /// An inverter that only the original app's `INVERTER_IP` described.
    pub fn legacy(host: String) -> Self {
        Self {
            id: "inverter".into(),
            name: None,
            transport: InverterTransport::Solarman,
            host: Some(host),
            port: None,
            serial: None,
            device: None,
            baud: default_baud(),
            slave_id: default_slave_id(),
            poll_interval: default_inverter_poll(),
            timeout: default_inverter_timeout(),
            max_block: default_max_block(),
            unavailable_after: default_unavailable_after(),
            power_scale: default_power_scale(),
        }
    }
}

fn default_baud() -> u32 {
    9600
}
fn default_slave_id() -> u8 {
    1
}
fn default_inverter_poll() -> Duration {
    Duration::from_secs(5)
}
fn default_inverter_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_block() -> u16 {
    125
}
fn default_unavailable_after() -> u32 {
    3
}
fn default_power_scale() -> f64 {
    1.0
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BalancerConfig {
    pub enabled: bool,
    /// LOAD-port limit while the grid is present (pass-through relay, breaker).
    pub on_grid_w: f64,
    /// What is compared with `on_grid_w` while the grid is present.
    pub on_grid_measure: OnGridMeasure,
    /// Off-grid limit as a percentage of the inverter's rated power.
    pub off_grid_percent: f64,
    pub shed_at_percent: f64,
    pub emergency_percent: f64,
    pub restore_below_percent: f64,
    #[serde(with = "duration")]
    pub shed_delay: Duration,
    #[serde(with = "duration")]
    pub restore_delay: Duration,
    #[serde(with = "duration")]
    pub settle_after_shed: Duration,
    #[serde(with = "duration")]
    pub settle_after_restore: Duration,
    #[serde(with = "duration")]
    pub stale_after: Duration,
    #[serde(with = "duration")]
    pub failsafe_after: Duration,
    #[serde(with = "duration")]
    pub override_window: Duration,
    /// How long PV must stay below the load before the plugs with
    /// `pv_deficit_off` are switched off (the original app's 5 minutes).
    #[serde(with = "duration")]
    pub pv_deficit_after: Duration,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            on_grid_w: 7400.0,
            on_grid_measure: OnGridMeasure::LoadPort,
            off_grid_percent: 90.0,
            shed_at_percent: 100.0,
            emergency_percent: 110.0,
            restore_below_percent: 85.0,
            shed_delay: Duration::from_secs(5),
            restore_delay: Duration::from_secs(60),
            settle_after_shed: Duration::from_secs(10),
            settle_after_restore: Duration::from_secs(60),
            stale_after: Duration::from_secs(15),
            failsafe_after: Duration::from_secs(60),
            override_window: Duration::from_secs(3600),
            pv_deficit_after: Duration::from_secs(300),
        }
    }
}

/// The power the on-grid limit protects (`deye-registers.md`, "Balancer-relevant registers").
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnGridMeasure {
    /// The LOAD (backup) port: 175 + 167 − 166, what flows through the
    /// pass-through relay.
    #[default]
    LoadPort,
    /// The inverter's AC output (175) alone.
    InverterOutput,
    /// The house load (178); its meaning depends on CT/load mode.
    HouseLoad,
}

impl Config {
    /// Every configured device as (id, kind, display name, config key path).
    pub fn devices(&self) -> Vec<(String, DeviceKind, String, String)> {
        let name = |id: &str, n: &Option<String>| n.clone().unwrap_or_else(|| id.to_owned());
        let mut out = Vec::new();
        for (i, b) in self.bms.iter().enumerate() {
            out.push((
                b.id.clone(),
                DeviceKind::Bms,
                name(&b.id, &b.name),
                format!("bms[{i}]"),
            ));
        }
        for (i, d) in self.inverter.iter().enumerate() {
            out.push((
                d.id.clone(),
                DeviceKind::Inverter,
                name(&d.id, &d.name),
                format!("inverter[{i}]"),
            ));
        }
        for (i, p) in self.plug.iter().enumerate() {
            out.push((
                p.id.clone(),
                DeviceKind::Plug,
                name(&p.id, &p.name),
                format!("plug[{i}]"),
            ));
        }
        out
    }

    /// The configuration as JSON with every secret replaced by [`secret::REDACTED`].
    pub fn redacted_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}
