//! The cell-info frame 0x02: decoders for JK02_24S, JK02_32S and JK04, the
//! encoder the simulator uses (JK02), and the pack-voltage cross-check that
//! tells a wrong variant (spec §5, §6, §7, §8).

use thiserror::Error;

use super::DecodeError;
use super::frame::{Frame, FrameBuilder, FrameType, Variant, scaled, unscaled};

/// Raw temperature the BMS reports for an unfitted sensor: −200.0 °C.
pub const TEMPERATURE_ABSENT: i16 = -2000;

/// Where the JK02 cell-info fields sit. 32S inserts 8 cell slots and 8
/// resistance slots, so most fields move by 16 or 32 bytes, but not all
/// (MOS temperature, alarm bits): a table per variant is easier to check
/// against the spec than arithmetic.
struct Offsets {
    mask: usize,
    average: usize,
    delta: usize,
    max_cell: usize,
    min_cell: usize,
    resistances: usize,
    pack_voltage: usize,
    pack_power: usize,
    current: usize,
    t1: usize,
    t2: usize,
    mosfet: usize,
    alarms: usize,
    /// u32 in 32S, u16 in 24S.
    alarms_wide: bool,
    balance_current: usize,
    balancer: usize,
    soc: usize,
    remaining: usize,
    full_charge: usize,
    cycles: usize,
    cycle_capacity: usize,
    soh: usize,
    runtime: usize,
    charging_mosfet: usize,
    discharging_mosfet: usize,
    temperature_mask: usize,
}

const O24: Offsets = Offsets {
    mask: 54,
    average: 58,
    delta: 60,
    max_cell: 62,
    min_cell: 63,
    resistances: 64,
    pack_voltage: 118,
    pack_power: 122,
    current: 126,
    t1: 130,
    t2: 132,
    mosfet: 134,
    alarms: 136,
    alarms_wide: false,
    balance_current: 138,
    balancer: 140,
    soc: 141,
    remaining: 142,
    full_charge: 146,
    cycles: 150,
    cycle_capacity: 154,
    soh: 158,
    runtime: 162,
    charging_mosfet: 166,
    discharging_mosfet: 167,
    temperature_mask: 182,
};

const O32: Offsets = Offsets {
    mask: 70,
    average: 74,
    delta: 76,
    max_cell: 78,
    min_cell: 79,
    resistances: 80,
    pack_voltage: 150,
    pack_power: 154,
    current: 158,
    t1: 162,
    t2: 164,
    mosfet: 144,
    alarms: 166,
    alarms_wide: true,
    balance_current: 170,
    balancer: 172,
    soc: 173,
    remaining: 174,
    full_charge: 178,
    cycles: 182,
    cycle_capacity: 186,
    soh: 190,
    runtime: 194,
    charging_mosfet: 198,
    discharging_mosfet: 199,
    temperature_mask: 214,
};

/// JK02_32S-only fields (E = esphome-jk-bms only, see the spec's table).
mod o32x {
    pub const PRECHARGING: usize = 200;
    pub const HEATING: usize = 215;
    pub const EMERGENCY_COUNTDOWN: usize = 218;
    pub const HEATING_CURRENT: usize = 236;
    pub const T3: usize = 254;
    pub const T4: usize = 256;
    pub const T5: usize = 258;
    pub const DETAIL_LOG_ENTRIES: usize = 266;
    pub const BATTERY_TYPE: usize = 275;
    pub const CHARGE_STATUS_ELAPSED: usize = 278;
    pub const CHARGE_STATUS: usize = 280;
    pub const DRY_CONTACTS: usize = 281;
}

/// JK04 offsets (float32 fields, spec §8).
mod o04 {
    pub const CELLS: usize = 6;
    pub const RESISTANCES: usize = 102;
    pub const AVERAGE: usize = 202;
    pub const DELTA: usize = 206;
    pub const BALANCER: usize = 220;
    pub const BALANCE_CURRENT: usize = 222;
    pub const RUNTIME: usize = 286;
}

const CELLS_AT: usize = 6;

/// Presence-mask bits, per variant.
const MASK_24S_T1: u8 = 1 << 0;
const MASK_24S_T2: u8 = 1 << 1;
const MASK_24S_MOS: u8 = 1 << 2;
const MASK_32S_MOS: u8 = 1 << 0;
const MASK_32S_T1: u8 = 1 << 1;
const MASK_32S_T2: u8 = 1 << 2;
const MASK_32S_T3: u8 = 1 << 3;
const MASK_32S_T4: u8 = 1 << 4;
const MASK_32S_T5: u8 = 1 << 5;

/// The firmware that started filling @254 (aiobmsble reads it from 11 on).
const T3_MIN_MAJOR: u16 = 11;
/// The firmware that started filling @256/@258: on 11.x those bytes are 0
/// even with the presence bits set (vectors `…v11.288H…`, `…v11.55…`).
const T4_T5_MIN_MAJOR: u16 = 14;

/// One cell present in the enabled-cells mask.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cell {
    /// 1-based, as the JK app numbers cells.
    pub number: u8,
    /// V.
    pub voltage: f64,
    /// Balance-lead (wire) resistance, mΩ.
    pub resistance: f64,
}

/// Cell statistics computed from the cells (E does the same): the BMS's
/// own min/max/average fields can lag the per-cell values by a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CellStats {
    pub min_voltage: f64,
    /// 1-based; the first cell wins a tie.
    pub min_cell: u8,
    pub max_voltage: f64,
    pub max_cell: u8,
    pub average_voltage: f64,
    pub delta_voltage: f64,
}

