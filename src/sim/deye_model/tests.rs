use super::image::{civil_from_days, days_from_civil, days_in_month};
use super::*;

/// 2024-06-15 00:00:00 UTC.
const JUNE_15: f64 = 1_718_409_600.0;
const RATED: f64 = 6000.0;

fn at_hour(hour: f64) -> SimTime {
    SimTime::from_unix_secs(JUNE_15 + hour * 3600.0)
}

fn model_at(hour: f64) -> InverterModel {
    InverterModel::new(ModelConfig::default(), at_hour(hour))
}

fn reg(m: &InverterModel, a: usize) -> u16 {
    m.registers()
        .get(a)
        .copied()
        .unwrap_or_else(|| panic!("register {a} missing"))
}

fn s16(m: &InverterModel, a: usize) -> i32 {
    i32::from(i16::from_ne_bytes(reg(m, a).to_ne_bytes()))
}

fn u32_at(m: &InverterModel, lo: usize, hi: usize) -> u32 {
    u32::from(reg(m, lo)) | (u32::from(reg(m, hi)) << 16)
}

/// All cumulative counters in raw 0.1 kWh, in a fixed order.
fn totals(m: &InverterModel) -> [u32; 7] {
    [
        u32_at(m, 63, 64),
        u32_at(m, 72, 73),
        u32_at(m, 74, 75),
        u32_at(m, 78, 80),
        u32_at(m, 81, 82),
        u32_at(m, 85, 86),
        u32_at(m, 96, 97),
    ]
}

const DAILY: [usize; 7] = [60, 70, 71, 76, 77, 84, 108];

/// Invariants that must hold at every instant.
fn check_invariants(m: &InverterModel) {
    let (p166, p167, p169, p175, p178) = (
        s16(m, 166),
        s16(m, 167),
        s16(m, 169),
        s16(m, 175),
        s16(m, 178),
    );
    assert_eq!(p178, p175 + p169 - p166, "178 = 175 + 169 - 166");
    assert_eq!(s16(m, 176), p178);
    assert_eq!(p169, p167, "zero export to load: 169 = 167");
    assert_eq!(s16(m, 179), p175 + p167 - p166, "LOAD-port power");
    assert_eq!((s16(m, 170), s16(m, 172), p166), (0, 0, 0));
    assert!(
        f64::from(p175) <= 1.1 * RATED,
        "175 = {p175} over 1.1 x rated"
    );
    assert!(p175 >= 0);
    assert!(reg(m, 184) <= 100);
    let snap = m.snapshot();
    assert!((0.0..=100.0).contains(&snap.soc_pct));
    // 175 = PV + battery - losses, with losses >= 0 and small.
    let dc = i32::from(reg(m, 186)) + i32::from(reg(m, 187)) + s16(m, 190);
    let losses = dc - p175;
    assert!(losses >= -3, "negative losses {losses}");
    assert!(
        f64::from(losses) <= 0.05 * f64::from(dc.max(0)) + 3.0,
        "losses {losses} for dc {dc}"
    );
    // P = V x I for the battery (0.01 V x 0.01 A) and the strings (0.1 V x 0.1 A).
    let batt = f64::from(reg(m, 183)) * f64::from(s16(m, 191)) / 10_000.0;
    assert!(
        (batt - f64::from(s16(m, 190))).abs() <= 2.0,
        "battery P != V x I"
    );
    for (p, v, i) in [(186, 109, 110), (187, 111, 112)] {
        let vi = f64::from(reg(m, v)) * f64::from(reg(m, i)) / 100.0;
        assert!(
            (vi - f64::from(reg(m, p))).abs() <= 25.0,
            "PV P != V x I at {p}"
        );
    }
    assert_eq!(reg(m, 59), 2);
}

