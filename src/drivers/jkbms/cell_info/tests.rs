use proptest::prelude::*;

use super::*;
use crate::drivers::jkbms::DecodeError;
use crate::drivers::jkbms::assembler::Assembler;
use crate::drivers::jkbms::frame::{Frame, FrameBuilder, FrameType};

/// A plausible 16-cell pack the way the simulator would model one.
fn model(variant: Variant) -> CellInfo {
    let mut m = CellInfo::new(variant);
    m.counter = 42;
    m.cells = (1..=16)
        .map(|n| Cell {
            number: n,
            voltage: f64::from(3300 + u16::from(n % 5)) / 1000.0,
            resistance: 60.0 + f64::from(n),
        })
        .collect();
    m.pack_voltage = 52.85;
    m.current = Some(-12.684);
    m.soc = Some(78);
    m.soh = Some(99);
    m.remaining_capacity = Some(244.296);
    m.full_charge_capacity = Some(314.0);
    m.cycle_count = Some(15);
    m.total_cycle_capacity = Some(107_478.918);
    m.temperatures = Temperatures {
        mosfet: Some(26.2),
        t1: Some(-3.1),
        t2: Some(23.6),
        ..Temperatures::default()
    };
    if variant == Variant::Jk02_32s {
        m.temperatures.t3 = Some(26.2);
        m.temperatures.t5 = Some(24.0);
        m.heating = Some(true);
        m.heating_current = Some(0.514);
        m.charge_status = Some(ChargeStatus::Float);
        m.charge_status_elapsed_s = Some(677);
        m.dry_contacts = Some([false, true]);
        m.emergency_countdown_s = Some(30);
        m.detail_log_entries = Some(1083);
        m.precharging = Some(true);
        m.battery_type = Some(BatteryType::LiIon);
    }
    m.alarms = Some(Alarms(0x0008_0201));
    m.balancing_current = 1.99;
    m.balancer = BalancerState::Charging;
    m.uptime_s = 58_217_709;
    m.charging_mosfet = Some(true);
    m.discharging_mosfet = Some(false);
    m
}

#[test]
fn encode_then_decode_gives_the_model_back() {
    for variant in [Variant::Jk02_24s, Variant::Jk02_32s] {
        let m = model(variant);
        let frame = m.encode().unwrap();
        assert!(is_consistent(&frame, variant));
        let d = CellInfo::decode(&frame, variant, Some(19)).unwrap();
        assert_eq!(d.cells, m.cells);
        assert_eq!(d.pack_voltage, m.pack_voltage);
        assert_eq!(d.current, m.current);
        assert_eq!(d.temperatures, m.temperatures);
        let expected_alarms = if variant == Variant::Jk02_24s {
            Alarms(0x0201) // 16 bits only
        } else {
            Alarms(0x0008_0201)
        };
        assert_eq!(d.alarms, Some(expected_alarms));
        assert_eq!(d.heating, m.heating);
        assert_eq!(d.dry_contacts, m.dry_contacts);
        assert_eq!(d.total_cycle_capacity, m.total_cycle_capacity);
        assert_eq!(d.counter, 42);
        // A decoded struct is canonical: it survives another round.
        let again = CellInfo::decode(&d.encode().unwrap(), variant, Some(19)).unwrap();
        assert_eq!(again, d);
    }
}

#[test]
fn encoded_frames_carry_the_bms_fields() {
    let m = model(Variant::Jk02_32s);
    let f = m.encode().unwrap();
    // Power field: unsigned |V×I| in mW.
    assert_eq!(f.u32(154), (52.85f64 * 12.684 * 1000.0).round() as u32);
    // Max/min cell indices are 0-based.
    let s = m.stats().unwrap();
    assert_eq!(usize::from(f.u8(78)) + 1, usize::from(s.max_cell));
    assert_eq!(usize::from(f.u8(79)) + 1, usize::from(s.min_cell));
    // T4 is absent: −200.0 °C and its presence bit clear.
    assert_eq!(f.i16(256), TEMPERATURE_ABSENT);
    assert_eq!(f.u8(214), 0b10_1111);
}

