//! The byte- and bit-coded fields of the frame: alarm bits, balancer
//! action, charger stage, battery type.

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
