use std::time::Duration;

use super::*;
use crate::config::{AlertsConfig, BatteryChemistry, RuleOverride};
use serde_json::{Map, Value, json};

/// A published state object read back as the device's typed report.
/// Leaked: the tests' inputs borrow it, and a test process is short.
fn reading(kind: DeviceKind, r: &Map<String, Value>) -> Option<&'static Reading> {
    let reading = Reading::from_state(kind, r).expect("a state object of that kind");
    Some(Box::leak(Box::new(reading)))
}

const T0: u64 = 1_750_000_000_000;
const GRACE: u64 = 180;

fn at(secs: u64) -> Timestamp {
    Timestamp(T0 + secs * 1000)
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// A healthy 16S LiFePO4 pack, charging gently.
fn healthy() -> Map<String, Value> {
    obj(json!({
        "soc": 80, "soh": 100, "current": 5.0, "voltage": 53.1, "cell_count": 16,
        "cell_min_voltage": 3.30, "cell_max_voltage": 3.33, "cell_average_voltage": 3.31,
        "cell_delta_voltage": 0.03, "cell_min_number": 3, "cell_max_number": 9,
        "temperature_1": 25.0, "temperature_2": 24.0, "mosfet_temperature": 30.0,
        "cell_01_resistance": 50.0, "cell_02_resistance": 0.0,
        "problem": false, "alarms": "none", "emergency_countdown": 0,
    }))
}

fn with(mut m: Map<String, Value>, changes: Value) -> Map<String, Value> {
    for (k, v) in obj(changes) {
        if v.is_null() {
            m.remove(&k);
        } else {
            m.insert(k, v);
        }
    }
    m
}

fn bms<'a>(id: &'a str, name: &'a str, r: &'a Map<String, Value>) -> DeviceInput<'a> {
    DeviceInput {
        id,
        name,
        kind: DeviceKind::Bms,
        online: Some(true),
        reading: reading(DeviceKind::Bms, r),
    }
}

fn rules_with(f: impl FnOnce(&mut AlertsConfig)) -> Rules {
    let mut c = AlertsConfig::default();
    f(&mut c);
    Rules::from_config(&c)
}

/// A fake clock and the engine's state; `t` is seconds since T0.
struct Harness {
    rules: Rules,
    state: AlertState,
    t: u64,
}

impl Harness {
    fn new(rules: Rules) -> Self {
        Self {
            rules,
            state: AlertState::new(),
            t: 0,
        }
    }

    /// Started at 0 with nothing to report, now at the end of the grace.
    fn after_grace(rules: Rules) -> Self {
        let mut h = Self::new(rules);
        h.eval(&Inputs::default());
        h.t = GRACE;
        h
    }

    fn eval(&mut self, inputs: &Inputs) -> Outcome {
        let out = evaluate(inputs, &self.rules, &self.state, at(self.t));
        self.state = out.state.clone();
        out
    }

    fn battery(&mut self, r: &Map<String, Value>) -> Vec<AlertEvent> {
        self.eval(&Inputs {
            devices: vec![bms("bat1", "Battery 1", r)],
            ..Inputs::default()
        })
        .events
    }

    /// Evaluates every `every` seconds for `secs` seconds, starting now;
    /// `t` ends `secs` later.
    fn battery_for(&mut self, secs: u64, every: u64, r: &Map<String, Value>) -> Vec<AlertEvent> {
        let end = self.t + secs;
        let mut events = Vec::new();
        while self.t < end {
            events.extend(self.battery(r));
            self.t += every;
        }
        self.t = end;
        events
    }
}

fn ids(events: &[AlertEvent]) -> Vec<(EventKind, &str)> {
    events.iter().map(|e| (e.kind, e.rule.as_str())).collect()
}

fn raised(events: &[AlertEvent]) -> Vec<&str> {
    let mut v: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == EventKind::Raise)
        .map(|e| e.rule.as_str())
        .collect();
    v.sort_unstable();
    v
}

// ------------------------------------------------------------ SOC

#[test]
fn soc_below_10_raises_critical_and_low_with_human_messages() {
    let mut h = Harness::after_grace(Rules::default());
    let low = with(healthy(), json!({"soc": 8, "current": -20.0}));
    let events = h.battery_for(61, 1, &low);
    assert_eq!(raised(&events), ["soc_critical", "soc_low"]);
    let crit = events.iter().find(|e| e.rule == "soc_critical").unwrap();
    assert_eq!(crit.message, "Battery 1: SOC 8 % is below 10 %");
    assert_eq!(crit.level, Level::Critical);
    assert_eq!(crit.family, "soc");
    assert_eq!(crit.value, Some(8.0));
    assert_eq!(crit.threshold, Some(10.0));
    assert_eq!(crit.at, at(GRACE + 60));
    assert!(crit.notify && !crit.repeat);
    let low_ev = events.iter().find(|e| e.rule == "soc_low").unwrap();
    assert_eq!(low_ev.level, Level::Error);
    assert_eq!(low_ev.message, "Battery 1: SOC 8 % is below 20 %");
}

