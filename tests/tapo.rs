//! The bridge switching simulated Tapo plugs through the real KLAP client,
//! commanded over a real broker: switching, read-back, session expiry,
//! wrong credentials, unreachable plugs.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use energy2mqtt::sim::tapo::{Flavour, Load, TapoSim};
use support::*;

const USER: &str = "plugs@example.com";
const PASS: &str = "correct horse";

async fn plug(flavour: Flavour, load: Load) -> TapoSim {
    TapoSim::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        flavour,
        load,
        USER,
        PASS,
    )
    .await
    .expect("plug simulator")
}

fn plug_toml(id: &str, port: u16, extra: &str) -> String {
    format!(
        r#"
[[plug]]
id = "{id}"
host = "127.0.0.1"
port = {port}
poll_interval = "1s"
{extra}
"#
    )
}

fn config(plugs: &str) -> String {
    format!("[tapo]\nemail = \"{USER}\"\npassword = \"{PASS}\"\ntimeout = \"1s\"\n{plugs}")
}

fn state_of(id: &'static str) -> impl Fn(&Msg) -> bool {
    move |m: &Msg| m.topic == format!("energy2mqtt/{id}")
}

fn availability(id: &'static str, online: bool) -> impl Fn(&Msg) -> bool {
    let want = if online { "online" } else { "offline" };
    move |m: &Msg| m.topic == format!("energy2mqtt/{id}/availability") && m.json()["state"] == want
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_commands_switch_plugs_and_the_state_follows() {
    let broker = Broker::start(BrokerKind::Embedded);
    let boiler = plug(Flavour::P110, Load::Boiler { watts: 2000.0 }).await;
    let lamp = plug(Flavour::P100, Load::Constant { watts: 60.0 }).await;
    boiler.set_on(false);
    lamp.set_on(true);
    let toml = config(&format!(
        "{}{}",
        plug_toml("boiler", boiler.addr.port(), ""),
        plug_toml("lamp", lamp.addr.port(), "nominal_w = 60.0")
    ));
    let mut client = Client::connect(
        broker.port,
        &[
            "energy2mqtt/boiler",
            "energy2mqtt/lamp",
            "energy2mqtt/+/availability",
            "energy2mqtt/bridge/event",
            "homeassistant/+/boiler/+/config",
            "homeassistant/+/lamp/+/config",
        ],
    )
    .await;
    let mut bridge = Bridge::start(&broker.url(), &toml, &[]);

    let s = client
        .expect(Duration::from_secs(10), state_of("boiler"))
        .await
        .expect("boiler state")
        .json();
    assert_eq!(s["state"], "OFF", "{s}");
    assert_eq!(s["power"], 0.0, "{s}");
    let s = client
        .expect(Duration::from_secs(10), state_of("lamp"))
        .await
        .expect("lamp state")
        .json();
    assert_eq!(s["state"], "ON", "{s}");
    assert!(s.get("power").is_none(), "a P100 has no metering: {s}");

    // JSON command: the plug switches and the state follows within 1 s.
    client.drain();
    let sent = tokio::time::Instant::now();
    client
        .publish("energy2mqtt/boiler/set", r#"{"state":"ON"}"#, false)
        .await;
    let s = client
        .expect(Duration::from_secs(3), |m| {
            state_of("boiler")(m) && m.json()["state"] == "ON"
        })
        .await
        .expect("boiler ON published");
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "read back took {:?}",
        sent.elapsed()
    );
    assert!(boiler.is_on());
    assert!(
        s.json()["power"].as_f64().is_some_and(|p| p > 1500.0),
        "{}",
        s.json()
    );

    // Bare payload.
    client.publish("energy2mqtt/lamp/set", "OFF", false).await;
    client
        .expect(Duration::from_secs(3), |m| {
            state_of("lamp")(m) && m.json()["state"] == "OFF"
        })
        .await
        .expect("lamp OFF published");
    assert!(!lamp.is_on());

    // Someone presses the button on the plug: the next poll shows it.
    boiler.set_on(false);
    client
        .expect(Duration::from_secs(3), |m| {
            state_of("boiler")(m) && m.json()["state"] == "OFF"
        })
        .await
        .expect("a manual switch shows up");

    // Discovery: a switch and metering entities on the P110, none on the
    // P100 once it has said what it is.
    // What a Home Assistant starting now would see: the retained configs
    // (cleared ones are gone).
    let mut ha = Client::connect(
        broker.port,
        &[
            "homeassistant/+/boiler/+/config",
            "homeassistant/+/lamp/+/config",
        ],
    )
    .await;
    let msgs = ha.collect(Duration::from_secs(1)).await;
    let mut configs = std::collections::BTreeMap::new();
    for m in msgs
        .iter()
        .filter(|m| m.topic.starts_with("homeassistant/"))
    {
        configs.insert(m.topic.clone(), m.payload.clone());
    }
    let live = |t: &str| configs.get(t).is_some_and(|p| !p.is_empty());
    assert!(live("homeassistant/switch/boiler/switch/config"));
    assert!(live("homeassistant/sensor/boiler/power/config"));
    assert!(live("homeassistant/sensor/boiler/energy_today/config"));
    assert!(live("homeassistant/switch/lamp/switch/config"));
    assert!(
        !live("homeassistant/sensor/lamp/power/config"),
        "the P100's power entity is cleared"
    );
    let sw: serde_json::Value =
        serde_json::from_slice(&configs["homeassistant/switch/boiler/switch/config"])
            .unwrap_or_default();
    assert_eq!(sw["command_topic"], "energy2mqtt/boiler/set");
    assert_eq!(sw["device"]["manufacturer"], "TP-Link");

    // One session per plug for all of this.
    assert_eq!(boiler.handshakes(), 1, "one handshake, reused");
    assert!(bridge.is_running());
    assert_eq!(bridge.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_is_invisible_and_offline_plugs_come_back() {
    let broker = Broker::start(BrokerKind::Embedded);
    let heater = plug(Flavour::P110, Load::Heater { watts: 1500.0 }).await;
    heater.knobs.session_ttl_s.store(2, Ordering::Relaxed);
    let toml = config(&plug_toml("heater", heater.addr.port(), ""));
    let mut client = Client::connect(
        broker.port,
        &[
            "energy2mqtt/heater",
            "energy2mqtt/heater/availability",
            "energy2mqtt/bridge/event",
        ],
    )
    .await;
    let mut bridge = Bridge::start(&broker.url(), &toml, &[]);
    client
        .expect(Duration::from_secs(10), availability("heater", true))
        .await
        .expect("online");
    // Several session lifetimes: every poll still answered, no error.
    let msgs = client.collect(Duration::from_secs(7)).await;
    assert!(
        !msgs.iter().any(|m| availability("heater", false)(m)),
        "expiry made the plug unavailable; log:\n{}",
        bridge.log_text()
    );
    let events: Vec<_> = msgs
        .iter()
        .filter(|m| m.topic == "energy2mqtt/bridge/event")
        .map(|m| m.json())
        .filter(|e| e["type"] != "device_connected")
        .collect();
    assert!(events.is_empty(), "{events:?}; log:\n{}", bridge.log_text());
    let states = msgs.iter().filter(|m| state_of("heater")(m)).count();
    assert!(states >= 5, "only {states} states in 7 s");
    let hs = heater.handshakes();
    assert!((3..=6).contains(&hs), "{hs} handshakes for ~3 expiries");

    // Unreachable: offline after a couple of polls, back on its own.
    heater.knobs.offline.store(true, Ordering::Relaxed);
    client
        .expect(Duration::from_secs(10), availability("heater", false))
        .await
        .expect("marked offline");
    heater.knobs.offline.store(false, Ordering::Relaxed);
    client
        .expect(Duration::from_secs(15), availability("heater", true))
        .await
        .expect("back online");

    // A command that cannot be carried out: an error event naming the plug
    // and the reason, and the switch state stays what the plug says.
    heater.set_on(false);
    client
        .expect(Duration::from_secs(5), |m| {
            state_of("heater")(m) && m.json()["state"] == "OFF"
        })
        .await
        .expect("heater off");
    heater.knobs.rate_limited.store(true, Ordering::Relaxed);
    client.drain();
    client.publish("energy2mqtt/heater/set", "ON", false).await;
    let ev = client
        .expect(Duration::from_secs(5), |m| {
            m.topic == "energy2mqtt/bridge/event" && m.json()["type"] == "command_error"
        })
        .await
        .expect("command error event")
        .json();
    assert_eq!(ev["type"], "command_error");
    assert_eq!(ev["device"], "heater");
    assert!(
        ev["error"].as_str().is_some_and(|e| e.contains("rate")),
        "{ev}"
    );
    assert!(!heater.is_on());
    // Nothing claims it is on.
    let after = client.collect(Duration::from_secs(2)).await;
    assert!(
        !after
            .iter()
            .any(|m| state_of("heater")(m) && m.json()["state"] == "ON"),
        "HA was told the plug is on"
    );
    heater.knobs.rate_limited.store(false, Ordering::Relaxed);
    assert!(bridge.is_running());
    assert_eq!(bridge.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_reported_once_without_a_login_storm() {
    let broker = Broker::start(BrokerKind::Embedded);
    let fridge = plug(
        Flavour::P110,
        Load::Fridge {
            watts: 120.0,
            on_s: 600.0,
            off_s: 1200.0,
        },
    )
    .await;
    fridge
        .knobs
        .wrong_credentials
        .store(true, Ordering::Relaxed);
    let tpap = plug(Flavour::P110, Load::Constant { watts: 10.0 }).await;
    tpap.knobs.klap_disabled.store(true, Ordering::Relaxed);
    let toml = config(&format!(
        "{}{}",
        plug_toml("fridge", fridge.addr.port(), ""),
        plug_toml("tpap", tpap.addr.port(), "")
    ));
    let mut client = Client::connect(
        broker.port,
        &["energy2mqtt/bridge/event", "energy2mqtt/+/availability"],
    )
    .await;
    let mut bridge = Bridge::start(&broker.url(), &toml, &[]);
    let msgs = client.collect(Duration::from_secs(6)).await;
    let errors: Vec<_> = msgs
        .iter()
        .filter(|m| m.topic == "energy2mqtt/bridge/event" && m.json()["type"] == "device_error")
        .map(|m| m.json())
        .collect();
    for id in ["fridge", "tpap"] {
        let mine: Vec<_> = errors.iter().filter(|e| e["device"] == id).collect();
        assert_eq!(mine.len(), 1, "{id}: {errors:?}");
        let text = mine[0]["error"].as_str().unwrap_or_default();
        assert!(
            text.contains("Third-Party Compatibility") && text.contains("password"),
            "{text}"
        );
        assert!(
            msgs.iter().any(|m| availability(id, false)(m)),
            "{id} not marked offline"
        );
    }
    // Six poll intervals, one attempt each: no storm.
    assert_eq!(
        fridge.handshakes(),
        1,
        "credential failures are not retried in a loop"
    );
    assert_eq!(tpap.handshakes(), 1);
    assert!(bridge.log_text().contains("Third-Party Compatibility"));
    assert!(
        !bridge.log_text().contains(PASS),
        "the password leaked into the log"
    );
    assert_eq!(bridge.terminate(), Some(0));
}

/// An earlier run's retained config, as the bridge itself would have left it.
fn earlier_config(plug: &str, object: &str) -> String {
    serde_json::json!({
        "name": object,
        "unique_id": format!("energy2mqtt_{plug}_{object}"),
        "state_topic": format!("energy2mqtt/{plug}"),
        "origin": {"name": "energy2mqtt"},
        "device": {"identifiers": [format!("energy2mqtt_{plug}")], "name": plug,
                   "via_device": "energy2mqtt_bridge_energy2mqtt"}
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_waits_for_the_plug_model_instead_of_flickering() {
    let broker = Broker::start(BrokerKind::Embedded);
    let lamp = plug(Flavour::P100, Load::Constant { watts: 60.0 }).await;
    // A configured plug nobody answers for: the bridge cannot know its model.
    let away_port = free_port();
    let mut watch = Client::connect(
        broker.port,
        &[
            "energy2mqtt/lamp",
            "homeassistant/+/lamp/+/config",
            "homeassistant/+/away/+/config",
        ],
    )
    .await;
    // What an earlier run left: power entities on both (say the lamp was
    // then a P110 at this id, and the away plug is one).
    let user = Client::connect(broker.port, &[]).await;
    for plug in ["lamp", "away"] {
        user.publish(
            &format!("homeassistant/sensor/{plug}/power/config"),
            earlier_config(plug, "power"),
            true,
        )
        .await;
    }
    let toml = config(&format!(
        "{}{}",
        plug_toml("lamp", lamp.addr.port(), "nominal_w = 60.0"),
        plug_toml("away", away_port, "")
    ));
    let mut bridge = Bridge::start(&broker.url(), &toml, &[]);
    // Past the 1 s clean-up window and several polls of both plugs.
    let msgs = watch.collect(Duration::from_secs(5)).await;
    let published = |topic: &str, empty: bool| {
        msgs.iter()
            .filter(|m| m.topic == topic && m.payload.is_empty() == empty)
            .count()
    };
    assert!(
        msgs.iter()
            .any(|m| m.topic == "energy2mqtt/lamp" && m.json()["state"] == "ON"),
        "the lamp answered"
    );
    // Only the earlier run's config: the bridge never announced a power
    // entity for a plug whose model it did not know, and cleared it once
    // the lamp said it is a P100.
    assert_eq!(
        published("homeassistant/sensor/lamp/power/config", false),
        1
    );
    assert_eq!(published("homeassistant/sensor/lamp/power/config", true), 1);
    assert_eq!(
        published("homeassistant/sensor/lamp/energy_today/config", false),
        0
    );
    assert!(published("homeassistant/switch/lamp/switch/config", false) >= 1);
    // The unreachable plug keeps its entities in Home Assistant.
    assert_eq!(published("homeassistant/sensor/away/power/config", true), 0);
    assert!(published("homeassistant/switch/away/switch/config", false) >= 1);
    assert!(
        bridge
            .log_text()
            .contains("keeping discovery config until its device has described itself"),
        "the kept config is logged"
    );
    assert!(bridge.is_running());
    assert_eq!(bridge.terminate(), Some(0));

    // With discovery switched off, every config of ours goes, including
    // those of the plug that still does not answer.
    let mut bridge = Bridge::start(
        &broker.url(),
        &toml,
        &[("E2M_HOMEASSISTANT__DISCOVERY", "false")],
    );
    let msgs = watch.collect(Duration::from_secs(3)).await;
    for topic in [
        "homeassistant/sensor/away/power/config",
        "homeassistant/switch/away/switch/config",
        "homeassistant/switch/lamp/switch/config",
    ] {
        assert!(
            msgs.iter()
                .any(|m| m.topic == topic && m.payload.is_empty()),
            "{topic} cleared"
        );
    }
    assert_eq!(bridge.terminate(), Some(0));
}

/// The control state (`control.json`) is written off the bridge's task:
/// a mode reaches the disk, survives a restart, and a file that cannot be
/// written is reported once while the bridge keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_state_is_saved_and_a_failing_save_is_reported_once() {
    let broker = Broker::start(BrokerKind::Embedded);
    let lamp = plug(Flavour::P100, Load::Constant { watts: 60.0 }).await;
    lamp.set_on(false);
    let toml = config(&plug_toml("lamp", lamp.addr.port(), "nominal_w = 60.0"));
    let mut client = Client::connect(
        broker.port,
        &[
            "energy2mqtt/lamp",
            "energy2mqtt/bridge/event",
            "energy2mqtt/bridge/state",
        ],
    )
    .await;
    let mut first = Bridge::start(&broker.url(), &toml, &[]);
    client
        .expect(Duration::from_secs(10), state_of("lamp"))
        .await
        .expect("lamp state");
    client
        .publish("energy2mqtt/lamp/set", r#"{"mode":"on"}"#, false)
        .await;
    let file = first.data_dir().join("control.json");
    let saved = || {
        std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while saved().is_none_or(|v| v["modes"]["lamp"] != "on") {
        assert!(
            std::time::Instant::now() < deadline,
            "the mode never reached control.json: {:?}\n{}",
            saved(),
            first.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(first.terminate(), Some(0));

    // Started again on the same storage: the lock is back (a restored lock
    // keeps automation away; it does not switch the plug by itself: the
    // lamp is still on from the first bridge). Everything below waits for
    // the second bridge to be online first: messages of the first one
    // still in flight must not pass for the second's (under load, the
    // second was sent SIGTERM before it had even started).
    let data = first.data_dir();
    let data = data.to_str().unwrap();
    client.drain();
    let mut second = Bridge::start(&broker.url(), &toml, &[("E2M_STORAGE__DIR", data)]);
    client
        .expect(Duration::from_secs(10), online)
        .await
        .unwrap_or_else(|| panic!("the second bridge online:\n{}", second.log_text()));
    let s = client
        .expect(Duration::from_secs(10), |m| {
            state_of("lamp")(m) && m.json()["last_seen"].is_string()
        })
        .await
        .expect("the lamp's state after the restart");
    assert_eq!(
        s.json()["mode"],
        "on",
        "the mode survives a restart: {}",
        s.json()
    );
    assert!(lamp.is_on(), "{}", second.log_text());
    assert_eq!(second.terminate(), Some(0));

    // control.json cannot be written (a directory in its place): reported
    // at the load and once at the first failed write, never again, and
    // the bridge goes on switching.
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir_all(file.join("in-the-way")).unwrap();
    client.drain();
    let mut third = Bridge::start(&broker.url(), &toml, &[("E2M_STORAGE__DIR", data)]);
    let mut seen = client.collect(Duration::from_secs(4)).await;
    for mode in ["off", "auto", "on", "auto"] {
        client
            .publish(
                "energy2mqtt/lamp/set",
                format!(r#"{{"mode":"{mode}"}}"#),
                false,
            )
            .await;
        seen.extend(client.collect(Duration::from_millis(400)).await);
    }
    seen.extend(client.collect(Duration::from_secs(2)).await);
    let errors: Vec<serde_json::Value> = seen
        .iter()
        .filter(|m| m.topic == "energy2mqtt/bridge/event")
        .map(|m| m.json())
        .filter(|v| v["type"] == "state_error")
        .collect();
    assert_eq!(errors.len(), 2, "load + first failed write: {errors:?}");
    assert!(
        errors
            .iter()
            .all(|e| e["error"].as_str().is_some_and(|t| t.contains("control"))),
        "{errors:?}"
    );
    // The last lock (on) switched it on; `auto` leaves it so.
    assert!(lamp.is_on(), "{}", third.log_text());
    assert!(third.is_running(), "{}", third.log_text());
    let log = third.log_text();
    assert_eq!(
        log.matches("control state not saved").count(),
        1,
        "one log line for the failing writes:\n{log}"
    );
    assert_eq!(third.terminate(), Some(0));
}

/// Issue 15: a metering plug's poll is one multipleRequest (device info
/// with power, or with the energy counters every sixth poll), not one
/// request per getter; a P100 gets its device info alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_is_one_request() {
    let broker = Broker::start(BrokerKind::Embedded);
    let boiler = plug(Flavour::P110, Load::Constant { watts: 800.0 }).await;
    let lamp = plug(Flavour::P100, Load::Constant { watts: 60.0 }).await;
    let toml = config(&format!(
        "{}{}",
        plug_toml("boiler", boiler.addr.port(), ""),
        plug_toml("lamp", lamp.addr.port(), "")
    ));
    let mut client =
        Client::connect(broker.port, &["energy2mqtt/boiler", "energy2mqtt/lamp"]).await;
    let _bridge = Bridge::start(&broker.url(), &toml, &[]);
    for id in ["boiler", "lamp"] {
        client
            .expect(Duration::from_secs(10), state_of(id))
            .await
            .unwrap_or_else(|| panic!("{id} state"));
    }
    // Counted from one published state to another, so every poll in
    // between is complete; 8 polls cover an energy read.
    for (id, sim) in [("boiler", &boiler), ("lamp", &lamp)] {
        client.drain();
        client
            .expect(Duration::from_secs(3), state_of(id))
            .await
            .unwrap_or_else(|| panic!("{id} state"));
        let before = sim.requests();
        let mut states = 0;
        let mut energy = false;
        while states < 8 {
            let s = client
                .expect(Duration::from_secs(3), state_of(id))
                .await
                .unwrap_or_else(|| panic!("{id}: state {states}"))
                .json();
            energy |= s.get("energy_today").is_some();
            states += 1;
        }
        let requests = sim.requests() - before;
        assert_eq!(
            requests, states,
            "{id}: {requests} HTTP requests for {states} polls"
        );
        if id == "boiler" {
            assert!(energy, "the P110's energy counters are still read");
        }
    }
}
