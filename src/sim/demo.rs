//! The simulated devices `energy2mqtt demo` runs beside the bridge: one
//! per configured device that points at loopback, so the demo config (or
//! a user's override of it) decides what exists.
//!
//! The devices form one house: the plugs that name an inverter are on its
//! LOAD port, so switching one off lowers what the inverter reports. A
//! script plays dinner time shortly after start and then every 15 minutes
//! ([`DinnerScript`]): the heater's thermostat calls for heat and a kettle
//! that no plug can switch boils, which takes the LOAD port over the demo's
//! `balancer.on_grid_w` until the balancer sheds a plug. The first pack's
//! cell 5 drifts away and is balanced back ([`DriftScript::demo`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::deye_model::{HouseProfile, InverterModel, ModelConfig, SimTime};
use super::jkbms::{DriftScript, DriftStage};
use super::solarman::SolarmanSim;
use super::tapo::{Flavour, Load, PlugHandle, TapoSim};
use crate::config::{Config, InverterTransport, PlugConnection};
use crate::drivers::deye::transport::SOLARMAN_PORT;

/// How often the house script looks at the clock and the plugs.
const HOUSE_TICK: Duration = Duration::from_millis(500);

/// Keeps the simulators running while it lives.
pub struct DemoDevices {
    pub inverters: Vec<SolarmanSim>,
    pub plugs: Vec<TapoSim>,
    /// The `kind = "shelly"` plugs.
    pub shelly_plugs: Vec<super::shelly::ShellySim>,
    /// Every `[[bms]]` of the demo is a simulated pack.
    pub packs: super::jkbms::SimConnector,
    /// Feeds the plugs' power to the inverters and plays the script.
    _house: AbortOnDrop,
}

/// Stops a background task with its owner.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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
    let started = Instant::now();
    let mut inverters = Vec::new();
    let mut inverter_ids = Vec::new();
    for (i, inv) in config.inverter.iter().enumerate() {
        if inv.transport != InverterTransport::Solarman {
            continue;
        }
        let Some(ip) = inv
            .host
            .as_deref()
            .and_then(|h| h.parse::<std::net::IpAddr>().ok())
            .filter(|ip| crate::config::is_loopback(*ip))
        else {
            continue;
        };
        let addr = SocketAddr::new(ip, inv.port.unwrap_or(SOLARMAN_PORT));
        let model = InverterModel::new(
            demo_model_config(i),
            SimTime::from_system_time(SystemTime::now()),
        );
        let sim = SolarmanSim::start(addr, inv.serial.unwrap_or(0), model)
            .await
            .with_context(|| format!("simulated logger for '{}' on {addr}", inv.id))?;
        tracing::info!(inverter = %inv.id, %addr, "simulated Solarman logger listening");
        inverters.push(sim);
        inverter_ids.push(inv.id.clone());
    }
    let mut plugs = Vec::new();
    let shelly_plugs = start_shelly_plugs(config).await?;
    let mut house = House {
        script: DinnerScript::demo(),
        inverters: inverters
            .iter()
            .zip(&inverter_ids)
            .map(|(sim, id)| HouseInverter {
                id: id.clone(),
                model: sim.model.clone(),
                plugs: Vec::new(),
            })
            .collect(),
        heaters: Vec::new(),
        drifts: Vec::new(),
        scene: None,
        drift_stages: Vec::new(),
    };
    for plug in &config.plug {
        let PlugConnection::Tapo(tapo) = &plug.connection else {
            continue;
        };
        let Some(ip) = tapo
            .host
            .parse::<std::net::IpAddr>()
            .ok()
            .filter(|ip| crate::config::is_loopback(*ip))
        else {
            continue;
        };
        let addr = SocketAddr::new(ip, tapo.port.unwrap_or(crate::drivers::tapo::DEFAULT_PORT));
        let link = crate::drivers::tapo::link_for(config, plug, tapo);
        let (flavour, load) = demo_plug(&plug.id, plug.nominal_w);
        let sim = TapoSim::start(addr, flavour, load, &link.username, &link.password)
            .await
            .with_context(|| format!("simulated plug '{}' on {addr}", plug.id))?;
        tracing::info!(plug = %plug.id, %addr, ?flavour, "simulated Tapo plug listening");
        if let Some(on) = plug
            .inverter
            .as_deref()
            .and_then(|inv| house.inverters.iter_mut().find(|h| h.id == inv))
        {
            on.plugs.push(sim.handle());
        }
        if is_heater(&plug.id) {
            house.heaters.push(sim.handle());
        }
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
        // The first pack has a cell that drifts now and then.
        let drift = (i == 0).then(DriftScript::demo);
        if let Some(d) = &drift {
            house.drifts.push((pack.id.clone(), d.clone()));
        }
        let sim = super::jkbms::SimPack {
            seed: i as u64 + 1,
            soc: 60.0 + 5.0 * i as f64,
            drift,
            ..Default::default()
        };
        packs.add(&pack.mac, sim, source);
        tracing::info!(bms = %pack.id, mac = %pack.mac, "simulated JK-BMS pack");
    }
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(HOUSE_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            house.tick(started.elapsed());
        }
    });
    Ok(DemoDevices {
        inverters,
        plugs,
        shelly_plugs,
        packs,
        _house: AbortOnDrop(task),
    })
}

