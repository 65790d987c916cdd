//! `energy2mqtt-push` end to end on loopback: a real broker, the sidecar
//! binary, and a fake push service + ntfy server in Python
//! (tests/interop/fake_push.py) that decrypts with `http_ece` and verifies
//! the VAPID JWT with `cryptography` — implementations independent of ours.
//! Without the interop venv a plain `cargo test` says so and passes; under
//! `CI=true` a missing venv fails.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Broker, BrokerKind, PUSH_BIN, Reaped, wait_until};

const FAKE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/fake_push.py");

fn publish(port: u16, topic: &str, payload: &Value) {
    let mut opts =
        rumqttc::MqttOptions::new(format!("pub-{}", std::process::id()), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = rumqttc::Client::new(opts, 10);
    client
        .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.to_string())
        .expect("publish");
    for ev in conn.iter() {
        match ev {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => break,
            Ok(_) => {}
            Err(e) => panic!("publish to the broker: {e}"),
        }
    }
    let _ = client.disconnect();
}

/// Waits until the sidecar announced itself on `<base>/push/state`.
fn wait_online(port: u16, base: &str) {
    let mut opts = rumqttc::MqttOptions::new("watch-push", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = rumqttc::Client::new(opts, 10);
    client
        .subscribe(format!("{base}/push/state"), rumqttc::QoS::AtLeastOnce)
        .expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match conn.recv_timeout(Duration::from_millis(200)) {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))))
                if p.payload.as_ref() == br#"{"state":"online"}"# =>
            {
                let _ = client.disconnect();
                return;
            }
            _ => {}
        }
    }
    panic!("the sidecar never published {base}/push/state online");
}

fn write_config(dir: &Path, broker: u16, fake: u16, pem: &Path) -> PathBuf {
    let cfg = dir.join("e2m.toml");
    let listen = support::free_port();
    std::fs::write(
        &cfg,
        format!(
            r#"
[mqtt]
url = "mqtt://127.0.0.1:{broker}"
client_id = "e2m-push-test"
base_topic = "e2mtest"

[storage]
dir = "{data}"

[push]
listen = "127.0.0.1:{listen}"
vapid_private_key_file = "{pem}"
vapid_subject = "mailto:test@example.com"

[[push.ntfy]]
url = "http://127.0.0.1:{fake}/ntfy"
topic = "e2m-alerts"
token = "tk_test"
"#,
            data = dir.join("data").display(),
            pem = pem.display(),
        ),
    )
    .expect("write config");
    cfg
}

