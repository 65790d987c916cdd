//! The install paths, checked with the real tools that run here: Debian's
//! Mosquitto with exactly the stack's mosquitto/ files (paths adjusted),
//! `energy2mqtt health` as the image's HEALTHCHECK runs it, and, with
//! `E2M_TEST_INSTALL=1` (`.ci/run`), docker-compose's own validation,
//! hadolint, `systemd-analyze verify` and the Home Assistant add-on's files
//! and run script. No Docker engine runs here: the image is not built.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use energy2mqtt::sim::tapo::{Flavour, Load, TapoSim};
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS};
use support::*;
use tokio::sync::mpsc;

/// The tool checks run only where `.ci/run` installed the tools; there a
/// missing tool fails.
fn install_checks() -> bool {
    let on = std::env::var("E2M_TEST_INSTALL").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("install tool checks not run: set E2M_TEST_INSTALL=1 (.ci/run does)");
    }
    on
}

fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("E2M_TEST_INSTALL=1 but `{name}` is not installed"))
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Mosquitto started by the stack's own entrypoint.sh with the stack's
/// mosquitto.conf and acl; only paths and the port differ.
struct StackBroker {
    port: u16,
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl StackBroker {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        // Mosquitto drops to its own user: it must reach these.
        chmod(root, 0o755);
        for sub in ["config", "run", "data"] {
            std::fs::create_dir_all(root.join(sub)).expect("mkdir");
        }
        chmod(&root.join("data"), 0o777);
        let secrets = root.join("secrets");
        let made = Command::new("sh")
            .arg(repo_path("scripts/make-secrets.sh"))
            .arg(&secrets)
            .output()
            .expect("make-secrets.sh");
        assert!(made.status.success(), "{made:?}");
        std::fs::copy(repo_path("mosquitto/acl"), root.join("config/acl")).expect("acl");
        let port = free_port();
        let conf = std::fs::read_to_string(repo_path("mosquitto/mosquitto.conf"))
            .expect("mosquitto.conf")
            .replace("/mosquitto/config/", &format!("{}/config/", root.display()))
            .replace("/mosquitto/run/", &format!("{}/run/", root.display()))
            .replace("/mosquitto/data/", &format!("{}/data/", root.display()))
            .replace("listener 1883", &format!("listener {port} 127.0.0.1"));
        assert!(
            conf.contains(&format!("listener {port} 127.0.0.1")),
            "{conf}"
        );
        let conf_path = root.join("config/mosquitto.conf");
        std::fs::write(&conf_path, conf).expect("write conf");
        let child = Command::new("sh")
            .arg(repo_path("mosquitto/entrypoint.sh"))
            .env("SECRETS_DIR", &secrets)
            .env("RUN_DIR", root.join("run"))
            .env("MOSQUITTO_CONF", &conf_path)
            .stdout(std::fs::File::create(root.join("mosquitto.log")).expect("log"))
            .stderr(std::fs::File::create(root.join("mosquitto.err")).expect("log"))
            .spawn()
            .expect("entrypoint.sh");
        let mut b = Self { port, dir, child };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline && b.child.try_wait().ok().flatten().is_none(),
                "the stack's Mosquitto did not start: {}",
                b.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        b
    }

    fn password(&self, user: &str) -> String {
        std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("secrets/mqtt_{user}_password")),
        )
        .expect("secret")
        .trim()
        .to_owned()
    }

    fn log(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!("{}{}", read("mosquitto.log"), read("mosquitto.err"))
    }
}

