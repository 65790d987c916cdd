//! The tick: timers, schedule boundaries and the surplus latch applied in
//! order, and every plug's status.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{
    CATCH_UP, Evaluated, HANDLED_KEEP_MIN, LastAction, LocalTime, MAX_CLOCK_SHIFT_MIN,
    MINUTES_PER_DAY, NextSwitch, PlugAutomation, PlugTimerStatus, PlugTimers, RELAY_SETTLE,
    RUNNING_GAP, Source, SurplusRule, TimerAction, TimerDecision, TimerReason, TimerState,
    weekday_of,
};
use crate::config::schedule::TimeOfDay;
use crate::core::balancer::Timestamp;
use crate::model::SwitchState;

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
