//! What a pack publishes: the discovery description ([`fields`]) and the
//! pack's report ([`CellInfo::reading`], plus
//! [`Settings::state_map`](super::settings::Settings::state_map) and
//! [`AssemblerStats::to_map`](super::assembler::AssemblerStats::to_map)).
//! Both live here so that their keys cannot drift apart; a test checks it.
//!
//! Units: V, A, W, %, Ah, °C, mΩ, s. Current and power > 0 = charging
//! (the BMS's own convention), with `charging_power` / `discharging_power`
//! ≥ 0 for Home Assistant's energy dashboard.

use serde_json::{Map, Value};

use super::cell_info::CellInfo;
use super::frame::Variant;
use crate::model::reading::{
    CellReading, MAX_CELLS, PackReading, cell_resistance_key, cell_voltage_key, temperature_key,
};
use crate::model::{FieldKind, FieldSpec};

/// Rounded to `decimals`; whole numbers as JSON integers ("280", not
/// "280.0"); non-finite as null (callers skip those).
pub fn number(value: f64, decimals: u8) -> Value {
    let v = crate::model::round(value, decimals);
    if !v.is_finite() {
        Value::Null
    } else if v.fract() == 0.0 && v.abs() < 9.0e15 {
        Value::from(v as i64)
    } else {
        serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
    }
}

/// The temperature sensors a pack can report, in JK app numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TempSensor {
    Mosfet,
    T1,
    T2,
    /// JK02_32S @254: mirrors the MOS sensor.
    T3,
    T4,
    T5,
}

impl TempSensor {
    pub const ALL: [TempSensor; 6] = [
        Self::Mosfet,
        Self::T1,
        Self::T2,
        Self::T3,
        Self::T4,
        Self::T5,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Self::Mosfet => "mosfet_temperature",
            t => t.number().and_then(temperature_key).unwrap_or_default(),
        }
    }

    /// The sensor's number on the BMS; the MOSFET sensor has none.
    fn number(self) -> Option<u8> {
        match self {
            Self::Mosfet => None,
            Self::T1 => Some(1),
            Self::T2 => Some(2),
            Self::T3 => Some(3),
            Self::T4 => Some(4),
            Self::T5 => Some(5),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Mosfet => "MOSFET temperature",
            Self::T1 => "Temperature 1",
            Self::T2 => "Temperature 2",
            Self::T3 => "Temperature 3 (mirrors MOSFET)",
            Self::T4 => "Temperature 4",
            Self::T5 => "Temperature 5",
        }
    }

    fn read(self, info: &CellInfo) -> Option<f64> {
        let t = &info.temperatures;
        match self {
            Self::Mosfet => t.mosfet,
            Self::T1 => t.t1,
            Self::T2 => t.t2,
            Self::T3 => t.t3,
            Self::T4 => t.t4,
            Self::T5 => t.t5,
        }
    }
}

/// What decides a pack's entity list: its variant, its cells, its fitted
/// temperature sensors. Republish discovery when it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackShape {
    pub variant: Variant,
    /// Per-cell keys run from cell 1 to this (the highest cell number
    /// present; the enabled mask is contiguous on real packs).
    pub cells: u8,
    pub temperatures: Vec<TempSensor>,
    /// Whether a settings frame has come: its keys are advertised only
    /// then, since a pack that never sends one would leave Home
    /// Assistant's templates rendering keys the state object lacks.
    pub settings: bool,
}

impl PackShape {
    /// The shape of a pack that has sent cell info but (as far as this
    /// says) no settings; see [`Self::with_settings`].
    pub fn of(info: &CellInfo) -> Self {
        Self {
            variant: info.variant,
            cells: info.highest_cell(),
            temperatures: TempSensor::ALL
                .into_iter()
                .filter(|s| s.read(info).is_some())
                .collect(),
            settings: false,
        }
    }

    /// The same shape, with or without the settings frame's keys.
    pub fn with_settings(self, settings: bool) -> Self {
        Self { settings, ..self }
    }
}

fn sensor(key: &'static str, name: &'static str) -> FieldSpec {
    FieldSpec::sensor(key, name)
}

