//! The encoder the simulator uses (JK02).

use super::{
    BatteryType, CELLS_AT, CellInfo, ChargeStatus, EncodeError, MASK_24S_MOS, MASK_24S_T1,
    MASK_24S_T2, MASK_32S_MOS, MASK_32S_T1, MASK_32S_T2, MASK_32S_T3, MASK_32S_T4, MASK_32S_T5,
    O24, O32, TEMPERATURE_ABSENT, o32x,
};
use crate::drivers::jkbms::frame::{Frame, FrameBuilder, FrameType, Variant, unscaled};

impl CellInfo {
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
