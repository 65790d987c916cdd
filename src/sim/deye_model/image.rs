//! The register image: static identity, default settings, the live
//! registers, and the inverter clock.

use super::{BATTERY_C_RATE, BATTERY_NOMINAL_V, InverterModel, REGISTER_COUNT, WriteError, addr};

impl InverterModel {
    pub(super) fn write_static_registers(&mut self) {
        let serial = serial_words(&self.config.inverter_serial);
        let rated_raw = tenths(self.config.rated_power_w);
        let mut r = Regs(&mut self.regs);
        r.set(addr::DEVICE_TYPE, 0x0003);
        r.set(addr::MODBUS_ADDRESS, 1);
        r.set(addr::PROTOCOL_VERSION, 0x0104);
        for (i, word) in serial.iter().enumerate() {
            r.set(addr::SERIAL + i, *word);
        }
        r.set(addr::RATED_PHASE, 0);
        // Made-up but well-formed firmware words (4 hex nibbles each).
        for (a, word) in addr::FW
            .iter()
            .zip([0x1051_u16, 0x0001, 0x2137, 0x3027, 0x1108])
        {
            r.set(*a, word);
        }
        r.u32(addr::RATED_POWER_LO, addr::RATED_POWER_HI, rated_raw);
        r.set(addr::MPPT_PHASES, 0x0201);
        r.set(addr::ON_OFF, 1);
        r.set(addr::MAX_SOLAR_POWER, 7800);
        // Only the BMS limits are static; the live BMS values follow the battery.
        r.u16(addr::BMS_CHARGE_V, 5600.0);
        r.u16(addr::BMS_DISCHARGE_V, 4700.0);
        let bms_limit_a =
            (self.config.battery_capacity_wh * BATTERY_C_RATE / BATTERY_NOMINAL_V).round();
        for a in [
            addr::BMS_CHARGE_LIMIT_A,
            addr::BMS_DISCHARGE_LIMIT_A,
            addr::BMS_MAX_CHARGE_A,
            addr::BMS_MAX_DISCHARGE_A,
        ] {
            r.u16(a, bms_limit_a);
        }
    }

    pub(super) fn write_default_settings(&mut self) {
        let rated = self.config.rated_power_w;
        let capacity_ah = self.config.battery_capacity_wh / BATTERY_NOMINAL_V;
        let mut r = Regs(&mut self.regs);
        let defaults: [(usize, f64); 26] = [
            (addr::BATTERY_CONTROL_MODE, 1.0),
            (addr::EQUALISATION_V, 5600.0),
            (addr::ABSORPTION_V, 5600.0),
            (addr::FLOAT_V, 5500.0),
            (addr::ZERO_EXPORT_POWER, 20.0),
            (addr::MAX_CHARGE_A, 120.0),
            (addr::MAX_DISCHARGE_A, 120.0),
            (addr::BATTERY_OPERATION_MODE, 1.0),
            (addr::SHUTDOWN_SOC, 5.0),
            (addr::RESTART_SOC, 10.0),
            (addr::LOW_SOC, 10.0),
            (addr::SHUTDOWN_V, 4600.0),
            (addr::RESTART_V, 5000.0),
            (addr::LOW_V, 4750.0),
            (addr::GRID_CHARGE_START_V, 4900.0),
            (addr::GRID_CHARGE_START_SOC, 30.0),
            (addr::GRID_CHARGE_CURRENT, 40.0),
            (addr::GRID_CHARGE_ENABLE, 0.0),
            (addr::AUX_PORT_MODE, 0.0),
            (addr::ENERGY_PATTERN, 1.0),
            (addr::WORK_MODE, 1.0),
            (addr::MAX_SELL_POWER, rated),
            (addr::SOLAR_SELL, 1.0),
            // All weekdays selected, time-of-use itself off.
            (addr::TOU_FLAGS, f64::from(0x00FE_u16)),
            (addr::PEAK_SHAVING, 0.0),
            (addr::BATTERY_CAPACITY_AH, capacity_ah),
        ];
        for (a, v) in defaults {
            r.u16(a, v);
        }
        let tou_times = [100.0, 500.0, 900.0, 1300.0, 1700.0, 2100.0];
        let tou_soc = [20.0, 20.0, 10.0, 10.0, 20.0, 20.0];
        for slot in 0..6 {
            r.u16(addr::TOU_TIME + slot, tou_times[slot]);
            r.u16(addr::TOU_POWER + slot, rated);
            r.u16(addr::TOU_VOLTAGE + slot, 4900.0);
            r.u16(addr::TOU_SOC + slot, tou_soc[slot]);
            r.u16(addr::TOU_SLOT_FLAGS + slot, 0.0);
        }
    }

