//! Every file in `vectors/jkbms/` (real captured frames, expected values
//! from the reference decoders) decodes to its `expected` values within the
//! README's tolerances. The vectors are read in place, never copied here.
//!
//! Every key of every `expected` object is either compared or fails the
//! test as "not checked": nothing is skipped silently. Where a reference
//! publishes a stand-in for "no value" (esphome's −200 °C, its 100 V / −100 V
//! sentinels with no cells, its "20--" date), the rule that maps it to our
//! `None` is spelled out below and counted as a comparison.

use std::fmt::Debug;
use std::path::PathBuf;

use serde_json::{Map, Value};

use super::assembler::Assembler;
use super::cell_info::{CellInfo, is_consistent};
use super::command::{Command, Request, Switch, WriteCommand, WritesEnabled, ack_record};
use super::device_info::DeviceInfo;
use super::frame::{Frame, HEADER, Variant, software_major};
use super::publish::{PackShape, fields};
use super::settings::{Flag32, Settings};
use super::{FrameType, decode_any};
use crate::testing::hex;

fn vectors_dir() -> Option<PathBuf> {
    crate::testing::vectors_dir("jkbms")
}

use crate::testing::json_files;

fn hex_field(v: &Value, key: &str) -> Option<Vec<u8>> {
    v.get(key).and_then(Value::as_str).map(hex)
}

/// README: V/A/Ah ±0.0015, °C ±0.05, W ±0.1; integers and flags exact.
fn tolerance(key: &str) -> f64 {
    if key == "power" {
        0.1
    } else if key.contains("temperature") {
        0.05
    } else {
        0.0015
    }
}

/// Comparisons of one file; failures are collected so that one run shows
/// all of them.
struct Check {
    file: String,
    compared: usize,
    failures: Vec<String>,
}

impl Check {
    fn new(file: &str) -> Self {
        Self {
            file: file.to_owned(),
            compared: 0,
            failures: Vec::new(),
        }
    }

    fn fail(&mut self, key: &str, msg: String) {
        self.failures.push(format!("{}: {key}: {msg}", self.file));
    }

    fn ok(&mut self, pass: bool, key: &str, msg: impl FnOnce() -> String) {
        self.compared += 1;
        if !pass {
            let m = msg();
            self.fail(key, m);
        }
    }

    fn num(&mut self, key: &str, expected: &Value, actual: Option<f64>) {
        let tol = tolerance(key);
        match (expected.as_f64(), actual) {
            (Some(e), Some(a)) => self.ok((e - a).abs() <= tol, key, || {
                format!("expected {e}, got {a} (±{tol})")
            }),
            (None, None) if expected.is_null() => self.ok(true, key, String::new),
            _ => self.ok(false, key, || {
                format!("expected {expected}, got {actual:?}")
            }),
        }
    }

    fn list(&mut self, key: &str, expected: &Value, actual: &[f64]) {
        let Some(e) = expected.as_array() else {
            return self.fail(key, format!("expected a list, got {expected}"));
        };
        self.ok(e.len() == actual.len(), key, || {
            format!("expected {} values, got {}", e.len(), actual.len())
        });
        for (i, (e, a)) in e.iter().zip(actual).enumerate() {
            self.num(&format!("{key}[{i}]"), e, Some(*a));
        }
    }

    fn same<T: PartialEq + Debug>(&mut self, key: &str, expected: T, actual: T) {
        self.ok(expected == actual, key, || {
            format!("expected {expected:?}, got {actual:?}")
        });
    }

    fn boolean(&mut self, key: &str, expected: &Value, actual: Option<bool>) {
        self.same(key, expected.as_bool(), actual);
    }

    fn text(&mut self, key: &str, expected: &Value, actual: &str) {
        self.same(key, expected.as_str(), Some(actual));
    }

    /// A sensor value of "nothing": esphome's stand-ins when we return None.
    fn none<T: Debug>(&mut self, key: &str, actual: Option<T>, why: &str) {
        self.ok(actual.is_none(), key, || {
            format!("expected no value ({why}), got {actual:?}")
        });
    }
}

