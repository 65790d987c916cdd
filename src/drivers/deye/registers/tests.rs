use super::*;
use proptest::prelude::*;

/// Made-up block A (59..112), one word per register.
fn block_a() -> Vec<u16> {
    let mut a = vec![0u16; 54];
    let mut set = |addr: usize, v: u16| a[addr - 59] = v;
    set(59, 2);
    set(60, 123);
    set(63, 0x5678);
    set(64, 0x0002);
    set(70, 45);
    set(71, 67);
    set(72, 0x1000);
    set(74, 0xFFFF);
    set(76, 89);
    set(77, 12);
    set(78, 0x1234);
    set(79, 5013);
    set(80, 0x0001);
    set(81, 0x0000);
    set(82, 0x0001);
    set(84, 150);
    set(85, 0x4E20);
    set(90, 1355);
    set(91, 1421);
    set(96, 0x86A0);
    set(97, 0x0001);
    set(101, 0x0002);
    set(102, 0x4000);
    set(103, 0x1001);
    set(105, 0x0004);
    set(108, 87);
    set(109, 3501);
    set(110, 75);
    set(111, 3402);
    set(112, 87);
    a
}

/// Block B (150..194) from the PR #488 dump; `ct` picks the column.
fn block_b(ct: bool) -> Vec<u16> {
    #[rustfmt::skip]
    let table: [(usize, u16, u16); 27] = [
        (150, 2405, 2379), (154, 2405, 2379), (157, 2443, 2420),
        (160, 859, 173), (162, 509, 1187), (164, 1060, 250),
        (167, 63518, 21), (169, 1252, 21), (170, 1252, 3312),
        (172, 1252, 3312), (173, 2538, 555), (175, 2538, 555),
        (176, 3790, 576), (178, 3790, 576), (179, 520, 576),
        (181, 111, 96), (182, 1275, 1275), (183, 5258, 5305),
        (184, 96, 96), (185, 520, 576), (186, 261, 262),
        (187, 295, 297), (190, 2184, 77), (191, 4155, 147),
        (192, 5013, 5016), (193, 5013, 5016), (194, 1, 1),
    ];
    let mut b = vec![0u16; 45];
    for (addr, ct_raw, load_raw) in table {
        b[addr - 150] = if ct { ct_raw } else { load_raw };
    }
    b[152 - 150] = b[0];
    b[156 - 150] = b[0];
    b
}

fn bank(ct: bool) -> Registers {
    let mut regs = Registers::new();
    regs.insert_block(59, &block_a());
    regs.insert_block(150, &block_b(ct));
    regs
}

fn decode(regs: &Registers) -> Sample {
    decode_sample(&SINGLE_PHASE_LV, regs, &DecodeOptions::default()).expect("decodes")
}

fn num(s: &Sample, key: &str) -> f64 {
    s.number(key).unwrap_or_else(|| panic!("{key} missing"))
}

fn text(s: &Sample, key: &str) -> String {
    s.get(key)
        .and_then(Value::text)
        .unwrap_or_else(|| panic!("{key} missing"))
}

#[test]
fn ct_mode_dump_decodes_to_documented_values() {
    let s = decode(&bank(true));
    assert_eq!(s.inverter_power_w, 2538.0);
    assert_eq!(s.grid_port_power_w, -2018.0);
    assert_eq!(s.grid_power_w, 1252.0);
    assert_eq!(s.load_power_w, 3790.0);
    assert_eq!(s.load_port_power_w, 520.0);
    assert_eq!(s.external_ct_power_w, 1252.0);
    assert_eq!(s.gen_port_power_w, 0.0);
    assert_eq!(s.pv_power_w, 556.0);
    assert_eq!(s.battery_soc, 96.0);
    assert_eq!(s.battery_power_w, 2184.0);
    assert_eq!(s.battery_temperature_c, Some(27.5));
    assert!(s.grid_connected);
    let expected = [
        ("inverter_power", 2538.0),
        ("grid_port_power", -2018.0),
        ("grid_power", 1252.0),
        ("load_power", 3790.0),
        ("load_port_power", 520.0),
        ("battery_voltage", 52.58),
        ("battery_soc", 96.0),
        ("battery_power", 2184.0),
        ("battery_current", 41.55),
        ("battery_temperature", 27.5),
        ("grid_voltage", 240.5),
        ("inverter_voltage", 240.5),
        ("load_voltage", 244.3),
        ("grid_current", 8.59),
        ("pv1_power", 261.0),
        ("pv2_power", 295.0),
        ("pv_power", 556.0),
        ("load_frequency", 50.13),
        ("inverter_frequency", 50.13),
    ];
    for (key, value) in expected {
        assert_eq!(num(&s, key), value, "{key}");
    }
    assert_eq!(s.get("grid_connected"), Some(&Value::Bool(true)));
}

