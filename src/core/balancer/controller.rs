//! The controller step: ingesting samples, observing the plugs, choosing
//! what to shed or restore, and the status.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::{
    Action, BalancerState, Decision, FLAP_MIN_OFF_CAP, FLAP_QUIET, FLAP_WINDOW, InverterSnapshot,
    MAX_DOUBLINGS, MIN_OFF_FLOOR, MIN_SHED_GAIN_W, Notice, PersistedState, Phase, PlugPolicy,
    PlugSnapshot, PlugState, Reason, Runtime, STARTUP_SAMPLES, Sample, SampleError, ShedEntry,
    ShedRecord, Snapshot, Status, Timestamp, WINDOW_CAP,
};
use crate::config::{BalancerConfig, OnGridMeasure};
use crate::model::millis;
use crate::model::{PlugMode, SwitchState};

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

pub(super) fn effective_min_off(policy: &PlugPolicy, ps: &PlugState) -> Duration {
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
