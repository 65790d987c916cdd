use super::*;

const TICK: Duration = Duration::from_secs(5);
const MIN: u64 = 60_000;

fn t(hhmm: &str) -> TimeOfDay {
    TimeOfDay::parse(hhmm).expect("test time")
}

fn sched(on: Option<&str>, off: Option<&str>, days: &[Weekday]) -> Schedule {
    Schedule {
        on: on.map(t),
        off: off.map(t),
        days: if days.is_empty() {
            Weekday::ALL.to_vec()
        } else {
            days.to_vec()
        },
    }
}

fn plug(id: &str) -> PlugAutomation {
    PlugAutomation {
        id: id.into(),
        schedules: Vec::new(),
        surplus: None,
    }
}

fn scheduled(id: &str, schedules: Vec<Schedule>) -> PlugAutomation {
    PlugAutomation {
        schedules,
        ..plug(id)
    }
}

fn surplus_plug(id: &str) -> PlugAutomation {
    PlugAutomation {
        surplus: Some(SurplusRule {
            on_w: 1500.0,
            off_w: 0.0,
            hold: Duration::from_secs(120),
        }),
        ..plug(id)
    }
}

fn on(plug: &str, reason: TimerReason) -> TimerAction {
    TimerAction {
        plug: plug.into(),
        state: SwitchState::On,
        reason,
    }
}

fn off(plug: &str, reason: TimerReason) -> TimerAction {
    TimerAction {
        plug: plug.into(),
        state: SwitchState::Off,
        reason,
    }
}

/// A bridge with fake clocks: local time is the wall clock plus
/// `shift_min` (0 = UTC), and executed actions reach the relays at once.
struct Rig {
    plugs: Vec<PlugAutomation>,
    state: TimerState,
    now: Timestamp,
    shift_min: i64,
    surplus: Option<f64>,
    relays: BTreeMap<String, bool>,
    /// `false`: commands are not delivered, the relays keep reading old.
    deliver: bool,
}

impl Rig {
    /// Starts at `hh:mm` on Monday 2026-06-01 (UTC), all plugs off.
    fn new(plugs: Vec<PlugAutomation>, hhmm: &str) -> Self {
        let start = LocalTime::new(2026, 6, 1, 0, 0).expect("date");
        assert_eq!(start.weekday(), Weekday::Mon);
        let ms = (start.local_minute() as u64 + u64::from(t(hhmm).minute_of_day())) * MIN;
        let relays = plugs.iter().map(|p| (p.id.clone(), false)).collect();
        Self {
            plugs,
            state: TimerState::default(),
            now: Timestamp(ms),
            shift_min: 0,
            surplus: None,
            relays,
            deliver: true,
        }
    }

    fn local(&self) -> LocalTime {
        let m = (self.now.0 / MIN) as i64 + self.shift_min;
        LocalTime::from_day_minute(m.div_euclid(1440), m.rem_euclid(1440) as u16)
            .expect("minute of day")
    }

    fn hhmm(&self) -> String {
        hhmm(self.local())
    }

    fn step(&mut self) -> TimerDecision {
        let d = tick(
            &self.plugs,
            &self.state,
            self.local(),
            self.now,
            self.surplus,
            &self.relays,
        );
        for a in d.actions.iter().filter(|_| self.deliver) {
            self.relays
                .insert(a.plug.clone(), a.state == SwitchState::On);
        }
        self.state = d.state.clone();
        d
    }

    /// Ticks every 5 s for `d`, the last tick at now + d; every action
    /// with the local time it happened at.
    fn run(&mut self, d: Duration) -> Vec<(String, TimerAction)> {
        self.run_every(d, TICK)
    }

    fn run_every(&mut self, d: Duration, every: Duration) -> Vec<(String, TimerAction)> {
        self.run_local(d, every)
            .into_iter()
            .map(|(l, a)| (hhmm(l), a))
            .collect()
    }