#[test]
fn soc_hysteresis_clears_only_at_threshold_plus_2() {
    let mut h = Harness::after_grace(Rules::default());
    let events = h.battery_for(61, 1, &with(healthy(), json!({"soc": 19})));
    assert_eq!(raised(&events), ["soc_low"]);
    // 20 and 21 % are not below 20 % but not yet at the clear threshold 22 %.
    for soc in [20, 21, 19, 21, 20] {
        let events = h.battery_for(60, 1, &with(healthy(), json!({"soc": soc})));
        assert!(events.is_empty(), "soc {soc}: {events:?}");
    }
    assert!(h.state.is_active("soc_low", "bat1"));
    let events = h.battery_for(31, 1, &with(healthy(), json!({"soc": 22})));
    assert_eq!(ids(&events), [(EventKind::Clear, "soc_low")]);
    assert_eq!(events[0].threshold, Some(22.0));
    assert_eq!(
        events[0].message,
        "Battery 1: SOC 22 % is back at or above 22 %"
    );
}

// ------------------------------------------------------------ no charging

#[test]
fn no_charging_raises_after_10_min_without_charge_current() {
    let mut h = Harness::after_grace(Rules::default());
    let idle = with(healthy(), json!({"soc": 25, "current": 0.2}));
    assert!(h.battery_for(599, 1, &idle).is_empty());
    let events = h.battery_for(2, 1, &idle);
    assert_eq!(ids(&events), [(EventKind::Raise, "no_charging")]);
    assert_eq!(events[0].level, Level::Warning);
    assert_eq!(
        events[0].message,
        "Battery 1: SOC 25 % is below 30 % and no charge current flows (0.2 A)"
    );
    // A charge source comes back: cleared after the 30 s clear hold.
    let charging = with(healthy(), json!({"soc": 25, "current": 3.0}));
    let events = h.battery_for(31, 1, &charging);
    assert_eq!(ids(&events), [(EventKind::Clear, "no_charging")]);
    assert_eq!(events[0].message, "Battery 1: charging again (3.0 A)");
}

#[test]
fn no_charging_stays_quiet_while_charge_current_flows_whatever_the_mosfet() {
    let mut h = Harness::after_grace(Rules::default());
    // The original's defect: it read the charge-MOSFET bit.
    let r = with(
        healthy(),
        json!({"soc": 25, "current": 5.0, "charging_mosfet": false}),
    );
    assert!(h.battery_for(3600, 10, &r).is_empty());
    // Discharging at low SOC is exactly "no charging source".
    let r = with(
        healthy(),
        json!({"soc": 25, "current": -12.0, "charging_mosfet": true}),
    );
    let events = h.battery_for(601, 1, &r);
    assert_eq!(raised(&events), ["no_charging"]);
}

// ------------------------------------------------------------ cell delta

#[test]
fn cell_delta_hysteresis_no_flapping_around_the_threshold() {
    let mut h = Harness::after_grace(Rules::default());
    let r = |d: f64| with(healthy(), json!({"cell_delta_voltage": d}));
    let events = h.battery_for(61, 1, &r(0.112));
    assert_eq!(raised(&events), ["cell_delta_critical", "cell_delta_error"]);
    let crit = events
        .iter()
        .find(|e| e.rule == "cell_delta_critical")
        .unwrap();
    assert_eq!(
        crit.message,
        "Battery 1: cell delta 0.112 V is above 0.100 V"
    );
    // Oscillating around 0.1 V: nothing is cleared or raised again.
    let mut events = Vec::new();
    for i in 0..600 {
        let d = if i % 2 == 0 { 0.099 } else { 0.101 };
        events.extend(h.battery_for(1, 1, &r(d)));
    }
    assert!(events.is_empty(), "{events:?}");
    // 0.09 V is the clear threshold of the critical rule.
    let events = h.battery_for(31, 1, &r(0.09));
    assert_eq!(ids(&events), [(EventKind::Clear, "cell_delta_critical")]);
    assert_eq!(events[0].threshold, Some(0.09));
    assert!(h.state.is_active("cell_delta_error", "bat1"));
}

