//! The overload balancer of one inverter: which plugs to switch off so that
//! the inverter (off-grid) or the pass-through relay and breaker (on-grid)
//! are not overloaded, and when to switch them back on. The original app's
//! PV-deficit auto-off runs in the same controller as a second constraint,
//! so both share ordering, minimum on/off times and reporting.
//!
//! Pure: [`tick`] maps (snapshot, configuration, state, now) to switch
//! actions, the next state and a status. Nothing here reads a clock or
//! talks to a device, so a fake clock drives every test. The caller
//! executes the actions (and retries failed commands), persists
//! [`BalancerState::persisted`] whenever [`Decision::persist`] is set, and
//! publishes [`Status`].
//!
//! Time is a [`Timestamp`]: wall-clock milliseconds since the Unix epoch,
//! not a monotonic instant, because shed times are persisted and must mean
//! the same after a restart (min-off counts from the persisted time). A
//! clock that steps backwards makes ages saturate at zero, which can only
//! delay actions, never hasten them.
//!
//! The rules and their sources are in `specs/balancer.md` §5.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::PlugConfig;
use crate::model::{PlugMode, SwitchState};

/// Plugs drawing less than this are not shed for overload: nothing to gain.
const MIN_SHED_GAIN_W: f64 = 10.0;
/// Relay plugs and compressors need a pause however the plug is configured
/// (the original's 60 s toggle interval; Tapo's compressor warning).
const MIN_OFF_FLOOR: Duration = Duration::from_secs(60);
/// Shed again this soon after a restore counts as a flap.
const FLAP_WINDOW: Duration = Duration::from_secs(600);
/// Each flap doubles the plug's min-off, up to this.
const FLAP_MIN_OFF_CAP: Duration = Duration::from_secs(3600);
/// A plug that has not been shed for this long starts again from its own min-off.
const FLAP_QUIET: Duration = Duration::from_secs(24 * 3600);
/// Fresh inverter samples needed after start before anything is switched:
/// one sample cannot show that a condition has held.
const STARTUP_SAMPLES: u32 = 2;
/// Bounds the sample history whatever the poll rate.
const WINDOW_CAP: usize = 4096;
/// 2^16 × min-off is far above the cap; stops the shift overflowing.
const MAX_DOUBLINGS: u32 = 16;

pub use crate::model::Timestamp;

mod controller;

pub use controller::tick;

/// What the balancer needs to know about one plug from its configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PlugPolicy {
    pub id: String,
    /// Lower is shed first and restored last.
    pub priority: i32,
    /// `false`: the balancer never touches the plug.
    pub sheddable: bool,
    /// Used when the plug has no live reading (P100) or was idle.
    pub nominal_w: Option<f64>,
    pub min_on: Duration,
    pub min_off: Duration,
    pub failsafe_shed: bool,
    pub pv_deficit_off: bool,
}

impl From<&PlugConfig> for PlugPolicy {
    fn from(p: &PlugConfig) -> Self {
        Self {
            id: p.id.clone(),
            priority: p.priority,
            sheddable: p.sheddable,
            nominal_w: p.nominal_w,
            min_on: p.min_on,
            min_off: p.min_off,
            failsafe_shed: p.failsafe_shed,
            pv_deficit_off: p.pv_deficit_off,
        }
    }
}

/// The plugs that protect `inverter`; a plug without `inverter` is left alone.
pub fn policies_for(plugs: &[PlugConfig], inverter: &str) -> Vec<PlugPolicy> {
    plugs
        .iter()
        .filter(|p| p.inverter.as_deref() == Some(inverter))
        .map(PlugPolicy::from)
        .collect()
}

/// One reading of the inverter. Powers in W, as the Deye driver decodes them.
#[derive(Debug, Clone, PartialEq)]
pub struct InverterSnapshot {
    /// When the registers were read; the same sample passed twice counts once.
    pub sample_time: Timestamp,
    /// Registers 16–17.
    pub rated_w: f64,
    /// Register 175, inverter AC output.
    pub ac_output_w: f64,
    /// Register 167, grid-side port.
    pub grid_port_w: f64,
    /// Register 166, generator port.
    pub gen_port_w: f64,
    /// Register 194.
    pub grid_connected: bool,
    pub pv_w: Option<f64>,
    /// House load (register 178), for the PV-deficit rule only: its meaning
    /// depends on CT/load mode, so it never decides an overload.
    pub load_w: Option<f64>,
    /// What the battery may deliver (BMS continuous discharge current × pack
    /// voltage × inverter efficiency), when known.
    pub bms_discharge_limit_w: Option<f64>,
    /// The inverter reports an overload fault (F18/F34): shed without delay.
    pub overload_fault: bool,
}

impl InverterSnapshot {
    /// Power through the LOAD (backup) port (`deye-registers.md`).
    pub fn load_port_w(&self) -> f64 {
        self.ac_output_w + self.grid_port_w - self.gen_port_w
    }
}

/// One plug as last seen by its driver.
#[derive(Debug, Clone, PartialEq)]
pub struct PlugSnapshot {
    pub id: String,
    pub reachable: bool,
    /// Relay state; `None` until the plug has been read.
    pub on: Option<bool>,
    /// Live reading (P110/P115); `None` without metering.
    pub power_w: Option<f64>,
    /// When `on` and `power_w` were read.
    pub last_seen: Option<Timestamp>,
    pub mode: PlugMode,
    /// The executor is still delivering (or retrying) a command to this
    /// plug, so its reported state is about to change: leave it alone.
    pub command_pending: bool,
}

/// Everything the balancer looks at in one tick.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    /// The latest reading, fresh or not; `None` if there has been none.
    pub inverter: Option<InverterSnapshot>,
    pub plugs: Vec<PlugSnapshot>,
}