/// `sw 11.48` in the vector's `device` description.
fn software_from_description(v: &Value) -> Option<u16> {
    let device = v.get("device")?.as_str()?;
    let at = device.find("sw ")?;
    software_major(device.get(at + 3..)?)
}

fn variant_of(v: &Value) -> Variant {
    v["variant"].as_str().unwrap().parse().unwrap()
}

/// When the vector comes with the raw notification bytes around the frame,
/// they go through the assembler (whole and cut like BLE notifications)
/// and must give exactly the frame.
fn check_raw_stream(c: &mut Check, v: &Value, frame: &Frame) {
    let Some(raw) = hex_field(v, "raw_stream_hex") else {
        return;
    };
    let at = raw
        .windows(300)
        .position(|w| w == frame.as_bytes())
        .unwrap_or(usize::MAX);
    c.ok(at != usize::MAX, "raw_stream_hex", || {
        "frame_hex is not inside raw_stream_hex".into()
    });
    let rest = raw.get(at.saturating_add(300)..).unwrap_or_default();
    // A next frame's head must be kept; a ready record or AT text dropped.
    let kept = if rest.starts_with(&HEADER) {
        rest.len()
    } else {
        0
    };
    for pattern in [&[usize::MAX][..], &[20], &[128, 22], &[1], &[131, 13, 7]] {
        let mut a = Assembler::new();
        let mut out = Vec::new();
        let mut rest = &raw[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = pattern[i % pattern.len()].min(rest.len());
            a.push(&rest[..n]);
            out.extend(std::iter::from_fn(|| a.next_frame()));
            rest = &rest[n..];
            i += 1;
        }
        c.same(
            &format!("raw_stream_hex frames (cut {pattern:?})"),
            vec![frame.clone()],
            out,
        );
        c.same(
            &format!("raw_stream_hex bytes kept (cut {pattern:?})"),
            kept,
            a.buffered(),
        );
    }
    let json = decode_any(&raw, Some(variant_of(v))).unwrap();
    c.same("raw_stream_hex via decode_any", 1, json.len());
    c.same("raw_stream_hex error", None, json[0].get("error"));
}