#[test]
fn clear_needs_the_clear_condition_to_hold() {
    let mut h = Harness::after_grace(Rules::default());
    let bad = with(healthy(), json!({"cell_delta_voltage": 0.07}));
    let good = with(healthy(), json!({"cell_delta_voltage": 0.02}));
    assert_eq!(raised(&h.battery_for(61, 1, &bad)), ["cell_delta_error"]);
    // 20 s good (less than the 30 s clear hold), then bad again.
    assert!(h.battery_for(20, 1, &good).is_empty());
    assert!(h.battery_for(5, 1, &bad).is_empty());
    assert!(h.battery_for(29, 1, &good).is_empty());
    let events = h.battery_for(2, 1, &good);
    assert_eq!(ids(&events), [(EventKind::Clear, "cell_delta_error")]);
}

// ------------------------------------------------------------ duration

#[test]
fn short_spike_raises_nothing() {
    let mut h = Harness::after_grace(Rules::default());
    let hot = with(healthy(), json!({"temperature_2": 65.0}));
    // temperature_critical needs 30 s, temperature_high 60 s.
    assert!(h.battery_for(29, 1, &hot).is_empty());
    assert!(h.battery_for(60, 1, &healthy()).is_empty());
    // Each spike starts the clock again.
    assert!(h.battery_for(29, 1, &hot).is_empty());
    assert!(h.battery_for(1, 1, &healthy()).is_empty());
    assert!(h.battery_for(29, 1, &hot).is_empty());
    let events = h.battery_for(2, 1, &hot);
    assert_eq!(raised(&events), ["temperature_critical"]);
    assert_eq!(
        events[0].message,
        "Battery 1: temperature 65.0 °C (sensor 2) is above 60.0 °C"
    );
}

#[test]
fn temperature_ignores_the_mosfet_sensors() {
    let mut h = Harness::after_grace(Rules::default());
    let r = with(
        healthy(),
        json!({"mosfet_temperature": 75.0, "temperature_3": 75.0}),
    );
    assert!(h.battery_for(600, 5, &r).is_empty());
}

#[test]
fn charging_below_freezing_raises_and_stopping_charge_clears() {
    let mut h = Harness::after_grace(Rules::default());
    let cold = with(
        healthy(),
        json!({"temperature_1": -3.0, "temperature_2": 4.0, "current": 6.0}),
    );
    let events = h.battery_for(61, 1, &cold);
    assert_eq!(raised(&events), ["temperature_low_charging"]);
    assert_eq!(
        events[0].message,
        "Battery 1: charging at 6.0 A while temperature -3.0 °C (sensor 1) is below 0.0 °C"
    );
    // Cold but discharging: clears.
    let events = h.battery_for(31, 1, &with(cold.clone(), json!({"current": -4.0})));
    assert_eq!(
        ids(&events),
        [(EventKind::Clear, "temperature_low_charging")]
    );
    // Cold and not charging from the start: nothing.
    let mut h = Harness::after_grace(Rules::default());
    assert!(
        h.battery_for(600, 5, &with(cold, json!({"current": -4.0})))
            .is_empty()
    );
}

// ------------------------------------------------------------ repeat

#[test]
fn reminder_every_12_h_while_active() {
    let mut h = Harness::after_grace(Rules::default());
    let r = with(healthy(), json!({"soh": 75}));
    let events = h.battery_for(301, 1, &r);
    assert_eq!(raised(&events), ["soh_low"]);
    let raised_at = events[0].at;
    // Nothing more until 12 h after the notification.
    let events = h.battery_for(12 * 3600 - 11, 10, &r);
    assert!(events.is_empty(), "{events:?}");
    let events = h.battery_for(20, 10, &r);
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!((e.kind, e.repeat, e.notify), (EventKind::Raise, true, true));
    assert_eq!(e.at.since(raised_at), Duration::from_secs(12 * 3600));
    assert_eq!(
        e.message,
        "Battery 1: SOH 75 % is below 80 % (active for 12 h)"
    );
    // The reminder does not change the list's since.
    let active = h.state.active();
    assert_eq!(active[0].since, raised_at);
    assert_eq!(active[0].message, "Battery 1: SOH 75 % is below 80 %");
}

#[test]
fn reraise_within_the_repeat_window_does_not_notify() {
    let mut h = Harness::after_grace(Rules::default());
    let bad = with(healthy(), json!({"current": 90.0}));
    let good = with(healthy(), json!({"current": 10.0}));
    let first = h.battery_for(31, 1, &bad);
    assert_eq!(raised(&first), ["charge_current_high"]);
    assert!(first[0].notify);
    let cleared = h.battery_for(31, 1, &good);
    assert_eq!(ids(&cleared), [(EventKind::Clear, "charge_current_high")]);
    assert!(cleared[0].notify, "clear events are always emitted");

    // An hour later: raised again, active, but not notified.
    h.battery_for(3600, 10, &good);
    let again = h.battery_for(31, 1, &bad);
    assert_eq!(raised(&again), ["charge_current_high"]);
    assert!(!again[0].notify && !again[0].repeat);
    assert!(h.state.is_active("charge_current_high", "bat1"));
    assert_eq!(h.state.active().len(), 1);

    // The reminder comes 12 h after the first (notified) raise.
    let events = h.battery_for(12 * 3600, 10, &bad);
    assert_eq!(events.len(), 1);
    assert!(events[0].repeat && events[0].notify);
    let after = events[0].at.since(first[0].at);
    let window = Duration::from_secs(12 * 3600);
    assert!(
        after >= window && after < window + Duration::from_secs(10),
        "at the first evaluation after the window: {after:?}"
    );

    // Cleared, then raised again more than 12 h after that reminder: notified.
    h.battery_for(31, 1, &good);
    h.battery_for(13 * 3600, 60, &good);
    let later = h.battery_for(31, 1, &bad);
    assert_eq!(raised(&later), ["charge_current_high"]);
    assert!(later[0].notify);
}