    /// Writes every live register from the current state. Settings and
    /// identity are left alone so written values stick.
    pub(super) fn refresh_registers(&mut self) {
        let clock = clock_words(self.clock_local_secs());
        let soc = self.soc_pct();
        let state = if self.fault_bits == 0 { 2 } else { 4 };
        let c = self.counters;
        let f = self.flows;
        let temps = self.temps;
        let grid_on = self.grid_connected;
        let warnings = self.warning_bits;
        let faults = self.fault_bits;
        let mut r = Regs(&mut self.regs);

        r.set(addr::CLOCK_YEAR_MONTH, clock[0]);
        r.set(addr::CLOCK_DAY_HOUR, clock[1]);
        r.set(addr::CLOCK_MINUTE_SECOND, clock[2]);

        r.set(addr::RUNNING_STATE, state);
        r.u16(
            addr::INVERTER_TODAY,
            f64::from(tenth_kwh(c.inverter.today_wh).min(0x7FFF)),
        );
        r.u32(
            addr::INVERTER_TOTAL_LO,
            addr::INVERTER_TOTAL_HI,
            tenth_kwh(c.inverter.total_wh).min(0x7FFF_FFFF),
        );
        r.u16(
            addr::BATTERY_CHARGE_TODAY,
            f64::from(tenth_kwh(c.battery_charge.today_wh)),
        );
        r.u16(
            addr::BATTERY_DISCHARGE_TODAY,
            f64::from(tenth_kwh(c.battery_discharge.today_wh)),
        );
        r.u32(
            addr::BATTERY_CHARGE_TOTAL_LO,
            addr::BATTERY_CHARGE_TOTAL_HI,
            tenth_kwh(c.battery_charge.total_wh),
        );
        r.u32(
            addr::BATTERY_DISCHARGE_TOTAL_LO,
            addr::BATTERY_DISCHARGE_TOTAL_HI,
            tenth_kwh(c.battery_discharge.total_wh),
        );
        r.u16(
            addr::GRID_IMPORT_TODAY,
            f64::from(tenth_kwh(c.grid_import.today_wh)),
        );
        r.u16(
            addr::GRID_EXPORT_TODAY,
            f64::from(tenth_kwh(c.grid_export.today_wh)),
        );
        // The one split counter: 79 in between holds the grid frequency.
        r.u32(
            addr::GRID_IMPORT_TOTAL_LO,
            addr::GRID_IMPORT_TOTAL_HI,
            tenth_kwh(c.grid_import.total_wh),
        );
        r.u16(addr::GRID_FREQUENCY, f.grid_hz * 100.0);
        r.u32(
            addr::GRID_EXPORT_TOTAL_LO,
            addr::GRID_EXPORT_TOTAL_HI,
            tenth_kwh(c.grid_export.total_wh),
        );
        r.u16(addr::LOAD_TODAY, f64::from(tenth_kwh(c.load.today_wh)));
        r.u32(
            addr::LOAD_TOTAL_LO,
            addr::LOAD_TOTAL_HI,
            tenth_kwh(c.load.total_wh),
        );
        r.temperature(addr::DC_TEMPERATURE, temps.dc_c);
        r.temperature(addr::HEATSINK_TEMPERATURE, temps.heatsink_c);
        r.u32(
            addr::PV_TOTAL_LO,
            addr::PV_TOTAL_HI,
            tenth_kwh(c.pv.total_wh),
        );
        r.u32(addr::WARNING_LO, addr::WARNING_HI, warnings);
        for word in 0..addr::FAULT_WORDS {
            r.set(
                addr::FAULT + word,
                ((faults >> (16 * word)) & 0xFFFF) as u16,
            );
        }
        r.u16(addr::PV_TODAY, f64::from(tenth_kwh(c.pv.today_wh)));
        r.u16(addr::PV1_VOLTAGE, f.pv_v[0] * 10.0);
        r.u16(addr::PV1_CURRENT, amps(f.pv_used[0], f.pv_v[0]) * 10.0);
        r.u16(addr::PV2_VOLTAGE, f.pv_v[1] * 10.0);
        r.u16(addr::PV2_CURRENT, amps(f.pv_used[1], f.pv_v[1]) * 10.0);

        r.u16(addr::GRID_VOLTAGE, f.grid_v * 10.0);
        r.u16(addr::GRID_VOLTAGE_L1_L2, f.grid_v * 10.0);
        r.u16(addr::INVERTER_VOLTAGE, f.inverter_v * 10.0);
        r.u16(addr::INVERTER_VOLTAGE_2, f.inverter_v * 10.0);
        r.u16(addr::LOAD_VOLTAGE, f.load_v * 10.0);
        // The real unit reports current magnitudes (160 stays positive while
        // exporting), so direction lives only in the power registers.
        r.s16(addr::GRID_CURRENT, amps(f.grid_w.abs(), f.grid_v) * 100.0);
        r.s16(addr::EXTERNAL_CT_CURRENT, 0.0);
        r.s16(
            addr::INVERTER_CURRENT,
            amps(f.inverter_w.abs(), f.inverter_v) * 100.0,
        );

        // Integer identities are built from the rounded parts so they hold
        // exactly on the raw registers, not just approximately.
        let gen_port = 0_i32;
        let grid_port = s16_int(f.grid_w);
        let inverter = s16_int(f.inverter_w);
        let load =
            (inverter + grid_port - gen_port).clamp(i32::from(i16::MIN), i32::from(i16::MAX));
        r.s16(addr::GEN_PORT_POWER, f64::from(gen_port));
        r.s16(addr::GRID_PORT_POWER, f64::from(grid_port));
        r.s16(addr::GRID_POWER, f64::from(grid_port));
        r.s16(addr::EXTERNAL_CT_POWER_L1, 0.0);
        r.s16(addr::EXTERNAL_CT_POWER, 0.0);
        r.s16(addr::INVERTER_POWER_L1, f64::from(inverter));
        r.s16(addr::INVERTER_POWER, f64::from(inverter));
        r.s16(addr::LOAD_POWER_L1, f64::from(load));
        r.s16(addr::LOAD_POWER, f64::from(load));
        // The public dump shows both holding 175 + 167 (LOAD-port power).
        r.s16(addr::UPS_POWER_A, f64::from(load));
        r.s16(addr::UPS_POWER_B, f64::from(load));

        r.temperature(addr::BATTERY_TEMPERATURE, temps.battery_c);
        r.u16(addr::BATTERY_VOLTAGE, f.battery_v * 100.0);
        r.u16(addr::BATTERY_SOC, soc);
        r.u16(addr::PV1_POWER, f.pv_used[0]);
        r.u16(addr::PV2_POWER, f.pv_used[1]);
        r.s16(addr::BATTERY_POWER, f.battery_w);
        r.s16(addr::BATTERY_CURRENT, f.battery_a * 100.0);
        r.u16(addr::LOAD_FREQUENCY, f.inverter_hz * 100.0);
        r.u16(addr::INVERTER_FREQUENCY, f.inverter_hz * 100.0);
        r.set(addr::GRID_RELAY, u16::from(grid_on));

        r.u16(addr::BMS_SOC, soc);
        r.u16(addr::BMS_VOLTAGE, f.battery_v * 100.0);
        r.s16(addr::BMS_CURRENT, f.battery_a);
        r.u16(addr::BMS_TEMPERATURE, temps.battery_c * 10.0);
    }

