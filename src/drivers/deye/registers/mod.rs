//! The Deye register map as data, its pure decoding, and the plausibility
//! filter that guards the balancer and the energy dashboard against corrupted
//! polls. No I/O here: the poll task reads blocks, fills a [`Registers`] bank
//! and calls [`decode_identity`], [`decode_sample`] and [`check`].
//!
//! Source of truth: `specs/deye-registers.md` / `.csv` (single-phase LV
//! hybrid, SUN-xK-SG01LP1 / SG03LP1 / SG04LP1 / SG05LP1). The three-phase
//! SG04LP3 lives in a different address space; it will be a second
//! [`Family`] value, which is why addresses, blocks and the identity layout
//! are data rather than code.
//!
//! Signs are Home Assistant's, and they are already the registers' own
//! conventions (confirmed by the ha-solarman PR #488 dump), so nothing is
//! negated here: battery power/current (190/191) positive = discharging,
//! grid power (167/169/172) positive = importing, inverter/load power
//! positive = delivering to loads.

use serde_json::Value as Json;
use thiserror::Error;

use crate::model::{FieldKind, FieldSpec};

mod bank;
mod identity;
mod plausibility;
mod sample;
mod single_phase_lv;

pub use bank::{Block, IDENTITY, MODBUS_MAX_BLOCK, Registers, plan};
pub use identity::{FamilyError, Identity, decode_identity, detect_family, identity_fields};
pub use plausibility::{Implausible, Plausibility, check};
pub use sample::{DecodeOptions, RunningState, Sample, Value, decode_sample, fields};
pub use single_phase_lv::{FAULT_NAMES, SINGLE_PHASE_LV, WARNING_NAMES};

/// The most decimal places a register's scale gives (what `round` takes).
const MAX_DECIMALS: u8 = 6;

/// How the raw words of a [`Register`] become a published value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// `raw × scale + offset`.
    Number,
    /// `raw × scale + offset`, but raw 0 means "no sensor" (no battery NTC
    /// reads −100 °C otherwise, StephanJoubert #181): the value is absent.
    Temperature,
    /// Running state enum (reg 59), published as text.
    RunningState,
    /// A bit field, published as a list of names and as the raw number.
    Bits(&'static BitNames),
    /// 1 = true, anything else false (grid relay, reg 194).
    Flag,
}

/// Names for the set bits of a [`Kind::Bits`] register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitNames {
    /// Key of the raw-number companion entity.
    pub raw_key: &'static str,
    pub raw_name: &'static str,
    /// (bit index, name); bits not listed get a generic label.
    pub names: &'static [(u8, &'static str)],
    pub unknown: UnknownBit,
}

/// How a bit without a name is labelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownBit {
    /// "warning bit <n>", n = bit index.
    WarningBit,
    /// "F<n>", Deye's fault code: F(n) is bit n − 1.
    FaultCode,
}

impl BitNames {
    /// Names of the set bits, lowest first.
    pub fn decode(&self, bits: u64) -> Vec<String> {
        set_bits(bits).map(|bit| self.label(bit)).collect()
    }

    /// The set bits' names joined with ", ", or "none".
    pub fn text(&self, bits: u64) -> String {
        if bits == 0 {
            return "none".to_owned();
        }
        self.decode(bits).join(", ")
    }

    fn label(&self, bit: u8) -> String {
        match self.names.iter().find(|(b, _)| *b == bit) {
            Some((_, name)) => (*name).to_owned(),
            None => match self.unknown {
                UnknownBit::WarningBit => format!("warning bit {bit}"),
                UnknownBit::FaultCode => format!("F{}", u16::from(bit) + 1),
            },
        }
    }
}

/// Indices of the set bits, lowest first.
fn set_bits(mut bits: u64) -> impl Iterator<Item = u8> {
    std::iter::from_fn(move || {
        if bits == 0 {
            return None;
        }
        let bit = bits.trailing_zeros() as u8;
        bits &= bits - 1;
        Some(bit)
    })
}

/// Energy counters and how the plausibility filter treats them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    None,
    /// Resets to 0 at the inverter's midnight; never flagged.
    Daily,
    /// Lifetime counter: must not go down or jump by more than 100 kWh.
    Total,
}

