//! The bridge's own control: one overload balancer per inverter, the plug
//! modes, and the executor that delivers their switch commands. It reads
//! the devices' latest state from the registry, runs the pure cores of
//! `crate::core` with the time passed in, keeps their state on disk, and
//! returns [`Output`]s; the bridge turns those into driver commands and
//! MQTT messages. Nothing here knows a topic.

pub mod executor;
pub mod inputs;
pub mod persist;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::config::{BalancerConfig, Config};
use crate::core::alerts::{self, AlertState, Rules};
use crate::core::arbiter::{self, Decision, Held, Origin, PlugFacts, Wish};
use crate::core::balancer::{self, BalancerState, Phase, PlugPolicy, Reason, Status, Timestamp};
use crate::core::registry::Registry;
use crate::core::timers::{
    self, LocalTime, PlugAutomation, PlugTimerStatus, TimerAction, TimerReason,
};
use crate::model::{DeviceKind, PlugMode, SwitchState, TimerCommand, round};
use crate::storage::Store;
use executor::{Delivery, Executor};
pub use persist::{LimitOverrides, Saved};

/// What the bridge must do after a control step.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send this relay state to the plug's driver.
    Switch { plug: String, on: bool },
    /// The retained state of an inverter's balancer.
    BalancerStatus { inverter: String, status: Value },
    /// A message for `bridge/event`.
    Event {
        kind: &'static str,
        device: Option<String>,
        fields: Map<String, Value>,
    },
    /// The retained list of active alerts with the family flags and the
    /// thresholds (`<base>/alerts`).
    Alerts(Value),
    /// One raise or clear (`<base>/alerts/event`).
    AlertEvent(Value),
    /// Control facts about a plug (mode, shed, timer) to merge into its
    /// state object.
    PlugAttributes {
        plug: String,
        values: Map<String, Value>,
    },
    /// Write this to `control.json` ([`persist::write`]): off the bridge's
    /// task (a write fsyncs), but before any `Switch` of the same batch is
    /// carried out (persist before acting). The writer reports a failure (one
    /// `state_error` event) and sets [`Control::save_failed`], and the
    /// next step hands the state out again.
    Save(Box<Saved>),
}

/// A rejected control command, worded for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ControlError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ControlError> {
    Err(ControlError(msg.into()))
}

/// One inverter's balancer.
#[derive(Debug)]
struct Unit {
    inverter: String,
    /// `[balancer]` with the user's edits from Home Assistant applied.
    config: BalancerConfig,
    policies: Vec<PlugPolicy>,
    state: BalancerState,
    /// The last published status, to publish only changes.
    published: Option<Value>,
    phase: Option<Phase>,
}

/// The control plane's state.
#[derive(Debug)]
pub struct Control {
    base_config: BalancerConfig,
    units: Vec<Unit>,
    plugs: Vec<String>,
    automations: Vec<PlugAutomation>,
    timer_status: BTreeMap<String, PlugTimerStatus>,
    rules: Rules,
    alert_state: AlertState,
    alerts_published: Option<Value>,
    saved: Saved,
    executor: Executor,
    /// Plug attributes last handed out, to hand out only changes.
    attributes: BTreeMap<String, Map<String, Value>>,
    /// Set by the writer when a save failed: handed out again on the
    /// next step (reported once, by the writer).
    save_failed: Arc<AtomicBool>,
}