    /// Like [`Rig::run_every`], with the weekday of each action.
    fn run_days(&mut self, d: Duration) -> Vec<(Weekday, String, TimerAction)> {
        self.run_local(d, Duration::from_secs(60))
            .into_iter()
            .map(|(l, a)| (l.weekday(), hhmm(l), a))
            .collect()
    }

    fn run_local(&mut self, d: Duration, every: Duration) -> Vec<(LocalTime, TimerAction)> {
        let end = self.now.plus(d);
        let mut out = Vec::new();
        while self.now < end {
            self.now = self.now.plus(every).min(end);
            let actions = self.step().actions;
            out.extend(actions.into_iter().map(|a| (self.local(), a)));
        }
        out
    }

    /// Persists through JSON and comes back `down` later, as after a crash.
    fn restart_after(&mut self, down: Duration) {
        let json = serde_json::to_string(&self.state).expect("serialize");
        let back: TimerState = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back.durable(), self.state.durable(), "round trip");
        self.state = back;
        self.now = self.now.plus(down);
    }

    fn start(&mut self, plug: &str, minutes: u64) -> TimerAction {
        let a = start_timer(
            &mut self.state,
            &self.plugs,
            plug,
            Duration::from_secs(minutes * 60),
            self.now,
        )
        .expect("timer starts");
        self.relays.insert(a.plug.clone(), true);
        a
    }
}

fn hhmm(l: LocalTime) -> String {
    format!(
        "{:02}:{:02}",
        l.minute_of_day() / 60,
        l.minute_of_day() % 60
    )
}

