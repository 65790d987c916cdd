//! The written state is byte for byte what the map gives: every reading
//! type, real JK frames, and the corners of the map's rules (non-finite
//! numbers, whole numbers, duplicate keys, annotations over reading keys,
//! `last_seen` over everything, keys that need escaping).

use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::*;
use crate::core::energy::EnergyCounters;
use crate::core::registry::DeviceEntry;
use crate::drivers::jkbms::FrameType;
use crate::drivers::jkbms::assembler::AssemblerStats;
use crate::drivers::jkbms::cell_info::CellInfo;
use crate::drivers::jkbms::device_info::DeviceInfo;
use crate::drivers::jkbms::frame::{Frame, Variant};
use crate::drivers::jkbms::settings::Settings;
use crate::drivers::jkbms::task::pack_reading;
use crate::model::{CellReading, DeviceKind, InverterReading, PackReading, PlugReading, Reading};
use crate::mqtt::payloads;

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// No annotations; annotations beside the reading's keys; annotations
/// over the reading's first, middle and last key and over `last_seen`
/// (which `last_seen` itself overrides).
fn annotation_sets(reading: Option<&Reading>) -> Vec<Map<String, Value>> {
    let keys: Vec<String> = reading
        .map(|r| r.to_state().keys().cloned().collect())
        .unwrap_or_default();
    let mut colliding = Map::new();
    for k in [keys.first(), keys.get(keys.len() / 2), keys.last()]
        .into_iter()
        .flatten()
    {
        colliding.insert(k.clone(), json!({ "annotated": k }));
    }
    colliding.insert("last_seen".into(), json!("annotated"));
    colliding.insert("mode".into(), json!("on"));
    vec![
        Map::new(),
        object(json!({ "mode": "auto", "shed": false, "ZZ": null, "~": [1, 2.5] })),
        colliding,
    ]
}

/// Compares the two paths for `reading` under every annotation set and a
/// few times; returns how many comparisons were made.
fn assert_same_bytes(kind: DeviceKind, reading: Option<Reading>, what: &str) -> usize {
    let times = [
        OffsetDateTime::UNIX_EPOCH,
        OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).expect("in range"),
    ];
    let mut n = 0;
    for annotations in annotation_sets(reading.as_ref()) {
        let entry = DeviceEntry {
            kind,
            name: what.into(),
            online: Some(true),
            reading: reading.clone(),
            annotations,
            last_seen: None,
        };
        for t in times {
            let want = payloads::device_state(&entry.state(), t);
            let got = entry
                .state_json(&payloads::timestamp(t))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(got, want, "{what}, annotations {:?}", entry.annotations);
            n += 1;
        }
    }
    n
}

fn hex_frame(v: &Value, key: &str) -> Option<Frame> {
    let h = v.get(key)?.as_str()?;
    Some(Frame::new(&crate::testing::hex(h)).unwrap_or_else(|e| panic!("{key}: {e}")))
}

