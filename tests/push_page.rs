//! The sidecar's subscribe page in a real browser: Debian's Chromium,
//! headless, driven by playwright-core (tests/browser/page_test.mjs), with
//! the sidecar, a real broker and the independent fake push service of
//! tests/interop/fake_push.py.
//!
//! What it proves: the page loads in a secure context (loopback), Chromium
//! parses the manifest without errors and finds the app installable, the
//! service worker registers, the subscribe button posts the subscription
//! to the sidecar (with the sidecar's VAPID key handed to the push
//! manager), "Send a test" reaches the push service and is decrypted
//! there, the service worker shows a pushed notification and its clear
//! replaces it (same tag), the active alerts are listed, and unsubscribing
//! removes the subscription. Chromium cannot reach a real push service
//! here: the page's test hook `window.e2mTestPushManager` hands it the fake
//! service's subscription; everything after that is the page's own code.
//!
//! Needs /usr/bin/chromium, node and `npm ci` in tests/browser, and the
//! interop venv; a plain `cargo test` without them says so and passes,
//! under `CI=true` it fails.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::{
    Broker, BrokerKind, FakePush, PUSH_BIN, Reaped, free_port, interop_python, repo_path,
    wait_until,
};

/// Chromium, node and playwright-core, or why not.
fn browser() -> Option<(PathBuf, PathBuf)> {
    let chromium = std::env::var_os("E2M_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let node = PathBuf::from("node");
    let playwright = repo_path("tests/browser/node_modules/playwright-core/package.json");
    let has_node = Command::new(&node)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let missing: Vec<&str> = [
        (!chromium.exists()).then_some("chromium (apt-get install chromium)"),
        (!has_node).then_some("node"),
        (!playwright.exists()).then_some("playwright-core (cd tests/browser && npm ci)"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if missing.is_empty() {
        return Some((chromium, node));
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but the browser test cannot run: missing {missing:?} (.ci/run installs them)"
    );
    eprintln!("browser test not run: missing {missing:?}");
    None
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split(' ').nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

fn publish_retained(port: u16, topic: &str, payload: &Value) {
    let mut opts = rumqttc::MqttOptions::new("page-test-pub", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = rumqttc::Client::new(opts, 10);
    client
        .publish(
            topic,
            rumqttc::QoS::AtLeastOnce,
            true,
            payload.to_string().into_bytes(),
        )
        .expect("publish");
    for ev in conn.iter().take(20) {
        if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) = ev {
            break;
        }
    }
    let _ = client.disconnect();
}

fn write_config(dir: &Path, broker: u16, listen: u16) -> PathBuf {
    let cfg = dir.join("e2m.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[mqtt]
url = "mqtt://127.0.0.1:{broker}"
client_id = "e2m-page-test"
base_topic = "e2mpage"

[storage]
dir = "{data}"

[push]
listen = "127.0.0.1:{listen}"
vapid_subject = "mailto:test@example.com"
"#,
            data = dir.join("data").display(),
        ),
    )
    .expect("write config");
    cfg
}

#[test]
fn the_page_subscribes_this_browser_in_a_real_chromium() {
    let Some((chromium, node)) = browser() else {
        return;
    };
    let Some(python) = interop_python("browser test", support::FAKE_PUSH_PIP) else {
        return;
    };
    let fake = FakePush::start(&python);
    let ok = fake.subscriptions["ok"].clone();
    let broker = Broker::start(BrokerKind::Embedded);
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = free_port();
    let cfg = write_config(dir.path(), broker.port, listen);

    let active = json!({"count": 1, "active": [{"rule": "soc_low", "family": "soc",
        "level": "warning", "device": "battery1", "device_name": "Battery 1",
        "value": 18.0, "threshold": 20.0, "message": "Battery 1: SOC 18 % is below 20 %",
        "since": "2026-12-01T18:00:00Z"}], "families": {"soc": true}, "thresholds": {}});
    publish_retained(broker.port, "e2mpage/alerts", &active);

    let log = dir.path().join("push.log");
    let sidecar = Command::new(PUSH_BIN)
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start energy2mqtt-push");
    let _sidecar = Reaped(sidecar);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the sidecar's page", Duration::from_secs(20), || {
        http_get(listen, "/").is_some_and(|(s, _)| s == 200)
    });
    wait_until("the retained alerts", Duration::from_secs(20), || {
        http_get(listen, "/api/alerts")
            .is_some_and(|(_, b)| serde_json::from_str::<Value>(&b).ok() == Some(active.clone()))
    });
    // The container health check: running, page up, connected.
    let health = || {
        Command::new(PUSH_BIN)
            .arg("--config")
            .arg(&cfg)
            .arg("health")
            .output()
            .expect("health")
    };
    let out = health();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("connected to the broker"));

    let (_, key) = http_get(listen, "/api/vapid-public-key").expect("key");
    let key: Value = serde_json::from_str(&key).expect("key JSON");
    let key = key["key"].as_str().expect("key").to_owned();

    let input = json!({
        "base": format!("http://127.0.0.1:{listen}/"),
        "subscription": ok,
        "raise": {"kind": "raise", "title": "Critical: Battery 1", "body": "SOC 8 % is below 10 %",
                  "level": "critical", "tag": "soc_critical-battery1", "time": "2026-12-01T18:04:00Z"},
        "clear": {"kind": "clear", "title": "Cleared: Battery 1", "body": "SOC 13 % is back at or above 12 %",
                  "level": "critical", "tag": "soc_critical-battery1", "time": "2026-12-01T19:04:00Z"},
    });
    let out = Command::new(node)
        .arg(repo_path("tests/browser/page_test.mjs"))
        .arg(input.to_string())
        .env("E2M_CHROMIUM", &chromium)
        .current_dir(repo_path("tests/browser"))
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let seen: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "no JSON from page_test.mjs:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let context = || format!("browser saw: {seen:#}\nsidecar log:\n{}", read_log());
    assert!(seen["error"].is_null(), "{}", context());

    // Loads, as a secure context (loopback), with a manifest Chromium
    // accepts and would install.
    assert_eq!(seen["status"], 200, "{}", context());
    assert_eq!(seen["secure"], true);
    assert_eq!(seen["manifestErrors"], json!([]), "{}", context());
    assert_eq!(
        seen["manifestData"]["name"],
        "energy2mqtt notifications",
        "{}",
        context()
    );
    assert_eq!(seen["manifestData"]["display"], "standalone");
    assert_eq!(seen["installabilityErrors"], json!([]), "{}", context());
    assert_eq!(
        seen["serviceWorker"]["script"],
        format!("http://127.0.0.1:{listen}/sw.js")
    );
    assert_eq!(
        seen["serviceWorker"]["scope"],
        format!("http://127.0.0.1:{listen}/")
    );
    assert_eq!(
        seen["stateBefore"],
        "Notifications are off for this device."
    );

    // The subscribe button: the sidecar's key went to the push manager,
    // the subscription to the sidecar.
    assert_eq!(seen["seenKey"], key.as_str());
    assert_eq!(seen["userVisibleOnly"], true);
    assert_eq!(
        seen["stateSubscribed"],
        "Notifications are on for this device."
    );
    assert_eq!(seen["afterSubscribe"], json!({"subscriptions": 1}));

    // "Send a test": delivered to the fake push service and decrypted there.
    let report = seen["report"].as_array().expect("report");
    assert_eq!(report.len(), 1, "{}", context());
    let line = report[0].as_str().unwrap_or_default();
    assert!(
        line.starts_with(&format!(
            "✓ webpush http://127.0.0.1:{}: Delivered",
            fake.port
        )),
        "{line}"
    );
    let tests: Vec<Value> = fake
        .messages()
        .into_iter()
        .filter(|m| m["sub"] == "ok" && m["status"] == 201)
        .collect();
    assert_eq!(tests.len(), 1, "{:?}", fake.messages());
    let plain: Value =
        serde_json::from_str(tests[0]["plaintext"].as_str().expect("plaintext")).expect("JSON");
    assert_eq!(plain["title"], "energy2mqtt test");
    assert_eq!(plain["tag"], "e2m-test");

    // The service worker shows a push, and the clear replaces it.
    eprintln!(
        "pushes handed to the service worker through DevTools: raise in {}, clear in {} attempt(s)",
        seen["raiseAttempts"], seen["clearAttempts"]
    );
    assert_eq!(
        seen["notificationsAfterRaise"],
        json!([{"title": "Critical: Battery 1", "body": "SOC 8 % is below 10 %",
                "tag": "soc_critical-battery1"}]),
        "{}",
        context()
    );
    assert_eq!(
        seen["notificationsAfterClear"],
        json!([{"title": "Cleared: Battery 1", "body": "SOC 13 % is back at or above 12 %",
                "tag": "soc_critical-battery1"}])
    );

    // The retained alerts, through the sidecar.
    assert_eq!(seen["alertsText"], "");
    assert_eq!(
        seen["alerts"],
        json!(["warning: Battery 1: SOC 18 % is below 20 %"])
    );

    // Turned off: the sidecar forgets this browser.
    assert_eq!(seen["afterUnsubscribe"], json!({"subscriptions": 0}));
    assert_eq!(seen["stateAfter"], "Notifications are off for this device.");
    let saved =
        std::fs::read_to_string(dir.path().join("data/push-subscriptions.json")).expect("saved");
    assert_eq!(serde_json::from_str::<Value>(&saved).unwrap(), json!([]));
    let console: Vec<&str> = seen["console"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(
        !console.iter().any(|l| l.starts_with("pageerror")),
        "{console:?}"
    );

    // Without a sidecar, the health check fails and says why.
    drop(_sidecar);
    let out = health();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing answers"),
        "{out:?}"
    );
}