#[test]
fn repeat_window_per_rule_override() {
    let rules = rules_with(|c| {
        c.rules.insert(
            "soh_low".into(),
            RuleOverride {
                repeat_after: Some(Duration::from_secs(3600)),
                ..RuleOverride::default()
            },
        );
    });
    let mut h = Harness::after_grace(rules);
    let r = with(healthy(), json!({"soh": 70}));
    let events = h.battery_for(301 + 3600, 1, &r);
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events[1].repeat);
    assert_eq!(events[1].at.since(events[0].at), Duration::from_secs(3600));
}

// ------------------------------------------------------------ grace

#[test]
fn startup_grace_holds_raises_but_counts_the_duration() {
    let mut h = Harness::new(Rules::default());
    let low = with(healthy(), json!({"soc": 15}));
    // soc_low needs 60 s; the condition holds from the very start.
    let events = h.battery_for(GRACE, 1, &low);
    assert!(events.is_empty(), "{events:?}");
    let events = h.battery(&low);
    assert_eq!(raised(&events), ["soc_low"]);
    assert_eq!(events[0].at, at(GRACE));
}

#[test]
fn startup_grace_counts_from_the_first_evaluation() {
    let mut h = Harness::new(Rules::default());
    h.t = 1000;
    let r = with(healthy(), json!({"emergency_countdown": 120}));
    assert!(h.battery_for(GRACE, 1, &r).is_empty());
    let events = h.battery(&r);
    assert_eq!(raised(&events), ["emergency_countdown"]);
    assert_eq!(events[0].at, at(1000 + GRACE));
    assert_eq!(
        events[0].message,
        "Battery 1: BMS emergency mode on, 120 s left"
    );
}

// ------------------------------------------------------------ independence

#[test]
fn two_simultaneous_alerts_are_both_raised() {
    let mut h = Harness::after_grace(Rules::default());
    let r = with(healthy(), json!({"soc": 15, "temperature_1": 55.0}));
    let events = h.battery_for(61, 1, &r);
    assert_eq!(raised(&events), ["soc_low", "temperature_high"]);
    assert_eq!(h.state.active().len(), 2);
}

#[test]
fn an_active_alert_does_not_hide_a_later_one() {
    // The original aborted the evaluation on the first suppressed
    // duplicate, so an active low-SOC hid a later overheat.
    let mut h = Harness::after_grace(Rules::default());
    let low = with(healthy(), json!({"soc": 15}));
    assert_eq!(raised(&h.battery_for(61, 1, &low)), ["soc_low"]);
    h.battery_for(3600, 10, &low);
    let hot = with(low, json!({"temperature_1": 62.0}));
    let events = h.battery_for(61, 1, &hot);
    assert_eq!(
        raised(&events),
        ["temperature_critical", "temperature_high"]
    );
    let active: Vec<String> = h.state.active().into_iter().map(|a| a.rule).collect();
    assert_eq!(
        active,
        ["temperature_critical", "soc_low", "temperature_high"],
        "critical first, then by since"
    );
}

#[test]
fn every_battery_is_evaluated_on_its_own() {
    let mut h = Harness::after_grace(Rules::default());
    let a = with(healthy(), json!({"soc": 15}));
    let b = with(healthy(), json!({"soc": 16}));
    let mut events = Vec::new();
    for _ in 0..61 {
        events.extend(
            h.eval(&Inputs {
                devices: vec![bms("bat1", "Battery 1", &a), bms("bat2", "Battery 2", &b)],
                ..Inputs::default()
            })
            .events,
        );
        h.t += 1;
    }
    let devices: Vec<&str> = events.iter().map(|e| e.device.as_str()).collect();
    assert_eq!(devices, ["bat1", "bat2"]);
}

// ------------------------------------------------------------ unknown