#[test]
fn pv_produces_at_noon_and_not_at_midnight() {
    for day in 0..10 {
        let noon = model_at(f64::from(day) * 24.0 + 12.0);
        assert!(noon.snapshot().pv_w > 0.0, "day {day}");
        assert!(reg(&noon, 186) > 0 && reg(&noon, 187) > 0);
        let v = f64::from(reg(&noon, 109)) / 10.0;
        assert!((300.0..=380.0).contains(&v), "PV1 voltage {v}");

        let midnight = model_at(f64::from(day) * 24.0);
        assert_eq!(midnight.snapshot().pv_w, 0.0);
        for a in [109, 110, 111, 112, 186, 187] {
            assert_eq!(reg(&midnight, a), 0, "register {a} at midnight");
        }
    }
}

#[test]
fn forty_eight_hours_keep_invariants_counters_and_midnight_reset() {
    let mut m = model_at(0.5);
    let mut last_totals = totals(&m);
    let mut last_day = reg(&m, 23) >> 8;
    let mut last_pv_today = reg(&m, 108);
    let mut last_load_today = reg(&m, 84);
    let mut finished_days = Vec::new();
    let mut saw_charge = false;
    let mut saw_discharge = false;
    let mut saw_export = false;
    for i in 1..=(48 * 720) {
        m.advance(at_hour(0.5).add_secs(f64::from(i) * 5.0));
        check_invariants(&m);
        let now = totals(&m);
        for (before, after) in last_totals.iter().zip(now) {
            assert!(after >= *before, "a total decreased at step {i}");
        }
        last_totals = now;
        let day = reg(&m, 23) >> 8;
        let pv_today = reg(&m, 108);
        if day == last_day {
            assert!(pv_today >= last_pv_today, "PV today decreased within a day");
        } else {
            finished_days.push((last_pv_today, last_load_today));
            assert_eq!(pv_today, 0);
            for a in DAILY {
                assert!(reg(&m, a) <= 1, "daily register {a} not reset");
            }
        }
        last_day = day;
        last_pv_today = pv_today;
        last_load_today = reg(&m, 84);
        saw_charge |= s16(&m, 190) < -100;
        saw_discharge |= s16(&m, 190) > 100;
        saw_export |= s16(&m, 169) < -100;
    }
    assert_eq!(finished_days.len(), 2);
    assert!(saw_charge && saw_discharge && saw_export);
    // Plausible days: several kWh of PV and of load (0.1 kWh units).
    for (pv, load) in finished_days {
        assert!(pv > 50, "PV per day {pv}");
        assert!(load > 30, "load per day {load}");
    }
}

#[test]
fn daily_counters_reset_at_local_midnight_with_offset() {
    let config = ModelConfig {
        utc_offset_s: 7200,
        ..ModelConfig::default()
    };
    // Local 06:00 is 04:00 UTC.
    let start = at_hour(4.0);
    let mut m = InverterModel::new(config, start);
    let before_midnight = start.add_secs(18.0 * 3600.0 - 5.0);
    let mut t = start;
    while t < before_midnight {
        t = t.add_secs(5.0);
        m.advance(t);
    }
    assert_eq!(reg(&m, 23), (15 << 8) | 23, "local 23:59 on the 15th");
    assert!(reg(&m, 108) > 0 && reg(&m, 84) > 0);
    let totals_before = totals(&m);
    m.advance(before_midnight.add_secs(10.0));
    assert_eq!(reg(&m, 23), 16 << 8, "local 00:00 on the 16th");
    assert_eq!(reg(&m, 108), 0);
    for a in DAILY {
        assert!(reg(&m, a) <= 1, "register {a}");
    }
    for (before, after) in totals_before.iter().zip(totals(&m)) {
        assert!(after >= *before);
    }
}

#[test]
fn identity_holds_in_every_mode() {
    let mut m = model_at(0.0);
    for step in 0..(24 * 12) {
        let t = at_hour(0.0).add_secs(f64::from(step) * 300.0);
        m.advance(t);
        m.set_extra_load(f64::from(step % 7) * 1500.0);
        m.set_grid_connected(step % 5 != 0);
        check_invariants(&m);
        if step % 5 == 0 {
            assert_eq!((s16(&m, 169), reg(&m, 194), reg(&m, 79)), (0, 0, 0));
            assert_eq!(s16(&m, 178), s16(&m, 175));
        } else {
            assert_eq!(reg(&m, 194), 1);
        }
    }
}