impl Control {
    /// Loads the saved state; a missing or unreadable file starts afresh
    /// (reported in the returned outputs, never fatal: the house must keep
    /// its protection).
    pub fn new(config: &Config, store: Store) -> (Self, Vec<Output>) {
        let mut out = Vec::new();
        let saved = match store.load::<Saved>(persist::FILE) {
            Ok(s) => s.unwrap_or_default(),
            Err(e) => {
                tracing::error!(error = %e, "control state not loaded; starting with nothing shed");
                out.push(event(
                    "state_error",
                    None,
                    [("error", e.to_string().into())],
                ));
                Saved::default()
            }
        };
        let mut control = Self {
            base_config: config.balancer.clone(),
            units: Vec::new(),
            plugs: config.plug.iter().map(|p| p.id.clone()).collect(),
            automations: PlugAutomation::all(&config.plug),
            timer_status: BTreeMap::new(),
            rules: Rules::from_config(&config.alerts),
            alert_state: saved.alerts.clone(),
            alerts_published: None,
            saved,
            executor: Executor::default(),
            attributes: BTreeMap::new(),
            save_failed: Arc::default(),
        };
        for inv in &config.inverter {
            let policies = balancer::policies_for(&config.plug, &inv.id);
            if policies.is_empty() {
                continue;
            }
            let persisted = control
                .saved
                .balancers
                .get(&inv.id)
                .cloned()
                .unwrap_or_default();
            let unit_config = control.unit_config(&inv.id);
            control.units.push(Unit {
                inverter: inv.id.clone(),
                config: unit_config,
                policies,
                state: BalancerState::from_persisted(persisted),
                published: None,
                phase: None,
            });
        }
        let plugs = control.plugs.clone();
        control.saved.modes.retain(|p, _| plugs.contains(p));
        let edits = std::mem::take(&mut control.saved.alert_thresholds);
        for (rule, value) in edits {
            match control.rules.set_threshold(&rule, value) {
                Ok(()) => {
                    control.saved.alert_thresholds.insert(rule, value);
                }
                Err(e) => tracing::warn!(rule, error = %e, "saved alert threshold dropped"),
            }
        }
        (control, out)
    }

    /// The inverters that have a balancer.
    pub fn inverters(&self) -> impl Iterator<Item = &str> {
        self.units.iter().map(|u| u.inverter.as_str())
    }

    pub fn mode(&self, plug: &str) -> PlugMode {
        self.saved.modes.get(plug).copied().unwrap_or_default()
    }

    fn unit_config(&self, inverter: &str) -> BalancerConfig {
        let mut c = self.base_config.clone();
        if let Some(o) = self.saved.limits.get(inverter) {
            if let Some(v) = o.on_grid_w {
                c.on_grid_w = v;
            }
            if let Some(v) = o.off_grid_percent {
                c.off_grid_percent = v;
            }
        }
        c
    }

    /// One control step: call it on every fresh inverter or plug reading
    /// and at least once a second.
    pub fn step(&mut self, registry: &Registry, now: Timestamp, local: LocalTime) -> Vec<Output> {
        let mut out = Vec::new();
        for plug in &self.plugs {
            if let Some(on) = plug_on(registry, plug) {
                self.executor.observed(plug, on);
            }
        }
        let bms_limit = if self.units.len() == 1 {
            inputs::bms_discharge_limit(registry)
        } else {
            None
        };
        let mut changed = false;
        for i in 0..self.units.len() {
            changed |= self.step_unit(i, registry, bms_limit, now, &mut out);
        }
        changed |= self.step_timers(registry, now, local, &mut out);
        changed |= self.step_alerts(registry, now, &mut out);
        for d in self.executor.due(now, |p| {
            registry.get(p).is_some_and(|e| e.online == Some(true))
        }) {
            match d {
                Delivery::Send { plug, on } => out.push(Output::Switch { plug, on }),
                Delivery::Unconfirmed {
                    plug,
                    on,
                    origin,
                    attempts,
                } => {
                    tracing::warn!(
                        plug,
                        on,
                        origin,
                        attempts,
                        "the plug has not confirmed a switch command; still trying"
                    );
                    out.push(event(
                        "command_unconfirmed",
                        Some(&plug),
                        [
                            ("state", switch_text(on).into()),
                            ("by", origin.into()),
                            ("attempts", attempts.into()),
                        ],
                    ));
                }
            }
        }
        if changed || self.save_failed.load(Ordering::Relaxed) {
            self.save(&mut out);
        }
        self.plug_attributes(&mut out);
        out
    }

