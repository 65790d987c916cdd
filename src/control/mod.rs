//! The bridge's own control: one overload balancer per inverter, the plug
//! modes, and the executor that delivers their switch commands. It reads
//! the devices' latest state from the registry, runs the pure cores of
//! `crate::core` with the time passed in, keeps their state on disk, and
//! returns [`Output`]s; the bridge turns those into driver commands and
//! MQTT messages. Nothing here knows a topic.

mod alerting;
mod commands;
pub mod executor;
pub mod inputs;
pub mod persist;
mod views;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
pub use commands::{BalancerChange, ThresholdEdits};
use executor::{Delivery, Executor};
pub use persist::{LimitOverrides, Saved};
use views::watts;
pub use views::{AlertsView, BalancerView, Event, PlugAttributes};

/// What the bridge must do after a control step.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send this relay state to the plug's driver.
    Switch { plug: String, on: bool },
    /// The retained state of an inverter's balancer.
    BalancerStatus {
        inverter: String,
        status: BalancerView,
    },
    /// A message for `bridge/event`.
    Event(Event),
    /// The retained list of active alerts and the thresholds
    /// (`<base>/alerts`).
    Alerts(AlertsView),
    /// One raise or clear (`<base>/alerts/event`).
    AlertEvent(alerts::AlertEvent),
    /// Control facts about a plug (mode, shed, timer) to merge into its
    /// state object.
    PlugAttributes {
        plug: String,
        attributes: PlugAttributes,
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
    published: Option<BalancerView>,
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
    alerts_published: Option<AlertsView>,
    saved: Saved,
    executor: Executor,
    /// Plug attributes last handed out, to hand out only changes.
    attributes: BTreeMap<String, PlugAttributes>,
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
                out.push(Output::Event(Event::StateError {
                    error: e.to_string(),
                }));
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
                    out.push(Output::Event(Event::CommandUnconfirmed {
                        plug,
                        on,
                        by: origin,
                        attempts,
                    }));
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
                reason = a.reason.as_str(),
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
            out.push(Output::Event(Event::BalancerAction {
                inverter: inverter.clone(),
                plug: a.plug.clone(),
                on,
                reason: a.reason,
                load_w: watts(d.status.load_w),
                limit_w: watts(d.status.limit_w),
                plug_w: round(a.power_w, 1),
            }));
        }
        for n in &d.notices {
            let balancer::Notice::Override { plug, until } = n;
            self.executor.cancel(plug);
            tracing::info!(plug = %plug, until = %crate::mqtt::payloads::instant(*until), "a shed plug was switched on by hand: the balancer leaves it on for the override window");
            out.push(Output::Event(Event::BalancerOverride {
                inverter: inverter.clone(),
                plug: plug.clone(),
                until: *until,
            }));
        }
        let phase = d.status.state;
        if prev_phase != Some(phase) && prev_phase.is_some() {
            tracing::info!(
                from = prev_phase.map_or("none", Phase::as_str),
                to = phase.as_str(),
                "balancer state"
            );
            if matches!(phase, Phase::Failsafe | Phase::Stale)
                || prev_phase == Some(Phase::Failsafe)
            {
                out.push(Output::Event(Event::BalancerState {
                    inverter: inverter.clone(),
                    state: phase,
                }));
            }
        }
        let enabled = d.state.persisted().enabled && unit.config.enabled;
        let status = BalancerView::new(&d.status, &unit.config, enabled);
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
        let why_on = a.reason.as_str();
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
        out.push(Output::Event(Event::PlugAutomation {
            plug: a.plug.clone(),
            on,
            reason: a.reason,
        }));
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

    /// The last published state of an inverter's balancer: `None` when
    /// it has no balancer, `Some(None)` before its first step.
    pub fn balancer_status(&self, inverter: &str) -> Option<Option<&BalancerView>> {
        let u = self.units.iter().find(|u| u.inverter == inverter)?;
        Some(u.published.as_ref())
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

#[cfg(test)]
mod tests;
