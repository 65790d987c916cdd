//! The settings frame 0x01 (spec §9, JK04 in §8): protection limits,
//! switch enables, the user-set nominal capacity. Decoders for all three
//! variants, an encoder for JK02 (the simulator answers `0x96` with it).

use super::DecodeError;
use super::cell_info::EncodeError;
use super::frame::{Frame, FrameBuilder, FrameType, Variant, scaled, unscaled};

mod json;

/// A settings frame of either family.
// One per pack, decoded once per connection: boxing would only make
// matching clumsier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Settings {
    Jk02(Jk02Settings),
    Jk04(Jk04Settings),
}

/// JK02 settings; offsets 6…141 are the same in 24S and 32S.
#[derive(Debug, Clone, PartialEq)]
pub struct Jk02Settings {
    pub variant: Variant,
    pub counter: u8,
    /// V, per cell unless stated.
    pub smart_sleep_voltage: f64,
    pub cell_undervoltage_protection: f64,
    pub cell_undervoltage_recovery: f64,
    pub cell_overvoltage_protection: f64,
    pub cell_overvoltage_recovery: f64,
    /// V: balancing starts when the cell delta reaches this.
    pub balance_trigger_voltage: f64,
    pub soc_100_voltage: f64,
    pub soc_0_voltage: f64,
    pub request_charge_voltage: f64,
    pub request_float_voltage: f64,
    pub power_off_voltage: f64,
    /// A.
    pub max_charge_current: f64,
    pub charge_overcurrent_delay_s: u32,
    pub charge_overcurrent_recovery_s: u32,
    /// A.
    pub max_discharge_current: f64,
    pub discharge_overcurrent_delay_s: u32,
    pub discharge_overcurrent_recovery_s: u32,
    pub short_circuit_recovery_s: u32,
    /// A.
    pub max_balance_current: f64,
    /// °C.
    pub charge_overtemperature: f64,
    pub charge_overtemperature_recovery: f64,
    pub discharge_overtemperature: f64,
    pub discharge_overtemperature_recovery: f64,
    pub charge_undertemperature: f64,
    pub charge_undertemperature_recovery: f64,
    pub mosfet_overtemperature: f64,
    pub mosfet_overtemperature_recovery: f64,
    pub cell_count: u8,
    /// The *enable* flags; the cell-info frame has the actual MOSFET states.
    pub charging_enabled: bool,
    pub discharging_enabled: bool,
    pub balancer_enabled: bool,
    /// Ah, set by the user (the cell-info frame's full-charge capacity is
    /// the BMS's aged estimate).
    pub nominal_capacity: f64,
    pub short_circuit_delay_us: u32,
    /// V.
    pub balance_start_voltage: f64,
    /// mΩ, one per cell slot (24 or 32).
    pub wire_resistances: Vec<f64>,
    /// JK02_32S only.
    pub extra: Option<Settings32>,
}

/// The JK02_32S tail of the settings frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Settings32 {
    /// RS485/CAN address (0 = master of a parallel bank).
    pub device_address: u8,
    pub precharge_time_s: u8,
    /// Bytes 282–283, see [`Flag32`].
    pub flags: u16,
    /// °C.
    pub heating_start_temperature: i8,
    pub heating_stop_temperature: i8,
    pub smart_sleep_delay_h: u8,
    pub data_field_enable_control_0: u8,
    /// °C.
    pub discharge_undertemperature: i8,
    pub discharge_undertemperature_recovery: i8,
}

/// The bits of [`Settings32::flags`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag32 {
    Heating = 0,
    DisableTemperatureSensors = 1,
    GpsHeartbeat = 2,
    /// Set: RS485; clear: CAN.
    PortSwitchRs485 = 3,
    DisplayAlwaysOn = 4,
    SpecialCharger = 5,
    SmartSleep = 6,
    DisablePclModule = 7,
    TimedStoredData = 8,
    ChargingFloatMode = 9,
    EmergencyButtonTrigger = 10,
    DryContactAlarmIntermittent = 11,
    DischargeOvercurrent2 = 12,
    DischargeOvercurrent3 = 13,
    GpsLockedCharging = 14,
    GpsLockedDischarging = 15,
}