#[test]
fn load_mode_dump_decodes_to_documented_values() {
    let s = decode(&bank(false));
    assert_eq!(s.inverter_power_w, 555.0);
    assert_eq!(s.grid_port_power_w, 21.0);
    assert_eq!(s.grid_power_w, 21.0);
    assert_eq!(s.load_power_w, 576.0);
    assert_eq!(s.load_port_power_w, 576.0);
    assert_eq!(s.external_ct_power_w, 3312.0);
    assert_eq!(s.pv_power_w, 559.0);
    assert_eq!(num(&s, "battery_voltage"), 53.05);
    assert_eq!(num(&s, "battery_current"), 1.47);
    assert_eq!(num(&s, "battery_power"), 77.0);
    assert_eq!(num(&s, "grid_voltage"), 237.9);
    assert_eq!(num(&s, "load_frequency"), 50.16);
    assert!(s.grid_connected);
}

#[test]
fn block_a_decodes() {
    let s = decode(&bank(true));
    let expected = [
        ("inverter_energy_today", 12.3),
        ("inverter_energy_total", f64::from(0x25678) * 0.1),
        ("battery_charge_today", 4.5),
        ("battery_discharge_today", 6.7),
        ("battery_charge_total", 409.6),
        ("battery_discharge_total", 6553.5),
        ("grid_import_today", 8.9),
        ("grid_export_today", 1.2),
        ("grid_import_total", 7019.6),
        ("grid_frequency", 50.13),
        ("grid_export_total", 6553.6),
        ("load_energy_today", 15.0),
        ("load_energy_total", 2000.0),
        ("dc_temperature", 35.5),
        ("heatsink_temperature", 42.1),
        ("pv_energy_total", 10000.0),
        ("pv_energy_today", 8.7),
        ("pv1_voltage", 350.1),
        ("pv1_current", 7.5),
        ("pv2_voltage", 340.2),
        ("pv2_current", 8.7),
    ];
    for (key, value) in expected {
        assert!(
            (num(&s, key) - value).abs() < 1e-9,
            "{key}: {}",
            num(&s, key)
        );
    }
    assert_eq!(num(&s, "grid_import_total"), 7019.6);
    assert_eq!(s.running_state, RunningState::Normal);
    assert_eq!(
        s.get("running_state"),
        Some(&Value::State(RunningState::Normal))
    );
    assert_eq!(text(&s, "running_state"), "normal");
    assert_eq!(text(&s, "warnings"), "fan failure, battery loss");
    assert_eq!(s.warning_bits, 0x4000_0002);
    assert_eq!(s.get("warning_bits"), Some(&Value::Raw(0x4000_0002)));
    assert_eq!(
        text(&s, "faults"),
        "F1, F13 working mode change, F35 no AC grid"
    );
    let map = s.to_map();
    assert_eq!(
        map.get("warnings"),
        Some(&Json::from("fan failure, battery loss"))
    );
    assert_eq!(map.get("running_state"), Some(&Json::from("normal")));
    assert_eq!(
        map.get("fault_bits"),
        Some(&Json::from(0x0004_0000_1001u64))
    );
    assert_eq!(s.fault_bits, 0x0004_0000_1001);
    let totals: Vec<_> = s.totals.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        totals,
        [
            "inverter_energy_total",
            "battery_charge_total",
            "battery_discharge_total",
            "grid_import_total",
            "grid_export_total",
            "load_energy_total",
            "pv_energy_total"
        ]
    );
}