fn mins(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

// ------------------------------------------------------------- timer

#[test]
fn timer_switches_on_now_and_off_at_expiry() {
    let mut rig = Rig::new(vec![plug("boiler")], "10:00");
    assert_eq!(
        rig.start("boiler", 30),
        on("boiler", TimerReason::TimerStart)
    );
    let s = rig.step();
    assert_eq!(s.status["boiler"].timer_left_s, Some(1800));
    assert_eq!(
        s.status["boiler"].timer_off_at,
        Some(rig.now.plus(mins(30)))
    );

    assert_eq!(rig.run(mins(30) - TICK), vec![]);
    let end = rig.run(TICK);
    assert_eq!(
        end,
        vec![("10:30".into(), off("boiler", TimerReason::Timer))]
    );
    let s = rig.step();
    assert_eq!(s.status["boiler"].timer_left_s, None);
    assert_eq!(rig.run(mins(60)), vec![], "expiry fires once");
}

#[test]
fn timer_left_rounds_up() {
    let mut rig = Rig::new(vec![plug("boiler")], "10:00");
    rig.start("boiler", 15);
    rig.now = rig.now.plus(Duration::from_millis(15 * 60_000 - 1));
    assert_eq!(rig.step().status["boiler"].timer_left_s, Some(1));
}

#[test]
fn timer_survives_a_restart() {
    let mut rig = Rig::new(vec![plug("boiler")], "10:00");
    rig.start("boiler", 60);
    rig.run(mins(20));
    rig.restart_after(mins(5));
    let s = rig.step();
    assert_eq!(s.actions, vec![]);
    assert_eq!(s.status["boiler"].timer_left_s, Some(35 * 60));
    let acts = rig.run(mins(60));
    assert_eq!(
        acts,
        vec![("11:00".into(), off("boiler", TimerReason::Timer))]
    );
}

#[test]
fn timer_expired_while_down_fires_off_once_at_start() {
    let mut rig = Rig::new(vec![plug("boiler")], "10:00");
    rig.start("boiler", 15);
    rig.step();
    rig.restart_after(mins(60));
    let first = rig.step();
    assert_eq!(first.actions, vec![off("boiler", TimerReason::Timer)]);
    assert!(first.persist);
    assert_eq!(rig.run(mins(10)), vec![]);
}

#[test]
fn cancel_switches_off_now_and_stops_the_timer() {
    let mut rig = Rig::new(vec![plug("boiler")], "10:00");
    rig.start("boiler", 30);
    rig.run(mins(5));
    let a = cancel_timer(&mut rig.state, &rig.plugs, "boiler", rig.now);
    assert_eq!(a, Ok(off("boiler", TimerReason::TimerCancel)));
    assert_eq!(rig.step().status["boiler"].timer_off_at, None);
    assert_eq!(rig.run(mins(60)), vec![], "no expiry after a cancel");
    assert_eq!(
        cancel_timer(&mut rig.state, &rig.plugs, "boiler", rig.now),
        Err(TimerError::NotRunning("boiler".into()))
    );
}

#[test]
fn timer_duration_is_validated() {
    let plugs = vec![plug("boiler")];
    let mut state = TimerState::default();
    let now = Timestamp(1_000_000);
    for bad in [0, 59, 24 * 3600 + 1, 7 * 24 * 3600] {
        let d = Duration::from_secs(bad);
        assert_eq!(
            start_timer(&mut state, &plugs, "boiler", d, now),
            Err(TimerError::Duration(d))
        );
    }
    assert_eq!(
        state,
        TimerState::default(),
        "a rejected start changes nothing"
    );
    assert_eq!(
        start_timer(&mut state, &plugs, "kettle", mins(15), now),
        Err(TimerError::UnknownPlug("kettle".into()))
    );
    for good in [60, 15 * 60, 8 * 3600, 24 * 3600] {
        let d = Duration::from_secs(good);
        assert!(
            start_timer(&mut state, &plugs, "boiler", d, now).is_ok(),
            "{good}s"
        );
        assert_eq!(state.plugs["boiler"].timer_off_at, Some(now.plus(d)));
    }
    let msg = TimerError::Duration(Duration::from_secs(30)).to_string();
    assert_eq!(msg, "a timer runs between 1 min and 24 h; got 30s");
}

#[test]
fn second_start_replaces_the_running_timer() {
    let mut rig = Rig::new(vec![plug("boiler")], "10:00");
    rig.start("boiler", 60);
    rig.run(mins(10));
    assert_eq!(
        rig.start("boiler", 15),
        on("boiler", TimerReason::TimerStart)
    );
    let acts = rig.run(mins(120));
    assert_eq!(
        acts,
        vec![("10:25".into(), off("boiler", TimerReason::Timer))]
    );
}

// ---------------------------------------------------------- schedule

#[test]
fn schedule_fires_once_at_the_boundary() {
    let mut rig = Rig::new(
        vec![scheduled(
            "boiler",
            vec![sched(Some("07:00"), Some("08:30"), &[])],
        )],
        "06:58",
    );
    let d = rig.step();
    assert!(d.actions.is_empty());
    assert!(!d.persist, "nothing durable changed");
    let acts = rig.run(mins(120));
    assert_eq!(
        acts,
        vec![
            ("07:00".into(), on("boiler", TimerReason::Schedule)),
            ("08:30".into(), off("boiler", TimerReason::Schedule)),
        ]
    );
}

#[test]
fn user_override_is_respected_until_the_next_boundary() {
    let mut rig = Rig::new(
        vec![scheduled("boiler", vec![sched(Some("07:00"), None, &[])])],
        "06:59",
    );
    assert_eq!(rig.run(mins(2)).len(), 1);
    // The user switches it off at 07:30.
    rig.run(mins(29));
    rig.relays.insert("boiler".into(), false);
    let acts = rig.run(mins(24 * 60));
    assert_eq!(
        acts,
        vec![("07:00".into(), on("boiler", TimerReason::Schedule))]
    );
    assert!(rig.relays["boiler"], "on again the next morning");
}

#[test]
fn weekdays_are_honoured() {
    let mut rig = Rig::new(
        vec![scheduled(
            "boiler",
            vec![sched(Some("07:00"), None, &[Weekday::Mon, Weekday::Wed])],
        )],
        "06:00",
    );
    let days: Vec<_> = rig
        .run_days(mins(14 * 24 * 60))
        .into_iter()
        .map(|(day, at, a)| (day, at, a.state))
        .collect();
    let on_at = |d| (d, "07:00".to_string(), SwitchState::On);
    use Weekday::*;
    assert_eq!(days, vec![on_at(Mon), on_at(Wed), on_at(Mon), on_at(Wed)]);
}

#[test]
fn over_midnight_schedule_ends_the_next_day() {
    // Starts Friday evening; the window starts on Fridays only.
    let mut rig = Rig::new(
        vec![scheduled(
            "heater",
            vec![sched(Some("22:00"), Some("06:00"), &[Weekday::Fri])],
        )],
        "00:00",
    );
    rig.run_every(mins(4 * 24 * 60 + 20 * 60), Duration::from_secs(60));
    assert_eq!(
        (rig.local().weekday(), rig.hhmm()),
        (Weekday::Fri, "20:00".into())
    );
    assert_eq!(
        rig.run_days(mins(3 * 24 * 60)),
        vec![
            (
                Weekday::Fri,
                "22:00".into(),
                on("heater", TimerReason::Schedule)
            ),
            (
                Weekday::Sat,
                "06:00".into(),
                off("heater", TimerReason::Schedule)
            ),
        ]
    );
}

#[test]
fn back_to_back_windows_join() {
    let mut rig = Rig::new(
        vec![scheduled(
            "boiler",
            vec![
                sched(Some("07:00"), Some("08:00"), &[]),
                sched(Some("08:00"), Some("09:00"), &[]),
            ],
        )],
        "06:59",
    );
    let acts: Vec<_> = rig
        .run(mins(150))
        .into_iter()
        .map(|(at, a)| (at, a.state))
        .collect();
    assert_eq!(
        acts,
        vec![
            ("07:00".into(), SwitchState::On),
            ("08:00".into(), SwitchState::On),
            ("09:00".into(), SwitchState::Off),
        ]
    );
}

#[test]
fn catch_up_after_restart_applies_only_the_latest_boundary_within_15_min() {
    let plugs = vec![
        scheduled("recent", vec![sched(Some("07:00"), None, &[])]),
        scheduled("old", vec![sched(Some("06:50"), None, &[])]),
        scheduled("both", vec![sched(Some("07:00"), Some("07:05"), &[])]),
    ];
    let mut rig = Rig::new(plugs, "05:59");
    // A boundary at 06:00 makes the state worth writing.
    rig.plugs[0].schedules.push(sched(None, Some("06:00"), &[]));
    let acts = rig.run(mins(1));
    assert_eq!(
        acts,
        vec![("06:00".into(), off("recent", TimerReason::Schedule))]
    );
    // Down from 06:00 to 07:10.
    rig.restart_after(mins(70));
    let first = rig.step();
    assert_eq!(
        first.actions,
        vec![
            on("recent", TimerReason::Schedule),
            off("both", TimerReason::Schedule),
        ]
    );
    assert!(first.persist);
    rig.restart_after(Duration::from_secs(30));
    assert_eq!(
        rig.run(mins(10)),
        vec![],
        "each boundary once, even across a second restart"
    );
}

#[test]
fn first_start_without_state_fires_nothing_old() {
    let mut rig = Rig::new(
        vec![scheduled("boiler", vec![sched(Some("07:00"), None, &[])])],
        "07:05",
    );
    assert_eq!(rig.run(mins(60)), vec![]);
}

#[test]
fn restart_does_not_refire_a_handled_boundary() {
    let mut rig = Rig::new(
        vec![scheduled("boiler", vec![sched(Some("07:00"), None, &[])])],
        "06:59",
    );
    assert_eq!(rig.run(mins(1)).len(), 1);
    rig.relays.insert("boiler".into(), false);
    rig.restart_after(mins(3));
    assert_eq!(rig.run(mins(30)), vec![]);
}

#[test]
fn no_double_fire_when_the_clock_repeats_an_hour() {
    let mut rig = Rig::new(
        vec![scheduled("boiler", vec![sched(Some("02:30"), None, &[])])],
        "01:00",
    );
    rig.shift_min = 60;
    let first = rig.run(mins(60));
    assert_eq!(
        first,
        vec![("02:30".into(), on("boiler", TimerReason::Schedule))]
    );
    assert_eq!(rig.hhmm(), "03:00");
    // Summer time ends: 03:00 becomes 02:00 again.
    rig.shift_min = 0;
    assert_eq!(rig.hhmm(), "02:00");
    assert_eq!(rig.run(mins(120)), vec![], "02:30 comes round again");
    // A clock stepped back by hours (NTP after a bad boot) neither.
    rig.shift_min = -4 * 60;
    assert_eq!(rig.run(mins(300)), vec![]);
}

#[test]
fn skipped_hour_still_fires_once() {
    let mut rig = Rig::new(
        vec![scheduled("boiler", vec![sched(Some("02:30"), None, &[])])],
        "01:00",
    );
    rig.run(mins(60));
    assert_eq!(rig.hhmm(), "02:00");
    // Summer time starts: 02:00 is 03:00.
    rig.shift_min = 60;
    let acts = rig.run(mins(60));
    assert_eq!(
        acts,
        vec![("03:00".into(), on("boiler", TimerReason::Schedule))]
    );
}

#[test]
fn schedule_waits_while_a_timer_runs() {
    let mut rig = Rig::new(
        vec![scheduled("boiler", vec![sched(None, Some("08:00"), &[])])],
        "07:30",
    );
    rig.step();
    rig.start("boiler", 60);
    let acts = rig.run(mins(90));
    assert_eq!(
        acts,
        vec![("08:30".into(), off("boiler", TimerReason::Timer))]
    );
}

#[test]
fn status_shows_the_next_boundary() {
    let mut rig = Rig::new(
        vec![scheduled(
            "boiler",
            vec![sched(Some("07:00"), Some("09:00"), &[Weekday::Wed])],
        )],
        "08:00",
    );
    let s = rig.step().status;
    let next = s["boiler"].next_schedule.expect("a next boundary");
    assert_eq!(
        (next.state, next.weekday, next.at.to_string()),
        (SwitchState::On, Weekday::Wed, "07:00".into())
    );
    assert_eq!(
        serde_json::to_value(next).expect("json"),
        serde_json::json!({"state": "ON", "weekday": "wed", "at": "07:00"})
    );
    assert!(!rig.step().status["boiler"].surplus_active);
    // Wednesday 08:00: inside the window, the off at 09:00 is next.
    rig.run_every(mins(48 * 60), Duration::from_secs(60));
    let next = rig.step().status["boiler"].next_schedule.expect("next");
    assert_eq!((next.state, next.weekday), (SwitchState::Off, Weekday::Wed));
}

// ----------------------------------------------------------- surplus

#[test]
fn surplus_switches_on_after_the_hold_and_off_below_the_off_threshold() {
    let mut rig = Rig::new(vec![surplus_plug("boiler")], "11:00");
    rig.surplus = Some(2000.0);
    rig.step();
    assert_eq!(rig.run(Duration::from_secs(115)), vec![]);
    let acts = rig.run(TICK);
    assert_eq!(
        acts,
        vec![("11:02".into(), on("boiler", TimerReason::Surplus))]
    );
    assert!(rig.step().status["boiler"].surplus_active);
    // The plug's own draw now counts in the load.
    rig.surplus = Some(300.0);
    assert_eq!(rig.run(mins(30)), vec![]);
    rig.surplus = Some(-100.0);
    rig.step();
    assert_eq!(rig.run(Duration::from_secs(115)), vec![]);
    let acts = rig.run(TICK);
    assert_eq!(
        acts,
        vec![("11:34".into(), off("boiler", TimerReason::Surplus))]
    );
    assert!(!rig.step().status["boiler"].surplus_active);
}

#[test]
fn surplus_dip_restarts_the_hold() {
    let mut rig = Rig::new(vec![surplus_plug("boiler")], "11:00");
    rig.surplus = Some(2000.0);
    rig.run(mins(1));
    rig.surplus = Some(1400.0);
    rig.run(TICK);
    rig.surplus = Some(2000.0);
    rig.step();
    assert_eq!(rig.run(Duration::from_secs(115)), vec![]);
    assert_eq!(rig.run(TICK).len(), 1);
}

#[test]
fn unknown_surplus_does_nothing() {
    let mut rig = Rig::new(vec![surplus_plug("boiler")], "11:00");
    rig.surplus = None;
    assert_eq!(rig.run(mins(60)), vec![]);
    rig.surplus = Some(2000.0);
    rig.run(mins(1));
    rig.surplus = Some(f64::NAN);
    rig.run(TICK);
    rig.surplus = Some(2000.0);
    rig.step();
    assert_eq!(
        rig.run(Duration::from_secs(115)),
        vec![],
        "unknown broke the hold"
    );
    assert_eq!(rig.run(TICK).len(), 1);
    // Owned and on: unknown surplus does not switch it off either.
    rig.surplus = None;
    assert_eq!(rig.run(mins(60)), vec![]);
    assert!(rig.relays["boiler"]);
}

#[test]
fn surplus_leaves_a_plug_someone_else_switched_on_alone() {
    let mut rig = Rig::new(vec![surplus_plug("boiler")], "11:00");
    rig.relays.insert("boiler".into(), true);
    rig.surplus = Some(2000.0);
    assert_eq!(rig.run(mins(10)), vec![]);
    rig.surplus = Some(-500.0);
    assert_eq!(rig.run(mins(10)), vec![]);
    assert!(rig.relays["boiler"], "the user's plug stays on");
}

#[test]
fn surplus_respects_a_user_off_until_the_next_sunny_period() {
    let mut rig = Rig::new(vec![surplus_plug("boiler")], "11:00");
    rig.surplus = Some(2000.0);
    assert_eq!(rig.run(mins(3)).len(), 1);
    rig.relays.insert("boiler".into(), false);
    assert_eq!(
        rig.run(mins(60)),
        vec![],
        "not switched on again while sunny"
    );
    rig.surplus = Some(-100.0);
    let acts = rig.run(mins(5));
    assert_eq!(acts.len(), 1, "its own ON is still the last word: {acts:?}");
    assert_eq!(acts[0].1.state, SwitchState::Off);
    rig.surplus = Some(2000.0);
    let acts = rig.run(mins(3));
    assert_eq!(acts.len(), 1);
    assert_eq!(acts[0].1, on("boiler", TimerReason::Surplus));
}

#[test]
fn surplus_does_not_switch_off_what_a_schedule_switched_on() {
    let mut rig = Rig::new(
        vec![PlugAutomation {
            schedules: vec![sched(Some("12:00"), None, &[])],
            ..surplus_plug("boiler")
        }],
        "11:00",
    );
    rig.surplus = Some(2000.0);
    assert_eq!(rig.run(mins(3)).len(), 1);
    let acts = rig.run(mins(60));
    assert_eq!(
        acts,
        vec![("12:00".into(), on("boiler", TimerReason::Schedule))]
    );
    rig.surplus = Some(-100.0);
    assert_eq!(rig.run(mins(10)), vec![]);
    assert!(rig.relays["boiler"]);
}

#[test]
fn surplus_does_not_claim_a_plug_another_rule_just_switched_on() {
    let mut rig = Rig::new(
        vec![PlugAutomation {
            schedules: vec![sched(Some("12:00"), None, &[])],
            ..surplus_plug("boiler")
        }],
        "11:58",
    );
    rig.surplus = Some(2000.0);
    rig.step();
    // The latch flips in the very tick the schedule fires, and the
    // relay keeps reading "off" for almost a minute.
    rig.deliver = false;
    let acts = rig.run(mins(2));
    assert_eq!(
        acts,
        vec![("12:00".into(), on("boiler", TimerReason::Schedule))]
    );
    assert_eq!(rig.run(Duration::from_secs(55)), vec![]);
    rig.relays.insert("boiler".into(), true);
    assert_eq!(rig.run(mins(5)), vec![]);
    rig.surplus = Some(-100.0);
    assert_eq!(
        rig.run(mins(5)),
        vec![],
        "not the surplus rule's plug to switch off"
    );
    assert!(!rig.step().status["boiler"].surplus_active);
}

#[test]
fn surplus_latch_survives_a_restart() {
    let mut rig = Rig::new(vec![surplus_plug("boiler")], "11:00");
    rig.surplus = Some(2000.0);
    rig.run(mins(3));
    rig.restart_after(mins(1));
    rig.surplus = Some(-100.0);
    rig.step();
    assert_eq!(
        rig.run(Duration::from_secs(115)),
        vec![],
        "the hold is measured afresh"
    );
    assert_eq!(
        rig.run(TICK),
        vec![(rig.hhmm(), off("boiler", TimerReason::Surplus))]
    );
}

// ------------------------------------------------------------- state

#[test]
fn state_drops_unconfigured_plugs() {
    let mut state = TimerState::default();
    let now = Timestamp(1_000_000);
    let both = vec![plug("a"), plug("b")];
    start_timer(&mut state, &both, "a", mins(30), now).expect("a");
    start_timer(&mut state, &both, "b", mins(30), now).expect("b");
    let local = LocalTime::new(2026, 6, 1, 10, 0).expect("date");
    let d = tick(&both[..1], &state, local, now, None, &BTreeMap::new());
    assert_eq!(d.state.plugs.keys().collect::<Vec<_>>(), vec!["a"]);
    assert!(d.persist);
    assert_eq!(d.status.keys().collect::<Vec<_>>(), vec!["a"]);
}

#[test]
fn quiet_ticks_do_not_ask_for_a_write() {
    let mut rig = Rig::new(
        vec![scheduled("boiler", vec![sched(Some("07:00"), None, &[])])],
        "05:00",
    );
    rig.start("boiler", 600);
    let mut writes = 0;
    for _ in 0..100 {
        rig.now = rig.now.plus(TICK);
        writes += usize::from(rig.step().persist);
    }
    assert_eq!(writes, 0);
}

#[test]
fn local_time_knows_the_calendar() {
    let l = LocalTime::new(2024, 2, 29, 23, 59).expect("leap day");
    assert_eq!(l.weekday(), Weekday::Thu);
    assert_eq!(LocalTime::new(1970, 1, 1, 0, 0).map(|l| l.day()), Some(0));
    assert_eq!(
        LocalTime::new(2000, 3, 1, 0, 0).map(|l| l.day()),
        Some(11_017)
    );
    assert_eq!(LocalTime::new(2023, 2, 29, 0, 0), None);
    assert_eq!(LocalTime::new(2026, 6, 1, 24, 0), None);
    assert_eq!(LocalTime::new(2026, 13, 1, 0, 0), None);
    assert_eq!(
        LocalTime::new(1969, 12, 31, 0, 0).map(|l| l.weekday()),
        Some(Weekday::Wed)
    );
}

#[test]
fn plug_automation_reads_the_config() {
    let toml = r#"
            id = "boiler"
            host = "10.0.0.2"
            schedule = [{ on = "07:00", off = "08:30", days = ["mon", "tue"] }]
            surplus_on_w = 2200.0
        "#;
    let cfg: PlugConfig = toml::from_str(toml).expect("plug config");
    let a = PlugAutomation::from_config(&cfg);
    assert_eq!(
        a.schedules,
        vec![sched(
            Some("07:00"),
            Some("08:30"),
            &[Weekday::Mon, Weekday::Tue]
        )]
    );
    assert_eq!(
        a.surplus,
        Some(SurplusRule {
            on_w: 2200.0,
            off_w: 0.0,
            hold: Duration::from_secs(120)
        })
    );
}