impl Flag32 {
    pub const ALL: [Flag32; 16] = [
        Self::Heating,
        Self::DisableTemperatureSensors,
        Self::GpsHeartbeat,
        Self::PortSwitchRs485,
        Self::DisplayAlwaysOn,
        Self::SpecialCharger,
        Self::SmartSleep,
        Self::DisablePclModule,
        Self::TimedStoredData,
        Self::ChargingFloatMode,
        Self::EmergencyButtonTrigger,
        Self::DryContactAlarmIntermittent,
        Self::DischargeOvercurrent2,
        Self::DischargeOvercurrent3,
        Self::GpsLockedCharging,
        Self::GpsLockedDischarging,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Self::Heating => "heating_enabled",
            Self::DisableTemperatureSensors => "disable_temperature_sensors",
            Self::GpsHeartbeat => "gps_heartbeat",
            Self::PortSwitchRs485 => "port_rs485",
            Self::DisplayAlwaysOn => "display_always_on",
            Self::SpecialCharger => "special_charger",
            Self::SmartSleep => "smart_sleep",
            Self::DisablePclModule => "disable_pcl_module",
            Self::TimedStoredData => "timed_stored_data",
            Self::ChargingFloatMode => "charging_float_mode",
            Self::EmergencyButtonTrigger => "emergency_button_trigger",
            Self::DryContactAlarmIntermittent => "dry_contact_alarm_intermittent",
            Self::DischargeOvercurrent2 => "discharge_overcurrent_2",
            Self::DischargeOvercurrent3 => "discharge_overcurrent_3",
            Self::GpsLockedCharging => "gps_locked_charging",
            Self::GpsLockedDischarging => "gps_locked_discharging",
        }
    }
}

impl Settings32 {
    pub fn flag(&self, flag: Flag32) -> bool {
        self.flags & (1 << flag as u16) != 0
    }
}

/// JK04 settings: what esphome-jk-bms reads (float32 values).
#[derive(Debug, Clone, PartialEq)]
pub struct Jk04Settings {
    pub counter: u8,
    pub cell_count: u8,
    /// V.
    pub power_off_voltage: f64,
    /// ADC reference calibration, V.
    pub voltage_calibration: f64,
    pub balance_start_voltage: f64,
    pub balance_trigger_voltage: f64,
    /// A.
    pub max_balance_current: f64,
    pub balancer_enabled: bool,
}

mod o {
    pub const SMART_SLEEP_VOLTAGE: usize = 6;
    pub const CELL_UVP: usize = 10;
    pub const CELL_UVPR: usize = 14;
    pub const CELL_OVP: usize = 18;
    pub const CELL_OVPR: usize = 22;
    pub const BALANCE_TRIGGER: usize = 26;
    pub const SOC_100: usize = 30;
    pub const SOC_0: usize = 34;
    pub const RCV: usize = 38;
    pub const RFV: usize = 42;
    pub const POWER_OFF: usize = 46;
    pub const MAX_CHARGE_CURRENT: usize = 50;
    pub const CHARGE_OCP_DELAY: usize = 54;
    pub const CHARGE_OCP_RECOVERY: usize = 58;
    pub const MAX_DISCHARGE_CURRENT: usize = 62;
    pub const DISCHARGE_OCP_DELAY: usize = 66;
    pub const DISCHARGE_OCP_RECOVERY: usize = 70;
    pub const SCP_RECOVERY: usize = 74;
    pub const MAX_BALANCE_CURRENT: usize = 78;
    pub const CHARGE_OTP: usize = 82;
    pub const CHARGE_OTPR: usize = 86;
    pub const DISCHARGE_OTP: usize = 90;
    pub const DISCHARGE_OTPR: usize = 94;
    pub const CHARGE_UTP: usize = 98;
    pub const CHARGE_UTPR: usize = 102;
    pub const MOS_OTP: usize = 106;
    pub const MOS_OTPR: usize = 110;
    pub const CELL_COUNT: usize = 114;
    pub const CHARGING: usize = 118;
    pub const DISCHARGING: usize = 122;
    pub const BALANCER: usize = 126;
    pub const NOMINAL_CAPACITY: usize = 130;
    pub const SCP_DELAY: usize = 134;
    pub const BALANCE_START: usize = 138;
    pub const RESISTANCES_24S: usize = 158;
    pub const RESISTANCES_32S: usize = 142;
    pub const DEVICE_ADDRESS: usize = 270;
    pub const PRECHARGE_TIME: usize = 274;
    pub const FLAGS: usize = 282;
    pub const HEATING_START: usize = 284;
    pub const HEATING_STOP: usize = 285;
    pub const SMART_SLEEP_DELAY: usize = 286;
    pub const DATA_FIELD_ENABLE_0: usize = 287;
    pub const DISCHARGE_UTP: usize = 296;
    pub const DISCHARGE_UTPR: usize = 297;

