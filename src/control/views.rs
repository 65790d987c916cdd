//! What control hands out, as types: the balancer's status, the alerts
//! list, a plug's control attributes and the events. `mqtt::publish`
//! turns them into the topic contract's JSON; nothing here knows a key.

use super::*;
use crate::core::balancer::ShedEntry;
use crate::core::timers::NextSwitch;

/// `<base>/balancer/<inverter>`: the status without the sample age, which
/// changes on every tick and would make every tick a publish. The numbers
/// are rounded as published, so two equal views are two equal payloads
/// (control publishes only changes).
#[derive(Debug, Clone, PartialEq)]
pub struct BalancerView {
    pub state: Phase,
    pub enabled: bool,
    pub grid_connected: Option<bool>,
    pub limit_w: Option<f64>,
    pub load_w: Option<f64>,
    pub headroom_w: Option<f64>,
    pub shed_count: usize,
    pub shed_power_w: f64,
    pub shed: Vec<ShedEntry>,
    pub on_grid_w: f64,
    pub off_grid_percent: f64,
}

impl BalancerView {
    pub fn new(s: &Status, c: &BalancerConfig, enabled: bool) -> Self {
        Self {
            state: s.state,
            enabled,
            grid_connected: s.grid_connected,
            limit_w: watts(s.limit_w),
            load_w: watts(s.load_w),
            headroom_w: watts(s.headroom_w),
            shed_count: s.shed_count,
            shed_power_w: round(s.shed_power_w, 1),
            shed: s
                .shed
                .iter()
                .map(|e| ShedEntry {
                    power_w: round(e.power_w, 1),
                    ..e.clone()
                })
                .collect(),
            on_grid_w: c.on_grid_w,
            off_grid_percent: c.off_grid_percent,
        }
    }
}

/// Watts as published: one decimal; a value that is not a number is
/// absent (published as null), so that it compares equal to itself.
pub(super) fn watts(v: Option<f64>) -> Option<f64> {
    v.map(|v| round(v, 1)).filter(|v| v.is_finite())
}

/// `<base>/alerts`: the active alerts and the thresholds in force.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertsView {
    pub active: Vec<alerts::ActiveAlert>,
    /// By rule id, in the rules' order.
    pub thresholds: Vec<(&'static str, f64)>,
}

/// What control knows of a plug, merged into the plug's state object.
#[derive(Debug, Clone, PartialEq)]
pub struct PlugAttributes {
    pub mode: PlugMode,
    /// Shed by the balancer: why and since when.
    pub shed: Option<(Reason, Timestamp)>,
    pub override_until: Option<Timestamp>,
    /// Whole minutes left on the timer, rounded up (0: none running);
    /// the exact end is `timer_off_at`.
    pub timer_min: u64,
    pub timer_off_at: Option<Timestamp>,
    pub next_schedule: Option<NextSwitch>,
    pub surplus_active: bool,
}

/// A message for `bridge/event`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `control.json` could not be read or written.
    StateError { error: String },
    /// A plug has not confirmed a switch command; still trying.
    CommandUnconfirmed {
        plug: String,
        on: bool,
        by: &'static str,
        attempts: u32,
    },
    /// The balancer shed (`on` false) or restored a plug.
    BalancerAction {
        inverter: String,
        plug: String,
        on: bool,
        reason: Reason,
        load_w: Option<f64>,
        limit_w: Option<f64>,
        plug_w: f64,
    },
    /// A shed plug was switched on by hand; left on until `until`.
    BalancerOverride {
        inverter: String,
        plug: String,
        until: Timestamp,
    },
    /// The balancer went stale or failsafe, or left failsafe.
    BalancerState { inverter: String, state: Phase },
    /// A timer, schedule or surplus rule switched a plug.
    PlugAutomation {
        plug: String,
        on: bool,
        reason: TimerReason,
    },
}

impl Event {
    /// The event's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::StateError { .. } => "state_error",
            Self::CommandUnconfirmed { .. } => "command_unconfirmed",
            Self::BalancerAction { .. } => "balancer_action",
            Self::BalancerOverride { .. } => "balancer_override",
            Self::BalancerState { .. } => "balancer_state",
            Self::PlugAutomation { .. } => "plug_automation",
        }
    }

    /// The device the event is about.
    pub fn device(&self) -> Option<&str> {
        match self {
            Self::StateError { .. } => None,
            Self::CommandUnconfirmed { plug, .. }
            | Self::BalancerAction { plug, .. }
            | Self::BalancerOverride { plug, .. }
            | Self::PlugAutomation { plug, .. } => Some(plug),
            Self::BalancerState { inverter, .. } => Some(inverter),
        }
    }
}

impl Control {
    pub(super) fn alerts_view(&self, active: Vec<alerts::ActiveAlert>) -> AlertsView {
        AlertsView {
            active,
            thresholds: self.thresholds(),
        }
    }

    /// Whether `active` and today's thresholds are what was last handed
    /// out, without building the view (this runs every second).
    pub(super) fn alerts_unchanged(&self, active: &[alerts::ActiveAlert]) -> bool {
        self.alerts_published.as_ref().is_some_and(|p| {
            p.active.as_slice() == active
                && p.thresholds.iter().copied().eq(self.threshold_values())
        })
    }

    pub(super) fn thresholds(&self) -> Vec<(&'static str, f64)> {
        self.threshold_values().collect()
    }

    pub(super) fn threshold_values(&self) -> impl Iterator<Item = (&'static str, f64)> + '_ {
        self.rules.iter().filter_map(|r| Some((r.id, r.threshold?)))
    }

    /// The plug attributes that changed since they were last handed out.
    pub(super) fn plug_attributes(&mut self, out: &mut Vec<Output>) {
        for plug in &self.plugs {
            let balancer = self
                .units
                .iter()
                .find_map(|u| u.state.persisted().plugs.get(plug));
            let ts = self.timer_status.get(plug);
            let attributes = PlugAttributes {
                mode: self.mode(plug),
                shed: balancer.and_then(|s| s.shed).map(|r| (r.reason, r.since)),
                override_until: balancer.and_then(|s| s.override_until),
                timer_min: ts
                    .and_then(|t| t.timer_left_s)
                    .map_or(0, |s| s.div_ceil(60)),
                timer_off_at: ts.and_then(|t| t.timer_off_at),
                next_schedule: ts.and_then(|t| t.next_schedule),
                surplus_active: ts.is_some_and(|t| t.surplus_active),
            };
            if self.attributes.get(plug) != Some(&attributes) {
                self.attributes.insert(plug.clone(), attributes.clone());
                out.push(Output::PlugAttributes {
                    plug: plug.clone(),
                    attributes,
                });
            }
        }
    }
}
