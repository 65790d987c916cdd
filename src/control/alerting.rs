//! The alert rules run on the registry, and their thresholds as the user
//! edits them.

use serde_json::Value;

use super::*;

impl Control {
    /// Returns whether the alert state worth keeping changed.
    pub(super) fn step_alerts(
        &mut self,
        registry: &Registry,
        now: Timestamp,
        out: &mut Vec<Output>,
    ) -> bool {
        let failsafe: Vec<&str> = self
            .units
            .iter()
            .filter(|u| u.phase == Some(Phase::Failsafe))
            .map(|u| u.inverter.as_str())
            .collect();
        let inputs = alerts::Inputs {
            devices: registry
                .iter()
                .map(|(id, d)| alerts::DeviceInput {
                    id,
                    name: &d.name,
                    kind: d.kind,
                    online: d.online,
                    reading: d.reading.as_ref(),
                })
                .collect(),
            balancer_failsafe: failsafe,
        };
        let outcome = alerts::evaluate(&inputs, &self.rules, &self.alert_state, now);
        self.alert_state = outcome.state.clone();
        for e in &outcome.events {
            let span = tracing::info_span!("alert", device = %e.device);
            let _enter = span.enter();
            match e.kind {
                alerts::EventKind::Raise => {
                    tracing::warn!(rule = %e.rule, level = e.level.as_str(), "{}", e.message)
                }
                alerts::EventKind::Clear => {
                    tracing::info!(rule = %e.rule, "cleared: {}", e.message)
                }
            }
            let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
            if let Some(obj) = v.as_object_mut() {
                // Home Assistant's event entity reads `event_type`.
                obj.insert(
                    "event_type".into(),
                    obj.get("kind").cloned().unwrap_or(Value::Null),
                );
                obj.insert("at".into(), rfc3339(e.at).into());
            }
            out.push(Output::AlertEvent(v));
        }
        let payload = self.alerts_payload(&outcome.active);
        if self.alerts_published.as_ref() != Some(&payload) {
            self.alerts_published = Some(payload.clone());
            out.push(Output::Alerts(payload));
        }
        outcome.changed || !outcome.events.is_empty()
    }

    /// Threshold edits: `{"<rule id>": value, ...}`, validated as a whole
    /// before any is applied; kept across restarts.
    pub fn set_alert_thresholds(
        &mut self,
        registry: &Registry,
        payload: &Value,
        now: Timestamp,
        local: LocalTime,
    ) -> Result<Vec<Output>, ControlError> {
        let Some(obj) = payload.as_object().filter(|o| !o.is_empty()) else {
            return err(
                "expected a JSON object of rule ids and thresholds, such as {\"soc_low\": 25}",
            );
        };
        let mut rules = self.rules.clone();
        let mut edits = Vec::new();
        for (rule, v) in obj {
            let value = v
                .as_f64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                .ok_or_else(|| ControlError(format!("{rule}: expected a number, got {v}")))?;
            rules
                .set_threshold(rule, value)
                .map_err(|e| ControlError(format!("{rule}: {e}")))?;
            edits.push((rule.clone(), value));
        }
        self.rules = rules;
        for (rule, value) in edits {
            tracing::info!(rule, value, "alert threshold changed");
            self.saved.alert_thresholds.insert(rule, value);
        }
        let mut out = self.step(registry, now, local);
        self.save(&mut out);
        Ok(out)
    }

    /// Every alert threshold in force, by rule id.
    pub fn alert_thresholds(&self) -> Value {
        Value::Object(
            self.rules
                .iter()
                .filter_map(|r| Some((r.id.to_owned(), r.threshold?.into())))
                .collect(),
        )
    }
}
