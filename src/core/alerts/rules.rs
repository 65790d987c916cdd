//! The rules as configured: `Rules` built from `[alerts]`, each rule's
//! `RuleInfo` (thresholds, clear threshold, durations), and the
//! threshold and hysteresis checks shared with the configuration.

use std::time::Duration;

use serde::Serialize;

use super::defaults::{Check, DEFS, Def, def};
use super::{AlertError, Direction, FAMILIES, Level};
use crate::config::{AlertsConfig, BatteryChemistry, RuleOverride};

/// A clear condition must hold this long at most (the rule's `for` when
/// shorter): long enough to ride out one odd reading, short enough that a
/// recovered value clears promptly.
const MAX_CLEAR_HOLD: Duration = Duration::from_secs(30);

/// Every rule id, in display order.
pub fn rule_ids() -> impl Iterator<Item = &'static str> {
    DEFS.iter().map(|d| d.id)
}

/// Whether `value` is an allowed threshold of rule `id` (configuration
/// and Home Assistant edits alike).
pub fn check_threshold(id: &str, value: f64) -> Result<(), String> {
    let d = def(id).ok_or_else(|| AlertError::UnknownRule(id.to_owned()).to_string())?;
    threshold_ok(d, value).map_err(|e| e.to_string())
}

/// Whether `value` is an allowed hysteresis of rule `id`: not negative and
/// not wider than the rule's threshold range.
pub fn check_hysteresis(id: &str, value: f64) -> Result<(), String> {
    let d = def(id).ok_or_else(|| AlertError::UnknownRule(id.to_owned()).to_string())?;
    if d.threshold.is_none() {
        return Err(format!("the alert rule `{id}` has no threshold"));
    }
    let (min, max, _) = d.range;
    let span = tidy(max - min);
    if !value.is_finite() {
        return Err(format!("{value} is not a finite number"));
    }
    if !(0.0..=span).contains(&value) {
        return Err(format!("{value} is outside 0 to {span} {}", d.unit));
    }
    Ok(())
}

fn threshold_ok(d: &Def, value: f64) -> Result<(), AlertError> {
    if d.threshold.is_none() {
        return Err(AlertError::NoThreshold(d.id.to_owned()));
    }
    if !value.is_finite() {
        return Err(AlertError::NotFinite {
            rule: d.id.to_owned(),
            value,
        });
    }
    let (min, max, _) = d.range;
    if !(min..=max).contains(&value) {
        return Err(AlertError::OutOfRange {
            rule: d.id.to_owned(),
            value,
            min,
            max,
            unit: d.unit,
        });
    }
    Ok(())
}

/// Sums like 0.1 − 0.01 print as 0.09 rather than 0.09000000000000001.
pub(super) fn tidy(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// One rule as configured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleInfo {
    pub id: &'static str,
    pub family: &'static str,
    pub name: &'static str,
    pub level: Level,
    /// Unit of `threshold`; pack-voltage rules are per cell (`V/cell`).
    pub unit: &'static str,
    /// `None`: a condition without a threshold (alarm bits, unreachable).
    pub direction: Option<Direction>,
    pub threshold: Option<f64>,
    pub hysteresis: f64,
    /// `threshold − hysteresis` (above-rules) or `+` (below-rules).
    pub clear: Option<f64>,
    /// How long the raise condition must hold before raising (`for`).
    #[serde(serialize_with = "crate::config::duration::serialize")]
    pub min_duration: Duration,
    /// How long the clear condition must hold before clearing.
    #[serde(serialize_with = "crate::config::duration::serialize")]
    pub clear_after: Duration,
    /// Zero: no reminders, and every raise notifies.
    #[serde(serialize_with = "crate::config::duration::serialize")]
    pub repeat_after: Duration,
    /// Range and step of the threshold, for a Home Assistant number entity.
    pub min: f64,
    pub max: f64,
    pub step: f64,
    pub enabled: bool,
    #[serde(skip)]
    pub(super) check: Check,
    #[serde(skip)]
    pub(super) decimals: usize,
}

