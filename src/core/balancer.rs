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

use crate::config::{BalancerConfig, OnGridMeasure, PlugConfig};
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
use crate::model::millis;

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

/// One controller step; call it on every poll and on every fresh sample.
pub fn tick(
    snapshot: &Snapshot,
    config: &BalancerConfig,
    plugs: &[PlugPolicy],
    state: &BalancerState,
    now: Timestamp,
) -> Decision {
    let mut next = state.clone();
    let started = *next.runtime.started_at.get_or_insert(now);
    let rejected = match &snapshot.inverter {
        Some(inv) => next.runtime.ingest(inv, config, started).err(),
        None => None,
    };
    let ctx = Ctx {
        config,
        plugs,
        snaps: snapshot.plugs.iter().map(|p| (p.id.as_str(), p)).collect(),
        now,
        started,
    };

    let mut notices = Vec::new();
    next.persisted
        .plugs
        .retain(|id, _| plugs.iter().any(|p| &p.id == id));
    for policy in plugs {
        observe(&ctx, &mut next.persisted, policy, &mut notices);
    }
    if !next.runtime.ready && next.runtime.fresh_samples >= STARTUP_SAMPLES && ctx.plugs_known() {
        next.runtime.ready = true;
    }

    let mut actions = Vec::new();
    let phase = decide(&ctx, &mut next, &mut actions);
    let status = status(&ctx, &next, phase);
    let persist = next.persisted != state.persisted;
    Decision {
        actions,
        notices,
        status,
        state: next,
        persist,
        rejected,
    }
}

struct Ctx<'a> {
    config: &'a BalancerConfig,
    plugs: &'a [PlugPolicy],
    snaps: BTreeMap<&'a str, &'a PlugSnapshot>,
    now: Timestamp,
    started: Timestamp,
}

impl Ctx<'_> {
    /// A plug whose reported state can be acted upon.
    fn live(&self, id: &str) -> Option<&PlugSnapshot> {
        self.snaps
            .get(id)
            .copied()
            .filter(|s| s.reachable && !s.command_pending && s.on.is_some())
    }

    /// Every plug read since start; a plug that stays silent is not waited
    /// for beyond `failsafe_after` (it is simply never switched).
    fn plugs_known(&self) -> bool {
        self.now.since(self.started) >= self.config.failsafe_after
            || self.plugs.iter().all(|p| {
                self.live(&p.id)
                    .is_some_and(|s| s.last_seen.is_some_and(|t| t >= self.started))
            })
    }
}

impl Runtime {
    fn ingest(
        &mut self,
        inv: &InverterSnapshot,
        config: &BalancerConfig,
        started: Timestamp,
    ) -> Result<(), SampleError> {
        for (field, v) in [
            ("rated_w", Some(inv.rated_w)),
            ("ac_output_w", Some(inv.ac_output_w)),
            ("grid_port_w", Some(inv.grid_port_w)),
            ("gen_port_w", Some(inv.gen_port_w)),
            ("pv_w", inv.pv_w),
            ("load_w", inv.load_w),
            ("bms_discharge_limit_w", inv.bms_discharge_limit_w),
        ] {
            if v.is_some_and(|v| !v.is_finite()) {
                return Err(SampleError::NotFinite { field });
            }
        }
        if inv.rated_w <= 0.0 {
            return Err(SampleError::BadRating(inv.rated_w));
        }
        if self.window.back().is_some_and(|s| inv.sample_time <= s.t) {
            return Ok(());
        }
        let (limit_w, measured_w) = if inv.grid_connected {
            let measured = match config.on_grid_measure {
                OnGridMeasure::LoadPort => inv.load_port_w(),
                OnGridMeasure::InverterOutput => inv.ac_output_w,
                OnGridMeasure::HouseLoad => inv.load_w.unwrap_or_else(|| inv.load_port_w()),
            };
            (config.on_grid_w, measured)
        } else {
            // Off-grid the battery may be the tighter limit; PV feeds the
            // AC side directly, so it adds to what the battery may give.
            let inverter_w = inv.rated_w * config.off_grid_percent / 100.0;
            let limit = match inv.bms_discharge_limit_w {
                Some(bms) => inverter_w.min(bms.max(0.0) + inv.pv_w.unwrap_or(0.0).max(0.0)),
                None => inverter_w,
            };
            (limit, inv.ac_output_w)
        };
        let line = |percent: f64| limit_w * percent / 100.0;
        let sample = Sample {
            t: inv.sample_time,
            grid_connected: inv.grid_connected,
            measured_w,
            limit_w,
            shed_line_w: line(config.shed_at_percent),
            emergency_line_w: line(config.emergency_percent),
            restore_line_w: line(config.restore_below_percent),
            pv_w: inv.pv_w,
            house_w: inv.load_w,
            fault: inv.overload_fault,
        };
        self.window.push_back(sample);
        if sample.t >= started {
            self.fresh_samples = self.fresh_samples.saturating_add(1);
        }
        let keep = config
            .shed_delay
            .max(config.restore_delay)
            .max(config.pv_deficit_after);
        // Keep one sample at or before the horizon: it proves that a
        // condition has held for the whole delay.
        while self.window.len() > 1
            && (self.window.len() > WINDOW_CAP
                || self
                    .window
                    .get(1)
                    .is_some_and(|s| sample.t.since(s.t) >= keep))
        {
            self.window.pop_front();
        }
        Ok(())
    }
}

/// `pred` held on every sample for at least `delay`, counting only samples
/// taken after `after` (so that a switch is followed by a fresh measurement).
fn held(
    window: &VecDeque<Sample>,
    delay: Duration,
    after: Option<Timestamp>,
    pred: impl Fn(&Sample) -> bool,
) -> bool {
    let Some(latest) = window.back() else {
        return false;
    };
    for s in window.iter().rev() {
        if after.is_some_and(|a| s.t <= a) || !pred(s) {
            return false;
        }
        if latest.t.since(s.t) >= delay {
            return true;
        }
    }
    false
}

/// Mean room under the restore line over the last `delay` (the slow,
/// optimistic signal of the spec, used only as a restore budget).
fn mean_room(window: &VecDeque<Sample>, delay: Duration, after: Option<Timestamp>) -> Option<f64> {
    let latest = window.back()?;
    let (sum, n) = window
        .iter()
        .filter(|s| latest.t.since(s.t) <= delay && after.is_none_or(|a| s.t > a))
        .fold((0.0, 0u32), |(sum, n), s| {
            (sum + s.restore_line_w - s.measured_w, n + 1)
        });
    (n > 0).then(|| sum / f64::from(n))
}