fn measured(
    key: &'static str,
    name: &'static str,
    unit: &'static str,
    device_class: Option<&'static str>,
    precision: u8,
) -> FieldSpec {
    FieldSpec {
        unit: Some(unit),
        device_class,
        state_class: Some("measurement"),
        precision: Some(precision),
        ..sensor(key, name)
    }
}

fn binary(key: &'static str, name: &'static str, device_class: Option<&'static str>) -> FieldSpec {
    FieldSpec {
        device_class,
        kind: FieldKind::Binary,
        ..sensor(key, name)
    }
}

fn diagnostic(f: FieldSpec) -> FieldSpec {
    FieldSpec {
        diagnostic: true,
        ..f
    }
}

/// Every key the state object of a pack of this shape can hold.
pub fn fields(shape: &PackShape) -> Vec<FieldSpec> {
    let jk02 = shape.variant != Variant::Jk04;
    let ext = shape.variant == Variant::Jk02_32s;
    let volts = |k, n, p| measured(k, n, "V", Some("voltage"), p);
    let amps = |k, n| measured(k, n, "A", Some("current"), 2);
    let watts = |k, n| measured(k, n, "W", Some("power"), 0);
    let amp_hours = |k, n| measured(k, n, "Ah", None, 1);

    let mut out = vec![volts("voltage", "Voltage", 2)];
    if jk02 {
        out.extend([
            amps("current", "Current"),
            watts("power", "Power"),
            watts("charging_power", "Charging power"),
            watts("discharging_power", "Discharging power"),
            measured("soc", "State of charge", "%", Some("battery"), 0),
            measured("soh", "State of health", "%", None, 0),
            amp_hours("remaining_capacity", "Remaining capacity"),
            amp_hours("full_charge_capacity", "Full charge capacity"),
            FieldSpec {
                state_class: Some("total_increasing"),
                precision: Some(0),
                ..sensor("cycle_count", "Cycles")
            },
            FieldSpec {
                state_class: Some("total_increasing"),
                ..amp_hours("total_cycle_capacity", "Total cycle capacity")
            },
        ]);
    }
    out.push(diagnostic(sensor("cell_count", "Cell count")));
    // A pack that reports no cells (a cell-count alarm) has no statistics
    // over them: advertising the keys anyway would leave Home Assistant
    // rendering keys the state object lacks.
    if shape.cells > 0 {
        out.extend([
            volts("cell_min_voltage", "Lowest cell voltage", 3),
            volts("cell_max_voltage", "Highest cell voltage", 3),
            diagnostic(sensor("cell_min_number", "Lowest cell")),
            diagnostic(sensor("cell_max_number", "Highest cell")),
            volts("cell_average_voltage", "Average cell voltage", 3),
            volts("cell_delta_voltage", "Cell voltage delta", 3),
        ]);
    }
    for n in 1..=shape.cells {
        if let Some((key, name)) = cell_voltage_key(n) {
            out.push(volts(key, name, 3));
        }
    }
    for n in 1..=shape.cells {
        if let Some((key, name)) = cell_resistance_key(n) {
            // Mostly static and many: diagnostic and disabled until the
            // user wants them.
            out.push(FieldSpec {
                disabled_by_default: true,
                ..diagnostic(measured(key, name, "mΩ", None, 0))
            });
        }
    }
    for &t in &shape.temperatures {
        let f = measured(t.key(), t.name(), "°C", Some("temperature"), 1);
        out.push(if t == TempSensor::T3 {
            diagnostic(f)
        } else {
            f
        });
    }
    out.extend([
        measured(
            "balancing_current",
            "Balancing current",
            "A",
            Some("current"),
            3,
        ),
        binary("balancing", "Balancing", Some("running")),
        sensor("balancer_state", "Balancer state"),
    ]);
    if jk02 {
        out.extend([
            binary("charging_mosfet", "Charging MOSFET", None),
            binary("discharging_mosfet", "Discharging MOSFET", None),
            sensor("alarms", "Alarms"),
            diagnostic(sensor("alarm_bits", "Alarm bits")),
            binary("problem", "Problem", Some("problem")),
        ]);
    }
    if ext {
        out.extend([
            diagnostic(binary("precharging", "Precharging", None)),
            binary("heating", "Heating", Some("heat")),
            amps("heating_current", "Heating current"),
            sensor("charge_status", "Charge status"),
            diagnostic(FieldSpec {
                unit: Some("s"),
                device_class: Some("duration"),
                ..sensor("emergency_countdown", "Emergency countdown")
            }),
            diagnostic(sensor("battery_type", "Battery type")),
            diagnostic(FieldSpec {
                unit: Some("s"),
                device_class: Some("duration"),
                state_class: Some("measurement"),
                ..sensor("charge_status_elapsed", "Charge status time")
            }),
            diagnostic(binary("dry_contact_1", "Dry contact 1", None)),
            diagnostic(binary("dry_contact_2", "Dry contact 2", None)),
            diagnostic(FieldSpec {
                state_class: Some("total_increasing"),
                ..sensor("detail_log_entries", "Detail log entries")
            }),
        ]);
    }
    out.push(diagnostic(FieldSpec {
        unit: Some("s"),
        device_class: Some("duration"),
        state_class: Some("total_increasing"),
        ..sensor("uptime", "Uptime")
    }));
    // Settings frame subset (Settings::state_map), once one has come.
    if shape.settings && jk02 {
        out.extend([
            diagnostic(FieldSpec {
                state_class: None,
                ..amp_hours("nominal_capacity", "Nominal capacity")
            }),
            diagnostic(FieldSpec {
                state_class: None,
                ..amps("max_charge_current", "Max charge current")
            }),
            diagnostic(FieldSpec {
                state_class: None,
                ..amps("max_discharge_current", "Max discharge current")
            }),
            diagnostic(binary("charging_enabled", "Charging enabled", None)),
            diagnostic(binary("discharging_enabled", "Discharging enabled", None)),
        ]);
    }
    if shape.settings {
        out.push(diagnostic(binary(
            "balancer_enabled",
            "Balancer enabled",
            None,
        )));
    }
    // Assembler counters (AssemblerStats::to_map).
    for (key, name) in [
        ("frames_bad_checksum", "Frames with bad checksum"),
        ("junk_bytes", "Junk bytes"),
    ] {
        out.push(diagnostic(FieldSpec {
            state_class: Some("total_increasing"),
            ..sensor(key, name)
        }));
    }
    out
}