impl RuleInfo {
    fn new(d: &Def, chemistry: BatteryChemistry, repeat_after: Duration) -> Self {
        let threshold = d.threshold.map(|(lfp, nmc)| match chemistry {
            BatteryChemistry::Lifepo4 => lfp,
            BatteryChemistry::Nmc => nmc,
        });
        let mut r = Self {
            id: d.id,
            family: d.family,
            name: d.name,
            level: d.level,
            unit: d.unit,
            direction: d.check.direction(),
            threshold,
            hysteresis: d.hysteresis,
            clear: None,
            min_duration: Duration::from_secs(d.for_secs),
            clear_after: Duration::ZERO,
            repeat_after,
            min: d.range.0,
            max: d.range.1,
            step: d.range.2,
            enabled: true,
            check: d.check,
            decimals: d.decimals,
        };
        r.derive();
        r
    }

    /// Values already rejected at load are skipped rather than trusted, so
    /// a hand-built configuration cannot produce a rule that never clears.
    fn apply(&mut self, d: &Def, o: &RuleOverride) {
        if let Some(e) = o.enabled {
            self.enabled = e;
        }
        if let Some(t) = o.threshold.filter(|t| threshold_ok(d, *t).is_ok()) {
            self.threshold = Some(t);
        }
        if let Some(h) = o.hysteresis.filter(|h| check_hysteresis(d.id, *h).is_ok()) {
            self.hysteresis = h;
        }
        if let Some(f) = o.for_duration {
            self.min_duration = f;
        }
        if let Some(l) = o.level {
            self.level = l;
        }
        if let Some(r) = o.repeat_after {
            self.repeat_after = r;
        }
        self.derive();
    }

    fn derive(&mut self) {
        self.clear = match (self.threshold, self.direction) {
            (Some(t), Some(Direction::Above)) => Some(tidy(t - self.hysteresis)),
            (Some(t), Some(Direction::Below)) => Some(tidy(t + self.hysteresis)),
            _ => None,
        };
        self.clear_after = self.min_duration.min(MAX_CLEAR_HOLD);
    }
}

/// The rules as configured: built from `[alerts]`, thresholds editable.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub(super) enabled: bool,
    chemistry: BatteryChemistry,
    pub(super) startup_grace: Duration,
    pub(super) rules: Vec<RuleInfo>,
}

impl Default for Rules {
    fn default() -> Self {
        Self::from_config(&AlertsConfig::default())
    }
}

impl Rules {
    pub fn from_config(c: &AlertsConfig) -> Self {
        let rules = DEFS
            .iter()
            .map(|d| {
                let mut r = RuleInfo::new(d, c.chemistry, c.repeat_after);
                if d.check == Check::Unreachable {
                    r.min_duration = c.unreachable_after;
                    r.derive();
                }
                if let Some(o) = c.rules.get(d.id) {
                    r.apply(d, o);
                }
                r
            })
            .collect();
        Self {
            enabled: c.enabled,
            chemistry: c.chemistry,
            startup_grace: c.startup_grace,
            rules,
        }
    }

    /// `[alerts] enabled`: when false, nothing is raised and active alerts clear.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn chemistry(&self) -> BatteryChemistry {
        self.chemistry
    }

    pub fn startup_grace(&self) -> Duration {
        self.startup_grace
    }

    /// Every rule, enabled or not, in display order.
    pub fn iter(&self) -> impl Iterator<Item = &RuleInfo> {
        self.rules.iter()
    }

    pub fn get(&self, id: &str) -> Option<&RuleInfo> {
        self.rules.iter().find(|r| r.id == id)
    }

    /// Sets a rule's threshold (a Home Assistant number entity, or a
    /// persisted edit re-applied at start); the clear threshold moves with
    /// it, keeping the hysteresis.
    pub fn set_threshold(&mut self, id: &str, value: f64) -> Result<(), AlertError> {
        let d = def(id).ok_or_else(|| AlertError::UnknownRule(id.to_owned()))?;
        threshold_ok(d, value)?;
        let rule = self
            .rules
            .iter_mut()
            .find(|r| r.id == id)
            .ok_or_else(|| AlertError::UnknownRule(id.to_owned()))?;
        rule.threshold = Some(value);
        rule.derive();
        Ok(())
    }

    /// Families with at least one enabled rule, in display order; none
    /// when alerts are disabled.
    pub fn families(&self) -> Vec<&'static str> {
        FAMILIES
            .iter()
            .copied()
            .filter(|f| self.enabled && self.rules.iter().any(|r| r.enabled && r.family == *f))
            .collect()
    }
}
