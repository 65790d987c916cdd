//! Evaluating: [`evaluate`] and the per-(rule, device) state machine
//! (pending, raise, clearing, clear, reminders), and the events it emits.

use std::time::Duration;

use super::messages::{clear_message, human, raise_message};
use super::observe::{Obs, Target, Zone, observe, targets};
use super::rules::{RuleInfo, Rules};
use super::{AlertEvent, AlertState, EventKind, Inputs, Level, Outcome, Raised, Slot};
use crate::core::balancer::Timestamp;

/// One evaluation: see the module documentation for the semantics.
pub fn evaluate(inputs: &Inputs, rules: &Rules, state: &AlertState, now: Timestamp) -> Outcome {
    let mut next = state.clone();
    let started = *next.started.get_or_insert(now);
    let may_raise = now >= started.plus(rules.startup_grace);
    let mut events = Vec::new();
    for rule in &rules.rules {
        if !(rules.enabled && rule.enabled) {
            switch_off(rule, &mut next, now, &mut events);
            continue;
        }
        for t in targets(rule.check, inputs) {
            let obs = observe(rule, &t);
            // A (rule, device) pair with nothing going on has no slot, and
            // one is made only when the step leaves something in it: this
            // runs for every rule and device every second, and most of
            // them are quiet.
            if let Some(slot) = next.slots.get_mut(rule.id).and_then(|s| s.get_mut(t.id)) {
                step(rule, &t, obs, slot, now, may_raise, &mut events);
                continue;
            }
            let mut slot = Slot::default();
            step(rule, &t, obs, &mut slot, now, may_raise, &mut events);
            if slot != Slot::default() {
                next.slots
                    .entry(rule.id.to_owned())
                    .or_default()
                    .insert(t.id.to_owned(), slot);
            }
        }
    }
    prune(&mut next, rules, now);

    let active = next.active();
    let changed = active != state.active();
    Outcome {
        events,
        active,
        state: next,
        changed,
    }
}

struct Event<'a> {
    kind: EventKind,
    value: Option<f64>,
    threshold: Option<f64>,
    message: String,
    repeat: bool,
    notify: bool,
    device: &'a str,
    device_name: &'a str,
    level: Level,
}

fn emit(events: &mut Vec<AlertEvent>, rule: &RuleInfo, now: Timestamp, e: Event) {
    events.push(AlertEvent {
        kind: e.kind,
        rule: rule.id.to_owned(),
        family: rule.family.to_owned(),
        level: e.level,
        device: e.device.to_owned(),
        device_name: e.device_name.to_owned(),
        value: e.value,
        threshold: e.threshold,
        message: e.message,
        at: now,
        repeat: e.repeat,
        notify: e.notify,
    });
}

fn step(
    rule: &RuleInfo,
    t: &Target,
    obs: Obs,
    slot: &mut Slot,
    now: Timestamp,
    may_raise: bool,
    events: &mut Vec<AlertEvent>,
) {
    let Some(active) = slot.active.as_mut() else {
        match obs.zone {
            Zone::Raise => {
                let since = *slot.pending.get_or_insert(now);
                if may_raise && now.since(since) >= rule.min_duration {
                    raise(rule, t, &obs, slot, since, now, events);
                }
            }
            Zone::Hold | Zone::Clear => slot.pending = None,
            Zone::Unknown => {}
        }
        return;
    };

    match obs.zone {
        Zone::Clear => {
            let since = *slot.clearing.get_or_insert(now);
            if now.since(since) >= rule.clear_after {
                emit(
                    events,
                    rule,
                    now,
                    Event {
                        kind: EventKind::Clear,
                        value: obs.value,
                        threshold: obs.clear,
                        message: clear_message(rule, t.name, &obs),
                        repeat: false,
                        notify: true,
                        device: t.id,
                        device_name: t.name,
                        level: active.level,
                    },
                );
                slot.active = None;
                slot.clearing = None;
                slot.pending = None;
                return;
            }
        }
        Zone::Raise | Zone::Hold => slot.clearing = None,
        Zone::Unknown => {}
    }

    // Reminders run whatever the current reading: the alert is active
    // until it clears.
    let last = slot.last_notified.unwrap_or(active.since);
    if !rule.repeat_after.is_zero() && now.since(last) >= rule.repeat_after {
        if obs.zone == Zone::Raise {
            active.value = obs.value;
            active.threshold = obs.threshold;
            active.message = raise_message(rule, t.name, &obs, now.since(active.condition_since));
        }
        active.device_name = t.name.to_owned();
        emit(
            events,
            rule,
            now,
            Event {
                kind: EventKind::Raise,
                value: active.value,
                threshold: active.threshold,
                message: format!(
                    "{} (active for {})",
                    active.message,
                    human(now.since(active.since))
                ),
                repeat: true,
                notify: true,
                device: t.id,
                device_name: t.name,
                level: active.level,
            },
        );
        slot.last_notified = Some(now);
    }
}

fn raise(
    rule: &RuleInfo,
    t: &Target,
    obs: &Obs,
    slot: &mut Slot,
    condition_since: Timestamp,
    now: Timestamp,
    events: &mut Vec<AlertEvent>,
) {
    let notify = rule.repeat_after.is_zero()
        || slot
            .last_notified
            .is_none_or(|l| now.since(l) >= rule.repeat_after);
    let message = raise_message(rule, t.name, obs, now.since(condition_since));
    emit(
        events,
        rule,
        now,
        Event {
            kind: EventKind::Raise,
            value: obs.value,
            threshold: obs.threshold,
            message: message.clone(),
            repeat: false,
            notify,
            device: t.id,
            device_name: t.name,
            level: rule.level,
        },
    );
    if notify {
        slot.last_notified = Some(now);
    }
    slot.pending = None;
    slot.clearing = None;
    slot.active = Some(Raised {
        since: now,
        condition_since,
        level: rule.level,
        device_name: t.name.to_owned(),
        value: obs.value,
        threshold: obs.threshold,
        message,
    });
}

/// A disabled rule clears what it had raised, so nothing stays active
/// that no longer has a rule to clear it.
fn switch_off(
    rule: &RuleInfo,
    state: &mut AlertState,
    now: Timestamp,
    events: &mut Vec<AlertEvent>,
) {
    let Some(slots) = state.slots.remove(rule.id) else {
        return;
    };
    for (device, slot) in &slots {
        if let Some(a) = &slot.active {
            emit(
                events,
                rule,
                now,
                Event {
                    kind: EventKind::Clear,
                    value: None,
                    threshold: None,
                    message: format!("{}: {} alert switched off", a.device_name, rule.name),
                    repeat: false,
                    notify: true,
                    device,
                    device_name: &a.device_name,
                    level: a.level,
                },
            );
        }
    }
}

/// Forgets slots that hold nothing: no alert, no running timer, no
/// notification still inside its repeat window.
fn prune(state: &mut AlertState, rules: &Rules, now: Timestamp) {
    state.slots.retain(|id, slots| {
        let repeat = rules.get(id).map_or(Duration::ZERO, |r| r.repeat_after);
        slots.retain(|_, s| {
            s.active.is_some()
                || s.pending.is_some()
                || s.clearing.is_some()
                || s.last_notified.is_some_and(|l| now.since(l) < repeat)
        });
        !slots.is_empty()
    });
}