#[test]
fn alerts_reach_an_independent_push_service_and_ntfy() {
    let python = support::interop_python("push interop test", support::FAKE_PUSH_PIP);
    let Some(python) = python else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");

    // The original app's key format: SEC1 PEM, made by `cryptography`.
    let pem = dir.path().join("vapid-sec1.pem");
    let out = Command::new(&python)
        .args([FAKE, "keygen"])
        .arg(&pem)
        .output()
        .expect("keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected_key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        std::fs::read_to_string(&pem)
            .unwrap()
            .contains("BEGIN EC PRIVATE KEY")
    );

    let fake = support::FakePush::start(&python);
    let fake_port = fake.port;
    let subs = &fake.subscriptions;

    let broker = Broker::start(BrokerKind::Embedded);
    let cfg = write_config(dir.path(), broker.port, fake_port, &pem);
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("push-subscriptions.json"),
        serde_json::to_vec(&json!([
            subs["ok"],
            subs["gone"],
            subs["busy"],
            subs["small"]
        ]))
        .unwrap(),
    )
    .unwrap();

    // The SEC1 key gives the applicationServerKey cryptography computed.
    let out = Command::new(PUSH_BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("public-key")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected_key);

    let sidecar = Command::new(PUSH_BIN)
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start energy2mqtt-push");
    let _sidecar = Reaped(sidecar);
    wait_online(broker.port, "e2mtest");

    let raise = json!({"kind": "raise", "event_type": "raise", "rule": "soc_critical",
        "family": "soc", "level": "critical", "device": "battery1", "device_name": "Battery 1",
        "value": 8.0, "threshold": 10.0, "message": "Battery 1: SOC 8 % is below 10 %",
        "at": "2026-11-21T18:04:00Z", "repeat": false, "notify": true});
    let clear = json!({"kind": "clear", "event_type": "clear", "rule": "soc_critical",
        "family": "soc", "level": "critical", "device": "battery1", "device_name": "Battery 1",
        "value": 13.0, "threshold": 12.0,
        "message": "Battery 1: SOC 13 % is back at or above 12 %",
        "at": "2026-11-21T19:04:00Z", "repeat": false, "notify": true});
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    publish(broker.port, "e2mtest/alerts/event", &raise);
    let delivered = |m: &Vec<Value>, sub: &str| {
        m.iter()
            .filter(|x| x["sub"] == sub && x["status"] == 201)
            .count()
    };
    wait_until("the raise on ok and busy", Duration::from_secs(20), || {
        let m = fake.messages();
        delivered(&m, "ok") == 1 && delivered(&m, "busy") == 1
    });
    // The clear comes after the raise (same tag: it replaces it).
    publish(broker.port, "e2mtest/alerts/event", &clear);
    wait_until("the clear", Duration::from_secs(20), || {
        let m = fake.messages();
        delivered(&m, "ok") == 2 && m.iter().filter(|x| x["channel"] == "ntfy").count() == 2
    });

    // A long alert: whole to `ok`; `small` answers 413 and gets it again,
    // shorter (cut body, same title).
    let mut long = raise.clone();
    long["rule"] = json!("cell_drift");
    long["message"] = json!("x".repeat(3000));
    publish(broker.port, "e2mtest/alerts/event", &long);
    wait_until("the long alert", Duration::from_secs(20), || {
        let m = fake.messages();
        delivered(&m, "ok") == 3 && delivered(&m, "small") == 3
    });
    let m = fake.messages();
    let small: Vec<&Value> = m.iter().filter(|x| x["sub"] == "small").collect();
    assert_eq!(
        small
            .iter()
            .map(|x| x["status"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [201, 201, 413, 201]
    );
    let cut: Value = serde_json::from_str(small[3]["plaintext"].as_str().unwrap()).unwrap();
    assert_eq!(cut["title"], "Critical: Battery 1");
    assert_eq!(cut["tag"], "cell_drift-battery1");
    let body = cut["body"].as_str().unwrap();
    assert!(body.ends_with('…') && body.len() < 2000, "{}", body.len());
    let whole = m
        .iter()
        .filter(|x| x["sub"] == "ok")
        .nth(2)
        .and_then(|x| serde_json::from_str::<Value>(x["plaintext"].as_str()?).ok())
        .unwrap();
    assert_eq!(whole["body"].as_str().unwrap().len(), 3000);

    let ok: Vec<&Value> = m.iter().filter(|x| x["sub"] == "ok").take(2).collect();
    assert_eq!(ok.len(), 2, "{m:#?}");
    let shown: Vec<Value> = ok
        .iter()
        .map(|x| serde_json::from_str(x["plaintext"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(
        shown[0],
        json!({"kind": "raise", "title": "Critical: Battery 1",
               "body": "Battery 1: SOC 8 % is below 10 %", "level": "critical",
               "tag": "soc_critical-battery1", "time": "2026-11-21T18:04:00Z"})
    );
    assert_eq!(
        shown[1],
        json!({"kind": "clear", "title": "Cleared: Battery 1",
               "body": "Battery 1: SOC 13 % is back at or above 12 %", "level": "critical",
               "tag": "soc_critical-battery1", "time": "2026-11-21T19:04:00Z"})
    );
    for x in &ok {
        assert_eq!(x["urgency"], "high");
        assert_eq!(x["ttl"], "86400");
        assert_eq!(x["encoding"], "aes128gcm");
        assert_eq!(x["topic"], "soc_critical-battery1");
        assert_eq!(x["k"], expected_key.as_str());
        let claims = &x["claims"];
        assert_eq!(claims["aud"], format!("http://127.0.0.1:{fake_port}"));
        assert_eq!(claims["sub"], "mailto:test@example.com");
        let exp = claims["exp"].as_f64().unwrap();
        assert!(
            exp > started && exp <= started + 24.0 * 3600.0 + 60.0,
            "exp {exp}"
        );
    }
    // Nothing was refused: every JWT verified.
    assert!(m.iter().all(|x| x["status"] != 401), "{m:#?}");

    // 429 with Retry-After: 1 was honoured: the retry came a second later.
    let busy: Vec<&Value> = m.iter().filter(|x| x["sub"] == "busy").collect();
    assert_eq!(busy[0]["status"], 429);
    assert_eq!(busy[1]["status"], 201);
    let waited = busy[1]["at"].as_f64().unwrap() - busy[0]["at"].as_f64().unwrap();
    assert!(waited >= 0.95, "retried after {waited} s");

    // 410 deleted the subscription: tried once, never again, gone from disk.
    let gone: Vec<&Value> = m.iter().filter(|x| x["sub"] == "gone").collect();
    assert_eq!(gone.len(), 1, "{gone:#?}");
    assert_eq!(gone[0]["status"], 410);
    let stored: Vec<Value> =
        serde_json::from_slice(&std::fs::read(data.join("push-subscriptions.json")).unwrap())
            .unwrap();
    let endpoints: Vec<&str> = stored
        .iter()
        .map(|s| s["endpoint"].as_str().unwrap())
        .collect();
    assert_eq!(
        endpoints,
        [
            subs["ok"]["endpoint"].as_str().unwrap(),
            subs["busy"]["endpoint"].as_str().unwrap(),
            subs["small"]["endpoint"].as_str().unwrap()
        ]
    );

    // ntfy: method, path, headers (names as the fake saw them, lowercased)
    // and body.
    let ntfy: Vec<&Value> = m.iter().filter(|x| x["channel"] == "ntfy").collect();
    assert_eq!(ntfy.len(), 3);
    for (x, title, prio, tags, body) in [
        (
            ntfy[0],
            "Critical: Battery 1",
            "5",
            "rotating_light,energy2mqtt",
            "Battery 1: SOC 8 % is below 10 %",
        ),
        (
            ntfy[1],
            "Cleared: Battery 1",
            "2",
            "white_check_mark,energy2mqtt",
            "Battery 1: SOC 13 % is back at or above 12 %",
        ),
    ] {
        assert_eq!(x["method"], "POST");
        assert_eq!(x["path"], "/ntfy/e2m-alerts");
        assert_eq!(x["headers"]["title"], title);
        assert_eq!(x["headers"]["priority"], prio);
        assert_eq!(x["headers"]["tags"], tags);
        assert_eq!(x["headers"]["authorization"], "Bearer tk_test");
        assert_eq!(x["body"], body);
    }

    // `energy2mqtt-push test`: one line per channel, all delivered.
    let out = Command::new(PUSH_BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("test")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let origin = format!("http://127.0.0.1:{fake_port}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!("ok   webpush {origin}: Delivered"),
            format!("ok   webpush {origin}: Delivered"),
            format!("ok   webpush {origin}: Delivered"),
            format!("ok   ntfy {origin}/ntfy/e2m-alerts: Ok"),
        ],
        "{stdout}"
    );
    let m = fake.messages();
    let test_pushes = m
        .iter()
        .filter(|x| {
            x["plaintext"]
                .as_str()
                .and_then(|p| serde_json::from_str::<Value>(p).ok())
                .is_some_and(|p| p["title"] == "energy2mqtt test")
        })
        .count();
    assert_eq!(test_pushes, 3, "{m:#?}");
}

/// The sidecar's `/healthz` says it is connected (its own process: a
/// retained `push/state` could still be the previous instance's).
fn wait_connected(listen: u16) {
    wait_until("the sidecar connected", Duration::from_secs(20), || {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", listen)) else {
            return false;
        };
        let _ = write!(s, "GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        buf.starts_with("HTTP/1.1 200") || buf.starts_with("HTTP/1.0 200")
    });
}

#[test]
fn a_clear_after_a_restart_still_reaches_every_channel_and_telegram_gets_the_bot_api_call() {
    let Some(python) = support::interop_python("push restart test", support::FAKE_PUSH_PIP) else {
        return;
    };
    let fake = support::FakePush::start(&python);
    let broker = Broker::start(BrokerKind::Embedded);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("push-subscriptions.json"),
        serde_json::to_vec(&json!([fake.subscriptions["ok"]])).unwrap(),
    )
    .unwrap();
    let listen = support::free_port();
    let cfg = dir.path().join("e2m.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[mqtt]
url = "mqtt://127.0.0.1:{broker}"
client_id = "e2m-push-restart"
base_topic = "e2mrestart"

[storage]
dir = "{data}"

[push]
listen = "127.0.0.1:{listen}"
vapid_subject = "https://e2m.example.net/contact"

[[push.ntfy]]
url = "http://127.0.0.1:{fake}/ntfy"
topic = "e2m-alerts"

[[push.telegram]]
bot_token = "123456:ABC-def_1"
chat_ids = [42]
api_url = "http://127.0.0.1:{fake}/telegram"
"#,
            broker = broker.port,
            fake = fake.port,
            data = data.display(),
        ),
    )
    .unwrap();
    let start = || {
        Command::new(PUSH_BIN)
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start energy2mqtt-push")
    };
    let mut first = Reaped(start());
    wait_connected(listen);

    let raise = json!({"kind": "raise", "event_type": "raise", "rule": "cell_delta_error",
        "family": "cell_delta", "level": "error", "device": "battery1", "device_name": "Battery 1",
        "value": 0.052, "threshold": 0.05, "message": "Battery 1: cell delta 0.052 V is above 0.050 V",
        "at": "2026-12-01T18:04:00Z", "repeat": false, "notify": true});
    let mut clear = raise.clone();
    clear["kind"] = json!("clear");
    clear["event_type"] = json!("clear");
    clear["message"] = json!("Battery 1: cell delta 0.031 V is back at or below 0.040 V");
    publish(broker.port, "e2mrestart/alerts/event", &raise);
    let count = |m: &[Value], channel: &str| m.iter().filter(|x| x["channel"] == channel).count();
    wait_until(
        "the raise on every channel",
        Duration::from_secs(20),
        || {
            let m = fake.messages();
            // Telegram: the fake answers its very first request 502.
            count(&m, "webpush") == 1 && count(&m, "ntfy") == 1 && count(&m, "telegram") == 2
        },
    );

    // Killed (no clean exit: the memory was saved when it changed), then
    // started again; the clear arrives for the new process.
    let _ = first.0.kill();
    let _ = first.0.wait();
    let _second = Reaped(start());
    wait_connected(listen);
    publish(broker.port, "e2mrestart/alerts/event", &clear);
    wait_until(
        "the clear on every channel",
        Duration::from_secs(20),
        || {
            let m = fake.messages();
            count(&m, "webpush") == 2 && count(&m, "ntfy") == 2 && count(&m, "telegram") == 3
        },
    );
    let m = fake.messages();
    let pushes: Vec<Value> = m
        .iter()
        .filter(|x| x["channel"] == "webpush")
        .map(|x| {
            let plain = x["plaintext"].as_str();
            serde_json::from_str(plain.unwrap_or_else(|| panic!("not decrypted: {x}"))).unwrap()
        })
        .collect();
    assert_eq!(pushes[0]["kind"], "raise");
    assert_eq!(pushes[1]["kind"], "clear");
    assert_eq!(
        pushes[1]["tag"], pushes[0]["tag"],
        "the clear replaces the raise"
    );
    assert_eq!(pushes[1]["tag"], "cell_delta_error-battery1");

    // The Bot API call: method, path with the token, JSON body; the 502
    // was retried with the same request.
    let tg: Vec<&Value> = m.iter().filter(|x| x["channel"] == "telegram").collect();
    assert_eq!(
        tg.iter()
            .map(|x| x["status"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [502, 200, 200]
    );
    for x in &tg {
        assert_eq!(x["method"], "POST");
        assert_eq!(x["path"], "/telegram/bot123456:ABC-def_1/sendMessage");
        assert!(
            x["headers"]["content-type"]
                .as_str()
                .unwrap()
                .starts_with("application/json"),
            "{x}"
        );
    }
    assert_eq!(tg[0]["json"], tg[1]["json"]);
    assert_eq!(
        tg[1]["json"],
        json!({"chat_id": 42, "parse_mode": "MarkdownV2", "disable_notification": false,
               "text": "*Error: Battery 1*\nBattery 1: cell delta 0\\.052 V is above 0\\.050 V"})
    );
    assert_eq!(tg[2]["json"]["disable_notification"], true);
    assert_eq!(
        tg[2]["json"]["text"],
        "*Cleared: Battery 1*\nBattery 1: cell delta 0\\.031 V is back at or below 0\\.040 V"
    );
    // The memory on disk names channels, never the bot token.
    let saved = std::fs::read_to_string(data.join("push-channels.json")).unwrap();
    assert!(saved.contains("telegram [42]"), "{saved}");
    assert!(!saved.contains("ABC-def"), "{saved}");
}
