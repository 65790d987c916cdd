use serde_json::{Value, json};

use super::*;
use crate::model::DeviceKind;

fn state(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

#[test]
fn a_pack_state_object_reads_back_to_itself() {
    let s = state(json!({
        "voltage": 53.216, "current": -12.5, "soc": 80, "soh": 100, "cell_count": 2,
        "cell_min_voltage": 3.3, "cell_min_number": 2, "cell_max_voltage": 3.35,
        "cell_max_number": 1, "cell_average_voltage": 3.325, "cell_delta_voltage": 0.05,
        "cell_01_voltage": 3.35, "cell_01_resistance": 55.1,
        "cell_02_voltage": 3.3, "cell_02_resistance": 0,
        "temperature_1": 21.5, "temperature_4": 19, "mosfet_temperature": 30,
        "max_discharge_current": 100, "problem": false, "alarms": "none",
        "emergency_countdown": 0, "balancer_state": "off", "frames_bad_checksum": 0
    }));
    let p = PackReading::from_state(&s).unwrap();
    assert_eq!(p.soc_pct, Some(80.0));
    assert_eq!(p.cell_delta_voltage_v, Some(0.05));
    assert_eq!(p.temperatures_c, [(1, 21.5), (4, 19.0)]);
    assert_eq!(
        p.cells,
        [
            CellReading {
                number: 1,
                voltage_v: 3.35,
                resistance_mohm: 55.1
            },
            CellReading {
                number: 2,
                voltage_v: 3.3,
                resistance_mohm: 0.0
            },
        ]
    );
    // What no rule reads stays in the driver's words.
    assert_eq!(p.details["mosfet_temperature"], json!(30));
    assert_eq!(p.details["balancer_state"], json!("off"));
    // Byte for byte the same object: whole numbers stay integers.
    assert_eq!(
        Value::Object(p.to_state()).to_string(),
        Value::Object(s).to_string()
    );
}

#[test]
fn inverter_numbers_are_published_as_before() {
    let s = state(json!({
        "rated_power": 5000, "inverter_power": 2538, "grid_port_power": -12.5,
        "gen_port_power": 0, "load_power": 520, "grid_power": 300, "pv_power": 1000,
        "battery_power": -450, "battery_soc": 71, "grid_connected": true,
        "fault_bits": 0, "faults": "none", "battery_voltage": 52.31, "running_state": "normal"
    }));
    let r = Reading::from_state(DeviceKind::Inverter, &s).unwrap();
    let i = r.inverter().unwrap();
    assert_eq!(i.inverter_power_w, 2538.0);
    assert_eq!(i.surplus_w(), 480.0);
    assert_eq!(i.details.len(), 2);
    assert_eq!(
        Value::Object(r.to_state()).to_string(),
        Value::Object(s).to_string()
    );
}

#[test]
fn a_plug_keeps_counters_it_did_not_read_this_time() {
    let first = state(json!({
        "state": "ON", "power": 1999.5, "energy_today": 1.25, "energy_month": 30.5,
        "overheated": false, "overloaded": false, "on_time": 60, "rssi": -50,
        "firmware": "1.2.3", "model": "P110"
    }));
    let mut r = Reading::from_state(DeviceKind::Plug, &first).unwrap();
    assert_eq!(Value::Object(r.to_state()), Value::Object(first.clone()));
    // A poll without the energy read and without on_time / rssi.
    r.merge(Reading::Plug(PlugReading {
        on: false,
        power_w: Some(0.0),
        ..PlugReading::default()
    }));
    let s = r.to_state();
    assert_eq!(s["state"], json!("OFF"));
    assert_eq!(s["power"], json!(0.0));
    assert_eq!(s["energy_today"], json!(1.25));
    assert_eq!(s["firmware"], json!("1.2.3"));
    // Said every time: null when the plug does not say.
    assert_eq!(s["on_time"], Value::Null);
    assert_eq!(s["rssi"], Value::Null);
    assert!(!s.contains_key("voltage") && !s.contains_key("energy_total"));
}

#[test]
fn a_bad_plug_state_is_refused() {
    let s = state(json!({"state": "MAYBE"}));
    assert!(Reading::from_state(DeviceKind::Plug, &s).is_err());
}

#[test]
fn cell_keys_stop_at_the_last_cell() {
    assert_eq!(
        cell_voltage_key(1),
        Some(("cell_01_voltage", "Cell 01 voltage"))
    );
    assert_eq!(
        cell_resistance_key(32),
        Some(("cell_32_resistance", "Cell 32 wire resistance"))
    );
    assert_eq!(cell_voltage_key(0), None);
    assert_eq!(cell_voltage_key(33), None);
}

#[test]
fn the_typed_keys_are_those_serialised() {
    let keys = |m: Map<String, Value>| -> Vec<String> { m.keys().cloned().collect() };
    let mut inverter: Vec<String> = keys(object(&InverterReading {
        rated_power_w: Some(1.0),
        ..InverterReading::default()
    }));
    let mut want: Vec<String> = InverterReading::KEYS
        .iter()
        .map(|k| k.to_string())
        .collect();
    inverter.sort();
    want.sort();
    assert_eq!(inverter, want);
    let pack = PackReading {
        voltage_v: Some(1.0),
        current_a: Some(1.0),
        soc_pct: Some(1.0),
        soh_pct: Some(1.0),
        cell_min_voltage_v: Some(1.0),
        cell_min_number: Some(1),
        cell_max_voltage_v: Some(1.0),
        cell_max_number: Some(1),
        cell_average_voltage_v: Some(1.0),
        cell_delta_voltage_v: Some(1.0),
        max_discharge_current_a: Some(1.0),
        problem: Some(false),
        alarms: Some("none".into()),
        emergency_countdown_s: Some(0.0),
        ..PackReading::default()
    };
    let mut got = keys(pack.to_state());
    let mut want: Vec<String> = PackReading::KEYS.iter().map(|k| k.to_string()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // Details never shadow a typed value.
    let mut d = Map::new();
    d.insert("soc".into(), json!(1));
    d.insert("uptime".into(), json!(5));
    let mut p = PackReading::default();
    p.add_details(d.clone());
    assert_eq!(keys(p.details), ["uptime"]);
    let mut d = Map::new();
    d.insert("faults".into(), json!("F18"));
    d.insert("poll_ms".into(), json!(5));
    let i = InverterReading::default().with_details(d);
    assert_eq!(keys(i.details), ["poll_ms"]);
}
