//! The control plane's outputs as messages of the topic contract
//! (docs/TOPICS.md): the balancer's status, the alerts list and its
//! events, `bridge/event` and the control attributes of a plug's state.
//! Pure: (typed output) → JSON; the words and key names live here.

use serde_json::{Map, Value, json};

use super::Topics;
use super::outbox::{Class, Message};
use super::payloads::{self, instant};
use crate::control::{AlertsView, BalancerView, Event, Output, PlugAttributes};
use crate::core::alerts::{self, AlertEvent};
use crate::model::Timestamp;

/// The message an output publishes; `None` for what is not a message
/// (switches, saves, plug attributes: those go into the plug's state).
pub fn message(topics: &Topics, output: &Output) -> Option<Message> {
    Some(match output {
        Output::BalancerStatus { inverter, status } => Message::retained(
            Class::State,
            topics.balancer(inverter),
            balancer_status(status).to_string(),
        ),
        Output::Event(e) => Message::transient(topics.bridge_event(), event(e)),
        Output::Alerts(view) => {
            Message::retained(Class::State, topics.alerts(), alerts(view).to_string())
        }
        Output::AlertEvent(e) => {
            Message::transient(topics.alerts_event(), alert_event(e).to_string())
        }
        Output::Switch { .. } | Output::Save(_) | Output::PlugAttributes { .. } => return None,
    })
}

pub fn switch_text(on: bool) -> &'static str {
    if on { "ON" } else { "OFF" }
}

fn time(t: Option<Timestamp>) -> Value {
    t.map_or(Value::Null, |t| instant(t).into())
}

/// `<base>/balancer/<inverter>`, also the answer to
/// `bridge/request/balancer`.
pub fn balancer_status(v: &BalancerView) -> Value {
    let shed: Vec<Value> = v
        .shed
        .iter()
        .map(|e| {
            json!({
                "plug": e.plug,
                "reason": e.reason.as_str(),
                "since": instant(e.since),
                "power_w": e.power_w,
            })
        })
        .collect();
    json!({
        "state": v.state.as_str(),
        "enabled": v.enabled,
        "shedding": !v.shed.is_empty(),
        "grid_connected": v.grid_connected,
        "limit_w": v.limit_w,
        "load_w": v.load_w,
        "headroom_w": v.headroom_w,
        "shed_count": v.shed_count,
        "shed_power_w": v.shed_power_w,
        "shed": shed,
        "on_grid_w": v.on_grid_w,
        "off_grid_percent": v.off_grid_percent,
    })
}

/// `{"<rule id>": threshold, ...}`.
pub fn thresholds(list: &[(&'static str, f64)]) -> Value {
    Value::Object(
        list.iter()
            .map(|(id, t)| ((*id).to_owned(), (*t).into()))
            .collect(),
    )
}

/// `<base>/alerts`: the active alerts with a flag per family and the
/// thresholds.
pub fn alerts(v: &AlertsView) -> Value {
    let list: Vec<Value> = v
        .active
        .iter()
        .map(|a| {
            let mut v = serde_json::to_value(a).unwrap_or(Value::Null);
            if let Some(obj) = v.as_object_mut() {
                obj.insert("since".into(), instant(a.since).into());
            }
            v
        })
        .collect();
    let families: Map<String, Value> = alerts::FAMILIES
        .iter()
        .map(|f| {
            (
                (*f).to_owned(),
                v.active.iter().any(|a| a.family == *f).into(),
            )
        })
        .collect();
    json!({
        "count": v.active.len(),
        "active": list,
        "families": families,
        "thresholds": thresholds(&v.thresholds),
    })
}

/// `<base>/alerts/event`: one raise or clear.
pub fn alert_event(e: &AlertEvent) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
    if let Some(obj) = v.as_object_mut() {
        // Home Assistant's event entity reads `event_type`.
        obj.insert(
            "event_type".into(),
            obj.get("kind").cloned().unwrap_or(Value::Null),
        );
        obj.insert("at".into(), instant(e.at).into());
    }
    v
}

/// The fields of a `bridge/event` besides `type` and `device`.
pub fn event_fields(e: &Event) -> Map<String, Value> {
    let fields: Vec<(&str, Value)> = match e {
        Event::StateError { error } => vec![("error", error.as_str().into())],
        Event::CommandUnconfirmed {
            on, by, attempts, ..
        } => vec![
            ("state", switch_text(*on).into()),
            ("by", (*by).into()),
            ("attempts", (*attempts).into()),
        ],
        Event::BalancerAction {
            inverter,
            plug,
            on,
            reason,
            load_w,
            limit_w,
            plug_w,
        } => vec![
            ("inverter", inverter.as_str().into()),
            ("action", if *on { "restore" } else { "shed" }.into()),
            ("plug", plug.as_str().into()),
            ("reason", reason.as_str().into()),
            ("load_w", (*load_w).into()),
            ("limit_w", (*limit_w).into()),
            ("plug_w", (*plug_w).into()),
        ],
        Event::BalancerOverride {
            inverter,
            plug,
            until,
        } => vec![
            ("inverter", inverter.as_str().into()),
            ("plug", plug.as_str().into()),
            ("until", instant(*until).into()),
        ],
        Event::BalancerState { state, .. } => vec![("state", state.as_str().into())],
        Event::PlugAutomation { plug, on, reason } => vec![
            ("plug", plug.as_str().into()),
            ("state", switch_text(*on).into()),
            ("reason", reason.as_str().into()),
        ],
    };
    fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// `bridge/event`: `{"type":..., "device":..., ...}`.
pub fn event(e: &Event) -> String {
    payloads::event(e.kind(), e.device(), event_fields(e))
}

/// The control keys of a plug's state object (docs/TOPICS.md).
pub fn plug_attributes(a: &PlugAttributes) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        "mode".into(),
        serde_json::to_value(a.mode).unwrap_or(Value::Null),
    );
    m.insert("shed".into(), a.shed.is_some().into());
    m.insert(
        "shed_reason".into(),
        a.shed.map_or(Value::Null, |(r, _)| r.as_str().into()),
    );
    m.insert("shed_since".into(), time(a.shed.map(|(_, t)| t)));
    m.insert("override_until".into(), time(a.override_until));
    m.insert("timer".into(), a.timer_min.into());
    m.insert("timer_off_at".into(), time(a.timer_off_at));
    m.insert(
        "next_schedule".into(),
        a.next_schedule.map_or(Value::Null, |n| {
            json!(format!(
                "{} {} {}",
                switch_text(n.state == crate::model::SwitchState::On),
                serde_json::to_value(n.weekday)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                n.at
            ))
        }),
    );
    m.insert("surplus_active".into(), a.surplus_active.into());
    m
}

#[cfg(test)]
#[path = "publish_tests.rs"]
mod tests;
