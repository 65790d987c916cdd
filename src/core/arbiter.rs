//! Who gets to switch a plug: one pure function with the precedence
//! written once. Every wish to switch a plug (the user's hand, a lock, a
//! timer, a schedule, the surplus rule, the balancer) is put to
//! [`decide`] with what the bridge knows of the plug (its mode, whether
//! the balancer has shed it, what is being delivered to it) and gets a
//! [`Decision`]; `control` carries it out.
//!
//! The precedence, highest first:
//!
//! 1. **The user's hand** (`<plug>/set` with a state): always carried out,
//!    whatever the mode; the balancer then sees the new state and treats a
//!    manual ON of a shed plug as an override.
//! 2. **A lock** (`mode` on/off): carried out at once and holds the plug
//!    there; nothing below may switch a locked plug.
//! 3. **A timer the user starts or cancels**: refused on a locked plug
//!    (put it back to auto first); starting one switches even a shed plug
//!    on (it is the user's explicit wish, like the hand).
//! 4. **The balancer** (shed, restore, failsafe): never touches a locked
//!    plug (the balancer itself leaves them out); otherwise it wins over
//!    every automation below.
//! 5. **Automations** (a timer running out, schedules, the surplus rule):
//!    skipped on a locked plug, and an ON is skipped while the balancer
//!    has the plug shed.
//!
//! A wish that is carried out replaces whatever was still being delivered
//! to the plug (the executor resends only the newest wish); the user's
//! hand and an explicit timer start also stop an older wish from being
//! pushed again.

use crate::model::PlugMode;

/// Who wants the plug switched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `<plug>/set` with a state: the user's hand.
    User,
    /// `mode` on or off.
    Lock,
    /// The user started or cancelled a timer.
    UserTimer,
    /// A timer ran out.
    Timer,
    Schedule,
    Surplus,
    /// The balancer's shed or restore.
    Balancer,
    /// The balancer shedding because its data went stale.
    Failsafe,
}

impl Origin {
    /// The name reports use ("balancer", "timer", "mode"), as before.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::User => "user",
            Origin::Lock => "mode",
            Origin::UserTimer | Origin::Timer | Origin::Schedule | Origin::Surplus => "timer",
            Origin::Balancer | Origin::Failsafe => "balancer",
        }
    }
}

/// One wish: switch on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wish {
    pub origin: Origin,
    pub on: bool,
}

/// What the bridge knows of the plug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlugFacts {
    pub mode: PlugMode,
    /// The balancer has shed it and not restored it yet.
    pub shed: bool,
    /// A command still being delivered (and its state).
    pub pending: Option<bool>,
}

/// Why a wish is not carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// The plug's mode locks it (an automation or the balancer).
    Locked,
    /// An automation's ON while the balancer has the plug shed.
    Shed,
}

impl Held {
    pub fn as_str(self) -> &'static str {
        match self {
            Held::Locked => "the plug's mode locks it",
            Held::Shed => "the balancer has shed the plug",
        }
    }
}

/// What to do with a wish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Deliver it through the executor (it replaces what was pending).
    Deliver,
    /// Send it to the plug directly and stop pushing any older wish (the
    /// user's hand: the balancer judges the result as an override).
    Direct,
    /// Not now, and nothing to tell the user (automations).
    Skip(Held),
    /// Refused, with an error for the user (a timer on a locked plug).
    Refuse(Held),
}

/// The one place the precedence lives.
pub fn decide(wish: Wish, plug: PlugFacts) -> Decision {
    let locked = plug.mode != PlugMode::Auto;
    match wish.origin {
        Origin::User => Decision::Direct,
        Origin::Lock => Decision::Deliver,
        Origin::UserTimer if locked => Decision::Refuse(Held::Locked),
        Origin::UserTimer => Decision::Deliver,
        Origin::Balancer | Origin::Failsafe if locked => Decision::Skip(Held::Locked),
        Origin::Balancer | Origin::Failsafe => Decision::Deliver,
        Origin::Timer | Origin::Schedule | Origin::Surplus if locked => {
            Decision::Skip(Held::Locked)
        }
        Origin::Timer | Origin::Schedule | Origin::Surplus if wish.on && plug.shed => {
            Decision::Skip(Held::Shed)
        }
        Origin::Timer | Origin::Schedule | Origin::Surplus => Decision::Deliver,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::*;
    use Origin::*;
    use PlugMode::{Auto, Off, On};

    fn facts(mode: PlugMode, shed: bool) -> PlugFacts {
        PlugFacts {
            mode,
            shed,
            pending: None,
        }
    }

    /// The precedence as a table: (origin, on, mode, shed) → decision.
    #[test]
    fn the_precedence_table() {
        let table = [
            // The user's hand always goes through.
            (User, true, Auto, false, Direct),
            (User, true, Auto, true, Direct),
            (User, false, On, false, Direct),
            (User, true, Off, false, Direct),
            // A lock is carried out at once.
            (Lock, true, On, false, Deliver),
            (Lock, false, Off, true, Deliver),
            // The user's timer: refused when locked, beats a shed.
            (UserTimer, true, Auto, true, Deliver),
            (UserTimer, false, Auto, false, Deliver),
            (UserTimer, true, On, false, Refuse(Held::Locked)),
            (UserTimer, false, Off, false, Refuse(Held::Locked)),
            // The balancer: never a locked plug.
            (Balancer, false, Auto, false, Deliver),
            (Balancer, true, Auto, true, Deliver),
            (Balancer, false, On, false, Skip(Held::Locked)),
            (Failsafe, false, Auto, false, Deliver),
            (Failsafe, false, Off, false, Skip(Held::Locked)),
            // Automations: not on a locked plug, no ON of a shed plug.
            (Schedule, true, Auto, false, Deliver),
            (Schedule, false, Auto, true, Deliver),
            (Schedule, true, Auto, true, Skip(Held::Shed)),
            (Surplus, true, Auto, true, Skip(Held::Shed)),
            (Surplus, false, Auto, false, Deliver),
            (Timer, false, Auto, true, Deliver),
            (Timer, false, On, false, Skip(Held::Locked)),
            (Surplus, true, Off, false, Skip(Held::Locked)),
        ];
        for (origin, on, mode, shed, want) in table {
            assert_eq!(
                decide(Wish { origin, on }, facts(mode, shed)),
                want,
                "{origin:?} {} on a {mode:?} plug, shed {shed}",
                if on { "ON" } else { "OFF" }
            );
        }
    }

    #[test]
    fn a_pending_command_never_changes_the_verdict() {
        // What is in flight is replaced, not consulted: the newest wish
        // that passes the precedence wins.
        for origin in [
            User, Lock, UserTimer, Timer, Schedule, Surplus, Balancer, Failsafe,
        ] {
            for on in [false, true] {
                for pending in [None, Some(false), Some(true)] {
                    let base = facts(Auto, false);
                    assert_eq!(
                        decide(Wish { origin, on }, PlugFacts { pending, ..base }),
                        decide(Wish { origin, on }, base)
                    );
                }
            }
        }
    }

    #[test]
    fn origins_report_as_before() {
        assert_eq!(Balancer.as_str(), "balancer");
        assert_eq!(Failsafe.as_str(), "balancer");
        assert_eq!(Lock.as_str(), "mode");
        assert_eq!(Schedule.as_str(), "timer");
        assert_eq!(UserTimer.as_str(), "timer");
    }
}