/// A simulated Shelly Plus Plug S for every `kind = "shelly"` plug on a
/// loopback address: a washing machine's 400 W while on.
async fn start_shelly_plugs(config: &Config) -> anyhow::Result<Vec<super::shelly::ShellySim>> {
    let mut out = Vec::new();
    for plug in &config.plug {
        let PlugConnection::Shelly(shelly) = &plug.connection else {
            continue;
        };
        let Some(ip) = shelly
            .host
            .parse::<std::net::IpAddr>()
            .ok()
            .filter(|ip| crate::config::is_loopback(*ip))
        else {
            continue;
        };
        let addr = SocketAddr::new(
            ip,
            shelly.port.unwrap_or(crate::drivers::shelly::DEFAULT_PORT),
        );
        let sim = super::shelly::ShellySim::start(
            addr,
            super::shelly::SimConfig {
                load_w: plug.nominal_w.unwrap_or(400.0),
                noise_w: 5.0,
                password: shelly.password.as_ref().map(|p| p.expose().to_owned()),
                name: plug.name.clone(),
                ..super::shelly::SimConfig::default()
            },
        )
        .await
        .with_context(|| format!("simulated Shelly plug '{}' on {addr}", plug.id))?;
        tracing::info!(plug = %plug.id, %addr, "simulated Shelly plug listening");
        out.push(sim);
    }
    Ok(out)
}

/// The simulated inverter of the demo's `index`-th `[[inverter]]`: a
/// steady house, so that only the script and the plugs move its load and
/// the scenario plays the same at any hour.
fn demo_model_config(index: usize) -> ModelConfig {
    ModelConfig {
        seed: 0xE2_0000 + index as u64,
        house: HouseProfile::Steady,
        ..ModelConfig::default()
    }
}

fn is_heater(plug_id: &str) -> bool {
    plug_id.contains("heater")
}

/// Dinner time: `start` after the demo starts and then every `every`, the
/// heater's thermostat calls for heat for `heater_for`, and a kettle that
/// no plug switches draws `kettle_w` for `kettle_for` from the same moment.
#[derive(Debug, Clone, PartialEq)]
pub struct DinnerScript {
    pub start: Duration,
    pub every: Duration,
    pub kettle_w: f64,
    pub kettle_for: Duration,
    pub heater_for: Duration,
}

/// What the script asks for at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scene {
    /// The kettle's draw in W; 0 when it is off.
    pub kettle_w: f64,
    /// The heater's thermostat calls for heat.
    pub heater_on: bool,
}