    pub const JK04_CELL_COUNT: usize = 34;
    pub const JK04_POWER_OFF: usize = 38;
    pub const JK04_VOLTAGE_CALIBRATION: usize = 74;
    pub const JK04_BALANCE_START: usize = 98;
    pub const JK04_BALANCE_TRIGGER: usize = 106;
    pub const JK04_MAX_BALANCE_CURRENT: usize = 110;
    pub const JK04_BALANCER: usize = 114;
}

fn resistances_at(variant: Variant) -> usize {
    if variant == Variant::Jk02_32s {
        o::RESISTANCES_32S
    } else {
        o::RESISTANCES_24S
    }
}

/// float32 → f64, non-finite → 0 (keeps JSON valid on a misread frame).
fn f32_field(frame: &Frame, at: usize) -> f64 {
    let v = f64::from(frame.f32(at));
    if v.is_finite() { v } else { 0.0 }
}

impl Settings {
    pub fn decode(frame: &Frame, variant: Variant) -> Result<Self, DecodeError> {
        if frame.frame_type() != FrameType::Settings {
            return Err(DecodeError::FrameType {
                expected: FrameType::Settings,
                got: frame.frame_type(),
            });
        }
        if variant == Variant::Jk04 {
            return Ok(Self::Jk04(Jk04Settings {
                counter: frame.counter(),
                cell_count: frame.u8(o::JK04_CELL_COUNT),
                power_off_voltage: f32_field(frame, o::JK04_POWER_OFF),
                voltage_calibration: f32_field(frame, o::JK04_VOLTAGE_CALIBRATION),
                balance_start_voltage: f32_field(frame, o::JK04_BALANCE_START),
                balance_trigger_voltage: f32_field(frame, o::JK04_BALANCE_TRIGGER),
                max_balance_current: f32_field(frame, o::JK04_MAX_BALANCE_CURRENT),
                balancer_enabled: frame.u8(o::JK04_BALANCER) != 0,
            }));
        }
        let volts = |at| scaled(frame.u32(at), 1000.0);
        let amps = volts;
        let celsius = |at| scaled(frame.i32(at), 10.0);
        let res_at = resistances_at(variant);
        let extra = (variant == Variant::Jk02_32s).then(|| Settings32 {
            device_address: frame.u8(o::DEVICE_ADDRESS),
            precharge_time_s: frame.u8(o::PRECHARGE_TIME),
            flags: frame.u16(o::FLAGS),
            heating_start_temperature: frame.i8(o::HEATING_START),
            heating_stop_temperature: frame.i8(o::HEATING_STOP),
            smart_sleep_delay_h: frame.u8(o::SMART_SLEEP_DELAY),
            data_field_enable_control_0: frame.u8(o::DATA_FIELD_ENABLE_0),
            discharge_undertemperature: frame.i8(o::DISCHARGE_UTP),
            discharge_undertemperature_recovery: frame.i8(o::DISCHARGE_UTPR),
        });
        Ok(Self::Jk02(Jk02Settings {
            variant,
            counter: frame.counter(),
            smart_sleep_voltage: volts(o::SMART_SLEEP_VOLTAGE),
            cell_undervoltage_protection: volts(o::CELL_UVP),
            cell_undervoltage_recovery: volts(o::CELL_UVPR),
            cell_overvoltage_protection: volts(o::CELL_OVP),
            cell_overvoltage_recovery: volts(o::CELL_OVPR),
            balance_trigger_voltage: volts(o::BALANCE_TRIGGER),
            soc_100_voltage: volts(o::SOC_100),
            soc_0_voltage: volts(o::SOC_0),
            request_charge_voltage: volts(o::RCV),
            request_float_voltage: volts(o::RFV),
            power_off_voltage: volts(o::POWER_OFF),
            max_charge_current: amps(o::MAX_CHARGE_CURRENT),
            charge_overcurrent_delay_s: frame.u32(o::CHARGE_OCP_DELAY),
            charge_overcurrent_recovery_s: frame.u32(o::CHARGE_OCP_RECOVERY),
            max_discharge_current: amps(o::MAX_DISCHARGE_CURRENT),
            discharge_overcurrent_delay_s: frame.u32(o::DISCHARGE_OCP_DELAY),
            discharge_overcurrent_recovery_s: frame.u32(o::DISCHARGE_OCP_RECOVERY),
            short_circuit_recovery_s: frame.u32(o::SCP_RECOVERY),
            max_balance_current: amps(o::MAX_BALANCE_CURRENT),
            charge_overtemperature: celsius(o::CHARGE_OTP),
            charge_overtemperature_recovery: celsius(o::CHARGE_OTPR),
            discharge_overtemperature: celsius(o::DISCHARGE_OTP),
            discharge_overtemperature_recovery: celsius(o::DISCHARGE_OTPR),
            charge_undertemperature: celsius(o::CHARGE_UTP),
            charge_undertemperature_recovery: celsius(o::CHARGE_UTPR),
            mosfet_overtemperature: celsius(o::MOS_OTP),
            mosfet_overtemperature_recovery: celsius(o::MOS_OTPR),
            // A u32 of which only the low byte is meaningful.
            cell_count: frame.u8(o::CELL_COUNT),
            charging_enabled: frame.u8(o::CHARGING) != 0,
            discharging_enabled: frame.u8(o::DISCHARGING) != 0,
            balancer_enabled: frame.u8(o::BALANCER) != 0,
            nominal_capacity: scaled(frame.u32(o::NOMINAL_CAPACITY), 1000.0),
            short_circuit_delay_us: frame.u32(o::SCP_DELAY),
            balance_start_voltage: volts(o::BALANCE_START),
            wire_resistances: (0..variant.cell_slots())
                .map(|i| f64::from(frame.u32(res_at + 4 * i)))
                .collect(),
            extra,
        }))
    }

