//! The control plane's state on disk (`<storage dir>/control.json`):
//! what is shed and why, modes, the user's limit edits, timers and alert
//! thresholds. Written atomically on every change (see `crate::storage`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::balancer::PersistedState;
use crate::model::PlugMode;
use crate::storage::{Store, StoreError};

pub const FILE: &str = "control";

/// Limits changed from Home Assistant; `None` keeps the configured value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitOverrides {
    pub on_grid_w: Option<f64>,
    pub off_grid_percent: Option<f64>,
}

/// Everything in `control.json`. Unknown and missing keys are tolerated so
/// that an older or newer file still loads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Saved {
    pub balancers: BTreeMap<String, PersistedState>,
    pub limits: BTreeMap<String, LimitOverrides>,
    /// Plugs not in `auto`.
    pub modes: BTreeMap<String, PlugMode>,
    pub timers: crate::core::timers::TimerState,
    /// Alert thresholds changed from Home Assistant, by rule id.
    pub alert_thresholds: BTreeMap<String, f64>,
    /// Active alerts and when each was last notified, so a restart neither
    /// forgets an alert nor notifies it again.
    pub alerts: crate::core::alerts::AlertState,
}

/// Writes `control.json` (atomically; it fsyncs, so not on an async task).
pub fn write(store: &Store, saved: &Saved) -> Result<(), StoreError> {
    store.save(FILE, saved)
}
