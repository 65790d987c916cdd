//! The discovery output for the demo configuration is checked in under
//! ha-discovery/; a change to any payload must be deliberate.
//! Regenerate with `E2M_UPDATE_GOLDEN=1 cargo test --test discovery_golden`.

use energy2mqtt::config::{Sources, load_from};
use energy2mqtt::mqtt::Topics;

#[test]
fn demo_discovery_matches_the_golden_file() {
    let golden_path = concat!(env!("CARGO_MANIFEST_DIR"), "/ha-discovery/demo.json");
    let config = load_from(&Sources {
        base_toml: Some(include_str!("../config/demo.toml").to_owned()),
        ..Sources::default()
    })
    .expect("demo config loads");
    let topics = Topics::from_config(&config);
    let messages = energy2mqtt::app::discovery_messages(&config, &topics, &Default::default());
    let actual = serde_json::to_string_pretty(&messages).expect("serialise") + "\n";
    if std::env::var("E2M_UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::write(golden_path, &actual).expect("write golden file");
    }
    let expected = std::fs::read_to_string(golden_path).expect("ha-discovery/demo.json exists");
    assert!(
        actual == expected,
        "discovery output drifted from ha-discovery/demo.json; if intended, rerun with E2M_UPDATE_GOLDEN=1\n--- actual ---\n{actual}"
    );
}

#[test]
fn the_discovery_command_prints_the_same() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_energy2mqtt"))
        .args(["demo", "--help"])
        .output()
        .expect("run");
    assert!(out.status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("demo.toml");
    std::fs::write(&cfg, include_str!("../config/demo.toml")).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_energy2mqtt"))
        .arg("discovery")
        .arg("--config")
        .arg(&cfg)
        .env_clear()
        .output()
        .expect("run discovery");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/ha-discovery/demo.json"
        ))
        .expect("golden"),
    )
    .expect("golden JSON");
    assert_eq!(printed, golden);
    let topics: Vec<&str> = golden
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|m| m["topic"].as_str())
        .collect();
    assert!(
        topics.contains(&"homeassistant/binary_sensor/energy2mqtt_bridge/connection_state/config")
    );
}
