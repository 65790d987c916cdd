//! The overload balancer end to end: the bridge binary reads a simulated
//! Deye over Solarman V5 and switches simulated Tapo plugs over KLAP,
//! through a real broker. The plugs' power feeds the inverter model, so
//! shedding a plug really lowers the load the bridge reads next.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use energy2mqtt::sim::solarman::SolarmanSim;
use energy2mqtt::sim::tapo::{Flavour, Load, TapoSim};
use serde_json::Value;
use support::balancer_house::*;
use support::*;

const SERIAL: u32 = 2_712_345_678;
const USER: &str = "plugs@example.com";
const PASS: &str = "correct horse";
const BOILER_W: f64 = 2000.0;
const HEATER_W: f64 = 700.0;
const KETTLE_W: f64 = 1250.0;
const LIMIT_W: f64 = 4000.0;

/// A night-time house (no sun, no random appliances: the model's clock is
/// put at 03:00 local) whose load is its small base load, the plugs that
/// are on and a kettle the test switches.
struct House {
    inverter: SolarmanSim,
    boiler: Arc<TapoSim>,
    heater: Arc<TapoSim>,
    kettle_w: Arc<AtomicU64>,
    feeder: tokio::task::JoinHandle<()>,
}

impl House {
    async fn start() -> Self {
        let inverter = night_inverter(SERIAL).await;
        let plug = |w| async move {
            let p = TapoSim::start(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                Flavour::P110,
                Load::Constant { watts: w },
                USER,
                PASS,
            )
            .await
            .expect("plug simulator");
            p.set_on(true);
            Arc::new(p)
        };
        let boiler = plug(BOILER_W).await;
        let heater = plug(HEATER_W).await;
        let kettle_w = Arc::new(AtomicU64::new(0));
        let feeder = {
            let (model, boiler, heater, kettle) = (
                inverter.model.clone(),
                boiler.clone(),
                heater.clone(),
                kettle_w.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let plugs: f64 = [&boiler, &heater]
                        .iter()
                        .filter(|p| p.is_on())
                        .map(|p| p.power_w())
                        .sum();
                    let kettle = f64::from_bits(kettle.load(Ordering::Relaxed));
                    model.lock().unwrap().set_extra_load(plugs + kettle);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        Self {
            inverter,
            boiler,
            heater,
            kettle_w,
            feeder,
        }
    }

    fn kettle(&self, on: bool) {
        let w = if on { KETTLE_W } else { 0.0 };
        self.kettle_w.store(w.to_bits(), Ordering::Relaxed);
    }

    fn config(&self) -> String {
        let head = fast_balancer_config(USER, PASS, &self.inverter, SERIAL, LIMIT_W);
        format!(
            r#"{head}
[[plug]]
id = "boiler"
host = "127.0.0.1"
port = {boiler}
poll_interval = "1s"
inverter = "inverter"
priority = 10
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
    "energy2mqtt/bridge/state",
    "energy2mqtt/boiler",
    "energy2mqtt/heater",
    "homeassistant/+/balancer_inverter/+/config",
    "homeassistant/select/+/mode/config",
];

/// Waits for the balancer to have read the house and found it fine.
async fn wait_idle(client: &mut Client) -> Value {
    client
        .expect(Duration::from_secs(30), |m| {
            status(m) && m.json()["state"] == "idle" && m.json()["load_w"].as_f64().is_some()
        })
        .await
        .expect("the balancer reports idle with a load")
        .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_sheds_the_lowest_priority_plug_survives_kill9_and_restores_it() {
    let broker = Broker::start(BrokerKind::Embedded);
    let house = House::start().await;
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap().to_owned();
    let env = [("E2M_STORAGE__DIR", data_dir.as_str())];
    let mut client = Client::connect(broker.port, TOPICS).await;
    let mut bridge = Bridge::start(&broker.url(), &house.config(), &env);

    // Home Assistant gets the balancer's device and the plugs' mode selects.
    let configs = client.collect(Duration::from_secs(3)).await;
    for want in [
        "homeassistant/switch/balancer_inverter/enabled/config",
        "homeassistant/binary_sensor/balancer_inverter/shedding/config",
        "homeassistant/sensor/balancer_inverter/shed_count/config",
        "homeassistant/sensor/balancer_inverter/headroom/config",
        "homeassistant/number/balancer_inverter/on_grid_limit/config",
        "homeassistant/select/boiler/mode/config",
    ] {
        assert!(
            configs.iter().any(|m| m.topic == want),
            "{want} missing; got {:?}",
            configs.iter().map(|m| &m.topic).collect::<Vec<_>>()
        );
    }

    let idle = wait_idle(&mut client).await;
    assert_eq!(idle["limit_w"], LIMIT_W);
    assert_eq!(idle["shed_count"], 0);
    assert_eq!(idle["enabled"], true);
    let load = idle["load_w"].as_f64().unwrap();
    assert!(
        (BOILER_W + HEATER_W..LIMIT_W).contains(&load),
        "house load {load} W"
    );
    assert!(house.boiler.is_on() && house.heater.is_on());

    // Dinner: the kettle pushes the house over the limit.
    client.drain();
    house.kettle(true);
    let shed = client
        .expect(Duration::from_secs(15), action("shed", "boiler"))
        .await
        .expect("the boiler (lowest priority) is shed")
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
        "the boiler simulator was switched off"
    );
    assert!(
        house.heater.is_on(),
        "one plug is enough: the heater stays on"
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

    // kill -9 in the middle of the episode; the kettle finishes meanwhile.
    bridge.kill9();
    house.kettle(false);
    tokio::time::sleep(Duration::from_secs(2)).await;
    client.drain();
    let mut bridge = Bridge::start(&broker.url(), &house.config(), &env);

    // Nothing is toggled blindly: the persisted shed set is reported and
    // the boiler stays off until its min-off (counted from the original
    // shed) has passed, although there is room at once.
    let after = client
        .expect(Duration::from_secs(20), |m| {
            status(m) && m.json()["shed_count"] == 1 && m.json()["load_w"].as_f64().is_some()
        })
        .await
        .expect("the restarted bridge remembers the shed boiler")
        .json();
    assert_eq!(after["shed"][0]["plug"], "boiler");
    assert_eq!(after["shed"][0]["since"], shedding["shed"][0]["since"]);
    let restore = client
        .expect(Duration::from_secs(90), action("restore", "boiler"))
        .await
        .expect("the boiler comes back when there is room")
        .json();
    let waited = shed_at.elapsed();
    assert!(
        waited >= Duration::from_secs(59),
        "restored {waited:?} after the shed, before its min-off"
    );
    assert_eq!(restore["reason"], "restore");
    relay_becomes(|| house.boiler.is_on(), true).await;
    assert!(house.boiler.is_on(), "the boiler simulator was switched on");
    client
        .expect(Duration::from_secs(10), |m| {
            status(m) && m.json()["shed_count"] == 0 && m.json()["state"] == "idle"
        })
        .await
        .expect("idle again");

    // Commands from Home Assistant: a bad limit is refused with a reason,
    // the enable switch and a plug's mode work.
    client
        .client
        .publish(
            "energy2mqtt/balancer/inverter/set",
            rumqttc::QoS::AtLeastOnce,
            false,
            r#"{"on_grid_w": -5}"#,
        )
        .await
        .unwrap();
    let e = client
        .expect(Duration::from_secs(5), |m| {
            m.topic == "energy2mqtt/bridge/event" && m.json()["type"] == "command_error"
        })
        .await
        .expect("a bad limit is refused")
        .json();
    assert!(e["error"].as_str().unwrap().contains("on_grid_w"), "{e}");
    client
        .client
        .publish(
            "energy2mqtt/balancer/inverter/set",
            rumqttc::QoS::AtLeastOnce,
            false,
            r#"{"enabled": false, "on_grid_w": 4500}"#,
        )
        .await
        .unwrap();
    let disabled = client
        .expect(Duration::from_secs(5), |m| {
            status(m) && m.json()["enabled"] == false
        })
        .await
        .expect("disabled")
        .json();
    assert_eq!(disabled["state"], "disabled");
    assert_eq!(disabled["on_grid_w"], 4500.0);
    client
        .client
        .publish(
            "energy2mqtt/heater/set",
            rumqttc::QoS::AtLeastOnce,
            false,
            r#"{"mode": "off"}"#,
        )
        .await
        .unwrap();
    client
        .expect(Duration::from_secs(5), |m| {
            m.topic == "energy2mqtt/heater" && m.json()["mode"] == "off"
        })
        .await
        .expect("the heater's mode is published");
    relay_becomes(|| house.heater.is_on(), false).await;
    assert!(!house.heater.is_on(), "mode off switches the heater off");
    assert!(bridge.is_running(), "{}", bridge.log_text());

    // The settings survive a restart too.
    assert_eq!(bridge.terminate(), Some(0));
    client.drain();
    let bridge = Bridge::start(&broker.url(), &house.config(), &env);
    // Only what comes after the second bridge is online is its own.
    client
        .expect(Duration::from_secs(20), online)
        .await
        .unwrap_or_else(|| panic!("the second bridge online:\n{}", bridge.log_text()));
    let again = client
        .expect(Duration::from_secs(20), |m| {
            status(m) && m.json()["on_grid_w"] == 4500.0
        })
        .await
        .expect("limits survive a restart")
        .json();
    assert_eq!(again["enabled"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shed_plug_found_on_after_a_restart_is_an_override_reported_once() {
    let broker = Broker::start(BrokerKind::Embedded);
    let house = House::start().await;
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap().to_owned();
    let env = [("E2M_STORAGE__DIR", data_dir.as_str())];
    let mut client = Client::connect(broker.port, TOPICS).await;
    let mut bridge = Bridge::start(&broker.url(), &house.config(), &env);
    wait_idle(&mut client).await;
    house.kettle(true);
    client
        .expect(Duration::from_secs(15), action("shed", "boiler"))
        .await
        .expect("the boiler is shed");
    relay_becomes(|| house.boiler.is_on(), false).await;
    bridge.kill9();
    // While the bridge is down the kettle finishes and someone presses the
    // boiler's button.
    house.kettle(false);
    house.boiler.set_on(true);
    client.drain();
    let _bridge = Bridge::start(&broker.url(), &house.config(), &env);
    let msgs = client.collect(Duration::from_secs(15)).await;
    let overrides: Vec<Value> = msgs
        .iter()
        .filter(|m| {
            m.topic == "energy2mqtt/bridge/event" && m.json()["type"] == "balancer_override"
        })
        .map(Msg::json)
        .collect();
    assert_eq!(overrides.len(), 1, "{overrides:?}");
    assert_eq!(overrides[0]["plug"], "boiler");
    assert!(
        !msgs.iter().any(|m| action("shed", "boiler")(m)),
        "the user's choice is not undone"
    );
    assert!(house.boiler.is_on());
    let last = msgs
        .iter()
        .rev()
        .find(|m| status(m))
        .expect("status published")
        .json();
    assert_eq!(last["shed_count"], 0);
    let boiler = msgs
        .iter()
        .rev()
        .find(|m| m.topic == "energy2mqtt/boiler")
        .expect("boiler state")
        .json();
    assert!(boiler["override_until"].is_string(), "{boiler}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plug_timer_switches_on_and_cancel_switches_off_and_locks_refuse_it() {
    let broker = Broker::start(BrokerKind::Embedded);
    let house = House::start().await;
    house.heater.set_on(false);
    let mut client = Client::connect(broker.port, TOPICS).await;
    let bridge = Bridge::start(&broker.url(), &house.config(), &[]);
    client
        .expect(Duration::from_secs(20), |m| {
            m.topic == "energy2mqtt/heater" && m.json()["state"] == "OFF"
        })
        .await
        .expect("heater read");
    let publisher = client.client.clone();
    let set = |payload: &'static str| {
        let c = publisher.clone();
        async move {
            c.publish(
                "energy2mqtt/heater/set",
                rumqttc::QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .unwrap();
        }
    };
    set(r#"{"timer": 30}"#).await;
    let timed = client
        .expect(Duration::from_secs(5), |m| {
            m.topic == "energy2mqtt/heater" && m.json()["timer"] == 30
        })
        .await
        .expect("the timer's minutes are published")
        .json();
    assert!(timed["timer_off_at"].is_string(), "{timed}");
    relay_becomes(|| house.heater.is_on(), true).await;
    assert!(house.heater.is_on(), "a timer switches the plug on now");
    set(r#"{"timer": "cancel"}"#).await;
    client
        .expect(Duration::from_secs(5), |m| {
            m.topic == "energy2mqtt/heater" && m.json()["timer"] == 0
        })
        .await
        .expect("the timer is gone");
    relay_becomes(|| house.heater.is_on(), false).await;
    assert!(!house.heater.is_on(), "cancel switches the plug off");
    client.drain();
    set(r#"{"mode": "on"}"#).await;
    set(r#"{"timer": 15}"#).await;
    let e = client
        .expect(Duration::from_secs(5), |m| {
            m.topic == "energy2mqtt/bridge/event" && m.json()["type"] == "command_error"
        })
        .await
        .expect("a timer on a locked plug is refused")
        .json();
    assert!(e["error"].as_str().unwrap().contains("locked"), "{e}");
    set(r#"{"timer": 9999}"#).await;
    let e = client
        .expect(Duration::from_secs(5), |m| {
            m.topic == "energy2mqtt/bridge/event" && m.json()["type"] == "command_error"
        })
        .await
        .expect("an out-of-range timer is refused")
        .json();
    assert!(e["error"].as_str().unwrap().contains("timer"), "{e}");
    drop(bridge);
}