#[test]
fn soc_stays_within_bounds_and_floors() {
    for (soc, grid, hours) in [(12.0, true, 0.0), (8.0, false, 20.0), (98.0, true, 9.0)] {
        let config = ModelConfig {
            initial_soc_pct: soc,
            grid_connected: grid,
            ..ModelConfig::default()
        };
        let mut m = InverterModel::new(config, at_hour(hours));
        m.set_extra_load(if soc > 50.0 { 0.0 } else { 3000.0 });
        for i in 1..=(12 * 720) {
            m.advance(at_hour(hours).add_secs(f64::from(i) * 5.0));
            let s = m.snapshot().soc_pct;
            assert!((0.0..=100.0).contains(&s));
            // Floors: 10 % on-grid (219), 5 % off-grid (217), never undershot.
            let floor: f64 = if grid { 10.0 } else { 5.0 };
            assert!(s >= floor.min(soc) - 0.01, "SOC {s} below floor");
        }
    }
}

#[test]
fn battery_charges_in_the_afternoon_and_discharges_at_night() {
    let mut m = model_at(22.0);
    let start_soc = m.snapshot().soc_pct;
    for i in 1..=(720 * 2) {
        m.advance(at_hour(22.0).add_secs(f64::from(i) * 5.0));
    }
    let night = m.snapshot();
    assert!(night.soc_pct < start_soc, "night SOC did not fall");
    assert!(night.battery_w > 0.0 && night.pv_w == 0.0);
}

#[test]
fn overload_is_capped_by_the_rating() {
    let mut m = model_at(19.5);
    m.set_extra_load(15_000.0);
    let on_grid = m.snapshot();
    assert!(on_grid.inverter_w <= RATED + 1e-9);
    assert!(on_grid.grid_w > 9_000.0, "grid carries the rest via bypass");
    assert!((on_grid.load_w - on_grid.load_demand_w).abs() < 1e-6);
    assert!(
        f64::from(s16(&m, 178)) > RATED,
        "178 is not bounded by the rating"
    );
    check_invariants(&m);

    m.set_grid_connected(false);
    let island = m.snapshot();
    assert_eq!(island.grid_w, 0.0);
    assert!(island.inverter_w <= RATED + 1e-9);
    assert!(island.unserved_w > 0.0 && island.at_limit);
    assert!(f64::from(s16(&m, 175)) <= 1.1 * RATED);
    check_invariants(&m);
}

#[test]
fn extra_load_shows_up_in_the_load() {
    let mut m = model_at(3.0);
    let before = m.snapshot();
    m.set_extra_load(1000.0);
    let after = m.snapshot();
    assert!((after.load_demand_w - before.load_demand_w - 1000.0).abs() < 1e-6);
    assert!((after.load_w - before.load_w - 1000.0).abs() < 1e-6);
    assert_eq!(after.extra_load_w, 1000.0);
    m.set_extra_load(f64::NAN);
    assert_eq!(m.snapshot().extra_load_w, 0.0);
}

/// LOAD-port power as the balancer computes it: 175 + 167 − 166.
fn load_port(m: &InverterModel) -> i32 {
    s16(m, 175) + s16(m, 167) - s16(m, 166)
}

#[test]
fn plug_load_adds_to_the_extra_load_and_reaches_the_load_port() {
    for hour in [3.0, 12.0, 19.5] {
        let mut m = model_at(hour);
        let base = load_port(&m);
        m.set_extra_load(2200.0);
        m.set_plug_load(3500.0);
        let both = m.snapshot();
        assert_eq!(both.extra_load_w, 2200.0);
        assert_eq!(both.plug_load_w, 3500.0);
        assert!((load_port(&m) - base - 5700).abs() <= 1, "at {hour} h");
        check_invariants(&m);
        // Each input leaves the other alone.
        m.set_plug_load(1500.0);
        assert_eq!(m.snapshot().extra_load_w, 2200.0);
        assert!((load_port(&m) - base - 3700).abs() <= 1, "at {hour} h");
        m.set_extra_load(0.0);
        assert_eq!(m.snapshot().plug_load_w, 1500.0);
        assert!((load_port(&m) - base - 1500).abs() <= 1, "at {hour} h");
        m.set_plug_load(f64::INFINITY);
        assert_eq!(m.snapshot().plug_load_w, 0.0);
        assert!((load_port(&m) - base).abs() <= 1);
    }
}