    /// The frame this struct describes (JK02 only, for the simulator).
    pub fn encode(&self) -> Result<Frame, EncodeError> {
        let s = match self {
            Self::Jk02(s) => s,
            Self::Jk04(_) => return Err(EncodeError::Jk04),
        };
        let mut b = FrameBuilder::new();
        let milli = |v: f64| unscaled(v, 1000.0) as u32;
        let deci = |v: f64| unscaled(v, 10.0) as i32;
        for (at, v) in [
            (o::SMART_SLEEP_VOLTAGE, s.smart_sleep_voltage),
            (o::CELL_UVP, s.cell_undervoltage_protection),
            (o::CELL_UVPR, s.cell_undervoltage_recovery),
            (o::CELL_OVP, s.cell_overvoltage_protection),
            (o::CELL_OVPR, s.cell_overvoltage_recovery),
            (o::BALANCE_TRIGGER, s.balance_trigger_voltage),
            (o::SOC_100, s.soc_100_voltage),
            (o::SOC_0, s.soc_0_voltage),
            (o::RCV, s.request_charge_voltage),
            (o::RFV, s.request_float_voltage),
            (o::POWER_OFF, s.power_off_voltage),
            (o::MAX_CHARGE_CURRENT, s.max_charge_current),
            (o::MAX_DISCHARGE_CURRENT, s.max_discharge_current),
            (o::MAX_BALANCE_CURRENT, s.max_balance_current),
            (o::NOMINAL_CAPACITY, s.nominal_capacity),
            (o::BALANCE_START, s.balance_start_voltage),
        ] {
            b.u32(at, milli(v));
        }
        for (at, v) in [
            (o::CHARGE_OCP_DELAY, s.charge_overcurrent_delay_s),
            (o::CHARGE_OCP_RECOVERY, s.charge_overcurrent_recovery_s),
            (o::DISCHARGE_OCP_DELAY, s.discharge_overcurrent_delay_s),
            (
                o::DISCHARGE_OCP_RECOVERY,
                s.discharge_overcurrent_recovery_s,
            ),
            (o::SCP_RECOVERY, s.short_circuit_recovery_s),
            (o::SCP_DELAY, s.short_circuit_delay_us),
            (o::CELL_COUNT, u32::from(s.cell_count)),
            (o::CHARGING, u32::from(s.charging_enabled)),
            (o::DISCHARGING, u32::from(s.discharging_enabled)),
            (o::BALANCER, u32::from(s.balancer_enabled)),
        ] {
            b.u32(at, v);
        }
        for (at, v) in [
            (o::CHARGE_OTP, s.charge_overtemperature),
            (o::CHARGE_OTPR, s.charge_overtemperature_recovery),
            (o::DISCHARGE_OTP, s.discharge_overtemperature),
            (o::DISCHARGE_OTPR, s.discharge_overtemperature_recovery),
            (o::CHARGE_UTP, s.charge_undertemperature),
            (o::CHARGE_UTPR, s.charge_undertemperature_recovery),
            (o::MOS_OTP, s.mosfet_overtemperature),
            (o::MOS_OTPR, s.mosfet_overtemperature_recovery),
        ] {
            b.i32(at, deci(v));
        }
        let res_at = resistances_at(s.variant);
        for (i, r) in s
            .wire_resistances
            .iter()
            .take(s.variant.cell_slots())
            .enumerate()
        {
            b.u32(res_at + 4 * i, unscaled(*r, 1.0) as u32);
        }
        if let (Variant::Jk02_32s, Some(x)) = (s.variant, &s.extra) {
            b.u8(o::DEVICE_ADDRESS, x.device_address);
            b.u8(o::PRECHARGE_TIME, x.precharge_time_s);
            b.u16(o::FLAGS, x.flags);
            b.i8(o::HEATING_START, x.heating_start_temperature);
            b.i8(o::HEATING_STOP, x.heating_stop_temperature);
            b.u8(o::SMART_SLEEP_DELAY, x.smart_sleep_delay_h);
            b.u8(o::DATA_FIELD_ENABLE_0, x.data_field_enable_control_0);
            b.i8(o::DISCHARGE_UTP, x.discharge_undertemperature);
            b.i8(o::DISCHARGE_UTPR, x.discharge_undertemperature_recovery);
        }
        Ok(b.finish(FrameType::Settings, s.counter))
    }

