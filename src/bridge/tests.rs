//! The middle of the bridge in process: the router, the control plane and
//! what the bridge publishes, driven through [`Bridge`] as the MQTT task
//! drives it, with no broker and no subprocess. The MQTT client is a real
//! `rumqttc` client whose event loop is never polled (its requests stay in
//! its channel); what the bridge publishes is read from the outbox, and
//! what it sends to a device from that device's command inbox.

use std::time::Duration;

use rumqttc::{AsyncClient, EventLoop, MqttOptions};
use serde_json::{Value, json};

use super::Bridge;
use crate::config::Config;
use crate::drivers::{DriverHandle, inbox};
use crate::model::{DeviceCommand, SwitchState};
use crate::mqtt::Topics;
use crate::mqtt::connection::Incoming;
use crate::mqtt::outbox::{Message, Outbox};

struct Harness {
    bridge: Bridge,
    plug: inbox::CommandInbox,
    _events: EventLoop,
    _dir: tempfile::TempDir,
}

fn harness() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config: Config = toml::from_str(&format!(
        r#"
        [storage]
        dir = "{}"
        [tapo]
        email = "a@b.c"
        password = "x"
        [[inverter]]
        id = "inv"
        host = "127.0.0.1"
        serial = 1
        [[plug]]
        id = "boiler"
        host = "127.0.0.1"
        inverter = "inv"
        "#,
        dir.path().display()
    ))
    .expect("config");
    config.homeassistant.cleanup_window = Duration::from_millis(10);
    let topics = Topics::from_config(&config);
    let (client, events) = AsyncClient::new(MqttOptions::new("test", "127.0.0.1", 1883), 64);
    let mut bridge = Bridge::new(
        config,
        topics,
        std::sync::Arc::new(Outbox::default()),
        client,
    );
    let (tx, rx) = inbox::channel();
    bridge.drivers.insert(
        "boiler".into(),
        DriverHandle {
            commands: std::sync::Arc::new(tx),
            task: None,
        },
    );
    // The claim is the loop's business (app.rs); here it is settled.
    bridge.claim = None;
    Harness {
        bridge,
        plug: rx,
        _events: events,
        _dir: dir,
    }
}

fn incoming(topic: &str, payload: &str, retain: bool) -> Incoming {
    Incoming {
        topic: topic.to_owned(),
        payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
        retain,
        oversized: None,
    }
}

fn published(h: &Harness) -> Vec<Message> {
    h.bridge.outbox.take()
}

fn on(msgs: &[Message], topic: &str) -> Vec<Value> {
    msgs.iter()
        .filter(|m| m.topic == topic)
        .map(|m| serde_json::from_slice(&m.payload).unwrap_or(Value::Null))
        .collect()
}

/// The next command the plug's task would receive, if any is waiting.
async fn next_command(inbox: &mut inbox::CommandInbox) -> Option<DeviceCommand> {
    tokio::time::timeout(Duration::from_millis(20), inbox.recv())
        .await
        .ok()
        .flatten()
}

