use super::controller::effective_min_off;
use super::*;
use crate::config::BalancerConfig;
use proptest::prelude::*;

const TICK: Duration = Duration::from_secs(5);
const T0: u64 = 1_700_000_000_000;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Seconds since the start of the scenario.
fn at(t: Timestamp) -> u64 {
    (t.0 - T0) / 1000
}

fn policy(id: &str, priority: i32) -> PlugPolicy {
    PlugPolicy {
        id: id.into(),
        priority,
        sheddable: true,
        nominal_w: None,
        min_on: secs(60),
        min_off: secs(300),
        failsafe_shed: false,
        pv_deficit_off: false,
    }
}

#[derive(Debug, Clone)]
struct FakePlug {
    policy: PlugPolicy,
    on: bool,
    draw_w: f64,
    mode: PlugMode,
    reachable: bool,
}

fn plug(id: &str, priority: i32, draw_w: f64) -> FakePlug {
    FakePlug {
        policy: policy(id, priority),
        on: true,
        draw_w,
        mode: PlugMode::Auto,
        reachable: true,
    }
}

/// A simulated house: the inverter measures the base load plus every
/// plug that is on; actions take effect at once.
struct House {
    cfg: BalancerConfig,
    plugs: Vec<FakePlug>,
    base_w: f64,
    grid: bool,
    rated_w: f64,
    pv_w: Option<f64>,
    bms_w: Option<f64>,
    feed: bool,
    last_inv: Option<InverterSnapshot>,
    now: Timestamp,
    state: BalancerState,
    log: Vec<(Timestamp, Action)>,
    notices: Vec<(Timestamp, Notice)>,
    last: Option<Decision>,
}

impl House {
    fn new(plugs: Vec<FakePlug>, base_w: f64) -> Self {
        Self {
            cfg: BalancerConfig::default(),
            plugs,
            base_w,
            grid: true,
            rated_w: 6000.0,
            pv_w: None,
            bms_w: None,
            feed: true,
            last_inv: None,
            now: Timestamp(T0),
            state: BalancerState::new(),
            log: Vec::new(),
            notices: Vec::new(),
            last: None,
        }
    }

    fn total_w(&self) -> f64 {
        self.base_w
            + self
                .plugs
                .iter()
                .filter(|p| p.on)
                .map(|p| p.draw_w)
                .sum::<f64>()
    }

    fn policies(&self) -> Vec<PlugPolicy> {
        self.plugs.iter().map(|p| p.policy.clone()).collect()
    }

    fn plug_mut(&mut self, id: &str) -> &mut FakePlug {
        self.plugs
            .iter_mut()
            .find(|p| p.policy.id == id)
            .expect("plug in scenario")
    }

    fn snapshot(&mut self) -> Snapshot {
        if self.feed {
            let total = self.total_w();
            let (ac, grid_port) = if self.grid {
                let ac = total.min(self.rated_w);
                (ac, total - ac)
            } else {
                (total, 0.0)
            };
            self.last_inv = Some(InverterSnapshot {
                sample_time: self.now,
                rated_w: self.rated_w,
                ac_output_w: ac,
                grid_port_w: grid_port,
                gen_port_w: 0.0,
                grid_connected: self.grid,
                pv_w: self.pv_w,
                load_w: Some(total),
                bms_discharge_limit_w: self.bms_w,
                overload_fault: false,
            });
        }
        Snapshot {
            inverter: self.last_inv.clone(),
            plugs: self
                .plugs
                .iter()
                .map(|p| PlugSnapshot {
                    id: p.policy.id.clone(),
                    reachable: p.reachable,
                    on: Some(p.on),
                    power_w: Some(if p.on { p.draw_w } else { 0.0 }),
                    last_seen: Some(self.now),
                    mode: p.mode,
                    command_pending: false,
                })
                .collect(),
        }
    }

    fn tick(&mut self) {
        let snap = self.snapshot();
        let d = tick(&snap, &self.cfg, &self.policies(), &self.state, self.now);
        for a in &d.actions {
            let on = a.state == SwitchState::On;
            self.plug_mut(&a.plug).on = on;
            self.log.push((self.now, a.clone()));
        }
        for n in &d.notices {
            self.notices.push((self.now, n.clone()));
        }
        self.state = d.state.clone();
        self.last = Some(d);
    }