/// The temperature sensors a pack can have. Each is `None` unless the
/// presence mask says it is fitted, the firmware fills it, and the value is
/// not the −200 °C "absent" marker.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Temperatures {
    /// °C, the power MOSFETs.
    pub mosfet: Option<f64>,
    pub t1: Option<f64>,
    pub t2: Option<f64>,
    /// @254 (32S): mirrors the MOS sensor in every unedited capture; the
    /// JK app shows the NTC probes as T1, T2, T4, T5.
    pub t3: Option<f64>,
    pub t4: Option<f64>,
    pub t5: Option<f64>,
}

/// Alarm / error bits (u32 in 32S, u16 in 24S), spec §7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Alarms(pub u32);

/// (bit, state key, esphome-jk-bms text). Bits 3 and 29–31 are unused.
const ALARM_NAMES: [(u8, &str, &str); 28] = [
    (0, "wire_resistance", "Wire resistance"),
    (1, "mosfet_overtemperature", "MOSFET overtemperature"),
    (
        2,
        "cell_count_mismatch",
        "Cell count is not equal to settings",
    ),
    (4, "fully_charged", "Battery is fully charged"),
    (5, "pack_overvoltage", "Battery pack overvoltage"),
    (6, "charge_overcurrent", "Charge overcurrent"),
    (7, "charge_short_circuit", "Charge short circuit"),
    (8, "charge_overtemperature", "Charge overtemperature"),
    (9, "charge_undertemperature", "Charge undertemperature"),
    (
        10,
        "coprocessor_communication",
        "Coprocessor communication error",
    ),
    (11, "cell_undervoltage", "Cell undervoltage"),
    (12, "pack_undervoltage", "Battery pack undervoltage"),
    (13, "discharge_overcurrent", "Discharge overcurrent"),
    (14, "discharge_short_circuit", "Discharge short circuit"),
    (15, "discharge_overtemperature", "Discharge overtemperature"),
    (16, "charging_mosfet_abnormal", "Charging MOSFET abnormal"),
    (
        17,
        "discharging_mosfet_abnormal",
        "Discharging MOSFET abnormal",
    ),
    (18, "gps_disconnected", "GPS disconnected"),
    (19, "password_reminder", "Modify password in time"),
    (20, "discharge_on_failed", "Discharge on failed"),
    (21, "battery_overtemperature", "Battery overtemperature"),
    (
        22,
        "temperature_sensor_anomaly",
        "Temperature sensor anomaly",
    ),
    (23, "parallel_module_anomaly", "PL module anomaly"),
    (24, "scp_release_failed", "SCP release failed"),
    (25, "discharge_ocp_2", "Discharge OCP II"),
    (26, "discharge_ocp_3", "Discharge OCP III"),
    (
        27,
        "discharge_undertemperature",
        "Discharge undertemperature alarm",
    ),
    (28, "gps_remote_lock", "GPS remote lock"),
];

/// Bits that fire on healthy packs (fully charged, password reminder) or
/// mean nothing (3, 29–31): not a problem for Home Assistant.
const NOT_A_PROBLEM: u32 = (1 << 3) | (1 << 4) | (1 << 19) | (0b111 << 29);

impl Alarms {
    pub fn bits(self) -> u32 {
        self.0
    }

    /// esphome-jk-bms's text for each set bit, lowest first; "alarm bit n"
    /// for the unused bits, so nothing set is hidden.
    pub fn names(self) -> Vec<String> {
        self.set_bits()
            .map(|bit| match ALARM_NAMES.iter().find(|(b, _, _)| *b == bit) {
                Some((_, _, name)) => (*name).to_owned(),
                None => format!("alarm bit {bit}"),
            })
            .collect()
    }

    /// Short snake_case keys of the set bits.
    pub fn keys(self) -> Vec<String> {
        self.set_bits()
            .map(|bit| match ALARM_NAMES.iter().find(|(b, _, _)| *b == bit) {
                Some((_, key, _)) => (*key).to_owned(),
                None => format!("bit_{bit}"),
            })
            .collect()
    }

    /// Any bit set that needs attention.
    pub fn problem(self) -> bool {
        self.0 & !NOT_A_PROBLEM != 0
    }

    fn set_bits(self) -> impl Iterator<Item = u8> {
        (0u8..32).filter(move |b| self.0 & (1 << b) != 0)
    }
}

/// Balancer action byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalancerState {
    Off,
    /// Moving charge into the lowest cell.
    Charging,
    /// Bleeding the highest cell.
    Discharging,
    Unknown(u8),
}

impl BalancerState {
    pub fn from_byte(b: u8) -> Self {
        match b {
            0 => Self::Off,
            1 => Self::Charging,
            2 => Self::Discharging,
            other => Self::Unknown(other),
        }
    }

    pub fn byte(self) -> u8 {
        match self {
            Self::Off => 0,
            Self::Charging => 1,
            Self::Discharging => 2,
            Self::Unknown(b) => b,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Charging => "charging",
            Self::Discharging => "discharging",
            Self::Unknown(_) => "unknown",
        }
    }

    pub fn active(self) -> bool {
        self != Self::Off
    }
}

/// Charger stage of JK-PB packs (byte 280).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeStatus {
    Bulk,
    Absorption,
    Float,
    Unknown(u8),
}

impl ChargeStatus {
    pub fn from_byte(b: u8) -> Self {
        match b {
            0 => Self::Bulk,
            1 => Self::Absorption,
            2 => Self::Float,
            other => Self::Unknown(other),
        }
    }

    pub fn byte(self) -> u8 {
        match self {
            Self::Bulk => 0,
            Self::Absorption => 1,
            Self::Float => 2,
            Self::Unknown(b) => b,
        }
    }

    /// esphome-jk-bms's text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bulk => "Bulk",
            Self::Absorption => "Absorption",
            Self::Float => "Float",
            Self::Unknown(_) => "Unknown",
        }
    }
}

/// Cell chemistry the BMS is set to (byte 275).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatteryType {
    Lfp,
    LiIon,
    Lto,
    Unknown(u8),
}

