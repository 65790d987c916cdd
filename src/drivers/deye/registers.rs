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

use std::fmt;

use serde_json::{Map, Value as Json};
use thiserror::Error;

use crate::model::{FieldKind, FieldSpec, round};

/// The most decimal places a register's scale gives (what `round` takes).
const MAX_DECIMALS: u8 = 6;

/// FC03 can return at most 125 registers in one reply (Modbus spec).
pub const MODBUS_MAX_BLOCK: u16 = 125;

/// Registers 0..22, read at start-up and hourly. Family-independent because
/// register 0 picks the family; it also covers the three-phase rated power
/// (20–21).
pub const IDENTITY: Block = Block::new(0, 23);

/// A run of consecutive holding registers read with one FC03 request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Block {
    pub start: u16,
    pub count: u16,
}

impl Block {
    pub const fn new(start: u16, count: u16) -> Self {
        Self { start, count }
    }

    /// One past the last address. `u32` because a block may end at 0x10000.
    pub const fn end(self) -> u32 {
        self.start as u32 + self.count as u32
    }

    pub const fn contains(self, addr: u16) -> bool {
        addr >= self.start && (addr as u32) < self.end()
    }
}

/// Splits `blocks` into requests of at most `max_block` registers. Some
/// sticks time out on large reads (kbialek #141), so the limit is
/// configurable; it is clamped to 1..=125 because 0 would never finish and
/// more than 125 is refused by every Modbus server.
pub fn plan(blocks: &[Block], max_block: u16) -> Vec<Block> {
    let max = u32::from(max_block.clamp(1, MODBUS_MAX_BLOCK));
    let mut out = Vec::new();
    for block in blocks {
        let end = block.end().min(0x1_0000);
        let mut start = u32::from(block.start);
        while start < end {
            let count = (end - start).min(max);
            let (Ok(s), Ok(c)) = (u16::try_from(start), u16::try_from(count)) else {
                break;
            };
            out.push(Block::new(s, c));
            start += count;
        }
    }
    out
}

const ALL_PRESENT: [bool; 128] = [true; 128];

/// A sparse bank of holding-register values, filled from block reads.
/// Dense storage indexed by address: the map only reaches ~200, and the
/// decoder looks registers up one by one, so vectors beat a map.
#[derive(Debug, Clone, Default)]
pub struct Registers {
    words: Vec<u16>,
    present: Vec<bool>,
}

impl Registers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `words` at `start`, `start + 1`, …; words past 0xFFFF are
    /// dropped because no register can hold them.
    pub fn insert_block(&mut self, start: u16, words: &[u16]) {
        let first = usize::from(start);
        let end = (first + words.len()).min(0x1_0000);
        if self.words.len() < end {
            self.words.resize(end, 0);
            self.present.resize(end, false);
        }
        if let (Some(slots), Some(flags), Some(src)) = (
            self.words.get_mut(first..end),
            self.present.get_mut(first..end),
            words.get(..end - first),
        ) {
            slots.copy_from_slice(src);
            // Chunked copies rather than fill(): fill is a per-element loop
            // in debug builds, and the tests insert a million blocks.
            for chunk in flags.chunks_mut(ALL_PRESENT.len()) {
                if let Some(ones) = ALL_PRESENT.get(..chunk.len()) {
                    chunk.copy_from_slice(ones);
                }
            }
        }
    }

    pub fn insert(&mut self, addr: u16, value: u16) {
        self.insert_block(addr, &[value]);
    }

    pub fn remove(&mut self, addr: u16) {
        let i = usize::from(addr);
        if let (Some(word), Some(flag)) = (self.words.get_mut(i), self.present.get_mut(i)) {
            *word = 0;
            *flag = false;
        }
    }

    pub fn get(&self, addr: u16) -> Option<u16> {
        let i = usize::from(addr);
        match (self.present.get(i), self.words.get(i)) {
            (Some(true), Some(&word)) => Some(word),
            _ => None,
        }
    }

    /// Whether every register of `block` holds a value.
    pub fn has_block(&self, block: Block) -> bool {
        (u32::from(block.start)..block.end())
            .all(|a| u16::try_from(a).is_ok_and(|a| self.get(a).is_some()))
    }

    pub fn clear(&mut self) {
        self.words.clear();
        self.present.clear();
    }
}

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

/// Warning bits 101–102 (101 = bits 0–15). Single source (ha-solarman).
pub static WARNING_NAMES: BitNames = BitNames {
    raw_key: "warning_bits",
    raw_name: "Warning bits",
    names: &[
        (1, "fan failure"),
        (2, "grid phase failure"),
        (3, "meter communication failure"),
        (30, "battery loss"),
        (31, "parallel communication"),
    ],
    unknown: UnknownBit::WarningBit,
};

/// Fault bits 103–106 (103 = bits 0–15); Deye code F(n) is bit n − 1.
pub static FAULT_NAMES: BitNames = BitNames {
    raw_key: "fault_bits",
    raw_name: "Fault bits",
    names: &[
        (12, "F13 working mode change"),
        (17, "F18 AC over-current"),
        (19, "F20 DC over-current"),
        (22, "F23 AC leakage current"),
        (23, "F24 DC insulation"),
        (25, "F26 DC busbar imbalance"),
        (28, "F29 parallel communication"),
        (34, "F35 no AC grid"),
        (41, "F42 AC line low voltage"),
        (46, "F47 AC frequency out of range"),
        (55, "F56 DC busbar voltage low"),
        (62, "F63 arc fault"),
        (63, "F64 heat-sink over-temperature"),
    ],
    unknown: UnknownBit::FaultCode,
};

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

/// SUN-xK-SG01LP1 / SG03LP1 / SG04LP1 / SG05LP1 (and the Sunsynk/Sol-Ark
/// single-phase units built on the same hardware).
pub static SINGLE_PHASE_LV: Family = Family {
    name: "single-phase LV hybrid",
    models: "SG01LP1/SG03LP1/SG04LP1/SG05LP1",
    device_types: &[0x0003, 0x0300],
    // 0..22: everything up to the clock's first word; 53 (max solar power)
    // is a setting and not needed.
    identity: IDENTITY,
    layout: IdentityLayout {
        device_type: 0,
        modbus_address: 1,
        protocol_version: 2,
        serial: &[3, 4, 5, 6, 7],
        fw_control_board: &[13, 12, 11],
        fw_comm_board: &[14, 10],
        mppt_phases: 18,
    },
    // SUN-5K reads 50000 -> 5000.0 W.
    rated_power: Register {
        scale: 0.1,
        decimals: 1,
        unit: Some("W"),
        device_class: Some("power"),
        diagnostic: true,
        ..Register::new("rated_power", "Rated power", &[16, 17])
    },
    // Two requests per poll, both well under the FC03 limit.
    blocks: &[Block::new(59, 54), Block::new(150, 45)],
    fields: SINGLE_PHASE_LV_FIELDS,
};