#[test]
fn u32_is_low_word_first_and_import_total_skips_79() {
    let mut regs = bank(true);
    regs.insert(78, 0x1234);
    regs.insert(79, 4998);
    regs.insert(80, 0x0001);
    regs.insert(72, 0x0001);
    regs.insert(73, 0x0002);
    let s = decode(&regs);
    assert_eq!(num(&s, "grid_import_total"), 7019.6);
    assert_eq!(num(&s, "grid_frequency"), 49.98);
    assert_eq!(num(&s, "battery_charge_total"), 13107.3);
}

#[test]
fn s32_total_is_signed() {
    let mut regs = bank(true);
    regs.insert(63, 0xFFFF);
    regs.insert(64, 0xFFFF);
    assert_eq!(num(&decode(&regs), "inverter_energy_total"), -0.1);
}

#[test]
fn s16_negatives() {
    let mut regs = bank(true);
    regs.insert(190, (-1500i16) as u16);
    regs.insert(191, (-2870i16) as u16);
    regs.insert(169, (-3200i16) as u16);
    regs.insert(175, (-40i16) as u16);
    regs.insert(60, 0xFFFF);
    let s = decode(&regs);
    assert_eq!(s.battery_power_w, -1500.0);
    assert_eq!(num(&s, "battery_current"), -28.7);
    assert_eq!(s.grid_power_w, -3200.0);
    assert_eq!(s.inverter_power_w, -40.0);
    assert_eq!(num(&s, "inverter_energy_today"), -0.1);
}

#[test]
fn temperatures_zero_is_absent_and_negative_works() {
    let mut regs = bank(true);
    regs.insert(182, 0);
    regs.insert(90, 0);
    regs.insert(91, 950);
    let s = decode(&regs);
    assert_eq!(s.battery_temperature_c, None);
    assert_eq!(s.get("battery_temperature"), None);
    assert_eq!(s.get("dc_temperature"), None);
    assert_eq!(num(&s, "heatsink_temperature"), -5.0);
    let map = s.to_map();
    assert!(!map.contains_key("battery_temperature"));
    assert!(!map.contains_key("dc_temperature"));
}

#[test]
fn fault_and_warning_bits() {
    assert_eq!(FAULT_NAMES.decode(1 << 34), ["F35 no AC grid"]);
    assert_eq!(
        FAULT_NAMES.decode(1 << 63),
        ["F64 heat-sink over-temperature"]
    );
    assert_eq!(FAULT_NAMES.decode(1 << 5), ["F6"]);
    assert_eq!(WARNING_NAMES.decode(1 << 5), ["warning bit 5"]);
    assert_eq!(
        WARNING_NAMES.decode(0b1110 | 1 << 31),
        [
            "fan failure",
            "grid phase failure",
            "meter communication failure",
            "parallel communication"
        ]
    );
    let mut regs = bank(true);
    for a in 101..=106 {
        regs.insert(a, 0);
    }
    regs.insert(105, 0x0004);
    let s = decode(&regs);
    assert_eq!(text(&s, "warnings"), "none");
    assert_eq!(text(&s, "faults"), "F35 no AC grid");
    assert_eq!(s.fault_bits, 1 << 34);
}

#[test]
fn running_state_text() {
    let names = [
        "standby",
        "self-check",
        "normal",
        "alarm",
        "fault",
        "activating",
    ];
    for (raw, name) in (0u16..).zip(names) {
        assert_eq!(RunningState::from_raw(raw).to_string(), name);
    }
    assert_eq!(RunningState::from_raw(9).to_string(), "unknown (9)");
}

#[test]
fn off_grid_relay() {
    let mut regs = bank(true);
    regs.insert(194, 0);
    let s = decode(&regs);
    assert!(!s.grid_connected);
    assert_eq!(s.to_map().get("grid_connected"), Some(&Json::Bool(false)));
}

#[test]
fn to_map_rounds_and_types() {
    let mut regs = bank(true);
    regs.insert(70, 3);
    regs.insert(183, 5107);
    let map = decode(&regs).to_map();
    let text = serde_json::to_string(&map).expect("serialises");
    assert!(text.contains("\"battery_charge_today\":0.3"), "{text}");
    assert!(text.contains("\"battery_voltage\":51.07"), "{text}");
    assert!(text.contains("\"inverter_power\":2538,"), "{text}");
    assert!(text.contains("\"grid_connected\":true"), "{text}");
    assert!(text.contains("\"fault_bits\":"), "{text}");
    assert!(!text.contains("0000000"), "{text}");
}