    /// Plausible settings of a 16-cell 280 Ah LFP pack: the simulator's
    /// defaults.
    pub fn example(variant: Variant) -> Self {
        if variant == Variant::Jk04 {
            return Self::Jk04(Jk04Settings {
                counter: 0,
                cell_count: 16,
                power_off_voltage: 3.0,
                voltage_calibration: 3.0,
                balance_start_voltage: 3.4,
                balance_trigger_voltage: 0.005,
                max_balance_current: 2.0,
                balancer_enabled: true,
            });
        }
        Self::Jk02(Jk02Settings {
            variant,
            counter: 0,
            smart_sleep_voltage: 3.5,
            cell_undervoltage_protection: 2.8,
            cell_undervoltage_recovery: 3.0,
            cell_overvoltage_protection: 3.65,
            cell_overvoltage_recovery: 3.44,
            balance_trigger_voltage: 0.003,
            soc_100_voltage: 3.445,
            soc_0_voltage: 2.8,
            request_charge_voltage: 3.45,
            request_float_voltage: 3.35,
            power_off_voltage: 2.5,
            max_charge_current: 100.0,
            charge_overcurrent_delay_s: 30,
            charge_overcurrent_recovery_s: 60,
            max_discharge_current: 150.0,
            discharge_overcurrent_delay_s: 300,
            discharge_overcurrent_recovery_s: 60,
            short_circuit_recovery_s: 30,
            max_balance_current: 2.0,
            charge_overtemperature: 70.0,
            charge_overtemperature_recovery: 60.0,
            discharge_overtemperature: 70.0,
            discharge_overtemperature_recovery: 60.0,
            charge_undertemperature: 5.0,
            charge_undertemperature_recovery: 9.5,
            mosfet_overtemperature: 80.0,
            mosfet_overtemperature_recovery: 70.0,
            cell_count: 16,
            charging_enabled: true,
            discharging_enabled: true,
            balancer_enabled: true,
            nominal_capacity: 280.0,
            short_circuit_delay_us: 1500,
            balance_start_voltage: 3.4,
            wire_resistances: vec![0.0; variant.cell_slots()],
            extra: (variant == Variant::Jk02_32s).then(|| Settings32 {
                device_address: 0,
                precharge_time_s: 5,
                flags: 1 << Flag32::ChargingFloatMode as u16,
                heating_start_temperature: 5,
                heating_stop_temperature: 10,
                smart_sleep_delay_h: 24,
                data_field_enable_control_0: 254,
                discharge_undertemperature: -20,
                discharge_undertemperature_recovery: -10,
            }),
        })
    }

    pub fn cell_count(&self) -> u8 {
        match self {
            Self::Jk02(s) => s.cell_count,
            Self::Jk04(s) => s.cell_count,
        }
    }
}

#[cfg(test)]
mod tests;
