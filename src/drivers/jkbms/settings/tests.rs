use super::*;

#[test]
fn jk02_settings_round_trip() {
    for variant in [Variant::Jk02_24s, Variant::Jk02_32s] {
        let mut s = Settings::example(variant);
        if let Settings::Jk02(j) = &mut s {
            j.counter = 9;
            j.wire_resistances[3] = 17.0;
            j.charge_undertemperature = -20.0;
        }
        let f = s.encode().unwrap();
        assert_eq!(f.frame_type(), FrameType::Settings);
        let d = Settings::decode(&f, variant).unwrap();
        assert_eq!(d, s, "{variant}");
        assert_eq!(d.cell_count(), 16);
    }
    assert_eq!(
        Settings::example(Variant::Jk04).encode(),
        Err(EncodeError::Jk04)
    );
}

#[test]
fn flags_and_views() {
    let s = Settings::example(Variant::Jk02_32s);
    let Settings::Jk02(j) = &s else {
        panic!("JK02 example expected")
    };
    let x = j.extra.unwrap();
    assert!(x.flag(Flag32::ChargingFloatMode));
    assert!(!x.flag(Flag32::Heating));
    let json = s.to_json();
    assert_eq!(json["charging_float_mode"], true);
    assert_eq!(json["charge_undertemperature_recovery"], 9.5);
    assert_eq!(json["nominal_capacity"], 280);
    assert_eq!(json["wire_resistances"].as_array().unwrap().len(), 32);
    let state = s.state_map();
    assert_eq!(state["max_discharge_current"], 150);
    assert_eq!(state.len(), 6);
    assert_eq!(
        Settings::example(Variant::Jk04).state_map().len(),
        1,
        "JK04 has only the balancer switch"
    );
}

#[test]
fn wrong_frame_type_is_an_error() {
    let f = FrameBuilder::new().finish(FrameType::CellInfo, 0);
    assert!(matches!(
        Settings::decode(&f, Variant::Jk02_32s),
        Err(DecodeError::FrameType { .. })
    ));
}