impl BatteryType {
    pub fn from_byte(b: u8) -> Self {
        match b {
            0 => Self::Lfp,
            1 => Self::LiIon,
            2 => Self::Lto,
            other => Self::Unknown(other),
        }
    }

    pub fn byte(self) -> u8 {
        match self {
            Self::Lfp => 0,
            Self::LiIon => 1,
            Self::Lto => 2,
            Self::Unknown(b) => b,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lfp => "LFP",
            Self::LiIon => "Li-ion",
            Self::Lto => "LTO",
            Self::Unknown(_) => "unknown",
        }
    }
}

/// One decoded cell-info frame. `None` = the variant does not carry the
/// field (JK04 has no current, SOC or temperatures; JK02_24S lacks the
/// JK02_32S extras).
#[derive(Debug, Clone, PartialEq)]
pub struct CellInfo {
    pub variant: Variant,
    /// Byte 5, rolling.
    pub counter: u8,
    /// The cells present: JK02 by the enabled-cells mask, JK04 by a
    /// voltage above 0. Ascending by number.
    pub cells: Vec<Cell>,
    /// JK02's mask as sent (bit 0 = cell 1).
    pub enabled_cells_mask: Option<u32>,
    /// V. JK04 has no such field: the sum of its cells.
    pub pack_voltage: f64,
    /// A, + = charging.
    pub current: Option<f64>,
    /// %.
    pub soc: Option<u8>,
    /// %.
    pub soh: Option<u8>,
    /// Ah.
    pub remaining_capacity: Option<f64>,
    /// Ah; the BMS's aged estimate on 11.x+ (≈ nominal × SOH), not the
    /// user-set nominal capacity of the settings frame.
    pub full_charge_capacity: Option<f64>,
    pub cycle_count: Option<u32>,
    /// Ah of lifetime charge throughput.
    pub total_cycle_capacity: Option<f64>,
    /// V, the BMS's own average and delta; [`CellInfo::stats`] computes
    /// fresh ones. The encoder computes them when `None`.
    pub bms_average_cell_voltage: Option<f64>,
    pub bms_delta_cell_voltage: Option<f64>,
    pub temperatures: Temperatures,
    /// Presence mask as sent; the encoder ORs in a bit for every `Some`
    /// temperature.
    pub temperature_presence_mask: Option<u8>,
    pub alarms: Option<Alarms>,
    /// A, sign = direction.
    pub balancing_current: f64,
    pub balancer: BalancerState,
    /// s, the BMS's total runtime counter.
    pub uptime_s: u32,
    /// Actual MOSFET states (the settings frame has the *enable* flags).
    pub charging_mosfet: Option<bool>,
    pub discharging_mosfet: Option<bool>,
    pub precharging: Option<bool>,
    pub heating: Option<bool>,
    /// A.
    pub heating_current: Option<f64>,
    pub charge_status: Option<ChargeStatus>,
    pub charge_status_elapsed_s: Option<u16>,
    /// DRY1, DRY2 relay outputs active.
    pub dry_contacts: Option<[bool; 2]>,
    pub battery_type: Option<BatteryType>,
    /// s; > 0 = emergency mode on.
    pub emergency_countdown_s: Option<u16>,
    pub detail_log_entries: Option<u32>,
}

impl CellInfo {
    /// An idle pack with no cells, every field the variant carries at
    /// zero: the starting point of the simulator's model.
    pub fn new(variant: Variant) -> Self {
        let jk02 = variant != Variant::Jk04;
        let ext = variant == Variant::Jk02_32s;
        let some = |on: bool| on.then_some(0.0);
        Self {
            variant,
            counter: 0,
            cells: Vec::new(),
            enabled_cells_mask: jk02.then_some(0),
            pack_voltage: 0.0,
            current: some(jk02),
            soc: jk02.then_some(0),
            soh: jk02.then_some(100),
            remaining_capacity: some(jk02),
            full_charge_capacity: some(jk02),
            cycle_count: jk02.then_some(0),
            total_cycle_capacity: some(jk02),
            bms_average_cell_voltage: None,
            bms_delta_cell_voltage: None,
            temperatures: Temperatures::default(),
            temperature_presence_mask: jk02.then_some(0),
            alarms: jk02.then_some(Alarms(0)),
            balancing_current: 0.0,
            balancer: BalancerState::Off,
            uptime_s: 0,
            charging_mosfet: jk02.then_some(false),
            discharging_mosfet: jk02.then_some(false),
            precharging: ext.then_some(false),
            heating: ext.then_some(false),
            heating_current: some(ext),
            charge_status: ext.then_some(ChargeStatus::Bulk),
            charge_status_elapsed_s: ext.then_some(0),
            dry_contacts: ext.then_some([false; 2]),
            battery_type: ext.then_some(BatteryType::Lfp),
            emergency_countdown_s: ext.then_some(0),
            detail_log_entries: ext.then_some(0),
        }
    }

    /// Decodes a cell-info frame as `variant`. `software_major` (from the
    /// device-info frame) gates the temperatures that older firmware leaves
    /// at 0: unknown firmware publishes no T4/T5. Does not check that the
    /// variant is right: see [`is_consistent`].
    pub fn decode(
        frame: &Frame,
        variant: Variant,
        software_major: Option<u16>,
    ) -> Result<Self, DecodeError> {
        if frame.frame_type() != FrameType::CellInfo {
            return Err(DecodeError::FrameType {
                expected: FrameType::CellInfo,
                got: frame.frame_type(),
            });
        }
        Ok(match variant {
            Variant::Jk02_24s => decode_jk02(frame, variant, &O24, software_major),
            Variant::Jk02_32s => decode_jk02(frame, variant, &O32, software_major),
            Variant::Jk04 => decode_jk04(frame),
        })
    }

