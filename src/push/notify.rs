//! Events → notifications, and which channel gets which. Everything here is
//! a pure function of (event, config, state, now), so the rules are tested
//! as tables without a broker or a clock.
//!
//! Rules: a clear carries the raise's tag, so it replaces the raise on the
//! phone; it is sent on a channel only if that channel got the raise (a
//! raise held back by the level, quiet hours or the rate limit leaves no
//! stale notification to replace). One raise per alert episode: the same
//! tag raised again while active is a duplicate, except the bridge's own
//! reminders (`repeat: true`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::push::QuietHours;
use crate::core::alerts::Level;

/// The largest JSON payload a Web Push message carries after encryption.
pub const MAX_PAYLOAD: usize = super::webpush::MAX_BODY - super::webpush::OVERHEAD;

/// At most this many notifications per channel per [`RATE_WINDOW`];
/// clears of notifications already sent always pass.
pub const RATE_MAX: usize = 10;
pub const RATE_WINDOW: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Raise,
    Clear,
}

/// One notification, the same for every channel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notification {
    pub kind: Kind,
    pub title: String,
    pub body: String,
    pub level: Level,
    /// Raise and clear of one episode share it: the clear replaces.
    pub tag: String,
    /// RFC 3339, when it happened (the event's `at`, else when it arrived).
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// A reminder of an alert still active: passes de-duplication.
    #[serde(skip)]
    pub repeat: bool,
}

