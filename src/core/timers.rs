//! Plug timers, time-of-day schedules and the PV-surplus rule.
//!
//! Pure: [`tick`] maps (automation config, persisted state, local civil
//! time, wall clock, PV surplus, the plugs' relay states) to switch actions,
//! the next state and a per-plug status. [`start_timer`] and
//! [`cancel_timer`] handle the user's commands. Nothing here reads a clock,
//! a time zone or a device: the caller computes [`LocalTime`] with
//! `crate::clock`, so every test drives a fake calendar.
//!
//! What the caller does with the result:
//! - persists [`TimerDecision::state`] (JSON) whenever
//!   [`TimerDecision::persist`] is set, and after every successful
//!   [`start_timer`] / [`cancel_timer`]; the state is small.
//! - filters the actions before executing them. A plug whose `mode` is
//!   `on` or `off` is locked: automation does not switch it. A plug the
//!   overload balancer has shed is not switched on; the balancer may still
//!   shed a plug a timer, schedule or the surplus rule switched on. The
//!   balancer always wins; this module knows nothing of either, so that a
//!   lock or a shed cannot corrupt timer state (a timer keeps counting
//!   while its plug is shed, and still switches it off at expiry).
//!
//! Rules, in the order they are applied within one tick:
//! 1. **Timer** (the original app's): ON now, OFF at expiry. While a timer
//!    runs it owns the plug: schedule boundaries pass without action and
//!    the surplus rule stays out, because the timer is the user's latest
//!    and most explicit wish.
//! 2. **Schedules** fire on edges: once when local time passes a
//!    boundary, never while it merely lies inside a window, so a user who
//!    switches the plug off at 07:30 inside a 07:00–08:30 window is left
//!    alone until 08:30. When several boundaries of one plug pass in the
//!    same tick, only the latest counts; at equal times ON wins, so
//!    back-to-back windows join instead of blinking.
//! 3. **Surplus**: a latch with hysteresis. It goes high after the surplus
//!    stayed ≥ `on_w` for `hold` and low after it stayed < `off_w` for
//!    `hold`. Once per high period it decides: a plug known to be OFF is
//!    switched ON and the rule owns it; a plug already ON belongs to
//!    someone else and is left alone for the whole period. When the latch
//!    goes low it switches OFF only a plug whose latest automation action
//!    is its own ON, so it never switches off what the user, a timer or a
//!    schedule turned on.
//!
//! Time: [`Timestamp`] is wall-clock ms (persisted, so it must mean the same
//! after a restart); schedule boundaries are in local civil minutes. A
//! boundary is handled at most once: it is remembered for two days, so a
//! clock that repeats an hour (DST) or steps back cannot fire it again.
//! After a restart only boundaries within [`CATCH_UP`] are applied, the
//! latest one per plug; older ones would switch plugs on stale intent.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::PlugConfig;
use crate::config::schedule::{Schedule, TimeOfDay, Weekday};
use crate::core::balancer::Timestamp;
use crate::model::SwitchState;

/// The shortest timer: anything shorter is a mistyped value, not a wish.
pub const MIN_TIMER: Duration = Duration::from_secs(60);
/// The longest timer: a day, as `mqtt::commands` accepts.
pub const MAX_TIMER: Duration = Duration::from_secs(24 * 3600);
/// After a restart, boundaries passed at most this long ago are applied.
pub const CATCH_UP: Duration = Duration::from_secs(15 * 60);

/// Ticks closer together than this mean the bridge ran in between; a
/// longer gap is treated like a restart and gets only [`CATCH_UP`].
const RUNNING_GAP: Duration = Duration::from_secs(5 * 60);
/// How far local time may run ahead of the wall clock while running
/// (DST springs forward by an hour): boundaries skipped by such a jump
/// still fire.
const MAX_CLOCK_SHIFT_MIN: i64 = 120;
/// How long after a switch the reported relay state may still be the old
/// one (command delivery plus a plug poll).
const RELAY_SETTLE: Duration = Duration::from_secs(60);
/// Handled boundaries are kept this long either side of now; a DST hour
/// needs only one, two survive a badly stepped clock.
const HANDLED_KEEP_MIN: i64 = 2 * MINUTES_PER_DAY;
const MINUTES_PER_DAY: i64 = TimeOfDay::MINUTES_PER_DAY as i64;

// ---------------------------------------------------------------- time