#[test]
fn every_published_key_is_described_and_vice_versa() {
    let specs = fields(&SINGLE_PHASE_LV);
    let map = decode(&bank(true)).to_map();
    let mut spec_keys: Vec<_> = specs.iter().map(|f| f.key).collect();
    let mut map_keys: Vec<_> = map.keys().map(String::as_str).collect();
    spec_keys.sort_unstable();
    map_keys.sort_unstable();
    assert_eq!(spec_keys, map_keys);
    let unique = spec_keys.len();
    spec_keys.dedup();
    assert_eq!(unique, spec_keys.len(), "duplicate keys");
    for required in [
        "pv1_voltage",
        "pv1_current",
        "pv1_power",
        "pv2_voltage",
        "pv2_current",
        "pv2_power",
        "pv_power",
        "battery_soc",
        "battery_voltage",
        "battery_current",
        "battery_power",
        "battery_temperature",
        "grid_voltage",
        "grid_frequency",
        "grid_power",
        "external_ct_power",
        "load_power",
        "load_port_power",
        "inverter_power",
        "grid_connected",
        "dc_temperature",
        "heatsink_temperature",
        "running_state",
        "warnings",
        "faults",
        "pv_energy_today",
        "pv_energy_total",
        "battery_charge_today",
        "battery_charge_total",
        "battery_discharge_today",
        "battery_discharge_total",
        "grid_import_today",
        "grid_import_total",
        "grid_export_today",
        "grid_export_total",
        "load_energy_today",
        "load_energy_total",
    ] {
        assert!(spec_keys.contains(&required), "{required}");
    }
    let spec = |key| specs.iter().find(|f| f.key == key).expect("described");
    let energy = spec("grid_import_total");
    assert_eq!(energy.unit, Some("kWh"));
    assert_eq!(energy.device_class, Some("energy"));
    assert_eq!(energy.state_class, Some("total_increasing"));
    assert_eq!(energy.precision, Some(1));
    let p = spec("battery_power");
    assert_eq!(
        (p.unit, p.device_class, p.state_class),
        (Some("W"), Some("power"), Some("measurement"))
    );
    assert_eq!(spec("grid_connected").kind, FieldKind::Binary);
    assert!(spec("fault_bits").diagnostic);
    assert!(spec("warning_bits").diagnostic);
    assert_eq!(spec("battery_voltage").precision, Some(2));
    assert_eq!(spec("battery_temperature").unit, Some("°C"));
}

#[test]
fn every_address_is_in_a_read_block() {
    let f = &SINGLE_PHASE_LV;
    for reg in f.fields.iter().chain([&f.rated_power]) {
        assert_eq!(reg.decimals, decimals_for(reg.scale), "{}", reg.key);
    }
    assert_eq!(
        [1.0, 10.0, 0.1, 0.01, 0.5, 0.25, 0.001].map(decimals_for),
        [0, 0, 1, 2, 1, 2, 3]
    );
    for reg in f.fields {
        for &addr in reg.addrs {
            assert!(
                f.blocks.iter().any(|b| b.contains(addr)),
                "{} {addr}",
                reg.key
            );
        }
    }
    let l = &f.layout;
    let identity_addrs = [
        l.device_type,
        l.modbus_address,
        l.protocol_version,
        l.mppt_phases,
    ]
    .into_iter()
    .chain(l.serial.iter().copied())
    .chain(l.fw_control_board.iter().copied())
    .chain(l.fw_comm_board.iter().copied())
    .chain(f.rated_power.addrs.iter().copied());
    for addr in identity_addrs {
        assert!(f.identity.contains(addr), "{addr}");
    }
    assert_eq!(f.identity, Block::new(0, 23));
    assert_eq!(IDENTITY, f.identity);
    assert_eq!(f.blocks, [Block::new(59, 54), Block::new(150, 45)]);
    assert!(f.blocks.iter().all(|b| b.count <= MODBUS_MAX_BLOCK));
}

