//! The settings as JSON: the subset for the pack's state object and the
//! full dump for `energy2mqtt decode`.

use serde_json::{Map, Value, json};

use super::{Flag32, Settings};
use crate::drivers::jkbms::publish::number;

impl Settings {
    /// The subset of the settings that goes into the pack's state object
    /// (see [`super::super::publish::fields`]): what a user or the balancer needs
    /// next to the live values.
    pub fn state_map(&self) -> Map<String, Value> {
        let mut m = Map::new();
        match self {
            Self::Jk02(s) => {
                m.insert("nominal_capacity".into(), number(s.nominal_capacity, 3));
                m.insert("max_charge_current".into(), number(s.max_charge_current, 3));
                m.insert(
                    "max_discharge_current".into(),
                    number(s.max_discharge_current, 3),
                );
                m.insert("charging_enabled".into(), s.charging_enabled.into());
                m.insert("discharging_enabled".into(), s.discharging_enabled.into());
                m.insert("balancer_enabled".into(), s.balancer_enabled.into());
            }
            Self::Jk04(s) => {
                m.insert("balancer_enabled".into(), s.balancer_enabled.into());
            }
        }
        m
    }

    /// Every setting, for `energy2mqtt decode`.
    pub fn to_json(&self) -> Value {
        match self {
            Self::Jk04(s) => json!({
                "cell_count": s.cell_count,
                "power_off_voltage": number(s.power_off_voltage, 4),
                "voltage_calibration": number(s.voltage_calibration, 4),
                "balance_start_voltage": number(s.balance_start_voltage, 4),
                "balance_trigger_voltage": number(s.balance_trigger_voltage, 4),
                "max_balance_current": number(s.max_balance_current, 4),
                "balancer_enabled": s.balancer_enabled,
            }),
            Self::Jk02(s) => {
                let mut m = Map::new();
                let mut put = |k: &str, v: Value| {
                    m.insert(k.to_owned(), v);
                };
                for (k, v) in [
                    ("smart_sleep_voltage", s.smart_sleep_voltage),
                    (
                        "cell_undervoltage_protection",
                        s.cell_undervoltage_protection,
                    ),
                    ("cell_undervoltage_recovery", s.cell_undervoltage_recovery),
                    ("cell_overvoltage_protection", s.cell_overvoltage_protection),
                    ("cell_overvoltage_recovery", s.cell_overvoltage_recovery),
                    ("balance_trigger_voltage", s.balance_trigger_voltage),
                    ("soc_100_voltage", s.soc_100_voltage),
                    ("soc_0_voltage", s.soc_0_voltage),
                    ("request_charge_voltage", s.request_charge_voltage),
                    ("request_float_voltage", s.request_float_voltage),
                    ("power_off_voltage", s.power_off_voltage),
                    ("max_charge_current", s.max_charge_current),
                    ("max_discharge_current", s.max_discharge_current),
                    ("max_balance_current", s.max_balance_current),
                    ("nominal_capacity", s.nominal_capacity),
                    ("balance_start_voltage", s.balance_start_voltage),
                ] {
                    put(k, number(v, 3));
                }
                for (k, v) in [
                    ("charge_overtemperature", s.charge_overtemperature),
                    (
                        "charge_overtemperature_recovery",
                        s.charge_overtemperature_recovery,
                    ),
                    ("discharge_overtemperature", s.discharge_overtemperature),
                    (
                        "discharge_overtemperature_recovery",
                        s.discharge_overtemperature_recovery,
                    ),
                    ("charge_undertemperature", s.charge_undertemperature),
                    (
                        "charge_undertemperature_recovery",
                        s.charge_undertemperature_recovery,
                    ),
                    ("mosfet_overtemperature", s.mosfet_overtemperature),
                    (
                        "mosfet_overtemperature_recovery",
                        s.mosfet_overtemperature_recovery,
                    ),
                ] {
                    put(k, number(v, 1));
                }
                for (k, v) in [
                    ("charge_overcurrent_delay_s", s.charge_overcurrent_delay_s),
                    (
                        "charge_overcurrent_recovery_s",
                        s.charge_overcurrent_recovery_s,
                    ),
                    (
                        "discharge_overcurrent_delay_s",
                        s.discharge_overcurrent_delay_s,
                    ),
                    (
                        "discharge_overcurrent_recovery_s",
                        s.discharge_overcurrent_recovery_s,
                    ),
                    ("short_circuit_recovery_s", s.short_circuit_recovery_s),
                    ("short_circuit_delay_us", s.short_circuit_delay_us),
                ] {
                    put(k, v.into());
                }
                put("cell_count", s.cell_count.into());
                put("charging_enabled", s.charging_enabled.into());
                put("discharging_enabled", s.discharging_enabled.into());
                put("balancer_enabled", s.balancer_enabled.into());
                put(
                    "wire_resistances",
                    s.wire_resistances
                        .iter()
                        .map(|r| number(*r, 0))
                        .collect::<Vec<_>>()
                        .into(),
                );
                if let Some(x) = &s.extra {
                    put("device_address", x.device_address.into());
                    put("precharge_time_s", x.precharge_time_s.into());
                    put(
                        "heating_start_temperature",
                        x.heating_start_temperature.into(),
                    );
                    put(
                        "heating_stop_temperature",
                        x.heating_stop_temperature.into(),
                    );
                    put("smart_sleep_delay_h", x.smart_sleep_delay_h.into());
                    put(
                        "discharge_undertemperature",
                        x.discharge_undertemperature.into(),
                    );
                    put(
                        "discharge_undertemperature_recovery",
                        x.discharge_undertemperature_recovery.into(),
                    );
                    put(
                        "data_field_enable_control_0",
                        x.data_field_enable_control_0.into(),
                    );
                    for flag in Flag32::ALL {
                        put(flag.key(), x.flag(flag).into());
                    }
                }
                Value::Object(m)
            }
        }
    }
}
