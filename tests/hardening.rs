//! What a hostile or careless network does to the bridge, on real brokers
//! (Debian's Mosquitto where the defect was found with it): oversized
//! messages, a second instance on the same base topic, command bursts,
//! commands sent while the bridge reconnects, two bridges with one client
//! id, and the small things seen in the same runs.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use energy2mqtt::sim::tapo::{Flavour, Load, TapoSim};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use support::*;

const USER: &str = "plugs@example.com";
const PASS: &str = "correct horse";

async fn plug_sim() -> TapoSim {
    TapoSim::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Flavour::P110,
        Load::Constant { watts: 100.0 },
        USER,
        PASS,
    )
    .await
    .expect("plug simulator")
}

fn plug_config(id: &str, port: u16) -> String {
    format!(
        "[tapo]\nemail = \"{USER}\"\npassword = \"{PASS}\"\ntimeout = \"1s\"\n\
         [[plug]]\nid = \"{id}\"\nhost = \"127.0.0.1\"\nport = {port}\npoll_interval = \"1s\"\n"
    )
}

/// Mosquitto, or `None` (and a note) when the Mosquitto suite is off.
fn mosquitto() -> Option<Broker> {
    if brokers().contains(&BrokerKind::Mosquitto) {
        Some(Broker::start(BrokerKind::Mosquitto))
    } else {
        None
    }
}

/// A publisher without the test client's 4 MiB limit, for oversized
/// messages.
async fn big_publisher(port: u16) -> AsyncClient {
    let mut opts = MqttOptions::new(format!("big-{}", free_port()), "127.0.0.1", port);
    opts.set_max_packet_size(64 * 1024 * 1024, 64 * 1024 * 1024);
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    client
}

