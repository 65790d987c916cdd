//! A Shelly plug in the overload balancer, end to end, as tests/balancer.rs
//! does it for Tapo plugs: the bridge binary reads a simulated Deye over
//! Solarman V5, the lowest-priority plug on its LOAD port is a simulated
//! Shelly Plus Plug S (HTTP RPC), the other a simulated Tapo P110, all
//! through a real broker. The plugs' power feeds the inverter model, so
//! shedding the Shelly really lowers the load the bridge reads next.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use energy2mqtt::sim::shelly::{ShellySim, SimConfig};
use energy2mqtt::sim::solarman::SolarmanSim;
use energy2mqtt::sim::tapo::{Flavour, Load, TapoSim};
use support::balancer_house::*;
use support::*;

const SERIAL: u32 = 2_712_345_678;
const USER: &str = "plugs@example.com";
const PASS: &str = "correct horse";
const BOILER_W: f64 = 2000.0;
const HEATER_W: f64 = 700.0;
const KETTLE_W: f64 = 1250.0;
const LIMIT_W: f64 = 4000.0;
const VOLTAGE_V: f64 = 231.0;
const ENERGY_WH: f64 = 12_345.0;

/// A night-time house (the model's clock at 03:00 local, no sun): its base
/// load, a Shelly boiler and a Tapo heater on the LOAD port, and a kettle
/// the test switches.
struct House {
    inverter: SolarmanSim,
    boiler: ShellySim,
    heater: Arc<TapoSim>,
    feeder: tokio::task::JoinHandle<()>,
}