impl Notification {
    /// The JSON the service worker shows, at most `max` bytes: a long body
    /// is cut (on a character boundary, with "…") rather than the message
    /// refused.
    pub fn payload(&self, max: usize) -> Vec<u8> {
        let full = serde_json::to_vec(self).unwrap_or_default();
        if full.len() <= max {
            return full;
        }
        // The longest prefix of the body that fits once escaped, found by
        // bisection (escaping makes the size non-linear in the cut).
        let encode = |keep: usize| {
            let mut short = self.clone();
            short.body.truncate(keep);
            short.body.push('…');
            serde_json::to_vec(&short).unwrap_or_default()
        };
        let boundary = |mut i: usize| {
            while i > 0 && !self.body.is_char_boundary(i) {
                i -= 1;
            }
            i
        };
        let (mut lo, mut hi) = (0usize, self.body.len());
        while lo < hi {
            let mid = boundary(lo + (hi - lo).div_ceil(2));
            if mid <= lo {
                break;
            }
            if encode(mid).len() <= max {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let out = encode(lo);
        if out.len() <= max {
            return out;
        }
        // Even the title and tag do not fit: drop the body entirely.
        let mut short = self.clone();
        short.body.clear();
        serde_json::to_vec(&short).unwrap_or_default()
    }
}

fn capitalized(level: Level) -> &'static str {
    match level {
        Level::Warning => "Warning",
        Level::Error => "Error",
        Level::Critical => "Critical",
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// An event from `<base>/alerts/event` (docs/ALERTS.md). `None` for what
/// is not an alert event, or one the bridge marked `notify: false`.
pub fn from_alert_event(v: &Value, now: &str, link: Option<&str>) -> Option<Notification> {
    let kind = match str_of(v, "kind").or_else(|| str_of(v, "event_type"))? {
        "raise" => Kind::Raise,
        "clear" => Kind::Clear,
        _ => return None,
    };
    if v.get("notify").and_then(Value::as_bool) == Some(false) {
        return None;
    }
    let level = serde_json::from_value::<Level>(v.get("level")?.clone()).ok()?;
    let rule = str_of(v, "rule")?;
    let device = str_of(v, "device").unwrap_or("site");
    let name = str_of(v, "device_name").unwrap_or(device);
    let title = match kind {
        Kind::Raise => format!("{}: {name}", capitalized(level)),
        Kind::Clear => format!("Cleared: {name}"),
    };
    Some(Notification {
        kind,
        title,
        body: str_of(v, "message").unwrap_or(rule).to_owned(),
        level,
        tag: format!("{rule}-{device}"),
        time: str_of(v, "at").unwrap_or(now).to_owned(),
        link: link.map(str::to_owned),
        repeat: v.get("repeat").and_then(Value::as_bool).unwrap_or(false),
    })
}

/// Remembers what was notified across events: devices lost and not yet
/// notified, the bridge being offline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Watch {
    /// Device → unix time it was reported lost, until notified or back.
    pub lost_since: BTreeMap<String, i64>,
    /// Lost devices whose loss was notified (their return is, too).
    pub lost_notified: BTreeSet<String>,
    pub bridge_offline: bool,
}

/// An event from `<base>/bridge/event` (docs/TOPICS.md). Lost devices
/// are only noted here; [`due_device_lost`] reports them once they have
/// stayed lost for `device_lost_after`.
pub fn from_bridge_event(
    v: &Value,
    watch: &mut Watch,
    now_unix: i64,
    now: &str,
    link: Option<&str>,
) -> Option<Notification> {
    let device = str_of(v, "device");
    let note = |kind, level, tag: String, title: String, body: String| Notification {
        kind,
        title,
        body,
        level,
        tag,
        time: now.to_owned(),
        link: link.map(str::to_owned),
        repeat: false,
    };
    match str_of(v, "type")? {
        "balancer_action" => {
            let plug = str_of(v, "plug").or(device)?;
            let num = |k: &str| v.get(k).and_then(Value::as_f64);
            let reason = str_of(v, "reason").unwrap_or("");
            match str_of(v, "action")? {
                "shed" => {
                    let detail = match (num("load_w"), num("limit_w")) {
                        (Some(l), Some(m)) => format!(" (load {l:.0} W, limit {m:.0} W)"),
                        _ => String::new(),
                    };
                    Some(note(
                        Kind::Raise,
                        Level::Warning,
                        format!("balancer-{plug}"),
                        format!("Balancer: {plug} switched off"),
                        format!("{plug} was switched off: {reason}{detail}"),
                    ))
                }
                "restore" => Some(note(
                    Kind::Clear,
                    Level::Warning,
                    format!("balancer-{plug}"),
                    format!("Balancer: {plug} back on"),
                    format!("{plug} was switched on again"),
                )),
                _ => None,
            }
        }
        "balancer_state" => {
            let inverter = device.unwrap_or("inverter");
            let state = str_of(v, "state")?;
            let tag = format!("balancer-state-{inverter}");
            match state {
                "failsafe" => Some(note(
                    Kind::Raise,
                    Level::Error,
                    tag,
                    format!("Balancer failsafe: {inverter}"),
                    format!(
                        "No fresh data from {inverter}: the balancer switched its sheddable plugs off"
                    ),
                )),
                "stale" => Some(note(
                    Kind::Raise,
                    Level::Warning,
                    tag,
                    format!("Balancer: {inverter} data stale"),
                    format!("No fresh data from {inverter}; the balancer is holding"),
                )),
                _ => Some(note(
                    Kind::Clear,
                    Level::Warning,
                    tag,
                    format!("Balancer: {inverter} back to normal"),
                    format!("The balancer of {inverter} is {state} again"),
                )),
            }
        }
        "device_lost" => {
            watch
                .lost_since
                .entry(device?.to_owned())
                .or_insert(now_unix);
            None
        }
        "device_connected" => {
            let d = device?;
            watch.lost_since.remove(d);
            watch.lost_notified.remove(d).then(|| {
                note(
                    Kind::Clear,
                    Level::Warning,
                    format!("lost-{d}"),
                    format!("{d} reachable again"),
                    format!("{d} is reachable again"),
                )
            })
        }
        _ => None,
    }
}

/// Devices lost for at least `after`, each reported once.
pub fn due_device_lost(
    watch: &mut Watch,
    after: Duration,
    now_unix: i64,
    now: &str,
    link: Option<&str>,
) -> Vec<Notification> {
    let after = i64::try_from(after.as_secs()).unwrap_or(i64::MAX);
    let due: Vec<(String, i64)> = watch
        .lost_since
        .iter()
        .filter(|(_, since)| now_unix.saturating_sub(**since) >= after)
        .map(|(d, s)| (d.clone(), *s))
        .collect();
    due.into_iter()
        .map(|(d, since)| {
            watch.lost_since.remove(&d);
            watch.lost_notified.insert(d.clone());
            let mins = (now_unix - since) / 60;
            Notification {
                kind: Kind::Raise,
                title: format!("{d} unreachable"),
                body: format!("{d} has been unreachable for {mins} min"),
                level: Level::Warning,
                tag: format!("lost-{d}"),
                time: now.to_owned(),
                link: link.map(str::to_owned),
                repeat: false,
            }
        })
        .collect()
}

/// `<base>/bridge/state`: `{"state":"offline"}` (the bridge's last will)
/// raises, the next `online` clears. The retained `online` seen at start
/// says nothing new.
pub fn from_bridge_state(
    v: &Value,
    watch: &mut Watch,
    now: &str,
    link: Option<&str>,
) -> Option<Notification> {
    let offline = match str_of(v, "state")? {
        "offline" => true,
        "online" => false,
        _ => return None,
    };
    if offline == watch.bridge_offline {
        return None;
    }
    watch.bridge_offline = offline;
    let (kind, title, body) = if offline {
        (
            Kind::Raise,
            "energy2mqtt bridge offline",
            "The bridge lost its MQTT connection or stopped: no readings, no balancer, no alerts",
        )
    } else {
        (
            Kind::Clear,
            "energy2mqtt bridge online",
            "The bridge is back",
        )
    };
    Some(Notification {
        kind,
        title: title.into(),
        body: body.into(),
        level: Level::Error,
        tag: "bridge-state".into(),
        time: now.to_owned(),
        link: link.map(str::to_owned),
        repeat: false,
    })
}

/// What one channel lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub min_level: Level,
    pub quiet: Option<QuietHours>,
}

/// One channel's memory: the tags it showed and not yet cleared, and when
/// it last sent (for the rate limit).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChannelState {
    pub active: BTreeSet<String>,
    pub sent: VecDeque<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Send,
    BelowLevel,
    /// Not critical, inside quiet hours.
    Quiet,
    /// The tag is already shown (the same raise again).
    Duplicate,
    /// A clear of something this channel never showed.
    NothingToClear,
    RateLimited,
}