#[test]
fn a_steady_house_draws_its_base_load_at_any_hour() {
    let config = ModelConfig {
        house: HouseProfile::Steady,
        ..ModelConfig::default()
    };
    let mut m = InverterModel::new(config, at_hour(0.0));
    for step in 0..(48 * 60) {
        m.advance(at_hour(f64::from(step) / 60.0));
        let demand = m.snapshot().load_demand_w;
        assert!(
            (259.0..=341.0).contains(&demand),
            "{demand} W at minute {step}"
        );
        check_invariants(&m);
    }
}

#[test]
fn identity_registers() {
    let m = model_at(12.0);
    assert_eq!(reg(&m, 0), 0x0003);
    assert_eq!(reg(&m, 1), 1);
    assert_eq!(reg(&m, 2), 0x0104);
    assert_eq!(reg(&m, 8), 0);
    assert_eq!(reg(&m, 18), 0x0201);
    let rated_tenths = u32_at(&m, 16, 17);
    assert_eq!(rated_tenths, 60_000);
    assert_eq!(f64::from(rated_tenths) * 0.1, 6000.0);
    for a in 10..=14 {
        assert_ne!(reg(&m, a), 0, "firmware word {a}");
    }
}

#[test]
fn serial_round_trips_as_ascii() {
    let m = model_at(12.0);
    let bytes: Vec<u8> = (3..=7).flat_map(|a| reg(&m, a).to_be_bytes()).collect();
    assert_eq!(String::from_utf8(bytes).ok().as_deref(), Some("2409123456"));

    let short = InverterModel::new(
        ModelConfig {
            inverter_serial: "AB\u{e9}".to_owned(),
            ..ModelConfig::default()
        },
        at_hour(12.0),
    );
    assert_eq!(reg(&short, 3), u16::from_be_bytes(*b"AB"));
    assert_eq!(reg(&short, 4), u16::from_be_bytes(*b"? "));
    assert_eq!(reg(&short, 7), u16::from_be_bytes(*b"  "));
}

#[test]
fn clock_registers_for_a_known_timestamp() {
    // 2023-11-14 22:13:20 UTC.
    let m = InverterModel::new(
        ModelConfig::default(),
        SimTime::from_unix_secs(1_700_000_000.0),
    );
    assert_eq!(reg(&m, 22), (23 << 8) | 11);
    assert_eq!(reg(&m, 23), (14 << 8) | 22);
    assert_eq!(reg(&m, 24), (13 << 8) | 20);

    let local = InverterModel::new(
        ModelConfig {
            utc_offset_s: 3 * 3600,
            ..ModelConfig::default()
        },
        SimTime::from_unix_secs(1_700_000_000.0),
    );
    assert_eq!(reg(&local, 23), (15 << 8) | 1, "UTC+3 is past midnight");
}

#[test]
fn civil_dates_round_trip() {
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(19_675), (2023, 11, 14));
    assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
    for days in (-800_000..800_000).step_by(997) {
        let (y, m, d) = civil_from_days(days);
        assert_eq!(days_from_civil(y, m, d), days);
    }
    assert_eq!(days_in_month(2100, 2), 28);
    assert_eq!(days_in_month(2000, 2), 29);
}

