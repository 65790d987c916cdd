//! The simulated devices `energy2mqtt demo` runs beside the bridge: one
//! per configured device that points at loopback, so the demo config (or
//! a user's override of it) decides what exists.

use std::net::SocketAddr;
use std::time::SystemTime;

use anyhow::Context;

use super::deye_model::{InverterModel, ModelConfig, SimTime};
use super::solarman::SolarmanSim;
use super::tapo::{Flavour, Load, TapoSim};
use crate::config::{Config, InverterTransport};
use crate::drivers::deye::transport::SOLARMAN_PORT;

/// Keeps the simulators running while it lives.
pub struct DemoDevices {
    pub inverters: Vec<SolarmanSim>,
    pub plugs: Vec<TapoSim>,
    /// Every `[[bms]]` of the demo is a simulated pack.
    pub packs: super::jkbms::SimConnector,
}

impl DemoDevices {
    /// The bridge's BMS tasks, on the simulated packs.
    pub fn pack_spawner(&self) -> crate::app::BmsSpawner {
        let connector = std::sync::Arc::new(self.packs.clone());
        Box::new(move |pack, store, events, shutdown| {
            crate::drivers::jkbms::task::spawn(pack, connector.clone(), store, events, shutdown)
        })
    }
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
    let mut plugs = Vec::new();
    for plug in &config.plug {
        let Some(ip) = plug
            .host
            .parse::<std::net::IpAddr>()
            .ok()
            .filter(|ip| ip.is_loopback())
        else {
            continue;
        };
        let addr = SocketAddr::new(ip, plug.port.unwrap_or(crate::drivers::tapo::DEFAULT_PORT));
        let link = crate::drivers::tapo::link_for(config, plug);
        let (flavour, load) = demo_plug(&plug.id, plug.nominal_w);
        let sim = TapoSim::start(addr, flavour, load, &link.username, &link.password)
            .await
            .with_context(|| format!("simulated plug '{}' on {addr}", plug.id))?;
        tracing::info!(plug = %plug.id, %addr, ?flavour, "simulated Tapo plug listening");
        plugs.push(sim);
    }
    let packs = super::jkbms::SimConnector::default();
    let share = 1.0 / config.bms.len().max(1) as f64;
    for (i, pack) in config.bms.iter().enumerate() {
        // The packs carry the simulated inverter's battery, so the BMS and
        // inverter figures agree in the demo.
        let source = match inverters.first() {
            Some(inv) => super::jkbms::CurrentSource::Inverter {
                model: inv.model.clone(),
                share,
            },
            None => super::jkbms::CurrentSource::Swing,
        };
        let sim = super::jkbms::SimPack {
            seed: i as u64 + 1,
            soc: 60.0 + 5.0 * i as f64,
            ..Default::default()
        };
        packs.add(&pack.mac, sim, source);
        tracing::info!(bms = %pack.id, mac = %pack.mac, "simulated JK-BMS pack");
    }
    Ok(DemoDevices {
        inverters,
        plugs,
        packs,
    })
}

/// What hangs behind a demo plug, from its id; a plug with `nominal_w`
/// is a P100 (that is what the setting is for).
fn demo_plug(id: &str, nominal_w: Option<f64>) -> (Flavour, Load) {
    let flavour = if nominal_w.is_some() {
        Flavour::P100
    } else {
        Flavour::P110
    };
    let load = if id.contains("boiler") {
        Load::Boiler { watts: 2000.0 }
    } else if id.contains("heater") {
        Load::Heater { watts: 1500.0 }
    } else if id.contains("fridge") {
        Load::Fridge {
            watts: 120.0,
            on_s: 900.0,
            off_s: 1500.0,
        }
    } else {
        Load::Constant {
            watts: nominal_w.unwrap_or(100.0),
        }
    };
    (flavour, load)
}