impl DinnerScript {
    /// The demo's: from 20 s after start the heater heats for 8 minutes
    /// and a 2.2 kW kettle boils for 90 s; again every 15 minutes. The
    /// repetition stays outside the balancer's 10-minute flap window, so
    /// every dinner is shed and restored the same way.
    pub fn demo() -> Self {
        Self {
            start: Duration::from_secs(20),
            every: Duration::from_secs(15 * 60),
            kettle_w: 2200.0,
            kettle_for: Duration::from_secs(90),
            heater_for: Duration::from_secs(8 * 60),
        }
    }

    /// The scene at `elapsed` after the demo started.
    pub fn scene_at(&self, elapsed: Duration) -> Scene {
        let Some(since) = elapsed.checked_sub(self.start) else {
            return Scene {
                kettle_w: 0.0,
                heater_on: false,
            };
        };
        let into = if self.every.is_zero() {
            since
        } else {
            Duration::from_nanos((since.as_nanos() % self.every.as_nanos()) as u64)
        };
        Scene {
            kettle_w: if into < self.kettle_for {
                self.kettle_w
            } else {
                0.0
            },
            heater_on: into < self.heater_for,
        }
    }
}

/// One simulated inverter and the plugs on its LOAD port.
struct HouseInverter {
    id: String,
    model: Arc<Mutex<InverterModel>>,
    plugs: Vec<PlugHandle>,
}

/// The demo house: plays the script and feeds the plugs' power to the
/// inverters.
struct House {
    script: DinnerScript,
    /// The first one has the kitchen (the kettle).
    inverters: Vec<HouseInverter>,
    /// Plugs whose load is the script's heater.
    heaters: Vec<PlugHandle>,
    /// Packs with a drifting cell, for the log.
    drifts: Vec<(String, DriftScript)>,
    /// The last scene played; `None` before the first tick.
    scene: Option<Scene>,
    drift_stages: Vec<DriftStage>,
}

impl House {
    /// Brings every device to the script's `elapsed`.
    fn tick(&mut self, elapsed: Duration) {
        let scene = self.script.scene_at(elapsed);
        self.log_changes(scene, elapsed);
        for heater in &self.heaters {
            if heater.is_drawing() != scene.heater_on {
                heater.set_drawing(scene.heater_on);
            }
        }
        for (i, inv) in self.inverters.iter().enumerate() {
            let plugs_w: f64 = inv.plugs.iter().map(PlugHandle::power_w).sum();
            let kettle_w = if i == 0 { scene.kettle_w } else { 0.0 };
            if let Ok(mut model) = inv.model.lock() {
                model.set_extra_load(kettle_w);
                model.set_plug_load(plugs_w);
            }
        }
        self.scene = Some(scene);
    }

