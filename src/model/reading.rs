//! What the devices report, typed. Drivers fill these; the registry, the
//! balancer, the alerts and the site totals read their fields; the state
//! object on `<base>/<id>` (docs/DEVICES.md) is their one serialisation,
//! [`Reading::to_state`] (as a map; [`Reading::write_state`] writes the same
//! entries as JSON text without one). Each key a consumer reads is named
//! once, here, as a serde attribute; what only Home Assistant shows (a
//! pack's settings, a register no rule looks at) travels in `details`, in
//! the driver's words.
//!
//! Numbers are stored as published (rounded by the driver to the precision
//! its entities advertise), so the balancer acts on exactly the value Home
//! Assistant shows.

use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use super::state_json::{StateJson, StateJsonError};

/// Display-only values of a device, keyed as in its state object.
pub type Details = Map<String, Value>;

/// One report of a device.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    Pack(Box<PackReading>),
    Inverter(Box<InverterReading>),
    Plug(PlugReading),
}

impl Reading {
    /// The state object (without `last_seen`).
    pub fn to_state(&self) -> Map<String, Value> {
        match self {
            Self::Pack(p) => p.to_state(),
            Self::Inverter(i) => object(&**i),
            Self::Plug(p) => object(p),
        }
    }

    /// Folds a newer report into this one. Packs and inverters report
    /// everything every time; a plug reads its energy counters less often
    /// than its power, so those keep their last value until read again.
    pub fn merge(&mut self, newer: Reading) {
        match (self, newer) {
            (Self::Plug(old), Self::Plug(new)) => old.merge(new),
            (slot, newer) => *slot = newer,
        }
    }

    pub fn pack(&self) -> Option<&PackReading> {
        match self {
            Self::Pack(p) => Some(p),
            _ => None,
        }
    }

    pub fn inverter(&self) -> Option<&InverterReading> {
        match self {
            Self::Inverter(i) => Some(i),
            _ => None,
        }
    }

    pub fn plug(&self) -> Option<&PlugReading> {
        match self {
            Self::Plug(p) => Some(p),
            _ => None,
        }
    }

    /// Adds the state object's entries to `out`: the same entries as
    /// [`Self::to_state`], from the same serde attributes, without the map.
    pub fn write_state(&self, out: &mut StateJson) -> Result<(), StateJsonError> {
        match self {
            Self::Pack(p) => {
                out.fields(&**p)?;
                for (key, v) in p.sensor_entries() {
                    out.entry(key, &v)?;
                }
                Ok(())
            }
            Self::Inverter(i) => out.fields(&**i),
            Self::Plug(p) => out.fields(p),
        }
    }
}

fn object(v: &impl Serialize) -> Map<String, Value> {
    match serde_json::to_value(v) {
        Ok(Value::Object(m)) => m,
        // A struct of numbers, strings and maps always serialises to an
        // object; nothing else can come back.
        _ => Map::new(),
    }
}

/// Whole numbers as integers ("2538", not "2538.0"), as the drivers have
/// always published them; a non-finite number as null.
fn number<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        s.serialize_i64(*v as i64)
    } else if v.is_finite() {
        s.serialize_f64(*v)
    } else {
        s.serialize_none()
    }
}

fn opt_number<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => number(v, s),
        None => s.serialize_none(),
    }
}

/// `"ON"` / `"OFF"`.
mod on_off {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(on: &bool, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if *on { "ON" } else { "OFF" })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        match String::deserialize(d)?.as_str() {
            "ON" => Ok(true),
            "OFF" => Ok(false),
            other => Err(D::Error::custom(format!(
                "state {other:?} is not ON or OFF"
            ))),
        }
    }
}

// ------------------------------------------------------------ plugs

