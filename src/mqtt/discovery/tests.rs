use super::*;

fn topics() -> Topics {
    Topics::new("energy2mqtt", "homeassistant", "homeassistant/status")
}

#[test]
fn device_entities_point_to_bridge_and_need_both_availabilities() {
    let t = topics();
    let mut d = DeviceEntities::new(
        &t,
        "inverter",
        Device {
            identifiers: vec!["energy2mqtt_inverter".into()],
            name: "Inverter".into(),
            ..Device::default()
        },
    );
    d.sensor(
        "pv_power",
        "PV power",
        SensorSpec::measurement("power", "W"),
    );
    d.sensor("pv_energy_total", "PV energy", SensorSpec::energy_total());
    d.switch("switch", None);
    let msgs = d.messages();
    assert_eq!(
        msgs[0].topic,
        "homeassistant/sensor/inverter/pv_power/config"
    );
    let p = &msgs[0].payload;
    assert_eq!(p["unique_id"], "energy2mqtt_inverter_pv_power");
    assert_eq!(p["default_entity_id"], "sensor.inverter_pv_power");
    assert_eq!(p["device"]["via_device"], "energy2mqtt_bridge_energy2mqtt");
    assert_eq!(p["availability_mode"], "all");
    assert_eq!(p["availability"][0]["topic"], "energy2mqtt/bridge/state");
    assert_eq!(
        p["availability"][1]["topic"],
        "energy2mqtt/inverter/availability"
    );
    assert_eq!(p["state_topic"], "energy2mqtt/inverter");
    assert_eq!(p["value_template"], "{{ value_json.pv_power }}");
    assert_eq!(p["state_class"], "measurement");
    assert_eq!(msgs[1].payload["state_class"], "total_increasing");
    assert_eq!(msgs[1].payload["unit_of_measurement"], "kWh");
    assert_eq!(msgs[2].payload["command_topic"], "energy2mqtt/inverter/set");
    // Commands at QoS 1, so the broker keeps them while we reconnect.
    assert_eq!(msgs[2].payload["qos"], 1);
    assert!(msgs[0].payload.get("qos").is_none());
    assert!(is_ours(&t, msgs[0].payload.to_string().as_bytes()));
}

#[test]
fn bridge_device_is_diagnostic_and_recognised_as_ours() {
    let t = topics();
    let msgs = bridge_device(&t);
    assert!(msgs.len() >= 5);
    for m in &msgs {
        assert_eq!(m.payload["entity_category"], "diagnostic", "{}", m.topic);
        assert!(m.topic.starts_with("homeassistant/"));
        assert!(m.payload["device"].get("via_device").is_none());
        assert!(is_ours(&t, m.payload.to_string().as_bytes()));
    }
    let other = Topics::new("other", "homeassistant", "homeassistant/status");
    assert!(!is_ours(&other, msgs[0].payload.to_string().as_bytes()));
    assert!(!is_ours(&t, br#"{"origin":{"name":"Zigbee2MQTT"}}"#));
    assert!(!is_ours(&t, b"not json"));
}

#[test]
fn stale_is_found_minus_current() {
    let current = vec![DiscoveryMessage {
        topic: "a".into(),
        payload: Value::Null,
    }];
    let found = ["a".to_string(), "b".to_string(), "b".to_string()];
    assert_eq!(stale_topics(found.iter(), &current), vec!["b".to_string()]);
}
