//! The raise and clear messages of the events and the active list.

use std::time::Duration;

use super::Direction;
use super::defaults::Check;
use super::observe::{CHARGING_AGAIN_A, Obs};
use super::rules::RuleInfo;

fn show(v: Option<f64>, unit: &str, decimals: usize) -> String {
    match v {
        Some(v) if unit.is_empty() => format!("{v:.decimals$}"),
        Some(v) => format!("{v:.decimals$} {unit}"),
        None => "?".to_owned(),
    }
}

pub(super) fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        _ if s % 3600 < 60 => format!("{} h", s / 3600),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

pub(super) fn raise_message(rule: &RuleInfo, name: &str, o: &Obs, held: Duration) -> String {
    let (u, d) = (rule.unit, rule.decimals);
    let dir = match rule.direction {
        Some(Direction::Below) => "below",
        _ => "above",
    };
    match rule.check {
        Check::Unreachable => {
            let never = if o.text.is_some() {
                " (nothing received since start-up)"
            } else {
                ""
            };
            format!("{name} unreachable for {}{never}", human(held))
        }
        Check::BmsAlarm => match o.text.filter(|t| !t.is_empty() && *t != "none") {
            Some(a) => format!("{name}: BMS alarm: {a}"),
            None => format!("{name}: BMS reports a problem"),
        },
        Check::InverterFault => format!("{name}: inverter fault: {}", o.text.unwrap_or("unknown")),
        Check::Emergency => format!(
            "{name}: BMS emergency mode on, {} left",
            show(o.value, "s", 0)
        ),
        Check::BalancerFailsafe => format!(
            "{name}: overload balancer in failsafe (no inverter data), failsafe plugs switched off"
        ),
        Check::NoCharging => format!(
            "{name}: SOC {} is below {} and no charge current flows ({})",
            show(o.value, u, d),
            show(o.threshold, u, d),
            show(o.current, "A", 1)
        ),
        Check::TempLowCharging => format!(
            "{name}: charging at {} while temperature {}{} is below {}",
            show(o.current, "A", 1),
            show(o.value, u, d),
            o.detail,
            show(o.threshold, u, d)
        ),
        Check::PackHigh | Check::PackLow => format!(
            "{name}: pack voltage {} is {dir} {} ({} × {})",
            show(o.value, "V", 1),
            show(o.threshold, "V", 1),
            o.cells.unwrap_or(0),
            show(rule.threshold, "V", 2)
        ),
        _ => format!(
            "{name}: {} {}{} is {dir} {}",
            o.what,
            show(o.value, u, d),
            o.detail,
            show(o.threshold, u, d)
        ),
    }
}

pub(super) fn clear_message(rule: &RuleInfo, name: &str, o: &Obs) -> String {
    let (u, d) = (rule.unit, rule.decimals);
    let back = match rule.direction {
        Some(Direction::Below) => "at or above",
        _ => "at or below",
    };
    match rule.check {
        Check::Unreachable => format!("{name} reachable again"),
        Check::BmsAlarm => format!("{name}: BMS alarm cleared"),
        Check::InverterFault => format!("{name}: inverter faults cleared"),
        Check::Emergency => format!("{name}: BMS emergency mode ended"),
        Check::BalancerFailsafe => format!("{name}: overload balancer out of failsafe"),
        Check::NoCharging if o.current.is_some_and(|i| i >= CHARGING_AGAIN_A) => {
            format!("{name}: charging again ({})", show(o.current, "A", 1))
        }
        Check::TempLowCharging if o.current.is_some_and(|i| i <= 0.0) => {
            format!("{name}: no longer charging while cold")
        }
        Check::PackHigh | Check::PackLow => format!(
            "{name}: pack voltage {} is back {back} {}",
            show(o.value, "V", 1),
            show(o.clear, "V", 1)
        ),
        _ => format!(
            "{name}: {} {}{} is back {back} {}",
            o.what,
            show(o.value, u, d),
            o.detail,
            show(o.clear, u, d)
        ),
    }
}