    fn step(&mut self) {
        self.now = self.now.plus(TICK);
        self.tick();
    }

    fn run(&mut self, d: Duration) {
        let end = self.now.plus(d);
        while self.now < end {
            self.step();
        }
    }

    fn run_until(&mut self, d: Duration, mut stop: impl FnMut(&Self) -> bool) -> bool {
        let end = self.now.plus(d);
        while self.now < end {
            self.step();
            if stop(self) {
                return true;
            }
        }
        false
    }

    fn status(&self) -> &Status {
        &self.last.as_ref().expect("ticked").status
    }

    fn actions_for(&self, id: &str) -> Vec<(u64, SwitchState, Reason)> {
        self.log
            .iter()
            .filter(|(_, a)| a.plug == id)
            .map(|(t, a)| (at(*t), a.state, a.reason))
            .collect()
    }

    fn commands(&self) -> usize {
        self.log.len()
    }
}

use Reason::*;
use SwitchState::{Off, On};

#[test]
fn overload_step_sheds_the_lowest_priority_once_and_restores_after_min_off() {
    let mut h = House::new(
        vec![plug("boiler", 10, 1200.0), plug("heater", 20, 1500.0)],
        5000.0,
    );
    h.run(secs(120));
    // 7700 W > 7400 W: one plug, the least important, after shed_delay.
    assert_eq!(h.actions_for("boiler"), vec![(10, Off, Overload)]);
    assert_eq!(h.commands(), 1);
    assert_eq!(h.status().state, Phase::Shedding);
    assert_eq!(h.status().shed_count, 1);
    assert_eq!(h.status().shed_power_w, 1200.0);
    assert_eq!(h.status().limit_w, Some(7400.0));
    assert_eq!(h.status().headroom_w, Some(900.0));

    // Room, but not for the boiler under 85 %: 5200 + 1200 > 6290.
    h.base_w = 3700.0;
    h.run(secs(600));
    assert_eq!(h.commands(), 1);
    assert_eq!(h.status().state, Phase::Restoring);

    h.base_w = 3000.0;
    h.run(secs(600));
    let boiler = h.actions_for("boiler");
    assert_eq!(boiler.len(), 2);
    assert_eq!((boiler[1].1, boiler[1].2), (On, Restore));
    assert!(boiler[1].0 >= 10 + 300, "restored at {}", boiler[1].0);
    assert_eq!(h.commands(), 2);
    assert_eq!(h.status().state, Phase::Idle);
}