#[test]
fn grid_import_total_is_split_around_the_frequency() {
    // An empty battery at night makes the grid carry the house.
    let config = ModelConfig {
        initial_soc_pct: 10.0,
        ..ModelConfig::default()
    };
    let mut m = InverterModel::new(config, at_hour(0.0));
    m.advance(at_hour(1.0));
    let lo = reg(&m, 78);
    let hi = reg(&m, 80);
    assert_eq!(hi, 1, "start total 8765.4 kWh needs the high word");
    let total = u32::from(lo) | (u32::from(hi) << 16);
    assert!(total > 87_654, "imported overnight: {total}");
    let hz = f64::from(reg(&m, 79)) * 0.01;
    assert!(
        (49.97..=50.03).contains(&hz),
        "79 is the frequency, got {hz}"
    );
    let volts = f64::from(reg(&m, 150)) * 0.1;
    assert!((228.0..=232.0).contains(&volts));
}

#[test]
fn settings_write_is_stored_and_acts() {
    let config = ModelConfig {
        initial_soc_pct: 100.0,
        ..ModelConfig::default()
    };
    let mut m = InverterModel::new(config, at_hour(12.0));
    assert_eq!(m.read(244, 2), Some(vec![1, 6000]));
    assert_eq!(m.write(245, &[600]), Ok(()));
    assert_eq!(m.read(245, 1), Some(vec![600]));
    // Battery full at noon: surplus is limited by the max sell power.
    assert!(m.snapshot().grid_w >= -600.0 - 1e-9);
    check_invariants(&m);
    m.advance(at_hour(12.1));
    assert_eq!(m.read(245, 1), Some(vec![600]), "advance keeps settings");

    assert_eq!(m.write(200, &[1; 81]), Ok(()));
    assert_eq!(m.read(280, 1), Some(vec![1]));
}

#[test]
fn writes_outside_settings_and_clock_are_rejected() {
    let mut m = model_at(12.0);
    let before = m.registers().to_vec();
    for (a, n) in [
        (175, 1),
        (21, 2),
        (24, 2),
        (199, 2),
        (280, 2),
        (0, 1),
        (399, 1),
        (u16::MAX, 3),
    ] {
        let err = m.write(a, &vec![7; n]);
        assert!(
            matches!(err, Err(WriteError::IllegalAddress { .. })),
            "write {a}+{n}: {err:?}"
        );
        assert_eq!(err.map_err(|e| e.exception_code()), Err(0x02));
    }
    assert_eq!(m.write(245, &[]), Err(WriteError::Empty));
    assert_eq!(m.registers(), &before[..]);
}

#[test]
fn clock_write_moves_the_inverter_clock() {
    let mut m = model_at(12.0);
    // 2025-01-31 23:59:50.
    let words = [(25 << 8) | 1, (31 << 8) | 23, (59 << 8) | 50];
    assert_eq!(m.write(22, &words), Ok(()));
    assert_eq!(m.read(22, 3), Some(words.to_vec()));
    m.advance(at_hour(12.0).add_secs(20.0));
    assert_eq!(m.read(22, 3), Some(vec![(25 << 8) | 2, 1 << 8, 10]));
    // The sun still follows real time.
    assert!(m.snapshot().pv_w > 0.0);

    // Single-field write keeps the others.
    assert_eq!(m.write(24, &[(30 << 8) | 5]), Ok(()));
    assert_eq!(
        m.read(22, 3),
        Some(vec![(25 << 8) | 2, 1 << 8, (30 << 8) | 5])
    );

    let invalid = m.write(22, &[(25 << 8) | 13]);
    assert_eq!(invalid, Err(WriteError::IllegalValue { addr: 22 }));
    assert_eq!(invalid.map_err(|e| e.exception_code()), Err(0x03));
    assert_eq!(
        m.write(23, &[(30 << 8) | 1]),
        Err(WriteError::IllegalValue { addr: 23 }),
        "30 Feb"
    );
    assert_eq!(
        m.write(24, &[60 << 8]),
        Err(WriteError::IllegalValue { addr: 24 })
    );
}

