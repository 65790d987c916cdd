//! The user's commands: start and cancel a timer.

use std::time::Duration;

use super::{
    LastAction, MAX_TIMER, MIN_TIMER, PlugAutomation, Source, TimerAction, TimerError, TimerReason,
    TimerState,
};
use crate::core::balancer::Timestamp;
use crate::model::SwitchState;

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
