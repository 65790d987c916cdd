//! The alert rules run on the registry, and their thresholds as the user
//! edits them.

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
        let alerts::Outcome {
            events,
            active,
            state,
            changed,
        } = outcome;
        self.alert_state = state;
        let any_event = !events.is_empty();
        for e in events {
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
            out.push(Output::AlertEvent(e));
        }
        if !self.alerts_unchanged(&active) {
            let view = self.alerts_view(active);
            self.alerts_published = Some(view.clone());
            out.push(Output::Alerts(view));
        }
        changed || any_event
    }

    /// Threshold edits, validated as a whole before any is applied; kept
    /// across restarts.
    pub fn set_alert_thresholds(
        &mut self,
        registry: &Registry,
        edits: &ThresholdEdits,
        now: Timestamp,
        local: LocalTime,
    ) -> Result<Vec<Output>, ControlError> {
        let mut rules = self.rules.clone();
        for (rule, value) in edits {
            rules
                .set_threshold(rule, *value)
                .map_err(|e| ControlError(format!("{rule}: {e}")))?;
        }
        self.rules = rules;
        for (rule, value) in edits {
            tracing::info!(rule, value, "alert threshold changed");
            self.saved.alert_thresholds.insert(rule.clone(), *value);
        }
        let mut out = self.step(registry, now, local);
        self.save(&mut out);
        Ok(out)
    }

    /// Every alert threshold in force, by rule id.
    pub fn alert_thresholds(&self) -> Vec<(&'static str, f64)> {
        self.thresholds()
    }
}
