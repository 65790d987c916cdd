//! Decoding one poll into a [`Sample`], and the discovery descriptions of
//! its keys.

use std::fmt;

use serde_json::{Map, Value as Json};

use super::{
    BitNames, Counter, DecodeError, Family, Kind, Register, Registers, Role, Variant, decimals_for,
    number_json, read_bits, to_int,
};
use crate::model::{FieldSpec, round};

/// Derived values published next to the registers.
const DERIVED_FIELDS: [FieldSpec; 2] = [
    FieldSpec {
        unit: Some("W"),
        device_class: Some("power"),
        state_class: Some("measurement"),
        precision: Some(0),
        ..FieldSpec::sensor("pv_power", "PV power")
    },
    FieldSpec {
        unit: Some("W"),
        device_class: Some("power"),
        state_class: Some("measurement"),
        precision: Some(0),
        ..FieldSpec::sensor("load_port_power", "LOAD port power")
    },
];

/// Register 59.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunningState {
    Standby,
    SelfCheck,
    Normal,
    Alarm,
    Fault,
    Activating,
    Unknown(u16),
}

impl RunningState {
    pub fn from_raw(raw: u16) -> Self {
        match raw {
            0 => Self::Standby,
            1 => Self::SelfCheck,
            2 => Self::Normal,
            3 => Self::Alarm,
            4 => Self::Fault,
            5 => Self::Activating,
            n => Self::Unknown(n),
        }
    }

    /// The published text; `None` for [`RunningState::Unknown`].
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::Standby => "standby",
            Self::SelfCheck => "self-check",
            Self::Normal => "normal",
            Self::Alarm => "alarm",
            Self::Fault => "fault",
            Self::Activating => "activating",
            Self::Unknown(_) => return None,
        })
    }
}

impl fmt::Display for RunningState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self, self.name()) {
            (_, Some(name)) => f.write_str(name),
            (Self::Unknown(n), None) => write!(f, "unknown ({n})"),
            (_, None) => f.write_str("unknown"),
        }
    }
}

/// One published value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// Already rounded to the register's decimals.
    Number(f64),
    Bool(bool),
    /// A raw bit field, published as the number.
    Raw(u64),
    /// Register 59, published as text.
    State(RunningState),
    /// A bit field published as the names of its set bits, or "none". The
    /// text is built when published, not per poll: the balancer never
    /// needs it, and a corrupted poll can set dozens of bits.
    Names {
        bits: u64,
        names: &'static BitNames,
    },
}

impl Value {
    pub fn to_json(&self) -> Json {
        match self {
            Self::Number(x) => number_json(*x),
            Self::Bool(b) => Json::Bool(*b),
            Self::Raw(n) => Json::from(*n),
            Self::State(_) | Self::Names { .. } => Json::String(self.text().unwrap_or_default()),
        }
    }

    /// The text of a state or bit-names value.
    pub fn text(&self) -> Option<String> {
        match self {
            Self::State(state) => Some(state.to_string()),
            Self::Names { bits, names } => Some(names.text(*bits)),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Number(x) => Some(*x),
            _ => None,
        }
    }
}

/// Model/firmware scale variants. Some SUN-12K-SG02LP1 ("AM2" firmware)
/// report regs 167–178 in 10 W and, on the same units, 191 in 0.1 A
/// (ha-solarman's `mod` switches both together; kbialek `deye_sg02lp1`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeOptions {
    /// W per raw unit of regs 167–178: 1 (default) or 10. Reg 191 is
    /// multiplied by the same factor (0.01 A → 0.1 A).
    pub power_scale: f64,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self { power_scale: 1.0 }
    }
}

impl DecodeOptions {
    fn multiplier(&self, variant: Variant) -> f64 {
        match variant {
            Variant::Fixed => 1.0,
            Variant::PortPower | Variant::BatteryCurrent => self.power_scale,
        }
    }

    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.power_scale.is_finite() && self.power_scale > 0.0 {
            Ok(())
        } else {
            Err(DecodeError::BadScale(self.power_scale))
        }
    }
}