#[test]
fn slow_ramp_sheds_one_plug_per_step_in_priority_order() {
    let mut h = House::new(
        vec![
            plug("a", 1, 1000.0),
            plug("b", 2, 1000.0),
            plug("c", 3, 1000.0),
        ],
        4000.0,
    );
    h.tick();
    let mut peak: f64 = 0.0;
    for _ in 0..120 {
        h.base_w += 25.0;
        h.step();
        peak = peak.max(h.total_w());
    }
    let order: Vec<_> = h
        .log
        .iter()
        .map(|(t, a)| (a.plug.as_str(), a.reason, at(*t)))
        .collect();
    assert_eq!(order.len(), 3, "{order:?}");
    assert_eq!(
        order.iter().map(|o| o.0).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    assert!(order.iter().all(|o| o.1 == Overload));
    for w in order.windows(2) {
        assert!(w[1].2 - w[0].2 >= 10, "{order:?}");
    }
    assert!(
        peak < 8140.0,
        "a slow ramp never reaches the emergency tier: {peak}"
    );
}

#[test]
fn oscillation_around_the_limit_does_not_flap() {
    // Every other sample over the limit: never held for shed_delay.
    let mut h = House::new(vec![plug("boiler", 10, 1000.0)], 6350.0);
    for i in 0..720 {
        h.base_w = if i % 2 == 0 { 6350.0 } else { 6450.0 };
        h.step();
    }
    assert_eq!(h.commands(), 0);

    // Slow swings between the shed and restore lines: one shed, no restore.
    let mut h = House::new(vec![plug("boiler", 10, 1000.0)], 6600.0);
    for i in 0..720 {
        h.base_w = if (i / 6) % 2 == 0 { 6600.0 } else { 6000.0 };
        h.step();
    }
    assert_eq!(h.actions_for("boiler"), vec![(10, Off, Overload)]);

    // Swings across both lines: the anti-flap backoff stretches min-off.
    let mut h = House::new(vec![plug("boiler", 10, 1000.0)], 6800.0);
    for i in 0..(3 * 720) {
        // 2 min at 7800 W, 10 min at 5800 W.
        h.base_w = if i % 144 < 24 { 6800.0 } else { 4800.0 };
        h.step();
    }
    let acts = h.actions_for("boiler");
    // Without backoff: two commands per 12-minute cycle, 30 in 3 h.
    assert!(acts.len() <= 12, "{} commands: {acts:?}", acts.len());
    for w in acts.windows(2) {
        if w[0].1 == Off {
            assert!(w[1].0 - w[0].0 >= 300, "{acts:?}");
        }
    }
    assert!(h.state.persisted().plugs["boiler"].reshed_count >= 3);
    // The gaps between a shed and the next restore grow.
    let gaps: Vec<u64> = acts
        .windows(2)
        .filter(|w| w[0].1 == Off && w[1].1 == On)
        .map(|w| w[1].0 - w[0].0)
        .collect();
    assert!(gaps.last() > gaps.first(), "{gaps:?}");
}

#[test]
fn stale_feed_freezes_restores_then_failsafe_sheds_marked_plugs() {
    let mut boiler = plug("boiler", 10, 2000.0);
    boiler.policy.failsafe_shed = true;
    let mut heater = plug("heater", 20, 1500.0);
    heater.policy.failsafe_shed = true;
    let fridge = plug("fridge", 30, 150.0);
    let mut h = House::new(vec![boiler, heater, fridge], 4300.0);
    h.run(secs(60));
    assert_eq!(h.actions_for("boiler"), vec![(10, Off, Overload)]);

    // The feed dies with the load low: the boiler's min-off passes, but
    // nothing is restored on stale data.
    h.base_w = 1000.0;
    h.feed = false;
    h.run(secs(15));
    assert_eq!(h.status().state, Phase::Restoring);
    h.run(secs(5));
    assert_eq!(h.status().state, Phase::Stale);
    h.run(secs(40));
    assert_eq!(h.status().state, Phase::Stale);
    h.run(secs(5));
    assert_eq!(h.status().state, Phase::Failsafe);
    assert_eq!(h.actions_for("heater"), vec![(125, Off, Failsafe)]);
    h.run(secs(600));
    assert!(h.actions_for("fridge").is_empty());
    assert_eq!(h.commands(), 2, "{:?}", h.log);
    assert!(h.log.iter().all(|(_, a)| a.state == Off));

    // Fresh data again: both come back, most important first, one per settle.
    h.feed = true;
    h.run(secs(300));
    let heater = h.actions_for("heater");
    let boiler = h.actions_for("boiler");
    assert_eq!((heater[1].1, heater[1].2), (On, Restore));
    assert_eq!((boiler[1].1, boiler[1].2), (On, Restore));
    assert!(boiler[1].0 - heater[1].0 >= 60);
    assert_eq!(h.status().state, Phase::Idle);
}

#[test]
fn grid_loss_lowers_the_limit_at_once() {
    let mut h = House::new(
        vec![plug("boiler", 10, 1200.0), plug("heater", 20, 800.0)],
        3800.0,
    );
    h.run(secs(60));
    assert_eq!(h.commands(), 0);
    assert_eq!(h.status().limit_w, Some(7400.0));

    // Blackout: 90 % of 6000 W; 5800 W is over it (but under 110 %).
    h.grid = false;
    h.step();
    assert_eq!(h.status().limit_w, Some(5400.0));
    assert_eq!(h.status().grid_connected, Some(false));
    assert_eq!(h.status().state, Phase::Shedding);
    assert_eq!(
        h.commands(),
        0,
        "shed_delay still applies below the emergency tier"
    );
    h.step();
    assert_eq!(h.actions_for("boiler"), vec![(70, Off, Overload)]);

    // A weak battery is the tighter limit: 4000 W, and 4600 W is over 110 % of it.
    h.bms_w = Some(4000.0);
    h.pv_w = Some(0.0);
    h.step();
    assert_eq!(h.status().limit_w, Some(4000.0));
    assert_eq!(h.actions_for("heater"), vec![(75, Off, Emergency)]);

    // PV adds to what the battery may give.
    h.pv_w = Some(1000.0);
    h.step();
    assert_eq!(h.status().limit_w, Some(5000.0));

    // Grid back: the on-grid limit, and both return in time.
    h.grid = true;
    h.run(secs(900));
    assert_eq!(h.status().limit_w, Some(7400.0));
    assert_eq!(h.actions_for("boiler").len(), 2);
    assert_eq!(h.actions_for("heater").len(), 2);
}

#[test]
fn restart_with_a_persisted_shed_set_counts_min_off_from_the_persisted_time() {
    let mut h = House::new(
        vec![plug("boiler", 10, 2000.0), plug("heater", 20, 1500.0)],
        6000.0,
    );
    h.run(secs(10));
    assert_eq!(h.actions_for("boiler"), vec![(10, Off, Emergency)]);
    assert_eq!(h.actions_for("heater"), vec![(10, Off, Emergency)]);
    h.run(secs(110));

    // kill -9 at 120 s; the JSON on disk is all that survives.
    let json = serde_json::to_string(h.state.persisted()).expect("serialize");
    let persisted: PersistedState = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(&persisted, h.state.persisted());
    h.state = BalancerState::from_persisted(persisted);
    h.log.clear();
    // Meanwhile someone pressed the heater's button; the load is low.
    h.plug_mut("heater").on = true;
    h.base_w = 2000.0;

    h.step();
    assert!(h.last.as_ref().is_some_and(|d| d.actions.is_empty()));
    assert_eq!(
        h.status().state,
        Phase::Stale,
        "waits for two fresh samples"
    );
    assert_eq!(h.notices.len(), 1);
    assert!(matches!(&h.notices[0].1, Notice::Override { plug, .. } if plug == "heater"));
    assert!(h.state.persisted().plugs["heater"].override_until.is_some());

    h.run(secs(600));
    assert_eq!(h.notices.len(), 1, "reported once");
    assert!(
        h.actions_for("heater").is_empty(),
        "the user's ON is respected"
    );
    let boiler = h.actions_for("boiler");
    assert_eq!(boiler.len(), 1, "{boiler:?}");
    assert_eq!((boiler[0].1, boiler[0].2), (On, Restore));
    // min_off 300 s from the persisted shed at 10 s, not from the restart.
    assert!((310..=330).contains(&boiler[0].0), "{boiler:?}");
}

#[test]
fn manual_lock_and_override_during_an_overload() {
    let mut big = plug("big", 0, 3000.0);
    big.mode = PlugMode::On;
    let mut h = House::new(
        vec![big, plug("boiler", 10, 1500.0), plug("heater", 20, 1000.0)],
        2500.0,
    );
    h.run(secs(30));
    // The locked plug is the lowest priority but is never touched.
    assert_eq!(h.actions_for("boiler"), vec![(10, Off, Overload)]);

    // The user switches the shed boiler back on: an override.
    h.plug_mut("boiler").on = true;
    h.step();
    assert!(matches!(&h.notices[..], [(_, Notice::Override { plug, .. })] if plug == "boiler"));
    h.run(secs(90));
    // Over the limit again: the next one goes, not the overridden boiler.
    assert_eq!(h.actions_for("heater").len(), 1);
    assert_eq!(h.actions_for("boiler").len(), 1);
    assert_eq!(h.status().state, Phase::Shedding);

    // Emergency: the override gives way, the lock does not.
    h.base_w = 6000.0;
    h.run(secs(30));
    assert_eq!(h.actions_for("boiler")[1].2, Emergency);
    assert!(h.actions_for("big").is_empty());

    // An OFF lock takes the plug out of the shed set: never restored.
    h.plug_mut("heater").mode = PlugMode::Off;
    h.base_w = 0.0;
    h.run(secs(1800));
    assert!(h.actions_for("big").is_empty());
    assert_eq!(h.actions_for("heater").len(), 1);
    assert_eq!(h.actions_for("boiler").last().map(|a| a.2), Some(Restore));
    assert!(h.state.persisted().plugs["heater"].shed.is_none());
}

#[test]
fn compressor_minimum_off_and_on() {
    let mut hp = plug("heat-pump", 10, 1200.0);
    hp.policy.min_off = secs(600);
    let mut h = House::new(vec![hp], 6800.0);
    h.run(secs(10));
    assert_eq!(h.actions_for("heat-pump"), vec![(10, Off, Overload)]);
    h.base_w = 1000.0;
    assert!(h.run_until(secs(1200), |h| h.commands() == 2));
    let restored = h.actions_for("heat-pump")[1].0;
    assert!((610..=620).contains(&restored), "{restored}");

    // Overloaded right after the start: min_on protects it for 60 s.
    h.base_w = 6500.0;
    assert!(h.run_until(secs(600), |h| h.commands() == 3));
    let shed_again = h.actions_for("heat-pump")[2].0;
    assert!(shed_again >= restored + 60, "{shed_again}");
    // A flap: min-off doubles.
    h.base_w = 1000.0;
    assert!(h.run_until(secs(3000), |h| h.commands() == 4));
    let back = h.actions_for("heat-pump")[3].0;
    assert!(back >= shed_again + 1200, "{back}");
}

#[test]
fn pv_deficit_sheds_opted_in_plugs_and_reactivates_on_surplus() {
    let mut pump = plug("pump", 10, 800.0);
    pump.policy.pv_deficit_off = true;
    let mut heater = plug("heater", 20, 600.0);
    heater.policy.pv_deficit_off = true;
    let tv = plug("tv", 5, 200.0);
    let mut h = House::new(vec![pump, heater, tv], 400.0);
    h.pv_w = Some(3000.0);
    h.run(secs(60));
    assert_eq!(h.commands(), 0);

    h.pv_w = Some(500.0);
    h.run(secs(295));
    assert_eq!(h.commands(), 0, "5 minutes of deficit first");
    h.run(secs(60));
    assert_eq!(h.actions_for("pump"), vec![(365, Off, PvDeficit)]);
    assert_eq!(h.actions_for("heater"), vec![(375, Off, PvDeficit)]);
    assert!(h.actions_for("tv").is_empty());

    // Some sun, but not enough for either: nothing comes back.
    h.pv_w = Some(1000.0);
    h.run(secs(600));
    assert_eq!(h.commands(), 2);

    h.pv_w = Some(4000.0);
    h.run(secs(300));
    let heater = h.actions_for("heater");
    let pump = h.actions_for("pump");
    assert_eq!((heater[1].1, heater[1].2), (On, PvSurplus));
    assert_eq!((pump[1].1, pump[1].2), (On, PvSurplus));
    assert!(
        pump[1].0 - heater[1].0 >= 60,
        "one per settle_after_restore"
    );
    assert_eq!(h.commands(), 4);
}

#[test]
fn emergency_tier_sheds_enough_at_once_ignoring_min_on() {
    let mut d = plug("d", 0, 2000.0);
    d.on = false;
    let mut h = House::new(
        vec![
            plug("a", 0, 500.0),
            plug("b", 0, 1000.0),
            plug("c", 0, 1500.0),
            d,
        ],
        4000.0,
    );
    h.run(secs(30));
    assert_eq!(h.commands(), 0);
    // The user switches d on: 9000 W > 110 % of 7400 W.
    h.plug_mut("d").on = true;
    h.step();
    // Excess over the restore line: 9000 − 6290 = 2710 W → d and c.
    let now: Vec<_> = h
        .log
        .iter()
        .map(|(t, a)| (at(*t), a.plug.as_str(), a.reason))
        .collect();
    assert_eq!(now, vec![(35, "d", Emergency), (35, "c", Emergency)]);
    assert!(h.total_w() <= 7400.0 * 0.85);
    h.run(secs(60));
    assert_eq!(h.commands(), 2);
}

#[test]
fn nothing_is_switched_before_fresh_data_and_plug_states() {
    let mut h = House::new(vec![plug("boiler", 10, 4000.0)], 6000.0);
    h.plug_mut("boiler").reachable = false;
    h.run(secs(30));
    assert_eq!(h.commands(), 0);
    assert_eq!(h.status().state, Phase::Stale);
    h.plug_mut("boiler").reachable = true;
    h.step();
    assert_eq!(h.actions_for("boiler"), vec![(35, Off, Emergency)]);
}

#[test]
fn disabled_keeps_the_shed_set_and_resumes_on_enable() {
    let mut h = House::new(
        vec![plug("boiler", 10, 2000.0), plug("heater", 20, 1500.0)],
        4500.0,
    );
    h.run(secs(20));
    assert_eq!(h.commands(), 1);
    h.state.set_enabled(false);
    h.base_w = 9000.0;
    h.run(secs(60));
    assert_eq!(h.commands(), 1);
    assert_eq!(h.status().state, Phase::Disabled);
    assert_eq!(h.status().shed_count, 1);
    h.base_w = 0.0;
    h.run(secs(600));
    assert_eq!(h.commands(), 1);
    h.state.set_enabled(true);
    h.run(secs(120));
    assert_eq!(h.actions_for("boiler").last().map(|a| a.2), Some(Restore));
}

#[test]
fn a_command_in_flight_or_an_old_reading_is_not_an_override() {
    let cfg = BalancerConfig::default();
    let plugs = vec![policy("boiler", 10)];
    let mut st = PersistedState::default();
    let shed_at = Timestamp(T0 + 60_000);
    st.plugs.insert(
        "boiler".into(),
        PlugState {
            shed: Some(ShedRecord {
                since: shed_at,
                reason: Overload,
                power_before_w: 2000.0,
            }),
            observed_on: Some(true),
            ..PlugState::default()
        },
    );
    let state = BalancerState::from_persisted(st);
    let snap = |pending: bool, seen: Timestamp| Snapshot {
        inverter: None,
        plugs: vec![PlugSnapshot {
            id: "boiler".into(),
            reachable: true,
            on: Some(true),
            power_w: Some(2000.0),
            last_seen: Some(seen),
            mode: PlugMode::Auto,
            command_pending: pending,
        }],
    };
    let now = shed_at.plus(secs(2));
    for (pending, seen) in [(true, now), (false, shed_at.plus(Duration::ZERO))] {
        let d = tick(&snap(pending, seen), &cfg, &plugs, &state, now);
        assert!(d.notices.is_empty(), "pending {pending}");
        assert!(d.state.persisted().plugs["boiler"].shed.is_some());
    }
    let d = tick(&snap(false, now), &cfg, &plugs, &state, now);
    assert_eq!(d.notices.len(), 1);
    assert!(d.state.persisted().plugs["boiler"].shed.is_none());
}

#[test]
fn flap_counter_resets_after_a_quiet_day() {
    let p = policy("hp", 0);
    let ps = PlugState {
        reshed_count: 3,
        ..PlugState::default()
    };
    assert_eq!(effective_min_off(&p, &ps), secs(2400));
    let ps = PlugState {
        reshed_count: 9,
        ..PlugState::default()
    };
    assert_eq!(effective_min_off(&p, &ps), FLAP_MIN_OFF_CAP);

    let mut h = House::new(vec![plug("hp", 0, 100.0)], 0.0);
    let mut st = PersistedState::default();
    st.plugs.insert(
        "hp".into(),
        PlugState {
            reshed_count: 3,
            last_shed_at: Some(Timestamp(T0 - 25 * 3600 * 1000)),
            ..PlugState::default()
        },
    );
    h.state = BalancerState::from_persisted(st);
    h.step();
    assert_eq!(h.state.persisted().plugs["hp"].reshed_count, 0);
}

#[test]
fn bad_samples_are_rejected_and_do_not_count_as_fresh() {
    let cfg = BalancerConfig::default();
    let inv = InverterSnapshot {
        sample_time: Timestamp(T0),
        rated_w: 6000.0,
        ac_output_w: f64::NAN,
        grid_port_w: 0.0,
        gen_port_w: 0.0,
        grid_connected: true,
        pv_w: None,
        load_w: None,
        bms_discharge_limit_w: None,
        overload_fault: false,
    };
    let snap = Snapshot {
        inverter: Some(inv.clone()),
        plugs: vec![],
    };
    let d = tick(&snap, &cfg, &[], &BalancerState::new(), Timestamp(T0));
    assert_eq!(
        d.rejected,
        Some(SampleError::NotFinite {
            field: "ac_output_w"
        })
    );
    assert!(d.status.load_w.is_none());
    let snap = Snapshot {
        inverter: Some(InverterSnapshot {
            ac_output_w: 100.0,
            rated_w: 0.0,
            ..inv
        }),
        plugs: vec![],
    };
    let d = tick(&snap, &cfg, &[], &BalancerState::new(), Timestamp(T0));
    assert_eq!(d.rejected, Some(SampleError::BadRating(0.0)));
}

#[test]
fn overload_fault_sheds_without_delay() {
    let mut h = House::new(vec![plug("boiler", 10, 2000.0)], 1000.0);
    h.run(secs(30));
    h.base_w = 5600.0;
    h.step();
    assert_eq!(h.commands(), 0);
    let mut snap = h.snapshot();
    if let Some(inv) = snap.inverter.as_mut() {
        inv.sample_time = h.now.plus(secs(1));
        inv.overload_fault = true;
    }
    let d = tick(&snap, &h.cfg, &h.policies(), &h.state, h.now.plus(secs(1)));
    assert_eq!(d.actions.len(), 1);
}

#[test]
fn status_and_state_serialize_for_mqtt_and_disk() {
    let mut h = House::new(vec![plug("boiler", 10, 2000.0)], 6000.0);
    h.run(secs(10));
    let s = serde_json::to_value(h.status()).expect("status");
    assert_eq!(s["state"], "shedding");
    assert_eq!(s["shed"][0]["reason"], "overload");
    let back: Status = serde_json::from_value(s).expect("round trip");
    assert_eq!(&back, h.status());
    assert!(h.last.as_ref().is_some_and(|d| d.persist));
    let a = serde_json::to_value(&h.log[0].1).expect("action");
    assert_eq!(a["state"], "OFF");
    // An empty file section still loads, with the switch on.
    let p: PersistedState = serde_json::from_str("{}").expect("defaults");
    assert!(p.enabled);
}

// ------------------------------------------------------------ properties

fn min_on_off_strategy() -> impl Strategy<Value = (u64, u64)> {
    (
        prop::sample::select(vec![0u64, 30, 60, 120]),
        prop::sample::select(vec![0u64, 60, 300, 600]),
    )
}

prop_compose! {
    fn plugs_strategy()(
        specs in prop::collection::vec(
            (0i32..3, 0.0f64..3000.0, min_on_off_strategy(), any::<bool>(), any::<bool>()),
            1..5,
        )
    ) -> Vec<FakePlug> {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (prio, w, (on, off), fs, pv))| {
                let mut p = plug(&format!("p{i}"), prio, w);
                p.policy.min_on = secs(on);
                p.policy.min_off = secs(off);
                p.policy.failsafe_shed = fs;
                p.policy.pv_deficit_off = pv;
                p
            })
            .collect()
    }
}