/// Why a plug was switched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Overload,
    Emergency,
    Failsafe,
    PvDeficit,
    Restore,
    PvSurplus,
}

impl Reason {
    /// The word in events, logs and the state topics (as serialised).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Overload => "overload",
            Self::Emergency => "emergency",
            Self::Failsafe => "failsafe",
            Self::PvDeficit => "pv_deficit",
            Self::Restore => "restore",
            Self::PvSurplus => "pv_surplus",
        }
    }
}

/// A switch command for the executor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Action {
    pub plug: String,
    pub state: SwitchState,
    pub reason: Reason,
    /// The plug's estimated power (shed) or what it needs (restore).
    pub power_w: f64,
}

/// Something to report once that is not a switch command.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    /// A shed plug was found ON (manual press, power-cut restore): it is the
    /// user's until `until`; only the emergency tier may shed it meanwhile.
    Override { plug: String, until: Timestamp },
}

/// Why an inverter sample was ignored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SampleError {
    #[error("inverter sample ignored: {field} is not a finite number")]
    NotFinite { field: &'static str },
    #[error("inverter sample ignored: rated power {0} W is not positive")]
    BadRating(f64),
}

/// Why a plug is off.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ShedRecord {
    pub since: Timestamp,
    pub reason: Reason,
    /// What it drew just before (or its nominal power): the restore budget.
    pub power_before_w: f64,
}

/// What the balancer remembers about one plug across restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlugState {
    pub shed: Option<ShedRecord>,
    /// Last switch by the balancer or seen in the plug's state.
    pub last_switch_at: Option<Timestamp>,
    pub observed_on: Option<bool>,
    pub restored_at: Option<Timestamp>,
    pub last_shed_at: Option<Timestamp>,
    pub override_until: Option<Timestamp>,
    /// Flaps since the last quiet day; each doubles the min-off.
    pub reshed_count: u32,
}

/// The part of [`BalancerState`] written to disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PersistedState {
    /// The user's switch (Home Assistant); `balancer.enabled` must also be set.
    pub enabled: bool,
    pub last_shed_at: Option<Timestamp>,
    pub last_restore_at: Option<Timestamp>,
    pub plugs: BTreeMap<String, PlugState>,
}

impl Default for PersistedState {
    fn default() -> Self {
        Self {
            enabled: true,
            last_shed_at: None,
            last_restore_at: None,
            plugs: BTreeMap::new(),
        }
    }
}

/// A sample with the lines derived from its own limit, so that a condition
/// "held" across a grid flip is judged against the limit of each moment.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    t: Timestamp,
    grid_connected: bool,
    measured_w: f64,
    limit_w: f64,
    shed_line_w: f64,
    emergency_line_w: f64,
    restore_line_w: f64,
    pv_w: Option<f64>,
    house_w: Option<f64>,
    fault: bool,
}

impl Sample {
    fn surplus_w(&self) -> Option<f64> {
        Some(self.pv_w? - self.house_w?)
    }
}

/// Per-process memory: start time and recent samples. A restart begins
/// afresh on purpose: nothing is switched on the strength of history the
/// new process has not seen.
#[derive(Debug, Clone, Default, PartialEq)]
struct Runtime {
    started_at: Option<Timestamp>,
    ready: bool,
    fresh_samples: u32,
    window: VecDeque<Sample>,
}

/// Everything [`tick`] carries from one call to the next.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BalancerState {
    persisted: PersistedState,
    runtime: Runtime,
}

impl BalancerState {
    pub fn new() -> Self {
        Self::default()
    }

    /// After a restart: the process start is the next tick's `now`.
    pub fn from_persisted(persisted: PersistedState) -> Self {
        Self {
            persisted,
            runtime: Runtime::default(),
        }
    }

    pub fn persisted(&self) -> &PersistedState {
        &self.persisted
    }

    /// The global switch; the shed set is kept while disabled.
    pub fn set_enabled(&mut self, enabled: bool) {
        self.persisted.enabled = enabled;
    }
}

/// What the balancer is doing, for `<base>/balancer/<inverter>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Idle,
    /// Over the limit, or plugs shed and no room to restore them.
    Shedding,
    /// Plugs shed and room to restore them (waiting for delays or min-off).
    Restoring,
    /// No fresh inverter data (or still starting): nothing is restored.
    Stale,
    /// Inverter data missing for `failsafe_after`: failsafe plugs are shed.
    Failsafe,
    Disabled,
}

impl Phase {
    /// The word in the balancer's state topic and the logs (as serialised).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Shedding => "shedding",
            Self::Restoring => "restoring",
            Self::Stale => "stale",
            Self::Failsafe => "failsafe",
            Self::Disabled => "disabled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShedEntry {
    pub plug: String,
    pub reason: Reason,
    pub since: Timestamp,
    pub power_w: f64,
}

/// The balancer's state for publishing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub state: Phase,
    pub grid_connected: Option<bool>,
    pub limit_w: Option<f64>,
    /// The measured power compared with the limit.
    pub load_w: Option<f64>,
    pub headroom_w: Option<f64>,
    pub shed_count: usize,
    pub shed_power_w: f64,
    pub shed: Vec<ShedEntry>,
    /// Age of the latest inverter sample; `None` before the first.
    pub data_age_ms: Option<u64>,
}

/// The result of one [`tick`].
#[derive(Debug, Clone)]
pub struct Decision {
    pub actions: Vec<Action>,
    pub notices: Vec<Notice>,
    pub status: Status,
    pub state: BalancerState,
    /// The persisted part changed: write it before executing the actions,
    /// so a crash in between cannot forget a shed plug.
    pub persist: bool,
    pub rejected: Option<SampleError>,
}

#[cfg(test)]
mod tests;