/// What a smart plug reports (Tapo P100/P110, Shelly Gen2+).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlugReading {
    /// The relay.
    #[serde(rename = "state", with = "on_off")]
    pub on: bool,
    #[serde(rename = "power", default, skip_serializing_if = "Option::is_none")]
    pub power_w: Option<f64>,
    #[serde(
        rename = "energy_today",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub energy_today_kwh: Option<f64>,
    #[serde(
        rename = "energy_month",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub energy_month_kwh: Option<f64>,
    /// The device's lifetime counter (Shelly `aenergy.total`).
    #[serde(
        rename = "energy_total",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub energy_total_kwh: Option<f64>,
    #[serde(rename = "voltage", default, skip_serializing_if = "Option::is_none")]
    pub voltage_v: Option<f64>,
    #[serde(rename = "current", default, skip_serializing_if = "Option::is_none")]
    pub current_a: Option<f64>,
    /// The plug's own temperature sensor.
    #[serde(
        rename = "temperature",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub temperature_c: Option<f64>,
    #[serde(default)]
    pub overheated: bool,
    /// The plug's power protection cut the load off.
    #[serde(default)]
    pub overloaded: bool,
    /// Seconds since switched on; null when the plug does not say.
    #[serde(rename = "on_time", default)]
    pub on_time_s: Option<u64>,
    /// WiFi signal; null when the plug does not say.
    #[serde(rename = "rssi", default)]
    pub rssi_dbm: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl PlugReading {
    fn merge(&mut self, new: PlugReading) {
        let keep = |old: Option<f64>, new: Option<f64>| new.or(old);
        *self = PlugReading {
            power_w: keep(self.power_w, new.power_w),
            energy_today_kwh: keep(self.energy_today_kwh, new.energy_today_kwh),
            energy_month_kwh: keep(self.energy_month_kwh, new.energy_month_kwh),
            energy_total_kwh: keep(self.energy_total_kwh, new.energy_total_kwh),
            voltage_v: keep(self.voltage_v, new.voltage_v),
            current_a: keep(self.current_a, new.current_a),
            temperature_c: keep(self.temperature_c, new.temperature_c),
            firmware: new.firmware.or(self.firmware.take()),
            model: new.model.or(self.model.take()),
            ..new
        };
    }
}

// ------------------------------------------------------------ inverters

/// What a hybrid inverter reports. Powers in W; `grid_power` and the port
/// powers + = import, `battery_power` + = discharging.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InverterReading {
    /// The rating, from the identity (absent until it has been read).
    #[serde(
        rename = "rated_power",
        default,
        serialize_with = "opt_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub rated_power_w: Option<f64>,
    /// What the inverter's AC side delivers.
    #[serde(rename = "inverter_power", serialize_with = "number")]
    pub inverter_power_w: f64,
    /// The inverter's own grid terminal.
    #[serde(rename = "grid_port_power", serialize_with = "number")]
    pub grid_port_power_w: f64,
    /// The GEN/AUX port.
    #[serde(rename = "gen_port_power", serialize_with = "number")]
    pub gen_port_power_w: f64,
    /// The house load.
    #[serde(rename = "load_power", serialize_with = "number")]
    pub load_power_w: f64,
    /// At the grid meter.
    #[serde(rename = "grid_power", serialize_with = "number")]
    pub grid_power_w: f64,
    #[serde(rename = "pv_power", serialize_with = "number")]
    pub pv_power_w: f64,
    #[serde(rename = "battery_power", serialize_with = "number")]
    pub battery_power_w: f64,
    #[serde(rename = "battery_soc", serialize_with = "number")]
    pub battery_soc_pct: f64,
    /// The grid relay is closed.
    pub grid_connected: bool,
    /// The fault words as one bit set, F01 = bit 0.
    pub fault_bits: u64,
    /// The active faults' names, `"none"` without any.
    pub faults: String,
    #[serde(flatten)]
    pub details: Details,
}

impl InverterReading {
    /// The keys of the typed fields (a test checks them against the
    /// serialisation).
    pub const KEYS: &[&str] = &[
        "rated_power",
        "inverter_power",
        "grid_port_power",
        "gen_port_power",
        "load_power",
        "grid_power",
        "pv_power",
        "battery_power",
        "battery_soc",
        "grid_connected",
        "fault_bits",
        "faults",
    ];

    /// Sets the display-only values; keys of typed fields are left out
    /// (the typed value is the one published).
    pub fn with_details(mut self, details: Details) -> Self {
        self.details = details
            .into_iter()
            .filter(|(k, _)| !Self::KEYS.contains(&k.as_str()))
            .collect();
        self
    }