static SINGLE_PHASE_LV_FIELDS: &[Register] = &[
    // Block A, 59..112.
    Register::new("running_state", "Running state", &[59])
        .kind(Kind::RunningState)
        .role(Role::RunningState),
    today("inverter_energy_today", "Inverter energy today", &[60]).signed(),
    total("inverter_energy_total", "Inverter energy total", &[63, 64]).signed(),
    today("battery_charge_today", "Battery charge today", &[70]),
    today("battery_discharge_today", "Battery discharge today", &[71]),
    total("battery_charge_total", "Battery charge total", &[72, 73]),
    total(
        "battery_discharge_total",
        "Battery discharge total",
        &[74, 75],
    ),
    today("grid_import_today", "Grid import today", &[76]),
    today("grid_export_today", "Grid export today", &[77]),
    // 79 is the grid frequency, so the high word sits in 80 (kbialek read
    // 78+79 until PR #254 and published nonsense).
    total("grid_import_total", "Grid import total", &[78, 80]),
    frequency("grid_frequency", "Grid frequency", &[79]),
    total("grid_export_total", "Grid export total", &[81, 82]),
    today("load_energy_today", "Load energy today", &[84]),
    total("load_energy_total", "Load energy total", &[85, 86]),
    temperature("dc_temperature", "DC temperature", &[90]).signed(),
    temperature("heatsink_temperature", "Heat-sink temperature", &[91]).signed(),
    total("pv_energy_total", "PV energy total", &[96, 97]),
    Register::new("warnings", "Warnings", &[101, 102])
        .kind(Kind::Bits(&WARNING_NAMES))
        .role(Role::Warnings)
        .diagnostic(),
    Register::new("faults", "Faults", &[103, 104, 105, 106])
        .kind(Kind::Bits(&FAULT_NAMES))
        .role(Role::Faults)
        .diagnostic(),
    today("pv_energy_today", "PV energy today", &[108]),
    voltage("pv1_voltage", "PV1 voltage", &[109], 0.1),
    current("pv1_current", "PV1 current", &[110], 0.1),
    voltage("pv2_voltage", "PV2 voltage", &[111], 0.1),
    current("pv2_current", "PV2 current", &[112], 0.1),
    // Block B, 150..194.
    voltage("grid_voltage", "Grid voltage", &[150], 0.1),
    voltage("inverter_voltage", "Inverter voltage", &[154], 0.1).diagnostic(),
    voltage("load_voltage", "Load voltage", &[157], 0.1),
    // 160 stays positive while 167 exports (PR #488 dump): currents carry
    // no direction, they are diagnostics only.
    current("grid_current", "Grid current", &[160], 0.01)
        .signed()
        .diagnostic(),
    current("external_ct_current", "External CT current", &[162], 0.01)
        .signed()
        .diagnostic(),
    current("inverter_current", "Inverter current", &[164], 0.01)
        .signed()
        .diagnostic(),
    // The .md says U16, the .csv S16; signed is the safe reading: a
    // negative value read unsigned is the classic 65 kW spike.
    power("gen_port_power", "GEN port power", &[166])
        .signed()
        .role(Role::GenPortPower),
    power("grid_port_power", "Grid port power", &[167])
        .signed()
        .variant(Variant::PortPower)
        .role(Role::GridPortPower),
    power("grid_power", "Grid power", &[169])
        .signed()
        .variant(Variant::PortPower)
        .role(Role::GridPower),
    // Always published: without a CT the register reads 0, and telling
    // "no CT" from "CT reads 0" needs the work-mode setting (244), which is
    // not part of the poll.
    power("external_ct_power", "External CT power", &[172])
        .signed()
        .variant(Variant::PortPower)
        .role(Role::ExternalCtPower),
    power("inverter_power", "Inverter power", &[175])
        .signed()
        .variant(Variant::PortPower)
        .role(Role::InverterPower),
    // 175 + 169 − 166: the LOAD port in "zero export to load" mode, the
    // whole house in "zero export to CT" mode.
    power("load_power", "Load power", &[178])
        .signed()
        .variant(Variant::PortPower)
        .role(Role::LoadPower),
    temperature("battery_temperature", "Battery temperature", &[182])
        .role(Role::BatteryTemperature),
    voltage("battery_voltage", "Battery voltage", &[183], 0.01),
    measurement("battery_soc", "Battery SOC", &[184], 1.0, "%", "battery").role(Role::BatterySoc),
    power("pv1_power", "PV1 power", &[186]).role(Role::PvStringPower),
    power("pv2_power", "PV2 power", &[187]).role(Role::PvStringPower),
    power("battery_power", "Battery power", &[190])
        .signed()
        .role(Role::BatteryPower),
    current("battery_current", "Battery current", &[191], 0.01)
        .signed()
        .variant(Variant::BatteryCurrent),
    frequency("load_frequency", "Load frequency", &[192]),
    frequency("inverter_frequency", "Inverter frequency", &[193]).diagnostic(),
    // device_class "power" renders as "Power detected / No power", which is
    // what the grid relay says; "connectivity" would read like the
    // inverter's own network reachability, which availability covers.
    Register {
        device_class: Some("power"),
        ..Register::new("grid_connected", "Grid connected", &[194])
            .kind(Kind::Flag)
            .role(Role::GridRelay)
    },
];

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

/// Why register 0 does not select a supported family.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FamilyError {
    #[error("device type 0x{code:04X} is a {kind}, not supported yet")]
    Unsupported { code: u16, kind: &'static str },
    #[error("unknown device type 0x{0:04X}")]
    Unknown(u16),
}

/// Picks the family from register 0 (as ha-solarman does).
pub fn detect_family(reg0: u16) -> Result<&'static Family, FamilyError> {
    if SINGLE_PHASE_LV.device_types.contains(&reg0) {
        return Ok(&SINGLE_PHASE_LV);
    }
    let kind = match reg0 {
        0x0005 | 0x0500 => "three-phase LV hybrid (SG04LP3)",
        0x0006 | 0x0601 | 0x0602 => "three-phase HV hybrid",
        0x0002 => "string inverter",
        0x0004 | 0x0400 => "micro-inverter",
        0x0103 => "off-grid inverter",
        0x0104 => "storage inverter",
        // Sunsynk and ha-solarman disagree on this one; refusing is the only
        // safe answer until someone brings a register dump.
        0x0200 => "single-phase LV hybrid with 3 MPPTs or a string inverter (sources disagree)",
        _ => return Err(FamilyError::Unknown(reg0)),
    };
    Err(FamilyError::Unsupported { code: reg0, kind })
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

/// Static facts about one inverter.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub device_type: u16,
    /// [`Family::name`]; `detect_family(device_type)` gives the family.
    pub family: &'static str,
    pub inverter_serial: String,
    pub rated_power_w: f64,
    pub mppts: u8,
    pub phases: u8,
    /// Four nibbles, e.g. 0x0104.
    pub protocol_version: u16,
    pub fw_control_board: String,
    pub fw_comm_board: String,
    pub modbus_address: u16,
}

impl Identity {
    /// A model label for the HA device, e.g. "SUN-5K single-phase LV
    /// hybrid". The SGxx suffix is not in any register, so it is left out
    /// rather than guessed.
    pub fn model_name(&self) -> String {
        let kw = round(self.rated_power_w / 1000.0, 1);
        if kw > 0.0 {
            format!("SUN-{}K {}", number_json(kw), self.family)
        } else {
            format!("Deye {}", self.family)
        }
    }