    pub(super) fn write_clock(&mut self, start: usize, values: &[u16]) -> Result<(), WriteError> {
        // Merge so a partial write keeps the other fields of the current clock.
        let mut words = clock_words(self.clock_local_secs());
        for (i, value) in values.iter().enumerate() {
            let slot = start
                .checked_add(i)
                .and_then(|a| a.checked_sub(addr::CLOCK_YEAR_MONTH))
                .and_then(|k| words.get_mut(k));
            if let Some(slot) = slot {
                *slot = *value;
            }
        }
        let local = clock_secs_from_words(words).ok_or(WriteError::IllegalValue {
            addr: u16::try_from(start).unwrap_or(u16::MAX),
        })?;
        self.clock_adjust_s = local - (self.t + f64::from(self.config.utc_offset_s));
        Ok(())
    }
}

fn amps(power_w: f64, volts: f64) -> f64 {
    if volts > 1.0 { power_w / volts } else { 0.0 }
}

/// Energy in Wh as the registers' 0.1 kWh units; floored like a meter so a
/// growing total never shows a decrease.
fn tenth_kwh(wh: f64) -> u32 {
    if wh.is_finite() {
        (wh / 100.0).floor().clamp(0.0, f64::from(u32::MAX)) as u32
    } else {
        0
    }
}