fn check_cell_info(c: &mut Check, v: &Value, frame: &Frame) {
    let variant = variant_of(v);
    let companion = hex_field(v, "companion_device_info_hex")
        .map(|b| DeviceInfo::decode(&Frame::new(&b).unwrap()).unwrap());
    let sw = companion
        .as_ref()
        .and_then(DeviceInfo::software_major)
        .or_else(|| software_from_description(v));
    c.ok(sw.is_some(), "software version", || "none found".into());
    let info = CellInfo::decode(frame, variant, sw).unwrap();
    let expected = v["expected"].as_object().unwrap();
    let no_cells = expected.get("cell_count").and_then(Value::as_u64) == Some(0);
    let presence = expected
        .get("temperature_sensor_presence_mask")
        .and_then(Value::as_u64);
    let stats = info.stats();
    let t = info.temperatures;

    for (key, e) in expected {
        let k = key.as_str();
        match k {
            "enabled_cells_mask" => c.num(k, e, info.enabled_cells_mask.map(f64::from)),
            "cell_count" => c.num(k, e, Some(info.cells.len() as f64)),
            "cell_voltages" => {
                let vs: Vec<f64> = info.cells.iter().map(|x| x.voltage).collect();
                c.list(k, e, &vs);
            }
            "cell_resistances" => {
                // Expected in Ω, ours in mΩ.
                let rs: Vec<f64> = info.cells.iter().map(|x| x.resistance / 1000.0).collect();
                c.list(k, e, &rs);
            }
            "min_cell_voltage"
            | "max_cell_voltage"
            | "min_voltage_cell"
            | "max_voltage_cell"
            | "delta_cell_voltage"
            | "average_cell_voltage" => {
                let actual = stats.map(|s| match k {
                    "min_cell_voltage" => s.min_voltage,
                    "max_cell_voltage" => s.max_voltage,
                    "min_voltage_cell" => f64::from(s.min_cell),
                    "max_voltage_cell" => f64::from(s.max_cell),
                    "delta_cell_voltage" => s.delta_voltage,
                    _ => s.average_voltage,
                });
                if no_cells {
                    // esphome's initial min 100 V / max 0 V / delta −100 V
                    // / cell 0 or 1 / average null when no cell reports.
                    c.none(k, actual, "no cell reports a voltage");
                } else {
                    c.num(k, e, actual);
                }
            }
            "delta_cell_voltage_frame" => c.num(k, e, info.bms_delta_cell_voltage),
            "total_voltage" => c.num(k, e, Some(info.pack_voltage)),
            "current" => c.num(k, e, info.current),
            "power" => c.num(k, e, info.power()),
            "mosfet_temperature" | "temperature_1" | "temperature_2" | "temperature_at_254"
            | "temperature_at_256" | "temperature_at_258" => {
                let (actual, bit, min_sw) = match (k, variant) {
                    ("mosfet_temperature", Variant::Jk02_24s) => (t.mosfet, 2, 0),
                    ("temperature_1", Variant::Jk02_24s) => (t.t1, 0, 0),
                    ("temperature_2", Variant::Jk02_24s) => (t.t2, 1, 0),
                    ("mosfet_temperature", _) => (t.mosfet, 0, 0),
                    ("temperature_1", _) => (t.t1, 1, 0),
                    ("temperature_2", _) => (t.t2, 2, 0),
                    ("temperature_at_254", _) => (t.t3, 3, 11),
                    ("temperature_at_256", _) => (t.t4, 4, 14),
                    _ => (t.t5, 5, 14),
                };
                let fitted = presence.is_none_or(|m| m & (1 << bit) != 0);
                let filled = sw.is_some_and(|s| s >= min_sw);
                if e.as_f64() == Some(-200.0) {
                    c.none(k, actual, "−200 °C = sensor not fitted");
                } else if !fitted {
                    c.none(k, actual, "presence bit clear");
                } else if !filled && e.as_f64() == Some(0.0) {
                    c.none(k, actual, "firmware leaves these bytes 0");
                } else {
                    c.num(k, e, actual);
                }
            }
            "temperature_sensor_presence_mask" => {
                c.num(k, e, info.temperature_presence_mask.map(f64::from))
            }
            "temperatures_present_aiobmsble" => {
                // aiobmsble's order: 32S MOS, T1, T2, @254, @256, @258;
                // 24S T1, T2, MOS.
                let order = if variant == Variant::Jk02_24s {
                    vec![t.t1, t.t2, t.mosfet]
                } else {
                    vec![t.mosfet, t.t1, t.t2, t.t3, t.t4, t.t5]
                };
                let present: Vec<f64> = order.into_iter().flatten().collect();
                c.list(k, e, &present);
            }
            "errors_bitmask" => c.num(k, e, info.alarms.map(|a| f64::from(a.bits()))),
            "errors" => {
                let names = info.alarms.map(|a| a.names()).unwrap_or_default();
                let expected: Vec<String> = e
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap().to_owned())
                    .collect();
                c.same(k, expected, names);
            }
            "problem_code_aiobmsble" => {
                c.num(k, e, info.alarms.map(|a| f64::from(a.bits() & 0xFFFF)))
            }
            "balancing_current" => c.num(k, e, Some(info.balancing_current)),
            "balancer_status" => c.num(k, e, Some(f64::from(info.balancer.byte()))),
            "balancing" => c.boolean(k, e, Some(info.balancer.active())),
            "soc" => c.num(k, e, info.soc.map(f64::from)),
            "soh" => c.num(k, e, info.soh.map(f64::from)),
            "remaining_capacity" => c.num(k, e, info.remaining_capacity),
            "full_charge_capacity" => c.num(k, e, info.full_charge_capacity),
            "cycle_count" => c.num(k, e, info.cycle_count.map(f64::from)),
            "total_cycle_capacity" => c.num(k, e, info.total_cycle_capacity),
            "total_runtime_s" => c.num(k, e, Some(f64::from(info.uptime_s))),
            "charging_mosfet" => c.boolean(k, e, info.charging_mosfet),
            "discharging_mosfet" => c.boolean(k, e, info.discharging_mosfet),
            "precharging" => c.boolean(k, e, info.precharging),
            "heating" => c.boolean(k, e, info.heating),
            "heating_current" => c.num(k, e, info.heating_current),
            "charge_status_id" => c.num(k, e, info.charge_status.map(|s| f64::from(s.byte()))),
            "charge_status" => c.same(k, e.as_str(), info.charge_status.map(|s| s.as_str())),
            "battery_mode_aiobmsble" => c.same(
                k,
                e.as_str().map(str::to_owned),
                info.charge_status.map(|s| s.as_str().to_uppercase()),
            ),
            "charge_status_time_elapsed_s" => {
                c.num(k, e, info.charge_status_elapsed_s.map(f64::from))
            }
            "dry_contact_1" => c.boolean(k, e, info.dry_contacts.map(|d| d[0])),
            "dry_contact_2" => c.boolean(k, e, info.dry_contacts.map(|d| d[1])),
            "battery_type_id" => c.num(k, e, info.battery_type.map(|b| f64::from(b.byte()))),
            "emergency_time_countdown_s" => c.num(k, e, info.emergency_countdown_s.map(f64::from)),
            "detail_log_entry_count" => c.num(k, e, info.detail_log_entries.map(f64::from)),
            _ => c.fail(k, "expected key not checked".into()),
        }
    }

    // Variant detection and the pack-voltage cross-check.
    c.same(
        "consistent as own variant",
        true,
        is_consistent(frame, variant),
    );
    if variant == Variant::Jk04 {
        for other in [Variant::Jk02_24s, Variant::Jk02_32s] {
            c.same(
                &format!("JK04 frame as {other}"),
                false,
                is_consistent(frame, other),
            );
        }
    } else {
        c.same(
            "detected from software version",
            Some(variant),
            sw.map(|m| {
                if m >= 11 {
                    Variant::Jk02_32s
                } else {
                    Variant::Jk02_24s
                }
            }),
        );
        if !no_cells {
            for other in Variant::ALL.into_iter().filter(|&o| o != variant) {
                c.same(&format!("as {other}"), false, is_consistent(frame, other));
            }
        }
    }
    if let Some(dev) = hex_field(v, "companion_device_info_hex") {
        let mut stream = dev;
        stream.extend_from_slice(frame.as_bytes());
        let out = decode_any(&stream, None).unwrap();
        let cell = out.iter().find(|o| o["frame"] == "cell_info").unwrap();
        if variant == Variant::Jk04 {
            // Detection says JK02_24S for sw 3.x; the cross-check refuses.
            c.same(
                "JK04 auto-detected",
                Value::Bool(false),
                cell["consistent"].clone(),
            );
            let forced = decode_any(frame.as_bytes(), Some(Variant::Jk04)).unwrap();
            c.same(
                "JK04 configured",
                Value::Bool(true),
                forced[0]["consistent"].clone(),
            );
        } else {
            c.same(
                "decode_any variant",
                Some(variant.as_str()),
                cell["variant"].as_str(),
            );
            c.same(
                "decode_any source",
                Some("device_info"),
                cell["variant_source"].as_str(),
            );
            c.same(
                "decode_any consistent",
                Value::Bool(true),
                cell["consistent"].clone(),
            );
        }
    }

    // The state object: described by the field list, numbers as numbers,
    // per-cell keys for the present cells only.
    let map = info.to_map();
    let shape = PackShape::of(&info);
    let specs = fields(&shape);
    for (key, value) in &map {
        c.ok(specs.iter().any(|f| f.key == key), key, || {
            "state key missing from fields()".into()
        });
        c.ok(!value.is_null(), key, || "null in state".into());
    }
    // And the other way round: every key discovery advertises for this
    // pack is in the state object the task publishes (Home Assistant logs a
    // template warning for each one missing, on every message), with and
    // without a settings frame.
    for settings in [Map::new(), Settings::example(info.variant).state_map()] {
        let state =
            super::task::pack_reading(&info, &settings, &Default::default(), &Default::default())
                .to_state();
        for f in super::task::pack_fields(&super::task::pack_shape(&info, &settings)) {
            c.ok(state.contains_key(f.key), f.key, || {
                format!(
                    "advertised but missing from the state object (settings: {})",
                    !settings.is_empty()
                )
            });
        }
    }
    let per_cell = map
        .keys()
        .filter(|k| k.starts_with("cell_") && k.ends_with("_voltage") && k.len() == 15)
        .count();
    c.same("per-cell voltage keys", info.cells.len(), per_cell);
    for temp in ["temperature_4", "temperature_5"] {
        if let Some(x) = map.get(temp) {
            c.ok(x.as_f64() != Some(-200.0), temp, || "-200 published".into());
        }
    }
}

