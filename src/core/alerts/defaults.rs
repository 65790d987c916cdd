//! The built-in rules: the kinds of condition (`Check`) and every
//! rule's defaults (`DEFS`), with the LiFePO4 and NMC presets.

use super::{Direction, Level};
use crate::model::DeviceKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    Soc,
    NoCharging,
    CellDelta,
    CellMin,
    CellMax,
    CellAverage,
    TempHigh,
    TempLowCharging,
    ChargeCurrent,
    DischargeCurrent,
    Soh,
    WireResistance,
    PackHigh,
    PackLow,
    BmsAlarm,
    Emergency,
    Unreachable,
    InverterFault,
    BalancerFailsafe,
}

impl Check {
    pub(super) fn applies_to(self, kind: DeviceKind) -> bool {
        match self {
            Self::Unreachable => true,
            Self::InverterFault | Self::BalancerFailsafe => kind == DeviceKind::Inverter,
            _ => kind == DeviceKind::Bms,
        }
    }

    pub(super) fn direction(self) -> Option<Direction> {
        match self {
            Self::Soc
            | Self::NoCharging
            | Self::CellMin
            | Self::CellAverage
            | Self::TempLowCharging
            | Self::Soh
            | Self::PackLow => Some(Direction::Below),
            Self::CellDelta
            | Self::CellMax
            | Self::TempHigh
            | Self::ChargeCurrent
            | Self::DischargeCurrent
            | Self::WireResistance
            | Self::PackHigh => Some(Direction::Above),
            Self::BmsAlarm
            | Self::Emergency
            | Self::Unreachable
            | Self::InverterFault
            | Self::BalancerFailsafe => None,
        }
    }
}

/// A rule's defaults.
pub(super) struct Def {
    pub(super) id: &'static str,
    pub(super) family: &'static str,
    pub(super) name: &'static str,
    pub(super) check: Check,
    pub(super) level: Level,
    /// (LiFePO4, NMC); `None` for conditions without a threshold.
    pub(super) threshold: Option<(f64, f64)>,
    pub(super) hysteresis: f64,
    pub(super) for_secs: u64,
    pub(super) unit: &'static str,
    /// Decimals of values and thresholds in messages.
    pub(super) decimals: usize,
    /// Allowed thresholds and the step of a Home Assistant number entity.
    pub(super) range: (f64, f64, f64),
}

const fn both(v: f64) -> Option<(f64, f64)> {
    Some((v, v))
}

const PERCENT: (f64, f64, f64) = (1.0, 99.0, 1.0);
const CELL_V: (f64, f64, f64) = (2.0, 4.5, 0.01);
const AMPS: (f64, f64, f64) = (1.0, 1000.0, 1.0);
const NO_RANGE: (f64, f64, f64) = (0.0, 0.0, 0.0);

