//! Alert rules end to end: the bridge binary reads a simulated Deye whose
//! fault bits the test sets, and raises and clears an alert on a real
//! broker; thresholds are edited over MQTT and survive a restart.

mod support;

use std::time::Duration;

use support::*;

const SERIAL: u32 = DEYE_SERIAL;

fn config(port: u16) -> String {
    format!(
        r#"
[[inverter]]
id = "inverter"
name = "Deye"
host = "127.0.0.1"
port = {port}
serial = {SERIAL}
poll_interval = "1s"
timeout = "700ms"

[alerts]
startup_grace = "2s"

[alerts.rules.inverter_fault]
for = "1s"
"#
    )
}

fn alert_event(kind: &'static str, rule: &'static str) -> impl Fn(&Msg) -> bool {
    move |m: &Msg| {
        let v = m.json();
        m.topic == "energy2mqtt/alerts/event" && v["event_type"] == kind && v["rule"] == rule
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inverter_fault_raises_and_clears_and_thresholds_are_editable() {
    let broker = Broker::start(BrokerKind::Embedded);
    let sim = deye_sim().await;
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap().to_owned();
    let env = [("E2M_STORAGE__DIR", data_dir.as_str())];
    let mut client = Client::connect(
        broker.port,
        &[
            "energy2mqtt/alerts",
            "energy2mqtt/alerts/event",
            "energy2mqtt/bridge/event",
            "energy2mqtt/bridge/response/+",
            "energy2mqtt/bridge/state",
            "homeassistant/+/energy2mqtt_alerts/+/config",
        ],
    )
    .await;
    let mut bridge = Bridge::start(&broker.url(), &config(sim.addr.port()), &env);

    let configs = client.collect(Duration::from_secs(3)).await;
    for want in [
        "homeassistant/binary_sensor/energy2mqtt_alerts/inverter_fault/config",
        "homeassistant/binary_sensor/energy2mqtt_alerts/cell_delta/config",
        "homeassistant/event/energy2mqtt_alerts/event/config",
        "homeassistant/number/energy2mqtt_alerts/threshold_soc_low/config",
    ] {
        assert!(configs.iter().any(|m| m.topic == want), "{want} missing");
    }
    let problem = configs
        .iter()
        .find(|m| m.topic.ends_with("/inverter_fault/config"))
        .unwrap()
        .json();
    assert_eq!(problem["device_class"], "problem");
    assert_eq!(
        problem["value_template"],
        "{{ value_json.families.inverter_fault }}"
    );
    let initial = configs
        .iter()
        .rev()
        .find(|m| m.topic == "energy2mqtt/alerts")
        .expect("the alert list is published at start")
        .json();
    assert_eq!(initial["count"], 0);
    assert_eq!(initial["thresholds"]["soc_low"], 20.0);

    // F18 AC over-current (bit 17).
    sim.model.lock().unwrap().set_fault_bits(1 << 17);
    let (mut raised, mut list) = (None, None);
    while raised.is_none() || list.is_none() {
        let m = client
            .expect(Duration::from_secs(15), |m| {
                alert_event("raise", "inverter_fault")(m)
                    || (m.topic == "energy2mqtt/alerts" && m.json()["count"] == 1)
            })
            .await
            .unwrap_or_else(|| panic!("raised {raised:?}, listed {list:?}"));
        if m.topic == "energy2mqtt/alerts" {
            list = Some(m.json());
        } else {
            raised = Some(m.json());
        }
    }
    let (raised, list) = (raised.unwrap(), list.unwrap());
    assert_eq!(raised["level"], "error");
    assert_eq!(raised["device"], "inverter");
    assert!(
        raised["message"].as_str().unwrap().contains("F18"),
        "{raised}"
    );
    assert_eq!(list["families"]["inverter_fault"], true);
    assert_eq!(list["active"][0]["rule"], "inverter_fault");
    assert!(list["active"][0]["since"].is_string(), "{list}");

    sim.model.lock().unwrap().set_fault_bits(0);
    // The event and the list may arrive in either order.
    let (mut cleared, mut emptied) = (false, false);
    while !(cleared && emptied) {
        let m = client
            .expect(Duration::from_secs(60), |m| {
                alert_event("clear", "inverter_fault")(m)
                    || (m.topic == "energy2mqtt/alerts" && m.json()["count"] == 0)
            })
            .await
            .unwrap_or_else(|| panic!("cleared {cleared}, list emptied {emptied}"));
        if m.topic == "energy2mqtt/alerts" {
            emptied = true;
        } else {
            cleared = true;
        }
    }

    // Thresholds from Home Assistant: a bad one is refused, a good one is
    // applied and kept across a restart.
    let set = |p: &'static str| {
        let c = client.client.clone();
        async move {
            c.publish(
                "energy2mqtt/alerts/set",
                rumqttc::QoS::AtLeastOnce,
                false,
                p,
            )
            .await
            .unwrap()
        }
    };
    set(r#"{"soc_low": 150}"#).await;
    set(r#"{"soc_low": 25}"#).await;
    // The refusal (an event) and the new list (retained) may arrive in
    // either order: the outbox sends retained state ahead of events.
    let (mut refused, mut applied) = (None, false);
    while refused.is_none() || !applied {
        let m = client
            .expect(Duration::from_secs(5), |m| {
                (m.topic == "energy2mqtt/bridge/event" && m.json()["type"] == "command_error")
                    || (m.topic == "energy2mqtt/alerts"
                        && m.json()["thresholds"]["soc_low"] == 25.0)
            })
            .await
            .unwrap_or_else(|| {
                panic!("an impossible threshold is refused ({refused:?}) and the new one published ({applied})")
            });
        if m.topic == "energy2mqtt/alerts" {
            applied = true;
        } else {
            refused = Some(m.json());
        }
    }
    let e = refused.unwrap_or_default();
    assert!(e["error"].as_str().unwrap().contains("soc_low"), "{e}");
    assert_eq!(bridge.terminate(), Some(0));
    client.drain();
    let bridge = Bridge::start(&broker.url(), &config(sim.addr.port()), &env);
    // The first bridge's messages may still be in flight: only what comes
    // after the second one is online is its own.
    client
        .expect(Duration::from_secs(10), online)
        .await
        .unwrap_or_else(|| panic!("the second bridge online:\n{}", bridge.log_text()));
    client
        .expect(Duration::from_secs(10), |m| {
            m.topic == "energy2mqtt/alerts" && m.json()["thresholds"]["soc_low"] == 25.0
        })
        .await
        .expect("the threshold survives a restart");

    // The same through a bridge request, with a response.
    client
        .client
        .publish(
            "energy2mqtt/bridge/request/alert_thresholds",
            rumqttc::QoS::AtLeastOnce,
            false,
            r#"{"soc_low": 30, "transaction": "t1"}"#,
        )
        .await
        .unwrap();
    let r = client
        .expect(
            Duration::from_secs(5),
            topic_is("energy2mqtt/bridge/response/alert_thresholds"),
        )
        .await
        .expect("a response")
        .json();
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["transaction"], "t1");
    assert_eq!(r["data"]["soc_low"], 30.0);
    client
        .client
        .publish(
            "energy2mqtt/bridge/request/balancer",
            rumqttc::QoS::AtLeastOnce,
            false,
            r#"{"inverter": "inverter", "enabled": false}"#,
        )
        .await
        .unwrap();
    let r = client
        .expect(
            Duration::from_secs(5),
            topic_is("energy2mqtt/bridge/response/balancer"),
        )
        .await
        .expect("a response")
        .json();
    assert_eq!(r["status"], "error", "{r}");
    assert!(r["error"].as_str().unwrap().contains("no balancer"), "{r}");
}
