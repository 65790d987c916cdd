//! What control hands out, in the shapes the bridge publishes: the
//! balancer's status, the alerts list, a plug's control attributes, the
//! events and the words for reasons and phases.

use serde_json::{Map, Value, json};

use super::*;

impl Control {
    pub(super) fn alerts_payload(&self, active: &[alerts::ActiveAlert]) -> Value {
        let list: Vec<Value> = active
            .iter()
            .map(|a| {
                let mut v = serde_json::to_value(a).unwrap_or(Value::Null);
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("since".into(), rfc3339(a.since).into());
                }
                v
            })
            .collect();
        let families: Map<String, Value> = alerts::FAMILIES
            .iter()
            .map(|f| {
                (
                    (*f).to_owned(),
                    active.iter().any(|a| a.family == *f).into(),
                )
            })
            .collect();
        let thresholds: Map<String, Value> = self
            .rules
            .iter()
            .filter_map(|r| Some((r.id.to_owned(), r.threshold?.into())))
            .collect();
        json!({
            "count": active.len(),
            "active": list,
            "families": families,
            "thresholds": thresholds,
        })
    }

    /// The plug attributes that changed since they were last handed out.
    pub(super) fn plug_attributes(&mut self, out: &mut Vec<Output>) {
        for plug in &self.plugs {
            let mut m = Map::new();
            m.insert("mode".into(), json!(self.mode(plug)));
            let balancer = self
                .units
                .iter()
                .find_map(|u| u.state.persisted().plugs.get(plug));
            let shed = balancer.and_then(|s| s.shed);
            let over = balancer.and_then(|s| s.override_until);
            m.insert("shed".into(), shed.is_some().into());
            m.insert(
                "shed_reason".into(),
                shed.map_or(Value::Null, |r| reason_text(r.reason).into()),
            );
            m.insert(
                "shed_since".into(),
                shed.map_or(Value::Null, |r| rfc3339(r.since).into()),
            );
            m.insert(
                "override_until".into(),
                over.map_or(Value::Null, |t| rfc3339(t).into()),
            );
            let ts = self.timer_status.get(plug);
            let off_at = ts.and_then(|t| t.timer_off_at);
            // Whole minutes, rounded up, for the timer number entity; the
            // exact end is in timer_off_at.
            let left_min = ts
                .and_then(|t| t.timer_left_s)
                .map_or(0, |s| s.div_ceil(60));
            m.insert("timer".into(), left_min.into());
            m.insert(
                "timer_off_at".into(),
                off_at.map_or(Value::Null, |t| rfc3339(t).into()),
            );
            m.insert(
                "next_schedule".into(),
                ts.and_then(|t| t.next_schedule).map_or(Value::Null, |n| {
                    json!(format!(
                        "{} {} {}",
                        switch_text(n.state == SwitchState::On),
                        serde_json::to_value(n.weekday)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default(),
                        n.at
                    ))
                }),
            );
            m.insert(
                "surplus_active".into(),
                ts.is_some_and(|t| t.surplus_active).into(),
            );
            if self.attributes.get(plug) != Some(&m) {
                self.attributes.insert(plug.clone(), m.clone());
                out.push(Output::PlugAttributes {
                    plug: plug.clone(),
                    values: m,
                });
            }
        }
    }
}

pub(super) fn event<const N: usize>(
    kind: &'static str,
    device: Option<&str>,
    fields: [(&str, Value); N],
) -> Output {
    Output::Event {
        kind,
        device: device.map(str::to_owned),
        fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    }
}

pub fn reason_text(r: Reason) -> &'static str {
    match r {
        Reason::Overload => "overload",
        Reason::Emergency => "emergency",
        Reason::Failsafe => "failsafe",
        Reason::PvDeficit => "pv_deficit",
        Reason::Restore => "restore",
        Reason::PvSurplus => "pv_surplus",
    }
}

pub(super) fn phase_text(p: Phase) -> &'static str {
    match p {
        Phase::Idle => "idle",
        Phase::Shedding => "shedding",
        Phase::Restoring => "restoring",
        Phase::Stale => "stale",
        Phase::Failsafe => "failsafe",
        Phase::Disabled => "disabled",
    }
}

pub(super) fn switch_text(on: bool) -> &'static str {
    if on { "ON" } else { "OFF" }
}

pub(super) fn opt_num(v: Option<f64>) -> Value {
    v.map_or(Value::Null, |v| round(v, 1).into())
}

pub fn rfc3339(t: Timestamp) -> String {
    let nanos = i128::from(t.0) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .map(crate::mqtt::payloads::timestamp)
        .unwrap_or_default()
}

/// `<base>/balancer/<inverter>`: the status without the sample age, which
/// changes on every tick and would make every tick a publish.
pub(super) fn status_json(s: &Status, c: &BalancerConfig, enabled: bool) -> Value {
    let shed: Vec<Value> = s
        .shed
        .iter()
        .map(|e| {
            json!({
                "plug": e.plug,
                "reason": reason_text(e.reason),
                "since": rfc3339(e.since),
                "power_w": round(e.power_w, 1),
            })
        })
        .collect();
    json!({
        "state": s.state,
        "enabled": enabled,
        "shedding": !s.shed.is_empty(),
        "grid_connected": s.grid_connected,
        "limit_w": opt_num(s.limit_w),
        "load_w": opt_num(s.load_w),
        "headroom_w": opt_num(s.headroom_w),
        "shed_count": s.shed_count,
        "shed_power_w": round(s.shed_power_w, 1),
        "shed": shed,
        "on_grid_w": c.on_grid_w,
        "off_grid_percent": c.off_grid_percent,
    })
}