/// Segments of (base load, ticks, feed alive, grid, pv).
fn series_strategy() -> impl Strategy<Value = Vec<(f64, u32, bool, bool, f64)>> {
    prop::collection::vec(
        (
            0.0f64..9000.0,
            1u32..40,
            prop::bool::weighted(0.85),
            prop::bool::weighted(0.8),
            0.0f64..5000.0,
        ),
        1..20,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn min_times_hold_and_nothing_is_restored_on_stale_data(
        plugs in plugs_strategy(),
        series in series_strategy(),
    ) {
        let mut h = House::new(plugs, 0.0);
        h.pv_w = Some(0.0);
        let mut last_fresh = h.now;
        let mut restores_on_stale = Vec::new();
        for (base, ticks, feed, grid, pv) in series {
            h.base_w = base;
            h.feed = feed;
            h.grid = grid;
            h.pv_w = Some(pv);
            for _ in 0..ticks {
                h.step();
                if h.feed {
                    last_fresh = h.now;
                }
                let age = h.now.since(last_fresh);
                if let Some(d) = &h.last {
                    if d.actions.iter().any(|a| a.state == On) && age > h.cfg.stale_after {
                        restores_on_stale.push(at(h.now));
                    }
                }
            }
        }
        prop_assert!(restores_on_stale.is_empty(), "{:?}", restores_on_stale);
        for p in &h.plugs {
            let acts = h.actions_for(&p.policy.id);
            let min_off = p.policy.min_off.max(MIN_OFF_FLOOR).as_secs();
            for w in acts.windows(2) {
                let gap = w[1].0 - w[0].0;
                match (w[0].1, w[1].1) {
                    (Off, On) => prop_assert!(gap >= min_off, "{}: {:?}", p.policy.id, acts),
                    (On, Off) if w[1].2 != Emergency => {
                        prop_assert!(gap >= p.policy.min_on.as_secs(), "{}: {:?}", p.policy.id, acts)
                    }
                    (On, On) | (Off, Off) => prop_assert!(false, "repeated command {:?}", acts),
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn emergency_tier_gets_under_the_limit_when_sheddable_power_suffices(
        specs in prop::collection::vec((0i32..3, 0.0f64..3000.0, any::<bool>(), any::<bool>()), 1..7),
        extra in 1.0f64..6000.0,
        grid in any::<bool>(),
    ) {
        let cfg = BalancerConfig::default();
        let plugs: Vec<PlugPolicy> = specs
            .iter()
            .enumerate()
            .map(|(i, (prio, _, sheddable, _))| PlugPolicy {
                sheddable: *sheddable,
                ..policy(&format!("p{i}"), *prio)
            })
            .collect();
        let plug_snaps = |now: Timestamp| -> Vec<PlugSnapshot> {
            specs
                .iter()
                .enumerate()
                .map(|(i, (_, w, _, locked))| PlugSnapshot {
                    id: format!("p{i}"),
                    reachable: true,
                    on: Some(true),
                    power_w: Some(*w),
                    last_seen: Some(now),
                    mode: if *locked { PlugMode::On } else { PlugMode::Auto },
                    command_pending: false,
                })
                .collect()
        };
        let limit = if grid { cfg.on_grid_w } else { 6000.0 * cfg.off_grid_percent / 100.0 };
        let inv = |t: Timestamp, w: f64| InverterSnapshot {
            sample_time: t,
            rated_w: 6000.0,
            ac_output_w: w,
            grid_port_w: 0.0,
            gen_port_w: 0.0,
            grid_connected: grid,
            pv_w: None,
            load_w: None,
            bms_discharge_limit_w: None,
            overload_fault: false,
        };
        let mut state = BalancerState::new();
        for k in 1..=2 {
            let now = Timestamp(T0 + k * 5000);
            let snap = Snapshot { inverter: Some(inv(now, 0.0)), plugs: plug_snaps(now) };
            let d = tick(&snap, &cfg, &plugs, &state, now);
            prop_assert!(d.actions.is_empty());
            state = d.state;
        }
        let now = Timestamp(T0 + 15_000);
        let load = limit * cfg.emergency_percent / 100.0 + extra;
        let snap = Snapshot { inverter: Some(inv(now, load)), plugs: plug_snaps(now) };
        let d = tick(&snap, &cfg, &plugs, &state, now);
        let available: f64 = specs
            .iter()
            .filter(|(_, w, sheddable, locked)| *sheddable && !*locked && *w >= MIN_SHED_GAIN_W)
            .map(|s| s.1)
            .sum();
        let shed: f64 = d.actions.iter().map(|a| a.power_w).sum();
        prop_assert!(d.actions.iter().all(|a| a.state == Off && a.reason == Emergency));
        if load - available <= limit {
            prop_assert!(load - shed <= limit, "load {load} shed {shed} limit {limit}");
        }
    }
}