/// A local civil time to the minute, as the caller's time zone shows it.
/// The day is counted from 1970-01-01 in the *local* calendar, so local
/// minutes order boundaries even across DST changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalTime {
    day: i64,
    minute: u16,
}

impl LocalTime {
    /// 1970-01-01 00:00 local.
    pub const EPOCH: Self = Self { day: 0, minute: 0 };

    /// `None` for a date or time that does not exist.
    pub fn new(year: i32, month: u32, day: u32, hour: u32, minute: u32) -> Option<Self> {
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return None;
        }
        let minute = u16::try_from(minute).ok()?;
        let hour = u16::try_from(hour).ok()?;
        if hour >= 24 || minute >= 60 {
            return None;
        }
        Some(Self {
            day: days_from_civil(i64::from(year), month, day),
            minute: hour * 60 + minute,
        })
    }

    pub fn from_day_minute(day: i64, minute_of_day: u16) -> Option<Self> {
        (minute_of_day < TimeOfDay::MINUTES_PER_DAY).then_some(Self {
            day,
            minute: minute_of_day,
        })
    }

    /// Days since 1970-01-01 in the local calendar.
    pub fn day(self) -> i64 {
        self.day
    }

    pub fn minute_of_day(self) -> u16 {
        self.minute
    }

    pub fn weekday(self) -> Weekday {
        weekday_of(self.day)
    }

    /// Minutes since 1970-01-01 00:00 local.
    pub fn local_minute(self) -> i64 {
        self.day * MINUTES_PER_DAY + i64::from(self.minute)
    }
}

fn weekday_of(day: i64) -> Weekday {
    // 1970-01-01 was a Thursday (index 3).
    Weekday::from_index(usize::try_from((day + 3).rem_euclid(7)).unwrap_or(0))
}

fn is_leap(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Howard Hinnant's `days_from_civil`: exact for the proleptic Gregorian
/// calendar, no tables.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// -------------------------------------------------------------- config

/// The PV-surplus rule of one plug (`surplus_on_w`, `surplus_off_w`,
/// `surplus_for`).
#[derive(Debug, Clone, PartialEq)]
pub struct SurplusRule {
    pub on_w: f64,
    pub off_w: f64,
    /// How long the surplus must stay past a threshold before the latch flips.
    pub hold: Duration,
}

/// What the automation needs to know about one plug. Every configured plug
/// gets one: timers work on every plug.
#[derive(Debug, Clone, PartialEq)]
pub struct PlugAutomation {
    pub id: String,
    pub schedules: Vec<Schedule>,
    pub surplus: Option<SurplusRule>,
}

impl PlugAutomation {
    pub fn from_config(p: &PlugConfig) -> Self {
        Self {
            id: p.id.clone(),
            schedules: p.schedule.clone(),
            surplus: p.surplus_on_w.map(|on_w| SurplusRule {
                on_w,
                off_w: p.surplus_off_w,
                hold: p.surplus_for,
            }),
        }
    }

    pub fn all(plugs: &[PlugConfig]) -> Vec<Self> {
        plugs.iter().map(Self::from_config).collect()
    }
}

// --------------------------------------------------------------- state

/// Which automation switched a plug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Timer,
    Schedule,
    Surplus,
}

/// The latest switch this module asked for on a plug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastAction {
    pub source: Source,
    pub on: bool,
    pub at: Timestamp,
}

/// Where the schedules were last evaluated: local minute and wall clock of
/// the same tick, so a restart can tell how long the bridge was away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evaluated {
    pub local_minute: i64,
    pub at: Timestamp,
}

/// One plug's automation state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlugTimers {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timer_off_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_action: Option<LastAction>,
    /// Boundaries (local minutes) already handled, fired or not.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub handled: BTreeSet<i64>,
    /// The surplus latch.
    #[serde(skip_serializing_if = "is_false")]
    pub surplus_high: bool,
    /// The surplus rule has made its one decision for this high period.
    #[serde(skip_serializing_if = "is_false")]
    pub surplus_decided: bool,
    /// Since when the surplus has been past the threshold that would flip
    /// the latch. Not persisted: after a restart the surplus is measured
    /// afresh rather than trusted from before the gap.
    #[serde(skip)]
    pub surplus_since: Option<Timestamp>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl PlugTimers {
    fn timer_running(&self, now: Timestamp) -> bool {
        self.timer_off_at.is_some_and(|t| t > now)
    }

    fn owned_by_surplus(&self) -> bool {
        matches!(
            self.last_action,
            Some(LastAction {
                source: Source::Surplus,
                on: true,
                ..
            })
        )
    }
}

