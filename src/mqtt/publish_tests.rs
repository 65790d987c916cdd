//! The bytes of what control publishes: the topic contract (docs/TOPICS.md)
//! as it was when control built the JSON itself.

use super::*;
use crate::config::schedule::{TimeOfDay, Weekday};
use crate::core::alerts::{ActiveAlert, EventKind, Level};
use crate::core::balancer::{Phase, Reason, ShedEntry};
use crate::core::timers::{NextSwitch, TimerReason};
use crate::model::{PlugMode, SwitchState};

/// 2026-05-28T20:26:40Z
const T0: Timestamp = Timestamp(1_780_000_000_000);

fn topics() -> Topics {
    Topics::new("e2m", "homeassistant", "homeassistant/status")
}

#[test]
fn the_words_are_the_serialised_names() {
    for r in [
        Reason::Overload,
        Reason::Emergency,
        Reason::Failsafe,
        Reason::PvDeficit,
        Reason::Restore,
        Reason::PvSurplus,
    ] {
        assert_eq!(serde_json::to_value(r).unwrap(), r.as_str(), "{r:?}");
    }
    for p in [
        Phase::Idle,
        Phase::Shedding,
        Phase::Restoring,
        Phase::Stale,
        Phase::Failsafe,
        Phase::Disabled,
    ] {
        assert_eq!(serde_json::to_value(p).unwrap(), p.as_str(), "{p:?}");
    }
    for t in [
        TimerReason::TimerStart,
        TimerReason::Timer,
        TimerReason::TimerCancel,
        TimerReason::Schedule,
        TimerReason::Surplus,
    ] {
        assert_eq!(serde_json::to_value(t).unwrap(), t.as_str(), "{t:?}");
    }
}

#[test]
fn balancer_status_bytes() {
    let view = BalancerView {
        state: Phase::Shedding,
        enabled: true,
        grid_connected: Some(true),
        limit_w: Some(7400.0),
        load_w: Some(8012.3),
        headroom_w: None,
        shed_count: 1,
        shed_power_w: 2000.5,
        shed: vec![ShedEntry {
            plug: "boiler".into(),
            reason: Reason::Overload,
            since: T0,
            power_w: 2000.5,
        }],
        on_grid_w: 7400.0,
        off_grid_percent: 80.0,
    };
    assert_eq!(
        balancer_status(&view).to_string(),
        concat!(
            r#"{"enabled":true,"grid_connected":true,"headroom_w":null,"limit_w":7400.0,"#,
            r#""load_w":8012.3,"off_grid_percent":80.0,"on_grid_w":7400.0,"#,
            r#""shed":[{"plug":"boiler","power_w":2000.5,"reason":"overload","since":"2026-05-28T20:26:40Z"}],"#,
            r#""shed_count":1,"shed_power_w":2000.5,"shedding":true,"state":"shedding"}"#
        )
    );
    let out = Output::BalancerStatus {
        inverter: "deye".into(),
        status: view,
    };
    let m = message(&topics(), &out).unwrap();
    assert_eq!(m.topic, "e2m/balancer/deye");
    assert!(m.retain);
}

#[test]
fn event_bytes() {
    let cases = [
        (
            Event::StateError {
                error: "disk full".into(),
            },
            r#"{"error":"disk full","type":"state_error"}"#,
        ),
        (
            Event::CommandUnconfirmed {
                plug: "boiler".into(),
                on: false,
                by: "balancer",
                attempts: 3,
            },
            r#"{"attempts":3,"by":"balancer","device":"boiler","state":"OFF","type":"command_unconfirmed"}"#,
        ),
        (
            Event::BalancerAction {
                inverter: "deye".into(),
                plug: "boiler".into(),
                on: false,
                reason: Reason::Overload,
                load_w: Some(8012.3),
                limit_w: None,
                plug_w: 2000.0,
            },
            concat!(
                r#"{"action":"shed","device":"boiler","inverter":"deye","limit_w":null,"#,
                r#""load_w":8012.3,"plug":"boiler","plug_w":2000.0,"reason":"overload","type":"balancer_action"}"#
            ),
        ),
        (
            Event::BalancerOverride {
                inverter: "deye".into(),
                plug: "boiler".into(),
                until: T0,
            },
            r#"{"device":"boiler","inverter":"deye","plug":"boiler","type":"balancer_override","until":"2026-05-28T20:26:40Z"}"#,
        ),
        (
            Event::BalancerState {
                inverter: "deye".into(),
                state: Phase::Failsafe,
            },
            r#"{"device":"deye","state":"failsafe","type":"balancer_state"}"#,
        ),
        (
            Event::PlugAutomation {
                plug: "lamp".into(),
                on: true,
                reason: TimerReason::TimerStart,
            },
            r#"{"device":"lamp","plug":"lamp","reason":"timer_start","state":"ON","type":"plug_automation"}"#,
        ),
    ];
    for (e, want) in cases {
        assert_eq!(event(&e), want, "{e:?}");
        let m = message(&topics(), &Output::Event(e)).unwrap();
        assert_eq!(m.topic, "e2m/bridge/event");
        assert!(!m.retain);
    }
}