fn settled(last: Option<Timestamp>, now: Timestamp, wait: Duration) -> bool {
    last.is_none_or(|t| now.since(t) >= wait)
}

fn estimate_w(policy: &PlugPolicy, snap: &PlugSnapshot) -> Option<f64> {
    snap.power_w
        .filter(|w| w.is_finite())
        .map(|w| w.max(0.0))
        .or(policy.nominal_w.filter(|w| w.is_finite()))
}

fn effective_min_off(policy: &PlugPolicy, ps: &PlugState) -> Duration {
    let base = policy.min_off.max(MIN_OFF_FLOOR);
    let doubled = base.saturating_mul(1u32 << ps.reshed_count.min(MAX_DOUBLINGS));
    doubled.min(FLAP_MIN_OFF_CAP.max(base))
}

/// Takes in what the plug reports: manual switches, overrides, locks.
fn observe(ctx: &Ctx, st: &mut PersistedState, policy: &PlugPolicy, notices: &mut Vec<Notice>) {
    let now = ctx.now;
    let ps = st.plugs.entry(policy.id.clone()).or_default();
    if ps.override_until.is_some_and(|u| u <= now) {
        ps.override_until = None;
    }
    if ps.reshed_count > 0 && ps.last_shed_at.is_none_or(|t| now.since(t) >= FLAP_QUIET) {
        ps.reshed_count = 0;
    }
    let Some(snap) = ctx.live(&policy.id) else {
        return;
    };
    let Some(on) = snap.on else {
        return;
    };
    if ps.observed_on.is_some_and(|was| was != on) {
        // Ours or the user's: min-on and min-off protect the appliance
        // either way. Never earlier than our own command's time.
        ps.last_switch_at = Some(ps.last_switch_at.map_or(now, |t| t.max(now)));
    }
    ps.observed_on = Some(on);
    if snap.mode != PlugMode::Auto {
        // A lock hands the plug to the user: the balancer will not restore it.
        ps.shed = None;
        return;
    }
    let Some(rec) = ps.shed else {
        return;
    };
    // Only a reading taken after the shed shows the user's hand; an older
    // one still shows the state before our command.
    if on && snap.last_seen.is_some_and(|t| t > rec.since) {
        ps.shed = None;
        let until = now.plus(ctx.config.override_window);
        ps.override_until = Some(until);
        notices.push(Notice::Override {
            plug: policy.id.clone(),
            until,
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    Overload,
    Emergency,
    Failsafe,
    PvDeficit,
}

struct Candidate<'a> {
    policy: &'a PlugPolicy,
    power_w: f64,
}

/// Plugs that may be shed in `tier`, in shedding order.
fn shed_candidates<'a>(ctx: &Ctx<'a>, st: &PersistedState, tier: Tier) -> Vec<Candidate<'a>> {
    let mut out = Vec::new();
    for policy in ctx.plugs {
        if !policy.sheddable
            || (tier == Tier::Failsafe && !policy.failsafe_shed)
            || (tier == Tier::PvDeficit && !policy.pv_deficit_off)
        {
            continue;
        }
        let Some(snap) = ctx.live(&policy.id) else {
            continue;
        };
        if snap.on != Some(true) || snap.mode != PlugMode::Auto {
            continue;
        }
        let ps = st.plugs.get(&policy.id);
        if ps.is_some_and(|s| s.shed.is_some()) {
            continue;
        }
        if tier != Tier::Emergency {
            let overridden = ps
                .and_then(|s| s.override_until)
                .is_some_and(|u| u > ctx.now);
            let too_young = ps
                .and_then(|s| s.last_switch_at)
                .is_some_and(|t| ctx.now.since(t) < policy.min_on);
            if overridden || too_young {
                continue;
            }
        }
        let estimate = estimate_w(policy, snap);
        // Failsafe and PV deficit are not about the watts saved now: an idle
        // plug may start drawing at any moment.
        if matches!(tier, Tier::Overload | Tier::Emergency)
            && estimate.is_some_and(|w| w < MIN_SHED_GAIN_W)
        {
            continue;
        }
        out.push(Candidate {
            policy,
            power_w: estimate.unwrap_or(0.0),
        });
    }
    out.sort_by(|a, b| {
        a.policy
            .priority
            .cmp(&b.policy.priority)
            .then(b.power_w.total_cmp(&a.power_w))
            .then_with(|| a.policy.id.cmp(&b.policy.id))
    });
    out
}

struct RestoreCandidate<'a> {
    policy: &'a PlugPolicy,
    need_w: f64,
    reason: Reason,
}

/// Shed plugs whose min-off has passed, most important first.
fn restore_candidates<'a>(ctx: &Ctx<'a>, st: &PersistedState) -> Vec<RestoreCandidate<'a>> {
    let mut out = Vec::new();
    for policy in ctx.plugs {
        let Some(ps) = st.plugs.get(&policy.id) else {
            continue;
        };
        let Some(rec) = ps.shed else {
            continue;
        };
        let Some(snap) = ctx.live(&policy.id) else {
            continue;
        };
        if snap.on != Some(false)
            || snap.mode != PlugMode::Auto
            || ctx.now.since(rec.since) < effective_min_off(policy, ps)
        {
            continue;
        }
        out.push(RestoreCandidate {
            policy,
            need_w: rec.power_before_w.max(policy.nominal_w.unwrap_or(0.0)),
            reason: rec.reason,
        });
    }
    out.sort_by(|a, b| {
        b.policy
            .priority
            .cmp(&a.policy.priority)
            .then(a.need_w.total_cmp(&b.need_w))
            .then_with(|| a.policy.id.cmp(&b.policy.id))
    });
    out
}

fn shed(
    st: &mut PersistedState,
    c: &Candidate,
    reason: Reason,
    now: Timestamp,
    actions: &mut Vec<Action>,
) {
    let ps = st.plugs.entry(c.policy.id.clone()).or_default();
    if ps.restored_at.is_some_and(|r| now.since(r) < FLAP_WINDOW) {
        ps.reshed_count = (ps.reshed_count + 1).min(MAX_DOUBLINGS);
    }
    ps.shed = Some(ShedRecord {
        since: now,
        reason,
        power_before_w: c.power_w,
    });
    ps.last_shed_at = Some(now);
    ps.last_switch_at = Some(now);
    ps.override_until = None;
    st.last_shed_at = Some(now);
    actions.push(Action {
        plug: c.policy.id.clone(),
        state: SwitchState::Off,
        reason,
        power_w: c.power_w,
    });
}