/// Everything this module keeps, persisted by the caller as JSON. Unknown
/// and missing keys are tolerated so that older or newer files load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TimerState {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_evaluated: Option<Evaluated>,
    pub plugs: BTreeMap<String, PlugTimers>,
}

impl TimerState {
    /// Only what must survive a restart; the evaluation point moves every
    /// tick and is written along with the next real change (see
    /// [`TimerDecision::persist`]).
    fn durable(&self) -> Self {
        let mut d = self.clone();
        d.last_evaluated = None;
        for p in d.plugs.values_mut() {
            p.surplus_since = None;
        }
        d
    }
}

// -------------------------------------------------------------- output

/// Why a switch is asked for; goes into events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerReason {
    /// A timer was started: ON now.
    TimerStart,
    /// A timer ran out: OFF.
    Timer,
    /// The user cancelled a timer: OFF now.
    TimerCancel,
    Schedule,
    Surplus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimerAction {
    pub plug: String,
    pub state: SwitchState,
    pub reason: TimerReason,
}

/// The next schedule boundary of a plug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NextSwitch {
    pub state: SwitchState,
    pub weekday: Weekday,
    /// `"HH:MM"`, local time.
    pub at: TimeOfDay,
}

/// What a plug's automation is up to, for its state topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlugTimerStatus {
    pub timer_off_at: Option<Timestamp>,
    /// Rounded up, so a running timer never shows 0.
    pub timer_left_s: Option<u64>,
    pub next_schedule: Option<NextSwitch>,
    /// The surplus rule switched the plug on and will switch it off.
    pub surplus_active: bool,
}

/// The result of one [`tick`].
#[derive(Debug, Clone, PartialEq)]
pub struct TimerDecision {
    /// At most one per plug.
    pub actions: Vec<TimerAction>,
    pub state: TimerState,
    /// Something that must survive a restart changed.
    pub persist: bool,
    /// One entry per configured plug.
    pub status: BTreeMap<String, PlugTimerStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimerError {
    #[error("no plug '{0}'")]
    UnknownPlug(String),
    #[error("a timer runs between 1 min and 24 h; got {}s", .0.as_secs())]
    Duration(Duration),
    #[error("no timer is running on '{0}'")]
    NotRunning(String),
}

// ----------------------------------------------------------- commands

fn configured<'a>(plugs: &'a [PlugAutomation], plug: &str) -> Result<&'a str, TimerError> {
    plugs
        .iter()
        .find(|p| p.id == plug)
        .map(|p| p.id.as_str())
        .ok_or_else(|| TimerError::UnknownPlug(plug.to_owned()))
}

/// Switches the plug ON now and OFF after `duration`. A timer already
/// running is replaced, counting from now: the original app refused with
/// `already_scheduled`, which forced users to cancel (switching the plug
/// off) just to change the duration. `state` is only changed on success.
pub fn start_timer(
    state: &mut TimerState,
    plugs: &[PlugAutomation],
    plug: &str,
    duration: Duration,
    now: Timestamp,
) -> Result<TimerAction, TimerError> {
    let id = configured(plugs, plug)?;
    if !(MIN_TIMER..=MAX_TIMER).contains(&duration) {
        return Err(TimerError::Duration(duration));
    }
    let p = state.plugs.entry(id.to_owned()).or_default();
    p.timer_off_at = Some(now.plus(duration));
    p.last_action = Some(LastAction {
        source: Source::Timer,
        on: true,
        at: now,
    });
    Ok(TimerAction {
        plug: id.to_owned(),
        state: SwitchState::On,
        reason: TimerReason::TimerStart,
    })
}

/// Stops a running timer and switches the plug OFF now, as the original
/// app did: "cancel" on a timed plug means "I am done with it". With no
/// timer running nothing is switched and the caller gets an error to show.
pub fn cancel_timer(
    state: &mut TimerState,
    plugs: &[PlugAutomation],
    plug: &str,
    now: Timestamp,
) -> Result<TimerAction, TimerError> {
    let id = configured(plugs, plug)?;
    let p = state
        .plugs
        .get_mut(id)
        .filter(|p| p.timer_off_at.is_some())
        .ok_or_else(|| TimerError::NotRunning(id.to_owned()))?;
    p.timer_off_at = None;
    p.last_action = Some(LastAction {
        source: Source::Timer,
        on: false,
        at: now,
    });
    Ok(TimerAction {
        plug: id.to_owned(),
        state: SwitchState::Off,
        reason: TimerReason::TimerCancel,
    })
}