#[test]
fn temperatures_follow_mask_firmware_and_absent_marker() {
    let mut m = model(Variant::Jk02_32s);
    m.temperatures.t4 = Some(0.0);
    m.temperature_presence_mask = Some(0xFF);
    let f = m.encode().unwrap();
    let t = |sw| {
        CellInfo::decode(&f, Variant::Jk02_32s, sw)
            .unwrap()
            .temperatures
    };
    // 11.x firmware leaves @256/@258 at 0: not a temperature.
    assert_eq!(t(Some(11)).t4, None);
    assert_eq!(t(None).t4, None);
    assert_eq!(t(Some(14)).t4, Some(0.0));
    // −200 °C means "not fitted" even with the bit set.
    assert!(t(Some(19)).t2.is_some());
    let mut m2 = m.clone();
    m2.temperatures.t2 = None;
    let f2 = m2.encode().unwrap();
    let t2 = CellInfo::decode(&f2, Variant::Jk02_32s, Some(19)).unwrap();
    assert_eq!(t2.temperatures.t2, None);
    // Presence bit clear hides a value.
    let mut m3 = model(Variant::Jk02_32s);
    m3.temperature_presence_mask = None;
    let f3 = m3.encode().unwrap();
    let mut bytes = *f3.as_bytes();
    bytes[214] &= !MASK_32S_T1;
    bytes[299] = super::super::frame::checksum(&bytes[..299]);
    let f3 = Frame::new(&bytes).unwrap();
    let d3 = CellInfo::decode(&f3, Variant::Jk02_32s, Some(19)).unwrap();
    assert_eq!(d3.temperatures.t1, None);
    assert_eq!(d3.temperatures.mosfet, Some(26.2));
}

#[test]
fn stats_skip_dead_cells_and_first_cell_wins_ties() {
    let mut m = CellInfo::new(Variant::Jk02_32s);
    assert_eq!(m.stats(), None);
    m.cells = vec![
        Cell {
            number: 1,
            voltage: 3.3,
            resistance: 0.0,
        },
        Cell {
            number: 2,
            voltage: 0.0,
            resistance: 0.0,
        },
        Cell {
            number: 3,
            voltage: 3.2,
            resistance: 0.0,
        },
        Cell {
            number: 4,
            voltage: 3.2,
            resistance: 0.0,
        },
        Cell {
            number: 5,
            voltage: 3.3,
            resistance: 0.0,
        },
    ];
    let s = m.stats().unwrap();
    assert_eq!((s.min_cell, s.max_cell), (3, 1));
    assert!((s.average_voltage - 3.25).abs() < 1e-9);
    assert!((s.delta_voltage - 0.1).abs() < 1e-9);
}

#[test]
fn wrong_variant_is_inconsistent() {
    for variant in [Variant::Jk02_24s, Variant::Jk02_32s] {
        let f = model(variant).encode().unwrap();
        for other in Variant::ALL {
            assert_eq!(
                is_consistent(&f, other),
                other == variant,
                "{variant} as {other}"
            );
        }
    }
    // No cells, 0 V: nothing contradicts any layout.
    let empty = CellInfo::new(Variant::Jk02_32s).encode().unwrap();
    assert!(Variant::ALL.iter().all(|&v| is_consistent(&empty, v)));
}

#[test]
fn decode_rejects_other_frame_types_and_jk04_cannot_encode() {
    let f = FrameBuilder::new().finish(FrameType::Settings, 0);
    assert!(matches!(
        CellInfo::decode(&f, Variant::Jk02_32s, None),
        Err(DecodeError::FrameType { .. })
    ));
    assert!(!is_consistent(&f, Variant::Jk02_32s));
    assert_eq!(
        CellInfo::new(Variant::Jk04).encode(),
        Err(EncodeError::Jk04)
    );
    let mut m = CellInfo::new(Variant::Jk02_24s);
    m.cells = vec![Cell {
        number: 25,
        voltage: 3.3,
        resistance: 0.0,
    }];
    assert_eq!(
        m.encode(),
        Err(EncodeError::CellNumber {
            number: 25,
            slots: 24
        })
    );
}

#[test]
fn jk04_frames_decode_from_floats() {
    let mut b = FrameBuilder::new();
    for (i, v) in [3.35f32, 3.36, 0.0, 3.34].into_iter().enumerate() {
        b.f32(o04::CELLS + 4 * i, v);
        b.f32(o04::RESISTANCES + 4 * i, 0.125);
    }
    b.f32(o04::AVERAGE, 3.35);
    b.f32(o04::DELTA, f32::NAN);
    b.u8(o04::BALANCER, 2);
    b.f32(o04::BALANCE_CURRENT, 1.5);
    b.u32(o04::RUNTIME, 1_873_811);
    let f = b.finish(FrameType::CellInfo, 1);
    assert!(is_consistent(&f, Variant::Jk04));
    assert!(!is_consistent(&f, Variant::Jk02_24s));
    let d = CellInfo::decode(&f, Variant::Jk04, None).unwrap();
    // The slot at 0 V is not a cell.
    assert_eq!(
        d.cells.iter().map(|c| c.number).collect::<Vec<_>>(),
        [1, 2, 4]
    );
    assert_eq!(d.cells[0].resistance, 125.0);
    assert!((d.pack_voltage - 10.05).abs() < 1e-5);
    assert_eq!(d.bms_delta_cell_voltage, Some(0.0), "NaN becomes 0");
    assert_eq!(d.balancer, BalancerState::Discharging);
    assert_eq!(d.balancing_current, 1.5);
    assert_eq!(d.uptime_s, 1_873_811);
    assert_eq!((d.current, d.soc, d.alarms), (None, None, None));
    assert_eq!(d.stats().unwrap().min_cell, 4);
}