/// Which model-dependent scale multiplier of [`DecodeOptions`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Fixed,
    /// Regs 167–178: 10 W units on some SG02LP1 / "AM2" firmware.
    PortPower,
    /// Reg 191: 0.1 A units on the same models.
    BatteryCurrent,
}

/// What a register means to code other than the publisher; the typed fields
/// of [`Sample`] are filled from these, so a second family only has to tag
/// its own addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    None,
    InverterPower,
    GridPortPower,
    GenPortPower,
    LoadPower,
    GridPower,
    ExternalCtPower,
    PvStringPower,
    BatterySoc,
    BatteryPower,
    BatteryTemperature,
    GridRelay,
    RunningState,
    Warnings,
    Faults,
}

/// One published value and where it comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Register {
    /// Key in the state object, short snake_case.
    pub key: &'static str,
    pub name: &'static str,
    /// Addresses, **low word first** (78|80 for the grid import total).
    pub addrs: &'static [u16],
    /// Two's complement over the whole 16/32-bit value.
    pub signed: bool,
    pub scale: f64,
    pub offset: f64,
    pub unit: Option<&'static str>,
    pub device_class: Option<&'static str>,
    pub state_class: Option<&'static str>,
    pub diagnostic: bool,
    /// Decimal places of `scale`, precomputed for the decoder.
    pub decimals: u8,
    pub kind: Kind,
    pub counter: Counter,
    pub variant: Variant,
    pub role: Role,
}

impl Register {
    pub const fn new(key: &'static str, name: &'static str, addrs: &'static [u16]) -> Self {
        Self {
            key,
            name,
            addrs,
            signed: false,
            scale: 1.0,
            offset: 0.0,
            unit: None,
            device_class: None,
            state_class: None,
            diagnostic: false,
            decimals: 0,
            kind: Kind::Number,
            counter: Counter::None,
            variant: Variant::Fixed,
            role: Role::None,
        }
    }

    const fn signed(self) -> Self {
        Self {
            signed: true,
            ..self
        }
    }

    const fn diagnostic(self) -> Self {
        Self {
            diagnostic: true,
            ..self
        }
    }

    const fn role(self, role: Role) -> Self {
        Self { role, ..self }
    }

    const fn kind(self, kind: Kind) -> Self {
        Self { kind, ..self }
    }

    const fn variant(self, variant: Variant) -> Self {
        Self { variant, ..self }
    }

    /// Describes this register for discovery. Bit fields describe only the
    /// names entity; [`fields`] adds the raw companion.
    pub fn field_spec(&self) -> FieldSpec {
        let precision = match self.kind {
            Kind::Number | Kind::Temperature => Some(self.decimals),
            _ => None,
        };
        FieldSpec {
            unit: self.unit,
            device_class: self.device_class,
            state_class: self.state_class,
            precision,
            diagnostic: self.diagnostic,
            kind: match self.kind {
                Kind::Flag => FieldKind::Binary,
                _ => FieldKind::Sensor,
            },
            ..FieldSpec::sensor(self.key, self.name)
        }
    }
}

const fn measurement(
    key: &'static str,
    name: &'static str,
    addr: &'static [u16],
    scale: f64,
    unit: &'static str,
    device_class: &'static str,
) -> Register {
    Register {
        scale,
        decimals: decimals_for(scale),
        unit: Some(unit),
        device_class: Some(device_class),
        state_class: Some("measurement"),
        ..Register::new(key, name, addr)
    }
}

const fn power(key: &'static str, name: &'static str, addr: &'static [u16]) -> Register {
    measurement(key, name, addr, 1.0, "W", "power")
}

const fn voltage(
    key: &'static str,
    name: &'static str,
    addr: &'static [u16],
    scale: f64,
) -> Register {
    measurement(key, name, addr, scale, "V", "voltage")
}

const fn current(
    key: &'static str,
    name: &'static str,
    addr: &'static [u16],
    scale: f64,
) -> Register {
    measurement(key, name, addr, scale, "A", "current")
}

const fn frequency(key: &'static str, name: &'static str, addr: &'static [u16]) -> Register {
    measurement(key, name, addr, 0.01, "Hz", "frequency")
}

/// °C = raw × 0.1 − 100 (the spec's "(raw − 1000) × 0.1").
const fn temperature(key: &'static str, name: &'static str, addr: &'static [u16]) -> Register {
    Register {
        offset: -100.0,
        kind: Kind::Temperature,
        ..measurement(key, name, addr, 0.1, "°C", "temperature")
    }
}