    /// Values for the keys of [`identity_fields`].
    pub fn to_map(&self) -> Map<String, Json> {
        let mut map = Map::new();
        map.insert(
            "device_type".into(),
            format!("0x{:04X}", self.device_type).into(),
        );
        map.insert("family".into(), self.family.into());
        map.insert(
            "inverter_serial".into(),
            self.inverter_serial.clone().into(),
        );
        map.insert("rated_power".into(), number_json(self.rated_power_w));
        map.insert("mppts".into(), self.mppts.into());
        map.insert("phases".into(), self.phases.into());
        map.insert(
            "protocol_version".into(),
            format!("0x{:04X}", self.protocol_version).into(),
        );
        map.insert(
            "fw_control_board".into(),
            self.fw_control_board.clone().into(),
        );
        map.insert("fw_comm_board".into(), self.fw_comm_board.clone().into());
        map.insert("modbus_address".into(), self.modbus_address.into());
        map
    }
}

/// Discovery descriptions of [`Identity::to_map`]'s keys, all diagnostic.
pub fn identity_fields(family: &Family) -> Vec<FieldSpec> {
    let diag = |key, name| FieldSpec {
        diagnostic: true,
        ..FieldSpec::sensor(key, name)
    };
    vec![
        diag("device_type", "Device type"),
        diag("family", "Family"),
        diag("inverter_serial", "Inverter serial"),
        FieldSpec {
            precision: Some(0),
            ..family.rated_power.field_spec()
        },
        diag("mppts", "MPPTs"),
        diag("phases", "Phases"),
        diag("protocol_version", "Protocol version"),
        diag("fw_control_board", "Control board firmware"),
        diag("fw_comm_board", "Communication board firmware"),
        diag("modbus_address", "Modbus address"),
    ]
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

fn ascii_serial(regs: &Registers, addrs: &[u16]) -> Result<String, DecodeError> {
    let mut bytes = Vec::with_capacity(addrs.len() * 2);
    for &addr in addrs {
        bytes.extend_from_slice(&word(regs, addr)?.to_be_bytes());
    }
    // The serial ends up in MQTT topics and HA unique ids: keep it ASCII.
    let text: String = bytes
        .iter()
        .map(|&b| {
            if b == 0 || b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect();
    Ok(text.trim_matches(|c| c == '\0' || c == ' ').to_owned())
}

fn hex_words(regs: &Registers, addrs: &[u16]) -> Result<String, DecodeError> {
    let mut parts = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        parts.push(format!("{:04X}", word(regs, addr)?));
    }
    Ok(parts.join("-"))
}

/// Decodes the identity block (0..22 for the single-phase family). The
/// family comes from register 0, so an unsupported inverter fails here with
/// a message naming its type.
pub fn decode_identity(regs: &Registers) -> Result<Identity, DecodeError> {
    let device_type = word(regs, 0)?;
    let family = detect_family(device_type)?;
    let layout = &family.layout;
    let rated = &family.rated_power;
    let rated_power_w = round(
        read_int(regs, rated.addrs, rated.signed)? as f64 * rated.scale,
        rated.decimals,
    );
    let mppt_phases = word(regs, layout.mppt_phases)?;
    Ok(Identity {
        device_type,
        family: family.name,
        inverter_serial: ascii_serial(regs, layout.serial)?,
        rated_power_w,
        mppts: ((mppt_phases >> 8) & 0x0F) as u8,
        phases: (mppt_phases & 0x0F) as u8,
        protocol_version: word(regs, layout.protocol_version)?,
        fw_control_board: hex_words(regs, layout.fw_control_board)?,
        fw_comm_board: hex_words(regs, layout.fw_comm_board)?,
        modbus_address: word(regs, layout.modbus_address)?,
    })
}

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

/// Why a sample was dropped.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum Implausible {
    #[error("{field} = {value} W is beyond the plausible {limit} W")]
    Power {
        field: &'static str,
        value: f64,
        limit: f64,
    },
    #[error("battery_soc = {0} % is above 100 %")]
    Soc(f64),
    #[error("{field} went down from {previous} to {value} kWh")]
    CounterDecreased {
        field: &'static str,
        previous: f64,
        value: f64,
    },
    #[error("{field} jumped from {previous} to {value} kWh")]
    CounterJumped {
        field: &'static str,
        previous: f64,
        value: f64,
    },
    #[error("rated power {0} W cannot bound anything; configure it")]
    Rating(f64),
}

/// Bounds for dropping corrupted polls whole (CRC-valid nonsense happens:
/// ha-solarman #471, #581, #822). Only the inverter output is bounded by the
/// rating; everything else gets a physical bound well above it, because a
/// false rejection loses data while these only need to catch garbage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plausibility {
    pub rated_power_w: f64,
    /// |175| ≤ 1.1 × rated: the inverter cannot deliver more (ha-solarman's
    /// own filter).
    pub inverter_limit_w: f64,
    /// PV per string (186/187) and battery (190) ≤ 2 × rated: DC inputs are
    /// oversized at most ~1.3× and the battery current limit (~120–135 A at
    /// ~55 V) lands just above the rating.
    pub dc_limit_w: f64,
    /// Inverter terminals (166, 167, LOAD port) ≤ 4 × rated: on-grid the
    /// pass-through relay carries more than the rating, but its current
    /// limit is well under 4×.
    pub terminal_limit_w: f64,
    /// Meter-side figures (169, 172, 178) ≤ 4 × rated + 10 kW: in CT mode
    /// they include the whole house, bounded only by the supply fuse.
    pub site_limit_w: f64,
    /// A lifetime counter moving more than this between two polls is
    /// corruption (ha-solarman uses the same 100 kWh).
    pub max_counter_step_kwh: f64,
}

impl Plausibility {
    pub fn new(rated_power_w: f64) -> Self {
        Self {
            rated_power_w,
            inverter_limit_w: 1.1 * rated_power_w,
            dc_limit_w: 2.0 * rated_power_w,
            terminal_limit_w: 4.0 * rated_power_w,
            site_limit_w: 4.0 * rated_power_w + 10_000.0,
            max_counter_step_kwh: 100.0,
        }
    }

