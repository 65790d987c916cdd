//! The simulated devices `energy2mqtt demo` runs beside the bridge: one
//! per configured device that points at loopback, so the demo config (or
//! a user's override of it) decides what exists.

use std::net::SocketAddr;
use std::time::SystemTime;

use anyhow::Context;

use super::deye_model::{InverterModel, ModelConfig, SimTime};
use super::solarman::SolarmanSim;
use crate::config::{Config, InverterTransport};
use crate::drivers::deye::transport::SOLARMAN_PORT;

/// Keeps the simulators running while it lives.
pub struct DemoDevices {
    pub inverters: Vec<SolarmanSim>,
}

/// Starts a Solarman logger simulator for every solarman inverter on a
/// loopback address.
pub async fn start(config: &Config) -> anyhow::Result<DemoDevices> {
    let mut inverters = Vec::new();
    for (i, inv) in config.inverter.iter().enumerate() {
        if inv.transport != InverterTransport::Solarman {
            continue;
        }
        let Some(ip) = inv
            .host
            .as_deref()
            .and_then(|h| h.parse::<std::net::IpAddr>().ok())
            .filter(|ip| ip.is_loopback())
        else {
            continue;
        };
        let addr = SocketAddr::new(ip, inv.port.unwrap_or(SOLARMAN_PORT));
        let model = InverterModel::new(
            ModelConfig {
                seed: 0xE2_0000 + i as u64,
                ..ModelConfig::default()
            },
            SimTime::from_system_time(SystemTime::now()),
        );
        let sim = SolarmanSim::start(addr, inv.serial.unwrap_or(0), model)
            .await
            .with_context(|| format!("simulated logger for '{}' on {addr}", inv.id))?;
        tracing::info!(inverter = %inv.id, %addr, "simulated Solarman logger listening");
        inverters.push(sim);
    }
    Ok(DemoDevices { inverters })
}