    fn step_unit(
        &mut self,
        i: usize,
        registry: &Registry,
        bms_limit: Option<f64>,
        now: Timestamp,
        out: &mut Vec<Output>,
    ) -> bool {
        let unit = &self.units[i];
        let snapshot = balancer::Snapshot {
            inverter: registry
                .get(&unit.inverter)
                .and_then(|e| inputs::inverter(e, bms_limit)),
            plugs: unit
                .policies
                .iter()
                .map(|p| {
                    inputs::plug(
                        &p.id,
                        registry.get(&p.id),
                        self.mode(&p.id),
                        self.executor.is_pending(&p.id),
                    )
                })
                .collect(),
        };
        let d = balancer::tick(&snapshot, &unit.config, &unit.policies, &unit.state, now);
        let span = tracing::info_span!("balancer", inverter = %unit.inverter);
        let _enter = span.enter();
        if let Some(e) = &d.rejected {
            tracing::warn!(error = %e, "inverter sample ignored by the balancer");
        }
        let inverter = unit.inverter.clone();
        let prev_phase = unit.phase;
        for a in &d.actions {
            let on = a.state == SwitchState::On;
            let action = if on { "restore" } else { "shed" };
            tracing::info!(
                plug = %a.plug,
                reason = reason_text(a.reason),
                load_w = d.status.load_w,
                limit_w = d.status.limit_w,
                plug_w = a.power_w,
                "{action}"
            );
            let origin = if a.reason == balancer::Reason::Failsafe {
                Origin::Failsafe
            } else {
                Origin::Balancer
            };
            // The balancer leaves locked plugs out itself; the arbiter has
            // the last word all the same.
            if let Decision::Skip(held) = arbiter::decide(Wish { origin, on }, self.facts(&a.plug))
            {
                tracing::warn!(plug = %a.plug, why = held.as_str(), "balancer action not carried out");
                continue;
            }
            if let Delivery::Send { plug, on } =
                self.executor.want(&a.plug, on, origin.as_str(), now)
            {
                out.push(Output::Switch { plug, on });
            }
            out.push(event(
                "balancer_action",
                Some(&a.plug),
                [
                    ("inverter", inverter.clone().into()),
                    ("action", action.into()),
                    ("plug", a.plug.clone().into()),
                    ("reason", reason_text(a.reason).into()),
                    ("load_w", opt_num(d.status.load_w)),
                    ("limit_w", opt_num(d.status.limit_w)),
                    ("plug_w", round(a.power_w, 1).into()),
                ],
            ));
        }
        for n in &d.notices {
            let balancer::Notice::Override { plug, until } = n;
            self.executor.cancel(plug);
            tracing::info!(plug = %plug, until = %rfc3339(*until), "a shed plug was switched on by hand: the balancer leaves it on for the override window");
            out.push(event(
                "balancer_override",
                Some(plug),
                [
                    ("inverter", inverter.clone().into()),
                    ("plug", plug.clone().into()),
                    ("until", rfc3339(*until).into()),
                ],
            ));
        }
        let phase = d.status.state;
        if prev_phase != Some(phase) && prev_phase.is_some() {
            tracing::info!(
                from = prev_phase.map_or("none", phase_text),
                to = phase_text(phase),
                "balancer state"
            );
            if matches!(phase, Phase::Failsafe | Phase::Stale)
                || prev_phase == Some(Phase::Failsafe)
            {
                out.push(event(
                    "balancer_state",
                    Some(&inverter),
                    [("state", json!(phase))],
                ));
            }
        }
        let enabled = d.state.persisted().enabled && unit.config.enabled;
        let status = status_json(&d.status, &unit.config, enabled);
        let unit = &mut self.units[i];
        unit.phase = Some(phase);
        unit.state = d.state;
        if unit.published.as_ref() != Some(&status) {
            unit.published = Some(status.clone());
            out.push(Output::BalancerStatus { inverter, status });
        }
        d.persist
    }

    fn step_timers(
        &mut self,
        registry: &Registry,
        now: Timestamp,
        local: LocalTime,
        out: &mut Vec<Output>,
    ) -> bool {
        let relay_on: BTreeMap<String, bool> = self
            .plugs
            .iter()
            .filter_map(|p| Some((p.clone(), plug_on(registry, p)?)))
            .collect();
        let d = timers::tick(
            &self.automations,
            &self.saved.timers,
            local,
            now,
            site_surplus(registry),
            &relay_on,
        );
        self.saved.timers = d.state;
        self.timer_status = d.status;
        for a in d.actions {
            self.automation_switch(&a, now, out);
        }
        d.persist
    }

    /// What the arbiter needs to know of a plug.
    fn facts(&self, plug: &str) -> PlugFacts {
        PlugFacts {
            mode: self.mode(plug),
            shed: self.is_shed(plug),
            pending: self.executor.wanted(plug),
        }
    }