    /// Checks `sample` against the bounds and against `previous`, the last
    /// accepted sample. Daily counters are not compared: they reset to 0 at
    /// the inverter's midnight. After a long outage a real 100 kWh step is
    /// possible; pass `None` then rather than reject forever.
    pub fn check(&self, sample: &Sample, previous: Option<&Sample>) -> Result<(), Implausible> {
        if !(self.rated_power_w.is_finite() && self.rated_power_w > 0.0) {
            return Err(Implausible::Rating(self.rated_power_w));
        }
        let powers = [
            (
                "inverter_power",
                sample.inverter_power_w,
                self.inverter_limit_w,
            ),
            ("battery_power", sample.battery_power_w, self.dc_limit_w),
            (
                "gen_port_power",
                sample.gen_port_power_w,
                self.terminal_limit_w,
            ),
            (
                "grid_port_power",
                sample.grid_port_power_w,
                self.terminal_limit_w,
            ),
            (
                "load_port_power",
                sample.load_port_power_w,
                self.terminal_limit_w,
            ),
            ("grid_power", sample.grid_power_w, self.site_limit_w),
            (
                "external_ct_power",
                sample.external_ct_power_w,
                self.site_limit_w,
            ),
            ("load_power", sample.load_power_w, self.site_limit_w),
        ];
        for (field, value, limit) in powers {
            if value.is_nan() || value.abs() > limit {
                return Err(Implausible::Power {
                    field,
                    value,
                    limit,
                });
            }
        }
        for &value in &sample.pv_string_power_w {
            if value.is_nan() || value.abs() > self.dc_limit_w {
                return Err(Implausible::Power {
                    field: "pv_string_power",
                    value,
                    limit: self.dc_limit_w,
                });
            }
        }
        if sample.battery_soc.is_nan() || sample.battery_soc > 100.0 {
            return Err(Implausible::Soc(sample.battery_soc));
        }
        let Some(previous) = previous else {
            return Ok(());
        };
        for &(field, value) in &sample.totals {
            let Some(&(_, before)) = previous.totals.iter().find(|(k, _)| *k == field) else {
                continue;
            };
            if value < before {
                return Err(Implausible::CounterDecreased {
                    field,
                    previous: before,
                    value,
                });
            }
            if value - before > self.max_counter_step_kwh {
                return Err(Implausible::CounterJumped {
                    field,
                    previous: before,
                    value,
                });
            }
        }
        Ok(())
    }
}

