//! Delivers the automation's switch commands to plugs and makes sure they
//! took: a command counts as done only when the plug's own read-back shows
//! the wanted state. Until then it is resent with a growing pause, for as
//! long as the automation still wants it, because a plug that missed an
//! overload shed must not be forgotten. While a command is in flight the
//! balancer is told (`command_pending`) so the old state it still reads is
//! not taken for the user's hand.
//!
//! Pure bookkeeping with the time passed in; the caller sends.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::core::balancer::Timestamp;

/// First resend after this long without the plug confirming.
const FIRST_RETRY: Duration = Duration::from_secs(10);
/// Resends slow down to this.
const MAX_RETRY: Duration = Duration::from_secs(60);
/// After this many sends without confirmation the failure is reported
/// (once); resending goes on.
const REPORT_AFTER: u32 = 3;

/// One command the executor is delivering.
#[derive(Debug, Clone, PartialEq)]
struct Pending {
    on: bool,
    /// Who asked, for reports ("balancer", "timer", "mode").
    origin: &'static str,
    attempts: u32,
    next_at: Timestamp,
    reported: bool,
}

/// What the caller must do now.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// Send the command to the plug's driver.
    Send { plug: String, on: bool },
    /// The plug has not confirmed after several sends; reported once per command.
    Unconfirmed {
        plug: String,
        on: bool,
        origin: &'static str,
        attempts: u32,
    },
}

/// Commands in flight, by plug.
#[derive(Debug, Clone, Default)]
pub struct Executor {
    pending: BTreeMap<String, Pending>,
}

impl Executor {
    /// Starts delivering `on` to `plug`, replacing whatever was in flight
    /// for it. Returns the first send.
    pub fn want(&mut self, plug: &str, on: bool, origin: &'static str, now: Timestamp) -> Delivery {
        self.pending.insert(
            plug.to_owned(),
            Pending {
                on,
                origin,
                attempts: 1,
                next_at: now.plus(FIRST_RETRY),
                reported: false,
            },
        );
        Delivery::Send {
            plug: plug.to_owned(),
            on,
        }
    }

    /// The plug reported its relay state: a matching report completes the
    /// command.
    pub fn observed(&mut self, plug: &str, on: bool) {
        if self.pending.get(plug).is_some_and(|p| p.on == on) {
            self.pending.remove(plug);
        }
    }

    /// Someone else (the user, a lock) decided about the plug: stop
    /// pushing the automation's wish.
    pub fn cancel(&mut self, plug: &str) {
        self.pending.remove(plug);
    }

    pub fn is_pending(&self, plug: &str) -> bool {
        self.pending.contains_key(plug)
    }

    /// What is being delivered to `plug`, if anything.
    pub fn wanted(&self, plug: &str) -> Option<bool> {
        self.pending.get(plug).map(|p| p.on)
    }

    /// Resends that are due; `reachable` says which plugs can take one now
    /// (an unreachable plug gets its command when it is back, without
    /// using up attempts).
    pub fn due(&mut self, now: Timestamp, reachable: impl Fn(&str) -> bool) -> Vec<Delivery> {
        let mut out = Vec::new();
        for (plug, p) in &mut self.pending {
            if now < p.next_at || !reachable(plug) {
                continue;
            }
            p.attempts += 1;
            let pause = FIRST_RETRY
                .saturating_mul(1 << (p.attempts - 1).min(6))
                .min(MAX_RETRY);
            p.next_at = now.plus(pause);
            out.push(Delivery::Send {
                plug: plug.clone(),
                on: p.on,
            });
            if p.attempts >= REPORT_AFTER && !p.reported {
                p.reported = true;
                out.push(Delivery::Unconfirmed {
                    plug: plug.clone(),
                    on: p.on,
                    origin: p.origin,
                    attempts: p.attempts,
                });
            }
        }
        out
    }

    /// Forgets plugs that are no longer configured.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.pending.retain(|plug, _| keep(plug));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> Timestamp {
        Timestamp::from_millis(s * 1000)
    }

    fn sends(d: &[Delivery]) -> usize {
        d.iter()
            .filter(|d| matches!(d, Delivery::Send { .. }))
            .count()
    }

    #[test]
    fn a_confirmed_command_is_not_resent() {
        let mut ex = Executor::default();
        assert_eq!(
            ex.want("boiler", false, "balancer", t(0)),
            Delivery::Send {
                plug: "boiler".into(),
                on: false
            }
        );
        assert!(ex.is_pending("boiler"));
        // The old state read back does not complete it.
        ex.observed("boiler", true);
        assert!(ex.is_pending("boiler"));
        ex.observed("boiler", false);
        assert!(!ex.is_pending("boiler"));
        assert!(ex.due(t(100), |_| true).is_empty());
    }

    #[test]
    fn unconfirmed_commands_are_resent_with_growing_pauses_and_reported_once() {
        let mut ex = Executor::default();
        ex.want("boiler", false, "balancer", t(0));
        let mut send_times = Vec::new();
        let mut reports = 0;
        for s in 0..400 {
            let d = ex.due(t(s), |_| true);
            if sends(&d) > 0 {
                send_times.push(s);
            }
            reports += d
                .iter()
                .filter(|d| matches!(d, Delivery::Unconfirmed { .. }))
                .count();
        }
        assert_eq!(&send_times[..4], &[10, 30, 70, 130]);
        // Capped at a minute apart, and never given up.
        assert_eq!(send_times[4] - send_times[3], 60);
        assert!(send_times.len() >= 8, "{send_times:?}");
        assert_eq!(reports, 1);
    }

    #[test]
    fn an_unreachable_plug_waits_without_using_attempts() {
        let mut ex = Executor::default();
        ex.want("boiler", false, "balancer", t(0));
        assert!(ex.due(t(50), |_| false).is_empty());
        let d = ex.due(t(51), |_| true);
        assert_eq!(sends(&d), 1);
        assert!(!d.iter().any(|d| matches!(d, Delivery::Unconfirmed { .. })));
    }

    #[test]
    fn cancel_and_replace() {
        let mut ex = Executor::default();
        ex.want("boiler", false, "balancer", t(0));
        ex.want("boiler", true, "timer", t(1));
        assert_eq!(ex.wanted("boiler"), Some(true));
        ex.cancel("boiler");
        assert!(ex.due(t(500), |_| true).is_empty());
        ex.want("heater", true, "timer", t(0));
        ex.retain(|p| p != "heater");
        assert!(!ex.is_pending("heater"));
    }
}