fn restore(
    st: &mut PersistedState,
    c: &RestoreCandidate,
    reason: Reason,
    now: Timestamp,
    actions: &mut Vec<Action>,
) {
    let ps = st.plugs.entry(c.policy.id.clone()).or_default();
    ps.shed = None;
    ps.restored_at = Some(now);
    ps.last_switch_at = Some(now);
    st.last_restore_at = Some(now);
    actions.push(Action {
        plug: c.policy.id.clone(),
        state: SwitchState::On,
        reason,
        power_w: c.need_w,
    });
}

fn decide(ctx: &Ctx, next: &mut BalancerState, actions: &mut Vec<Action>) -> Phase {
    let cfg = ctx.config;
    let now = ctx.now;
    if !(cfg.enabled && next.persisted.enabled) {
        return Phase::Disabled;
    }
    let window = &next.runtime.window;
    let st = &mut next.persisted;
    let age = match window.back() {
        Some(s) => now.since(s.t),
        None => now.since(ctx.started),
    };

    if age > cfg.failsafe_after {
        if settled(st.last_shed_at, now, cfg.settle_after_shed) {
            if let Some(c) = shed_candidates(ctx, st, Tier::Failsafe).first() {
                shed(st, c, Reason::Failsafe, now, actions);
            }
        }
        return Phase::Failsafe;
    }
    let latest = match window.back() {
        Some(s) if next.runtime.ready && age <= cfg.stale_after => *s,
        _ => return Phase::Stale,
    };

    // A shed shows in the next sample, not in the one it was based on.
    let fresh_since_shed = st.last_shed_at.is_none_or(|t| latest.t > t);
    let over = latest.measured_w > latest.shed_line_w;
    let mut shed_now = false;
    if latest.measured_w > latest.emergency_line_w {
        if fresh_since_shed {
            let excess = latest.measured_w - latest.restore_line_w;
            let mut covered = 0.0;
            for c in shed_candidates(ctx, st, Tier::Emergency) {
                if covered >= excess {
                    break;
                }
                covered += c.power_w;
                shed(st, &c, Reason::Emergency, now, actions);
                shed_now = true;
            }
        }
    } else {
        let delay = if latest.fault {
            Duration::ZERO
        } else {
            cfg.shed_delay
        };
        if fresh_since_shed
            && settled(st.last_shed_at, now, cfg.settle_after_shed)
            && held(window, delay, None, |s| s.measured_w > s.shed_line_w)
        {
            if let Some(c) = shed_candidates(ctx, st, Tier::Overload).first() {
                shed(st, c, Reason::Overload, now, actions);
                shed_now = true;
            }
        }
    }

    let deficit = |s: &Sample| s.surplus_w().is_some_and(|x| x < 0.0);
    let deficit_held = held(window, cfg.pv_deficit_after, None, deficit);
    if !shed_now
        && !over
        && deficit_held
        && fresh_since_shed
        && settled(st.last_shed_at, now, cfg.settle_after_shed)
    {
        if let Some(c) = shed_candidates(ctx, st, Tier::PvDeficit).first() {
            shed(st, c, Reason::PvDeficit, now, actions);
            shed_now = true;
        }
    }

    let mut restored = false;
    let last_action = st.last_shed_at.max(st.last_restore_at);
    if !shed_now
        && !over
        && settled(st.last_shed_at, now, cfg.settle_after_shed)
        && settled(st.last_restore_at, now, cfg.settle_after_restore)
        && held(window, cfg.restore_delay, last_action, |s| {
            s.measured_w < s.restore_line_w
        })
    {
        let room = mean_room(window, cfg.restore_delay, last_action).unwrap_or(0.0);
        for c in restore_candidates(ctx, st) {
            if c.need_w > room {
                continue;
            }
            let reason = if c.reason == Reason::PvDeficit {
                let surplus = |s: &Sample| s.surplus_w().is_some_and(|x| x >= c.need_w);
                if !held(window, cfg.restore_delay, last_action, surplus) {
                    continue;
                }
                Reason::PvSurplus
            } else {
                // It would only be switched off again by the PV rule.
                if c.policy.pv_deficit_off && deficit_held {
                    continue;
                }
                Reason::Restore
            };
            restore(st, &c, reason, now, actions);
            restored = true;
            break;
        }
    }

    let any_shed = st.plugs.values().any(|p| p.shed.is_some());
    if shed_now || over {
        Phase::Shedding
    } else if restored || (any_shed && latest.measured_w < latest.restore_line_w) {
        Phase::Restoring
    } else if any_shed {
        Phase::Shedding
    } else {
        Phase::Idle
    }
}