#[test]
fn missing_value_keeps_the_state() {
    let mut h = Harness::after_grace(Rules::default());
    let low = with(healthy(), json!({"soc": 15}));
    assert_eq!(raised(&h.battery_for(61, 1, &low)), ["soc_low"]);
    let no_soc = with(healthy(), json!({"soc": null}));
    assert!(h.battery_for(3600, 10, &no_soc).is_empty());
    assert!(h.state.is_active("soc_low", "bat1"));
    // A pending condition keeps its clock as well.
    let hot = with(no_soc.clone(), json!({"temperature_1": 55.0}));
    assert!(h.battery_for(40, 1, &hot).is_empty());
    let no_temp = with(
        no_soc,
        json!({"temperature_1": null, "temperature_2": null}),
    );
    assert!(h.battery_for(100, 1, &no_temp).is_empty());
    let events = h.battery(&hot);
    assert_eq!(raised(&events), ["temperature_high"]);
}

#[test]
fn offline_device_freezes_its_alerts() {
    let mut h = Harness::after_grace(Rules::default());
    let low = with(healthy(), json!({"soc": 15}));
    assert_eq!(raised(&h.battery_for(61, 1, &low)), ["soc_low"]);
    // The last readings say SOC 80 %, but the device is offline.
    let r = healthy();
    let mut events = Vec::new();
    for _ in 0..400 {
        events.extend(
            h.eval(&Inputs {
                devices: vec![DeviceInput {
                    online: Some(false),
                    ..bms("bat1", "Battery 1", &r)
                }],
                ..Inputs::default()
            })
            .events,
        );
        h.t += 1;
    }
    assert_eq!(raised(&events), ["device_unreachable"]);
    assert!(h.state.is_active("soc_low", "bat1"));
}

// ------------------------------------------------------------ unreachable

fn plug<'a>(online: Option<bool>, r: &'a Map<String, Value>) -> DeviceInput<'a> {
    DeviceInput {
        id: "boiler",
        name: "Boiler",
        kind: DeviceKind::Plug,
        online,
        reading: reading(DeviceKind::Plug, r),
    }
}

#[test]
fn unreachable_after_5_min_and_back() {
    let mut h = Harness::after_grace(Rules::default());
    let r = Map::new();
    let run = |h: &mut Harness, secs: u64, online| {
        let mut events = Vec::new();
        for _ in 0..secs {
            events.extend(
                h.eval(&Inputs {
                    devices: vec![plug(online, &r)],
                    ..Inputs::default()
                })
                .events,
            );
            h.t += 1;
        }
        events
    };
    assert!(run(&mut h, 60, Some(true)).is_empty());
    assert!(run(&mut h, 300, Some(false)).is_empty());
    let events = run(&mut h, 1, Some(false));
    assert_eq!(ids(&events), [(EventKind::Raise, "device_unreachable")]);
    assert_eq!(events[0].message, "Boiler unreachable for 5 min");
    assert_eq!(events[0].family, "unreachable");
    assert_eq!(events[0].device, "boiler");
    let events = run(&mut h, 31, Some(true));
    assert_eq!(ids(&events), [(EventKind::Clear, "device_unreachable")]);
    assert_eq!(events[0].message, "Boiler reachable again");
}

#[test]
fn never_heard_from_counts_from_start() {
    let mut h = Harness::new(rules_with(|c| {
        c.unreachable_after = Duration::from_secs(600);
    }));
    let r = Map::new();
    let mut events = Vec::new();
    for _ in 0..=600 {
        events.extend(
            h.eval(&Inputs {
                devices: vec![plug(None, &r)],
                ..Inputs::default()
            })
            .events,
        );
        h.t += 1;
    }
    assert_eq!(ids(&events), [(EventKind::Raise, "device_unreachable")]);
    assert_eq!(events[0].at, at(600));
    assert_eq!(
        events[0].message,
        "Boiler unreachable for 10 min (nothing received since start-up)"
    );
}

// ------------------------------------------------------------ presets

#[test]
fn lifepo4_16s_charging_at_56_8_v_raises_nothing() {
    let mut h = Harness::after_grace(Rules::default());
    let r = with(
        healthy(),
        json!({"voltage": 56.8, "cell_max_voltage": 3.55, "cell_min_voltage": 3.549,
               "cell_average_voltage": 3.55, "current": 40.0, "soc": 99}),
    );
    assert!(h.battery_for(3600, 5, &r).is_empty());
}

