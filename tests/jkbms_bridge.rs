//! The bridge binary reading JK-BMS packs through BlueZ: the fake BlueZ on
//! a private dbus-daemon, real captured frames, both BLE module
//! generations, a pack that never shows up, a dropped link.
#![cfg(feature = "ble")]

mod support;

use std::time::Duration;

use support::fake_bluez::{FakeBluez, Generation, PrivateBus, jkbms_vectors, vector_frame};
use support::*;

const PACK_A: &str = "C8:47:8C:00:10:0A";
const PACK_B: &str = "20:21:11:00:10:0B";
const PACK_C: &str = "A4:C1:38:00:10:0C";

fn expected(dir: &std::path::Path, name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).expect("vector");
    serde_json::from_str::<serde_json::Value>(&text).expect("JSON")["expected"].clone()
}

fn state_of(id: &'static str) -> impl Fn(&Msg) -> bool {
    move |m: &Msg| m.topic == format!("energy2mqtt/{id}")
}

fn availability(id: &'static str, online: bool) -> impl Fn(&Msg) -> bool {
    let want = if online { "online" } else { "offline" };
    move |m: &Msg| m.topic == format!("energy2mqtt/{id}/availability") && m.json()["state"] == want
}

fn close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() < 0.0015,
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packs_of_both_generations_are_published_and_recover_from_a_dropped_link() {
    let Some(dir) = jkbms_vectors("jkbms_bridge") else {
        return;
    };
    if !PrivateBus::available() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "dbus-daemon is not installed (apt-get install dbus-daemon)"
        );
        println!("jkbms_bridge: not run: dbus-daemon is not installed");
        return;
    }
    let fake = FakeBluez::start();
    // Pack A: the older module (one FFE1), a 16-cell JK02_32S on 15.38.
    fake.add_pack(
        PACK_A,
        "JK_PB2A16S15P",
        Generation::OneCharacteristic,
        true,
        false,
    );
    fake.set_responses(
        PACK_A,
        0x97,
        vec![vector_frame(&dir, "devinfo_jk02_32s_pb2a16s15p_v15.38")],
    );
    fake.set_responses(
        PACK_A,
        0x96,
        vec![
            vector_frame(&dir, "settings_jk02_32s_pb2a16s15p_v14.20"),
            vector_frame(&dir, "jk02_32s_cell_pb2a16s15p_v15.38_charging"),
        ],
    );
    // Pack B: the newer module (two FFE1), a 24-cell JK02_24S on 10.07.
    fake.add_pack(
        PACK_B,
        "JK_B2A24S20P",
        Generation::TwoCharacteristics,
        true,
        false,
    );
    fake.set_responses(
        PACK_B,
        0x97,
        vec![vector_frame(&dir, "devinfo_jk02_24s_b2a24s20p_v10.07")],
    );
    fake.set_responses(
        PACK_B,
        0x96,
        vec![
            vector_frame(&dir, "settings_jk02_24s_b2a24s20p_v10.07"),
            vector_frame(&dir, "jk02_24s_cell_b2a24s20p_v10.07_24cells"),
        ],
    );
    // Pack C never advertises: it must not hold up the others.
    fake.add_pack(
        PACK_C,
        "JK_B2A8S20P",
        Generation::OneCharacteristic,
        false,
        false,
    );

    let broker = Broker::start(BrokerKind::Embedded);
    let mut client = Client::connect(
        broker.port,
        &[
            "energy2mqtt/+",
            "energy2mqtt/+/availability",
            "homeassistant/+/pack_a/+/config",
        ],
    )
    .await;
    let toml = format!(
        r#"
[[bms]]
id = "pack_a"
mac = "{PACK_A}"
publish_interval = "500ms"

[[bms]]
id = "pack_b"
mac = "{PACK_B}"
publish_interval = "500ms"

[[bms]]
id = "pack_c"
mac = "{PACK_C}"
"#
    );
    let env = fake.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut bridge = Bridge::start(&broker.url(), &toml, &env);

    let mut msgs = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    let have = |msgs: &[Msg], id: &'static str| msgs.iter().any(|m| state_of(id)(m));
    while tokio::time::Instant::now() < deadline
        && !(have(&msgs, "pack_a") && have(&msgs, "pack_b"))
    {
        msgs.extend(client.collect(Duration::from_millis(500)).await);
    }
    let last = |id: &'static str| {
        msgs.iter()
            .rev()
            .find(|m| state_of(id)(m))
            .unwrap_or_else(|| panic!("no state for {id}; log:\n{}", bridge.log_text()))
            .json()
    };
    let a = last("pack_a");
    let e = expected(&dir, "jk02_32s_cell_pb2a16s15p_v15.38_charging");
    assert_eq!(a["cell_count"], 16, "{a}");
    assert!(close(&a["voltage"], &e["total_voltage"]), "{a} vs {e}");
    assert_eq!(a["soc"], e["soc"]);
    assert!(close(&a["cell_16_voltage"], &e["cell_voltages"][15]), "{a}");
    assert!(a["energy_charged"].as_f64().is_some(), "{a}");
    let b = last("pack_b");
    let e = expected(&dir, "jk02_24s_cell_b2a24s20p_v10.07_24cells");
    assert_eq!(b["cell_count"], 24, "{b}");
    assert!(close(&b["voltage"], &e["total_voltage"]), "{b} vs {e}");
    assert!(!have(&msgs, "pack_c"), "pack_c never advertised");

    // Discovery: the pack's shape (16 cells) and what it said about itself.
    msgs.extend(client.collect(Duration::from_secs(1)).await);
    let cell16 = msgs
        .iter()
        .rev()
        .find(|m| m.topic == "homeassistant/sensor/pack_a/cell_16_voltage/config")
        .expect("per-cell entity for cell 16")
        .json();
    assert_eq!(cell16["unit_of_measurement"], "V");
    let serial = cell16["device"]["serial_number"]
        .as_str()
        .unwrap_or_default();
    assert!(!serial.is_empty(), "{cell16}");
    assert_eq!(
        cell16["device"]["identifiers"][1],
        format!("jkbms_{serial}"),
        "{cell16}"
    );
    assert!(
        cell16["device"]["hw_version"]
            .as_str()
            .is_some_and(|h| h.contains("made 20")),
        "manufacturing date in the device registry: {cell16}"
    );
    assert!(
        !msgs.iter().any(
            |m| m.topic == "homeassistant/sensor/pack_a/cell_17_voltage/config"
                && !m.payload.is_empty()
        ),
        "no entity for a cell the pack does not have"
    );

    // The link drops: offline, then back on its own (with backoff).
    client.drain();
    fake.drop_link(PACK_A);
    assert!(
        client
            .expect(Duration::from_secs(10), availability("pack_a", false))
            .await
            .is_some(),
        "pack_a not marked offline; log:\n{}",
        bridge.log_text()
    );
    assert!(
        client
            .expect(Duration::from_secs(30), availability("pack_a", true))
            .await
            .is_some(),
        "pack_a did not come back; log:\n{}",
        bridge.log_text()
    );
    assert!(fake.connect_attempts(PACK_A) >= 2);
    assert!(fake.connect_attempts(PACK_A) <= 3, "the pack was hammered");
    assert!(bridge.is_running());
    assert_eq!(bridge.terminate(), Some(0));
    // A clean release (a Disconnect, not just a vanished client): the
    // phone app can connect afterwards.
    assert!(
        fake.log(PACK_B).iter().any(|l| l == "Disconnect"),
        "pack_b was not released: {:?}",
        fake.log(PACK_B)
    );
    assert!(
        fake.until(Duration::from_secs(5), |f| !f.is_connected(PACK_A)
            && !f.is_connected(PACK_B))
            .await,
        "packs still connected after shutdown"
    );
}
