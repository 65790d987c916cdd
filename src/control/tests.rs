#[test]
fn rounding_never_gives_negative_zero() {
    // An empty f64 sum is -0.0 (nothing shed): it must read 0.
    let nothing: f64 = std::iter::empty::<f64>().sum();
    assert!(crate::model::round(nothing, 1).is_sign_positive());
    assert!(crate::model::round(-0.01, 1).is_sign_positive());
    assert_eq!(crate::model::round(-1.26, 1), -1.3);
}

use super::*;
use crate::mqtt::publish;
use serde_json::{Value, json};
use time::OffsetDateTime;

const T0: u64 = 1_780_000_000_000;

fn config() -> Config {
    toml::from_str(
        r#"
        [tapo]
        email = "a@b.c"
        password = "x"
        [[inverter]]
        id = "inv"
        host = "127.0.0.1"
        serial = 1
        [[plug]]
        id = "boiler"
        host = "127.0.0.1"
        inverter = "inv"
        min_on = "1s"
        [[plug]]
        id = "lamp"
        host = "127.0.0.1"
        "#,
    )
    .unwrap()
}

fn at(ms: u64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn reading(kind: DeviceKind, v: &Value) -> crate::model::Reading {
    crate::model::Reading::from_state(kind, v.as_object().unwrap()).unwrap()
}

fn seen(ms: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap()
}

fn feed(r: &mut Registry, t: u64, load_w: f64, boiler_on: bool) {
    r.set_online("inv", true);
    r.set_online("boiler", true);
    r.set_online("lamp", true);
    let inv = json!({"rated_power": 6000, "inverter_power": load_w, "grid_port_power": 0,
                     "gen_port_power": 0, "grid_connected": true});
    r.record("inv", reading(DeviceKind::Inverter, &inv), seen(t));
    let b = json!({"state": if boiler_on { "ON" } else { "OFF" }, "power": if boiler_on { 2000.0 } else { 0.0 }});
    r.record("boiler", reading(DeviceKind::Plug, &b), seen(t));
    let l = json!({"state": "OFF"});
    r.record("lamp", reading(DeviceKind::Plug, &l), seen(t));
}

fn local() -> LocalTime {
    LocalTime::EPOCH
}

/// What the bridge's writer does with the control plane's outputs:
/// the newest `Save` reaches `control.json`.
fn written(dir: &std::path::Path, out: &[Output]) {
    if let Some(saved) = out.iter().rev().find_map(|o| match o {
        Output::Save(s) => Some(s),
        _ => None,
    }) {
        persist::write(&Store::new(dir), saved).unwrap();
    }
}

fn switches(out: &[Output]) -> Vec<(String, bool)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Switch { plug, on } => Some((plug.clone(), *on)),
            _ => None,
        })
        .collect()
}

/// Runs the controller once a second with the house at `load_w`.
fn run(
    c: &mut Control,
    r: &mut Registry,
    from: u64,
    secs: u64,
    load_w: f64,
    boiler_on: &mut bool,
) -> Vec<Output> {
    let mut all = Vec::new();
    for s in 0..secs {
        let t = from + s * 1000;
        feed(
            r,
            t,
            load_w + if *boiler_on { 2000.0 } else { 0.0 },
            *boiler_on,
        );
        let out = c.step(r, at(t), local());
        for (plug, on) in switches(&out) {
            if plug == "boiler" {
                *boiler_on = on;
            }
        }
        all.extend(out);
    }
    all
}

#[test]
fn sheds_persists_and_a_restarted_control_remembers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config();
    let (mut c, out) = Control::new(&cfg, Store::new(dir.path()));
    assert!(out.is_empty());
    let mut r = Registry::from_config(&cfg);
    let mut boiler = true;
    run(&mut c, &mut r, T0, 10, 1000.0, &mut boiler);
    assert!(boiler, "3 kW is under 7.4 kW");
    let out = run(&mut c, &mut r, T0 + 10_000, 15, 6000.0, &mut boiler);
    assert_eq!(switches(&out), vec![("boiler".to_owned(), false)]);
    written(dir.path(), &out);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Event(Event::BalancerAction { .. })))
    );
    assert!(!boiler);

    // A new process: the shed set is back, nothing is switched at once.
    let (mut c2, _) = Control::new(&cfg, Store::new(dir.path()));
    assert!(c2.is_shed("boiler"));
    let mut r2 = Registry::from_config(&cfg);
    let out = run(&mut c2, &mut r2, T0 + 30_000, 5, 500.0, &mut boiler);
    assert!(switches(&out).is_empty(), "{out:?}");
}