fn status(ctx: &Ctx, next: &BalancerState, phase: Phase) -> Status {
    let latest = next.runtime.window.back();
    let mut shed: Vec<ShedEntry> = next
        .persisted
        .plugs
        .iter()
        .filter_map(|(id, p)| {
            p.shed.map(|r| ShedEntry {
                plug: id.clone(),
                reason: r.reason,
                since: r.since,
                power_w: r.power_before_w,
            })
        })
        .collect();
    shed.sort_by(|a, b| a.since.cmp(&b.since).then_with(|| a.plug.cmp(&b.plug)));
    Status {
        state: phase,
        grid_connected: latest.map(|s| s.grid_connected),
        limit_w: latest.map(|s| s.limit_w),
        load_w: latest.map(|s| s.measured_w),
        headroom_w: latest.map(|s| s.limit_w - s.measured_w),
        shed_count: shed.len(),
        shed_power_w: shed.iter().map(|e| e.power_w).sum(),
        shed,
        data_age_ms: latest.map(|s| millis(ctx.now.since(s.t))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TICK: Duration = Duration::from_secs(5);
    const T0: u64 = 1_700_000_000_000;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Seconds since the start of the scenario.
    fn at(t: Timestamp) -> u64 {
        (t.0 - T0) / 1000
    }

    fn policy(id: &str, priority: i32) -> PlugPolicy {
        PlugPolicy {
            id: id.into(),
            priority,
            sheddable: true,
            nominal_w: None,
            min_on: secs(60),
            min_off: secs(300),
            failsafe_shed: false,
            pv_deficit_off: false,
        }
    }

    #[derive(Debug, Clone)]
    struct FakePlug {
        policy: PlugPolicy,
        on: bool,
        draw_w: f64,
        mode: PlugMode,
        reachable: bool,
    }

    fn plug(id: &str, priority: i32, draw_w: f64) -> FakePlug {
        FakePlug {
            policy: policy(id, priority),
            on: true,
            draw_w,
            mode: PlugMode::Auto,
            reachable: true,
        }
    }

    /// A simulated house: the inverter measures the base load plus every
    /// plug that is on; actions take effect at once.
    struct House {
        cfg: BalancerConfig,
        plugs: Vec<FakePlug>,
        base_w: f64,
        grid: bool,
        rated_w: f64,
        pv_w: Option<f64>,
        bms_w: Option<f64>,
        feed: bool,
        last_inv: Option<InverterSnapshot>,
        now: Timestamp,
        state: BalancerState,
        log: Vec<(Timestamp, Action)>,
        notices: Vec<(Timestamp, Notice)>,
        last: Option<Decision>,
    }

    impl House {
        fn new(plugs: Vec<FakePlug>, base_w: f64) -> Self {
            Self {
                cfg: BalancerConfig::default(),
                plugs,
                base_w,
                grid: true,
                rated_w: 6000.0,
                pv_w: None,
                bms_w: None,
                feed: true,
                last_inv: None,
                now: Timestamp(T0),
                state: BalancerState::new(),
                log: Vec::new(),
                notices: Vec::new(),
                last: None,
            }
        }

        fn total_w(&self) -> f64 {
            self.base_w
                + self
                    .plugs
                    .iter()
                    .filter(|p| p.on)
                    .map(|p| p.draw_w)
                    .sum::<f64>()
        }

        fn policies(&self) -> Vec<PlugPolicy> {
            self.plugs.iter().map(|p| p.policy.clone()).collect()
        }

        fn plug_mut(&mut self, id: &str) -> &mut FakePlug {
            self.plugs
                .iter_mut()
                .find(|p| p.policy.id == id)
                .expect("plug in scenario")
        }

        fn snapshot(&mut self) -> Snapshot {
            if self.feed {
                let total = self.total_w();
                let (ac, grid_port) = if self.grid {
                    let ac = total.min(self.rated_w);
                    (ac, total - ac)
                } else {
                    (total, 0.0)
                };
                self.last_inv = Some(InverterSnapshot {
                    sample_time: self.now,
                    rated_w: self.rated_w,
                    ac_output_w: ac,
                    grid_port_w: grid_port,
                    gen_port_w: 0.0,
                    grid_connected: self.grid,
                    pv_w: self.pv_w,
                    load_w: Some(total),
                    bms_discharge_limit_w: self.bms_w,
                    overload_fault: false,
                });
            }
            Snapshot {
                inverter: self.last_inv.clone(),
                plugs: self
                    .plugs
                    .iter()
                    .map(|p| PlugSnapshot {
                        id: p.policy.id.clone(),
                        reachable: p.reachable,
                        on: Some(p.on),
                        power_w: Some(if p.on { p.draw_w } else { 0.0 }),
                        last_seen: Some(self.now),
                        mode: p.mode,
                        command_pending: false,
                    })
                    .collect(),
            }
        }

        fn tick(&mut self) {
            let snap = self.snapshot();
            let d = tick(&snap, &self.cfg, &self.policies(), &self.state, self.now);
            for a in &d.actions {
                let on = a.state == SwitchState::On;
                self.plug_mut(&a.plug).on = on;
                self.log.push((self.now, a.clone()));
            }
            for n in &d.notices {
                self.notices.push((self.now, n.clone()));
            }
            self.state = d.state.clone();
            self.last = Some(d);
        }

        fn step(&mut self) {
            self.now = self.now.plus(TICK);
            self.tick();
        }

        fn run(&mut self, d: Duration) {
            let end = self.now.plus(d);
            while self.now < end {
                self.step();
            }
        }

        fn run_until(&mut self, d: Duration, mut stop: impl FnMut(&Self) -> bool) -> bool {
            let end = self.now.plus(d);
            while self.now < end {
                self.step();
                if stop(self) {
                    return true;
                }
            }
            false
        }

        fn status(&self) -> &Status {
            &self.last.as_ref().expect("ticked").status
        }

        fn actions_for(&self, id: &str) -> Vec<(u64, SwitchState, Reason)> {
            self.log
                .iter()
                .filter(|(_, a)| a.plug == id)
                .map(|(t, a)| (at(*t), a.state, a.reason))
                .collect()
        }

        fn commands(&self) -> usize {
            self.log.len()
        }
    }

    use Reason::*;
    use SwitchState::{Off, On};

    #[test]
    fn overload_step_sheds_the_lowest_priority_once_and_restores_after_min_off() {
        let mut h = House::new(
            vec![plug("boiler", 10, 1200.0), plug("heater", 20, 1500.0)],
            5000.0,
        );
        h.run(secs(120));
        // 7700 W > 7400 W: one plug, the least important, after shed_delay.
        assert_eq!(h.actions_for("boiler"), vec![(10, Off, Overload)]);
        assert_eq!(h.commands(), 1);
        assert_eq!(h.status().state, Phase::Shedding);
        assert_eq!(h.status().shed_count, 1);
        assert_eq!(h.status().shed_power_w, 1200.0);
        assert_eq!(h.status().limit_w, Some(7400.0));
        assert_eq!(h.status().headroom_w, Some(900.0));

        // Room, but not for the boiler under 85 %: 5200 + 1200 > 6290.
        h.base_w = 3700.0;
        h.run(secs(600));
        assert_eq!(h.commands(), 1);
        assert_eq!(h.status().state, Phase::Restoring);

        h.base_w = 3000.0;
        h.run(secs(600));
        let boiler = h.actions_for("boiler");
        assert_eq!(boiler.len(), 2);
        assert_eq!((boiler[1].1, boiler[1].2), (On, Restore));
        assert!(boiler[1].0 >= 10 + 300, "restored at {}", boiler[1].0);
        assert_eq!(h.commands(), 2);
        assert_eq!(h.status().state, Phase::Idle);
    }

    #[test]
    fn slow_ramp_sheds_one_plug_per_step_in_priority_order() {
        let mut h = House::new(
            vec![
                plug("a", 1, 1000.0),
                plug("b", 2, 1000.0),
                plug("c", 3, 1000.0),
            ],
            4000.0,
        );
        h.tick();
        let mut peak: f64 = 0.0;
        for _ in 0..120 {
            h.base_w += 25.0;
            h.step();
            peak = peak.max(h.total_w());
        }
        let order: Vec<_> = h
            .log
            .iter()
            .map(|(t, a)| (a.plug.as_str(), a.reason, at(*t)))
            .collect();
        assert_eq!(order.len(), 3, "{order:?}");
        assert_eq!(
            order.iter().map(|o| o.0).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert!(order.iter().all(|o| o.1 == Overload));
        for w in order.windows(2) {
            assert!(w[1].2 - w[0].2 >= 10, "{order:?}");
        }
        assert!(
            peak < 8140.0,
            "a slow ramp never reaches the emergency tier: {peak}"
        );
    }

    #[test]
    fn oscillation_around_the_limit_does_not_flap() {
        // Every other sample over the limit: never held for shed_delay.
        let mut h = House::new(vec![plug("boiler", 10, 1000.0)], 6350.0);
        for i in 0..720 {
            h.base_w = if i % 2 == 0 { 6350.0 } else { 6450.0 };
            h.step();
        }
        assert_eq!(h.commands(), 0);

        // Slow swings between the shed and restore lines: one shed, no restore.
        let mut h = House::new(vec![plug("boiler", 10, 1000.0)], 6600.0);
        for i in 0..720 {
            h.base_w = if (i / 6) % 2 == 0 { 6600.0 } else { 6000.0 };
            h.step();
        }
        assert_eq!(h.actions_for("boiler"), vec![(10, Off, Overload)]);

        // Swings across both lines: the anti-flap backoff stretches min-off.
        let mut h = House::new(vec![plug("boiler", 10, 1000.0)], 6800.0);
        for i in 0..(3 * 720) {
            // 2 min at 7800 W, 10 min at 5800 W.
            h.base_w = if i % 144 < 24 { 6800.0 } else { 4800.0 };
            h.step();
        }
        let acts = h.actions_for("boiler");
        // Without backoff: two commands per 12-minute cycle, 30 in 3 h.
        assert!(acts.len() <= 12, "{} commands: {acts:?}", acts.len());
        for w in acts.windows(2) {
            if w[0].1 == Off {
                assert!(w[1].0 - w[0].0 >= 300, "{acts:?}");
            }
        }
        assert!(h.state.persisted().plugs["boiler"].reshed_count >= 3);
        // The gaps between a shed and the next restore grow.
        let gaps: Vec<u64> = acts
            .windows(2)
            .filter(|w| w[0].1 == Off && w[1].1 == On)
            .map(|w| w[1].0 - w[0].0)
            .collect();
        assert!(gaps.last() > gaps.first(), "{gaps:?}");
    }

    #[test]
    fn stale_feed_freezes_restores_then_failsafe_sheds_marked_plugs() {
        let mut boiler = plug("boiler", 10, 2000.0);
        boiler.policy.failsafe_shed = true;
        let mut heater = plug("heater", 20, 1500.0);
        heater.policy.failsafe_shed = true;
        let fridge = plug("fridge", 30, 150.0);
        let mut h = House::new(vec![boiler, heater, fridge], 4300.0);
        h.run(secs(60));
        assert_eq!(h.actions_for("boiler"), vec![(10, Off, Overload)]);

        // The feed dies with the load low: the boiler's min-off passes, but
        // nothing is restored on stale data.
        h.base_w = 1000.0;
        h.feed = false;
        h.run(secs(15));
        assert_eq!(h.status().state, Phase::Restoring);
        h.run(secs(5));
        assert_eq!(h.status().state, Phase::Stale);
        h.run(secs(40));
        assert_eq!(h.status().state, Phase::Stale);
        h.run(secs(5));
        assert_eq!(h.status().state, Phase::Failsafe);
        assert_eq!(h.actions_for("heater"), vec![(125, Off, Failsafe)]);
        h.run(secs(600));
        assert!(h.actions_for("fridge").is_empty());
        assert_eq!(h.commands(), 2, "{:?}", h.log);
        assert!(h.log.iter().all(|(_, a)| a.state == Off));

        // Fresh data again: both come back, most important first, one per settle.
        h.feed = true;
        h.run(secs(300));
        let heater = h.actions_for("heater");
        let boiler = h.actions_for("boiler");
        assert_eq!((heater[1].1, heater[1].2), (On, Restore));
        assert_eq!((boiler[1].1, boiler[1].2), (On, Restore));
        assert!(boiler[1].0 - heater[1].0 >= 60);
        assert_eq!(h.status().state, Phase::Idle);
    }

    #[test]
    fn grid_loss_lowers_the_limit_at_once() {
        let mut h = House::new(
            vec![plug("boiler", 10, 1200.0), plug("heater", 20, 800.0)],
            3800.0,
        );
        h.run(secs(60));
        assert_eq!(h.commands(), 0);
        assert_eq!(h.status().limit_w, Some(7400.0));

        // Blackout: 90 % of 6000 W; 5800 W is over it (but under 110 %).
        h.grid = false;
        h.step();
        assert_eq!(h.status().limit_w, Some(5400.0));
        assert_eq!(h.status().grid_connected, Some(false));
        assert_eq!(h.status().state, Phase::Shedding);
        assert_eq!(
            h.commands(),
            0,
            "shed_delay still applies below the emergency tier"
        );
        h.step();
        assert_eq!(h.actions_for("boiler"), vec![(70, Off, Overload)]);

        // A weak battery is the tighter limit: 4000 W, and 4600 W is over 110 % of it.
        h.bms_w = Some(4000.0);
        h.pv_w = Some(0.0);
        h.step();
        assert_eq!(h.status().limit_w, Some(4000.0));
        assert_eq!(h.actions_for("heater"), vec![(75, Off, Emergency)]);

        // PV adds to what the battery may give.
        h.pv_w = Some(1000.0);
        h.step();
        assert_eq!(h.status().limit_w, Some(5000.0));

        // Grid back: the on-grid limit, and both return in time.
        h.grid = true;
        h.run(secs(900));
        assert_eq!(h.status().limit_w, Some(7400.0));
        assert_eq!(h.actions_for("boiler").len(), 2);
        assert_eq!(h.actions_for("heater").len(), 2);
    }

    #[test]
    fn restart_with_a_persisted_shed_set_counts_min_off_from_the_persisted_time() {
        let mut h = House::new(
            vec![plug("boiler", 10, 2000.0), plug("heater", 20, 1500.0)],
            6000.0,
        );
        h.run(secs(10));
        assert_eq!(h.actions_for("boiler"), vec![(10, Off, Emergency)]);
        assert_eq!(h.actions_for("heater"), vec![(10, Off, Emergency)]);
        h.run(secs(110));

        // kill -9 at 120 s; the JSON on disk is all that survives.
        let json = serde_json::to_string(h.state.persisted()).expect("serialize");
        let persisted: PersistedState = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(&persisted, h.state.persisted());
        h.state = BalancerState::from_persisted(persisted);
        h.log.clear();
        // Meanwhile someone pressed the heater's button; the load is low.
        h.plug_mut("heater").on = true;
        h.base_w = 2000.0;

        h.step();
        assert!(h.last.as_ref().is_some_and(|d| d.actions.is_empty()));
        assert_eq!(
            h.status().state,
            Phase::Stale,
            "waits for two fresh samples"
        );
        assert_eq!(h.notices.len(), 1);
        assert!(matches!(&h.notices[0].1, Notice::Override { plug, .. } if plug == "heater"));
        assert!(h.state.persisted().plugs["heater"].override_until.is_some());

        h.run(secs(600));
        assert_eq!(h.notices.len(), 1, "reported once");
        assert!(
            h.actions_for("heater").is_empty(),
            "the user's ON is respected"
        );
        let boiler = h.actions_for("boiler");
        assert_eq!(boiler.len(), 1, "{boiler:?}");
        assert_eq!((boiler[0].1, boiler[0].2), (On, Restore));
        // min_off 300 s from the persisted shed at 10 s, not from the restart.
        assert!((310..=330).contains(&boiler[0].0), "{boiler:?}");
    }

    #[test]
    fn manual_lock_and_override_during_an_overload() {
        let mut big = plug("big", 0, 3000.0);
        big.mode = PlugMode::On;
        let mut h = House::new(
            vec![big, plug("boiler", 10, 1500.0), plug("heater", 20, 1000.0)],
            2500.0,
        );
        h.run(secs(30));
        // The locked plug is the lowest priority but is never touched.
        assert_eq!(h.actions_for("boiler"), vec![(10, Off, Overload)]);

        // The user switches the shed boiler back on: an override.
        h.plug_mut("boiler").on = true;
        h.step();
        assert!(matches!(&h.notices[..], [(_, Notice::Override { plug, .. })] if plug == "boiler"));
        h.run(secs(90));
        // Over the limit again: the next one goes, not the overridden boiler.
        assert_eq!(h.actions_for("heater").len(), 1);
        assert_eq!(h.actions_for("boiler").len(), 1);
        assert_eq!(h.status().state, Phase::Shedding);

        // Emergency: the override gives way, the lock does not.
        h.base_w = 6000.0;
        h.run(secs(30));
        assert_eq!(h.actions_for("boiler")[1].2, Emergency);
        assert!(h.actions_for("big").is_empty());

        // An OFF lock takes the plug out of the shed set: never restored.
        h.plug_mut("heater").mode = PlugMode::Off;
        h.base_w = 0.0;
        h.run(secs(1800));
        assert!(h.actions_for("big").is_empty());
        assert_eq!(h.actions_for("heater").len(), 1);
        assert_eq!(h.actions_for("boiler").last().map(|a| a.2), Some(Restore));
        assert!(h.state.persisted().plugs["heater"].shed.is_none());
    }

    #[test]
    fn compressor_minimum_off_and_on() {
        let mut hp = plug("heat-pump", 10, 1200.0);
        hp.policy.min_off = secs(600);
        let mut h = House::new(vec![hp], 6800.0);
        h.run(secs(10));
        assert_eq!(h.actions_for("heat-pump"), vec![(10, Off, Overload)]);
        h.base_w = 1000.0;
        assert!(h.run_until(secs(1200), |h| h.commands() == 2));
        let restored = h.actions_for("heat-pump")[1].0;
        assert!((610..=620).contains(&restored), "{restored}");

        // Overloaded right after the start: min_on protects it for 60 s.
        h.base_w = 6500.0;
        assert!(h.run_until(secs(600), |h| h.commands() == 3));
        let shed_again = h.actions_for("heat-pump")[2].0;
        assert!(shed_again >= restored + 60, "{shed_again}");
        // A flap: min-off doubles.
        h.base_w = 1000.0;
        assert!(h.run_until(secs(3000), |h| h.commands() == 4));
        let back = h.actions_for("heat-pump")[3].0;
        assert!(back >= shed_again + 1200, "{back}");
    }

    #[test]
    fn pv_deficit_sheds_opted_in_plugs_and_reactivates_on_surplus() {
        let mut pump = plug("pump", 10, 800.0);
        pump.policy.pv_deficit_off = true;
        let mut heater = plug("heater", 20, 600.0);
        heater.policy.pv_deficit_off = true;
        let tv = plug("tv", 5, 200.0);
        let mut h = House::new(vec![pump, heater, tv], 400.0);
        h.pv_w = Some(3000.0);
        h.run(secs(60));
        assert_eq!(h.commands(), 0);

        h.pv_w = Some(500.0);
        h.run(secs(295));
        assert_eq!(h.commands(), 0, "5 minutes of deficit first");
        h.run(secs(60));
        assert_eq!(h.actions_for("pump"), vec![(365, Off, PvDeficit)]);
        assert_eq!(h.actions_for("heater"), vec![(375, Off, PvDeficit)]);
        assert!(h.actions_for("tv").is_empty());

        // Some sun, but not enough for either: nothing comes back.
        h.pv_w = Some(1000.0);
        h.run(secs(600));
        assert_eq!(h.commands(), 2);

        h.pv_w = Some(4000.0);
        h.run(secs(300));
        let heater = h.actions_for("heater");
        let pump = h.actions_for("pump");
        assert_eq!((heater[1].1, heater[1].2), (On, PvSurplus));
        assert_eq!((pump[1].1, pump[1].2), (On, PvSurplus));
        assert!(
            pump[1].0 - heater[1].0 >= 60,
            "one per settle_after_restore"
        );
        assert_eq!(h.commands(), 4);
    }

    #[test]
    fn emergency_tier_sheds_enough_at_once_ignoring_min_on() {
        let mut d = plug("d", 0, 2000.0);
        d.on = false;
        let mut h = House::new(
            vec![
                plug("a", 0, 500.0),
                plug("b", 0, 1000.0),
                plug("c", 0, 1500.0),
                d,
            ],
            4000.0,
        );
        h.run(secs(30));
        assert_eq!(h.commands(), 0);
        // The user switches d on: 9000 W > 110 % of 7400 W.
        h.plug_mut("d").on = true;
        h.step();
        // Excess over the restore line: 9000 − 6290 = 2710 W → d and c.
        let now: Vec<_> = h
            .log
            .iter()
            .map(|(t, a)| (at(*t), a.plug.as_str(), a.reason))
            .collect();
        assert_eq!(now, vec![(35, "d", Emergency), (35, "c", Emergency)]);
        assert!(h.total_w() <= 7400.0 * 0.85);
        h.run(secs(60));
        assert_eq!(h.commands(), 2);
    }

    #[test]
    fn nothing_is_switched_before_fresh_data_and_plug_states() {
        let mut h = House::new(vec![plug("boiler", 10, 4000.0)], 6000.0);
        h.plug_mut("boiler").reachable = false;
        h.run(secs(30));
        assert_eq!(h.commands(), 0);
        assert_eq!(h.status().state, Phase::Stale);
        h.plug_mut("boiler").reachable = true;
        h.step();
        assert_eq!(h.actions_for("boiler"), vec![(35, Off, Emergency)]);
    }

    #[test]
    fn disabled_keeps_the_shed_set_and_resumes_on_enable() {
        let mut h = House::new(
            vec![plug("boiler", 10, 2000.0), plug("heater", 20, 1500.0)],
            4500.0,
        );
        h.run(secs(20));
        assert_eq!(h.commands(), 1);
        h.state.set_enabled(false);
        h.base_w = 9000.0;
        h.run(secs(60));
        assert_eq!(h.commands(), 1);
        assert_eq!(h.status().state, Phase::Disabled);
        assert_eq!(h.status().shed_count, 1);
        h.base_w = 0.0;
        h.run(secs(600));
        assert_eq!(h.commands(), 1);
        h.state.set_enabled(true);
        h.run(secs(120));
        assert_eq!(h.actions_for("boiler").last().map(|a| a.2), Some(Restore));
    }

    #[test]
    fn a_command_in_flight_or_an_old_reading_is_not_an_override() {
        let cfg = BalancerConfig::default();
        let plugs = vec![policy("boiler", 10)];
        let mut st = PersistedState::default();
        let shed_at = Timestamp(T0 + 60_000);
        st.plugs.insert(
            "boiler".into(),
            PlugState {
                shed: Some(ShedRecord {
                    since: shed_at,
                    reason: Overload,
                    power_before_w: 2000.0,
                }),
                observed_on: Some(true),
                ..PlugState::default()
            },
        );
        let state = BalancerState::from_persisted(st);
        let snap = |pending: bool, seen: Timestamp| Snapshot {
            inverter: None,
            plugs: vec![PlugSnapshot {
                id: "boiler".into(),
                reachable: true,
                on: Some(true),
                power_w: Some(2000.0),
                last_seen: Some(seen),
                mode: PlugMode::Auto,
                command_pending: pending,
            }],
        };
        let now = shed_at.plus(secs(2));
        for (pending, seen) in [(true, now), (false, shed_at.plus(Duration::ZERO))] {
            let d = tick(&snap(pending, seen), &cfg, &plugs, &state, now);
            assert!(d.notices.is_empty(), "pending {pending}");
            assert!(d.state.persisted().plugs["boiler"].shed.is_some());
        }
        let d = tick(&snap(false, now), &cfg, &plugs, &state, now);
        assert_eq!(d.notices.len(), 1);
        assert!(d.state.persisted().plugs["boiler"].shed.is_none());
    }

    #[test]
    fn flap_counter_resets_after_a_quiet_day() {
        let p = policy("hp", 0);
        let ps = PlugState {
            reshed_count: 3,
            ..PlugState::default()
        };
        assert_eq!(effective_min_off(&p, &ps), secs(2400));
        let ps = PlugState {
            reshed_count: 9,
            ..PlugState::default()
        };
        assert_eq!(effective_min_off(&p, &ps), FLAP_MIN_OFF_CAP);

        let mut h = House::new(vec![plug("hp", 0, 100.0)], 0.0);
        let mut st = PersistedState::default();
        st.plugs.insert(
            "hp".into(),
            PlugState {
                reshed_count: 3,
                last_shed_at: Some(Timestamp(T0 - 25 * 3600 * 1000)),
                ..PlugState::default()
            },
        );
        h.state = BalancerState::from_persisted(st);
        h.step();
        assert_eq!(h.state.persisted().plugs["hp"].reshed_count, 0);
    }

    #[test]
    fn bad_samples_are_rejected_and_do_not_count_as_fresh() {
        let cfg = BalancerConfig::default();
        let inv = InverterSnapshot {
            sample_time: Timestamp(T0),
            rated_w: 6000.0,
            ac_output_w: f64::NAN,
            grid_port_w: 0.0,
            gen_port_w: 0.0,
            grid_connected: true,
            pv_w: None,
            load_w: None,
            bms_discharge_limit_w: None,
            overload_fault: false,
        };
        let snap = Snapshot {
            inverter: Some(inv.clone()),
            plugs: vec![],
        };
        let d = tick(&snap, &cfg, &[], &BalancerState::new(), Timestamp(T0));
        assert_eq!(
            d.rejected,
            Some(SampleError::NotFinite {
                field: "ac_output_w"
            })
        );
        assert!(d.status.load_w.is_none());
        let snap = Snapshot {
            inverter: Some(InverterSnapshot {
                ac_output_w: 100.0,
                rated_w: 0.0,
                ..inv
            }),
            plugs: vec![],
        };
        let d = tick(&snap, &cfg, &[], &BalancerState::new(), Timestamp(T0));
        assert_eq!(d.rejected, Some(SampleError::BadRating(0.0)));
    }

    #[test]
    fn overload_fault_sheds_without_delay() {
        let mut h = House::new(vec![plug("boiler", 10, 2000.0)], 1000.0);
        h.run(secs(30));
        h.base_w = 5600.0;
        h.step();
        assert_eq!(h.commands(), 0);
        let mut snap = h.snapshot();
        if let Some(inv) = snap.inverter.as_mut() {
            inv.sample_time = h.now.plus(secs(1));
            inv.overload_fault = true;
        }
        let d = tick(&snap, &h.cfg, &h.policies(), &h.state, h.now.plus(secs(1)));
        assert_eq!(d.actions.len(), 1);
    }

    #[test]
    fn status_and_state_serialize_for_mqtt_and_disk() {
        let mut h = House::new(vec![plug("boiler", 10, 2000.0)], 6000.0);
        h.run(secs(10));
        let s = serde_json::to_value(h.status()).expect("status");
        assert_eq!(s["state"], "shedding");
        assert_eq!(s["shed"][0]["reason"], "overload");
        let back: Status = serde_json::from_value(s).expect("round trip");
        assert_eq!(&back, h.status());
        assert!(h.last.as_ref().is_some_and(|d| d.persist));
        let a = serde_json::to_value(&h.log[0].1).expect("action");
        assert_eq!(a["state"], "OFF");
        // An empty file section still loads, with the switch on.
        let p: PersistedState = serde_json::from_str("{}").expect("defaults");
        assert!(p.enabled);
    }

    // ------------------------------------------------------------ properties

    fn min_on_off_strategy() -> impl Strategy<Value = (u64, u64)> {
        (
            prop::sample::select(vec![0u64, 30, 60, 120]),
            prop::sample::select(vec![0u64, 60, 300, 600]),
        )
    }

    prop_compose! {
        fn plugs_strategy()(
            specs in prop::collection::vec(
                (0i32..3, 0.0f64..3000.0, min_on_off_strategy(), any::<bool>(), any::<bool>()),
                1..5,
            )
        ) -> Vec<FakePlug> {
            specs
                .into_iter()
                .enumerate()
                .map(|(i, (prio, w, (on, off), fs, pv))| {
                    let mut p = plug(&format!("p{i}"), prio, w);
                    p.policy.min_on = secs(on);
                    p.policy.min_off = secs(off);
                    p.policy.failsafe_shed = fs;
                    p.policy.pv_deficit_off = pv;
                    p
                })
                .collect()
        }
    }

    /// Segments of (base load, ticks, feed alive, grid, pv).
    fn series_strategy() -> impl Strategy<Value = Vec<(f64, u32, bool, bool, f64)>> {
        prop::collection::vec(
            (
                0.0f64..9000.0,
                1u32..40,
                prop::bool::weighted(0.85),
                prop::bool::weighted(0.8),
                0.0f64..5000.0,
            ),
            1..20,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        #[test]
        fn min_times_hold_and_nothing_is_restored_on_stale_data(
            plugs in plugs_strategy(),
            series in series_strategy(),
        ) {
            let mut h = House::new(plugs, 0.0);
            h.pv_w = Some(0.0);
            let mut last_fresh = h.now;
            let mut restores_on_stale = Vec::new();
            for (base, ticks, feed, grid, pv) in series {
                h.base_w = base;
                h.feed = feed;
                h.grid = grid;
                h.pv_w = Some(pv);
                for _ in 0..ticks {
                    h.step();
                    if h.feed {
                        last_fresh = h.now;
                    }
                    let age = h.now.since(last_fresh);
                    if let Some(d) = &h.last {
                        if d.actions.iter().any(|a| a.state == On) && age > h.cfg.stale_after {
                            restores_on_stale.push(at(h.now));
                        }
                    }
                }
            }
            prop_assert!(restores_on_stale.is_empty(), "{:?}", restores_on_stale);
            for p in &h.plugs {
                let acts = h.actions_for(&p.policy.id);
                let min_off = p.policy.min_off.max(MIN_OFF_FLOOR).as_secs();
                for w in acts.windows(2) {
                    let gap = w[1].0 - w[0].0;
                    match (w[0].1, w[1].1) {
                        (Off, On) => prop_assert!(gap >= min_off, "{}: {:?}", p.policy.id, acts),
                        (On, Off) if w[1].2 != Emergency => {
                            prop_assert!(gap >= p.policy.min_on.as_secs(), "{}: {:?}", p.policy.id, acts)
                        }
                        (On, On) | (Off, Off) => prop_assert!(false, "repeated command {:?}", acts),
                        _ => {}
                    }
                }
            }
        }

        #[test]
        fn emergency_tier_gets_under_the_limit_when_sheddable_power_suffices(
            specs in prop::collection::vec((0i32..3, 0.0f64..3000.0, any::<bool>(), any::<bool>()), 1..7),
            extra in 1.0f64..6000.0,
            grid in any::<bool>(),
        ) {
            let cfg = BalancerConfig::default();
            let plugs: Vec<PlugPolicy> = specs
                .iter()
                .enumerate()
                .map(|(i, (prio, _, sheddable, _))| PlugPolicy {
                    sheddable: *sheddable,
                    ..policy(&format!("p{i}"), *prio)
                })
                .collect();
            let plug_snaps = |now: Timestamp| -> Vec<PlugSnapshot> {
                specs
                    .iter()
                    .enumerate()
                    .map(|(i, (_, w, _, locked))| PlugSnapshot {
                        id: format!("p{i}"),
                        reachable: true,
                        on: Some(true),
                        power_w: Some(*w),
                        last_seen: Some(now),
                        mode: if *locked { PlugMode::On } else { PlugMode::Auto },
                        command_pending: false,
                    })
                    .collect()
            };
            let limit = if grid { cfg.on_grid_w } else { 6000.0 * cfg.off_grid_percent / 100.0 };
            let inv = |t: Timestamp, w: f64| InverterSnapshot {
                sample_time: t,
                rated_w: 6000.0,
                ac_output_w: w,
                grid_port_w: 0.0,
                gen_port_w: 0.0,
                grid_connected: grid,
                pv_w: None,
                load_w: None,
                bms_discharge_limit_w: None,
                overload_fault: false,
            };
            let mut state = BalancerState::new();
            for k in 1..=2 {
                let now = Timestamp(T0 + k * 5000);
                let snap = Snapshot { inverter: Some(inv(now, 0.0)), plugs: plug_snaps(now) };
                let d = tick(&snap, &cfg, &plugs, &state, now);
                prop_assert!(d.actions.is_empty());
                state = d.state;
            }
            let now = Timestamp(T0 + 15_000);
            let load = limit * cfg.emergency_percent / 100.0 + extra;
            let snap = Snapshot { inverter: Some(inv(now, load)), plugs: plug_snaps(now) };
            let d = tick(&snap, &cfg, &plugs, &state, now);
            let available: f64 = specs
                .iter()
                .filter(|(_, w, sheddable, locked)| *sheddable && !*locked && *w >= MIN_SHED_GAIN_W)
                .map(|s| s.1)
                .sum();
            let shed: f64 = d.actions.iter().map(|a| a.power_w).sum();
            prop_assert!(d.actions.iter().all(|a| a.state == Off && a.reason == Emergency));
            if load - available <= limit {
                prop_assert!(load - shed <= limit, "load {load} shed {shed} limit {limit}");
            }
        }
    }
}
