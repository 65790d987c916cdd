//! The decoders for JK02_24S, JK02_32S and JK04, and the pack-voltage
//! cross-check that tells a wrong variant.

use super::{
    Alarms, BalancerState, BatteryType, CELLS_AT, Cell, CellInfo, ChargeStatus, MASK_24S_MOS,
    MASK_24S_T1, MASK_24S_T2, MASK_32S_MOS, MASK_32S_T1, MASK_32S_T2, MASK_32S_T3, MASK_32S_T4,
    MASK_32S_T5, O24, O32, Offsets, T3_MIN_MAJOR, T4_T5_MIN_MAJOR, TEMPERATURE_ABSENT,
    Temperatures, o04, o32x,
};
use crate::drivers::jkbms::DecodeError;
use crate::drivers::jkbms::frame::{Frame, FrameType, Variant, scaled};

impl CellInfo {
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