/// One poll's decoded values.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Reg 175: inverter AC output, the figure the rating bounds.
    pub inverter_power_w: f64,
    /// Reg 167: the inverter's own grid terminal, + = import.
    pub grid_port_power_w: f64,
    /// Reg 166: GEN/AUX port.
    pub gen_port_power_w: f64,
    /// Reg 178: LOAD port in load mode, whole house in CT mode.
    pub load_power_w: f64,
    /// 175 + 167 − 166: what the LOAD (backup/UPS) port delivers.
    pub load_port_power_w: f64,
    /// Reg 169, + = import.
    pub grid_power_w: f64,
    /// Reg 172; 0 without a CT.
    pub external_ct_power_w: f64,
    /// Sum of the PV strings (186 + 187).
    pub pv_power_w: f64,
    pub pv_string_power_w: Vec<f64>,
    /// Reg 184.
    pub battery_soc: f64,
    /// Reg 190, + = discharging.
    pub battery_power_w: f64,
    /// Reg 182; `None` without a sensor.
    pub battery_temperature_c: Option<f64>,
    /// Reg 194 == 1.
    pub grid_connected: bool,
    pub running_state: RunningState,
    pub warning_bits: u64,
    pub fault_bits: u64,
    /// Everything to publish, in register order, derived values last.
    pub values: Vec<(&'static str, Value)>,
    /// The lifetime counters, for the plausibility filter.
    pub totals: Vec<(&'static str, f64)>,
}

impl Sample {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.values.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub fn number(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    /// The state object; absent values (no temperature sensor) are omitted.
    pub fn to_map(&self) -> Map<String, Json> {
        self.values
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.to_json()))
            .collect()
    }
}

/// `raw × scale + offset`, rounded to the scale's decimals; the model
/// multiplier only touches the registers that vary.
fn scaled(reg: &Register, raw: i64, opts: &DecodeOptions) -> f64 {
    let (scale, decimals) = match reg.variant {
        Variant::Fixed => (reg.scale, reg.decimals),
        variant => {
            let scale = reg.scale * opts.multiplier(variant);
            (scale, decimals_for(scale))
        }
    };
    round(raw as f64 * scale + reg.offset, decimals)
}

/// Collects the typed values while walking the register list.
#[derive(Default)]
struct Typed {
    inverter: Option<f64>,
    grid_port: Option<f64>,
    gen_port: Option<f64>,
    load: Option<f64>,
    grid: Option<f64>,
    external_ct: Option<f64>,
    soc: Option<f64>,
    battery: Option<f64>,
    battery_temperature: Option<f64>,
    grid_relay: Option<bool>,
    running_state: Option<RunningState>,
    warnings: Option<u64>,
    faults: Option<u64>,
    pv_strings: Vec<f64>,
}

impl Typed {
    fn number(&mut self, role: Role, v: f64) {
        let slot = match role {
            Role::InverterPower => &mut self.inverter,
            Role::GridPortPower => &mut self.grid_port,
            Role::GenPortPower => &mut self.gen_port,
            Role::LoadPower => &mut self.load,
            Role::GridPower => &mut self.grid,
            Role::ExternalCtPower => &mut self.external_ct,
            Role::BatterySoc => &mut self.soc,
            Role::BatteryPower => &mut self.battery,
            Role::BatteryTemperature => &mut self.battery_temperature,
            Role::PvStringPower => {
                self.pv_strings.push(v);
                return;
            }
            _ => return,
        };
        *slot = Some(v);
    }
}

fn need<T>(value: Option<T>, key: &'static str) -> Result<T, DecodeError> {
    value.ok_or(DecodeError::NoField(key))
}