fn check_device_info(c: &mut Check, v: &Value, frame: &Frame) {
    let d = DeviceInfo::decode(frame).unwrap();
    let variant = variant_of(v);
    for (key, e) in v["expected"].as_object().unwrap() {
        let k = key.as_str();
        match k {
            "vendor_id" => c.text(k, e, &d.model),
            "hardware_version" => c.text(k, e, &d.hardware_version),
            "software_version" => c.text(k, e, &d.software_version),
            "uptime_s" => c.num(k, e, Some(f64::from(d.uptime_s))),
            "power_on_count" => c.num(k, e, Some(f64::from(d.power_on_count))),
            "device_name" => c.text(k, e, &d.device_name),
            "device_passcode" => c.text(k, e, d.device_passcode.expose()),
            "setup_passcode" => c.text(k, e, d.setup_passcode.expose()),
            "user_data" => c.text(k, e, &d.user_data),
            "manufacturing_date" => {
                if e.as_str() == Some("20--") {
                    // esphome formats an empty date field as "20--".
                    c.none(k, d.manufacturing_date(), "empty date field");
                } else {
                    c.same(k, e.as_str().map(str::to_owned), d.manufacturing_date());
                }
            }
            "serial_number" => c.text(k, e, &d.serial_number),
            "serial_number_esphome_11chars" => {
                let ours: String = d.serial_number.chars().take(11).collect();
                c.text(k, e, &ours);
            }
            "aiobmsble_device_info" => {
                let a = e.as_object().unwrap();
                for (ak, ae) in a {
                    let name = format!("{k}.{ak}");
                    match ak.as_str() {
                        "model" => c.text(&name, ae, &d.model),
                        "hw_version" => c.text(&name, ae, &d.hardware_version),
                        "sw_version" => c.text(&name, ae, &d.software_version),
                        "name" => c.text(&name, ae, &d.device_name),
                        // aiobmsble cuts the serial to 8 characters.
                        "serial_number" => {
                            let s = ae.as_str().unwrap_or("<none>");
                            c.ok(d.serial_number.starts_with(s), &name, || {
                                format!("{} does not start with {s}", d.serial_number)
                            });
                        }
                        _ => c.fail(&name, "expected key not checked".into()),
                    }
                }
            }
            _ => c.fail(k, "expected key not checked".into()),
        }
    }
    // JK04 cannot be detected: its sw 3.x reads as JK02_24S.
    let detected = if variant == Variant::Jk04 {
        Variant::Jk02_24s
    } else {
        variant
    };
    c.same("detected variant", Some(detected), d.detected_variant());
    let json = d.to_json().to_string();
    c.ok(!json.contains("passcode"), "to_json", || json.clone());
}