    /// Carries out a timer, schedule or surplus action unless the arbiter
    /// holds it (a lock, or an ON of a plug the balancer has shed).
    fn automation_switch(&mut self, a: &TimerAction, now: Timestamp, out: &mut Vec<Output>) {
        let on = a.state == SwitchState::On;
        let reason = serde_json::to_value(a.reason).unwrap_or(Value::Null);
        let why_on = reason.as_str().unwrap_or("automation").to_owned();
        let origin = match a.reason {
            TimerReason::Schedule => Origin::Schedule,
            TimerReason::Surplus => Origin::Surplus,
            TimerReason::Timer | TimerReason::TimerStart | TimerReason::TimerCancel => {
                Origin::Timer
            }
        };
        if let Decision::Skip(held) | Decision::Refuse(held) =
            arbiter::decide(Wish { origin, on }, self.facts(&a.plug))
        {
            tracing::info!(plug = %a.plug, reason = %why_on, why = held.as_str(), "automation switch skipped");
            return;
        }
        tracing::info!(plug = %a.plug, on, reason = %why_on, "automation switch");
        if let Delivery::Send { plug, on } = self.executor.want(&a.plug, on, origin.as_str(), now) {
            out.push(Output::Switch { plug, on });
        }
        out.push(event(
            "plug_automation",
            Some(&a.plug),
            [
                ("plug", a.plug.clone().into()),
                ("state", switch_text(on).into()),
                ("reason", reason),
            ],
        ));
    }

