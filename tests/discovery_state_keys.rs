//! Every key a discovery config reads (`value_json.<key>` in its
//! `value_template`, availability and attribute templates) is in the state
//! object the running bridge publishes on that config's topic, for every
//! device kind of the demo (bridge, inverter, packs, P110 and P100 plugs,
//! balancer, alerts, site). Home Assistant logs a template warning for each
//! key it cannot find, on every message (the packs' frame counters did
//! ~130 in 30 s), and the entity stays `unknown`.
//!
//! Runs `energy2mqtt demo` with its embedded broker on free loopback ports.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "ha/demo_config.rs"]
mod demo_config;

const BIN: &str = env!("CARGO_BIN_EXE_energy2mqtt");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The dotted paths after `value_json.` in a template.
fn template_keys(template: &str) -> Vec<String> {
    template
        .match_indices("value_json.")
        .map(|(i, m)| {
            template[i + m.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
                .collect::<String>()
                .trim_end_matches('.')
                .to_owned()
        })
        .filter(|k| !k.is_empty())
        .collect()
}

fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

/// (topic, template) pairs a config makes Home Assistant render.
fn reads(config: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut add = |topic: &Value, template: &Value| {
        if let (Some(t), Some(tpl)) = (topic.as_str(), template.as_str()) {
            out.push((t.to_owned(), tpl.to_owned()));
        }
    };
    add(&config["state_topic"], &config["value_template"]);
    add(
        &config["json_attributes_topic"],
        &config["json_attributes_template"],
    );
    for a in config["availability"].as_array().into_iter().flatten() {
        add(&a["topic"], &a["value_template"]);
    }
    out
}

#[test]
fn every_key_discovery_reads_is_in_the_published_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = free_port();
    let plugs: Vec<u16> = (0..demo_config::DEMO_PLUGS).map(|_| free_port()).collect();
    let config = dir.path().join("demo.toml");
    std::fs::write(
        &config,
        demo_config::demo_overlay(free_port(), &plugs, |_| {}),
    )
    .expect("overlay");
    let log = std::fs::File::create(dir.path().join("bridge.log")).expect("log");
    let mut bridge = Command::new(BIN)
        .arg("demo")
        .arg("--config")
        .arg(&config)
        .env_clear()
        .env("E2M_BROKER__LISTEN", format!("127.0.0.1:{broker}"))
        .env("E2M_MQTT__URL", format!("mqtt://127.0.0.1:{broker}"))
        .env("E2M_STORAGE__DIR", dir.path().join("data"))
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start energy2mqtt demo");

    // Latest payload per topic; an empty retained payload deletes.
    let seen: Arc<Mutex<BTreeMap<String, Vec<u8>>>> = Arc::default();
    let out = seen.clone();
    let mut opts = rumqttc::MqttOptions::new("e2m-state-keys", "127.0.0.1", broker);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut connection) = rumqttc::Client::new(opts, 256);
    std::thread::spawn(move || {
        for ev in connection.iter() {
            match ev {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    let _ = client.subscribe("#", rumqttc::QoS::AtMostOnce);
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let mut map = out.lock().expect("map");
                    if p.payload.is_empty() {
                        map.remove(&p.topic);
                    } else {
                        map.insert(p.topic.clone(), p.payload.to_vec());
                    }
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    });

    // Until every config's topics have a state and nothing changed in
    // discovery for 3 s (the packs announce their cells after the first
    // frames, the plugs their model after the first poll).
    let started = Instant::now();
    let mut last = (0, Instant::now());
    let missing = loop {
        std::thread::sleep(Duration::from_millis(250));
        let map = seen.lock().expect("map").clone();
        let configs: Vec<(&String, Value)> = map
            .iter()
            .filter(|(t, _)| t.starts_with("homeassistant/") && t.ends_with("/config"))
            .filter_map(|(t, p)| Some((t, serde_json::from_slice(p).ok()?)))
            .collect();
        if configs.len() != last.0 {
            last = (configs.len(), Instant::now());
        }
        let mut missing = Vec::new();
        for (topic, config) in &configs {
            for (state_topic, template) in reads(config) {
                let Some(payload) = map.get(&state_topic) else {
                    // An event entity's topic carries nothing until
                    // something happens (it is not retained).
                    if !topic.starts_with("homeassistant/event/") {
                        missing.push(format!("{topic}: nothing on {state_topic}"));
                    }
                    continue;
                };
                let state: Value = match serde_json::from_slice(payload) {
                    Ok(v) => v,
                    Err(_) => {
                        missing.push(format!("{topic}: {state_topic} is not JSON"));
                        continue;
                    }
                };
                for key in template_keys(&template) {
                    if lookup(&state, &key).is_none() {
                        missing.push(format!("{topic}: `{key}` not in {state_topic}"));
                    }
                }
            }
        }
        let settled = !configs.is_empty() && last.1.elapsed() > Duration::from_secs(3);
        if (settled && missing.is_empty()) || started.elapsed() > Duration::from_secs(30) {
            break missing;
        }
    };
    let _ = bridge.kill();
    let _ = bridge.wait();
    let log = std::fs::read_to_string(dir.path().join("bridge.log")).unwrap_or_default();
    assert!(
        missing.is_empty(),
        "{} keys Home Assistant would not find:\n{}\n--- bridge log tail ---\n{}",
        missing.len(),
        missing.join("\n"),
        log.lines()
            .skip(log.lines().count().saturating_sub(30))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn template_keys_reads_dotted_paths() {
    assert_eq!(template_keys("{{ value_json.soc }}"), ["soc"]);
    assert_eq!(
        template_keys("{{ value_json.thresholds.soc_low }}"),
        ["thresholds.soc_low"]
    );
    assert!(template_keys("{{ value_json | tojson }}").is_empty());
}