    /// PV surplus over the house load, for surplus rules.
    pub fn surplus_w(&self) -> f64 {
        self.pv_power_w - self.load_power_w
    }
}

// ------------------------------------------------------------ packs

/// What a battery pack's BMS reports. Current + = charging.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PackReading {
    #[serde(
        rename = "voltage",
        default,
        serialize_with = "opt_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub voltage_v: Option<f64>,
    #[serde(
        rename = "current",
        default,
        serialize_with = "opt_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub current_a: Option<f64>,
    #[serde(
        rename = "soc",
        default,
        serialize_with = "opt_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub soc_pct: Option<f64>,
    #[serde(
        rename = "soh",
        default,
        serialize_with = "opt_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub soh_pct: Option<f64>,
    /// Cells in series.
    #[serde(default)]
    pub cell_count: u64,
    #[serde(
        rename = "cell_min_voltage",
        default,
        serialize_with = "opt_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub cell_min_voltage_v: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell_min_number: Option<u64>,
    #[serde(
        rename = "cell_max_voltage",
        default,
        serialize_with = "opt_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub cell_max_voltage_v: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell_max_number: Option<u64>,
    #[serde(
        rename = "cell_average_voltage",
        default,
        serialize_with = "opt_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub cell_average_voltage_v: Option<f64>,
    #[serde(
        rename = "cell_delta_voltage",
        default,
        serialize_with = "opt_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub cell_delta_voltage_v: Option<f64>,
    /// The battery's temperature sensors by their number on the BMS; the
    /// MOSFET sensor is not among them.
    #[serde(skip)]
    pub temperatures_c: Vec<(u8, f64)>,
    /// Per cell, by cell number (1 = first).
    #[serde(skip)]
    pub cells: Vec<CellReading>,
    /// What the BMS lets the pack deliver (its settings).
    #[serde(
        rename = "max_discharge_current",
        default,
        serialize_with = "opt_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_discharge_current_a: Option<f64>,
    /// The BMS reports an alarm that needs attention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<bool>,
    /// The alarms' names, `"none"` without any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarms: Option<String>,
    /// Seconds left before the BMS's emergency mode ends; 0 when off.
    #[serde(
        rename = "emergency_countdown",
        default,
        serialize_with = "opt_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub emergency_countdown_s: Option<f64>,
    #[serde(flatten)]
    pub details: Details,
}

/// One cell's values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CellReading {
    pub number: u8,
    pub voltage_v: f64,
    /// The balance wire's resistance; 0 when the BMS does not measure it.
    pub resistance_mohm: f64,
}

/// Packs have at most this many cells in series.
pub const MAX_CELLS: u8 = 32;

macro_rules! cell_keys {
    ($($n:literal),* $(,)?) => {
        const CELL_VOLTAGE: [(&str, &str); MAX_CELLS as usize] =
            [$((concat!("cell_", $n, "_voltage"), concat!("Cell ", $n, " voltage"))),*];
        const CELL_RESISTANCE: [(&str, &str); MAX_CELLS as usize] =
            [$((concat!("cell_", $n, "_resistance"), concat!("Cell ", $n, " wire resistance"))),*];
    };
}

cell_keys!(
    "01", "02", "03", "04", "05", "06", "07", "08", "09", "10", "11", "12", "13", "14", "15", "16",
    "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31", "32",
);

fn cell_entry(
    table: &[(&'static str, &'static str)],
    number: u8,
) -> Option<(&'static str, &'static str)> {
    table.get(usize::from(number).checked_sub(1)?).copied()
}

/// Key and entity name of cell `number`'s voltage; `None` past [`MAX_CELLS`].
pub fn cell_voltage_key(number: u8) -> Option<(&'static str, &'static str)> {
    cell_entry(&CELL_VOLTAGE, number)
}

/// Key and entity name of cell `number`'s wire resistance.
pub fn cell_resistance_key(number: u8) -> Option<(&'static str, &'static str)> {
    cell_entry(&CELL_RESISTANCE, number)
}

/// Key of battery temperature sensor `n`.
pub fn temperature_key(n: u8) -> Option<&'static str> {
    const KEYS: [&str; 5] = [
        "temperature_1",
        "temperature_2",
        "temperature_3",
        "temperature_4",
        "temperature_5",
    ];
    KEYS.get(usize::from(n).checked_sub(1)?).copied()
}