    /// Returns whether the alert state worth keeping changed.
    fn step_alerts(&mut self, registry: &Registry, now: Timestamp, out: &mut Vec<Output>) -> bool {
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

    fn alerts_payload(&self, active: &[alerts::ActiveAlert]) -> Value {
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

    fn is_shed(&self, plug: &str) -> bool {
        self.units.iter().any(|u| {
            u.state
                .persisted()
                .plugs
                .get(plug)
                .is_some_and(|s| s.shed.is_some())
        })
    }

    /// Hands the state to keep out as an [`Output::Save`].
    fn save(&mut self, out: &mut Vec<Output>) {
        self.saved.balancers = self
            .units
            .iter()
            .map(|u| (u.inverter.clone(), u.state.persisted().clone()))
            .collect();
        self.saved.alerts = self.alert_state.clone();
        out.push(Output::Save(Box::new(self.saved.clone())));
    }

    /// Shared with whoever writes [`Output::Save`]: set while saving
    /// fails.
    pub fn save_failed(&self) -> Arc<AtomicBool> {
        self.save_failed.clone()
    }

    /// The plug attributes that changed since they were last handed out.
    fn plug_attributes(&mut self, out: &mut Vec<Output>) {
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

    /// The user switched a plug: the automation stops pushing its own wish
    /// (the balancer sees the new state and treats it as an override).
    pub fn user_switched(&mut self, plug: &str, on: bool) {
        if arbiter::decide(
            Wish {
                origin: Origin::User,
                on,
            },
            self.facts(plug),
        ) == Decision::Direct
        {
            self.executor.cancel(plug);
        }
    }

    /// `{"mode": "auto"|"on"|"off"}` for a plug. `on` and `off` switch the
    /// plug at once and lock it there.
    pub fn set_mode(
        &mut self,
        registry: &Registry,
        plug: &str,
        mode: PlugMode,
        now: Timestamp,
        local: LocalTime,
    ) -> Result<Vec<Output>, ControlError> {
        if !self.plugs.iter().any(|p| p == plug) {
            return err(format!("'{plug}' is not a plug"));
        }
        self.saved.modes.insert(plug.to_owned(), mode);
        if mode == PlugMode::Auto {
            self.saved.modes.remove(plug);
        }
        let mut out = Vec::new();
        match mode {
            PlugMode::Auto => self.executor.cancel(plug),
            PlugMode::On | PlugMode::Off => {
                let wish = Wish {
                    origin: Origin::Lock,
                    on: mode == PlugMode::On,
                };
                if arbiter::decide(wish, self.facts(plug)) == Decision::Deliver {
                    if let Delivery::Send { plug, on } =
                        self.executor
                            .want(plug, wish.on, Origin::Lock.as_str(), now)
                    {
                        out.push(Output::Switch { plug, on });
                    }
                }
            }
        }
        tracing::info!(plug, mode = ?mode, "plug mode set");
        out.extend(self.step(registry, now, local));
        self.save(&mut out);
        Ok(out)
    }

    /// A change of an inverter's balancer: `{"enabled": bool, "on_grid_w":
    /// W, "off_grid_percent": %}`, any subset. Validated as a whole before
    /// anything changes.
    pub fn set_balancer(
        &mut self,
        registry: &Registry,
        inverter: &str,
        payload: &Value,
        now: Timestamp,
        local: LocalTime,
    ) -> Result<Vec<Output>, ControlError> {
        let Some(i) = self.units.iter().position(|u| u.inverter == inverter) else {
            let known: Vec<&str> = self.inverters().collect();
            return err(format!(
                "no balancer for '{inverter}'; balancers: {}",
                if known.is_empty() {
                    "none (no [[plug]] names an inverter)".to_owned()
                } else {
                    known.join(", ")
                }
            ));
        };
        let Some(obj) = payload.as_object() else {
            return err("expected a JSON object such as {\"enabled\": false}");
        };
        if obj.is_empty() {
            return err("nothing to set; accepted: enabled, on_grid_w, off_grid_percent");
        }
        let mut enabled = None;
        let mut limits = self.saved.limits.get(inverter).cloned().unwrap_or_default();
        for (k, v) in obj {
            match k.as_str() {
                "enabled" => {
                    enabled = Some(parse_bool(v).ok_or_else(|| {
                        ControlError(format!("enabled: expected true or false, got {v}"))
                    })?)
                }
                "on_grid_w" => limits.on_grid_w = Some(ranged(k, v, 100.0, 100_000.0)?),
                "off_grid_percent" => limits.off_grid_percent = Some(ranged(k, v, 10.0, 100.0)?),
                other => {
                    return err(format!(
                        "unknown field '{other}'; accepted: enabled, on_grid_w, off_grid_percent"
                    ));
                }
            }
        }
        self.saved.limits.insert(inverter.to_owned(), limits);
        let config = self.unit_config(inverter);
        let unit = &mut self.units[i];
        unit.config = config;
        if let Some(e) = enabled {
            unit.state.set_enabled(e);
        }
        tracing::info!(inverter, change = %payload, "balancer settings changed");
        let mut out = self.step(registry, now, local);
        self.save(&mut out);
        Ok(out)
    }

    /// A plug timer: start (switch on now, off later) or cancel (off now).
    /// Starting is the user's explicit wish, so it switches a shed plug on
    /// too (the balancer then treats it as an override); a locked plug
    /// must be put back to `auto` first.
    pub fn timer(
        &mut self,
        registry: &Registry,
        plug: &str,
        command: TimerCommand,
        now: Timestamp,
        local: LocalTime,
    ) -> Result<Vec<Output>, ControlError> {
        let mode = self.mode(plug);
        // The wish's direction does not matter to a lock: ask with ON.
        let asked = arbiter::decide(
            Wish {
                origin: Origin::UserTimer,
                on: true,
            },
            self.facts(plug),
        );
        if asked == Decision::Refuse(Held::Locked) && self.plugs.iter().any(|p| p == plug) {
            return err(format!(
                "'{plug}' is locked by its mode '{}'; set the mode to auto to use a timer",
                serde_json::to_value(mode)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            ));
        }
        let action = match command {
            TimerCommand::Start(d) => {
                timers::start_timer(&mut self.saved.timers, &self.automations, plug, d, now)
            }
            TimerCommand::Cancel => {
                timers::cancel_timer(&mut self.saved.timers, &self.automations, plug, now)
            }
        }
        .map_err(|e| ControlError(e.to_string()))?;
        let mut out = Vec::new();
        let on = action.state == SwitchState::On;
        // The user's own timer: delivered even to a shed plug (the
        // arbiter's precedence; the executor replaces what was pending).
        if let Delivery::Send { plug, on } =
            self.executor
                .want(&action.plug, on, Origin::UserTimer.as_str(), now)
        {
            out.push(Output::Switch { plug, on });
        }
        out.push(event(
            "plug_automation",
            Some(&action.plug),
            [
                ("plug", action.plug.clone().into()),
                ("state", switch_text(on).into()),
                (
                    "reason",
                    serde_json::to_value(action.reason).unwrap_or(Value::Null),
                ),
            ],
        ));
        match command {
            TimerCommand::Start(d) => {
                tracing::info!(plug, minutes = d.as_secs() / 60, "plug timer started")
            }
            TimerCommand::Cancel => tracing::info!(plug, "plug timer cancelled"),
        }
        out.extend(self.step(registry, now, local));
        self.save(&mut out);
        Ok(out)
    }

    /// The last published state of an inverter's balancer.
    pub fn balancer_status(&self, inverter: &str) -> Option<Value> {
        let u = self.units.iter().find(|u| u.inverter == inverter)?;
        Some(u.published.clone().unwrap_or(Value::Null))
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

fn plug_on(registry: &Registry, plug: &str) -> Option<bool> {
    Some(registry.get(plug)?.plug()?.on)
}

/// PV minus house load summed over the inverters that report both.
fn site_surplus(registry: &Registry) -> Option<f64> {
    let mut total = None;
    for (_, d) in registry.iter() {
        if d.kind == DeviceKind::Inverter && d.online == Some(true) {
            if let Some(s) = inputs::surplus_w(d) {
                *total.get_or_insert(0.0) += s;
            }
        }
    }
    total
}

fn parse_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.to_ascii_uppercase().as_str() {
            "ON" | "TRUE" => Some(true),
            "OFF" | "FALSE" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn ranged(key: &str, v: &Value, min: f64, max: f64) -> Result<f64, ControlError> {
    let n = v
        .as_f64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        .filter(|n: &f64| n.is_finite());
    match n {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => err(format!(
            "{key}: expected a number from {min} to {max}, got {v}"
        )),
    }
}

fn event<const N: usize>(
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

fn phase_text(p: Phase) -> &'static str {
    match p {
        Phase::Idle => "idle",
        Phase::Shedding => "shedding",
        Phase::Restoring => "restoring",
        Phase::Stale => "stale",
        Phase::Failsafe => "failsafe",
        Phase::Disabled => "disabled",
    }
}

fn switch_text(on: bool) -> &'static str {
    if on { "ON" } else { "OFF" }
}

fn opt_num(v: Option<f64>) -> Value {
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
fn status_json(s: &Status, c: &BalancerConfig, enabled: bool) -> Value {
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

#[cfg(test)]
mod tests {
    #[test]
    fn rounding_never_gives_negative_zero() {
        // An empty f64 sum is -0.0 (nothing shed): it must read 0.
        let nothing: f64 = std::iter::empty::<f64>().sum();
        assert!(crate::model::round(nothing, 1).is_sign_positive());
        assert!(crate::model::round(-0.01, 1).is_sign_positive());
        assert_eq!(crate::model::round(-1.26, 1), -1.3);
    }

    use super::*;

    const T0: u64 = 1_780_000_000_000;

    fn config() -> Config {
        toml::from_str(
            r#"
            [tapo]
            email = "a@b.c"
            password = "x"
            [[inverter]]
            id = "inv"
            host = "127.0.0.1"
            serial = 1
            [[plug]]
            id = "boiler"
            host = "127.0.0.1"
            inverter = "inv"
            min_on = "1s"
            [[plug]]
            id = "lamp"
            host = "127.0.0.1"
            "#,
        )
        .unwrap()
    }

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    fn reading(kind: DeviceKind, v: &Value) -> crate::model::Reading {
        crate::model::Reading::from_state(kind, v.as_object().unwrap()).unwrap()
    }

    fn seen(ms: u64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap()
    }

    fn feed(r: &mut Registry, t: u64, load_w: f64, boiler_on: bool) {
        r.set_online("inv", true);
        r.set_online("boiler", true);
        r.set_online("lamp", true);
        let inv = json!({"rated_power": 6000, "inverter_power": load_w, "grid_port_power": 0,
                         "gen_port_power": 0, "grid_connected": true});
        r.record("inv", reading(DeviceKind::Inverter, &inv), seen(t));
        let b = json!({"state": if boiler_on { "ON" } else { "OFF" }, "power": if boiler_on { 2000.0 } else { 0.0 }});
        r.record("boiler", reading(DeviceKind::Plug, &b), seen(t));
        let l = json!({"state": "OFF"});
        r.record("lamp", reading(DeviceKind::Plug, &l), seen(t));
    }

    fn local() -> LocalTime {
        LocalTime::EPOCH
    }

    /// What the bridge's writer does with the control plane's outputs:
    /// the newest `Save` reaches `control.json`.
    fn written(dir: &std::path::Path, out: &[Output]) {
        if let Some(saved) = out.iter().rev().find_map(|o| match o {
            Output::Save(s) => Some(s),
            _ => None,
        }) {
            persist::write(&Store::new(dir), saved).unwrap();
        }
    }

    fn switches(out: &[Output]) -> Vec<(String, bool)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Switch { plug, on } => Some((plug.clone(), *on)),
                _ => None,
            })
            .collect()
    }

    /// Runs the controller once a second with the house at `load_w`.
    fn run(
        c: &mut Control,
        r: &mut Registry,
        from: u64,
        secs: u64,
        load_w: f64,
        boiler_on: &mut bool,
    ) -> Vec<Output> {
        let mut all = Vec::new();
        for s in 0..secs {
            let t = from + s * 1000;
            feed(
                r,
                t,
                load_w + if *boiler_on { 2000.0 } else { 0.0 },
                *boiler_on,
            );
            let out = c.step(r, at(t), local());
            for (plug, on) in switches(&out) {
                if plug == "boiler" {
                    *boiler_on = on;
                }
            }
            all.extend(out);
        }
        all
    }

    #[test]
    fn sheds_persists_and_a_restarted_control_remembers() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config();
        let (mut c, out) = Control::new(&cfg, Store::new(dir.path()));
        assert!(out.is_empty());
        let mut r = Registry::from_config(&cfg);
        let mut boiler = true;
        run(&mut c, &mut r, T0, 10, 1000.0, &mut boiler);
        assert!(boiler, "3 kW is under 7.4 kW");
        let out = run(&mut c, &mut r, T0 + 10_000, 15, 6000.0, &mut boiler);
        assert_eq!(switches(&out), vec![("boiler".to_owned(), false)]);
        written(dir.path(), &out);
        assert!(out.iter().any(|o| matches!(
            o,
            Output::Event {
                kind: "balancer_action",
                ..
            }
        )));
        assert!(!boiler);

        // A new process: the shed set is back, nothing is switched at once.
        let (mut c2, _) = Control::new(&cfg, Store::new(dir.path()));
        assert!(c2.is_shed("boiler"));
        let mut r2 = Registry::from_config(&cfg);
        let out = run(&mut c2, &mut r2, T0 + 30_000, 5, 500.0, &mut boiler);
        assert!(switches(&out).is_empty(), "{out:?}");
    }

    #[test]
    fn a_timer_does_not_switch_a_shed_plug_on_and_locks_block_automation() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config();
        let (mut c, _) = Control::new(&cfg, Store::new(dir.path()));
        let mut r = Registry::from_config(&cfg);
        let mut boiler = true;
        run(&mut c, &mut r, T0, 10, 1000.0, &mut boiler);
        run(&mut c, &mut r, T0 + 10_000, 15, 6000.0, &mut boiler);
        assert!(c.is_shed("boiler"));
        let mut out = Vec::new();
        c.automation_switch(
            &TimerAction {
                plug: "boiler".into(),
                state: SwitchState::On,
                reason: timers::TimerReason::Schedule,
            },
            at(T0 + 30_000),
            &mut out,
        );
        assert!(out.is_empty(), "the balancer wins: {out:?}");

        let now = at(T0 + 31_000);
        let out = c.set_mode(&r, "lamp", PlugMode::On, now, local()).unwrap();
        assert!(switches(&out).contains(&("lamp".to_owned(), true)));
        written(dir.path(), &out);
        let e = c
            .timer(
                &r,
                "lamp",
                TimerCommand::Start(std::time::Duration::from_secs(900)),
                now,
                local(),
            )
            .unwrap_err();
        assert!(e.0.contains("locked"), "{e}");
        let mut out = Vec::new();
        c.automation_switch(
            &TimerAction {
                plug: "lamp".into(),
                state: SwitchState::Off,
                reason: timers::TimerReason::Schedule,
            },
            now,
            &mut out,
        );
        assert!(out.is_empty(), "a lock blocks schedules");
        // Modes persist.
        let (c2, _) = Control::new(&cfg, Store::new(dir.path()));
        assert_eq!(c2.mode("lamp"), PlugMode::On);
    }

    #[test]
    fn balancer_commands_are_validated_as_a_whole() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config();
        let (mut c, _) = Control::new(&cfg, Store::new(dir.path()));
        let r = Registry::from_config(&cfg);
        let now = at(T0);
        for (bad, why) in [
            (json!({"on_grid_w": 50}), "on_grid_w"),
            (json!({"enabled": "maybe"}), "enabled"),
            (
                json!({"enabled": false, "colour": 1}),
                "unknown field 'colour'",
            ),
            (json!({}), "nothing to set"),
            (json!([1]), "JSON object"),
        ] {
            let e = c.set_balancer(&r, "inv", &bad, now, local()).unwrap_err();
            assert!(e.0.contains(why), "{bad}: {e}");
        }
        // Nothing of the rejected `{"enabled": false, "colour": 1}` stuck.
        assert!(c.units[0].state.persisted().enabled);
        let e = c
            .set_balancer(&r, "ghost", &json!({"enabled": false}), now, local())
            .unwrap_err();
        assert!(e.0.contains("balancers: inv"), "{e}");
        let out = c
            .set_balancer(
                &r,
                "inv",
                &json!({"on_grid_w": "6000", "enabled": "OFF"}),
                now,
                local(),
            )
            .unwrap();
        written(dir.path(), &out);
        assert_eq!(c.units[0].config.on_grid_w, 6000.0);
        assert!(!c.units[0].state.persisted().enabled);
        let (c2, _) = Control::new(&cfg, Store::new(dir.path()));
        assert_eq!(c2.units[0].config.on_grid_w, 6000.0);
        assert!(!c2.units[0].state.persisted().enabled);
    }

    #[test]
    fn an_active_alert_survives_a_restart_without_a_second_notification() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config();
        cfg.alerts.startup_grace = std::time::Duration::ZERO;
        let raises = |out: &[Output]| {
            out.iter()
                .filter(|o| matches!(o, Output::AlertEvent(v) if v["event_type"] == "raise"))
                .count()
        };
        let faulty = |r: &mut Registry, t: u64| {
            r.set_online("inv", true);
            let v = json!({"faults": "F18 AC over-current", "fault_bits": 1u64 << 17});
            r.record("inv", reading(DeviceKind::Inverter, &v), seen(t));
        };
        let (mut c, _) = Control::new(&cfg, Store::new(dir.path()));
        let mut r = Registry::from_config(&cfg);
        let mut n = 0;
        for s in 0..60 {
            faulty(&mut r, T0 + s * 1000);
            let out = c.step(&r, at(T0 + s * 1000), local());
            written(dir.path(), &out);
            n += raises(&out);
        }
        assert_eq!(n, 1, "raised once");

        let (mut c2, _) = Control::new(&cfg, Store::new(dir.path()));
        let mut r2 = Registry::from_config(&cfg);
        let mut out = Vec::new();
        for s in 60..120 {
            faulty(&mut r2, T0 + s * 1000);
            out.extend(c2.step(&r2, at(T0 + s * 1000), local()));
        }
        assert_eq!(raises(&out), 0, "not notified again after the restart");
        let list = out
            .iter()
            .find_map(|o| match o {
                Output::Alerts(v) => Some(v.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(list["count"], 1, "{list}");
        assert_eq!(list["active"][0]["rule"], "inverter_fault");
    }

    #[test]
    fn a_corrupt_state_file_is_reported_and_protection_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("control.json"), b"{ half a file").unwrap();
        let (c, out) = Control::new(&config(), Store::new(dir.path()));
        assert!(
            out.iter().any(|o| matches!(
                o,
                Output::Event {
                    kind: "state_error",
                    ..
                }
            )),
            "{out:?}"
        );
        assert_eq!(c.inverters().collect::<Vec<_>>(), vec!["inv"]);
    }
}