/// [`Plausibility::check`] with the default bounds for `rated_power_w`.
pub fn check(
    sample: &Sample,
    previous: Option<&Sample>,
    rated_power_w: f64,
) -> Result<(), Implausible> {
    Plausibility::new(rated_power_w).check(sample, previous)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Made-up block A (59..112), one word per register.
    fn block_a() -> Vec<u16> {
        let mut a = vec![0u16; 54];
        let mut set = |addr: usize, v: u16| a[addr - 59] = v;
        set(59, 2);
        set(60, 123);
        set(63, 0x5678);
        set(64, 0x0002);
        set(70, 45);
        set(71, 67);
        set(72, 0x1000);
        set(74, 0xFFFF);
        set(76, 89);
        set(77, 12);
        set(78, 0x1234);
        set(79, 5013);
        set(80, 0x0001);
        set(81, 0x0000);
        set(82, 0x0001);
        set(84, 150);
        set(85, 0x4E20);
        set(90, 1355);
        set(91, 1421);
        set(96, 0x86A0);
        set(97, 0x0001);
        set(101, 0x0002);
        set(102, 0x4000);
        set(103, 0x1001);
        set(105, 0x0004);
        set(108, 87);
        set(109, 3501);
        set(110, 75);
        set(111, 3402);
        set(112, 87);
        a
    }

    /// Block B (150..194) from the PR #488 dump; `ct` picks the column.
    fn block_b(ct: bool) -> Vec<u16> {
        #[rustfmt::skip]
        let table: [(usize, u16, u16); 27] = [
            (150, 2405, 2379), (154, 2405, 2379), (157, 2443, 2420),
            (160, 859, 173), (162, 509, 1187), (164, 1060, 250),
            (167, 63518, 21), (169, 1252, 21), (170, 1252, 3312),
            (172, 1252, 3312), (173, 2538, 555), (175, 2538, 555),
            (176, 3790, 576), (178, 3790, 576), (179, 520, 576),
            (181, 111, 96), (182, 1275, 1275), (183, 5258, 5305),
            (184, 96, 96), (185, 520, 576), (186, 261, 262),
            (187, 295, 297), (190, 2184, 77), (191, 4155, 147),
            (192, 5013, 5016), (193, 5013, 5016), (194, 1, 1),
        ];
        let mut b = vec![0u16; 45];
        for (addr, ct_raw, load_raw) in table {
            b[addr - 150] = if ct { ct_raw } else { load_raw };
        }
        b[152 - 150] = b[0];
        b[156 - 150] = b[0];
        b
    }

    fn bank(ct: bool) -> Registers {
        let mut regs = Registers::new();
        regs.insert_block(59, &block_a());
        regs.insert_block(150, &block_b(ct));
        regs
    }

    fn decode(regs: &Registers) -> Sample {
        decode_sample(&SINGLE_PHASE_LV, regs, &DecodeOptions::default()).expect("decodes")
    }

    fn num(s: &Sample, key: &str) -> f64 {
        s.number(key).unwrap_or_else(|| panic!("{key} missing"))
    }

    fn text(s: &Sample, key: &str) -> String {
        s.get(key)
            .and_then(Value::text)
            .unwrap_or_else(|| panic!("{key} missing"))
    }

    #[test]
    fn ct_mode_dump_decodes_to_documented_values() {
        let s = decode(&bank(true));
        assert_eq!(s.inverter_power_w, 2538.0);
        assert_eq!(s.grid_port_power_w, -2018.0);
        assert_eq!(s.grid_power_w, 1252.0);
        assert_eq!(s.load_power_w, 3790.0);
        assert_eq!(s.load_port_power_w, 520.0);
        assert_eq!(s.external_ct_power_w, 1252.0);
        assert_eq!(s.gen_port_power_w, 0.0);
        assert_eq!(s.pv_power_w, 556.0);
        assert_eq!(s.battery_soc, 96.0);
        assert_eq!(s.battery_power_w, 2184.0);
        assert_eq!(s.battery_temperature_c, Some(27.5));
        assert!(s.grid_connected);
        let expected = [
            ("inverter_power", 2538.0),
            ("grid_port_power", -2018.0),
            ("grid_power", 1252.0),
            ("load_power", 3790.0),
            ("load_port_power", 520.0),
            ("battery_voltage", 52.58),
            ("battery_soc", 96.0),
            ("battery_power", 2184.0),
            ("battery_current", 41.55),
            ("battery_temperature", 27.5),
            ("grid_voltage", 240.5),
            ("inverter_voltage", 240.5),
            ("load_voltage", 244.3),
            ("grid_current", 8.59),
            ("pv1_power", 261.0),
            ("pv2_power", 295.0),
            ("pv_power", 556.0),
            ("load_frequency", 50.13),
            ("inverter_frequency", 50.13),
        ];
        for (key, value) in expected {
            assert_eq!(num(&s, key), value, "{key}");
        }
        assert_eq!(s.get("grid_connected"), Some(&Value::Bool(true)));
    }

    #[test]
    fn load_mode_dump_decodes_to_documented_values() {
        let s = decode(&bank(false));
        assert_eq!(s.inverter_power_w, 555.0);
        assert_eq!(s.grid_port_power_w, 21.0);
        assert_eq!(s.grid_power_w, 21.0);
        assert_eq!(s.load_power_w, 576.0);
        assert_eq!(s.load_port_power_w, 576.0);
        assert_eq!(s.external_ct_power_w, 3312.0);
        assert_eq!(s.pv_power_w, 559.0);
        assert_eq!(num(&s, "battery_voltage"), 53.05);
        assert_eq!(num(&s, "battery_current"), 1.47);
        assert_eq!(num(&s, "battery_power"), 77.0);
        assert_eq!(num(&s, "grid_voltage"), 237.9);
        assert_eq!(num(&s, "load_frequency"), 50.16);
        assert!(s.grid_connected);
    }

    #[test]
    fn block_a_decodes() {
        let s = decode(&bank(true));
        let expected = [
            ("inverter_energy_today", 12.3),
            ("inverter_energy_total", f64::from(0x25678) * 0.1),
            ("battery_charge_today", 4.5),
            ("battery_discharge_today", 6.7),
            ("battery_charge_total", 409.6),
            ("battery_discharge_total", 6553.5),
            ("grid_import_today", 8.9),
            ("grid_export_today", 1.2),
            ("grid_import_total", 7019.6),
            ("grid_frequency", 50.13),
            ("grid_export_total", 6553.6),
            ("load_energy_today", 15.0),
            ("load_energy_total", 2000.0),
            ("dc_temperature", 35.5),
            ("heatsink_temperature", 42.1),
            ("pv_energy_total", 10000.0),
            ("pv_energy_today", 8.7),
            ("pv1_voltage", 350.1),
            ("pv1_current", 7.5),
            ("pv2_voltage", 340.2),
            ("pv2_current", 8.7),
        ];
        for (key, value) in expected {
            assert!(
                (num(&s, key) - value).abs() < 1e-9,
                "{key}: {}",
                num(&s, key)
            );
        }
        assert_eq!(num(&s, "grid_import_total"), 7019.6);
        assert_eq!(s.running_state, RunningState::Normal);
        assert_eq!(
            s.get("running_state"),
            Some(&Value::State(RunningState::Normal))
        );
        assert_eq!(text(&s, "running_state"), "normal");
        assert_eq!(text(&s, "warnings"), "fan failure, battery loss");
        assert_eq!(s.warning_bits, 0x4000_0002);
        assert_eq!(s.get("warning_bits"), Some(&Value::Raw(0x4000_0002)));
        assert_eq!(
            text(&s, "faults"),
            "F1, F13 working mode change, F35 no AC grid"
        );
        let map = s.to_map();
        assert_eq!(
            map.get("warnings"),
            Some(&Json::from("fan failure, battery loss"))
        );
        assert_eq!(map.get("running_state"), Some(&Json::from("normal")));
        assert_eq!(
            map.get("fault_bits"),
            Some(&Json::from(0x0004_0000_1001u64))
        );
        assert_eq!(s.fault_bits, 0x0004_0000_1001);
        let totals: Vec<_> = s.totals.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            totals,
            [
                "inverter_energy_total",
                "battery_charge_total",
                "battery_discharge_total",
                "grid_import_total",
                "grid_export_total",
                "load_energy_total",
                "pv_energy_total"
            ]
        );
    }

    #[test]
    fn u32_is_low_word_first_and_import_total_skips_79() {
        let mut regs = bank(true);
        regs.insert(78, 0x1234);
        regs.insert(79, 4998);
        regs.insert(80, 0x0001);
        regs.insert(72, 0x0001);
        regs.insert(73, 0x0002);
        let s = decode(&regs);
        assert_eq!(num(&s, "grid_import_total"), 7019.6);
        assert_eq!(num(&s, "grid_frequency"), 49.98);
        assert_eq!(num(&s, "battery_charge_total"), 13107.3);
    }

    #[test]
    fn s32_total_is_signed() {
        let mut regs = bank(true);
        regs.insert(63, 0xFFFF);
        regs.insert(64, 0xFFFF);
        assert_eq!(num(&decode(&regs), "inverter_energy_total"), -0.1);
    }

    #[test]
    fn s16_negatives() {
        let mut regs = bank(true);
        regs.insert(190, (-1500i16) as u16);
        regs.insert(191, (-2870i16) as u16);
        regs.insert(169, (-3200i16) as u16);
        regs.insert(175, (-40i16) as u16);
        regs.insert(60, 0xFFFF);
        let s = decode(&regs);
        assert_eq!(s.battery_power_w, -1500.0);
        assert_eq!(num(&s, "battery_current"), -28.7);
        assert_eq!(s.grid_power_w, -3200.0);
        assert_eq!(s.inverter_power_w, -40.0);
        assert_eq!(num(&s, "inverter_energy_today"), -0.1);
    }

    #[test]
    fn temperatures_zero_is_absent_and_negative_works() {
        let mut regs = bank(true);
        regs.insert(182, 0);
        regs.insert(90, 0);
        regs.insert(91, 950);
        let s = decode(&regs);
        assert_eq!(s.battery_temperature_c, None);
        assert_eq!(s.get("battery_temperature"), None);
        assert_eq!(s.get("dc_temperature"), None);
        assert_eq!(num(&s, "heatsink_temperature"), -5.0);
        let map = s.to_map();
        assert!(!map.contains_key("battery_temperature"));
        assert!(!map.contains_key("dc_temperature"));
    }

    #[test]
    fn fault_and_warning_bits() {
        assert_eq!(FAULT_NAMES.decode(1 << 34), ["F35 no AC grid"]);
        assert_eq!(
            FAULT_NAMES.decode(1 << 63),
            ["F64 heat-sink over-temperature"]
        );
        assert_eq!(FAULT_NAMES.decode(1 << 5), ["F6"]);
        assert_eq!(WARNING_NAMES.decode(1 << 5), ["warning bit 5"]);
        assert_eq!(
            WARNING_NAMES.decode(0b1110 | 1 << 31),
            [
                "fan failure",
                "grid phase failure",
                "meter communication failure",
                "parallel communication"
            ]
        );
        let mut regs = bank(true);
        for a in 101..=106 {
            regs.insert(a, 0);
        }
        regs.insert(105, 0x0004);
        let s = decode(&regs);
        assert_eq!(text(&s, "warnings"), "none");
        assert_eq!(text(&s, "faults"), "F35 no AC grid");
        assert_eq!(s.fault_bits, 1 << 34);
    }

    #[test]
    fn running_state_text() {
        let names = [
            "standby",
            "self-check",
            "normal",
            "alarm",
            "fault",
            "activating",
        ];
        for (raw, name) in (0u16..).zip(names) {
            assert_eq!(RunningState::from_raw(raw).to_string(), name);
        }
        assert_eq!(RunningState::from_raw(9).to_string(), "unknown (9)");
    }

    #[test]
    fn off_grid_relay() {
        let mut regs = bank(true);
        regs.insert(194, 0);
        let s = decode(&regs);
        assert!(!s.grid_connected);
        assert_eq!(s.to_map().get("grid_connected"), Some(&Json::Bool(false)));
    }

    #[test]
    fn to_map_rounds_and_types() {
        let mut regs = bank(true);
        regs.insert(70, 3);
        regs.insert(183, 5107);
        let map = decode(&regs).to_map();
        let text = serde_json::to_string(&map).expect("serialises");
        assert!(text.contains("\"battery_charge_today\":0.3"), "{text}");
        assert!(text.contains("\"battery_voltage\":51.07"), "{text}");
        assert!(text.contains("\"inverter_power\":2538,"), "{text}");
        assert!(text.contains("\"grid_connected\":true"), "{text}");
        assert!(text.contains("\"fault_bits\":"), "{text}");
        assert!(!text.contains("0000000"), "{text}");
    }

    #[test]
    fn every_published_key_is_described_and_vice_versa() {
        let specs = fields(&SINGLE_PHASE_LV);
        let map = decode(&bank(true)).to_map();
        let mut spec_keys: Vec<_> = specs.iter().map(|f| f.key).collect();
        let mut map_keys: Vec<_> = map.keys().map(String::as_str).collect();
        spec_keys.sort_unstable();
        map_keys.sort_unstable();
        assert_eq!(spec_keys, map_keys);
        let unique = spec_keys.len();
        spec_keys.dedup();
        assert_eq!(unique, spec_keys.len(), "duplicate keys");
        for required in [
            "pv1_voltage",
            "pv1_current",
            "pv1_power",
            "pv2_voltage",
            "pv2_current",
            "pv2_power",
            "pv_power",
            "battery_soc",
            "battery_voltage",
            "battery_current",
            "battery_power",
            "battery_temperature",
            "grid_voltage",
            "grid_frequency",
            "grid_power",
            "external_ct_power",
            "load_power",
            "load_port_power",
            "inverter_power",
            "grid_connected",
            "dc_temperature",
            "heatsink_temperature",
            "running_state",
            "warnings",
            "faults",
            "pv_energy_today",
            "pv_energy_total",
            "battery_charge_today",
            "battery_charge_total",
            "battery_discharge_today",
            "battery_discharge_total",
            "grid_import_today",
            "grid_import_total",
            "grid_export_today",
            "grid_export_total",
            "load_energy_today",
            "load_energy_total",
        ] {
            assert!(spec_keys.contains(&required), "{required}");
        }
        let spec = |key| specs.iter().find(|f| f.key == key).expect("described");
        let energy = spec("grid_import_total");
        assert_eq!(energy.unit, Some("kWh"));
        assert_eq!(energy.device_class, Some("energy"));
        assert_eq!(energy.state_class, Some("total_increasing"));
        assert_eq!(energy.precision, Some(1));
        let p = spec("battery_power");
        assert_eq!(
            (p.unit, p.device_class, p.state_class),
            (Some("W"), Some("power"), Some("measurement"))
        );
        assert_eq!(spec("grid_connected").kind, FieldKind::Binary);
        assert!(spec("fault_bits").diagnostic);
        assert!(spec("warning_bits").diagnostic);
        assert_eq!(spec("battery_voltage").precision, Some(2));
        assert_eq!(spec("battery_temperature").unit, Some("°C"));
    }

    #[test]
    fn every_address_is_in_a_read_block() {
        let f = &SINGLE_PHASE_LV;
        for reg in f.fields.iter().chain([&f.rated_power]) {
            assert_eq!(reg.decimals, decimals_for(reg.scale), "{}", reg.key);
        }
        assert_eq!(
            [1.0, 10.0, 0.1, 0.01, 0.5, 0.25, 0.001].map(decimals_for),
            [0, 0, 1, 2, 1, 2, 3]
        );
        for reg in f.fields {
            for &addr in reg.addrs {
                assert!(
                    f.blocks.iter().any(|b| b.contains(addr)),
                    "{} {addr}",
                    reg.key
                );
            }
        }
        let l = &f.layout;
        let identity_addrs = [
            l.device_type,
            l.modbus_address,
            l.protocol_version,
            l.mppt_phases,
        ]
        .into_iter()
        .chain(l.serial.iter().copied())
        .chain(l.fw_control_board.iter().copied())
        .chain(l.fw_comm_board.iter().copied())
        .chain(f.rated_power.addrs.iter().copied());
        for addr in identity_addrs {
            assert!(f.identity.contains(addr), "{addr}");
        }
        assert_eq!(f.identity, Block::new(0, 23));
        assert_eq!(IDENTITY, f.identity);
        assert_eq!(f.blocks, [Block::new(59, 54), Block::new(150, 45)]);
        assert!(f.blocks.iter().all(|b| b.count <= MODBUS_MAX_BLOCK));
    }

    #[test]
    fn missing_register_is_an_error() {
        let mut regs = bank(true);
        regs.remove(80);
        assert_eq!(
            decode_sample(&SINGLE_PHASE_LV, &regs, &DecodeOptions::default()),
            Err(DecodeError::Missing(80))
        );
        let mut only_b = Registers::new();
        only_b.insert_block(150, &block_b(true));
        assert!(matches!(
            decode_sample(&SINGLE_PHASE_LV, &only_b, &DecodeOptions::default()),
            Err(DecodeError::Missing(_))
        ));
    }

    #[test]
    fn power_scale_override() {
        let opts = DecodeOptions { power_scale: 10.0 };
        let s = decode_sample(&SINGLE_PHASE_LV, &bank(false), &opts).expect("decodes");
        assert_eq!(s.inverter_power_w, 5550.0);
        assert_eq!(s.grid_power_w, 210.0);
        assert_eq!(s.load_power_w, 5760.0);
        assert_eq!(s.load_port_power_w, 5760.0);
        // Not in the 167–178 group.
        assert_eq!(s.pv_power_w, 559.0);
        assert_eq!(s.battery_power_w, 77.0);
        assert_eq!(num(&s, "battery_current"), 14.7);
        let bad = DecodeOptions { power_scale: 0.0 };
        assert_eq!(
            decode_sample(&SINGLE_PHASE_LV, &bank(true), &bad),
            Err(DecodeError::BadScale(0.0))
        );
    }

    fn identity_bank() -> Registers {
        let mut regs = Registers::new();
        let mut words = [0u16; 23];
        words[0] = 0x0003;
        words[1] = 1;
        words[2] = 0x0104;
        for (i, pair) in b"2302160060".chunks(2).enumerate() {
            words[3 + i] = u16::from_be_bytes([pair[0], pair[1]]);
        }
        words[10] = 0xABCD;
        words[11] = 0x5A0B;
        words[12] = 0x0203;
        words[13] = 0x0001;
        words[14] = 0x1234;
        words[16] = 0xC350;
        words[17] = 0x0000;
        words[18] = 0x0201;
        regs.insert_block(0, &words);
        regs
    }

    #[test]
    fn identity_example() {
        let id = decode_identity(&identity_bank()).expect("decodes");
        assert_eq!(
            id,
            Identity {
                device_type: 3,
                family: "single-phase LV hybrid",
                inverter_serial: "2302160060".into(),
                rated_power_w: 5000.0,
                mppts: 2,
                phases: 1,
                protocol_version: 0x0104,
                fw_control_board: "0001-0203-5A0B".into(),
                fw_comm_board: "1234-ABCD".into(),
                modbus_address: 1,
            }
        );
        let map = id.to_map();
        assert_eq!(map.get("rated_power"), Some(&Json::from(5000)));
        let mut keys: Vec<_> = identity_fields(&SINGLE_PHASE_LV)
            .iter()
            .map(|f| f.key)
            .collect();
        let mut map_keys: Vec<_> = map.keys().map(String::as_str).collect();
        keys.sort_unstable();
        map_keys.sort_unstable();
        assert_eq!(keys, map_keys);
    }

    #[test]
    fn identity_serial_trims_and_six_kw() {
        let mut regs = identity_bank();
        regs.insert_block(3, &[0x2041, 0x4243, 0x0000, 0x0000, 0x0000]);
        regs.insert_block(16, &[0xEA60, 0x0000]);
        let id = decode_identity(&regs).expect("decodes");
        assert_eq!(id.inverter_serial, "ABC");
        assert_eq!(id.rated_power_w, 6000.0);
        assert_eq!(id.model_name(), "SUN-6K single-phase LV hybrid");
        regs.insert_block(16, &[36000, 0x0000]);
        let id = decode_identity(&regs).expect("decodes");
        assert_eq!(id.model_name(), "SUN-3.6K single-phase LV hybrid");
        regs.insert_block(16, &[0x0001, 0x0001]);
        assert_eq!(
            decode_identity(&regs).expect("decodes").rated_power_w,
            6553.7
        );
    }

    #[test]
    fn identity_refuses_three_phase() {
        let mut regs = identity_bank();
        regs.insert(0, 0x0500);
        let err = decode_identity(&regs).expect_err("refused");
        assert!(err.to_string().contains("SG04LP3"), "{err}");
        regs.remove(17);
        regs.insert(0, 3);
        assert_eq!(decode_identity(&regs), Err(DecodeError::Missing(17)));
    }

    #[test]
    fn detect_family_cases() {
        for code in [0x0003, 0x0300] {
            assert_eq!(
                detect_family(code).map(|f| f.name),
                Ok("single-phase LV hybrid")
            );
        }
        let msg = detect_family(0x0005).expect_err("refused").to_string();
        assert!(
            msg.contains("SG04LP3") && msg.contains("not supported"),
            "{msg}"
        );
        assert!(
            detect_family(0x0500)
                .expect_err("refused")
                .to_string()
                .contains("SG04LP3")
        );
        for (code, word) in [
            (0x0006, "HV"),
            (0x0601, "HV"),
            (0x0602, "HV"),
            (0x0002, "string"),
            (0x0004, "micro"),
            (0x0400, "micro"),
            (0x0103, "off-grid"),
            (0x0104, "storage"),
        ] {
            let msg = detect_family(code).expect_err("refused").to_string();
            assert!(msg.contains(word), "{code:#06x}: {msg}");
        }
        assert_eq!(
            detect_family(0x1234).expect_err("refused").to_string(),
            "unknown device type 0x1234"
        );
    }

    #[test]
    fn plan_splits_blocks() {
        assert_eq!(
            plan(&[Block::new(59, 54)], 20),
            [Block::new(59, 20), Block::new(79, 20), Block::new(99, 14)]
        );
        assert_eq!(plan(SINGLE_PHASE_LV.blocks, 125), SINGLE_PHASE_LV.blocks);
        let big = plan(&[Block::new(0, 300)], 500);
        assert_eq!(
            big,
            [
                Block::new(0, 125),
                Block::new(125, 125),
                Block::new(250, 50)
            ]
        );
        assert_eq!(plan(&[Block::new(10, 3)], 0).len(), 3);
        assert_eq!(plan(&[Block::new(10, 0)], 20), []);
        let top = plan(&[Block::new(0xFFF0, 0x20)], 125);
        assert_eq!(top, [Block::new(0xFFF0, 0x10)]);
        for max in 0..=300u16 {
            for b in plan(
                &[Block::new(59, 54), Block::new(150, 45), Block::new(0, 1000)],
                max,
            ) {
                assert!(b.count >= 1 && b.count <= MODBUS_MAX_BLOCK && b.count <= max.max(1));
            }
        }
    }

    #[test]
    fn registers_bank() {
        let mut regs = Registers::new();
        assert_eq!(regs.get(5), None);
        regs.insert_block(3, &[1, 2, 3]);
        assert_eq!(
            (regs.get(2), regs.get(3), regs.get(5), regs.get(6)),
            (None, Some(1), Some(3), None)
        );
        assert!(regs.has_block(Block::new(3, 3)));
        assert!(!regs.has_block(Block::new(3, 4)));
        regs.insert_block(0xFFFE, &[7, 8, 9]);
        assert_eq!(regs.get(0xFFFF), Some(8));
        regs.clear();
        assert_eq!(regs.get(3), None);
    }

    fn sample_with(edit: impl FnOnce(&mut Registers)) -> Sample {
        let mut regs = bank(true);
        edit(&mut regs);
        decode(&regs)
    }

    #[test]
    fn plausibility_dump_is_accepted() {
        let s = decode(&bank(true));
        assert_eq!(check(&s, None, 6000.0), Ok(()));
        assert_eq!(check(&s, Some(&s), 6000.0), Ok(()));
        assert_eq!(check(&decode(&bank(false)), Some(&s), 5000.0), Ok(()));
    }

    #[test]
    fn plausibility_inverter_output_over_rating_dropped() {
        let ok = sample_with(|r| r.insert(175, 6600));
        assert_eq!(check(&ok, None, 6000.0), Ok(()));
        let bad = sample_with(|r| r.insert(175, 6700));
        assert!(matches!(
            check(&bad, None, 6000.0),
            Err(Implausible::Power { field: "inverter_power", value, .. }) if value == 6700.0
        ));
        let negative = sample_with(|r| r.insert(175, (-6700i16) as u16));
        assert!(check(&negative, None, 6000.0).is_err());
    }

    #[test]
    fn plausibility_big_on_grid_load_accepted() {
        // CT mode: 178 = 175 + 169 − 166 with 6 kW coming from the grid.
        let s = sample_with(|r| {
            r.insert(175, 3000);
            r.insert(169, 6000);
            r.insert(172, 6000);
            r.insert(178, 9000);
            r.insert(167, 4000);
        });
        assert_eq!(s.load_power_w, 9000.0);
        assert_eq!(check(&s, None, 6000.0), Ok(()));
        let spike = sample_with(|r| r.insert(166, 0xFFFF));
        assert_eq!(spike.gen_port_power_w, -1.0);
        let spike = sample_with(|r| r.insert(169, 30_000));
        assert!(matches!(
            check(&spike, None, 3000.0),
            Err(Implausible::Power {
                field: "grid_power",
                ..
            })
        ));
        let pv = sample_with(|r| r.insert(186, 60_000));
        assert!(matches!(
            check(&pv, None, 6000.0),
            Err(Implausible::Power {
                field: "pv_string_power",
                ..
            })
        ));
        let battery = sample_with(|r| r.insert(190, 20_000));
        assert!(matches!(
            check(&battery, None, 6000.0),
            Err(Implausible::Power {
                field: "battery_power",
                ..
            })
        ));
    }

    #[test]
    fn plausibility_soc_over_100_dropped() {
        assert_eq!(
            check(&sample_with(|r| r.insert(184, 100)), None, 6000.0),
            Ok(())
        );
        assert_eq!(
            check(&sample_with(|r| r.insert(184, 101)), None, 6000.0),
            Err(Implausible::Soc(101.0))
        );
    }

    #[test]
    fn plausibility_totals() {
        let before = decode(&bank(true));
        let down = sample_with(|r| r.insert(78, 0x1233));
        assert!(matches!(
            check(&down, Some(&before), 6000.0),
            Err(Implausible::CounterDecreased {
                field: "grid_import_total",
                ..
            })
        ));
        // Without a previous sample there is nothing to compare.
        assert_eq!(check(&down, None, 6000.0), Ok(()));
        let up = sample_with(|r| r.insert(78, 0x1234 + 1000));
        assert_eq!(check(&up, Some(&before), 6000.0), Ok(()));
        let jump = sample_with(|r| r.insert(78, 0x1234 + 1001));
        assert!(matches!(
            check(&jump, Some(&before), 6000.0),
            Err(Implausible::CounterJumped {
                field: "grid_import_total",
                ..
            })
        ));
        let high_word = sample_with(|r| r.insert(80, 2));
        assert!(check(&high_word, Some(&before), 6000.0).is_err());
    }

    #[test]
    fn plausibility_daily_reset_accepted() {
        let before = decode(&bank(true));
        let midnight = sample_with(|r| {
            for a in [60, 70, 71, 76, 77, 84, 108] {
                r.insert(a, 0);
            }
        });
        assert_eq!(check(&midnight, Some(&before), 6000.0), Ok(()));
    }

    #[test]
    fn plausibility_needs_a_rating() {
        let s = decode(&bank(true));
        assert_eq!(check(&s, None, 0.0), Err(Implausible::Rating(0.0)));
        assert!(check(&s, None, f64::NAN).is_err());
    }

    /// The property both the proptest and the bulk loop check: decoding
    /// never panics, and whatever passes the filter respects the bounds.
    fn exercise(regs: &Registers, previous: Option<&Sample>, rated: f64) -> Option<Sample> {
        let opts = DecodeOptions::default();
        let sample = decode_sample(&SINGLE_PHASE_LV, regs, &opts).ok()?;
        let map = sample.to_map();
        assert!(map.len() >= SINGLE_PHASE_LV.fields.len());
        if check(&sample, previous, rated).is_ok() {
            assert!(sample.battery_soc <= 100.0);
            assert!(sample.inverter_power_w.abs() <= 1.1 * rated);
            Some(sample)
        } else {
            None
        }
    }

    const ADDRS: [(u16, usize); 2] = [(59, 54), (150, 45)];

    fn base_sample() -> &'static Sample {
        static BASE: std::sync::OnceLock<Sample> = std::sync::OnceLock::new();
        BASE.get_or_init(|| decode(&bank(true)))
    }

    fn fill(regs: &mut Registers, words: &[u16]) {
        let (a, b) = words.split_at(54.min(words.len()));
        regs.insert_block(ADDRS[0].0, a);
        regs.insert_block(ADDRS[1].0, b);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn arbitrary_registers_never_panic(
            words in prop::collection::vec(any::<u16>(), 99),
            holes in prop::collection::vec(0u16..200, 0..3),
            rated in 1.0f64..20_000.0,
        ) {
            let mut regs = Registers::new();
            fill(&mut regs, &words);
            for h in holes {
                regs.remove(h);
            }
            exercise(&regs, None, rated);
            exercise(&regs, Some(base_sample()), rated);
        }

        #[test]
        fn near_plausible_registers_respect_bounds(
            edits in prop::collection::vec((0usize..99, any::<u16>()), 0..6),
            small in prop::collection::vec((0usize..99, 0u16..200), 0..4),
            rated in 2_000.0f64..12_000.0,
        ) {
            let mut words = block_a();
            words.extend(block_b(true));
            for (i, v) in edits.into_iter().chain(small) {
                if let Some(w) = words.get_mut(i) {
                    *w = v;
                }
            }
            let mut regs = Registers::new();
            fill(&mut regs, &words);
            exercise(&regs, Some(base_sample()), rated);
        }
    }

    /// A million register banks from a deterministic xorshift: a quarter
    /// arbitrary, the rest the CT-mode dump with a few words replaced (so the
    /// acceptance path is exercised), now and then with a register missing,
    /// compared with nothing, the dump, or the last accepted sample. Split
    /// over two threads to stay within a few seconds in a debug build.
    #[test]
    fn a_million_banks() {
        const TOTAL: u32 = 1_000_000;
        let run = |seed: u64, count: u32| {
            let mut x = seed;
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            let mut base = block_a();
            base.extend(block_b(true));
            let mut words = base.clone();
            let mut regs = Registers::new();
            let mut last: Option<Sample> = None;
            let (mut decoded, mut accepted) = (0u32, 0u32);
            for i in 0..count {
                let r = next();
                if r % 4 == 0 {
                    for chunk in words.chunks_mut(4) {
                        let v = next();
                        for (j, w) in chunk.iter_mut().enumerate() {
                            *w = (v >> (16 * j)) as u16;
                        }
                    }
                } else {
                    words.copy_from_slice(&base);
                    for _ in 0..(r >> 2) % 5 {
                        let v = next();
                        let value = match (v >> 8) % 4 {
                            0 => 0,
                            1 => 0xFFFF,
                            2 => ((v >> 16) % 200) as u16,
                            _ => (v >> 16) as u16,
                        };
                        if let Some(w) = words.get_mut((v % 99) as usize) {
                            *w = value;
                        }
                    }
                }
                fill(&mut regs, &words);
                if (r >> 40) % 64 == 0 {
                    let k = ((r >> 48) % 99) as u16;
                    regs.remove(if k < 54 { 59 + k } else { 150 + k - 54 });
                }
                let rated = 3000.0 + ((r >> 20) % 9000) as f64;
                let Ok(s) = decode_sample(&SINGLE_PHASE_LV, &regs, &DecodeOptions::default())
                else {
                    continue;
                };
                decoded += 1;
                if i % 1024 == 0 {
                    assert!(s.to_map().len() >= SINGLE_PHASE_LV.fields.len());
                }
                let previous = match (r >> 3) % 3 {
                    0 => None,
                    1 => Some(base_sample()),
                    _ => last.as_ref(),
                };
                if check(&s, previous, rated).is_ok() {
                    assert!(s.battery_soc <= 100.0);
                    assert!(s.inverter_power_w.abs() <= 1.1 * rated);
                    accepted += 1;
                    last = Some(s);
                }
            }
            (decoded, accepted)
        };
        let (a, b) = std::thread::scope(|scope| {
            let first = scope.spawn(|| run(0x9E37_79B9_7F4A_7C15, TOTAL / 2));
            let second = run(0xD1B5_4A32_D192_ED03, TOTAL - TOTAL / 2);
            (first.join().expect("thread"), second)
        });
        let (decoded, accepted) = (a.0 + b.0, a.1 + b.1);
        assert!(decoded > TOTAL * 9 / 10, "{decoded}");
        assert!(accepted > TOTAL / 5, "{accepted}");
        assert!(accepted < decoded - TOTAL / 5, "{accepted}");
    }
}
