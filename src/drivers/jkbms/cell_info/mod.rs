//! The cell-info frame 0x02: decoders for JK02_24S, JK02_32S and JK04, the
//! encoder the simulator uses (JK02), and the pack-voltage cross-check that
//! tells a wrong variant (spec §5, §6, §7, §8).

use thiserror::Error;

use super::frame::Variant;

mod codes;
mod decode;
mod encode;

pub use codes::{Alarms, BalancerState, BatteryType, ChargeStatus};
pub use decode::is_consistent;

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
}

/// Why a struct cannot become a frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    #[error("JK04 frames cannot be encoded (the simulator speaks JK02)")]
    Jk04,
    #[error("cell number {number} is outside 1..={slots} of this variant")]
    CellNumber { number: u8, slots: usize },
}

#[cfg(test)]
mod tests;
