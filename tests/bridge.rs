//! The bridge binary end to end, against the embedded broker and (with
//! E2M_TEST_MOSQUITTO=1) Debian's Mosquitto, over real loopback sockets.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

const WAIT: Duration = Duration::from_secs(10);

const PLUG_CONFIG: &str = r#"
[tapo]
email = "user@example.com"
password = "tapo-s3cret-pw"

[[plug]]
id = "boiler"
host = "127.0.0.1"
port = 9
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_retained_discovery_state_and_info() {
    for kind in brokers() {
        let broker = Broker::start(kind);
        let bridge = Bridge::start(&broker.url(), PLUG_CONFIG, &[]);
        let mut watcher = Client::connect(broker.port, &["energy2mqtt/bridge/state"]).await;
        watcher.expect(WAIT, online).await.expect("bridge online");
        tokio::time::sleep(Duration::from_millis(300)).await;

        // A late subscriber, as Home Assistant after a restart, gets it all retained.
        let mut ha = Client::connect(broker.port, &["homeassistant/#", "energy2mqtt/#"]).await;
        let msgs = ha.collect(Duration::from_millis(800)).await;
        let find = |t: &str| msgs.iter().find(|m| m.topic == t).cloned();

        let state = find("energy2mqtt/bridge/state").expect("bridge/state");
        assert!(state.retain, "{kind:?}: bridge/state retained");
        assert_eq!(state.json(), json!({"state":"online"}));

        let version = find("homeassistant/sensor/energy2mqtt_bridge/version/config")
            .unwrap_or_else(|| panic!("{kind:?}: version discovery missing"));
        assert!(version.retain);
        let v = version.json();
        assert_eq!(v["unique_id"], "energy2mqtt_bridge_version");
        assert_eq!(v["state_topic"], "energy2mqtt/bridge");
        assert_eq!(v["entity_category"], "diagnostic");
        assert_eq!(v["origin"]["name"], "energy2mqtt");
        assert_eq!(v["availability"][0]["topic"], "energy2mqtt/bridge/state");
        let discovered = |node: &str| {
            msgs.iter()
                .filter(|m| {
                    m.topic.starts_with("homeassistant/")
                        && m.topic.contains(&format!("/{node}/"))
                        && m.retain
                })
                .count()
        };
        assert_eq!(
            discovered("energy2mqtt_bridge"),
            5,
            "{kind:?}: the bridge's five entities"
        );
        // The plug (unreachable, so its model is unknown): its switch, the
        // fields every plug has (metering follows once a P110 answers), a
        // refresh button, and its control entities (mode select, timer
        // number, cancel button, timer end; no balancer and no schedule).
        assert_eq!(
            discovered("boiler"),
            energy2mqtt::drivers::tapo::task::fields_without_metering().len() + 6,
            "{kind:?}: the plug's entities"
        );

        let bridge_state = find("energy2mqtt/bridge").expect("bridge device state");
        let s = bridge_state.json();
        assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(s["devices_configured"], 1);
        assert_eq!(s["devices_online"], 0);
        assert_eq!(s["mqtt_reconnects"], 0);
        assert_eq!(s["incoming_dropped"], 0);
        assert_eq!(s["outbox_dropped"], 0);
        assert!(s["last_seen"].as_str().is_some_and(|t| t.ends_with('Z')));

        let info = find("energy2mqtt/bridge/info").expect("bridge/info");
        assert!(info.retain);
        let i = info.json();
        assert_eq!(i["devices"][0]["id"], "boiler");
        assert_eq!(i["devices"][0]["kind"], "plug");
        assert_eq!(i["config"]["tapo"]["password"], "<redacted>");
        let raw = String::from_utf8_lossy(&info.payload);
        assert!(
            !raw.contains("tapo-s3cret-pw"),
            "secret leaked into bridge/info"
        );
        assert!(
            !bridge.log_text().contains("tapo-s3cret-pw"),
            "secret leaked into the log"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_will_marks_the_bridge_offline_after_kill_9() {
    for kind in brokers() {
        let broker = Broker::start(kind);
        let mut bridge = Bridge::start(&broker.url(), "", &[]);
        let mut watcher = Client::connect(broker.port, &["energy2mqtt/bridge/state"]).await;
        watcher.expect(WAIT, online).await.expect("online");
        bridge.kill9();
        let m = watcher
            .expect(WAIT, offline)
            .await
            .unwrap_or_else(|| panic!("{kind:?}: no Last Will after kill -9"));
        assert_eq!(m.json(), json!({"state":"offline"}));
        // and it stays retained for whoever comes later
        let mut late = Client::connect(broker.port, &["energy2mqtt/bridge/state"]).await;
        let m = late.expect(WAIT, offline).await.expect("retained offline");
        assert!(m.retain);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_publishes_offline_and_exits_cleanly() {
    for kind in brokers() {
        let broker = Broker::start(kind);
        let mut bridge = Bridge::start(&broker.url(), "", &[]);
        let mut watcher = Client::connect(broker.port, &["energy2mqtt/bridge/state"]).await;
        watcher.expect(WAIT, online).await.expect("online");
        assert_eq!(bridge.terminate(), Some(0), "{kind:?}: clean exit");
        watcher
            .expect(WAIT, offline)
            .await
            .expect("offline published on shutdown");
        assert!(bridge.log_text().contains("shutting down"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_and_republishes_after_a_broker_restart() {
    for kind in brokers() {
        let mut broker = Broker::start(kind);
        let mut bridge = Bridge::start(&broker.url(), "", &[]);
        let mut watcher = Client::connect(broker.port, &["energy2mqtt/bridge/state"]).await;
        watcher.expect(WAIT, online).await.expect("online");
        drop(watcher);

        broker.stop();
        tokio::time::sleep(Duration::from_secs(2)).await;
        broker.restart();
        let back = tokio::time::Instant::now();

        // The restarted broker kept nothing: all it has comes from the bridge.
        let mut ha = Client::connect(broker.port, &["homeassistant/#", "energy2mqtt/#"]).await;
        let mut seen = std::collections::HashMap::new();
        while back.elapsed() < Duration::from_secs(5) && seen.len() < 3 {
            if let Some(m) = ha.expect(Duration::from_millis(200), |_| true).await {
                if m.topic == "homeassistant/sensor/energy2mqtt_bridge/uptime/config"
                    || online(&m)
                    || m.topic == "energy2mqtt/bridge"
                {
                    seen.insert(m.topic.clone(), m);
                }
            }
        }
        let discovery = seen
            .get("homeassistant/sensor/energy2mqtt_bridge/uptime/config")
            .unwrap_or_else(|| panic!("{kind:?}: discovery not republished within 5 s"));
        assert!(discovery.payload.len() > 100);
        assert!(
            seen.contains_key("energy2mqtt/bridge/state"),
            "{kind:?}: online again"
        );
        let state = seen
            .get("energy2mqtt/bridge")
            .expect("bridge state republished");
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "{kind:?}: took {:?}",
            back.elapsed()
        );
        assert_eq!(state.json()["mqtt_reconnects"], 1);
        assert!(bridge.is_running());
        assert!(bridge.log_text().contains("MQTT connection lost"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_assistant_birth_republishes_states() {
    for kind in brokers() {
        let broker = Broker::start(kind);
        let _bridge = Bridge::start(&broker.url(), "", &[]);
        let mut ha = Client::connect(broker.port, &["energy2mqtt/#"]).await;
        ha.expect(WAIT, online).await.expect("online");
        ha.collect(Duration::from_millis(500)).await;

        ha.publish("homeassistant/status", "online", false).await;
        let got = ha.collect(Duration::from_secs(2)).await;
        // Delivered live (not from the retained store) because the bridge sent them again.
        assert!(
            got.iter().any(|m| online(m) && !m.retain),
            "{kind:?}: bridge/state not republished: {got:?}"
        );
        assert!(
            got.iter()
                .any(|m| m.topic == "energy2mqtt/bridge" && !m.retain)
        );
        // Discovery is retained and is not resent on every HA start.
        assert!(
            !got.iter()
                .any(|m| m.topic.starts_with("homeassistant/sensor"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_command_is_ignored_and_cleared() {
    for kind in brokers() {
        let broker = Broker::start(kind);
        let user = Client::connect(broker.port, &[]).await;
        user.publish("energy2mqtt/boiler/set", r#"{"state":"ON"}"#, true)
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;

        let bridge = Bridge::start(&broker.url(), PLUG_CONFIG, &[]);
        let mut events = Client::connect(broker.port, &["energy2mqtt/bridge/#"]).await;
        events.expect(WAIT, online).await.expect("online");
        let got = events.collect(Duration::from_secs(1)).await;
        assert!(
            !got.iter().any(|m| m.topic == "energy2mqtt/bridge/event"),
            "{kind:?}: a retained command was acted upon: {got:?}"
        );
        let mut late = Client::connect(broker.port, &["energy2mqtt/boiler/set"]).await;
        let replay = late.collect(Duration::from_millis(700)).await;
        assert!(
            replay.iter().all(|m| m.payload.is_empty()),
            "{kind:?}: retained command not cleared: {replay:?}"
        );
        assert!(bridge.log_text().contains("ignoring a retained command"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_get_errors_and_the_bridge_keeps_running() {
    for kind in brokers() {
        let broker = Broker::start(kind);
        let mut bridge = Bridge::start(&broker.url(), PLUG_CONFIG, &[]);
        let mut c = Client::connect(
            broker.port,
            &[
                "energy2mqtt/bridge/event",
                "energy2mqtt/bridge/response/#",
                "energy2mqtt/bridge/state",
            ],
        )
        .await;
        c.expect(WAIT, online).await.expect("online");

        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("energy2mqtt/boiler/set", b"banana".to_vec(), "neither JSON"),
            (
                "energy2mqtt/boiler/set",
                b"{\"state\":".to_vec(),
                "neither JSON",
            ),
            (
                "energy2mqtt/ghost/set",
                br#"{"state":"ON"}"#.to_vec(),
                "unknown device 'ghost'",
            ),
            (
                "energy2mqtt/boiler/set",
                br#"{"colour":"red"}"#.to_vec(),
                "unknown field 'colour'",
            ),
            (
                "energy2mqtt/boiler/set",
                br#"{"state":"MAYBE"}"#.to_vec(),
                "invalid value",
            ),
            (
                "energy2mqtt/boiler/set",
                vec![b'x'; 1024 * 1024],
                "too large",
            ),
            (
                "energy2mqtt/ghost/get",
                b"{}".to_vec(),
                "unknown device 'ghost'",
            ),
        ];
        for (topic, payload, want) in cases {
            c.publish(topic, payload, false).await;
            let ev = c
                .expect(WAIT, |m| m.topic == "energy2mqtt/bridge/event")
                .await
                .unwrap_or_else(|| panic!("{kind:?}: no error event for {topic} ({want})"));
            let v = ev.json();
            assert_eq!(v["type"], "command_error");
            assert_eq!(v["topic"], topic);
            assert!(
                v["error"].as_str().is_some_and(|e| e.contains(want)),
                "{kind:?}: {v} should say {want}"
            );
        }

        c.publish(
            "energy2mqtt/bridge/request/reboot_the_moon",
            r#"{"transaction":"t1"}"#,
            false,
        )
        .await;
        let r = c
            .expect(
                WAIT,
                topic_is("energy2mqtt/bridge/response/reboot_the_moon"),
            )
            .await
            .expect("error response");
        let v = r.json();
        assert_eq!(v["status"], "error");
        assert_eq!(v["transaction"], "t1");
        assert!(
            v["error"]
                .as_str()
                .unwrap_or_default()
                .contains("unknown request")
        );

        c.publish("energy2mqtt/bridge/request/health_check", "not json", false)
            .await;
        let r = c
            .expect(WAIT, topic_is("energy2mqtt/bridge/response/health_check"))
            .await
            .expect("error response for bad JSON");
        assert_eq!(r.json()["status"], "error");

        // Still alive and answering.
        c.publish(
            "energy2mqtt/bridge/request/health_check",
            r#"{"transaction":42}"#,
            false,
        )
        .await;
        let r = c
            .expect(WAIT, topic_is("energy2mqtt/bridge/response/health_check"))
            .await
            .expect("health_check answered");
        assert_eq!(
            r.json(),
            json!({"data":{"healthy":true},"status":"ok","transaction":42})
        );
        c.publish("energy2mqtt/bridge/request/info", "", false)
            .await;
        let r = c
            .expect(WAIT, topic_is("energy2mqtt/bridge/response/info"))
            .await
            .expect("info answered");
        assert_eq!(r.json()["data"]["version"], env!("CARGO_PKG_VERSION"));
        assert!(bridge.is_running());
        let log = bridge.log_text();
        assert!(
            log.contains("command rejected"),
            "log line for rejected commands"
        );
        assert!(log.contains("unknown device"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_discovery_is_cleared_and_foreign_configs_are_kept() {
    for kind in brokers() {
        let broker = Broker::start(kind);
        let user = Client::connect(broker.port, &[]).await;
        let ours_gone = json!({
            "name": "Power",
            "unique_id": "energy2mqtt_oldplug_power",
            "state_topic": "energy2mqtt/oldplug",
            "origin": {"name": "energy2mqtt", "sw_version": "0.0.1"},
            "device": {"identifiers": ["energy2mqtt_oldplug"], "name": "Old plug",
                       "via_device": "energy2mqtt_bridge_energy2mqtt"},
            "availability": [{"topic": "energy2mqtt/bridge/state"}]
        });
        let other_bridge = json!({
            "unique_id": "x",
            "origin": {"name": "energy2mqtt"},
            "device": {"identifiers": ["x"], "name": "x", "via_device": "energy2mqtt_bridge_upstairs"}
        });
        let foreign = json!({"unique_id": "z", "origin": {"name": "Zigbee2MQTT"},
                             "device": {"identifiers": ["z"], "name": "z"}});
        user.publish(
            "homeassistant/sensor/oldplug/power/config",
            ours_gone.to_string(),
            true,
        )
        .await;
        user.publish(
            "homeassistant/sensor/upstairs/p/config",
            other_bridge.to_string(),
            true,
        )
        .await;
        user.publish(
            "homeassistant/sensor/zigbee/temp/config",
            foreign.to_string(),
            true,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;

        let bridge = Bridge::start(&broker.url(), "", &[]);
        let mut w = Client::connect(broker.port, &["energy2mqtt/bridge/state"]).await;
        w.expect(WAIT, online).await.expect("online");
        tokio::time::sleep(Duration::from_millis(2500)).await;

        let mut ha = Client::connect(broker.port, &["homeassistant/#"]).await;
        let msgs = ha.collect(Duration::from_millis(800)).await;
        let topics: Vec<&str> = msgs
            .iter()
            .filter(|m| !m.payload.is_empty())
            .map(|m| m.topic.as_str())
            .collect();
        assert!(
            !topics.contains(&"homeassistant/sensor/oldplug/power/config"),
            "{kind:?}: ghost kept: {topics:?}"
        );
        assert!(
            topics.contains(&"homeassistant/sensor/zigbee/temp/config"),
            "{kind:?}: foreign config removed"
        );
        assert!(
            topics.contains(&"homeassistant/sensor/upstairs/p/config"),
            "{kind:?}: other bridge's config removed"
        );
        assert!(topics.contains(&"homeassistant/sensor/energy2mqtt_bridge/version/config"));
        assert!(bridge.log_text().contains("removing discovery config"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_the_embedded_broker_and_the_bridge() {
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    // With the interop venv, the notification sidecar rides along: the
    // fake push service + ntfy server, one browser subscription in the
    // demo's storage dir, and a [push] section in the demo's config.
    let fake = interop_python("demo push end to end", FAKE_PUSH_PIP).map(|py| FakePush::start(&py));
    let mut demo_toml = demo_config_on_free_ports();
    if let Some(fake) = &fake {
        std::fs::write(
            data.path().join("push-subscriptions.json"),
            serde_json::to_vec(&json!([fake.subscriptions["ok"]])).unwrap(),
        )
        .unwrap();
        // The drift alert (cell_delta_error) is an error; the default
        // min_level, warning, admits it on both channels.
        demo_toml.push_str(&format!(
            r#"

[push]
listen = "127.0.0.1:{listen}"
vapid_subject = "mailto:demo@example.com"

[[push.ntfy]]
url = "http://127.0.0.1:{fake}/ntfy"
topic = "e2m-demo"
"#,
            listen = free_port(),
            fake = fake.port,
        ));
    }
    let config = write_file(data.path(), "demo.toml", &demo_toml);
    let child = std::process::Command::new(BIN)
        .arg("demo")
        .arg("--config")
        .arg(&config)
        .env_clear()
        .env("E2M_STORAGE__DIR", data.path())
        .env("E2M_BROKER__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(data.path().join("demo.log")).expect("log file"))
        .spawn()
        .expect("start demo");
    /// Kills the demo however the test ends: a leaked demo would keep
    /// running beside the next test.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = KillOnDrop(child);
    let log = || std::fs::read_to_string(data.path().join("demo.log")).unwrap_or_default();
    let mut c = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            // Narrow filters: the demo retains hundreds of messages under
            // `homeassistant/#`, and this test needs only a few.
            c = Some(
                Client::connect(
                    port,
                    &[
                        "energy2mqtt/bridge/state",
                        "energy2mqtt/bridge/event",
                        "energy2mqtt/alerts/event",
                        "homeassistant/sensor/energy2mqtt_bridge/version/config",
                    ],
                )
                .await,
            );
            break;
        }
    }
    let mut c = c.unwrap_or_else(|| panic!("the demo's broker listens; log:\n{}", log()));
    // The sidecar reads the demo's file with the demo's environment, so it
    // finds the embedded broker and the storage dir the same way.
    let push_log = data.path().join("push.log");
    let sidecar = fake.as_ref().map(|_| {
        KillOnDrop(
            std::process::Command::new(PUSH_BIN)
                .arg("--config")
                .arg(&config)
                .env_clear()
                .env("E2M_STORAGE__DIR", data.path())
                .env("E2M_BROKER__LISTEN", format!("127.0.0.1:{port}"))
                .env("E2M_PUSH__LISTEN", format!("127.0.0.1:{}", free_port()))
                .env("E2M_LOG__LEVEL", "debug")
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(&push_log).expect("push log file"))
                .spawn()
                .expect("start energy2mqtt-push"),
        )
    });
    let push_log = || std::fs::read_to_string(&push_log).unwrap_or_default();
    // Generous: in a loaded test run the demo's simulators and the bridge
    // start on two busy cores.
    let (mut online_seen, mut version) = (false, false);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !(online_seen && version) && std::time::Instant::now() < deadline {
        let Some(m) = c
            .expect(Duration::from_secs(1), |m| {
                online(m) || m.topic == "homeassistant/sensor/energy2mqtt_bridge/version/config"
            })
            .await
        else {
            continue;
        };
        if online(&m) {
            online_seen = true;
        } else {
            version = true;
        }
    }
    assert!(online_seen, "bridge online in the demo; log:\n{}", log());
    assert!(version, "the bridge's discovery in the demo");
    if sidecar.is_some() {
        // Long before the drift alert (30 s + 15 s rise + 60 s for_secs).
        let mut w = Client::connect(port, &["energy2mqtt/push/state"]).await;
        let up = w.expect(WAIT * 2, |m| m.json()["state"] == "online").await;
        assert!(
            up.is_some(),
            "energy2mqtt-push online; log:\n{}",
            push_log()
        );
    }

    // The dinner-time scenario: within two minutes a plug is shed, then
    // restored; a cell drift raises and clears an imbalance alert.
    let (mut shed, mut restored, mut raised, mut cleared) = (None, None, false, false);
    // The drift alert's events as the bridge published them, for the push
    // assertions.
    let (mut raise_event, mut clear_event) = (None, None);
    let started = std::time::Instant::now();
    while !(shed.is_some() && restored.is_some() && raised && cleared)
        && started.elapsed() < Duration::from_secs(240)
    {
        let Some(m) = c
            .expect(Duration::from_secs(1), |m| {
                m.topic == "energy2mqtt/bridge/event" || m.topic == "energy2mqtt/alerts/event"
            })
            .await
        else {
            continue;
        };
        let v = m.json();
        if v["type"] == "balancer_action" && v["action"] == "shed" && shed.is_none() {
            shed = Some((started.elapsed(), v.clone()));
        }
        if v["type"] == "balancer_action" && v["action"] == "restore" && shed.is_some() {
            restored = Some(started.elapsed());
        }
        if v["rule"] == "cell_delta_error" && v["event_type"] == "raise" {
            raised = true;
            raise_event.get_or_insert(v.clone());
        }
        if v["rule"] == "cell_delta_error" && v["event_type"] == "clear" && raised {
            cleared = true;
            clear_event.get_or_insert(v.clone());
        }
    }
    // The sidecar got the clear from the demo's broker when we did: give
    // it the moment it needs to deliver before the broker goes away.
    let pushed = match (&fake, &clear_event) {
        (Some(fake), Some(clear)) => Some(wait_for_drift_pushes(fake, clear).await),
        _ => None,
    };
    drop(child);
    let (at, event) = shed.unwrap_or_else(|| panic!("the demo sheds a plug; log:\n{}", log()));
    assert!(at < Duration::from_secs(120), "shed after {at:?}");
    assert_eq!(event["plug"], "boiler", "{event}");
    assert_eq!(event["reason"], "overload", "{event}");
    assert!(restored.is_some(), "the demo restores the plug");
    assert!(
        raised && cleared,
        "imbalance alert raised {raised}, cleared {cleared}"
    );
    if let Some(fake) = &fake {
        let (raise, clear) = (raise_event.unwrap(), clear_event.unwrap());
        let messages = pushed.unwrap_or_default();
        check_drift_pushes(&messages, &raise, &clear, fake.port, &push_log());
    } else {
        eprintln!("demo without energy2mqtt-push: no interop venv");
    }
}

const DRIFT_TAG: &str = "cell_delta_error-battery1";

/// The fake's messages once it holds the drift alert's clear on ntfy,
/// the last of its four deliveries (one in-order queue: Web Push, then
/// ntfy), or after 20 s, for the assertions to explain.
async fn wait_for_drift_pushes(
    fake: &FakePush,
    clear: &serde_json::Value,
) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = fake.messages();
        let done = m
            .iter()
            .any(|x| x["channel"] == "ntfy" && x["body"] == clear["message"]);
        if done || std::time::Instant::now() > deadline {
            // A moment more: a duplicate would show up now.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return fake.messages();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The decrypted Web Push notifications tagged as the drift alert, with
/// the fake's record.
fn drift_webpush(m: &[serde_json::Value]) -> Vec<(serde_json::Value, serde_json::Value)> {
    m.iter()
        .filter(|x| x["channel"] == "webpush" && x["status"] == 201)
        .filter_map(|x| {
            let shown: serde_json::Value = serde_json::from_str(x["plaintext"].as_str()?).ok()?;
            (shown["tag"] == DRIFT_TAG).then(|| (shown, x.clone()))
        })
        .collect()
}

/// The drift alert's raise, then its clear, each exactly once on Web Push
/// (decrypted by http_ece, VAPID verified) and on ntfy.
fn check_drift_pushes(
    m: &[serde_json::Value],
    raise: &serde_json::Value,
    clear: &serde_json::Value,
    fake_port: u16,
    log: &str,
) {
    let context = || format!("fake push service saw:\n{m:#?}\nsidecar log:\n{log}");
    assert_eq!(raise["level"], "error", "{raise}");
    assert_eq!(raise["device"], "battery1", "{raise}");
    assert_eq!(raise["device_name"], "Battery 1 (simulated)", "{raise}");
    let (raise_msg, clear_msg) = (raise["message"].as_str(), clear["message"].as_str());
    assert!(raise_msg.is_some_and(|s| !s.is_empty()), "{raise}");
    assert!(clear_msg.is_some_and(|s| !s.is_empty()), "{clear}");
    assert_ne!(raise_msg, clear_msg);
    // Every push was signed with a key the fake could verify.
    assert!(m.iter().all(|x| x["status"] != 401), "{}", context());

    let webpush = drift_webpush(m);
    assert_eq!(webpush.len(), 2, "one raise and one clear; {}", context());
    let ((r, r_rec), (c, c_rec)) = (&webpush[0], &webpush[1]);
    assert_eq!(
        *r,
        json!({"kind": "raise", "title": "Error: Battery 1 (simulated)",
               "body": raise["message"], "level": "error", "tag": DRIFT_TAG,
               "time": raise["at"]}),
        "{}",
        context()
    );
    assert_eq!(
        *c,
        json!({"kind": "clear", "title": "Cleared: Battery 1 (simulated)",
               "body": clear["message"], "level": "error", "tag": DRIFT_TAG,
               "time": clear["at"]}),
        "{}",
        context()
    );
    for rec in [r_rec, c_rec] {
        assert_eq!(rec["sub"], "ok");
        assert_eq!(rec["urgency"], "normal");
        assert_eq!(rec["topic"], DRIFT_TAG);
        assert_eq!(rec["encoding"], "aes128gcm");
        assert_eq!(
            rec["claims"]["aud"],
            format!("http://127.0.0.1:{fake_port}")
        );
        assert_eq!(rec["claims"]["sub"], "mailto:demo@example.com");
    }
    assert!(
        c_rec["at"].as_f64() > r_rec["at"].as_f64(),
        "clear after raise; {}",
        context()
    );

    let ntfy = |body: Option<&str>| -> Vec<&serde_json::Value> {
        m.iter()
            .filter(|x| x["channel"] == "ntfy" && x["body"].as_str() == body)
            .collect()
    };
    let (nr, nc) = (ntfy(raise_msg), ntfy(clear_msg));
    assert_eq!(
        (nr.len(), nc.len()),
        (1, 1),
        "ntfy raise, clear; {}",
        context()
    );
    for (x, title, priority, tags) in [
        (
            nr[0],
            "Error: Battery 1 (simulated)",
            "4",
            "warning,energy2mqtt",
        ),
        (
            nc[0],
            "Cleared: Battery 1 (simulated)",
            "2",
            "white_check_mark,energy2mqtt",
        ),
    ] {
        assert_eq!(x["method"], "POST");
        assert_eq!(x["path"], "/ntfy/e2m-demo");
        assert_eq!(x["headers"]["title"], title, "{x}");
        assert_eq!(x["headers"]["priority"], priority, "{x}");
        assert_eq!(x["headers"]["tags"], tags, "{x}");
    }
    assert!(nc[0]["at"].as_f64() > nr[0]["at"].as_f64(), "{}", context());
    let notified: Vec<String> = m
        .iter()
        .filter_map(|x| match x["channel"].as_str()? {
            "ntfy" => Some(format!("ntfy {}", x["headers"]["title"])),
            _ => Some(format!("webpush {}", x["plaintext"].as_str()?)),
        })
        .collect();
    eprintln!(
        "the demo's notifications, Web Push (decrypted) and ntfy:\n  {}",
        notified.join("\n  ")
    );
}

#[test]
fn an_open_embedded_broker_without_credentials_is_refused() {
    let out = std::process::Command::new(BIN)
        .arg("demo")
        .env_clear()
        .env("E2M_BROKER__LISTEN", format!("0.0.0.0:{}", free_port()))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`broker.username`"), "{err}");
    assert!(err.contains("reachable from the network"), "{err}");
}