#[test]
fn plug_attributes_keys() {
    let idle = PlugAttributes {
        mode: PlugMode::Auto,
        shed: None,
        override_until: None,
        timer_min: 0,
        timer_off_at: None,
        next_schedule: None,
        surplus_active: false,
    };
    assert_eq!(
        Value::Object(plug_attributes(&idle)).to_string(),
        concat!(
            r#"{"mode":"auto","next_schedule":null,"override_until":null,"shed":false,"#,
            r#""shed_reason":null,"shed_since":null,"surplus_active":false,"timer":0,"timer_off_at":null}"#
        )
    );
    let busy = PlugAttributes {
        mode: PlugMode::On,
        shed: Some((Reason::PvDeficit, T0)),
        override_until: Some(T0),
        timer_min: 5,
        timer_off_at: Some(T0),
        next_schedule: Some(NextSwitch {
            state: SwitchState::Off,
            weekday: Weekday::Tue,
            at: TimeOfDay::new(7, 5).unwrap(),
        }),
        surplus_active: true,
    };
    let m = plug_attributes(&busy);
    assert_eq!(m["mode"], "on");
    assert_eq!(m["shed"], true);
    assert_eq!(m["shed_reason"], "pv_deficit");
    assert_eq!(m["shed_since"], "2026-05-28T20:26:40Z");
    assert_eq!(m["override_until"], "2026-05-28T20:26:40Z");
    assert_eq!(m["timer"], 5);
    assert_eq!(m["timer_off_at"], "2026-05-28T20:26:40Z");
    assert_eq!(m["next_schedule"], "OFF tue 07:05");
    assert_eq!(m["surplus_active"], true);
    let out = Output::PlugAttributes {
        plug: "lamp".into(),
        attributes: busy,
    };
    assert!(message(&topics(), &out).is_none(), "merged into the state");
}

#[test]
fn alerts_list_and_event() {
    let active = ActiveAlert {
        rule: "soc_low".into(),
        family: "soc".into(),
        level: Level::Warning,
        device: "pack".into(),
        device_name: "Pack".into(),
        value: Some(18.0),
        threshold: Some(20.0),
        message: "Pack: state of charge 18 % (below 20 %)".into(),
        since: T0,
    };
    let view = AlertsView {
        active: vec![active],
        thresholds: vec![("soc_low", 20.0), ("cell_high", 3.6)],
    };
    let v = alerts(&view);
    assert_eq!(v["count"], 1);
    assert_eq!(v["active"][0]["rule"], "soc_low");
    assert_eq!(v["active"][0]["since"], "2026-05-28T20:26:40Z");
    assert_eq!(v["families"]["soc"], true);
    assert_eq!(v["families"]["cell_delta"], false);
    assert_eq!(
        v["families"].as_object().unwrap().len(),
        crate::core::alerts::FAMILIES.len()
    );
    assert_eq!(v["thresholds"], json!({"soc_low": 20.0, "cell_high": 3.6}));
    let m = message(&topics(), &Output::Alerts(view)).unwrap();
    assert_eq!(m.topic, "e2m/alerts");
    assert!(m.retain);

    let e = AlertEvent {
        kind: EventKind::Raise,
        rule: "soc_low".into(),
        family: "soc".into(),
        level: Level::Warning,
        device: "pack".into(),
        device_name: "Pack".into(),
        value: Some(18.0),
        threshold: Some(20.0),
        message: "low".into(),
        at: T0,
        repeat: false,
        notify: true,
    };
    let v = alert_event(&e);
    assert_eq!(v["event_type"], "raise");
    assert_eq!(v["kind"], "raise");
    assert_eq!(v["at"], "2026-05-28T20:26:40Z");
    let m = message(&topics(), &Output::AlertEvent(e)).unwrap();
    assert_eq!(m.topic, "e2m/alerts/event");
    assert!(!m.retain);
}