    /// Min/max/average/delta over the cells reporting a voltage above 0;
    /// `None` when none does (a pack whose cell leads are disconnected).
    pub fn stats(&self) -> Option<CellStats> {
        let mut live = self.cells.iter().filter(|c| c.voltage > 0.0);
        let first = live.next()?;
        let mut s = CellStats {
            min_voltage: first.voltage,
            min_cell: first.number,
            max_voltage: first.voltage,
            max_cell: first.number,
            average_voltage: 0.0,
            delta_voltage: 0.0,
        };
        let (mut sum, mut n) = (first.voltage, 1u32);
        for c in live {
            if c.voltage < s.min_voltage {
                s.min_voltage = c.voltage;
                s.min_cell = c.number;
            }
            if c.voltage > s.max_voltage {
                s.max_voltage = c.voltage;
                s.max_cell = c.number;
            }
            sum += c.voltage;
            n += 1;
        }
        s.average_voltage = sum / f64::from(n);
        s.delta_voltage = s.max_voltage - s.min_voltage;
        Some(s)
    }

    /// W = V × I, + = charging like the current. The BMS's own power field
    /// is an unsigned, sometimes stale magnitude, so it is not used.
    pub fn power(&self) -> Option<f64> {
        self.current.map(|i| self.pack_voltage * i)
    }

    /// The highest cell number present: per-cell keys go up to it.
    pub fn highest_cell(&self) -> u8 {
        self.cells.iter().map(|c| c.number).max().unwrap_or(0)
    }

    /// The frame this struct describes (JK02 only: the simulator speaks
    /// JK02, and no reference documents JK04 well enough to fake it).
    /// Fields the variant lacks are written as 0.
    pub fn encode(&self) -> Result<Frame, EncodeError> {
        let o = match self.variant {
            Variant::Jk02_24s => &O24,
            Variant::Jk02_32s => &O32,
            Variant::Jk04 => return Err(EncodeError::Jk04),
        };
        let slots = self.variant.cell_slots();
        let mut b = FrameBuilder::new();
        let mut mask = 0u32;
        for c in &self.cells {
            let i = usize::from(c.number)
                .checked_sub(1)
                .filter(|&i| i < slots)
                .ok_or(EncodeError::CellNumber {
                    number: c.number,
                    slots,
                })?;
            mask |= 1 << i;
            b.u16(CELLS_AT + 2 * i, u16_of(c.voltage, 1000.0));
            b.u16(o.resistances + 2 * i, u16_of(c.resistance, 1.0));
        }
        b.u32(o.mask, self.enabled_cells_mask.unwrap_or(0) | mask);
        let stats = self.stats();
        let average = self
            .bms_average_cell_voltage
            .or(stats.map(|s| s.average_voltage));
        let delta = self
            .bms_delta_cell_voltage
            .or(stats.map(|s| s.delta_voltage));
        b.u16(o.average, u16_of(average.unwrap_or(0.0), 1000.0));
        b.u16(o.delta, u16_of(delta.unwrap_or(0.0), 1000.0));
        if let Some(s) = stats {
            b.u8(o.max_cell, s.max_cell.saturating_sub(1));
            b.u8(o.min_cell, s.min_cell.saturating_sub(1));
        }
        b.u32(o.pack_voltage, u32_of(self.pack_voltage, 1000.0));
        let current = self.current.unwrap_or(0.0);
        b.u32(
            o.pack_power,
            u32_of((self.pack_voltage * current).abs(), 1000.0),
        );
        b.i32(o.current, i32_of(current, 1000.0));

        let t = &self.temperatures;
        let (sensors, mut presence): (Vec<(usize, u8, Option<f64>)>, u8) = match self.variant {
            Variant::Jk02_32s => (
                vec![
                    (o.mosfet, MASK_32S_MOS, t.mosfet),
                    (o.t1, MASK_32S_T1, t.t1),
                    (o.t2, MASK_32S_T2, t.t2),
                    (o32x::T3, MASK_32S_T3, t.t3),
                    (o32x::T4, MASK_32S_T4, t.t4),
                    (o32x::T5, MASK_32S_T5, t.t5),
                ],
                self.temperature_presence_mask.unwrap_or(0),
            ),
            _ => (
                vec![
                    (o.t1, MASK_24S_T1, t.t1),
                    (o.t2, MASK_24S_T2, t.t2),
                    (o.mosfet, MASK_24S_MOS, t.mosfet),
                ],
                self.temperature_presence_mask.unwrap_or(0),
            ),
        };
        for (at, bit, value) in sensors {
            match value {
                Some(v) => {
                    presence |= bit;
                    b.i16(at, i16_of(v, 10.0));
                }
                None => b.i16(at, TEMPERATURE_ABSENT),
            }
        }
        b.u8(o.temperature_mask, presence);

        let alarms = self.alarms.unwrap_or_default().0;
        if o.alarms_wide {
            b.u32(o.alarms, alarms);
        } else {
            b.u16(o.alarms, alarms as u16);
        }
        b.i16(o.balance_current, i16_of(self.balancing_current, 1000.0));
        b.u8(o.balancer, self.balancer.byte());
        b.u8(o.soc, self.soc.unwrap_or(0));
        b.u32(
            o.remaining,
            u32_of(self.remaining_capacity.unwrap_or(0.0), 1000.0),
        );
        b.u32(
            o.full_charge,
            u32_of(self.full_charge_capacity.unwrap_or(0.0), 1000.0),
        );
        b.u32(o.cycles, self.cycle_count.unwrap_or(0));
        b.u32(
            o.cycle_capacity,
            u32_of(self.total_cycle_capacity.unwrap_or(0.0), 1000.0),
        );
        b.u8(o.soh, self.soh.unwrap_or(0));
        b.u32(o.runtime, self.uptime_s);
        b.u8(
            o.charging_mosfet,
            u8::from(self.charging_mosfet == Some(true)),
        );
        b.u8(
            o.discharging_mosfet,
            u8::from(self.discharging_mosfet == Some(true)),
        );
        if self.variant == Variant::Jk02_32s {
            b.u8(o32x::PRECHARGING, u8::from(self.precharging == Some(true)));
            b.u8(o32x::HEATING, u8::from(self.heating == Some(true)));
            b.u16(
                o32x::EMERGENCY_COUNTDOWN,
                self.emergency_countdown_s.unwrap_or(0),
            );
            b.i16(
                o32x::HEATING_CURRENT,
                i16_of(self.heating_current.unwrap_or(0.0), 1000.0),
            );
            b.u32(
                o32x::DETAIL_LOG_ENTRIES,
                self.detail_log_entries.unwrap_or(0),
            );
            b.u8(
                o32x::BATTERY_TYPE,
                self.battery_type.map_or(0, BatteryType::byte),
            );
            b.u16(
                o32x::CHARGE_STATUS_ELAPSED,
                self.charge_status_elapsed_s.unwrap_or(0),
            );
            b.u8(
                o32x::CHARGE_STATUS,
                self.charge_status.map_or(0, ChargeStatus::byte),
            );
            let [dry1, dry2] = self.dry_contacts.unwrap_or_default();
            b.u8(
                o32x::DRY_CONTACTS,
                (u8::from(dry1) << 1) | (u8::from(dry2) << 2),
            );
        }
        Ok(b.finish(FrameType::CellInfo, self.counter))
    }
}

