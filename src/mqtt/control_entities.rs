//! Home Assistant entities of the bridge's own control: a device per
//! balancer, the control entities of each plug, and (with the alerts)
//! the alerts device.

use super::Topics;
use super::discovery::{
    Device, DeviceEntities, DiscoveryMessage, NumberRange, SensorSpec, device_identifier,
};
use crate::config::{Config, PlugConfig};
use crate::core::alerts::{self, Rules};

/// The inverters that have a balancer: those some plug protects.
pub fn balanced_inverters(config: &Config) -> Vec<&str> {
    config
        .inverter
        .iter()
        .filter(|inv| {
            config
                .plug
                .iter()
                .any(|p| p.inverter.as_deref() == Some(inv.id.as_str()))
        })
        .map(|inv| inv.id.as_str())
        .collect()
}

/// A plug's control entities, on the plug's own device.
pub fn plug_entities(e: &mut DeviceEntities<'_>, plug: &PlugConfig) {
    e.select("mode", "Mode", "mode", &["auto", "on", "off"]);
    if plug.inverter.is_some() {
        e.binary_field("shed", "Shed by the balancer", "shed", None);
    }
    // The original app's timer: setting minutes switches the plug on and
    // off again after them; the state shows the minutes left.
    e.number(
        "timer",
        "Timer",
        "timer",
        NumberRange {
            min: 0.0,
            max: 480.0,
            step: 15.0,
            unit: Some("min"),
            device_class: None,
        },
    );
    e.command_button("timer_cancel", "Cancel timer", r#"{"timer": "cancel"}"#);
    e.sensor(
        "timer_off_at",
        "Timer ends",
        SensorSpec {
            device_class: Some("timestamp"),
            ..SensorSpec::default()
        },
    );
    if !plug.schedule.is_empty() {
        e.sensor(
            "next_schedule",
            "Next scheduled switch",
            SensorSpec {
                icon: Some("mdi:calendar-clock"),
                ..SensorSpec::default()
            },
        );
    }
}

/// One device per balancer: its switch, limits and figures.
pub fn balancer_devices(config: &Config, topics: &Topics) -> Vec<DiscoveryMessage> {
    let mut out = Vec::new();
    for inv in balanced_inverters(config) {
        let name = config
            .inverter
            .iter()
            .find(|i| i.id == inv)
            .and_then(|i| i.name.clone())
            .unwrap_or_else(|| inv.to_owned());
        let node = format!("balancer_{inv}");
        let device = Device {
            identifiers: vec![device_identifier(topics, &node)],
            name: format!("{name} balancer"),
            manufacturer: Some("energy2mqtt".into()),
            model: Some("Overload balancer".into()),
            ..Default::default()
        };
        let mut e = DeviceEntities::control(
            topics,
            &node,
            device,
            topics.balancer(inv),
            topics.balancer_set(inv),
        );
        e.flag_switch("enabled", "Enabled", "enabled");
        e.binary_field(
            "shedding",
            "Load shedding active",
            "shedding",
            Some("running"),
        );
        e.sensor(
            "state",
            "State",
            SensorSpec {
                icon: Some("mdi:scale-balance"),
                ..SensorSpec::default()
            },
        );
        let power = |field| SensorSpec {
            field: Some(field),
            precision: Some(0),
            ..SensorSpec::measurement("power", "W")
        };
        e.sensor("load", "Load", power("load_w"));
        e.sensor("limit", "Limit", power("limit_w"));
        e.sensor("headroom", "Headroom", power("headroom_w"));
        e.sensor("shed_power", "Shed power", power("shed_power_w"));
        e.sensor(
            "shed_count",
            "Plugs switched off",
            SensorSpec {
                state_class: Some("measurement"),
                icon: Some("mdi:power-plug-off"),
                ..SensorSpec::default()
            },
        );
        e.number(
            "on_grid_limit",
            "On-grid limit",
            "on_grid_w",
            NumberRange {
                min: 100.0,
                max: 100_000.0,
                step: 100.0,
                unit: Some("W"),
                device_class: Some("power"),
            },
        );
        e.number(
            "off_grid_percent",
            "Off-grid limit",
            "off_grid_percent",
            NumberRange {
                min: 10.0,
                max: 100.0,
                step: 1.0,
                unit: Some("%"),
                device_class: None,
            },
        );
        out.extend(e.messages());
    }
    out
}

/// The alerts device: a problem sensor per family, the number of active
/// alerts, an event entity for raises and clears, and a number per
/// threshold.
pub fn alerts_device(rules: &Rules, topics: &Topics) -> Vec<DiscoveryMessage> {
    let families = rules.families();
    if families.is_empty() {
        return Vec::new();
    }
    let device = Device {
        identifiers: vec![device_identifier(topics, "alerts")],
        name: "energy2mqtt Alerts".into(),
        manufacturer: Some("energy2mqtt".into()),
        model: Some("Alert rules".into()),
        ..Default::default()
    };
    let mut e = DeviceEntities::control(
        topics,
        &format!("{}_alerts", topics.base()),
        device,
        topics.alerts(),
        topics.alerts_set(),
    );
    e.sensor(
        "active",
        "Active alerts",
        SensorSpec {
            field: Some("count"),
            state_class: Some("measurement"),
            icon: Some("mdi:alert"),
            ..SensorSpec::default()
        },
    );
    for f in families {
        let name = alerts::family_name(f).unwrap_or(f);
        e.binary_field(f, name, &format!("families.{f}"), Some("problem"));
    }
    e.event("event", "Alert", topics.alerts_event(), &["raise", "clear"]);
    for r in rules.iter().filter(|r| r.enabled && r.threshold.is_some()) {
        e.number_at(
            &format!("threshold_{}", r.id),
            &format!("{} threshold", r.name),
            r.id,
            &format!("thresholds.{}", r.id),
            NumberRange {
                min: r.min,
                max: r.max,
                step: r.step,
                unit: (!r.unit.is_empty()).then_some(r.unit),
                device_class: None,
            },
        );
    }
    e.messages()
}