#[test]
fn missing_register_is_an_error() {
    let mut regs = bank(true);
    regs.remove(80);
    assert_eq!(
        decode_sample(&SINGLE_PHASE_LV, &regs, &DecodeOptions::default()),
        Err(DecodeError::Missing(80))
    );
    let mut only_b = Registers::new();
    only_b.insert_block(150, &block_b(true));
    assert!(matches!(
        decode_sample(&SINGLE_PHASE_LV, &only_b, &DecodeOptions::default()),
        Err(DecodeError::Missing(_))
    ));
}

#[test]
fn power_scale_override() {
    let opts = DecodeOptions { power_scale: 10.0 };
    let s = decode_sample(&SINGLE_PHASE_LV, &bank(false), &opts).expect("decodes");
    assert_eq!(s.inverter_power_w, 5550.0);
    assert_eq!(s.grid_power_w, 210.0);
    assert_eq!(s.load_power_w, 5760.0);
    assert_eq!(s.load_port_power_w, 5760.0);
    // Not in the 167–178 group.
    assert_eq!(s.pv_power_w, 559.0);
    assert_eq!(s.battery_power_w, 77.0);
    assert_eq!(num(&s, "battery_current"), 14.7);
    let bad = DecodeOptions { power_scale: 0.0 };
    assert_eq!(
        decode_sample(&SINGLE_PHASE_LV, &bank(true), &bad),
        Err(DecodeError::BadScale(0.0))
    );
}

fn identity_bank() -> Registers {
    let mut regs = Registers::new();
    let mut words = [0u16; 23];
    words[0] = 0x0003;
    words[1] = 1;
    words[2] = 0x0104;
    for (i, pair) in b"2302160060".chunks(2).enumerate() {
        words[3 + i] = u16::from_be_bytes([pair[0], pair[1]]);
    }
    words[10] = 0xABCD;
    words[11] = 0x5A0B;
    words[12] = 0x0203;
    words[13] = 0x0001;
    words[14] = 0x1234;
    words[16] = 0xC350;
    words[17] = 0x0000;
    words[18] = 0x0201;
    regs.insert_block(0, &words);
    regs
}

#[test]
fn identity_example() {
    let id = decode_identity(&identity_bank()).expect("decodes");
    assert_eq!(
        id,
        Identity {
            device_type: 3,
            family: "single-phase LV hybrid",
            inverter_serial: "2302160060".into(),
            rated_power_w: 5000.0,
            mppts: 2,
            phases: 1,
            protocol_version: 0x0104,
            fw_control_board: "0001-0203-5A0B".into(),
            fw_comm_board: "1234-ABCD".into(),
            modbus_address: 1,
        }
    );
    let map = id.to_map();
    assert_eq!(map.get("rated_power"), Some(&Json::from(5000)));
    let mut keys: Vec<_> = identity_fields(&SINGLE_PHASE_LV)
        .iter()
        .map(|f| f.key)
        .collect();
    let mut map_keys: Vec<_> = map.keys().map(String::as_str).collect();
    keys.sort_unstable();
    map_keys.sort_unstable();
    assert_eq!(keys, map_keys);
}

#[test]
fn identity_serial_trims_and_six_kw() {
    let mut regs = identity_bank();
    regs.insert_block(3, &[0x2041, 0x4243, 0x0000, 0x0000, 0x0000]);
    regs.insert_block(16, &[0xEA60, 0x0000]);
    let id = decode_identity(&regs).expect("decodes");
    assert_eq!(id.inverter_serial, "ABC");
    assert_eq!(id.rated_power_w, 6000.0);
    assert_eq!(id.model_name(), "SUN-6K single-phase LV hybrid");
    regs.insert_block(16, &[36000, 0x0000]);
    let id = decode_identity(&regs).expect("decodes");
    assert_eq!(id.model_name(), "SUN-3.6K single-phase LV hybrid");
    regs.insert_block(16, &[0x0001, 0x0001]);
    assert_eq!(
        decode_identity(&regs).expect("decodes").rated_power_w,
        6553.7
    );
}

#[test]
fn identity_refuses_three_phase() {
    let mut regs = identity_bank();
    regs.insert(0, 0x0500);
    let err = decode_identity(&regs).expect_err("refused");
    assert!(err.to_string().contains("SG04LP3"), "{err}");
    regs.remove(17);
    regs.insert(0, 3);
    assert_eq!(decode_identity(&regs), Err(DecodeError::Missing(17)));
}