#[tokio::test]
async fn a_switch_reaches_the_plug_and_a_bad_set_is_one_command_error() {
    let mut h = harness();
    let topics = h.bridge.topics.clone();
    published(&h);

    h.bridge
        .on_incoming(incoming(&topics.set("boiler"), r#"{"state":"ON"}"#, false));
    assert_eq!(
        next_command(&mut h.plug).await,
        Some(DeviceCommand::Switch(SwitchState::On))
    );
    assert!(on(&published(&h), &topics.bridge_event()).is_empty());

    h.bridge.on_incoming(incoming(
        &topics.set("boiler"),
        r#"{"state":"MAYBE"}"#,
        false,
    ));
    assert_eq!(next_command(&mut h.plug).await, None);
    let events = on(&published(&h), &topics.bridge_event());
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "command_error");
    assert_eq!(events[0]["device"], "boiler");
    assert_eq!(events[0]["topic"], topics.set("boiler"));
    assert!(events[0]["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(h.bridge.commands_rejected, 1);
    h.bridge.publish_bridge_state();
    let state = on(&published(&h), &topics.bridge_device_state());
    assert_eq!(state[0]["commands_rejected"], 1);
}

#[tokio::test]
async fn a_retained_command_is_cleared_and_not_carried_out() {
    let mut h = harness();
    let topics = h.bridge.topics.clone();
    published(&h);
    h.bridge
        .on_incoming(incoming(&topics.set("boiler"), r#"{"state":"OFF"}"#, true));
    assert_eq!(next_command(&mut h.plug).await, None);
    let msgs = published(&h);
    let cleared: Vec<&Message> = msgs
        .iter()
        .filter(|m| m.topic == topics.set("boiler"))
        .collect();
    assert_eq!(cleared.len(), 1);
    assert!(cleared[0].retain && cleared[0].payload.is_empty());
}

#[tokio::test]
async fn commands_to_unknown_devices_and_inverters_are_refused_in_words() {
    let mut h = harness();
    let topics = h.bridge.topics.clone();
    published(&h);
    h.bridge
        .on_incoming(incoming(&topics.set("inv"), r#"{"state":"ON"}"#, false));
    h.bridge
        .on_incoming(incoming(&topics.set("nobody"), r#"{"state":"ON"}"#, false));
    let events = on(&published(&h), &topics.bridge_event());
    let errors: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["device"].as_str().unwrap_or(""),
                e["error"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(errors.len(), 2, "{events:?}");
    assert_eq!(errors[0].0, "inv");
    assert!(errors[0].1.contains("inverter"), "{}", errors[0].1);
    assert_eq!(errors[1].0, "nobody");
    assert!(
        errors[1].1.contains("unknown device") && errors[1].1.contains("boiler, inv"),
        "{}",
        errors[1].1
    );
    assert_eq!(h.bridge.commands_rejected, 2);
    assert_eq!(next_command(&mut h.plug).await, None);
}

/// A switch that a new control state justifies goes out only once that
/// state is on disk, and the bridge's task does not wait for the disk
/// meanwhile (it wrote `control.json` inline before such switches).
#[tokio::test]
async fn a_locking_switch_waits_for_its_state_on_disk_and_the_bridge_does_not() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut h = harness();
    let topics = h.bridge.topics.clone();
    published(&h);
    // A write in progress: the writer's lock is held for 300 ms.
    let writer = h.bridge.control_writer();
    let released = std::sync::Arc::new(AtomicBool::new(false));
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let holder = {
        let writer = writer.clone();
        let released = released.clone();
        std::thread::spawn(move || {
            let _busy = writer.writing.lock().unwrap_or_else(|e| e.into_inner());
            locked_tx.send(()).expect("test waits");
            std::thread::sleep(Duration::from_millis(300));
            released.store(true, Ordering::SeqCst);
        })
    };
    locked_rx.recv().expect("lock taken");

    // `mode on` locks the plug on: a switch, and a state to keep.
    h.bridge
        .on_incoming(incoming(&topics.set("boiler"), r#"{"mode":"on"}"#, false));
    assert!(
        !released.load(Ordering::SeqCst),
        "the bridge waited for the write to finish"
    );
    assert_eq!(
        next_command(&mut h.plug).await,
        None,
        "not before the write"
    );

    let command = tokio::time::timeout(Duration::from_secs(10), h.plug.recv())
        .await
        .ok()
        .flatten();
    assert_eq!(command, Some(DeviceCommand::Switch(SwitchState::On)));
    assert!(released.load(Ordering::SeqCst));
    let saved: Value = serde_json::from_slice(
        &std::fs::read(h._dir.path().join("control.json")).expect("control.json written"),
    )
    .expect("JSON");
    assert_eq!(saved["modes"]["boiler"], "on", "{saved}");
    holder.join().expect("holder");
}

#[tokio::test]
async fn bridge_requests_are_answered_with_their_transaction() {
    let h = &mut harness();
    let topics = h.bridge.topics.clone();
    published(h);
    h.bridge.on_incoming(incoming(
        &topics.bridge_request("health_check"),
        r#"{"transaction":"t1"}"#,
        false,
    ));
    let answers = on(&published(h), &topics.bridge_response("health_check"));
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0]["status"], "ok");
    assert_eq!(answers[0]["data"], json!({"healthy": true}));
    assert_eq!(answers[0]["transaction"], "t1");

    // A balancer change through the request API: validated, applied by
    // control, answered with the balancer's state and published.
    h.bridge.on_incoming(incoming(
        &topics.bridge_request("balancer"),
        r#"{"inverter":"inv","enabled":false,"transaction":7}"#,
        false,
    ));
    let msgs = published(h);
    let answers = on(&msgs, &topics.bridge_response("balancer"));
    assert_eq!(answers[0]["status"], "ok", "{answers:?}");
    assert_eq!(answers[0]["data"]["enabled"], false);
    assert_eq!(answers[0]["transaction"], 7);
    let status = on(&msgs, &topics.balancer("inv"));
    assert_eq!(
        status.last().map(|s| s["enabled"].clone()),
        Some(json!(false))
    );

    h.bridge.on_incoming(incoming(
        &topics.bridge_request("balancer"),
        r#"{"inverter":"nope","enabled":true}"#,
        false,
    ));
    let answers = on(&published(h), &topics.bridge_response("balancer"));
    assert_eq!(answers[0]["status"], "error");
    assert!(
        answers[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("nope"))
    );
}

#[tokio::test]
async fn the_clean_up_removes_configs_the_configuration_no_longer_produces() {
    let mut h = harness();
    let topics = h.bridge.topics.clone();
    h.bridge.on_session(1).await;
    published(&h);
    // One of ours that this configuration still produces, one of a plug
    // that is gone.
    let kept = h.bridge.discovery[0].clone();
    let gone = topics.discovery_config("switch", "energy2mqtt_oldplug", "state");
    // Ours: a config of this base topic (its payload names our topics).
    let payload = kept.payload.to_string();
    for t in [&kept.topic, &gone] {
        h.bridge.on_incoming(incoming(t, &payload, true));
    }
    // Someone else's config is never touched.
    h.bridge.on_incoming(incoming(
        &topics.discovery_config("switch", "zigbee2mqtt_lamp", "state"),
        r#"{"state_topic":"zigbee2mqtt/lamp"}"#,
        true,
    ));
    h.bridge.finish_cleanup().await;
    let msgs = published(&h);
    let cleared: Vec<&str> = msgs
        .iter()
        .filter(|m| m.payload.is_empty())
        .map(|m| m.topic.as_str())
        .collect();
    assert_eq!(cleared, [gone.as_str()]);
}