#[test]
fn a_timer_does_not_switch_a_shed_plug_on_and_locks_block_automation() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config();
    let (mut c, _) = Control::new(&cfg, Store::new(dir.path()));
    let mut r = Registry::from_config(&cfg);
    let mut boiler = true;
    run(&mut c, &mut r, T0, 10, 1000.0, &mut boiler);
    run(&mut c, &mut r, T0 + 10_000, 15, 6000.0, &mut boiler);
    assert!(c.is_shed("boiler"));
    let mut out = Vec::new();
    c.automation_switch(
        &TimerAction {
            plug: "boiler".into(),
            state: SwitchState::On,
            reason: timers::TimerReason::Schedule,
        },
        at(T0 + 30_000),
        &mut out,
    );
    assert!(out.is_empty(), "the balancer wins: {out:?}");

    let now = at(T0 + 31_000);
    let out = c.set_mode(&r, "lamp", PlugMode::On, now, local()).unwrap();
    assert!(switches(&out).contains(&("lamp".to_owned(), true)));
    written(dir.path(), &out);
    let e = c
        .timer(
            &r,
            "lamp",
            TimerCommand::Start(std::time::Duration::from_secs(900)),
            now,
            local(),
        )
        .unwrap_err();
    assert!(e.0.contains("locked"), "{e}");
    let mut out = Vec::new();
    c.automation_switch(
        &TimerAction {
            plug: "lamp".into(),
            state: SwitchState::Off,
            reason: timers::TimerReason::Schedule,
        },
        now,
        &mut out,
    );
    assert!(out.is_empty(), "a lock blocks schedules");
    // Modes persist.
    let (c2, _) = Control::new(&cfg, Store::new(dir.path()));
    assert_eq!(c2.mode("lamp"), PlugMode::On);
}

#[test]
fn balancer_commands_are_validated_as_a_whole() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config();
    let (mut c, _) = Control::new(&cfg, Store::new(dir.path()));
    let r = Registry::from_config(&cfg);
    let now = at(T0);
    // The fields are checked where the command is parsed (moved to
    // mqtt::commands::tests::balancer_changes_are_validated_as_a_whole).
    assert!(c.units[0].state.persisted().enabled);
    let off = BalancerChange {
        enabled: Some(false),
        ..Default::default()
    };
    let e = c.set_balancer(&r, "ghost", &off, now, local()).unwrap_err();
    assert!(e.0.contains("balancers: inv"), "{e}");
    let out = c
        .set_balancer(
            &r,
            "inv",
            &BalancerChange {
                enabled: Some(false),
                on_grid_w: Some(6000.0),
                off_grid_percent: None,
            },
            now,
            local(),
        )
        .unwrap();
    written(dir.path(), &out);
    assert_eq!(c.units[0].config.on_grid_w, 6000.0);
    assert!(!c.units[0].state.persisted().enabled);
    let (c2, _) = Control::new(&cfg, Store::new(dir.path()));
    assert_eq!(c2.units[0].config.on_grid_w, 6000.0);
    assert!(!c2.units[0].state.persisted().enabled);
}

#[test]
fn an_active_alert_survives_a_restart_without_a_second_notification() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.alerts.startup_grace = std::time::Duration::ZERO;
    let raises = |out: &[Output]| {
        out.iter()
            .filter(|o| {
                matches!(o, Output::AlertEvent(e) if publish::alert_event(e)["event_type"] == "raise")
            })
            .count()
    };
    let faulty = |r: &mut Registry, t: u64| {
        r.set_online("inv", true);
        let v = json!({"faults": "F18 AC over-current", "fault_bits": 1u64 << 17});
        r.record("inv", reading(DeviceKind::Inverter, &v), seen(t));
    };
    let (mut c, _) = Control::new(&cfg, Store::new(dir.path()));
    let mut r = Registry::from_config(&cfg);
    let mut n = 0;
    for s in 0..60 {
        faulty(&mut r, T0 + s * 1000);
        let out = c.step(&r, at(T0 + s * 1000), local());
        written(dir.path(), &out);
        n += raises(&out);
    }
    assert_eq!(n, 1, "raised once");

    let (mut c2, _) = Control::new(&cfg, Store::new(dir.path()));
    let mut r2 = Registry::from_config(&cfg);
    let mut out = Vec::new();
    for s in 60..120 {
        faulty(&mut r2, T0 + s * 1000);
        out.extend(c2.step(&r2, at(T0 + s * 1000), local()));
    }
    assert_eq!(raises(&out), 0, "not notified again after the restart");
    let list = out
        .iter()
        .find_map(|o| match o {
            Output::Alerts(v) => Some(publish::alerts(v)),
            _ => None,
        })
        .unwrap();
    assert_eq!(list["count"], 1, "{list}");
    assert_eq!(list["active"][0]["rule"], "inverter_fault");
}

#[test]
fn a_corrupt_state_file_is_reported_and_protection_starts_afresh() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("control.json"), b"{ half a file").unwrap();
    let (c, out) = Control::new(&config(), Store::new(dir.path()));
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Event(Event::StateError { .. }))),
        "{out:?}"
    );
    assert_eq!(c.inverters().collect::<Vec<_>>(), vec!["inv"]);
}