#[test]
fn detect_family_cases() {
    for code in [0x0003, 0x0300] {
        assert_eq!(
            detect_family(code).map(|f| f.name),
            Ok("single-phase LV hybrid")
        );
    }
    let msg = detect_family(0x0005).expect_err("refused").to_string();
    assert!(
        msg.contains("SG04LP3") && msg.contains("not supported"),
        "{msg}"
    );
    assert!(
        detect_family(0x0500)
            .expect_err("refused")
            .to_string()
            .contains("SG04LP3")
    );
    for (code, word) in [
        (0x0006, "HV"),
        (0x0601, "HV"),
        (0x0602, "HV"),
        (0x0002, "string"),
        (0x0004, "micro"),
        (0x0400, "micro"),
        (0x0103, "off-grid"),
        (0x0104, "storage"),
    ] {
        let msg = detect_family(code).expect_err("refused").to_string();
        assert!(msg.contains(word), "{code:#06x}: {msg}");
    }
    assert_eq!(
        detect_family(0x1234).expect_err("refused").to_string(),
        "unknown device type 0x1234"
    );
}

#[test]
fn plan_splits_blocks() {
    assert_eq!(
        plan(&[Block::new(59, 54)], 20),
        [Block::new(59, 20), Block::new(79, 20), Block::new(99, 14)]
    );
    assert_eq!(plan(SINGLE_PHASE_LV.blocks, 125), SINGLE_PHASE_LV.blocks);
    let big = plan(&[Block::new(0, 300)], 500);
    assert_eq!(
        big,
        [
            Block::new(0, 125),
            Block::new(125, 125),
            Block::new(250, 50)
        ]
    );
    assert_eq!(plan(&[Block::new(10, 3)], 0).len(), 3);
    assert_eq!(plan(&[Block::new(10, 0)], 20), []);
    let top = plan(&[Block::new(0xFFF0, 0x20)], 125);
    assert_eq!(top, [Block::new(0xFFF0, 0x10)]);
    for max in 0..=300u16 {
        for b in plan(
            &[Block::new(59, 54), Block::new(150, 45), Block::new(0, 1000)],
            max,
        ) {
            assert!(b.count >= 1 && b.count <= MODBUS_MAX_BLOCK && b.count <= max.max(1));
        }
    }
}

#[test]
fn registers_bank() {
    let mut regs = Registers::new();
    assert_eq!(regs.get(5), None);
    regs.insert_block(3, &[1, 2, 3]);
    assert_eq!(
        (regs.get(2), regs.get(3), regs.get(5), regs.get(6)),
        (None, Some(1), Some(3), None)
    );
    assert!(regs.has_block(Block::new(3, 3)));
    assert!(!regs.has_block(Block::new(3, 4)));
    regs.insert_block(0xFFFE, &[7, 8, 9]);
    assert_eq!(regs.get(0xFFFF), Some(8));
    regs.clear();
    assert_eq!(regs.get(3), None);
}

fn sample_with(edit: impl FnOnce(&mut Registers)) -> Sample {
    let mut regs = bank(true);
    edit(&mut regs);
    decode(&regs)
}

#[test]
fn plausibility_dump_is_accepted() {
    let s = decode(&bank(true));
    assert_eq!(check(&s, None, 6000.0), Ok(()));
    assert_eq!(check(&s, Some(&s), 6000.0), Ok(()));
    assert_eq!(check(&decode(&bank(false)), Some(&s), 5000.0), Ok(()));
}

#[test]
fn plausibility_inverter_output_over_rating_dropped() {
    let ok = sample_with(|r| r.insert(175, 6600));
    assert_eq!(check(&ok, None, 6000.0), Ok(()));
    let bad = sample_with(|r| r.insert(175, 6700));
    assert!(matches!(
        check(&bad, None, 6000.0),
        Err(Implausible::Power { field: "inverter_power", value, .. }) if value == 6700.0
    ));
    let negative = sample_with(|r| r.insert(175, (-6700i16) as u16));
    assert!(check(&negative, None, 6000.0).is_err());
}