fn check_settings(c: &mut Check, v: &Value, frame: &Frame) {
    let variant = variant_of(v);
    let s = Settings::decode(frame, variant).unwrap();
    let expected = v["expected"].as_object().unwrap();
    match &s {
        Settings::Jk04(s) => {
            for (key, e) in expected {
                let k = key.as_str();
                match k {
                    "balance_trigger_voltage" => c.num(k, e, Some(s.balance_trigger_voltage)),
                    "cell_count" => c.num(k, e, Some(f64::from(s.cell_count))),
                    "balancing_start_voltage" => c.num(k, e, Some(s.balance_start_voltage)),
                    "voltage_calibration" => c.num(k, e, Some(s.voltage_calibration)),
                    "power_off_voltage" => c.num(k, e, Some(s.power_off_voltage)),
                    "max_balance_current" => c.num(k, e, Some(s.max_balance_current)),
                    "balancer" => c.boolean(k, e, Some(s.balancer_enabled)),
                    _ => c.fail(k, "expected key not checked".into()),
                }
            }
        }
        Settings::Jk02(s) => {
            let x = s.extra;
            let flag = |f: Flag32| x.map(|x| x.flag(f));
            let on_off = |f: Flag32| flag(f).map(|b| if b { "ON" } else { "OFF" });
            for (key, e) in expected {
                let k = key.as_str();
                let n = |v: f64| Some(v);
                let u = |v: u32| Some(f64::from(v));
                let x8 = |f: fn(&super::settings::Settings32) -> f64| x.as_ref().map(f);
                match k {
                    "smart_sleep_voltage" => c.num(k, e, n(s.smart_sleep_voltage)),
                    "balance_trigger_voltage" => c.num(k, e, n(s.balance_trigger_voltage)),
                    "cell_soc100_voltage" => c.num(k, e, n(s.soc_100_voltage)),
                    "cell_soc0_voltage" => c.num(k, e, n(s.soc_0_voltage)),
                    "cell_request_charge_voltage" => c.num(k, e, n(s.request_charge_voltage)),
                    "cell_request_float_voltage" => c.num(k, e, n(s.request_float_voltage)),
                    "cell_count" => c.num(k, e, n(f64::from(s.cell_count))),
                    "total_battery_capacity" => c.num(k, e, n(s.nominal_capacity)),
                    "cell_voltage_overvoltage_protection" => {
                        c.num(k, e, n(s.cell_overvoltage_protection))
                    }
                    "cell_voltage_overvoltage_recovery" => {
                        c.num(k, e, n(s.cell_overvoltage_recovery))
                    }
                    "cell_voltage_undervoltage_protection" => {
                        c.num(k, e, n(s.cell_undervoltage_protection))
                    }
                    "cell_voltage_undervoltage_recovery" => {
                        c.num(k, e, n(s.cell_undervoltage_recovery))
                    }
                    "balancing_start_voltage" => c.num(k, e, n(s.balance_start_voltage)),
                    "power_off_voltage" => c.num(k, e, n(s.power_off_voltage)),
                    "max_balance_current" => c.num(k, e, n(s.max_balance_current)),
                    "max_charge_current" => c.num(k, e, n(s.max_charge_current)),
                    "max_discharge_current" => c.num(k, e, n(s.max_discharge_current)),
                    "charge_overcurrent_protection_delay" => {
                        c.num(k, e, u(s.charge_overcurrent_delay_s))
                    }
                    "charge_overcurrent_protection_recovery_time" => {
                        c.num(k, e, u(s.charge_overcurrent_recovery_s))
                    }
                    "discharge_overcurrent_protection_delay" => {
                        c.num(k, e, u(s.discharge_overcurrent_delay_s))
                    }
                    "discharge_overcurrent_protection_recovery_time" => {
                        c.num(k, e, u(s.discharge_overcurrent_recovery_s))
                    }
                    "short_circuit_protection_delay" => c.num(k, e, u(s.short_circuit_delay_us)),
                    "short_circuit_protection_recovery_time" => {
                        c.num(k, e, u(s.short_circuit_recovery_s))
                    }
                    "charge_overtemperature_protection" => c.num(k, e, n(s.charge_overtemperature)),
                    "charge_overtemperature_protection_recovery" => {
                        c.num(k, e, n(s.charge_overtemperature_recovery))
                    }
                    "discharge_overtemperature_protection" => {
                        c.num(k, e, n(s.discharge_overtemperature))
                    }
                    "discharge_overtemperature_protection_recovery" => {
                        c.num(k, e, n(s.discharge_overtemperature_recovery))
                    }
                    "charge_undertemperature_protection" => {
                        c.num(k, e, n(s.charge_undertemperature))
                    }
                    "charge_undertemperature_protection_recovery" => {
                        c.num(k, e, n(s.charge_undertemperature_recovery))
                    }
                    "mosfet_overtemperature_protection" => c.num(k, e, n(s.mosfet_overtemperature)),
                    "mosfet_overtemperature_protection_recovery" => {
                        c.num(k, e, n(s.mosfet_overtemperature_recovery))
                    }
                    "discharge_undertemperature_protection" => {
                        c.num(k, e, x8(|x| f64::from(x.discharge_undertemperature)))
                    }
                    "discharge_undertemperature_protection_recovery" => c.num(
                        k,
                        e,
                        x8(|x| f64::from(x.discharge_undertemperature_recovery)),
                    ),
                    "discharge_precharge_time" | "precharge_time_s" => {
                        c.num(k, e, x8(|x| f64::from(x.precharge_time_s)))
                    }
                    "heating_start_temperature" => {
                        c.num(k, e, x8(|x| f64::from(x.heating_start_temperature)))
                    }
                    "heating_stop_temperature" => {
                        c.num(k, e, x8(|x| f64::from(x.heating_stop_temperature)))
                    }
                    "smart_sleep_delay" => c.num(k, e, x8(|x| f64::from(x.smart_sleep_delay_h))),
                    "device_address" => c.num(k, e, x8(|x| f64::from(x.device_address))),
                    "data_field_enable_control_0" => {
                        c.num(k, e, x8(|x| f64::from(x.data_field_enable_control_0)))
                    }
                    "charging" => c.boolean(k, e, Some(s.charging_enabled)),
                    "discharging" => c.boolean(k, e, Some(s.discharging_enabled)),
                    "balancer" => c.boolean(k, e, Some(s.balancer_enabled)),
                    "heating" => c.boolean(k, e, flag(Flag32::Heating)),
                    "disable_temperature_sensors" => {
                        c.boolean(k, e, flag(Flag32::DisableTemperatureSensors))
                    }
                    "display_always_on" => c.boolean(k, e, flag(Flag32::DisplayAlwaysOn)),
                    "smart_sleep" => c.boolean(k, e, flag(Flag32::SmartSleep)),
                    "timed_stored_data" => c.boolean(k, e, flag(Flag32::TimedStoredData)),
                    "disable_pcl_module" => c.boolean(k, e, flag(Flag32::DisablePclModule)),
                    "charging_float_mode" => c.boolean(k, e, flag(Flag32::ChargingFloatMode)),
                    "emergency_button_trigger" => {
                        c.boolean(k, e, flag(Flag32::EmergencyButtonTrigger))
                    }
                    "dry_contact_alarm_intermittent" => {
                        c.boolean(k, e, flag(Flag32::DryContactAlarmIntermittent))
                    }
                    "discharge_overcurrent_protection_2" => {
                        c.boolean(k, e, flag(Flag32::DischargeOvercurrent2))
                    }
                    "discharge_overcurrent_protection_3" => {
                        c.boolean(k, e, flag(Flag32::DischargeOvercurrent3))
                    }
                    "gps_locked_charging" => c.boolean(k, e, flag(Flag32::GpsLockedCharging)),
                    "gps_locked_discharging" => c.boolean(k, e, flag(Flag32::GpsLockedDischarging)),
                    "port_switch" => c.same(
                        k,
                        e.as_str(),
                        flag(Flag32::PortSwitchRs485).map(|b| if b { "RS485" } else { "CAN" }),
                    ),
                    "gps_heartbeat" => c.same(k, e.as_str(), on_off(Flag32::GpsHeartbeat)),
                    "special_charger" => c.same(k, e.as_str(), on_off(Flag32::SpecialCharger)),
                    "connection_wire_resistances" => {
                        let ohms: Vec<f64> =
                            s.wire_resistances.iter().map(|r| r / 1000.0).collect();
                        c.list(k, e, &ohms);
                    }
                    _ => c.fail(k, "expected key not checked".into()),
                }
            }
            c.same("settings re-encode", Ok(s.clone()), {
                let again = Settings::Jk02(s.clone()).encode().unwrap();
                match Settings::decode(&again, variant).unwrap() {
                    Settings::Jk02(j) => Ok(j),
                    other => Err(format!("{other:?}")),
                }
            });
        }
    }
}

