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

mod commands;
mod rules;

pub use commands::{cancel_timer, start_timer};
pub use rules::{status, tick};

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

impl TimerReason {
    /// The word in `plug_automation` events and the logs (as serialised).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TimerStart => "timer_start",
            Self::Timer => "timer",
            Self::TimerCancel => "timer_cancel",
            Self::Schedule => "schedule",
            Self::Surplus => "surplus",
        }
    }
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

#[cfg(test)]
mod tests;