#[test]
fn pack_voltage_limits_scale_with_the_cell_count() {
    let rules = Rules::default();
    let mut h = Harness::after_grace(rules);
    let r = with(
        healthy(),
        json!({"voltage": 58.6, "cell_max_voltage": 3.64}),
    );
    let events = h.battery_for(31, 1, &r);
    assert_eq!(raised(&events), ["pack_voltage_high"]);
    assert_eq!(events[0].threshold, Some(58.4));
    assert_eq!(
        events[0].message,
        "Battery 1: pack voltage 58.6 V is above 58.4 V (16 × 3.65 V)"
    );
    // The original's "< 43 V critical" is 2.8 V/cell × 16 = 44.8 V here.
    let mut h = Harness::after_grace(Rules::default());
    let r = with(healthy(), json!({"voltage": 44.0, "current": -5.0}));
    let events = h.battery_for(31, 1, &r);
    assert_eq!(raised(&events), ["pack_voltage_low"]);
    assert_eq!(events[0].level, Level::Critical);
    assert_eq!(events[0].threshold, Some(44.8));
    // Without the series count the rule cannot decide.
    let mut h = Harness::after_grace(Rules::default());
    let r = with(healthy(), json!({"voltage": 70.0, "cell_count": null}));
    assert!(h.battery_for(60, 1, &r).is_empty());
}

#[test]
fn nmc_preset_moves_the_voltage_thresholds() {
    let lfp = Rules::default();
    let nmc = rules_with(|c| c.chemistry = BatteryChemistry::Nmc);
    let t = |r: &Rules, id| r.get(id).and_then(|r| r.threshold);
    assert_eq!(t(&lfp, "cell_max_high"), Some(3.65));
    assert_eq!(t(&nmc, "cell_max_high"), Some(4.2));
    assert_eq!(t(&lfp, "cell_min_low"), Some(2.9));
    assert_eq!(t(&nmc, "cell_min_low"), Some(3.0));
    assert_eq!(t(&lfp, "cell_average_low"), Some(3.0));
    assert_eq!(t(&nmc, "cell_average_low"), Some(3.3));
    assert_eq!(t(&nmc, "pack_voltage_high"), Some(4.2));
    assert_eq!(t(&nmc, "pack_voltage_low"), Some(3.0));
    // The rest is the same for both.
    assert_eq!(t(&nmc, "cell_delta_error"), t(&lfp, "cell_delta_error"));
    assert_eq!(t(&nmc, "soc_low"), t(&lfp, "soc_low"));

    // A 14S NMC pack at 4.1 V/cell, charging: fine for NMC...
    let r = with(
        healthy(),
        json!({"voltage": 57.4, "cell_count": 14, "cell_max_voltage": 4.11,
               "cell_min_voltage": 4.09, "cell_average_voltage": 4.1}),
    );
    let mut h = Harness::after_grace(nmc.clone());
    assert!(h.battery_for(600, 5, &r).is_empty());
    // ...far above the LiFePO4 limits.
    let mut h = Harness::after_grace(lfp);
    let events = h.battery_for(31, 1, &r);
    assert_eq!(raised(&events), ["cell_max_high", "pack_voltage_high"]);

    // A LiFePO4 pack resting at 3.2 V/cell is low for NMC.
    let r = with(
        healthy(),
        json!({"cell_average_voltage": 3.2, "cell_min_voltage": 3.19, "voltage": 51.2}),
    );
    let mut h = Harness::after_grace(nmc);
    let events = h.battery_for(61, 1, &r);
    assert_eq!(raised(&events), ["cell_average_low"]);
    assert_eq!(
        events[0].message,
        "Battery 1: average cell voltage 3.200 V is below 3.300 V"
    );
}

#[test]
fn lifepo4_cell_voltage_rules() {
    let mut h = Harness::after_grace(Rules::default());
    let r = with(
        healthy(),
        json!({"cell_min_voltage": 2.85, "cell_min_number": 5,
               "cell_average_voltage": 2.98, "current": -30.0}),
    );
    let events = h.battery_for(61, 1, &r);
    assert_eq!(raised(&events), ["cell_average_low", "cell_min_low"]);
    let min = events.iter().find(|e| e.rule == "cell_min_low").unwrap();
    assert_eq!(min.level, Level::Critical);
    assert_eq!(
        min.message,
        "Battery 1: lowest cell 2.850 V (cell 5) is below 2.900 V"
    );
}

// ------------------------------------------------------------ the rest

#[test]
fn discharge_current_over_100_a_raises_both_levels() {
    let mut h = Harness::after_grace(Rules::default());
    let r = with(healthy(), json!({"current": -110.0}));
    let events = h.battery_for(31, 1, &r);
    assert_eq!(
        raised(&events),
        ["discharge_current_critical", "discharge_current_high"]
    );
    let e = events
        .iter()
        .find(|e| e.rule == "discharge_current_critical")
        .unwrap();
    assert_eq!(
        e.message,
        "Battery 1: discharge current 110.0 A is above 100.0 A"
    );
    assert_eq!(e.value, Some(110.0));
}