/// Why a struct cannot become a frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    #[error("JK04 frames cannot be encoded (the simulator speaks JK02)")]
    Jk04,
    #[error("cell number {number} is outside 1..={slots} of this variant")]
    CellNumber { number: u8, slots: usize },
}

fn u16_of(v: f64, factor: f64) -> u16 {
    unscaled(v, factor) as u16
}

fn i16_of(v: f64, factor: f64) -> i16 {
    unscaled(v, factor) as i16
}

fn u32_of(v: f64, factor: f64) -> u32 {
    unscaled(v, factor) as u32
}

fn i32_of(v: f64, factor: f64) -> i32 {
    unscaled(v, factor) as i32
}

fn temperature(frame: &Frame, at: usize, mask: u8, bit: u8, firmware_ok: bool) -> Option<f64> {
    let raw = frame.i16(at);
    (mask & bit != 0 && firmware_ok && raw != TEMPERATURE_ABSENT).then(|| scaled(raw, 10.0))
}

fn decode_jk02(frame: &Frame, variant: Variant, o: &Offsets, sw: Option<u16>) -> CellInfo {
    let wide = variant == Variant::Jk02_32s;
    let mask = frame.u32(o.mask);
    let cells = (0..variant.cell_slots())
        .filter(|&i| mask & (1 << i) != 0)
        .map(|i| Cell {
            number: (i + 1) as u8,
            voltage: scaled(frame.u16(CELLS_AT + 2 * i), 1000.0),
            resistance: f64::from(frame.u16(o.resistances + 2 * i)),
        })
        .collect();
    let presence = frame.u8(o.temperature_mask);
    let temperatures = if wide {
        let t3_ok = sw.is_none_or(|m| m >= T3_MIN_MAJOR);
        let t45_ok = sw.is_some_and(|m| m >= T4_T5_MIN_MAJOR);
        Temperatures {
            mosfet: temperature(frame, o.mosfet, presence, MASK_32S_MOS, true),
            t1: temperature(frame, o.t1, presence, MASK_32S_T1, true),
            t2: temperature(frame, o.t2, presence, MASK_32S_T2, true),
            t3: temperature(frame, o32x::T3, presence, MASK_32S_T3, t3_ok),
            t4: temperature(frame, o32x::T4, presence, MASK_32S_T4, t45_ok),
            t5: temperature(frame, o32x::T5, presence, MASK_32S_T5, t45_ok),
        }
    } else {
        Temperatures {
            mosfet: temperature(frame, o.mosfet, presence, MASK_24S_MOS, true),
            t1: temperature(frame, o.t1, presence, MASK_24S_T1, true),
            t2: temperature(frame, o.t2, presence, MASK_24S_T2, true),
            t3: None,
            t4: None,
            t5: None,
        }
    };
    let alarms = if o.alarms_wide {
        frame.u32(o.alarms)
    } else {
        u32::from(frame.u16(o.alarms))
    };
    CellInfo {
        variant,
        counter: frame.counter(),
        cells,
        enabled_cells_mask: Some(mask),
        pack_voltage: scaled(frame.u32(o.pack_voltage), 1000.0),
        current: Some(scaled(frame.i32(o.current), 1000.0)),
        soc: Some(frame.u8(o.soc)),
        soh: Some(frame.u8(o.soh)),
        remaining_capacity: Some(scaled(frame.u32(o.remaining), 1000.0)),
        full_charge_capacity: Some(scaled(frame.u32(o.full_charge), 1000.0)),
        cycle_count: Some(frame.u32(o.cycles)),
        total_cycle_capacity: Some(scaled(frame.u32(o.cycle_capacity), 1000.0)),
        bms_average_cell_voltage: Some(scaled(frame.u16(o.average), 1000.0)),
        bms_delta_cell_voltage: Some(scaled(frame.u16(o.delta), 1000.0)),
        temperatures,
        temperature_presence_mask: Some(presence),
        alarms: Some(Alarms(alarms)),
        balancing_current: scaled(frame.i16(o.balance_current), 1000.0),
        balancer: BalancerState::from_byte(frame.u8(o.balancer)),
        uptime_s: frame.u32(o.runtime),
        charging_mosfet: Some(frame.u8(o.charging_mosfet) != 0),
        discharging_mosfet: Some(frame.u8(o.discharging_mosfet) != 0),
        precharging: wide.then(|| frame.u8(o32x::PRECHARGING) != 0),
        heating: wide.then(|| frame.u8(o32x::HEATING) != 0),
        heating_current: wide.then(|| scaled(frame.i16(o32x::HEATING_CURRENT), 1000.0)),
        charge_status: wide.then(|| ChargeStatus::from_byte(frame.u8(o32x::CHARGE_STATUS))),
        charge_status_elapsed_s: wide.then(|| frame.u16(o32x::CHARGE_STATUS_ELAPSED)),
        dry_contacts: wide.then(|| {
            let b = frame.u8(o32x::DRY_CONTACTS);
            [b & 0x02 != 0, b & 0x04 != 0]
        }),
        battery_type: wide.then(|| BatteryType::from_byte(frame.u8(o32x::BATTERY_TYPE))),
        emergency_countdown_s: wide.then(|| frame.u16(o32x::EMERGENCY_COUNTDOWN)),
        detail_log_entries: wide.then(|| frame.u32(o32x::DETAIL_LOG_ENTRIES)),
    }
}