impl House {
    async fn start() -> Self {
        let inverter = night_inverter(SERIAL).await;
        let boiler = ShellySim::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            SimConfig {
                load_w: BOILER_W,
                voltage_v: VOLTAGE_V,
                energy_wh: ENERGY_WH,
                on: true,
                power_limit_w: 3500.0,
                ..SimConfig::default()
            },
        )
        .await
        .expect("Shelly simulator");
        let heater = TapoSim::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Flavour::P110,
            Load::Constant { watts: HEATER_W },
            USER,
            PASS,
        )
        .await
        .expect("Tapo simulator");
        heater.set_on(true);
        let heater = Arc::new(heater);
        let feeder = {
            let (model, boiler, heater) = (inverter.model.clone(), boiler.handle(), heater.clone());
            tokio::spawn(async move {
                loop {
                    let mut plugs = boiler.power_w();
                    if heater.is_on() {
                        plugs += heater.power_w();
                    }
                    model.lock().unwrap().set_plug_load(plugs);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        Self {
            inverter,
            boiler,
            heater,
            feeder,
        }
    }

    fn kettle(&self, on: bool) {
        let w = if on { KETTLE_W } else { 0.0 };
        self.inverter.model.lock().unwrap().set_extra_load(w);
    }

    fn config(&self) -> String {
        let head = fast_balancer_config(USER, PASS, &self.inverter, SERIAL, LIMIT_W);
        format!(
            r#"{head}
[[plug]]
id = "boiler"
kind = "shelly"
host = "127.0.0.1"
port = {boiler}
poll_interval = "1s"
inverter = "inverter"
priority = 10
sheddable = true
min_on = "1s"
min_off = "1m"

[[plug]]
id = "heater"
host = "127.0.0.1"
port = {heater}
poll_interval = "1s"
inverter = "inverter"
priority = 20
min_on = "1s"
min_off = "1m"
"#,
            boiler = self.boiler.addr.port(),
            heater = self.heater.addr.port(),
        )
    }
}

impl Drop for House {
    fn drop(&mut self) {
        self.feeder.abort();
    }
}

const TOPICS: &[&str] = &[
    "energy2mqtt/balancer/inverter",
    "energy2mqtt/bridge/event",
    "energy2mqtt/boiler",
    "energy2mqtt/heater",
    "homeassistant/+/balancer_inverter/+/config",
    "homeassistant/+/boiler/+/config",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_sheds_the_shelly_plug_and_restores_it_when_the_overload_ends() {
    let broker = Broker::start(BrokerKind::Embedded);
    let house = House::start().await;
    let mut client = Client::connect(broker.port, TOPICS).await;
    let mut bridge = Bridge::start(&broker.url(), &house.config(), &[]);

    // Home Assistant gets the balancer's device and the Shelly plug's
    // switch, metering sensors and mode select.
    let configs = client.collect(Duration::from_secs(3)).await;
    for want in [
        "homeassistant/switch/balancer_inverter/enabled/config",
        "homeassistant/binary_sensor/balancer_inverter/shedding/config",
        "homeassistant/switch/boiler/switch/config",
        "homeassistant/sensor/boiler/power/config",
        "homeassistant/sensor/boiler/energy_total/config",
        "homeassistant/sensor/boiler/voltage/config",
        "homeassistant/select/boiler/mode/config",
    ] {
        assert!(
            configs.iter().any(|m| m.topic == want),
            "{want} missing; got {:?}",
            configs.iter().map(|m| &m.topic).collect::<Vec<_>>()
        );
    }
    let switch = configs
        .iter()
        .find(|m| m.topic == "homeassistant/switch/boiler/switch/config")
        .unwrap();
    let switch = switch.json();
    assert_eq!(switch["state_topic"], "energy2mqtt/boiler", "{switch}");
    assert!(
        switch["command_topic"]
            .as_str()
            .is_some_and(|t| t.starts_with("energy2mqtt/boiler/")),
        "{switch}"
    );

    // The Shelly plug's reading, retained on energy2mqtt/boiler: a client
    // subscribing afterwards (as Home Assistant after a restart) gets it and
    // the switch's discovery config as retained messages.
    client
        .expect(Duration::from_secs(20), |m| {
            m.topic == "energy2mqtt/boiler"
                && m.json()["state"] == "ON"
                && m.json()["power"].as_f64().is_some()
        })
        .await
        .expect("the Shelly plug's state is published");
    let mut late = Client::connect(
        broker.port,
        &[
            "energy2mqtt/boiler",
            "homeassistant/switch/boiler/switch/config",
        ],
    )
    .await;
    let retained = late.collect(Duration::from_secs(2)).await;
    assert!(
        retained
            .iter()
            .any(|m| m.retain && m.topic == "homeassistant/switch/boiler/switch/config"),
        "the switch's discovery config is retained"
    );
    let reading = retained
        .iter()
        .find(|m| m.retain && m.topic == "energy2mqtt/boiler")
        .expect("the Shelly plug's state is retained");
    let reading = reading.json();
    assert!(
        (reading["power"].as_f64().unwrap() - BOILER_W).abs() < 1.0,
        "{reading}"
    );
    assert!(
        (reading["voltage"].as_f64().unwrap() - VOLTAGE_V).abs() < 0.5,
        "{reading}"
    );
    let kwh = reading["energy_total"].as_f64().expect("energy_total");
    assert!(
        (ENERGY_WH / 1000.0..ENERGY_WH / 1000.0 + 0.1).contains(&kwh),
        "{reading}"
    );

    let idle = client
        .expect(Duration::from_secs(30), |m| {
            status(m) && m.json()["state"] == "idle" && m.json()["load_w"].as_f64().is_some()
        })
        .await
        .expect("the balancer reports idle with a load")
        .json();
    assert_eq!(idle["limit_w"], LIMIT_W);
    assert_eq!(idle["shed_count"], 0);
    assert_eq!(idle["enabled"], true);
    let load = idle["load_w"].as_f64().unwrap();
    assert!(
        (BOILER_W + HEATER_W..LIMIT_W).contains(&load),
        "house load {load} W"
    );
    assert!(house.boiler.is_on() && house.heater.is_on());
    let sets_before = house.boiler.switch_sets();

    // The kettle pushes the house over the limit: the Shelly boiler
    // (lowest priority) is shed.
    client.drain();
    house.kettle(true);
    let shed = client
        .expect(Duration::from_secs(15), action("shed", "boiler"))
        .await
        .expect("the Shelly boiler (lowest priority) is shed")
        .json();
    let shed_at = Instant::now();
    assert_eq!(shed["reason"], "overload");
    assert!(shed["load_w"].as_f64().unwrap() > LIMIT_W, "{shed}");
    assert_eq!(shed["limit_w"], LIMIT_W);
    assert!(
        (shed["plug_w"].as_f64().unwrap() - BOILER_W).abs() < 50.0,
        "{shed}"
    );
    let shedding = client
        .expect(Duration::from_secs(10), |m| {
            status(m) && m.json()["shed_count"] == 1
        })
        .await
        .expect("status shows one plug shed")
        .json();
    assert_eq!(shedding["shedding"], true);
    assert_eq!(shedding["shed"][0]["plug"], "boiler");
    assert_eq!(shedding["shed"][0]["reason"], "overload");
    relay_becomes(|| house.boiler.is_on(), false).await;
    assert!(
        !house.boiler.is_on(),
        "the Shelly simulator's relay was switched off"
    );
    assert!(
        house.boiler.switch_sets() > sets_before,
        "by Switch.Set over RPC"
    );
    assert!(
        house.heater.is_on(),
        "one plug is enough: the Tapo heater stays on"
    );
    let plug_state = client
        .expect(Duration::from_secs(5), |m| {
            m.topic == "energy2mqtt/boiler" && m.json()["shed"] == true
        })
        .await
        .expect("the plug's state says it is shed")
        .json();
    assert_eq!(plug_state["shed_reason"], "overload");
    assert_eq!(plug_state["mode"], "auto");
    let off = if plug_state["state"] == "OFF" {
        plug_state
    } else {
        client
            .expect(Duration::from_secs(5), |m| {
                m.topic == "energy2mqtt/boiler" && m.json()["state"] == "OFF"
            })
            .await
            .expect("the Shelly plug's state is published OFF")
            .json()
    };
    assert_eq!(off["power"], 0.0, "{off}");

    // The kettle finishes: with room again, the balancer switches the
    // Shelly back on once its min-off (1 min, the balancer's floor) is over.
    house.kettle(false);
    let restore = client
        .expect(Duration::from_secs(90), action("restore", "boiler"))
        .await
        .unwrap_or_else(|| {
            panic!(
                "the Shelly boiler comes back when there is room; log:\n{}",
                bridge.log_text()
            )
        })
        .json();
    let waited = shed_at.elapsed();
    assert!(
        waited >= Duration::from_secs(59),
        "restored {waited:?} after the shed, before its min-off"
    );
    assert_eq!(restore["reason"], "restore");
    relay_becomes(|| house.boiler.is_on(), true).await;
    assert!(
        house.boiler.is_on(),
        "the Shelly simulator's relay was switched on"
    );
    let on = client
        .expect(Duration::from_secs(5), |m| {
            m.topic == "energy2mqtt/boiler" && m.json()["state"] == "ON" && m.json()["shed"] != true
        })
        .await
        .expect("the Shelly plug's state is published ON, not shed")
        .json();
    assert_eq!(on["mode"], "auto");
    client
        .expect(Duration::from_secs(10), |m| {
            status(m) && m.json()["shed_count"] == 0 && m.json()["state"] == "idle"
        })
        .await
        .expect("idle again");
    assert!(house.heater.is_on(), "the heater was never touched");
    assert!(bridge.is_running(), "{}", bridge.log_text());
}