#[test]
fn soh_below_80_is_a_warning_and_85_is_fine() {
    let mut h = Harness::after_grace(Rules::default());
    assert!(
        h.battery_for(600, 5, &with(healthy(), json!({"soh": 85})))
            .is_empty()
    );
    let events = h.battery_for(301, 1, &with(healthy(), json!({"soh": 79})));
    assert_eq!(raised(&events), ["soh_low"]);
    assert_eq!(events[0].level, Level::Warning);
}

#[test]
fn wire_resistance_takes_the_highest_measured_cell() {
    let mut h = Harness::after_grace(Rules::default());
    let r = with(
        healthy(),
        json!({"cell_05_resistance": 350.0, "cell_06_resistance": 120.0}),
    );
    let events = h.battery_for(301, 1, &r);
    assert_eq!(raised(&events), ["wire_resistance_high"]);
    assert_eq!(
        events[0].message,
        "Battery 1: wire resistance 350 mΩ (cell 5) is above 300 mΩ"
    );
}

#[test]
fn bms_alarm_message_lists_the_alarms() {
    let mut h = Harness::after_grace(Rules::default());
    let r = with(
        healthy(),
        json!({"problem": true, "alarms": "cell overvoltage, charge overtemperature"}),
    );
    let events = h.battery_for(11, 1, &r);
    assert_eq!(raised(&events), ["bms_alarm"]);
    assert_eq!(
        events[0].message,
        "Battery 1: BMS alarm: cell overvoltage, charge overtemperature"
    );
    let events = h.battery_for(11, 1, &healthy());
    assert_eq!(ids(&events), [(EventKind::Clear, "bms_alarm")]);
}

#[test]
fn inverter_fault_and_balancer_failsafe() {
    let mut h = Harness::after_grace(Rules::default());
    let faulty = obj(json!({"faults": "F35 no AC grid", "warnings": "none"}));
    let ok = obj(json!({"faults": "none"}));
    let inverter = |r| DeviceInput {
        id: "deye",
        name: "Deye",
        kind: DeviceKind::Inverter,
        online: Some(true),
        reading: reading(DeviceKind::Inverter, r),
    };
    let mut events = Vec::new();
    for _ in 0..31 {
        events.extend(
            h.eval(&Inputs {
                devices: vec![inverter(&faulty)],
                balancer_failsafe: vec!["deye"],
            })
            .events,
        );
        h.t += 1;
    }
    assert_eq!(raised(&events), ["balancer_failsafe", "inverter_fault"]);
    let fault = events.iter().find(|e| e.rule == "inverter_fault").unwrap();
    assert_eq!(fault.message, "Deye: inverter fault: F35 no AC grid");
    let fs = events
        .iter()
        .find(|e| e.rule == "balancer_failsafe")
        .unwrap();
    assert_eq!(fs.at, at(GRACE), "no minimum duration");
    let out = h.eval(&Inputs {
        devices: vec![inverter(&ok)],
        balancer_failsafe: vec![],
    });
    assert_eq!(ids(&out.events), [(EventKind::Clear, "balancer_failsafe")]);
    assert_eq!(
        out.events[0].message,
        "Deye: overload balancer out of failsafe"
    );
    assert!(out.changed);
}

#[test]
fn rules_of_one_kind_skip_other_kinds() {
    let mut h = Harness::after_grace(Rules::default());
    let r = obj(json!({"soc": 1, "faults": "F13 working mode change"}));
    let mut events = Vec::new();
    for _ in 0..700 {
        events.extend(
            h.eval(&Inputs {
                devices: vec![plug(Some(true), &r)],
                ..Inputs::default()
            })
            .events,
        );
        h.t += 1;
    }
    assert!(events.is_empty(), "{events:?}");
}

// ------------------------------------------------------------ configuration

#[test]
fn overrides_from_config_apply() {
    let rules = rules_with(|c| {
        c.rules.insert(
            "soc_low".into(),
            RuleOverride {
                threshold: Some(25.0),
                hysteresis: Some(5.0),
                for_duration: Some(Duration::from_secs(120)),
                level: Some(Level::Critical),
                ..RuleOverride::default()
            },
        );
        c.rules.insert(
            "soh_low".into(),
            RuleOverride {
                enabled: Some(false),
                ..RuleOverride::default()
            },
        );
    });
    let soc = rules.get("soc_low").unwrap();
    assert_eq!(
        (soc.threshold, soc.clear, soc.level),
        (Some(25.0), Some(30.0), Level::Critical)
    );
    assert_eq!(soc.min_duration, Duration::from_secs(120));
    assert_eq!(soc.clear_after, Duration::from_secs(30));
    assert!(!rules.families().contains(&"soh"));
    assert!(rules.families().contains(&"soc"));

    let mut h = Harness::after_grace(rules);
    let r = with(healthy(), json!({"soc": 24, "soh": 50}));
    assert!(h.battery_for(120, 1, &r).is_empty());
    let events = h.battery(&r);
    assert_eq!(raised(&events), ["soc_low"]);
    assert_eq!(events[0].level, Level::Critical);
}