/// A float32 field as f64; NaN and infinities (a JK02 frame read as JK04)
/// become 0 so that no JSON view ever holds a non-number.
fn finite_f32(frame: &Frame, at: usize) -> f64 {
    let v = f64::from(frame.f32(at));
    if v.is_finite() { v } else { 0.0 }
}

fn decode_jk04(frame: &Frame) -> CellInfo {
    let cells: Vec<Cell> = (0..Variant::Jk04.cell_slots())
        .filter_map(|i| {
            let voltage = finite_f32(frame, o04::CELLS + 4 * i);
            (voltage > 0.0).then(|| Cell {
                number: (i + 1) as u8,
                voltage,
                resistance: finite_f32(frame, o04::RESISTANCES + 4 * i) * 1000.0,
            })
        })
        .collect();
    let mut info = CellInfo::new(Variant::Jk04);
    info.counter = frame.counter();
    info.pack_voltage = cells.iter().map(|c| c.voltage).sum();
    info.cells = cells;
    info.bms_average_cell_voltage = Some(finite_f32(frame, o04::AVERAGE));
    info.bms_delta_cell_voltage = Some(finite_f32(frame, o04::DELTA));
    info.balancer = BalancerState::from_byte(frame.u8(o04::BALANCER));
    info.balancing_current = finite_f32(frame, o04::BALANCE_CURRENT);
    info.uptime_s = frame.u32(o04::RUNTIME);
    info
}