impl PackReading {
    /// The keys of the typed fields that are plain struct fields (the
    /// temperatures and cells add `temperature_<n>`, `cell_<nn>_voltage`
    /// and `cell_<nn>_resistance`).
    pub const KEYS: &[&str] = &[
        "voltage",
        "current",
        "soc",
        "soh",
        "cell_count",
        "cell_min_voltage",
        "cell_min_number",
        "cell_max_voltage",
        "cell_max_number",
        "cell_average_voltage",
        "cell_delta_voltage",
        "max_discharge_current",
        "problem",
        "alarms",
        "emergency_countdown",
    ];

    /// Adds display-only values; keys of typed fields are left out.
    pub fn add_details(&mut self, details: Details) {
        self.details.extend(
            details
                .into_iter()
                .filter(|(k, _)| !Self::KEYS.contains(&k.as_str())),
        );
    }

    pub fn to_state(&self) -> Map<String, Value> {
        let mut m = object(self);
        for (key, v) in self.sensor_entries() {
            m.insert(key.to_owned(), v);
        }
        m
    }

    /// The entries of the temperatures and cells, which are not struct
    /// fields (their keys depend on the sensor's and cell's number), in
    /// the order they go over the struct's: whole numbers as integers, a
    /// non-finite value or a number past the key tables left out. Both
    /// serialisations ([`Self::to_state`], [`Reading::write_state`]) take
    /// them from here.
    fn sensor_entries(&self) -> impl Iterator<Item = (&'static str, Value)> + '_ {
        let put = |key: Option<&'static str>, v: f64| {
            let key = key?;
            let n = serde_json::Number::from_f64(v)?;
            Some(if v.fract() == 0.0 && v.abs() < 9.0e15 {
                (key, Value::from(v as i64))
            } else {
                (key, Value::Number(n))
            })
        };
        let temperatures = self
            .temperatures_c
            .iter()
            .filter_map(move |&(n, t)| put(temperature_key(n), t));
        let cells = self.cells.iter().flat_map(move |c| {
            [
                put(cell_voltage_key(c.number).map(|k| k.0), c.voltage_v),
                put(
                    cell_resistance_key(c.number).map(|k| k.0),
                    c.resistance_mohm,
                ),
            ]
            .into_iter()
            .flatten()
        });
        temperatures.chain(cells)
    }

    /// Reads a state object back (the inverse of [`Self::to_state`]): for
    /// tests and tools that start from published JSON.
    pub fn from_state(state: &Map<String, Value>) -> Result<Self, serde_json::Error> {
        let mut p: PackReading = serde_json::from_value(Value::Object(state.clone()))?;
        let num = |v: Option<Value>| v.and_then(|v| v.as_f64());
        for n in 1..=5 {
            if let Some(t) = temperature_key(n).and_then(|k| num(p.details.remove(k))) {
                p.temperatures_c.push((n, t));
            }
        }
        for n in 1..=MAX_CELLS {
            let v = cell_voltage_key(n).and_then(|k| num(p.details.remove(k.0)));
            let r = cell_resistance_key(n).and_then(|k| num(p.details.remove(k.0)));
            if v.is_some() || r.is_some() {
                p.cells.push(CellReading {
                    number: n,
                    voltage_v: v.unwrap_or(f64::NAN),
                    resistance_mohm: r.unwrap_or(0.0),
                });
            }
        }
        Ok(p)
    }
}

impl Reading {
    /// A state object read back as `kind` reports it (the inverse of
    /// [`Self::to_state`]).
    pub fn from_state(
        kind: super::DeviceKind,
        state: &Map<String, Value>,
    ) -> Result<Self, serde_json::Error> {
        let value = || Value::Object(state.clone());
        Ok(match kind {
            super::DeviceKind::Bms => Self::Pack(Box::new(PackReading::from_state(state)?)),
            super::DeviceKind::Inverter => {
                Self::Inverter(Box::new(serde_json::from_value(value())?))
            }
            super::DeviceKind::Plug => Self::Plug(serde_json::from_value(value())?),
        })
    }
}

#[cfg(test)]
#[path = "reading_tests.rs"]
mod tests;