#[test]
fn real_jk_frames_give_the_maps_bytes() {
    let Some(dir) = crate::testing::vectors_dir("jkbms") else {
        return;
    };
    let mut packs = 0;
    for path in crate::testing::json_files(&dir) {
        let name = path.display().to_string();
        let v: Value = serde_json::from_slice(&std::fs::read(&path).expect("readable vector"))
            .expect("vector is JSON");
        let Some(frame) = hex_frame(&v, "frame_hex") else {
            continue;
        };
        if frame.frame_type() != FrameType::CellInfo {
            continue;
        }
        let variant: Variant = v["variant"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{name}: variant"));
        let sw = hex_frame(&v, "companion_device_info_hex")
            .and_then(|f| DeviceInfo::decode(&f).ok())
            .and_then(|d| d.software_major());
        let info = CellInfo::decode(&frame, variant, sw).unwrap_or_else(|e| panic!("{name}: {e}"));
        // The settings the pack sent with the frame if the vector has
        // them, else the example; without any (before the first
        // settings frame) as well.
        let settings = hex_frame(&v, "companion_settings_hex")
            .and_then(|f| Settings::decode(&f, variant).ok())
            .unwrap_or_else(|| Settings::example(variant))
            .state_map();
        let frames = AssemblerStats {
            frames: 1234,
            bad_checksums: 3,
            junk_bytes: 99,
            ..AssemblerStats::default()
        };
        let energy = EnergyCounters {
            charged_kwh: 12.3456,
            discharged_kwh: 7.0,
        };
        for settings in [settings, Map::new()] {
            let r = pack_reading(&info, &settings, &frames, &energy);
            assert_same_bytes(DeviceKind::Bms, Some(Reading::Pack(Box::new(r))), &name);
        }
        let bare = info.reading();
        assert_same_bytes(DeviceKind::Bms, Some(Reading::Pack(Box::new(bare))), &name);
        packs += 1;
    }
    assert!(
        packs >= 10,
        "only {packs} cell-info vectors in {}",
        dir.display()
    );
}

/// Sixteen cells with the corners of the per-cell rule (whole numbers,
/// non-finite values left out, numbers past the key tables, a cell given
/// twice), fields through `number` (NaN and infinity as null, -0.0 and
/// huge whole numbers), details over a field and under a temperature, and
/// keys that need escaping or sort by bytes.
fn synthetic_pack() -> PackReading {
    let mut cells: Vec<CellReading> = (1..=16)
        .map(|n| CellReading {
            number: n,
            voltage_v: 3.3 + f64::from(n) * 0.001,
            resistance_mohm: match n {
                1 => 0.0,
                2 => f64::NAN,
                3 => 60.0,
                4 => f64::INFINITY,
                _ => 55.5,
            },
        })
        .collect();
    cells[6].voltage_v = f64::NAN;
    cells[7].voltage_v = 3.0;
    cells[8].voltage_v = -0.0;
    cells.push(CellReading {
        number: 5,
        voltage_v: 2.5,
        resistance_mohm: 1.0,
    });
    cells.push(CellReading {
        number: 0,
        voltage_v: 1.0,
        resistance_mohm: 1.0,
    });
    cells.push(CellReading {
        number: 33,
        voltage_v: 1.0,
        resistance_mohm: 1.0,
    });
    let details = object(json!({
        "power": 12.5,
        "voltage": 99,
        "temperature_1": "from the details",
        "nested": { "b": [1, 2.5, null, "x"], "a": { "deep": true } },
        "a\"quote": 1,
        "a#": 2,
        "a\\back": 3,
        "tab\tkey": true,
        "Zed": null,
        "é": "ü\u{1}\u{7f}\u{2028}",
        "": "empty key",
        "u64max": u64::MAX,
        "i64min": i64::MIN,
        "tiny": 1.0e-7,
        "big": 1.0e300,
        "negzero": -0.0,
    }));
    PackReading {
        voltage_v: Some(53.12),
        current_a: Some(f64::NAN),
        soc_pct: Some(71.0),
        soh_pct: Some(f64::INFINITY),
        cell_count: 16,
        cell_min_voltage_v: Some(-0.0),
        cell_min_number: Some(9),
        cell_max_voltage_v: Some(1.0e16),
        cell_max_number: None,
        cell_average_voltage_v: None,
        cell_delta_voltage_v: Some(0.0042),
        temperatures_c: vec![
            (1, 21.5),
            (2, f64::NAN),
            (3, 20.0),
            (5, f64::NEG_INFINITY),
            (6, 1.0),
            (0, 5.0),
            (4, -12.25),
        ],
        cells,
        max_discharge_current_a: Some(100.0),
        problem: Some(true),
        alarms: Some("cell \"overvoltage\", é\n\u{0}".into()),
        emergency_countdown_s: Some(0.0),
        details,
    }
}

#[test]
fn a_pack_with_every_corner_gives_the_maps_bytes() {
    let p = synthetic_pack();
    // The corners are really there (the map is the reference).
    let state = Reading::Pack(Box::new(p.clone())).to_state();
    assert_eq!(state["voltage"], 99, "a detail over a field");
    assert_eq!(state["temperature_1"], 21.5, "a temperature over a detail");
    assert_eq!(state["cell_05_voltage"], 2.5, "the later cell");
    assert_eq!(state["cell_08_voltage"], 3);
    assert_eq!(state["current"], Value::Null);
    assert!(!state.contains_key("cell_07_voltage"));
    assert!(!state.contains_key("cell_02_resistance"));
    assert!(!state.contains_key("temperature_2"));
    assert_same_bytes(
        DeviceKind::Bms,
        Some(Reading::Pack(Box::new(p))),
        "synthetic pack",
    );
    assert_same_bytes(
        DeviceKind::Bms,
        Some(Reading::Pack(Box::default())),
        "empty pack",
    );
}

/// A poll of the simulated Deye, decoded as the driver decodes it.
fn simulated_inverter() -> InverterReading {
    use crate::drivers::deye::registers::{
        DecodeOptions, Registers, SINGLE_PHASE_LV, decode_sample,
    };
    use crate::sim::deye_model::{InverterModel, ModelConfig, SimTime};
    // 2024-06-15 13:00 UTC: PV, load and battery all non-zero.
    let model = InverterModel::new(
        ModelConfig::default(),
        SimTime::from_unix_secs(1_718_456_400.0),
    );
    let mut regs = Registers::new();
    for (start, len) in [(59, 54), (150, 45)] {
        regs.insert_block(start, &model.read(start, len).expect("simulated block"));
    }
    let s = decode_sample(&SINGLE_PHASE_LV, &regs, &DecodeOptions::default()).expect("decodes");
    let mut details = s.to_map();
    details.insert("poll_ms".into(), 68.into());
    InverterReading {
        rated_power_w: Some(6000.0),
        inverter_power_w: s.inverter_power_w,
        grid_port_power_w: s.grid_port_power_w,
        gen_port_power_w: s.gen_port_power_w,
        load_power_w: s.load_power_w,
        grid_power_w: s.grid_power_w,
        pv_power_w: s.pv_power_w,
        battery_power_w: s.battery_power_w,
        battery_soc_pct: s.battery_soc,
        grid_connected: s.grid_connected,
        fault_bits: s.fault_bits,
        faults: "none".into(),
        details: Map::new(),
    }
    .with_details(details)
}

#[test]
fn an_inverter_gives_the_maps_bytes() {
    let real = simulated_inverter();
    assert!(real.details.len() > 20, "{:?}", real.details);
    assert_same_bytes(
        DeviceKind::Inverter,
        Some(Reading::Inverter(Box::new(real.clone()))),
        "simulated inverter",
    );
    let odd = InverterReading {
        rated_power_w: None,
        inverter_power_w: f64::NAN,
        grid_port_power_w: -0.0,
        gen_port_power_w: 1.0e16,
        load_power_w: 2538.0,
        grid_power_w: -123.4,
        pv_power_w: f64::INFINITY,
        faults: "F13 \"grid\"".into(),
        fault_bits: u64::MAX,
        ..real
    };
    assert_same_bytes(
        DeviceKind::Inverter,
        Some(Reading::Inverter(Box::new(odd))),
        "inverter with odd numbers",
    );
}

#[test]
fn tapo_and_shelly_plugs_give_the_maps_bytes() {
    // As the Tapo task fills it: device info, then the energy usage.
    let tapo = PlugReading {
        on: true,
        power_w: Some(1234.5),
        energy_today_kwh: Some(1.234),
        energy_month_kwh: Some(45.0),
        overheated: false,
        overloaded: true,
        on_time_s: Some(3600),
        rssi_dbm: Some(-61),
        firmware: Some("1.3.4 Build 231102 Rel.152421".into()),
        model: Some("P110".into()),
        ..PlugReading::default()
    };
    assert_same_bytes(DeviceKind::Plug, Some(Reading::Plug(tapo)), "tapo");
    // A P100: no energy counters, no signal.
    let p100 = PlugReading {
        on: false,
        model: Some("P100".into()),
        ..PlugReading::default()
    };
    assert_same_bytes(DeviceKind::Plug, Some(Reading::Plug(p100)), "tapo p100");

    use crate::drivers::shelly::rpc::{parse_device_info, parse_status};
    let status = parse_status(
        br#"{"switch:0":{"id":0,"source":"WS_in","output":true,"apower":87.25,"voltage":231.4,
            "current":0.412,"aenergy":{"total":12345.678},"temperature":{"tC":38.5,"tF":101.3}},
            "sys":{"uptime":5025},"wifi":{"rssi":-58}}"#,
        0,
    )
    .expect("status");
    let info = parse_device_info(
        br#"{"id":"shellyplusplugs-a1b2c3d4e5f6","mac":"A1B2C3D4E5F6","model":"SNPL-00112EU",
            "gen":2,"fw_id":"20241011-114455/1.4.4-g6d2a586","ver":"1.4.4","auth_en":false}"#,
    )
    .expect("device info");
    let shelly = crate::drivers::shelly::task::reading(&status, Some(&info));
    assert_eq!(shelly.power_w, Some(87.3));
    assert_same_bytes(DeviceKind::Plug, Some(Reading::Plug(shelly)), "shelly");
    let bare = crate::drivers::shelly::task::reading(&status, None);
    assert_same_bytes(
        DeviceKind::Plug,
        Some(Reading::Plug(bare)),
        "shelly, no info",
    );
}