/// The 15 esphome-built command frames and 5 official-app captures.
fn check_commands(c: &mut Check, v: &Value) {
    let token = WritesEnabled::user_opted_in();
    for f in v["frames"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap();
        let bytes = hex(f["frame_hex"].as_str().unwrap());
        let register =
            u8::from_str_radix(f["register"].as_str().unwrap().trim_start_matches("0x"), 16)
                .unwrap();
        let length = f["length"].as_u64().unwrap() as usize;
        let value = f["value"].as_u64().unwrap();
        match Command::decode(&bytes) {
            Ok(cmd) => {
                c.same(&format!("{name} register"), register, cmd.register);
                c.same(&format!("{name} length"), length, cmd.payload.len());
                let mut le = [0u8; 8];
                le[..cmd.payload.len().min(8)]
                    .copy_from_slice(&cmd.payload[..cmd.payload.len().min(8)]);
                c.same(&format!("{name} value"), value, u64::from_le_bytes(le));
            }
            Err(e) => c.fail(name, format!("does not decode: {e}")),
        }
        // The frames we can build must match byte for byte.
        let ours: Option<[u8; 20]> = match register {
            0x97 | 0x96 | 0xA1 => Request::from_register(register).map(Request::encode),
            _ => {
                let variant = if register == 0x6C {
                    Variant::Jk04
                } else {
                    Variant::Jk02_32s
                };
                let switch = match register {
                    0x1D => Some(Switch::Charging),
                    0x1E => Some(Switch::Discharging),
                    0x1F | 0x6C => Some(Switch::Balancer),
                    0x27 => Some(Switch::Heating),
                    0x30 => Some(Switch::ChargingFloatMode),
                    _ => None,
                };
                switch.map(|s| {
                    WriteCommand::switch(&token, variant, s, value == 1)
                        .unwrap()
                        .encode()
                })
            }
        };
        if let Some(ours) = ours {
            c.same(&format!("{name} bytes"), bytes.clone(), ours.to_vec());
        }
    }
    let captures = &v["real_captures_from_official_app"];
    for (i, h) in captures["frames_hex"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let decoded = Command::decode(&hex(h.as_str().unwrap()));
        c.ok(decoded.is_ok(), &format!("app capture {i}"), || {
            format!("{decoded:?}")
        });
    }
    let ack = hex(captures["bms_ack_after_each_command_hex"].as_str().unwrap());
    c.same("ack record", ack_record().to_vec(), ack[..20].to_vec());
}

