//! The bridge reading a simulated Deye through the real Solarman V5 driver,
//! publishing through a real broker: entities, values, faults, recovery.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;

const SERIAL: u32 = DEYE_SERIAL;

fn inverter_toml(port: u16, serial: u32) -> String {
    format!(
        r#"
[[inverter]]
id = "inverter"
name = "Deye test"
host = "127.0.0.1"
port = {port}
serial = {serial}
poll_interval = "1s"
timeout = "700ms"
unavailable_after = 2
"#
    )
}

fn is_state(m: &Msg) -> bool {
    m.topic == "energy2mqtt/inverter"
}

fn availability(online: bool) -> impl Fn(&Msg) -> bool {
    let want = if online { "online" } else { "offline" };
    move |m: &Msg| m.topic == "energy2mqtt/inverter/availability" && m.json()["state"] == want
}

/// Every published value a balancer or a dashboard would trust.
fn assert_plausible(state: &serde_json::Value) {
    let n = |k: &str| {
        state[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} missing in {state}"))
    };
    assert!(n("inverter_power").abs() <= 6600.0, "{state}");
    assert!((0.0..=100.0).contains(&n("battery_soc")), "{state}");
    assert!(n("pv_power") >= 0.0 && n("pv_power") <= 12_000.0, "{state}");
    assert_eq!(
        n("load_port_power"),
        n("inverter_power") + n("grid_port_power") - n("gen_port_power"),
        "{state}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inverter_appears_with_every_entity_and_real_values() {
    let broker = Broker::start(BrokerKind::Embedded);
    let sim = deye_sim().await;
    let mut client = Client::connect(
        broker.port,
        &[
            "homeassistant/+/inverter/+/config",
            "energy2mqtt/inverter",
            "energy2mqtt/inverter/availability",
        ],
    )
    .await;
    let _bridge = Bridge::start(&broker.url(), &inverter_toml(sim.addr.port(), SERIAL), &[]);

    // Retained configs and states both arrive: keep them all.
    let mut msgs = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        msgs.extend(client.collect(Duration::from_millis(500)).await);
        let identified = msgs.iter().any(|m| {
            m.topic.starts_with("homeassistant/") && m.json()["device"]["serial_number"].is_string()
        });
        if identified && msgs.iter().any(is_state) {
            break;
        }
    }
    let state = msgs
        .iter()
        .rev()
        .find(|m| is_state(m))
        .expect("inverter state published")
        .json();
    assert_plausible(&state);
    assert_eq!(state["grid_connected"], true);
    assert_eq!(state["rated_power"], 6000.0);
    assert_eq!(state["running_state"], "normal");
    assert_eq!(state["inverter_serial"], "2409123456");
    assert!(
        state["pv_energy_total"]
            .as_f64()
            .is_some_and(|v| v > 1000.0)
    );

    // Discovery: every field the driver describes, plus the refresh button,
    // and the device block carries what the inverter said about itself.
    msgs.extend(client.collect(Duration::from_millis(500)).await);
    let mut configs = std::collections::BTreeMap::new();
    for m in msgs
        .iter()
        .filter(|m| m.topic.starts_with("homeassistant/"))
    {
        configs.insert(m.topic.clone(), m.json());
    }
    let fields = energy2mqtt::drivers::deye::fields();
    assert_eq!(configs.len(), fields.len() + 1, "{:#?}", configs.keys());
    for f in &fields {
        let component = match f.kind {
            energy2mqtt::model::FieldKind::Binary => "binary_sensor",
            energy2mqtt::model::FieldKind::Sensor => "sensor",
        };
        let topic = format!("homeassistant/{component}/inverter/{}/config", f.key);
        let c = configs.get(&topic).unwrap_or_else(|| panic!("no {topic}"));
        assert_eq!(c["state_topic"], "energy2mqtt/inverter");
        assert_eq!(c["device"]["serial_number"], "2409123456", "{topic}");
        assert!(
            c["device"]["model"]
                .as_str()
                .is_some_and(|m| m.contains("SUN-6K")),
            "{c}"
        );
        // Each entity has a value in the state object (optional sensors
        // such as the battery temperature are present in the simulator).
        assert!(
            state.get(f.key).is_some(),
            "entity {} has no value in the state",
            f.key
        );
    }
    let energy = &configs["homeassistant/sensor/inverter/grid_import_total/config"];
    assert_eq!(energy["device_class"], "energy");
    assert_eq!(energy["state_class"], "total_increasing");
    assert_eq!(energy["unit_of_measurement"], "kWh");
    let grid = &configs["homeassistant/binary_sensor/inverter/grid_connected/config"];
    assert_eq!(grid["payload_on"], true);
    assert!(
        configs.contains_key("homeassistant/button/inverter/refresh/config"),
        "refresh button"
    );
    // Two block reads per poll, identity once: the stick is not hammered.
    let requests = sim.stats.requests.load(Ordering::Relaxed);
    let connections = sim.stats.connections.load(Ordering::Relaxed);
    assert_eq!(connections, 1, "one persistent connection");
    assert!(requests >= 3, "{requests}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_is_survived_and_nothing_implausible_is_published() {
    let broker = Broker::start(BrokerKind::Embedded);
    let sim = deye_sim().await;
    let mut client = Client::connect(
        broker.port,
        &["energy2mqtt/inverter", "energy2mqtt/inverter/availability"],
    )
    .await;
    let mut bridge = Bridge::start(&broker.url(), &inverter_toml(sim.addr.port(), SERIAL), &[]);
    client
        .expect(Duration::from_secs(10), availability(true))
        .await
        .expect("online");

    // Faults the driver absorbs: the inverter stays online and keeps
    // publishing sane values.
    let f = &sim.faults;
    type Knob<'a> = Box<dyn Fn(bool) + 'a>;
    let benign: Vec<(&str, Knob)> = vec![
        (
            "garbage",
            Box::new(|on| f.garbage.store(on, Ordering::Relaxed)),
        ),
        (
            "heartbeat",
            Box::new(|on| f.heartbeat.store(on, Ordering::Relaxed)),
        ),
        (
            "stray reply",
            Box::new(|on| f.stray_reply.store(on, Ordering::Relaxed)),
        ),
        (
            "double CRC",
            Box::new(|on| f.double_crc.store(on, Ordering::Relaxed)),
        ),
        (
            "AT banner",
            Box::new(|on| {
                f.at_banner.store(on, Ordering::Relaxed);
                f.drop_every
                    .store(if on { 2 } else { 0 }, Ordering::Relaxed);
            }),
        ),
        (
            "fragmented",
            Box::new(|on| f.fragment.store(on, Ordering::Relaxed)),
        ),
        (
            "corrupt frame",
            Box::new(|on| f.corrupt.store(on, Ordering::Relaxed)),
        ),
        (
            "dropped connections",
            Box::new(|on| {
                f.drop_every
                    .store(if on { 1 } else { 0 }, Ordering::Relaxed)
            }),
        ),
    ];
    for (name, set) in &benign {
        set(true);
        client.drain();
        let mut seen = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while seen < 2 && tokio::time::Instant::now() < deadline {
            let Some(m) = client
                .expect(Duration::from_secs(5), |m| {
                    is_state(m) || m.topic.ends_with("/availability")
                })
                .await
            else {
                break;
            };
            assert!(
                !availability(false)(&m),
                "{name}: inverter went offline; log:\n{}",
                bridge.log_text()
            );
            if is_state(&m) {
                assert_plausible(&m.json());
                seen += 1;
            }
        }
        assert_eq!(
            seen,
            2,
            "{name}: no fresh samples; log:\n{}",
            bridge.log_text()
        );
        set(false);
    }

    // Corrupted values in valid frames: dropped and counted, never published.
    f.spike.store(true, Ordering::Relaxed);
    client.drain();
    let published = client.collect(Duration::from_millis(3500)).await;
    for m in published.iter().filter(|m| is_state(m)) {
        assert_plausible(&m.json());
    }
    f.spike.store(false, Ordering::Relaxed);
    let after = client
        .expect(Duration::from_secs(5), is_state)
        .await
        .expect("samples again once the spike stops")
        .json();
    assert!(
        after["samples_rejected"].as_u64().unwrap_or(0) >= 2,
        "{after}"
    );
    assert!(after["link_errors"].as_u64().unwrap_or(0) >= 1, "{after}");

    // Faults that make the inverter unreachable: offline after
    // `unavailable_after` failed polls, online again on its own.
    for (name, flag) in [("no answer", &f.no_answer), ("silent", &f.silent)] {
        flag.store(true, Ordering::Relaxed);
        client.drain();
        assert!(
            client
                .expect(Duration::from_secs(15), availability(false))
                .await
                .is_some(),
            "{name}: never marked offline; log:\n{}",
            bridge.log_text()
        );
        flag.store(false, Ordering::Relaxed);
        assert!(
            client
                .expect(Duration::from_secs(15), availability(true))
                .await
                .is_some(),
            "{name}: did not recover; log:\n{}",
            bridge.log_text()
        );
        let s = client
            .expect(Duration::from_secs(5), is_state)
            .await
            .expect("samples after recovery");
        assert_plausible(&s.json());
    }
    assert!(bridge.is_running());
    assert_eq!(bridge.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_logger_serial_is_reported_with_the_right_one() {
    let broker = Broker::start(BrokerKind::Embedded);
    let sim = deye_sim().await;
    let mut client = Client::connect(broker.port, &["energy2mqtt/bridge/event"]).await;
    let mut bridge = Bridge::start(
        &broker.url(),
        &inverter_toml(sim.addr.port(), 1_234_567_890),
        &[],
    );
    let ev = client
        .expect(Duration::from_secs(10), |m| {
            m.json()["type"] == "device_error"
        })
        .await
        .expect("device_error event")
        .json();
    assert_eq!(ev["device"], "inverter");
    let error = ev["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("2712345678") && error.contains("1234567890"),
        "{error}"
    );
    // Once per episode, not every poll.
    let again = client.collect(Duration::from_secs(3)).await;
    assert!(
        again.iter().all(|m| m.json()["type"] != "device_error"),
        "the same problem was reported twice"
    );
    assert!(bridge.log_text().contains("2712345678"));
    assert_eq!(bridge.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_inverters_are_two_devices_and_a_site_sums_them() {
    let broker = Broker::start(BrokerKind::Embedded);
    let a = deye_sim().await;
    let b = deye_sim().await;
    let toml = format!(
        r#"
[[inverter]]
id = "master"
host = "127.0.0.1"
port = {}
serial = {SERIAL}
poll_interval = "1s"

[[inverter]]
id = "slave"
host = "127.0.0.1"
port = {}
serial = {SERIAL}
poll_interval = "1s"
"#,
        a.addr.port(),
        b.addr.port()
    );
    let mut client = Client::connect(
        broker.port,
        &[
            "energy2mqtt/master",
            "energy2mqtt/slave",
            "energy2mqtt/site",
            "homeassistant/sensor/site/+/config",
        ],
    )
    .await;
    let _bridge = Bridge::start(&broker.url(), &toml, &[]);
    let msgs = client.collect(Duration::from_secs(4)).await;
    let last = |topic: &str| {
        msgs.iter()
            .rev()
            .find(|m| m.topic == topic)
            .unwrap_or_else(|| panic!("nothing on {topic}"))
            .json()
    };
    let site = last("energy2mqtt/site");
    assert_eq!(site["inverters_reporting"], 2, "{site}");
    // The site figure is the sum of what the two inverters published
    // (each within one poll of the other: compare loosely for load, which
    // has noise, exactly for the rating-bounded sign convention).
    let master = last("energy2mqtt/master");
    let slave = last("energy2mqtt/slave");
    for key in ["pv_power", "load_power", "battery_power", "grid_power"] {
        let sum =
            master[key].as_f64().unwrap_or(f64::NAN) + slave[key].as_f64().unwrap_or(f64::NAN);
        let got = site[key].as_f64().unwrap_or(f64::NAN);
        assert!(
            (got - sum).abs() <= 0.05 * sum.abs() + 50.0,
            "{key}: site {got}, sum {sum}"
        );
    }
    let configs: std::collections::BTreeMap<_, _> = msgs
        .iter()
        .filter(|m| m.topic.starts_with("homeassistant/sensor/site/"))
        .map(|m| (m.topic.clone(), m.json()))
        .collect();
    assert_eq!(configs.len(), energy2mqtt::core::site::fields().len());
    assert_eq!(
        configs["homeassistant/sensor/site/pv_power/config"]["unit_of_measurement"],
        "W"
    );
}
