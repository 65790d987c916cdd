//! The register map of the single-phase LV hybrid family, and the Deye
//! warning and fault bit names it uses.

use super::{
    BitNames, Block, Family, IDENTITY, IdentityLayout, Kind, Register, Role, UnknownBit, Variant,
    current, frequency, measurement, power, temperature, today, total, voltage,
};
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