// Cell-voltage presets. LiFePO4 cells (e.g. EVE LF280K, CATL 280 Ah
// datasheets) charge to 3.65 V and cut off at 2.5 V; the discharge curve
// falls off its ~3.2–3.3 V plateau below ~3.0 V, so an average of 3.0 V
// means the pack is nearly empty and a single cell at 2.9 V is close to
// the knee. NMC cells charge to 4.2 V, cut off at 2.75–3.0 V, and sit near
// 3.3–3.4 V at ~10 % SOC. Pack limits are per cell × cell_count so that any
// series count works: 16S LFP charges at up to 56.8–58.4 V, which the
// original's fixed 55 V "critical" flagged every day. The delta and every
// other number are the original app's (docs/ALERTS.md lists them).
pub(super) const DEFS: &[Def] = &[
    Def {
        id: "soc_critical",
        family: "soc",
        name: "SOC critical",
        check: Check::Soc,
        level: Level::Critical,
        threshold: both(10.0),
        hysteresis: 2.0,
        for_secs: 60,
        unit: "%",
        decimals: 0,
        range: PERCENT,
    },
    Def {
        id: "soc_low",
        family: "soc",
        name: "SOC low",
        check: Check::Soc,
        level: Level::Error,
        threshold: both(20.0),
        hysteresis: 2.0,
        for_secs: 60,
        unit: "%",
        decimals: 0,
        range: PERCENT,
    },
    Def {
        id: "no_charging",
        family: "no_charging",
        name: "Low SOC, not charging",
        check: Check::NoCharging,
        level: Level::Warning,
        threshold: both(30.0),
        hysteresis: 2.0,
        for_secs: 600,
        unit: "%",
        decimals: 0,
        range: PERCENT,
    },
    Def {
        id: "cell_delta_error",
        family: "cell_delta",
        name: "Cell imbalance",
        check: Check::CellDelta,
        level: Level::Error,
        threshold: both(0.05),
        hysteresis: 0.01,
        for_secs: 60,
        unit: "V",
        decimals: 3,
        range: (0.01, 1.0, 0.005),
    },
    Def {
        id: "cell_delta_critical",
        family: "cell_delta",
        name: "Cell imbalance critical",
        check: Check::CellDelta,
        level: Level::Critical,
        threshold: both(0.1),
        hysteresis: 0.01,
        for_secs: 60,
        unit: "V",
        decimals: 3,
        range: (0.01, 1.0, 0.005),
    },
    Def {
        id: "cell_min_low",
        family: "cell_voltage",
        name: "Lowest cell voltage low",
        check: Check::CellMin,
        level: Level::Critical,
        threshold: Some((2.9, 3.0)),
        hysteresis: 0.05,
        for_secs: 30,
        unit: "V",
        decimals: 3,
        range: CELL_V,
    },
    Def {
        id: "cell_average_low",
        family: "cell_voltage",
        name: "Average cell voltage low",
        check: Check::CellAverage,
        level: Level::Error,
        threshold: Some((3.0, 3.3)),
        hysteresis: 0.05,
        for_secs: 60,
        unit: "V",
        decimals: 3,
        range: CELL_V,
    },
    Def {
        id: "cell_max_high",
        family: "cell_voltage",
        name: "Highest cell voltage high",
        check: Check::CellMax,
        level: Level::Error,
        threshold: Some((3.65, 4.2)),
        hysteresis: 0.05,
        for_secs: 30,
        unit: "V",
        decimals: 3,
        range: CELL_V,
    },
    Def {
        id: "temperature_high",
        family: "temperature",
        name: "Battery temperature high",
        check: Check::TempHigh,
        level: Level::Error,
        threshold: both(50.0),
        hysteresis: 5.0,
        for_secs: 60,
        unit: "°C",
        decimals: 1,
        range: (20.0, 100.0, 1.0),
    },
    Def {
        id: "temperature_critical",
        family: "temperature",
        name: "Battery temperature critical",
        check: Check::TempHigh,
        level: Level::Critical,
        threshold: both(60.0),
        hysteresis: 5.0,
        for_secs: 30,
        unit: "°C",
        decimals: 1,
        range: (20.0, 100.0, 1.0),
    },
    // Lithium cells must not be charged below 0 °C (lithium plating); both
    // chemistries' datasheets give 0 °C as the lowest charge temperature.
    Def {
        id: "temperature_low_charging",
        family: "temperature",
        name: "Charging while cold",
        check: Check::TempLowCharging,
        level: Level::Error,
        threshold: both(0.0),
        hysteresis: 2.0,
        for_secs: 60,
        unit: "°C",
        decimals: 1,
        range: (-30.0, 20.0, 1.0),
    },
    Def {
        id: "charge_current_high",
        family: "current",
        name: "Charge current high",
        check: Check::ChargeCurrent,
        level: Level::Error,
        threshold: both(80.0),
        hysteresis: 10.0,
        for_secs: 30,
        unit: "A",
        decimals: 1,
        range: AMPS,
    },
    Def {
        id: "charge_current_critical",
        family: "current",
        name: "Charge current critical",
        check: Check::ChargeCurrent,
        level: Level::Critical,
        threshold: both(100.0),
        hysteresis: 10.0,
        for_secs: 30,
        unit: "A",
        decimals: 1,
        range: AMPS,
    },
    Def {
        id: "discharge_current_high",
        family: "current",
        name: "Discharge current high",
        check: Check::DischargeCurrent,
        level: Level::Error,
        threshold: both(80.0),
        hysteresis: 10.0,
        for_secs: 30,
        unit: "A",
        decimals: 1,
        range: AMPS,
    },
    Def {
        id: "discharge_current_critical",
        family: "current",
        name: "Discharge current critical",
        check: Check::DischargeCurrent,
        level: Level::Critical,
        threshold: both(100.0),
        hysteresis: 10.0,
        for_secs: 30,
        unit: "A",
        decimals: 1,
        range: AMPS,
    },
    // One SOH rule: the original's "< 90 critical" made its "< 80" branch
    // unreachable and called a merely aged pack critical.
    Def {
        id: "soh_low",
        family: "soh",
        name: "Battery health low",
        check: Check::Soh,
        level: Level::Warning,
        threshold: both(80.0),
        hysteresis: 1.0,
        for_secs: 300,
        unit: "%",
        decimals: 0,
        range: (1.0, 100.0, 1.0),
    },
    Def {
        id: "wire_resistance_high",
        family: "wire_resistance",
        name: "Wire resistance high",
        check: Check::WireResistance,
        level: Level::Error,
        threshold: both(300.0),
        hysteresis: 20.0,
        for_secs: 300,
        unit: "mΩ",
        decimals: 0,
        range: (10.0, 5000.0, 10.0),
    },
    Def {
        id: "wire_resistance_critical",
        family: "wire_resistance",
        name: "Wire resistance critical",
        check: Check::WireResistance,
        level: Level::Critical,
        threshold: both(500.0),
        hysteresis: 20.0,
        for_secs: 300,
        unit: "mΩ",
        decimals: 0,
        range: (10.0, 5000.0, 10.0),
    },
    Def {
        id: "pack_voltage_high",
        family: "pack_voltage",
        name: "Pack voltage high",
        check: Check::PackHigh,
        level: Level::Error,
        threshold: Some((3.65, 4.2)),
        hysteresis: 0.05,
        for_secs: 30,
        unit: "V/cell",
        decimals: 2,
        range: CELL_V,
    },
    Def {
        id: "pack_voltage_low",
        family: "pack_voltage",
        name: "Pack voltage low",
        check: Check::PackLow,
        level: Level::Critical,
        threshold: Some((2.8, 3.0)),
        hysteresis: 0.05,
        for_secs: 30,
        unit: "V/cell",
        decimals: 2,
        range: CELL_V,
    },
    Def {
        id: "bms_alarm",
        family: "bms_alarm",
        name: "BMS alarm",
        check: Check::BmsAlarm,
        level: Level::Error,
        threshold: None,
        hysteresis: 0.0,
        for_secs: 10,
        unit: "",
        decimals: 0,
        range: NO_RANGE,
    },
    Def {
        id: "emergency_countdown",
        family: "emergency",
        name: "BMS emergency mode",
        check: Check::Emergency,
        level: Level::Critical,
        threshold: None,
        hysteresis: 0.0,
        for_secs: 0,
        unit: "s",
        decimals: 0,
        range: NO_RANGE,
    },
    // `for` comes from `[alerts] unreachable_after`.
    Def {
        id: "device_unreachable",
        family: "unreachable",
        name: "Device unreachable",
        check: Check::Unreachable,
        level: Level::Error,
        threshold: None,
        hysteresis: 0.0,
        for_secs: 300,
        unit: "",
        decimals: 0,
        range: NO_RANGE,
    },
    Def {
        id: "inverter_fault",
        family: "inverter_fault",
        name: "Inverter fault",
        check: Check::InverterFault,
        level: Level::Error,
        threshold: None,
        hysteresis: 0.0,
        for_secs: 30,
        unit: "",
        decimals: 0,
        range: NO_RANGE,
    },
    // The balancer has already waited `failsafe_after` before it sheds.
    Def {
        id: "balancer_failsafe",
        family: "balancer_failsafe",
        name: "Balancer failsafe",
        check: Check::BalancerFailsafe,
        level: Level::Error,
        threshold: None,
        hysteresis: 0.0,
        for_secs: 0,
        unit: "",
        decimals: 0,
        range: NO_RANGE,
    },
];

pub(super) fn def(id: &str) -> Option<&'static Def> {
    DEFS.iter().find(|d| d.id == id)
}