// ---------------------------------------------------------------- tick

/// One step; call it every few seconds. `relay_on` holds the plugs' last
/// known relay states (a missing plug is unknown); only the surplus rule
/// reads it, to leave a plug someone else switched on alone.
pub fn tick(
    plugs: &[PlugAutomation],
    state: &TimerState,
    local: LocalTime,
    now: Timestamp,
    surplus_w: Option<f64>,
    relay_on: &BTreeMap<String, bool>,
) -> TimerDecision {
    let mut next = state.clone();
    next.plugs.retain(|id, _| plugs.iter().any(|p| &p.id == id));

    let l = local.local_minute();
    let lower = match state.last_evaluated {
        // Without a record nothing can be known to have been missed, and
        // firing old boundaries could undo what the user did meanwhile.
        None => l,
        Some(ev) => {
            let gap = now.since(ev.at);
            let floor = if gap <= RUNNING_GAP {
                l - (minutes_ceil(gap) + MAX_CLOCK_SHIFT_MIN)
            } else {
                l - minutes_ceil(CATCH_UP)
            };
            ev.local_minute.max(floor)
        }
    };
    let surplus_w = surplus_w.filter(|w| w.is_finite());

    let mut actions: Vec<TimerAction> = Vec::new();
    for plug in plugs {
        let p = next.plugs.entry(plug.id.clone()).or_default();
        let mut action: Option<(bool, TimerReason)> = None;

        if p.timer_off_at.is_some_and(|t| t <= now) {
            p.timer_off_at = None;
            p.last_action = Some(LastAction {
                source: Source::Timer,
                on: false,
                at: now,
            });
            action = Some((false, TimerReason::Timer));
        }

        if let Some(on) = passed_boundary(plug, p, lower, l) {
            if !p.timer_running(now) {
                p.last_action = Some(LastAction {
                    source: Source::Schedule,
                    on,
                    at: now,
                });
                action = Some((on, TimerReason::Schedule));
            }
        }
        p.handled
            .retain(|b| (l - HANDLED_KEEP_MIN..=l + HANDLED_KEEP_MIN).contains(b));

        if let Some(rule) = &plug.surplus {
            if let Some(on) = surplus_step(rule, p, surplus_w, now, relay_on.get(&plug.id)) {
                action = Some((on, TimerReason::Surplus));
            }
        }

        if let Some((on, reason)) = action {
            actions.push(TimerAction {
                plug: plug.id.clone(),
                state: if on {
                    SwitchState::On
                } else {
                    SwitchState::Off
                },
                reason,
            });
        }
    }
    next.plugs.retain(|_, p| *p != PlugTimers::default());
    next.last_evaluated = Some(Evaluated {
        local_minute: l,
        at: now,
    });

    let persist = next.durable() != state.durable();
    let status = status(plugs, &next, local, now);
    TimerDecision {
        actions,
        state: next,
        persist,
        status,
    }
}

fn minutes_ceil(d: Duration) -> i64 {
    i64::try_from(d.as_secs().div_ceil(60)).unwrap_or(i64::MAX / 2)
}

/// Every schedule boundary of a plug on local day `day`, as
/// (local minute, on).
fn boundaries_on(plug: &PlugAutomation, day: i64) -> impl Iterator<Item = (i64, bool)> + '_ {
    let weekday = weekday_of(day);
    let base = day * MINUTES_PER_DAY;
    plug.schedules.iter().flat_map(move |s| {
        let on =
            s.on.filter(|_| s.runs_on(weekday))
                .map(|t| (base + i64::from(t.minute_of_day()), true));
        // Over midnight the off belongs to the window that began yesterday.
        let starts = if s.over_midnight() {
            weekday.prev()
        } else {
            weekday
        };
        let off = s
            .off
            .filter(|_| s.runs_on(starts))
            .map(|t| (base + i64::from(t.minute_of_day()), false));
        on.into_iter().chain(off)
    })
}