/// kWh counters: total_increasing so the HA Energy dashboard accepts them.
/// HA reads any decrease of such a sensor as a meter reset, which is exactly
/// what the daily counters do at the inverter's midnight.
const fn energy(
    key: &'static str,
    name: &'static str,
    addrs: &'static [u16],
    counter: Counter,
) -> Register {
    Register {
        scale: 0.1,
        decimals: 1,
        unit: Some("kWh"),
        device_class: Some("energy"),
        state_class: Some("total_increasing"),
        counter,
        ..Register::new(key, name, addrs)
    }
}

const fn today(key: &'static str, name: &'static str, addr: &'static [u16]) -> Register {
    energy(key, name, addr, Counter::Daily)
}

const fn total(key: &'static str, name: &'static str, addrs: &'static [u16]) -> Register {
    energy(key, name, addrs, Counter::Total)
}

/// Where the static identity values sit (read at start-up and hourly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityLayout {
    pub device_type: u16,
    pub modbus_address: u16,
    pub protocol_version: u16,
    /// ASCII, two characters per register, high byte first.
    pub serial: &'static [u16],
    /// Printed in this order, 4 hex digits each, joined with '-'.
    pub fw_control_board: &'static [u16],
    pub fw_comm_board: &'static [u16],
    /// Bits 8–11 = MPPT count, bits 0–3 = phases.
    pub mppt_phases: u16,
}

/// One inverter family: which registers to read and what they mean.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub models: &'static str,
    /// Values of register 0 that select this family.
    pub device_types: &'static [u16],
    pub identity: Block,
    pub layout: IdentityLayout,
    /// Rated AC output power; the overload limit of the balancer.
    pub rated_power: Register,
    /// Read every poll.
    pub blocks: &'static [Block],
    pub fields: &'static [Register],
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum DecodeError {
    #[error("register {0} was not read")]
    Missing(u16),
    #[error(transparent)]
    Family(#[from] FamilyError),
    #[error("the register map has no {0} field")]
    NoField(&'static str),
    #[error("scale override {0} must be a positive finite number")]
    BadScale(f64),
}

fn word(regs: &Registers, addr: u16) -> Result<u16, DecodeError> {
    match regs.get(addr) {
        Some(w) => Ok(w),
        None => Err(DecodeError::Missing(addr)),
    }
}

/// The words of `addrs`, low word first, as one unsigned number. More than
/// four words cannot fit and are ignored (no register spans more).
fn read_bits(regs: &Registers, addrs: &[u16]) -> Result<u64, DecodeError> {
    let mut bits = 0u64;
    let mut shift = 0;
    for &addr in addrs {
        if shift >= 64 {
            break;
        }
        bits |= u64::from(word(regs, addr)?) << shift;
        shift += 16;
    }
    Ok(bits)
}

fn read_int(regs: &Registers, addrs: &[u16], signed: bool) -> Result<i64, DecodeError> {
    Ok(to_int(read_bits(regs, addrs)?, addrs.len(), signed))
}

fn to_int(bits: u64, words: usize, signed: bool) -> i64 {
    if signed && words > 0 && words < 4 {
        let shift = 64 - 16 * words;
        // Shift the sign bit to the top, then back arithmetically.
        ((bits << shift) as i64) >> shift
    } else {
        bits as i64
    }
}

/// The decimal places a scale produces: 0.1 → 1, 0.01 → 2, 1 or 10 → 0.
/// A plain loop and const so the register table carries it precomputed.
const fn decimals_for(scale: f64) -> u8 {
    let mut x = if scale < 0.0 { -scale } else { scale };
    let mut d = 0;
    while d < MAX_DECIMALS {
        let diff = x - (x + 0.5) as i64 as f64;
        if diff < 1e-9 * (x + 1.0) && diff > -1e-9 * (x + 1.0) {
            return d;
        }
        x *= 10.0;
        d += 1;
    }
    MAX_DECIMALS
}

fn number_json(value: f64) -> Json {
    // Whole numbers as integers: "2538", not "2538.0".
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        Json::from(value as i64)
    } else {
        serde_json::Number::from_f64(value).map_or(Json::Null, Json::Number)
    }
}

#[cfg(test)]
mod tests;