    /// Tells users watching the log why the load jumps.
    fn log_changes(&mut self, scene: Scene, elapsed: Duration) {
        let before = self.scene.unwrap_or(Scene {
            kettle_w: 0.0,
            heater_on: false,
        });
        if !self.inverters.is_empty() && scene.kettle_w != before.kettle_w {
            if scene.kettle_w > 0.0 {
                tracing::info!(
                    "demo: kettle on ({} W) — dinner time",
                    scene.kettle_w.round()
                );
            } else {
                tracing::info!("demo: kettle off");
            }
        }
        if !self.heaters.is_empty() && scene.heater_on != before.heater_on {
            if scene.heater_on {
                tracing::info!("demo: the heater's thermostat calls for heat");
            } else {
                tracing::info!("demo: the heater's thermostat is satisfied");
            }
        }
        self.drift_stages
            .resize(self.drifts.len(), DriftStage::Quiet);
        for ((pack, script), last) in self.drifts.iter().zip(&mut self.drift_stages) {
            let stage = script.stage_at(elapsed);
            if stage == *last {
                continue;
            }
            let mv = (script.peak_v * 1000.0).round();
            match stage {
                DriftStage::Rising => tracing::info!(
                    "demo: cell {} of {pack} drifts away ({mv:+} mV) — a cell-imbalance alert follows",
                    script.cell
                ),
                DriftStage::Falling => {
                    tracing::info!("demo: {pack}'s balancer pulls cell {} back", script.cell)
                }
                DriftStage::Quiet => {
                    tracing::info!("demo: cell {} of {pack} is balanced again", script.cell)
                }
                DriftStage::Holding => {}
            }
            *last = stage;
        }
    }
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
    } else if is_heater(id) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Sources, load_from};

    fn demo_config() -> Config {
        load_from(&Sources {
            base_toml: Some(include_str!("../../config/demo.toml").to_owned()),
            ..Sources::default()
        })
        .expect("the demo config loads")
    }

    /// LOAD-port power as the balancer reads it: 175 + 167 − 166.
    fn load_port_w(model: &InverterModel) -> f64 {
        let s16 = |a: usize| f64::from(model.registers()[a] as i16);
        s16(175) + s16(167) - s16(166)
    }

    #[tokio::test]
    async fn switching_a_plug_off_lowers_the_inverters_load_port_by_its_draw() {
        let localhost = SocketAddr::from(([127, 0, 0, 1], 0));
        let plug = |w| {
            TapoSim::start(
                localhost,
                Flavour::P110,
                Load::Constant { watts: w },
                "u",
                "p",
            )
        };
        let (a, b) = (
            plug(1500.0).await.expect("a"),
            plug(700.0).await.expect("b"),
        );
        let model = Arc::new(Mutex::new(InverterModel::new(
            demo_model_config(0),
            SimTime::from_unix_secs(1_718_460_000.0),
        )));
        let reading = || load_port_w(&model.lock().expect("model"));
        let bare = reading();
        let mut house = House {
            script: DinnerScript::demo(),
            inverters: vec![HouseInverter {
                id: "inverter".into(),
                model: model.clone(),
                plugs: vec![a.handle(), b.handle()],
            }],
            heaters: Vec::new(),
            drifts: Vec::new(),
            scene: None,
            drift_stages: Vec::new(),
        };
        // Before dinner: no kettle, the plugs only.
        house.tick(Duration::ZERO);
        let both = reading();
        assert!((both - bare - 2200.0).abs() <= 1.0, "{bare} -> {both}");
        a.set_on(false);
        house.tick(Duration::from_secs(1));
        let one = reading();
        assert!((both - one - 1500.0).abs() <= 1.0, "{both} -> {one}");
        b.set_drawing(false);
        house.tick(Duration::from_secs(2));
        assert!((reading() - bare).abs() <= 1.0);
        // The kettle comes on top, and an idle heater plug draws nothing
        // until the script turns its thermostat on.
        house.heaters.push(b.handle());
        a.set_on(true);
        house.tick(DinnerScript::demo().start);
        assert!(b.is_drawing());
        assert!((reading() - bare - 1500.0 - 700.0 - 2200.0).abs() <= 1.0);
    }

    #[test]
    fn dinner_follows_the_script_and_repeats() {
        let s = DinnerScript::demo();
        let at = |secs: u64| s.scene_at(Duration::from_secs(secs));
        assert_eq!(at(0).kettle_w, 0.0);
        assert!(!at(19).heater_on);
        assert_eq!(at(20).kettle_w, 2200.0);
        assert!(at(20).heater_on);
        assert_eq!(at(109).kettle_w, 2200.0);
        assert_eq!(at(110).kettle_w, 0.0);
        assert!(at(499).heater_on && !at(500).heater_on);
        assert_eq!(at(920).kettle_w, 2200.0, "the next dinner");
        assert!(at(920).heater_on);
    }

    /// One demo plug on the inverter, as the house test sees it.
    struct TestPlug {
        id: String,
        priority: i32,
        sheddable: bool,
        load: Load,
        on: bool,
    }

    /// The whole demo house, second by second over two dinners, starting
    /// at several hours of the day, with the balancer's expected moves
    /// played by hand: the LOAD port goes over the limit (not over the
    /// emergency line) when the kettle starts; shedding the first candidate
    /// brings it under the limit with no room to restore it while the
    /// kettle boils (and would be enough for the emergency tier too); after
    /// the kettle there is room for it under the restore line, and with
    /// everything on again the house stays under that line.
    #[test]
    fn the_kettle_takes_the_demo_house_over_the_limit_and_only_while_it_boils() {
        let config = demo_config();
        let b = &config.balancer;
        let limit = b.on_grid_w;
        let emergency = limit * b.emergency_percent / 100.0;
        let restore_line = limit * b.restore_below_percent / 100.0;
        let inverter = &config.inverter[0].id;
        let script = DinnerScript::demo();
        let every = script.every.as_secs();
        let kettle = (script.start.as_secs(), script.kettle_for.as_secs());
        // The balancer sheds within seconds and restores within a minute.
        let (shed_after, restore_after) = (10, 60);

        for start_hour in [0.0, 7.25, 12.75, 19.5] {
            let t0 = 1_718_409_600.0 + start_hour * 3600.0;
            let mut model = InverterModel::new(demo_model_config(0), SimTime::from_unix_secs(t0));
            let mut plugs: Vec<TestPlug> = config
                .plug
                .iter()
                .filter(|p| p.inverter.as_ref() == Some(inverter))
                .map(|p| TestPlug {
                    id: p.id.clone(),
                    priority: p.priority,
                    sheddable: p.sheddable,
                    load: demo_plug(&p.id, p.nominal_w).1,
                    on: true,
                })
                .collect();
            let mut shed: Option<(usize, f64)> = None;
            let mut peak = 0.0_f64;
            for s in 0..2 * every {
                let scene = script.scene_at(Duration::from_secs(s));
                let unix = t0 + s as f64;
                let draws: Vec<f64> = plugs
                    .iter()
                    .map(|p| {
                        let idle = is_heater(&p.id) && !scene.heater_on;
                        if p.on && !idle {
                            // Every plug has been on since the start.
                            p.load.draw_w(s as f64, unix)
                        } else {
                            0.0
                        }
                    })
                    .collect();
                model.advance(SimTime::from_unix_secs(unix));
                model.set_extra_load(scene.kettle_w);
                model.set_plug_load(draws.iter().sum());
                let w = load_port_w(&model);
                let into = (s + every - kettle.0) % every;
                let at = format!("{w} W at {s} s from {start_hour} h");
                if into < shed_after {
                    assert!(w > limit, "over the limit: {at}");
                    assert!(w < emergency, "an overload, not an emergency: {at}");
                    peak = peak.max(w);
                    if shed.is_none() {
                        let first = (0..plugs.len())
                            .filter(|&i| plugs[i].sheddable && draws[i] >= 10.0)
                            .min_by(|&i, &j| {
                                (plugs[i].priority, -draws[i])
                                    .partial_cmp(&(plugs[j].priority, -draws[j]))
                                    .expect("numbers")
                            })
                            .expect("a plug to shed");
                        shed = Some((first, draws[first]));
                    }
                    let (i, before) = shed.expect("shed");
                    assert!(
                        w - restore_line < before,
                        "the emergency tier would shed more than {}: {at}",
                        plugs[i].id
                    );
                    if into == shed_after - 1 {
                        plugs[i].on = false;
                    }
                } else if into < kettle.1 {
                    assert!(w < limit, "one shed is enough: {at}");
                    let (_, before) = shed.expect("shed");
                    assert!(restore_line - w < before, "no room while it boils: {at}");
                } else if let Some((i, before)) = shed {
                    assert!(restore_line - w > before + 5.0, "room to restore: {at}");
                    if into == kettle.1 + restore_after {
                        plugs[i].on = true;
                        shed = None;
                    }
                } else {
                    assert!(w < restore_line, "under the restore line: {at}");
                }
            }
            assert!(peak < limit * 1.2, "{peak} W");
            assert!(shed.is_none());
        }
    }
}