/// `v × 10` as a U32 (the ×0.1 W rated-power encoding).
fn tenths(v: f64) -> u32 {
    if v.is_finite() {
        (v * 10.0).round().clamp(0.0, f64::from(u32::MAX)) as u32
    } else {
        0
    }
}

fn s16_int(v: f64) -> i32 {
    if v.is_finite() {
        v.round().clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i32
    } else {
        0
    }
}

/// Writer over the register image; constant addresses only, so a miss is a
/// programming error and is ignored rather than panicking in the server.
struct Regs<'a>(&'a mut [u16; REGISTER_COUNT]);

impl Regs<'_> {
    fn set(&mut self, address: usize, value: u16) {
        if let Some(slot) = self.0.get_mut(address) {
            *slot = value;
        }
    }

    fn u16(&mut self, address: usize, value: f64) {
        let raw = if value.is_finite() {
            value.round().clamp(0.0, f64::from(u16::MAX)) as u16
        } else {
            0
        };
        self.set(address, raw);
    }

    fn s16(&mut self, address: usize, value: f64) {
        let raw = s16_int(value) as i16;
        self.set(address, u16::from_ne_bytes(raw.to_ne_bytes()));
    }

    fn u32(&mut self, lo: usize, hi: usize, value: u32) {
        self.set(lo, (value & 0xFFFF) as u16);
        self.set(hi, (value >> 16) as u16);
    }

    /// Deye temperature encoding: raw = (°C + 100) × 10.
    fn temperature(&mut self, address: usize, celsius: f64) {
        self.u16(address, (celsius + 100.0) * 10.0);
    }
}

/// Serial as 5 words, 2 ASCII chars each, high byte first.
fn serial_words(serial: &str) -> [u16; addr::SERIAL_WORDS] {
    let mut bytes = [b' '; 2 * addr::SERIAL_WORDS];
    for (slot, ch) in bytes.iter_mut().zip(serial.chars()) {
        *slot = if ch.is_ascii_graphic() || ch == ' ' {
            // is_ascii_* guarantees the char fits in one byte.
            u8::try_from(ch).unwrap_or(b'?')
        } else {
            b'?'
        };
    }
    let mut words = [0; addr::SERIAL_WORDS];
    for (word, pair) in words.iter_mut().zip(bytes.chunks_exact(2)) {
        if let [hi, lo] = pair {
            *word = u16::from_be_bytes([*hi, *lo]);
        }
    }
    words
}

/// Clock registers 22–24 for a local time in seconds since the epoch.
fn clock_words(local_secs: f64) -> [u16; 3] {
    let secs = local_secs.floor() as i64;
    let days = secs.div_euclid(86_400);
    let second_of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let hour = second_of_day / 3600;
    let minute = second_of_day % 3600 / 60;
    let second = second_of_day % 60;
    let year_byte = u16::try_from((year - 2000).clamp(0, 255)).unwrap_or(0);
    let byte = |v: i64| u16::try_from(v.clamp(0, 255)).unwrap_or(0);
    [
        (year_byte << 8) | byte(i64::from(month)),
        (byte(i64::from(day)) << 8) | byte(hour),
        (byte(minute) << 8) | byte(second),
    ]
}

/// Inverse of [`clock_words`]; `None` for an impossible date or time.
fn clock_secs_from_words(words: [u16; 3]) -> Option<f64> {
    let [year_month, day_hour, minute_second] = words.map(u16::to_be_bytes);
    let year = 2000 + i64::from(year_month[0]);
    let month = u32::from(year_month[1]);
    let day = u32::from(day_hour[0]);
    let hour = i64::from(day_hour[1]);
    let minute = i64::from(minute_second[0]);
    let second = i64::from(minute_second[1]);
    let valid = (1..=12).contains(&month)
        && day >= 1
        && day <= days_in_month(year, month)
        && hour < 24
        && minute < 60
        && second < 60;
    if !valid {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some((days * 86_400 + hour * 3600 + minute * 60 + second) as f64)
}

pub(super) fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 0,
    }
}

/// Proleptic Gregorian date for days since 1970-01-01 (H. Hinnant's algorithm).
pub(super) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both are small by construction (1..=31, 1..=12).
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

/// Days since 1970-01-01 for a proleptic Gregorian date.
pub(super) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let month = i64::from(month);
    let day = i64::from(day);
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
