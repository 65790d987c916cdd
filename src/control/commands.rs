//! The user's commands to the control plane: a plug's mode and timer,
//! the hand on a plug, a balancer's settings; each validated as a whole
//! before anything changes.

use super::*;

impl Control {
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

    /// A change of an inverter's balancer, already checked field by field
    /// (`mqtt::commands`); applied as a whole.
    pub fn set_balancer(
        &mut self,
        registry: &Registry,
        inverter: &str,
        change: &BalancerChange,
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
        let mut limits = self.saved.limits.get(inverter).cloned().unwrap_or_default();
        if let Some(w) = change.on_grid_w {
            limits.on_grid_w = Some(w);
        }
        if let Some(p) = change.off_grid_percent {
            limits.off_grid_percent = Some(p);
        }
        self.saved.limits.insert(inverter.to_owned(), limits);
        let config = self.unit_config(inverter);
        let unit = &mut self.units[i];
        unit.config = config;
        if let Some(e) = change.enabled {
            unit.state.set_enabled(e);
        }
        tracing::info!(inverter, %change, "balancer settings changed");
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
        out.push(Output::Event(Event::PlugAutomation {
            plug: action.plug.clone(),
            on,
            reason: action.reason,
        }));
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
}

/// A change of a balancer's settings: any of them, each within its range.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BalancerChange {
    pub enabled: Option<bool>,
    pub on_grid_w: Option<f64>,
    pub off_grid_percent: Option<f64>,
}

impl BalancerChange {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl std::fmt::Display for BalancerChange {
    /// `enabled=false on_grid_w=6000`, for the log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut sep = "";
        if let Some(e) = self.enabled {
            write!(f, "enabled={e}")?;
            sep = " ";
        }
        if let Some(w) = self.on_grid_w {
            write!(f, "{sep}on_grid_w={w}")?;
            sep = " ";
        }
        if let Some(p) = self.off_grid_percent {
            write!(f, "{sep}off_grid_percent={p}")?;
        }
        Ok(())
    }
}

/// New alert thresholds by rule id, in the order given.
pub type ThresholdEdits = Vec<(String, f64)>;