#[test]
fn alarm_names_and_problem() {
    let a = Alarms(0x0008_0201);
    assert_eq!(
        a.names(),
        [
            "Wire resistance",
            "Charge undertemperature",
            "Modify password in time"
        ]
    );
    assert_eq!(
        a.keys(),
        [
            "wire_resistance",
            "charge_undertemperature",
            "password_reminder"
        ]
    );
    assert!(a.problem());
    // Fully charged and the password reminder fire on healthy packs.
    assert!(!Alarms((1 << 4) | (1 << 19)).problem());
    assert_eq!(Alarms(1 << 30).names(), ["alarm bit 30"]);
}

fn cells_strategy(max: u8) -> impl Strategy<Value = Vec<Cell>> {
    proptest::collection::btree_set(1..=max, 0..=usize::from(max)).prop_flat_map(|numbers| {
        let n = numbers.len();
        (
            Just(numbers),
            proptest::collection::vec(0u16..=4500, n),
            proptest::collection::vec(0u16..=2000, n),
        )
            .prop_map(|(numbers, mv, mohm)| {
                numbers
                    .into_iter()
                    .zip(mv.into_iter().zip(mohm))
                    .map(|(number, (mv, mohm))| Cell {
                        number,
                        voltage: f64::from(mv) / 1000.0,
                        resistance: f64::from(mohm),
                    })
                    .collect()
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, failure_persistence: None, ..ProptestConfig::default() })]

    /// A battery model → frame → notifications with junk between →
    /// assembler → decoder gives the model back (quantised), and the
    /// decoded struct re-encodes to itself.
    #[test]
    fn model_round_trips_through_the_assembler(
        wide in any::<bool>(),
        cells in cells_strategy(32),
        current_ma in -400_000i32..400_000,
        soc in 0u8..=100,
        temps in proptest::collection::vec(proptest::option::of(-400i16..1200), 6),
        alarms in any::<u32>(),
        uptime in any::<u32>(),
        cut in 1usize..300,
    ) {
        let variant = if wide { Variant::Jk02_32s } else { Variant::Jk02_24s };
        let mut m = CellInfo::new(variant);
        m.cells = cells.into_iter().filter(|c| usize::from(c.number) <= variant.cell_slots()).collect();
        m.pack_voltage = m.cells.iter().map(|c| c.voltage).sum::<f64>();
        m.current = Some(f64::from(current_ma) / 1000.0);
        m.soc = Some(soc);
        let t = |i: usize| temps[i].map(|r| f64::from(r) / 10.0);
        m.temperatures = Temperatures {
            mosfet: t(0), t1: t(1), t2: t(2),
            t3: if wide { t(3) } else { None },
            t4: if wide { t(4) } else { None },
            t5: if wide { t(5) } else { None },
        };
        m.alarms = Some(Alarms(if wide { alarms } else { alarms & 0xFFFF }));
        m.uptime_s = uptime;
        let frame = m.encode().unwrap();
        prop_assert!(is_consistent(&frame, variant));

        let mut stream = b"AT\r\n".to_vec();
        stream.extend_from_slice(&frame.as_bytes()[..cut]);
        let mut a = Assembler::new();
        a.push(&stream);
        prop_assert!(a.next_frame().is_none());
        let mut tail = frame.as_bytes()[cut..].to_vec();
        tail.extend_from_slice(&crate::drivers::jkbms::command::ack_record());
        a.push(&tail);
        let got = a.next_frame();
        prop_assert_eq!(got.as_ref(), Some(&frame));
        let d = CellInfo::decode(&frame, variant, Some(19)).unwrap();
        prop_assert_eq!(&d.cells, &m.cells);
        prop_assert!((d.pack_voltage - m.pack_voltage).abs() < 0.0006);
        prop_assert_eq!(d.current, m.current);
        prop_assert_eq!(d.soc, m.soc);
        prop_assert_eq!(d.temperatures, m.temperatures);
        prop_assert_eq!(d.alarms, m.alarms);
        prop_assert_eq!(d.uptime_s, m.uptime_s);
        let again = CellInfo::decode(&d.encode().unwrap(), variant, Some(19)).unwrap();
        prop_assert_eq!(again, d);
    }
}