/// The boundary to apply for boundaries in `(lower, upper]` not handled
/// before: the latest, ON winning a tie. All of them become handled.
fn passed_boundary(
    plug: &PlugAutomation,
    p: &mut PlugTimers,
    lower: i64,
    upper: i64,
) -> Option<bool> {
    if lower >= upper {
        return None;
    }
    let days = lower.div_euclid(MINUTES_PER_DAY)..=upper.div_euclid(MINUTES_PER_DAY);
    let fresh: Vec<(i64, bool)> = days
        .flat_map(|day| boundaries_on(plug, day))
        .filter(|(m, _)| *m > lower && *m <= upper && !p.handled.contains(m))
        .collect();
    p.handled.extend(fresh.iter().map(|(m, _)| *m));
    // `false < true`: at equal minutes the ON is the maximum.
    fresh.into_iter().max().map(|(_, on)| on)
}

/// Advances the surplus latch; `Some(on)` when the rule switches.
fn surplus_step(
    rule: &SurplusRule,
    p: &mut PlugTimers,
    surplus_w: Option<f64>,
    now: Timestamp,
    relay_on: Option<&bool>,
) -> Option<bool> {
    let Some(w) = surplus_w else {
        // Unknown is not "still above": the hold starts again with data.
        p.surplus_since = None;
        return None;
    };
    let crossing = if p.surplus_high {
        w < rule.off_w
    } else {
        w >= rule.on_w
    };
    let mut switch = None;
    if !crossing {
        p.surplus_since = None;
    } else if now.since(*p.surplus_since.get_or_insert(now)) >= rule.hold {
        p.surplus_since = None;
        p.surplus_high = !p.surplus_high;
        p.surplus_decided = false;
        if !p.surplus_high && p.owned_by_surplus() {
            p.last_action = Some(LastAction {
                source: Source::Surplus,
                on: false,
                at: now,
            });
            switch = Some(false);
        }
    }

    if p.surplus_high && !p.surplus_decided && switch.is_none() {
        if p.timer_running(now) {
            p.surplus_decided = true;
        } else if p
            .last_action
            .is_none_or(|a| now.since(a.at) >= RELAY_SETTLE)
        {
            // Right after another rule switched, the relay reading may
            // predate the command: taking a schedule's fresh ON for "off"
            // would make the rule claim, and later switch off, that plug.
            match relay_on {
                Some(false) => {
                    p.surplus_decided = true;
                    p.last_action = Some(LastAction {
                        source: Source::Surplus,
                        on: true,
                        at: now,
                    });
                    switch = Some(true);
                }
                Some(true) => p.surplus_decided = true,
                None => {}
            }
        }
    }
    switch
}

// -------------------------------------------------------------- status

/// Every configured plug's status; [`tick`] returns it too, call this after
/// a command.
pub fn status(
    plugs: &[PlugAutomation],
    state: &TimerState,
    local: LocalTime,
    now: Timestamp,
) -> BTreeMap<String, PlugTimerStatus> {
    plugs
        .iter()
        .map(|plug| {
            let p = state.plugs.get(&plug.id);
            let timer_off_at = p.and_then(|p| p.timer_off_at).filter(|t| *t > now);
            let status = PlugTimerStatus {
                timer_off_at,
                timer_left_s: timer_off_at.map(|t| t.0.saturating_sub(now.0).div_ceil(1000)),
                next_schedule: next_switch(plug, local),
                surplus_active: p.is_some_and(PlugTimers::owned_by_surplus),
            };
            (plug.id.clone(), status)
        })
        .collect()
}

/// The first boundary after `local`, looking a week and a day ahead so
/// that a weekly entry earlier in the day is found too.
fn next_switch(plug: &PlugAutomation, local: LocalTime) -> Option<NextSwitch> {
    let l = local.local_minute();
    (local.day..=local.day + 8).find_map(|day| {
        let (minute, on) = boundaries_on(plug, day)
            .filter(|b| b.0 > l)
            .min_by_key(|&(m, on)| (m, !on))?;
        let minute_of_day = u16::try_from(minute.rem_euclid(MINUTES_PER_DAY)).ok()?;
        Some(NextSwitch {
            state: if on {
                SwitchState::On
            } else {
                SwitchState::Off
            },
            weekday: weekday_of(day),
            at: TimeOfDay::from_minute_of_day(minute_of_day)?,
        })
    })
}

#[cfg(test)]
mod tests {
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
}