#[test]
fn every_vector_decodes_to_its_expected_values() {
    let Some(dir) = vectors_dir() else {
        return;
    };
    let files = json_files(&dir);
    let (mut compared, mut failures) = (0usize, Vec::new());
    let mut per_type = [0usize; 4];
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let mut c = Check::new(&name);
        if name.starts_with("commands") {
            check_commands(&mut c, &v);
            per_type[3] += 1;
        } else {
            let bytes = hex_field(&v, "frame_hex").unwrap();
            let frame = match Frame::new(&bytes) {
                Ok(f) => f,
                Err(e) => panic!("{name}: frame_hex is not a frame: {e}"),
            };
            check_raw_stream(&mut c, &v, &frame);
            match frame.frame_type() {
                FrameType::CellInfo => {
                    check_cell_info(&mut c, &v, &frame);
                    per_type[0] += 1;
                }
                FrameType::DeviceInfo => {
                    check_device_info(&mut c, &v, &frame);
                    per_type[1] += 1;
                }
                FrameType::Settings => {
                    check_settings(&mut c, &v, &frame);
                    per_type[2] += 1;
                }
                FrameType::Logbook => c.fail("frame_type", "no logbook vectors expected".into()),
            }
            for companion in ["companion_device_info_hex", "companion_settings_hex"] {
                if let Some(b) = hex_field(&v, companion) {
                    c.ok(Frame::new(&b).is_ok(), companion, || "not a frame".into());
                }
            }
        }
        let expected_keys = v
            .get("expected")
            .and_then(Value::as_object)
            .map_or(0, Map::len);
        assert!(
            c.compared > 0,
            "{name}: nothing compared ({expected_keys} expected keys)"
        );
        println!("{name}: {} values compared", c.compared);
        compared += c.compared;
        failures.extend(c.failures);
    }
    println!(
        "jkbms vectors: {} files ({} cell info, {} device info, {} settings, {} commands), {compared} values compared, {} failures",
        files.len(),
        per_type[0],
        per_type[1],
        per_type[2],
        per_type[3],
        failures.len()
    );
    assert!(!files.is_empty(), "no vector files in {}", dir.display());
    assert!(compared > 0);
    assert_eq!(per_type.iter().sum::<usize>(), files.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