/// Whether `n` goes out on this channel now, and the state after it.
/// `minute_of_day` is the local time for the quiet hours.
pub fn admit(
    n: &Notification,
    policy: &Policy,
    state: &mut ChannelState,
    now_unix: i64,
    minute_of_day: u16,
) -> Verdict {
    let window = RATE_WINDOW.as_secs() as i64;
    while state
        .sent
        .front()
        .is_some_and(|t| now_unix.saturating_sub(*t) >= window)
    {
        state.sent.pop_front();
    }
    match n.kind {
        Kind::Clear => {
            if !state.active.remove(&n.tag) {
                return Verdict::NothingToClear;
            }
        }
        Kind::Raise => {
            if n.level < policy.min_level {
                return Verdict::BelowLevel;
            }
            if state.active.contains(&n.tag) && !n.repeat {
                return Verdict::Duplicate;
            }
            if n.level != Level::Critical && policy.quiet.is_some_and(|q| q.contains(minute_of_day))
            {
                return Verdict::Quiet;
            }
            if state.sent.len() >= RATE_MAX {
                return Verdict::RateLimited;
            }
            state.active.insert(n.tag.clone());
            // Only raises count against the limit: a clear always goes out
            // (it ends a notification already on the phone).
            state.sent.push_back(now_unix);
        }
    }
    Verdict::Send
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: &str = "2026-11-21T18:05:00Z";

    fn raise(level: &str) -> Value {
        json!({"kind": "raise", "event_type": "raise", "rule": "soc_critical", "family": "soc",
               "level": level, "device": "battery1", "device_name": "Battery 1", "value": 8.0,
               "threshold": 10.0, "message": "Battery 1: SOC 8 % is below 10 %",
               "at": "2026-11-21T18:04:00Z", "repeat": false, "notify": true})
    }

    fn clear() -> Value {
        json!({"kind": "clear", "event_type": "clear", "rule": "soc_critical", "family": "soc",
               "level": "critical", "device": "battery1", "device_name": "Battery 1",
               "value": 13.0, "threshold": 12.0,
               "message": "Battery 1: SOC 13 % is back at or above 12 %",
               "at": "2026-11-21T19:04:00Z", "repeat": false, "notify": true})
    }

    #[test]
    fn alert_events_become_notifications_sharing_a_tag() {
        let r = from_alert_event(&raise("critical"), NOW, Some("http://e2m/")).unwrap();
        assert_eq!(r.kind, Kind::Raise);
        assert_eq!(r.title, "Critical: Battery 1");
        assert_eq!(r.body, "Battery 1: SOC 8 % is below 10 %");
        assert_eq!(r.level, Level::Critical);
        assert_eq!(r.tag, "soc_critical-battery1");
        assert_eq!(r.time, "2026-11-21T18:04:00Z");
        assert_eq!(r.link.as_deref(), Some("http://e2m/"));
        let c = from_alert_event(&clear(), NOW, None).unwrap();
        assert_eq!(c.kind, Kind::Clear);
        assert_eq!(c.title, "Cleared: Battery 1");
        assert_eq!(c.tag, r.tag);
        let p: Value = serde_json::from_slice(&r.payload(MAX_PAYLOAD)).unwrap();
        assert_eq!(
            p,
            json!({"kind": "raise", "title": "Critical: Battery 1",
                   "body": "Battery 1: SOC 8 % is below 10 %", "level": "critical",
                   "tag": "soc_critical-battery1", "time": "2026-11-21T18:04:00Z",
                   "link": "http://e2m/"})
        );

        let mut quiet = raise("error");
        quiet["notify"] = json!(false);
        assert_eq!(from_alert_event(&quiet, NOW, None), None);
        assert_eq!(from_alert_event(&json!({"kind": "other"}), NOW, None), None);
        assert_eq!(from_alert_event(&json!("raise"), NOW, None), None);
        let mut bad_level = raise("error");
        bad_level["level"] = json!("info");
        assert_eq!(from_alert_event(&bad_level, NOW, None), None);
    }

    #[test]
    fn long_bodies_are_cut_to_fit() {
        let mut n = from_alert_event(&raise("error"), NOW, None).unwrap();
        n.body = "é\"".repeat(3000);
        let p = n.payload(MAX_PAYLOAD);
        assert!(p.len() <= MAX_PAYLOAD, "{}", p.len());
        let v: Value = serde_json::from_slice(&p).unwrap();
        let body = v["body"].as_str().unwrap();
        assert!(body.ends_with('…'), "{body}");
        assert!(p.len() > MAX_PAYLOAD - 8, "uses the room: {}", p.len());
        assert_eq!(v["title"], "Error: Battery 1");
        let small = n.payload(200);
        assert!(small.len() <= 200, "{}", small.len());
    }

    #[test]
    fn bridge_events() {
        let mut w = Watch::default();
        let shed = json!({"type": "balancer_action", "device": "boiler", "inverter": "inverter",
                          "action": "shed", "plug": "boiler", "reason": "overload",
                          "load_w": 7900, "limit_w": 7400, "plug_w": 2000});
        let n = from_bridge_event(&shed, &mut w, 0, NOW, None).unwrap();
        assert_eq!((n.kind, n.level), (Kind::Raise, Level::Warning));
        assert_eq!(n.tag, "balancer-boiler");
        assert_eq!(n.title, "Balancer: boiler switched off");
        assert_eq!(
            n.body,
            "boiler was switched off: overload (load 7900 W, limit 7400 W)"
        );
        let mut restore = shed.clone();
        restore["action"] = json!("restore");
        let n = from_bridge_event(&restore, &mut w, 0, NOW, None).unwrap();
        assert_eq!((n.kind, n.tag.as_str()), (Kind::Clear, "balancer-boiler"));

        let fs = json!({"type": "balancer_state", "device": "inverter", "state": "failsafe"});
        let n = from_bridge_event(&fs, &mut w, 0, NOW, None).unwrap();
        assert_eq!((n.kind, n.level), (Kind::Raise, Level::Error));
        let ok = json!({"type": "balancer_state", "device": "inverter", "state": "normal"});
        let n = from_bridge_event(&ok, &mut w, 0, NOW, None).unwrap();
        assert_eq!(
            (n.kind, n.tag.as_str()),
            (Kind::Clear, "balancer-state-inverter")
        );

        let other = json!({"type": "command_error", "device": "ghost"});
        assert_eq!(from_bridge_event(&other, &mut w, 0, NOW, None), None);
    }

    #[test]
    fn a_device_is_reported_lost_only_after_the_delay_and_once() {
        let mut w = Watch::default();
        let after = Duration::from_secs(300);
        let lost = json!({"type": "device_lost", "device": "boiler"});
        let back = json!({"type": "device_connected", "device": "boiler"});
        assert_eq!(from_bridge_event(&lost, &mut w, 1000, NOW, None), None);
        // A flap shorter than the delay says nothing at all.
        assert!(due_device_lost(&mut w, after, 1100, NOW, None).is_empty());
        assert_eq!(from_bridge_event(&back, &mut w, 1200, NOW, None), None);
        assert!(due_device_lost(&mut w, after, 2000, NOW, None).is_empty());

        assert_eq!(from_bridge_event(&lost, &mut w, 3000, NOW, None), None);
        // A second device_lost does not restart the clock.
        assert_eq!(from_bridge_event(&lost, &mut w, 3200, NOW, None), None);
        let due = due_device_lost(&mut w, after, 3300, NOW, None);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].tag, "lost-boiler");
        assert_eq!(due[0].body, "boiler has been unreachable for 5 min");
        assert!(due_device_lost(&mut w, after, 4000, NOW, None).is_empty());
        let n = from_bridge_event(&back, &mut w, 4100, NOW, None).unwrap();
        assert_eq!((n.kind, n.tag.as_str()), (Kind::Clear, "lost-boiler"));
        assert_eq!(w, Watch::default());
    }

    #[test]
    fn bridge_offline_raises_and_online_clears() {
        let mut w = Watch::default();
        let on = json!({"state": "online"});
        let off = json!({"state": "offline"});
        assert_eq!(from_bridge_state(&on, &mut w, NOW, None), None);
        let n = from_bridge_state(&off, &mut w, NOW, None).unwrap();
        assert_eq!(
            (n.kind, n.level, n.tag.as_str()),
            (Kind::Raise, Level::Error, "bridge-state")
        );
        assert_eq!(from_bridge_state(&off, &mut w, NOW, None), None);
        let n = from_bridge_state(&on, &mut w, NOW, None).unwrap();
        assert_eq!(n.kind, Kind::Clear);
    }

    #[test]
    fn channel_rules_table() {
        let quiet = Some(QuietHours::parse("22:00-07:00").unwrap());
        let policy = Policy {
            min_level: Level::Error,
            quiet,
        };
        let r = |level: &str| from_alert_event(&raise(level), NOW, None).unwrap();
        let c = from_alert_event(&clear(), NOW, None).unwrap();
        let noon = 12 * 60;
        let night = 23 * 60;
        // (notification, minute of day, expected verdict), in order, one state.
        let steps: Vec<(Notification, u16, Verdict)> = vec![
            (c.clone(), noon, Verdict::NothingToClear),
            (r("warning"), noon, Verdict::BelowLevel),
            (c.clone(), noon, Verdict::NothingToClear),
            (r("error"), night, Verdict::Quiet),
            (c.clone(), night, Verdict::NothingToClear),
            (r("critical"), night, Verdict::Send),
            (r("critical"), night, Verdict::Duplicate),
            (
                Notification {
                    repeat: true,
                    ..r("critical")
                },
                noon,
                Verdict::Send,
            ),
            (c.clone(), noon, Verdict::Send),
            (c.clone(), noon, Verdict::NothingToClear),
            (r("error"), noon, Verdict::Send),
        ];
        let mut st = ChannelState::default();
        for (i, (n, minute, want)) in steps.into_iter().enumerate() {
            assert_eq!(admit(&n, &policy, &mut st, 100, minute), want, "step {i}");
        }
    }

    /// A warning with tag `t<i>`, for the rate-limit tests.
    fn tagged(i: usize, kind: Kind) -> Notification {
        Notification {
            kind,
            title: String::new(),
            body: String::new(),
            level: Level::Warning,
            tag: format!("t{i}"),
            time: NOW.into(),
            link: None,
            repeat: false,
        }
    }

    #[test]
    fn the_rate_limit_spares_clears_and_expires() {
        let policy = Policy {
            min_level: Level::Warning,
            quiet: None,
        };
        let mut st = ChannelState::default();
        let note = tagged;
        for i in 0..RATE_MAX {
            assert_eq!(
                admit(&note(i, Kind::Raise), &policy, &mut st, 0, 0),
                Verdict::Send
            );
        }
        assert_eq!(
            admit(&note(99, Kind::Raise), &policy, &mut st, 10, 0),
            Verdict::RateLimited
        );
        assert_eq!(
            admit(&note(0, Kind::Clear), &policy, &mut st, 10, 0),
            Verdict::Send
        );
        let later = RATE_WINDOW.as_secs() as i64;
        assert_eq!(
            admit(&note(99, Kind::Raise), &policy, &mut st, later, 0),
            Verdict::Send
        );
    }

    #[test]
    fn clears_do_not_use_up_the_rate_limit() {
        // Alternating raise and clear: every raise counts, no clear does,
        // so RATE_MAX episodes get through in one window, not half as many.
        let policy = Policy {
            min_level: Level::Warning,
            quiet: None,
        };
        let mut st = ChannelState::default();
        let note = tagged;
        for i in 0..RATE_MAX {
            assert_eq!(
                admit(&note(i, Kind::Raise), &policy, &mut st, 0, 0),
                Verdict::Send,
                "raise {i}"
            );
            assert_eq!(
                admit(&note(i, Kind::Clear), &policy, &mut st, 0, 0),
                Verdict::Send,
                "clear {i}"
            );
        }
        assert_eq!(
            admit(&note(99, Kind::Raise), &policy, &mut st, 0, 0),
            Verdict::RateLimited
        );
    }
}