#[test]
fn plausibility_big_on_grid_load_accepted() {
    // CT mode: 178 = 175 + 169 − 166 with 6 kW coming from the grid.
    let s = sample_with(|r| {
        r.insert(175, 3000);
        r.insert(169, 6000);
        r.insert(172, 6000);
        r.insert(178, 9000);
        r.insert(167, 4000);
    });
    assert_eq!(s.load_power_w, 9000.0);
    assert_eq!(check(&s, None, 6000.0), Ok(()));
    let spike = sample_with(|r| r.insert(166, 0xFFFF));
    assert_eq!(spike.gen_port_power_w, -1.0);
    let spike = sample_with(|r| r.insert(169, 30_000));
    assert!(matches!(
        check(&spike, None, 3000.0),
        Err(Implausible::Power {
            field: "grid_power",
            ..
        })
    ));
    let pv = sample_with(|r| r.insert(186, 60_000));
    assert!(matches!(
        check(&pv, None, 6000.0),
        Err(Implausible::Power {
            field: "pv_string_power",
            ..
        })
    ));
    let battery = sample_with(|r| r.insert(190, 20_000));
    assert!(matches!(
        check(&battery, None, 6000.0),
        Err(Implausible::Power {
            field: "battery_power",
            ..
        })
    ));
}

#[test]
fn plausibility_soc_over_100_dropped() {
    assert_eq!(
        check(&sample_with(|r| r.insert(184, 100)), None, 6000.0),
        Ok(())
    );
    assert_eq!(
        check(&sample_with(|r| r.insert(184, 101)), None, 6000.0),
        Err(Implausible::Soc(101.0))
    );
}

#[test]
fn plausibility_totals() {
    let before = decode(&bank(true));
    let down = sample_with(|r| r.insert(78, 0x1233));
    assert!(matches!(
        check(&down, Some(&before), 6000.0),
        Err(Implausible::CounterDecreased {
            field: "grid_import_total",
            ..
        })
    ));
    // Without a previous sample there is nothing to compare.
    assert_eq!(check(&down, None, 6000.0), Ok(()));
    let up = sample_with(|r| r.insert(78, 0x1234 + 1000));
    assert_eq!(check(&up, Some(&before), 6000.0), Ok(()));
    let jump = sample_with(|r| r.insert(78, 0x1234 + 1001));
    assert!(matches!(
        check(&jump, Some(&before), 6000.0),
        Err(Implausible::CounterJumped {
            field: "grid_import_total",
            ..
        })
    ));
    let high_word = sample_with(|r| r.insert(80, 2));
    assert!(check(&high_word, Some(&before), 6000.0).is_err());
}

#[test]
fn plausibility_daily_reset_accepted() {
    let before = decode(&bank(true));
    let midnight = sample_with(|r| {
        for a in [60, 70, 71, 76, 77, 84, 108] {
            r.insert(a, 0);
        }
    });
    assert_eq!(check(&midnight, Some(&before), 6000.0), Ok(()));
}

#[test]
fn plausibility_needs_a_rating() {
    let s = decode(&bank(true));
    assert_eq!(check(&s, None, 0.0), Err(Implausible::Rating(0.0)));
    assert!(check(&s, None, f64::NAN).is_err());
}

/// The property both the proptest and the bulk loop check: decoding
/// never panics, and whatever passes the filter respects the bounds.
fn exercise(regs: &Registers, previous: Option<&Sample>, rated: f64) -> Option<Sample> {
    let opts = DecodeOptions::default();
    let sample = decode_sample(&SINGLE_PHASE_LV, regs, &opts).ok()?;
    let map = sample.to_map();
    assert!(map.len() >= SINGLE_PHASE_LV.fields.len());
    if check(&sample, previous, rated).is_ok() {
        assert!(sample.battery_soc <= 100.0);
        assert!(sample.inverter_power_w.abs() <= 1.1 * rated);
        Some(sample)
    } else {
        None
    }
}

const ADDRS: [(u16, usize); 2] = [(59, 54), (150, 45)];

fn base_sample() -> &'static Sample {
    static BASE: std::sync::OnceLock<Sample> = std::sync::OnceLock::new();
    BASE.get_or_init(|| decode(&bank(true)))
}