#[test]
fn read_windows() {
    let m = model_at(12.0);
    assert_eq!(m.registers().len(), REGISTER_COUNT);
    assert_eq!(m.read(0, 400).map(|v| v.len()), Some(400));
    assert_eq!(m.read(399, 1).map(|v| v.len()), Some(1));
    assert_eq!(m.read(399, 2), None);
    assert_eq!(m.read(400, 1), None);
    assert_eq!(m.read(u16::MAX, u16::MAX), None);
    assert_eq!(m.read(10, 0), None);
    assert_eq!(m.read(390, 1), Some(vec![0]), "unmodelled reads as 0");
    assert_eq!(m.read(59, 54).map(|v| v.len()), Some(54));
}

#[test]
fn same_seed_and_times_give_identical_registers() {
    let times = [0.3, 0.3, 5.9, 6.4, 11.0, 12.25, 12.26, 19.0, 47.5];
    let run = |seed: u64| {
        let config = ModelConfig {
            seed,
            ..ModelConfig::default()
        };
        let mut m = InverterModel::new(config, at_hour(0.0));
        let mut images = Vec::new();
        for h in times {
            m.advance(at_hour(h));
            images.push(m.registers().to_vec());
        }
        images
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
}

#[test]
fn exogenous_inputs_do_not_depend_on_step_pattern() {
    let mut fine = model_at(6.0);
    let mut coarse = model_at(6.0);
    for i in 1..=3600 {
        fine.advance(at_hour(6.0).add_secs(f64::from(i)));
    }
    coarse.advance(at_hour(7.0));
    let (a, b) = (fine.snapshot(), coarse.snapshot());
    assert_eq!(a.pv_available_w, b.pv_available_w);
    assert_eq!(a.load_demand_w, b.load_demand_w);
    assert!((a.soc_pct - b.soc_pct).abs() < 0.5);
}

#[test]
fn time_going_backwards_or_jumping_far_is_safe() {
    let mut m = model_at(12.0);
    let totals_before = totals(&m);
    m.advance(at_hour(11.0));
    assert_eq!(totals(&m), totals_before, "no energy for a backward jump");
    m.advance(at_hour(24.0 * 365.0));
    for (before, after) in totals_before.iter().zip(totals(&m)) {
        assert!(after >= *before);
    }
    check_invariants(&m);
    m.advance(SimTime::from_unix_secs(f64::INFINITY));
    check_invariants(&m);
}

#[test]
fn fault_bits_map_to_registers_and_state() {
    let mut m = model_at(12.0);
    m.set_fault_bits((1 << 34) | (1 << 63) | 1);
    assert_eq!(m.read(103, 4), Some(vec![1, 0, 0b100, 0x8000]));
    assert_eq!(reg(&m, 59), 4);
    m.set_fault_bits(0);
    assert_eq!(reg(&m, 59), 2);
    m.set_warning_bits(1 << 30 | 2);
    assert_eq!(m.read(101, 2), Some(vec![2, 0x4000]));
}

#[test]
fn temperatures_are_plausible() {
    let mut m = model_at(10.0);
    for i in 1..=720 {
        m.advance(at_hour(10.0).add_secs(f64::from(i) * 5.0));
    }
    let celsius = |a| (f64::from(reg(&m, a)) - 1000.0) * 0.1;
    assert!(
        (20.0..=30.0).contains(&celsius(182)),
        "battery {}",
        celsius(182)
    );
    for a in [90, 91] {
        assert!(
            (15.0..=70.0).contains(&celsius(a)),
            "register {a}: {}",
            celsius(a)
        );
    }
}

#[test]
fn bad_config_is_sanitized() {
    let config = ModelConfig {
        rated_power_w: f64::NAN,
        pv_peak_w: [-1.0, f64::INFINITY],
        battery_capacity_wh: 0.0,
        initial_soc_pct: 250.0,
        utc_offset_s: i32::MAX,
        ..ModelConfig::default()
    };
    let mut m = InverterModel::new(config, at_hour(12.0));
    assert_eq!(u32_at(&m, 16, 17), 60_000);
    assert_eq!(reg(&m, 184), 100);
    assert_eq!(m.config().battery_capacity_wh, 100.0);
    check_invariants(&m);
    m.advance(at_hour(13.0));
    check_invariants(&m);
}