async fn wait_online(c: &mut Client, bridge: &Bridge) {
    c.expect(Duration::from_secs(15), online)
        .await
        .unwrap_or_else(|| panic!("bridge online; log:\n{}", bridge.log_text()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_command_is_answered_and_never_drops_the_connection() {
    let Some(broker) = mosquitto() else { return };
    let sim = plug_sim().await;
    let bridge = Bridge::start(&broker.url(), &plug_config("boiler", sim.addr.port()), &[]);
    let mut c = Client::connect(
        broker.port,
        &["energy2mqtt/bridge/state", "energy2mqtt/bridge/event"],
    )
    .await;
    wait_online(&mut c, &bridge).await;
    let big = big_publisher(broker.port).await;
    let payload = vec![b'x'; 5 * 1024 * 1024];
    big.publish(
        "energy2mqtt/boiler/set",
        QoS::AtLeastOnce,
        false,
        payload.clone(),
    )
    .await
    .expect("publish");
    // Retained as well: it reaches the bridge again at every subscription.
    big.publish(
        "energy2mqtt/bridge/request/health_check",
        QoS::AtLeastOnce,
        true,
        payload,
    )
    .await
    .expect("publish");
    let e = c
        .expect(Duration::from_secs(10), |m| {
            m.topic == "energy2mqtt/bridge/event" && m.json()["type"] == "command_error"
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "an error for the oversized set; log:\n{}",
                bridge.log_text()
            )
        })
        .json();
    assert_eq!(e["device"], "boiler", "{e}");
    assert!(
        e["error"].as_str().unwrap_or("").contains("too large"),
        "{e}"
    );
    // The bridge stays on the broker: no offline, no second online, and
    // the retained oversized request was cleared.
    let later = c.collect(Duration::from_secs(4)).await;
    assert!(
        !later.iter().any(|m| offline(m) || online(m)),
        "bridge/state flapped: {:?}; log:\n{}",
        later.iter().map(|m| m.json()).collect::<Vec<_>>(),
        bridge.log_text()
    );
    let mut fresh = Client::connect(broker.port, &["energy2mqtt/bridge/request/#"]).await;
    let retained = fresh.collect(Duration::from_millis(500)).await;
    assert!(
        retained.iter().all(|m| m.payload.is_empty()),
        "the oversized retained request is cleared: {} messages",
        retained.len()
    );
    let log = bridge.log_text();
    assert!(!log.contains("MQTT connection lost"), "{log}");
    assert_eq!(log.matches("MQTT connected").count(), 1, "{log}");
}

#[test]
fn run_without_a_configuration_file_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(BIN)
        .arg("run")
        .current_dir(dir.path())
        .env_clear()
        .env("E2M_MQTT__URL", format!("mqtt://127.0.0.1:{}", free_port()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("`run` with no configuration and no device kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    assert_eq!(code, Some(2), "{err}");
    let looked = dir.path().join("config/energy2mqtt.toml");
    assert!(err.contains(&looked.display().to_string()), "{err}");
    assert!(err.contains("--config"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_a_held_base_topic_refuses_and_deletes_nothing() {
    for kind in brokers() {
        let broker = Broker::start(kind);
        let sim = plug_sim().await;
        let mut first = Bridge::start(
            &broker.url(),
            &plug_config("boiler", sim.addr.port()),
            &[("E2M_MQTT__CLIENT_ID", "energy2mqtt-first")],
        );
        let mut c = Client::connect(broker.port, &["energy2mqtt/bridge/state"]).await;
        wait_online(&mut c, &first).await;
        // Every config of the first bridge, as Home Assistant sees them.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let configs = |msgs: Vec<Msg>| {
            msgs.into_iter()
                .filter(|m| !m.payload.is_empty())
                .map(|m| m.topic)
                .collect::<std::collections::BTreeSet<_>>()
        };
        let mut ha = Client::connect(broker.port, &["homeassistant/+/boiler/+/config"]).await;
        let before = configs(ha.collect(Duration::from_millis(700)).await);
        assert!(before.len() > 5, "{kind:?}: {before:?}");

        // The second: same base topic, its own client id, no devices.
        let mut second = Bridge::start(
            &broker.url(),
            "",
            &[("E2M_MQTT__CLIENT_ID", "energy2mqtt-second")],
        );
        let code = second.wait_exit(Duration::from_secs(10));
        let log = second.log_text();
        assert_eq!(
            code,
            Some(2),
            "{kind:?}: the second instance exits 2; log:\n{log}"
        );
        assert!(
            log.contains("another energy2mqtt is online on base topic 'energy2mqtt'")
                && log.contains("client_id energy2mqtt-first"),
            "{kind:?}: {log}"
        );
        assert!(
            !log.contains("removing discovery config"),
            "{kind:?}: {log}"
        );

        let mut ha = Client::connect(broker.port, &["homeassistant/+/boiler/+/config"]).await;
        let after = configs(ha.collect(Duration::from_millis(700)).await);
        assert_eq!(
            before, after,
            "{kind:?}: the first bridge's configs are all there"
        );
        let mut st = Client::connect(broker.port, &["energy2mqtt/bridge/state"]).await;
        let state = st
            .expect(Duration::from_secs(2), |m| {
                m.topic == "energy2mqtt/bridge/state"
            })
            .await
            .expect("retained state");
        assert!(online(&state), "{kind:?}: the first bridge is still online");
        assert!(first.is_running());
        assert_eq!(first.terminate(), Some(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_burst_of_switch_commands_the_last_one_wins() {
    for kind in brokers() {
        let broker = Broker::start(kind);
        let sim = plug_sim().await;
        sim.set_on(false);
        let mut bridge = Bridge::start(&broker.url(), &plug_config("boiler", sim.addr.port()), &[]);
        let mut c = Client::connect(
            broker.port,
            &[
                "energy2mqtt/bridge/state",
                "energy2mqtt/bridge/event",
                "energy2mqtt/bridge",
                "energy2mqtt/boiler",
            ],
        )
        .await;
        wait_online(&mut c, &bridge).await;
        c.expect(Duration::from_secs(10), |m| m.topic == "energy2mqtt/boiler")
            .await
            .expect("plug state");
        for i in 0..50 {
            let cmd = if i % 2 == 0 { "ON" } else { "OFF" };
            c.publish("energy2mqtt/boiler/set", cmd, false).await;
        }
        // The last command was OFF: that is where the plug ends.
        let events = c.collect(Duration::from_secs(3)).await;
        assert!(
            !sim.is_on(),
            "{kind:?}: the plug is OFF after ON/OFF x25; log:\n{}",
            bridge.log_text()
        );
        let errors: Vec<_> = events
            .iter()
            .filter(|m| {
                m.topic == "energy2mqtt/bridge/event" && m.json()["type"] == "command_error"
            })
            .map(|m| m.json())
            .collect();
        assert!(errors.is_empty(), "{kind:?}: commands refused: {errors:?}");
        c.drain();
        c.publish("energy2mqtt/bridge/get", "", false).await;
        let state = c
            .expect(Duration::from_secs(5), |m| m.topic == "energy2mqtt/bridge")
            .await
            .expect("bridge state")
            .json();
        let superseded = state["commands_superseded"].as_u64().unwrap_or(0);
        assert!(
            (1..=49).contains(&superseded),
            "{kind:?}: superseded commands counted: {state}"
        );
        assert_eq!(bridge.terminate(), Some(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_sent_while_the_bridge_reconnects_are_carried_out() {
    if !brokers().contains(&BrokerKind::Mosquitto) {
        return;
    }
    let mut broker = Broker::mosquitto_persistent();
    let mut bridge = Bridge::start(
        &broker.url(),
        "",
        &[("E2M_MQTT__CLIENT_ID", "energy2mqtt-persistent")],
    );
    let mut c = Client::connect(broker.port, &["energy2mqtt/bridge/state"]).await;
    wait_online(&mut c, &bridge).await;
    drop(c);
    // Let the session settle (subscriptions acknowledged) before the restart.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Down for 2 s: the bridge's reconnect backoff has grown past a second
    // by then, so the commands below reach the broker while the bridge is
    // still away (its next attempt comes well after them).
    broker.restart_gracefully(Duration::from_secs(2));
    let mut c = Client::connect(broker.port, &["energy2mqtt/bridge/response/#"]).await;
    for t in 1..=10 {
        c.publish(
            "energy2mqtt/bridge/request/health_check",
            format!("{{\"transaction\":{t}}}"),
            false,
        )
        .await;
    }
    let mut answered = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while answered.len() < 10 && tokio::time::Instant::now() < deadline {
        if let Some(m) = c
            .expect(Duration::from_secs(1), |m| {
                m.topic == "energy2mqtt/bridge/response/health_check"
            })
            .await
        {
            if let Some(t) = m.json()["transaction"].as_u64() {
                answered.insert(t);
            }
        }
    }
    let log = bridge.log_text();
    assert_eq!(
        answered.len(),
        10,
        "answered {answered:?} of 10; log:\n{log}"
    );
    // The commands came before the bridge was back (else this test would
    // prove nothing).
    assert_eq!(log.matches("MQTT connected").count(), 2, "{log}");
    assert_eq!(bridge.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bridges_with_one_client_id_are_told_apart_in_words() {
    let Some(broker) = mosquitto() else { return };
    let env = [("E2M_MQTT__CLIENT_ID", "energy2mqtt-twin")];
    let a = Bridge::start(&broker.url(), "", &env);
    let b = Bridge::start(&broker.url(), "", &env);
    let said = "another client uses client_id energy2mqtt-twin";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline
        && !(a.log_text().contains(said) || b.log_text().contains(said))
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (la, lb) = (a.log_text(), b.log_text());
    assert!(
        la.contains(said) || lb.contains(said),
        "log a:\n{la}\nlog b:\n{lb}"
    );
    // Once per episode, not at every reconnect.
    assert!(la.matches(said).count() <= 1 && lb.matches(said).count() <= 1);
    // And they no longer fight 4 times a second: the backoff is not reset
    // by a session that lasted a moment.
    let connects = la.matches("MQTT connected").count() + lb.matches("MQTT connected").count();
    assert!(connects < 30, "{connects} connects in 20 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_a_retained_command_is_no_error_and_availability_is_sent_on_change() {
    for kind in brokers() {
        let broker = Broker::start(kind);
        let sim = plug_sim().await;
        let mut c = Client::connect(
            broker.port,
            &[
                "energy2mqtt/bridge/state",
                "energy2mqtt/bridge/event",
                "energy2mqtt/boiler/availability",
            ],
        )
        .await;
        // A retained command left on the broker: the bridge ignores and
        // clears it at start; the empty message that clears it is no error
        // either.
        c.publish("energy2mqtt/alerts/set", r#"{"soc_low": 15}"#, true)
            .await;
        let mut bridge = Bridge::start(&broker.url(), &plug_config("boiler", sim.addr.port()), &[]);
        wait_online(&mut c, &bridge).await;
        c.expect(Duration::from_secs(10), |m| {
            m.topic == "energy2mqtt/boiler/availability"
        })
        .await
        .expect("availability");
        // The plug is polled every second: its availability is not.
        let msgs = c.collect(Duration::from_secs(5)).await;
        let errors: Vec<_> = msgs
            .iter()
            .filter(|m| m.json()["type"] == "command_error")
            .map(|m| m.json())
            .collect();
        assert!(errors.is_empty(), "{kind:?}: {errors:?}");
        let availability = msgs
            .iter()
            .filter(|m| m.topic == "energy2mqtt/boiler/availability")
            .count();
        assert_eq!(
            availability, 0,
            "{kind:?}: availability re-sent while it did not change"
        );
        let log = bridge.log_text();
        assert!(!log.contains("command rejected"), "{kind:?}: {log}");
        assert!(
            log.contains("ignoring a retained command"),
            "{kind:?}: {log}"
        );
        // A device that comes back says so once.
        sim.knobs
            .offline
            .store(true, std::sync::atomic::Ordering::Relaxed);
        c.expect(Duration::from_secs(15), |m| {
            m.topic == "energy2mqtt/boiler/availability" && m.json()["state"] == "offline"
        })
        .await
        .expect("plug offline");
        sim.knobs
            .offline
            .store(false, std::sync::atomic::Ordering::Relaxed);
        c.expect(Duration::from_secs(30), |m| {
            m.topic == "energy2mqtt/boiler/availability" && m.json()["state"] == "online"
        })
        .await
        .expect("plug back");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            bridge.log_text().matches("device reachable again").count(),
            1,
            "{kind:?}"
        );
        assert_eq!(bridge.terminate(), Some(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_commands_to_an_inverter_say_what_it_is() {
    let broker = Broker::start(BrokerKind::Embedded);
    let sim = deye_sim().await;
    let toml = format!(
        "[[inverter]]\nid = \"inverter\"\ntransport = \"solarman\"\nhost = \"127.0.0.1\"\n\
         port = {}\nserial = {DEYE_SERIAL}\n",
        sim.addr.port()
    );
    let mut bridge = Bridge::start(&broker.url(), &toml, &[]);
    let mut c = Client::connect(
        broker.port,
        &["energy2mqtt/bridge/state", "energy2mqtt/bridge/event"],
    )
    .await;
    wait_online(&mut c, &bridge).await;
    for payload in [r#"{"bogus":1}"#, "ON"] {
        c.publish("energy2mqtt/inverter/set", payload, false).await;
        let e = c
            .expect(Duration::from_secs(5), |m| {
                m.json()["type"] == "command_error"
            })
            .await
            .expect("command error")
            .json();
        assert_eq!(
            e["error"], "'inverter' is an inverter and accepts no set commands (only inverter/get)",
            "{payload}: {e}"
        );
    }
    assert_eq!(bridge.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_state_online_is_the_first_message_and_timers_log_in_words() {
    for kind in brokers() {
        let broker = Broker::start(kind);
        let sim = plug_sim().await;
        let mut c = Client::connect(
            broker.port,
            &[
                "energy2mqtt/bridge/state",
                "homeassistant/+/boiler/+/config",
                "homeassistant/+/energy2mqtt_bridge/+/config",
                "energy2mqtt/boiler",
            ],
        )
        .await;
        let mut bridge = Bridge::start(&broker.url(), &plug_config("boiler", sim.addr.port()), &[]);
        let first = c
            .expect(Duration::from_secs(15), |_| true)
            .await
            .unwrap_or_else(|| panic!("{kind:?}: nothing published; log:\n{}", bridge.log_text()));
        assert!(
            online(&first),
            "{kind:?}: the first message is {} = {:?}",
            first.topic,
            first.payload
        );
        c.expect(Duration::from_secs(10), |m| m.topic == "energy2mqtt/boiler")
            .await
            .expect("plug state");
        c.publish("energy2mqtt/boiler/set", r#"{"timer":5}"#, false)
            .await;
        let state = c
            .expect(Duration::from_secs(5), |m| {
                m.topic == "energy2mqtt/boiler" && m.json()["timer_off_at"].is_string()
            })
            .await
            .expect("the timer shows in the plug's state")
            .json();
        assert_eq!(state["timer"], 5, "{kind:?}: {state}");
        assert!(sim.is_on(), "{kind:?}: a timer switches the plug on");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let log = bridge.log_text();
        assert!(log.contains("plug timer started"), "{kind:?}: {log}");
        assert!(!log.contains("Start("), "{kind:?}: {log}");
        assert!(
            !log.contains("String("),
            "{kind:?}: a debug-formatted value in the log: {log}"
        );
        assert!(!log.contains("Collision on packet id"), "{kind:?}");
        assert_eq!(bridge.terminate(), Some(0));
    }
}