/// Decodes one poll. Every register of `family.fields` must be in `regs`;
/// a partial poll is an error rather than a half-filled sample, because the
/// balancer must not act on stale and fresh values mixed.
pub fn decode_sample(
    family: &Family,
    regs: &Registers,
    opts: &DecodeOptions,
) -> Result<Sample, DecodeError> {
    opts.validate()?;
    // Bit fields add a raw companion each, plus the derived values.
    let mut values = Vec::with_capacity(family.fields.len() + 8);
    let mut totals = Vec::with_capacity(8);
    let mut typed = Typed::default();
    for reg in family.fields {
        // One pass without an intermediate enum: the tests run this a
        // million times in a debug build.
        let bits = read_bits(regs, reg.addrs)?;
        match reg.kind {
            Kind::Number | Kind::Temperature => {
                let raw = to_int(bits, reg.addrs.len(), reg.signed);
                if raw == 0 && matches!(reg.kind, Kind::Temperature) {
                    continue;
                }
                let v = scaled(reg, raw, opts);
                if reg.counter == Counter::Total {
                    totals.push((reg.key, v));
                }
                typed.number(reg.role, v);
                values.push((reg.key, Value::Number(v)));
            }
            Kind::RunningState => {
                let state = RunningState::from_raw((bits & 0xFFFF) as u16);
                if reg.role == Role::RunningState {
                    typed.running_state = Some(state);
                }
                values.push((reg.key, Value::State(state)));
            }
            Kind::Bits(names) => {
                match reg.role {
                    Role::Warnings => typed.warnings = Some(bits),
                    Role::Faults => typed.faults = Some(bits),
                    _ => {}
                }
                values.push((reg.key, Value::Names { bits, names }));
                values.push((names.raw_key, Value::Raw(bits)));
            }
            Kind::Flag => {
                let on = bits == 1;
                if reg.role == Role::GridRelay {
                    typed.grid_relay = Some(on);
                }
                values.push((reg.key, Value::Bool(on)));
            }
        }
    }

    let inverter = need(typed.inverter, "inverter_power")?;
    let grid_port = need(typed.grid_port, "grid_port_power")?;
    let gen_port = need(typed.gen_port, "gen_port_power")?;
    // Sunsynk's "essential 1 power": 2538 − 2018 = 520 W in the CT-mode dump.
    let load_port = round(
        inverter + grid_port - gen_port,
        decimals_for(opts.power_scale),
    );
    let pv_power = round(typed.pv_strings.iter().sum(), 0);
    values.push(("pv_power", Value::Number(pv_power)));
    values.push(("load_port_power", Value::Number(load_port)));

    Ok(Sample {
        inverter_power_w: inverter,
        grid_port_power_w: grid_port,
        gen_port_power_w: gen_port,
        load_power_w: need(typed.load, "load_power")?,
        load_port_power_w: load_port,
        grid_power_w: need(typed.grid, "grid_power")?,
        external_ct_power_w: need(typed.external_ct, "external_ct_power")?,
        pv_power_w: pv_power,
        pv_string_power_w: typed.pv_strings,
        battery_soc: need(typed.soc, "battery_soc")?,
        battery_power_w: need(typed.battery, "battery_power")?,
        battery_temperature_c: typed.battery_temperature,
        grid_connected: need(typed.grid_relay, "grid_connected")?,
        running_state: need(typed.running_state, "running_state")?,
        warning_bits: need(typed.warnings, "warnings")?,
        fault_bits: need(typed.faults, "faults")?,
        values,
        totals,
    })
}

/// Every key [`Sample::to_map`] can produce, described for discovery.
pub fn fields(family: &Family) -> Vec<FieldSpec> {
    let mut out = Vec::with_capacity(family.fields.len() + 4);
    for reg in family.fields {
        out.push(reg.field_spec());
        if let Kind::Bits(names) = reg.kind {
            out.push(FieldSpec {
                diagnostic: true,
                ..FieldSpec::sensor(names.raw_key, names.raw_name)
            });
        }
    }
    out.extend(DERIVED_FIELDS);
    out
}