#[test]
fn a_device_without_a_reading_has_its_annotations_and_last_seen() {
    assert_same_bytes(DeviceKind::Plug, None, "no reading");
}

#[test]
fn entries_come_out_sorted_and_the_last_of_a_key_wins() {
    let mut w = StateJson::default();
    w.entry("b", &1).expect("entry");
    w.entry("a", "x").expect("entry");
    w.entry("b", &2).expect("entry");
    w.fields(&object(json!({ "c": null, "a": "y" })))
        .expect("map");
    assert_eq!(w.finish().expect("written"), r#"{"a":"y","b":2,"c":null}"#);
    assert_eq!(StateJson::default().finish().expect("written"), "{}");
}

#[test]
fn keys_sharing_or_ending_within_eight_bytes_sort_as_the_map_does() {
    // Prefixes equal over eight bytes, keys shorter than eight bytes
    // (zero-padded), a key that is a prefix of another, bytes above 0x7f
    // and the escaped ones.
    let keys = [
        "cell_01_voltage",
        "cell_01_resistance",
        "cell_01_",
        "cell_01",
        "cell_0",
        "cell",
        "",
        "a",
        "a\u{0}",
        "a\u{1}b",
        "a\"",
        "a\\",
        "a/",
        "a\u{7f}",
        "\u{e9}",
        "\u{ffff}",
        "\u{10000}",
        "zzzzzzzzz",
        "zzzzzzzz",
        "zzzzzzzza",
    ];
    let mut map = Map::new();
    let mut w = StateJson::default();
    for (i, k) in keys.iter().enumerate() {
        map.insert((*k).to_owned(), json!(i));
        w.entry(k, &i).expect("entry");
    }
    // Again in reverse, over the first ones.
    for (i, k) in keys.iter().enumerate().rev() {
        map.insert((*k).to_owned(), json!(i + 100));
        w.entry(k, &(i + 100)).expect("entry");
    }
    assert_eq!(w.finish().expect("written"), Value::Object(map).to_string());
}

#[test]
fn what_is_not_an_object_of_string_keys_is_refused() {
    let mut w = StateJson::default();
    assert!(matches!(
        w.fields(&5u8),
        Err(StateJsonError::NotAnObject("a number"))
    ));
    assert!(matches!(
        w.fields(&[1, 2]),
        Err(StateJsonError::NotAnObject(_))
    ));
    let int_keys: std::collections::BTreeMap<u8, u8> = [(1, 2)].into();
    assert!(matches!(
        w.fields(&int_keys),
        Err(StateJsonError::KeyNotString("a number"))
    ));
}