fn fill(regs: &mut Registers, words: &[u16]) {
    let (a, b) = words.split_at(54.min(words.len()));
    regs.insert_block(ADDRS[0].0, a);
    regs.insert_block(ADDRS[1].0, b);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn arbitrary_registers_never_panic(
        words in prop::collection::vec(any::<u16>(), 99),
        holes in prop::collection::vec(0u16..200, 0..3),
        rated in 1.0f64..20_000.0,
    ) {
        let mut regs = Registers::new();
        fill(&mut regs, &words);
        for h in holes {
            regs.remove(h);
        }
        exercise(&regs, None, rated);
        exercise(&regs, Some(base_sample()), rated);
    }

    #[test]
    fn near_plausible_registers_respect_bounds(
        edits in prop::collection::vec((0usize..99, any::<u16>()), 0..6),
        small in prop::collection::vec((0usize..99, 0u16..200), 0..4),
        rated in 2_000.0f64..12_000.0,
    ) {
        let mut words = block_a();
        words.extend(block_b(true));
        for (i, v) in edits.into_iter().chain(small) {
            if let Some(w) = words.get_mut(i) {
                *w = v;
            }
        }
        let mut regs = Registers::new();
        fill(&mut regs, &words);
        exercise(&regs, Some(base_sample()), rated);
    }
}

/// A million register banks from a deterministic xorshift: a quarter
/// arbitrary, the rest the CT-mode dump with a few words replaced (so the
/// acceptance path is exercised), now and then with a register missing,
/// compared with nothing, the dump, or the last accepted sample. Split
/// over two threads to stay within a few seconds in a debug build.
#[test]
fn a_million_banks() {
    const TOTAL: u32 = 1_000_000;
    let run = |seed: u64, count: u32| {
        let mut x = seed;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut base = block_a();
        base.extend(block_b(true));
        let mut words = base.clone();
        let mut regs = Registers::new();
        let mut last: Option<Sample> = None;
        let (mut decoded, mut accepted) = (0u32, 0u32);
        for i in 0..count {
            let r = next();
            if r % 4 == 0 {
                for chunk in words.chunks_mut(4) {
                    let v = next();
                    for (j, w) in chunk.iter_mut().enumerate() {
                        *w = (v >> (16 * j)) as u16;
                    }
                }
            } else {
                words.copy_from_slice(&base);
                for _ in 0..(r >> 2) % 5 {
                    let v = next();
                    let value = match (v >> 8) % 4 {
                        0 => 0,
                        1 => 0xFFFF,
                        2 => ((v >> 16) % 200) as u16,
                        _ => (v >> 16) as u16,
                    };
                    if let Some(w) = words.get_mut((v % 99) as usize) {
                        *w = value;
                    }
                }
            }
            fill(&mut regs, &words);
            if (r >> 40) % 64 == 0 {
                let k = ((r >> 48) % 99) as u16;
                regs.remove(if k < 54 { 59 + k } else { 150 + k - 54 });
            }
            let rated = 3000.0 + ((r >> 20) % 9000) as f64;
            let Ok(s) = decode_sample(&SINGLE_PHASE_LV, &regs, &DecodeOptions::default()) else {
                continue;
            };
            decoded += 1;
            if i % 1024 == 0 {
                assert!(s.to_map().len() >= SINGLE_PHASE_LV.fields.len());
            }
            let previous = match (r >> 3) % 3 {
                0 => None,
                1 => Some(base_sample()),
                _ => last.as_ref(),
            };
            if check(&s, previous, rated).is_ok() {
                assert!(s.battery_soc <= 100.0);
                assert!(s.inverter_power_w.abs() <= 1.1 * rated);
                accepted += 1;
                last = Some(s);
            }
        }
        (decoded, accepted)
    };
    let (a, b) = std::thread::scope(|scope| {
        let first = scope.spawn(|| run(0x9E37_79B9_7F4A_7C15, TOTAL / 2));
        let second = run(0xD1B5_4A32_D192_ED03, TOTAL - TOTAL / 2);
        (first.join().expect("thread"), second)
    });
    let (decoded, accepted) = (a.0 + b.0, a.1 + b.1);
    assert!(decoded > TOTAL * 9 / 10, "{decoded}");
    assert!(accepted > TOTAL / 5, "{accepted}");
    assert!(accepted < decoded - TOTAL / 5, "{accepted}");
}