#[test]
fn disabled_alerts_raise_nothing_and_clear_what_was_active() {
    let mut h = Harness::after_grace(Rules::default());
    let low = with(healthy(), json!({"soc": 15}));
    assert_eq!(raised(&h.battery_for(61, 1, &low)), ["soc_low"]);
    h.rules = rules_with(|c| c.enabled = false);
    let events = h.battery(&low);
    assert_eq!(ids(&events), [(EventKind::Clear, "soc_low")]);
    assert!(h.battery_for(3600, 10, &low).is_empty());
    assert!(h.rules.families().is_empty());
}

#[test]
fn set_threshold_validates_and_moves_the_clear_threshold() {
    let mut rules = Rules::default();
    assert_eq!(
        rules.set_threshold("bogus", 1.0),
        Err(AlertError::UnknownRule("bogus".into()))
    );
    assert_eq!(
        rules.set_threshold("bms_alarm", 1.0),
        Err(AlertError::NoThreshold("bms_alarm".into()))
    );
    assert!(matches!(
        rules.set_threshold("soc_low", f64::NAN),
        Err(AlertError::NotFinite { .. })
    ));
    assert!(matches!(
        rules.set_threshold("soc_low", f64::INFINITY),
        Err(AlertError::NotFinite { .. })
    ));
    let err = rules.set_threshold("soc_low", 150.0).unwrap_err();
    assert_eq!(err.to_string(), "150 is outside 1 to 99 %");
    assert_eq!(rules.get("soc_low").unwrap().threshold, Some(20.0));

    rules.set_threshold("soc_low", 25.0).unwrap();
    let r = rules.get("soc_low").unwrap();
    assert_eq!((r.threshold, r.clear), (Some(25.0), Some(27.0)));
    rules.set_threshold("cell_delta_error", 0.08).unwrap();
    let r = rules.get("cell_delta_error").unwrap();
    assert_eq!((r.threshold, r.clear), (Some(0.08), Some(0.07)));

    // The edit takes effect at the next evaluation.
    let mut h = Harness::after_grace(rules);
    let events = h.battery_for(61, 1, &with(healthy(), json!({"soc": 23})));
    assert_eq!(raised(&events), ["soc_low"]);
}

#[test]
fn every_family_has_a_rule_and_a_name() {
    let rules = Rules::default();
    assert_eq!(rules.families(), FAMILIES);
    for f in FAMILIES {
        assert!(family_name(f).is_some(), "{f}");
    }
    for r in rules.iter() {
        assert!(FAMILIES.contains(&r.family), "{}", r.id);
        if let Some(t) = r.threshold {
            assert!((r.min..=r.max).contains(&t), "{}: default in range", r.id);
            assert!(r.step > 0.0, "{}", r.id);
        }
    }
}

// ------------------------------------------------------------ payloads

#[test]
fn event_and_active_list_serialize_as_documented() {
    let mut h = Harness::after_grace(Rules::default());
    let events = h.battery_for(61, 1, &with(healthy(), json!({"soc": 8})));
    let e = events.iter().find(|e| e.rule == "soc_critical").unwrap();
    let json = serde_json::to_value(e).unwrap();
    assert_eq!(
        json,
        json!({
            "kind": "raise", "rule": "soc_critical", "family": "soc",
            "level": "critical", "device": "bat1", "device_name": "Battery 1",
            "value": 8.0, "threshold": 10.0,
            "message": "Battery 1: SOC 8 % is below 10 %",
            "at": T0 + (GRACE + 60) * 1000, "repeat": false, "notify": true,
        })
    );
    let active = serde_json::to_value(h.state.active()).unwrap();
    assert_eq!(active[0]["rule"], "soc_critical");
    assert_eq!(active[0]["level"], "critical");
    assert_eq!(active[0]["since"], T0 + (GRACE + 60) * 1000);
    assert_eq!(active[1]["rule"], "soc_low");
}

#[test]
fn changed_only_when_the_active_list_changes() {
    let mut h = Harness::after_grace(Rules::default());
    let r = with(healthy(), json!({"soc": 15}));
    let mut flags = Vec::new();
    for _ in 0..70 {
        flags.push(
            h.eval(&Inputs {
                devices: vec![bms("bat1", "Battery 1", &r)],
                ..Inputs::default()
            })
            .changed,
        );
        h.t += 1;
    }
    assert_eq!(flags.iter().filter(|c| **c).count(), 1);
    assert!(flags[60]);
}

#[test]
fn quiet_slots_are_forgotten() {
    let mut h = Harness::after_grace(Rules::default());
    h.battery_for(600, 10, &healthy());
    assert!(h.state.slots.is_empty(), "{:?}", h.state.slots);
}