/// Whether `frame` reads sensibly as `variant`, so that a driver can reject
/// a wrong configured or detected variant.
///
/// JK02: the pack-voltage field must be within 1 % (+ 50 mV) of the sum of
/// all cell slots, which holds on every captured frame and fails for the
/// other layouts (spec §5). JK04: every float cell slot must be 0 or a
/// plausible cell voltage (0.5…5 V) — JK02 cell pairs read as float32 are
/// tiny denormals. A frame with no cells at all fits every variant.
pub fn is_consistent(frame: &Frame, variant: Variant) -> bool {
    if frame.frame_type() != FrameType::CellInfo {
        return false;
    }
    match variant {
        Variant::Jk02_24s | Variant::Jk02_32s => {
            let o = if variant == Variant::Jk02_32s {
                &O32
            } else {
                &O24
            };
            let sum_mv: f64 = (0..variant.cell_slots())
                .map(|i| f64::from(frame.u16(CELLS_AT + 2 * i)))
                .sum();
            let pack_mv = f64::from(frame.u32(o.pack_voltage));
            (pack_mv - sum_mv).abs() <= pack_mv * 0.01 + 50.0
        }
        Variant::Jk04 => (0..Variant::Jk04.cell_slots()).all(|i| {
            let v = frame.f32(o04::CELLS + 4 * i);
            v == 0.0 || (0.5..=5.0).contains(&v)
        }),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::drivers::jkbms::assembler::Assembler;

    /// A plausible 16-cell pack the way the simulator would model one.
    fn model(variant: Variant) -> CellInfo {
        let mut m = CellInfo::new(variant);
        m.counter = 42;
        m.cells = (1..=16)
            .map(|n| Cell {
                number: n,
                voltage: f64::from(3300 + u16::from(n % 5)) / 1000.0,
                resistance: 60.0 + f64::from(n),
            })
            .collect();
        m.pack_voltage = 52.85;
        m.current = Some(-12.684);
        m.soc = Some(78);
        m.soh = Some(99);
        m.remaining_capacity = Some(244.296);
        m.full_charge_capacity = Some(314.0);
        m.cycle_count = Some(15);
        m.total_cycle_capacity = Some(107_478.918);
        m.temperatures = Temperatures {
            mosfet: Some(26.2),
            t1: Some(-3.1),
            t2: Some(23.6),
            ..Temperatures::default()
        };
        if variant == Variant::Jk02_32s {
            m.temperatures.t3 = Some(26.2);
            m.temperatures.t5 = Some(24.0);
            m.heating = Some(true);
            m.heating_current = Some(0.514);
            m.charge_status = Some(ChargeStatus::Float);
            m.charge_status_elapsed_s = Some(677);
            m.dry_contacts = Some([false, true]);
            m.emergency_countdown_s = Some(30);
            m.detail_log_entries = Some(1083);
            m.precharging = Some(true);
            m.battery_type = Some(BatteryType::LiIon);
        }
        m.alarms = Some(Alarms(0x0008_0201));
        m.balancing_current = 1.99;
        m.balancer = BalancerState::Charging;
        m.uptime_s = 58_217_709;
        m.charging_mosfet = Some(true);
        m.discharging_mosfet = Some(false);
        m
    }

    #[test]
    fn encode_then_decode_gives_the_model_back() {
        for variant in [Variant::Jk02_24s, Variant::Jk02_32s] {
            let m = model(variant);
            let frame = m.encode().unwrap();
            assert!(is_consistent(&frame, variant));
            let d = CellInfo::decode(&frame, variant, Some(19)).unwrap();
            assert_eq!(d.cells, m.cells);
            assert_eq!(d.pack_voltage, m.pack_voltage);
            assert_eq!(d.current, m.current);
            assert_eq!(d.temperatures, m.temperatures);
            let expected_alarms = if variant == Variant::Jk02_24s {
                Alarms(0x0201) // 16 bits only
            } else {
                Alarms(0x0008_0201)
            };
            assert_eq!(d.alarms, Some(expected_alarms));
            assert_eq!(d.heating, m.heating);
            assert_eq!(d.dry_contacts, m.dry_contacts);
            assert_eq!(d.total_cycle_capacity, m.total_cycle_capacity);
            assert_eq!(d.counter, 42);
            // A decoded struct is canonical: it survives another round.
            let again = CellInfo::decode(&d.encode().unwrap(), variant, Some(19)).unwrap();
            assert_eq!(again, d);
        }
    }

    #[test]
    fn encoded_frames_carry_the_bms_fields() {
        let m = model(Variant::Jk02_32s);
        let f = m.encode().unwrap();
        // Power field: unsigned |V×I| in mW.
        assert_eq!(f.u32(154), (52.85f64 * 12.684 * 1000.0).round() as u32);
        // Max/min cell indices are 0-based.
        let s = m.stats().unwrap();
        assert_eq!(usize::from(f.u8(78)) + 1, usize::from(s.max_cell));
        assert_eq!(usize::from(f.u8(79)) + 1, usize::from(s.min_cell));
        // T4 is absent: −200.0 °C and its presence bit clear.
        assert_eq!(f.i16(256), TEMPERATURE_ABSENT);
        assert_eq!(f.u8(214), 0b10_1111);
    }

    #[test]
    fn temperatures_follow_mask_firmware_and_absent_marker() {
        let mut m = model(Variant::Jk02_32s);
        m.temperatures.t4 = Some(0.0);
        m.temperature_presence_mask = Some(0xFF);
        let f = m.encode().unwrap();
        let t = |sw| {
            CellInfo::decode(&f, Variant::Jk02_32s, sw)
                .unwrap()
                .temperatures
        };
        // 11.x firmware leaves @256/@258 at 0: not a temperature.
        assert_eq!(t(Some(11)).t4, None);
        assert_eq!(t(None).t4, None);
        assert_eq!(t(Some(14)).t4, Some(0.0));
        // −200 °C means "not fitted" even with the bit set.
        assert!(t(Some(19)).t2.is_some());
        let mut m2 = m.clone();
        m2.temperatures.t2 = None;
        let f2 = m2.encode().unwrap();
        let t2 = CellInfo::decode(&f2, Variant::Jk02_32s, Some(19)).unwrap();
        assert_eq!(t2.temperatures.t2, None);
        // Presence bit clear hides a value.
        let mut m3 = model(Variant::Jk02_32s);
        m3.temperature_presence_mask = None;
        let f3 = m3.encode().unwrap();
        let mut bytes = *f3.as_bytes();
        bytes[214] &= !MASK_32S_T1;
        bytes[299] = super::super::frame::checksum(&bytes[..299]);
        let f3 = Frame::new(&bytes).unwrap();
        let d3 = CellInfo::decode(&f3, Variant::Jk02_32s, Some(19)).unwrap();
        assert_eq!(d3.temperatures.t1, None);
        assert_eq!(d3.temperatures.mosfet, Some(26.2));
    }

    #[test]
    fn stats_skip_dead_cells_and_first_cell_wins_ties() {
        let mut m = CellInfo::new(Variant::Jk02_32s);
        assert_eq!(m.stats(), None);
        m.cells = vec![
            Cell {
                number: 1,
                voltage: 3.3,
                resistance: 0.0,
            },
            Cell {
                number: 2,
                voltage: 0.0,
                resistance: 0.0,
            },
            Cell {
                number: 3,
                voltage: 3.2,
                resistance: 0.0,
            },
            Cell {
                number: 4,
                voltage: 3.2,
                resistance: 0.0,
            },
            Cell {
                number: 5,
                voltage: 3.3,
                resistance: 0.0,
            },
        ];
        let s = m.stats().unwrap();
        assert_eq!((s.min_cell, s.max_cell), (3, 1));
        assert!((s.average_voltage - 3.25).abs() < 1e-9);
        assert!((s.delta_voltage - 0.1).abs() < 1e-9);
    }

    #[test]
    fn wrong_variant_is_inconsistent() {
        for variant in [Variant::Jk02_24s, Variant::Jk02_32s] {
            let f = model(variant).encode().unwrap();
            for other in Variant::ALL {
                assert_eq!(
                    is_consistent(&f, other),
                    other == variant,
                    "{variant} as {other}"
                );
            }
        }
        // No cells, 0 V: nothing contradicts any layout.
        let empty = CellInfo::new(Variant::Jk02_32s).encode().unwrap();
        assert!(Variant::ALL.iter().all(|&v| is_consistent(&empty, v)));
    }

    #[test]
    fn decode_rejects_other_frame_types_and_jk04_cannot_encode() {
        let f = FrameBuilder::new().finish(FrameType::Settings, 0);
        assert!(matches!(
            CellInfo::decode(&f, Variant::Jk02_32s, None),
            Err(DecodeError::FrameType { .. })
        ));
        assert!(!is_consistent(&f, Variant::Jk02_32s));
        assert_eq!(
            CellInfo::new(Variant::Jk04).encode(),
            Err(EncodeError::Jk04)
        );
        let mut m = CellInfo::new(Variant::Jk02_24s);
        m.cells = vec![Cell {
            number: 25,
            voltage: 3.3,
            resistance: 0.0,
        }];
        assert_eq!(
            m.encode(),
            Err(EncodeError::CellNumber {
                number: 25,
                slots: 24
            })
        );
    }

    #[test]
    fn jk04_frames_decode_from_floats() {
        let mut b = FrameBuilder::new();
        for (i, v) in [3.35f32, 3.36, 0.0, 3.34].into_iter().enumerate() {
            b.f32(o04::CELLS + 4 * i, v);
            b.f32(o04::RESISTANCES + 4 * i, 0.125);
        }
        b.f32(o04::AVERAGE, 3.35);
        b.f32(o04::DELTA, f32::NAN);
        b.u8(o04::BALANCER, 2);
        b.f32(o04::BALANCE_CURRENT, 1.5);
        b.u32(o04::RUNTIME, 1_873_811);
        let f = b.finish(FrameType::CellInfo, 1);
        assert!(is_consistent(&f, Variant::Jk04));
        assert!(!is_consistent(&f, Variant::Jk02_24s));
        let d = CellInfo::decode(&f, Variant::Jk04, None).unwrap();
        // The slot at 0 V is not a cell.
        assert_eq!(
            d.cells.iter().map(|c| c.number).collect::<Vec<_>>(),
            [1, 2, 4]
        );
        assert_eq!(d.cells[0].resistance, 125.0);
        assert!((d.pack_voltage - 10.05).abs() < 1e-5);
        assert_eq!(d.bms_delta_cell_voltage, Some(0.0), "NaN becomes 0");
        assert_eq!(d.balancer, BalancerState::Discharging);
        assert_eq!(d.balancing_current, 1.5);
        assert_eq!(d.uptime_s, 1_873_811);
        assert_eq!((d.current, d.soc, d.alarms), (None, None, None));
        assert_eq!(d.stats().unwrap().min_cell, 4);
    }

    #[test]
    fn alarm_names_and_problem() {
        let a = Alarms(0x0008_0201);
        assert_eq!(
            a.names(),
            [
                "Wire resistance",
                "Charge undertemperature",
                "Modify password in time"
            ]
        );
        assert_eq!(
            a.keys(),
            [
                "wire_resistance",
                "charge_undertemperature",
                "password_reminder"
            ]
        );
        assert!(a.problem());
        // Fully charged and the password reminder fire on healthy packs.
        assert!(!Alarms((1 << 4) | (1 << 19)).problem());
        assert_eq!(Alarms(1 << 30).names(), ["alarm bit 30"]);
    }

    fn cells_strategy(max: u8) -> impl Strategy<Value = Vec<Cell>> {
        proptest::collection::btree_set(1..=max, 0..=usize::from(max)).prop_flat_map(|numbers| {
            let n = numbers.len();
            (
                Just(numbers),
                proptest::collection::vec(0u16..=4500, n),
                proptest::collection::vec(0u16..=2000, n),
            )
                .prop_map(|(numbers, mv, mohm)| {
                    numbers
                        .into_iter()
                        .zip(mv.into_iter().zip(mohm))
                        .map(|(number, (mv, mohm))| Cell {
                            number,
                            voltage: f64::from(mv) / 1000.0,
                            resistance: f64::from(mohm),
                        })
                        .collect()
                })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// A battery model → frame → notifications with junk between →
        /// assembler → decoder gives the model back (quantised), and the
        /// decoded struct re-encodes to itself.
        #[test]
        fn model_round_trips_through_the_assembler(
            wide in any::<bool>(),
            cells in cells_strategy(32),
            current_ma in -400_000i32..400_000,
            soc in 0u8..=100,
            temps in proptest::collection::vec(proptest::option::of(-400i16..1200), 6),
            alarms in any::<u32>(),
            uptime in any::<u32>(),
            cut in 1usize..300,
        ) {
            let variant = if wide { Variant::Jk02_32s } else { Variant::Jk02_24s };
            let mut m = CellInfo::new(variant);
            m.cells = cells.into_iter().filter(|c| usize::from(c.number) <= variant.cell_slots()).collect();
            m.pack_voltage = m.cells.iter().map(|c| c.voltage).sum::<f64>();
            m.current = Some(f64::from(current_ma) / 1000.0);
            m.soc = Some(soc);
            let t = |i: usize| temps[i].map(|r| f64::from(r) / 10.0);
            m.temperatures = Temperatures {
                mosfet: t(0), t1: t(1), t2: t(2),
                t3: if wide { t(3) } else { None },
                t4: if wide { t(4) } else { None },
                t5: if wide { t(5) } else { None },
            };
            m.alarms = Some(Alarms(if wide { alarms } else { alarms & 0xFFFF }));
            m.uptime_s = uptime;
            let frame = m.encode().unwrap();
            prop_assert!(is_consistent(&frame, variant));

            let mut stream = b"AT\r\n".to_vec();
            stream.extend_from_slice(&frame.as_bytes()[..cut]);
            let mut a = Assembler::new();
            a.push(&stream);
            prop_assert!(a.next_frame().is_none());
            let mut tail = frame.as_bytes()[cut..].to_vec();
            tail.extend_from_slice(&crate::drivers::jkbms::command::ack_record());
            a.push(&tail);
            let got = a.next_frame();
            prop_assert_eq!(got.as_ref(), Some(&frame));
            let d = CellInfo::decode(&frame, variant, Some(19)).unwrap();
            prop_assert_eq!(&d.cells, &m.cells);
            prop_assert!((d.pack_voltage - m.pack_voltage).abs() < 0.0006);
            prop_assert_eq!(d.current, m.current);
            prop_assert_eq!(d.soc, m.soc);
            prop_assert_eq!(d.temperatures, m.temperatures);
            prop_assert_eq!(d.alarms, m.alarms);
            prop_assert_eq!(d.uptime_s, m.uptime_s);
            let again = CellInfo::decode(&d.encode().unwrap(), variant, Some(19)).unwrap();
            prop_assert_eq!(again, d);
        }
    }
}