/// Inserts a number unless it is not finite.
fn num(m: &mut Map<String, Value>, key: &str, v: f64, decimals: u8) {
    let v = number(v, decimals);
    if !v.is_null() {
        m.insert(key.to_owned(), v);
    }
}

/// A number as published: rounded, and absent when not finite.
fn rounded(v: f64, decimals: u8) -> Option<f64> {
    number(v, decimals).as_f64()
}

impl CellInfo {
    /// The live part of the pack's state object, as a map (the decoder
    /// CLI and the tests print it).
    pub fn to_map(&self) -> Map<String, Value> {
        self.reading().to_state()
    }

    /// The live part of the pack's report. Fields the variant lacks and
    /// temperature sensors that are not fitted are omitted, never
    /// published as a stand-in number.
    pub fn reading(&self) -> PackReading {
        let stats = self.stats();
        let mut r = PackReading {
            voltage_v: rounded(self.pack_voltage, 3),
            current_a: self.current.and_then(|i| rounded(i, 3)),
            soc_pct: self.soc.map(f64::from),
            soh_pct: self.soh.map(f64::from),
            cell_count: self.cells.len() as u64,
            cell_min_voltage_v: stats.and_then(|s| rounded(s.min_voltage, 4)),
            cell_min_number: stats.map(|s| s.min_cell as u64),
            cell_max_voltage_v: stats.and_then(|s| rounded(s.max_voltage, 4)),
            cell_max_number: stats.map(|s| s.max_cell as u64),
            cell_average_voltage_v: stats.and_then(|s| rounded(s.average_voltage, 4)),
            cell_delta_voltage_v: stats.and_then(|s| rounded(s.delta_voltage, 4)),
            temperatures_c: TempSensor::ALL
                .into_iter()
                .filter_map(|t| Some((t.number()?, rounded(t.read(self)?, 1)?)))
                .collect(),
            cells: self
                .cells
                .iter()
                .filter(|c| c.number <= MAX_CELLS)
                .map(|c| CellReading {
                    number: c.number,
                    voltage_v: rounded(c.voltage, 4).unwrap_or(f64::NAN),
                    resistance_mohm: rounded(c.resistance, 1).unwrap_or(f64::NAN),
                })
                .collect(),
            problem: self.alarms.map(|a| a.problem()),
            alarms: self.alarms.map(|a| {
                let names = a.names();
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            }),
            emergency_countdown_s: self.emergency_countdown_s.map(f64::from),
            ..PackReading::default()
        };
        let m = &mut r.details;
        if let Some(p) = self.power() {
            num(m, "power", p, 2);
            num(m, "charging_power", p.max(0.0), 2);
            num(m, "discharging_power", (-p).max(0.0), 2);
        }
        for (key, v) in [
            ("remaining_capacity", self.remaining_capacity),
            ("full_charge_capacity", self.full_charge_capacity),
            ("total_cycle_capacity", self.total_cycle_capacity),
        ] {
            if let Some(v) = v {
                num(m, key, v, 3);
            }
        }
        if let Some(v) = self.cycle_count {
            m.insert("cycle_count".into(), v.into());
        }
        if let Some(v) = TempSensor::Mosfet.read(self) {
            num(m, TempSensor::Mosfet.key(), v, 1);
        }
        num(m, "balancing_current", self.balancing_current, 3);
        m.insert("balancing".into(), self.balancer.active().into());
        m.insert("balancer_state".into(), self.balancer.as_str().into());
        for (key, v) in [
            ("charging_mosfet", self.charging_mosfet),
            ("discharging_mosfet", self.discharging_mosfet),
            ("precharging", self.precharging),
            ("heating", self.heating),
        ] {
            if let Some(v) = v {
                m.insert(key.into(), v.into());
            }
        }
        if let Some(a) = self.alarms {
            m.insert("alarm_bits".into(), a.bits().into());
        }
        if let Some(v) = self.heating_current {
            num(m, "heating_current", v, 3);
        }
        if let Some(v) = self.charge_status {
            m.insert("charge_status".into(), v.as_str().into());
        }
        if let Some(v) = self.battery_type {
            m.insert("battery_type".into(), v.as_str().into());
        }
        if let Some(v) = self.charge_status_elapsed_s {
            m.insert("charge_status_elapsed".into(), v.into());
        }
        if let Some([dry1, dry2]) = self.dry_contacts {
            m.insert("dry_contact_1".into(), dry1.into());
            m.insert("dry_contact_2".into(), dry2.into());
        }
        if let Some(v) = self.detail_log_entries {
            m.insert("detail_log_entries".into(), v.into());
        }
        m.insert("uptime".into(), self.uptime_s.into());
        r
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::drivers::jkbms::assembler::AssemblerStats;
    use crate::drivers::jkbms::cell_info::{Cell, Temperatures};
    use crate::drivers::jkbms::settings::Settings;

    fn pack(variant: Variant, cells: u8) -> CellInfo {
        let mut m = CellInfo::new(variant);
        m.cells = (1..=cells)
            .map(|n| Cell {
                number: n,
                voltage: 3.3,
                resistance: 55.0,
            })
            .collect();
        m.pack_voltage = 3.3 * f64::from(cells);
        if variant != Variant::Jk04 {
            m.current = Some(-10.0);
            m.temperatures = Temperatures {
                mosfet: Some(30.0),
                t1: Some(20.0),
                ..Temperatures::default()
            };
        }
        m
    }

    #[test]
    fn state_keys_are_all_described_and_unique() {
        for variant in Variant::ALL {
            for cells in [0u8, 1, 8, 16, 24] {
                let info = pack(variant, cells);
                let shape = PackShape::of(&info).with_settings(true);
                let fields = fields(&shape);
                let keys: HashSet<&str> = fields.iter().map(|f| f.key).collect();
                assert_eq!(keys.len(), fields.len(), "duplicate keys");
                let mut state = info.to_map();
                state.extend(Settings::example(variant).state_map());
                state.extend(AssemblerStats::default().to_map());
                for k in state.keys() {
                    assert!(
                        keys.contains(k.as_str()),
                        "{variant} {cells}: {k} undescribed"
                    );
                }
                // Per-cell keys only for the cells present.
                let per_cell = fields
                    .iter()
                    .filter(|f| {
                        f.key.starts_with("cell_")
                            && f.key.ends_with("_voltage")
                            && f.key.len() == "cell_01_voltage".len()
                    })
                    .count();
                assert_eq!(per_cell, usize::from(cells));
            }
        }
    }

    #[test]
    fn the_32s_frames_extra_status_is_published() {
        let mut info = pack(Variant::Jk02_32s, 4);
        info.charge_status_elapsed_s = Some(677);
        info.dry_contacts = Some([false, true]);
        info.detail_log_entries = Some(1083);
        let m = info.to_map();
        assert_eq!(m["charge_status_elapsed"], 677);
        assert_eq!(m["dry_contact_1"], false);
        assert_eq!(m["dry_contact_2"], true);
        assert_eq!(m["detail_log_entries"], 1083);
        let specs = fields(&PackShape::of(&info));
        for key in [
            "charge_status_elapsed",
            "dry_contact_1",
            "dry_contact_2",
            "detail_log_entries",
        ] {
            let f = specs.iter().find(|f| f.key == key).expect(key);
            assert!(f.diagnostic, "{key}");
        }
        // The 24S frame has none of them.
        let m24 = pack(Variant::Jk02_24s, 4).to_map();
        assert!(!m24.contains_key("dry_contact_1"));
        assert!(
            !fields(&PackShape::of(&pack(Variant::Jk02_24s, 4)))
                .iter()
                .any(|f| f.key == "detail_log_entries")
        );
    }

    #[test]
    fn absent_sensors_and_fields_are_omitted() {
        let info = pack(Variant::Jk02_32s, 4);
        let m = info.to_map();
        assert_eq!(m["mosfet_temperature"], 30);
        assert!(!m.contains_key("temperature_2"));
        assert!(!m.contains_key("temperature_4"));
        assert_eq!(m["cell_04_voltage"], 3.3);
        assert!(!m.contains_key("cell_05_voltage"));
        assert_eq!(m["power"], -132);
        assert_eq!(m["discharging_power"], 132);
        assert_eq!(m["charging_power"], 0);
        let shape = PackShape::of(&info);
        assert_eq!(shape.temperatures, [TempSensor::Mosfet, TempSensor::T1]);

        let jk04 = pack(Variant::Jk04, 16).to_map();
        for key in ["current", "power", "soc", "alarms", "mosfet_temperature"] {
            assert!(!jk04.contains_key(key), "{key}");
        }
        assert_eq!(jk04["cell_count"], 16);
    }

    #[test]
    fn field_specs_carry_units_classes_and_diagnostics() {
        let f = fields(&PackShape {
            variant: Variant::Jk02_32s,
            cells: 2,
            temperatures: TempSensor::ALL.to_vec(),
            settings: true,
        });
        let get = |k: &str| *f.iter().find(|x| x.key == k).unwrap();
        assert_eq!(get("voltage").unit, Some("V"));
        assert_eq!(get("current").device_class, Some("current"));
        assert_eq!(get("power").unit, Some("W"));
        assert_eq!(get("soc").device_class, Some("battery"));
        assert_eq!(get("remaining_capacity").unit, Some("Ah"));
        assert_eq!(get("temperature_4").unit, Some("°C"));
        assert_eq!(get("cell_02_resistance").unit, Some("mΩ"));
        assert!(get("cell_02_resistance").diagnostic);
        assert!(get("cell_02_resistance").disabled_by_default);
        assert!(!get("cell_02_voltage").diagnostic);
        assert!(get("temperature_3").diagnostic);
        assert_eq!(get("uptime").unit, Some("s"));
        assert_eq!(get("problem").kind, FieldKind::Binary);
        assert_eq!(
            get("total_cycle_capacity").state_class,
            Some("total_increasing")
        );
        assert!(get("junk_bytes").diagnostic);
    }

    #[test]
    fn number_formats() {
        assert_eq!(number(280.0, 3), Value::from(280));
        assert_eq!(number(3.3080000000000003, 3).to_string(), "3.308");
        assert_eq!(number(-0.0004, 3), Value::from(0));
        assert_eq!(number(f64::NAN, 3), Value::Null);
        assert_eq!(number(f64::INFINITY, 1), Value::Null);
    }
}