impl Drop for StackBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client logged in as `user`: its publishes and received messages, or
/// the broker's refusal.
struct User {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Msg>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for User {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn login(port: u16, creds: Option<(&str, &str)>) -> Result<User, String> {
    let mut opts = MqttOptions::new(format!("acl-{}", free_port()), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    if let Some((u, p)) = creds {
        opts.set_credentials(u, p);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let first = tokio::time::timeout(Duration::from_secs(5), eventloop.poll())
        .await
        .map_err(|_| "no CONNACK".to_owned())?;
    match first {
        Ok(Event::Incoming(Packet::ConnAck(_))) => {}
        Ok(other) => return Err(format!("unexpected {other:?}")),
        Err(ConnectionError::ConnectionRefused(code)) => return Err(format!("refused: {code:?}")),
        Err(e) => return Err(e.to_string()),
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(Msg {
                        topic: p.topic,
                        payload: p.payload,
                        retain: p.retain,
                    });
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    Ok(User { client, rx, task })
}

impl User {
    async fn sub(&self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
    }

    async fn publish(&self, topic: &str, payload: &str, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.as_bytes().to_vec())
            .await
            .expect("publish");
    }

    async fn topics_within(&mut self, window: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + window;
        let mut out = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            out.push(m.topic);
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stacks_mosquitto_lets_each_user_do_only_its_part() {
    if !brokers().contains(&BrokerKind::Mosquitto) {
        return;
    }
    let broker = StackBroker::start();
    let port = broker.port;
    let pw = |u: &str| broker.password(u);

    // Nobody gets in without a user, or with a wrong password.
    let anonymous = login(port, None).await;
    assert!(anonymous.is_err(), "anonymous let in; {}", broker.log());
    assert!(
        login(port, Some(("energy2mqtt", "wrong"))).await.is_err(),
        "a wrong password let in"
    );

    let bridge_pw = pw("energy2mqtt");
    let telegraf_pw = pw("telegraf");
    let ha_pw = pw("homeassistant");
    let bridge = login(port, Some(("energy2mqtt", &bridge_pw)))
        .await
        .expect("the bridge's user logs in");
    // The bridge writes its states and discovery, retained.
    bridge
        .publish("energy2mqtt/boiler", r#"{"state":"ON"}"#, true)
        .await;
    bridge
        .publish("homeassistant/switch/boiler/switch/config", "{}", true)
        .await;
    let mut bridge = bridge;
    bridge.sub("energy2mqtt/+/set").await;
    bridge.sub("homeassistant/status").await;

    let mut telegraf = login(port, Some(("telegraf", &telegraf_pw)))
        .await
        .expect("telegraf logs in");
    telegraf.sub("energy2mqtt/#").await;
    telegraf.sub("homeassistant/#").await;
    let seen = telegraf.topics_within(Duration::from_millis(700)).await;
    assert!(seen.contains(&"energy2mqtt/boiler".to_owned()), "{seen:?}");
    assert!(
        !seen.iter().any(|t| t.starts_with("homeassistant/")),
        "telegraf reads discovery: {seen:?}"
    );

    let mut ha = login(port, Some(("homeassistant", &ha_pw)))
        .await
        .expect("Home Assistant's user logs in");
    ha.sub("#").await;
    let seen = ha.topics_within(Duration::from_millis(700)).await;
    for t in [
        "energy2mqtt/boiler",
        "homeassistant/switch/boiler/switch/config",
    ] {
        assert!(
            seen.contains(&t.to_owned()),
            "HA does not read {t}: {seen:?}"
        );
    }

    // Home Assistant commands and announces itself; the bridge hears it.
    ha.publish("energy2mqtt/boiler/set", "OFF", false).await;
    ha.publish("homeassistant/status", "online", false).await;
    // What Home Assistant and Telegraf may not write never arrives.
    ha.publish("energy2mqtt/boiler", r#"{"state":"FORGED"}"#, false)
        .await;
    ha.publish("homeassistant/switch/evil/x/config", "{}", false)
        .await;
    telegraf
        .publish("energy2mqtt/boiler/set", "ON", false)
        .await;
    let heard = bridge.topics_within(Duration::from_secs(1)).await;
    assert_eq!(
        heard
            .iter()
            .filter(|t| *t == "energy2mqtt/boiler/set")
            .count(),
        1,
        "exactly Home Assistant's command: {heard:?}"
    );
    assert!(
        heard.contains(&"homeassistant/status".to_owned()),
        "{heard:?}"
    );
    let at_telegraf = telegraf.topics_within(Duration::from_millis(500)).await;
    assert!(
        !at_telegraf.contains(&"energy2mqtt/boiler".to_owned()),
        "Home Assistant forged a state: {at_telegraf:?}"
    );
    let at_ha = ha.topics_within(Duration::from_millis(300)).await;
    assert!(
        !at_ha.contains(&"homeassistant/switch/evil/x/config".to_owned()),
        "Home Assistant wrote discovery: {at_ha:?}"
    );
    drop((bridge, telegraf, ha));

    // The notification sidecar's user reads the alerts and the bridge's
    // events and state, and writes only its own state.
    let push_pw = pw("push");
    let mut push = login(port, Some(("push", &push_pw)))
        .await
        .expect("the sidecar's user logs in");
    push.sub("energy2mqtt/#").await;
    let mut bridge = login(port, Some(("energy2mqtt", &bridge_pw)))
        .await
        .expect("the bridge's user logs in");
    bridge.sub("energy2mqtt/#").await;
    let _ = bridge.topics_within(Duration::from_millis(300)).await;
    for t in [
        "energy2mqtt/alerts/event",
        "energy2mqtt/bridge/event",
        "energy2mqtt/alerts",
        "energy2mqtt/boiler/set",
    ] {
        bridge.publish(t, "{}", false).await;
    }
    let seen = push.topics_within(Duration::from_millis(700)).await;
    for t in [
        "energy2mqtt/alerts/event",
        "energy2mqtt/bridge/event",
        "energy2mqtt/alerts",
    ] {
        assert!(
            seen.contains(&t.to_owned()),
            "push does not read {t}: {seen:?}"
        );
    }
    assert!(
        !seen
            .iter()
            .any(|t| t == "energy2mqtt/boiler" || t.ends_with("/set")),
        "push reads more than it needs: {seen:?}"
    );
    push.publish("energy2mqtt/push/state", r#"{"state":"online"}"#, true)
        .await;
    push.publish("energy2mqtt/boiler/set", "OFF", false).await;
    let heard = bridge.topics_within(Duration::from_millis(700)).await;
    assert!(
        heard.contains(&"energy2mqtt/push/state".to_owned()),
        "{heard:?}"
    );
    assert_eq!(
        heard
            .iter()
            .filter(|t| *t == "energy2mqtt/boiler/set")
            .count(),
        1,
        "only the bridge's own command, none from push: {heard:?}"
    );
    drop((bridge, push));

    // The bridge end to end against it, as its user: HA sees the plug and
    // switches it.
    let sim = TapoSim::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Flavour::P110,
        Load::Constant { watts: 100.0 },
        "u@example.com",
        "pw",
    )
    .await
    .expect("plug simulator");
    let toml = format!(
        "[tapo]\nemail = \"u@example.com\"\npassword = \"pw\"\n[[plug]]\nid = \"boiler\"\n\
         host = \"127.0.0.1\"\nport = {}\npoll_interval = \"1s\"\n",
        sim.addr.port()
    );
    let url = format!("mqtt://127.0.0.1:{port}");
    let mut bridge = Bridge::start(
        &url,
        &toml,
        &[
            ("E2M_MQTT__USERNAME", "energy2mqtt"),
            ("E2M_MQTT__PASSWORD", &bridge_pw),
        ],
    );
    let mut ha = login(port, Some(("homeassistant", &ha_pw)))
        .await
        .expect("HA logs in");
    ha.sub("energy2mqtt/#").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut got_state = false;
    while !got_state && tokio::time::Instant::now() < deadline {
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(1), ha.rx.recv()).await {
            // The bridge's own state (the ACL part above left a retained
            // one without `last_seen`).
            got_state = m.topic == "energy2mqtt/boiler"
                && serde_json::from_slice::<serde_json::Value>(&m.payload)
                    .is_ok_and(|v| v["state"] == "ON" && v["last_seen"].is_string());
        }
    }
    assert!(
        got_state,
        "the bridge's state reaches HA; bridge log:\n{}\nbroker log:\n{}",
        bridge.log_text(),
        broker.log()
    );
    ha.publish("energy2mqtt/boiler/set", "OFF", false).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sim.is_on() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!sim.is_on(), "HA's command switched the plug");
    assert_eq!(bridge.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_whether_the_bridge_runs_and_is_connected() {
    let mut broker = Broker::start(BrokerKind::Embedded);
    let data = tempfile::tempdir().unwrap();
    let cfg = write_file(
        data.path(),
        "health.toml",
        &format!(
            "[storage]\ndir = \"{}\"\n",
            data.path().join("state").display()
        ),
    );
    let health = || {
        Command::new(BIN)
            .arg("health")
            .arg("--config")
            .arg(&cfg)
            .env_clear()
            .output()
            .expect("health")
    };
    // Nothing has run yet.
    let out = health();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no health.json"));

    let mut bridge = Bridge::start(
        &broker.url(),
        "",
        &[(
            "E2M_STORAGE__DIR",
            data.path().join("state").to_str().unwrap(),
        )],
    );
    let wait_for = |want: i32| {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let out = health();
            if out.status.code() == Some(want) {
                return out;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "health never said {want}: {out:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let ok = wait_for(0);
    assert!(String::from_utf8_lossy(&ok.stdout).contains("connected to mqtt://127.0.0.1"));
    // The broker goes away: unhealthy.
    broker.stop();
    let down = wait_for(1);
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("not connected"),
        "{down:?}"
    );
    broker.restart();
    wait_for(0);
    // The process dies without a word: its last record says connected,
    // but the process is gone.
    bridge.kill9();
    let dead = wait_for(1);
    assert!(
        String::from_utf8_lossy(&dead.stderr).contains("is not running"),
        "{dead:?}"
    );
}

#[test]
fn docker_compose_validates_every_profile() {
    if !install_checks() {
        return;
    }
    let compose = tool("docker-compose");
    for args in [
        &["config", "-q"][..],
        &["--profile", "history", "config", "-q"],
        &["--profile", "push", "config", "-q"],
    ] {
        let out = Command::new(&compose)
            .args(args)
            .current_dir(repo_path(""))
            .output()
            .expect("docker-compose");
        assert!(out.status.success(), "docker-compose {args:?}: {out:?}");
    }
    let out = Command::new(&compose)
        .args(["--profile", "history", "--profile", "push", "config"])
        .current_dir(repo_path(""))
        .output()
        .expect("docker-compose");
    let text = String::from_utf8_lossy(&out.stdout);
    // The sidecar runs from the bridge's image, as the push user.
    assert!(
        text.contains("energy2mqtt-push:") && text.contains("E2M_MQTT__USERNAME: push"),
        "{text}"
    );
    // Pinned images only, and no password in the file itself.
    for line in text
        .lines()
        .filter(|l| l.trim_start().starts_with("image:"))
    {
        let image = line.trim_start().trim_start_matches("image:").trim();
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            !tag.is_empty() && tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()),
            "unpinned image: {image}"
        );
    }
    let file = std::fs::read_to_string(repo_path("docker-compose.yml")).unwrap();
    for line in file.lines() {
        let l = line.to_ascii_lowercase();
        if l.contains("password")
            && l.contains(':')
            && !l.contains("file")
            && !l.contains("secrets")
            && !l.trim_start().starts_with('#')
        {
            // Only the names of secrets and *_FILE paths may mention one.
            assert!(
                l.trim_end().ends_with(':') || l.contains("$$(cat /run/secrets/"),
                "a password in docker-compose.yml: {line}"
            );
        }
    }
}

#[test]
fn the_dockerfiles_pass_hadolint() {
    if !install_checks() {
        return;
    }
    let hadolint = std::env::var_os("E2M_HADOLINT")
        .map(PathBuf::from)
        .unwrap_or_else(|| tool("hadolint"));
    for file in ["Dockerfile", "addon/Dockerfile"] {
        let out = Command::new(&hadolint)
            .arg(repo_path(file))
            .output()
            .expect("hadolint");
        assert!(
            out.status.success(),
            "{file}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every ignored rule is explained in the comment above it.
    for file in ["Dockerfile", "addon/Dockerfile"] {
        let text = std::fs::read_to_string(repo_path(file)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if l.contains("hadolint ignore") {
                assert!(
                    i > 0 && lines[i - 1].starts_with('#') && !lines[i - 1].contains("hadolint"),
                    "{file}:{}: an ignored rule without a reason",
                    i + 1
                );
            }
        }
    }
}

#[test]
fn the_systemd_unit_verifies() {
    if !install_checks() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let push_unit = std::fs::read_to_string(repo_path("contrib/systemd/energy2mqtt-push.service"))
        .unwrap()
        .replace("/usr/local/bin/energy2mqtt-push", PUSH_BIN);
    let unit = std::fs::read_to_string(repo_path("contrib/systemd/energy2mqtt.service"))
        .unwrap()
        .replace("/usr/local/bin/energy2mqtt", BIN);
    for (name, text) in [
        ("energy2mqtt.service", &unit),
        ("energy2mqtt-push.service", &push_unit),
    ] {
        let path = write_file(dir.path(), name, text);
        let out = Command::new(tool("systemd-analyze"))
            .arg("verify")
            .arg(&path)
            .output()
            .expect("systemd-analyze");
        assert!(out.status.success(), "{name}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains(name), "warnings about {name}: {stderr}");
    }
    for key in [
        "StateDirectory=energy2mqtt",
        "ExecStart=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "RestartPreventExitStatus=2",
    ] {
        assert!(push_unit.contains(key), "energy2mqtt-push.service: {key}");
    }
    for key in [
        "StateDirectory=energy2mqtt",
        "ConfigurationDirectory=energy2mqtt",
        "WorkingDirectory=",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "After=network-online.target bluetooth.service",
    ] {
        assert!(unit.contains(key), "{key}");
    }
}

#[test]
fn the_addon_is_complete_and_its_options_make_a_valid_config() {
    if !install_checks() {
        return;
    }
    // The add-on format's required keys, and the version is the crate's.
    let python =
        std::env::var("E2M_TOOLS_PYTHON").expect("E2M_TOOLS_PYTHON (a python with PyYAML)");
    let out = Command::new(&python)
        .arg(repo_path("tests/install/addon_check.py"))
        .arg(repo_path(""))
        .arg(env!("CARGO_PKG_VERSION"))
        .output()
        .expect("addon_check.py");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The run script turns example options into a configuration that
    // check-config accepts, with every device and the Supervisor's broker.
    tool("jq");
    let dir = tempfile::tempdir().unwrap();
    let made = dir.path().join("energy2mqtt.toml");
    let out = Command::new("sh")
        .arg(repo_path("addon/run.sh"))
        .env("OPTIONS", repo_path("tests/install/options.json"))
        .env("MQTT_SERVICE", repo_path("tests/install/mqtt_service.json"))
        .env("CONFIG_OUT", &made)
        .env("GENERATE_ONLY", "1")
        .output()
        .expect("run.sh");
    assert!(out.status.success(), "{out:?}");
    let check = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&made)
        .env_clear()
        .output()
        .expect("check-config");
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{}\n{}",
        std::fs::read_to_string(&made).unwrap_or_default(),
        String::from_utf8_lossy(&check.stderr)
    );
    for want in [
        "url = \"mqtt://core-mosquitto:1883\"",
        "id = \"inverter\"",
        "serial = 2712345678",
        "id = \"boiler\"",
        "inverter = \"inverter\"",
        "id = \"lamp\"",
        "nominal_w = 60.0",
        "mac = \"C8:47:80:12:AB:34\"",
        "dir = \"/data\"",
    ] {
        assert!(shown.contains(want), "{want} missing:\n{shown}");
    }
    // The secrets went into the file (only the add-on reads /data) but
    // never into check-config's output.
    for secret in ["s3cr3t:x", "pa\\\"ss"] {
        assert!(!shown.contains(secret), "{secret} shown");
    }
    let toml_text = std::fs::read_to_string(&made).unwrap();
    assert!(
        toml_text.contains("password = \"pa\\\"ss\\\\word\""),
        "{toml_text}"
    );
}
