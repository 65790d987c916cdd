//! `[push]`: the notification sidecar `energy2mqtt-push` (docs/NOTIFICATIONS.md).
//! The bridge reads and validates this section but never acts on it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::schedule::TimeOfDay;
use super::{Secret, duration};
use crate::core::alerts::Level;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// Address of the sidecar's HTTP interface (subscribe page, API).
    pub listen: SocketAddr,
    /// Bearer token for the HTTP interface; required off loopback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// PEM (PKCS#8 or SEC1) VAPID key; unset: generated and kept in `[storage] dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vapid_private_key_file: Option<PathBuf>,
    /// Where users open the subscribe page (your HTTPS reverse proxy, e.g.
    /// `https://e2m.example.net/`): the link a notification opens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// `mailto:` or `https:` contact sent to push services (RFC 8292 `sub`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vapid_subject: Option<String>,
    /// Least level Web Push delivers; ntfy/Telegram have their own.
    pub min_level: Level,
    /// `"22:00-07:00"`: only critical notifications in this window (local time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<String>,
    /// A `device_lost` is notified only once the device has stayed lost this long.
    #[serde(with = "duration")]
    pub device_lost_after: Duration,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ntfy: Vec<NtfyConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub telegram: Vec<TelegramConfig>,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            token: None,
            vapid_private_key_file: None,
            public_url: None,
            vapid_subject: None,
            min_level: Level::Warning,
            quiet_hours: None,
            device_lost_after: Duration::from_secs(300),
            ntfy: Vec::new(),
            telegram: Vec::new(),
        }
    }
}

impl PushConfig {
    /// Untouched: left out of `bridge/info` and `check-config`, so that a
    /// bridge without the sidecar shows what it showed before.
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NtfyConfig {
    /// Server, e.g. `https://ntfy.sh`.
    pub url: String,
    pub topic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    #[serde(default = "default_level")]
    pub min_level: Level,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TelegramConfig {
    pub bot_token: Secret,
    pub chat_ids: Vec<i64>,
    #[serde(default = "default_level")]
    pub min_level: Level,
    /// The Bot API server: Telegram's, or a self-hosted `telegram-bot-api`.
    #[serde(default = "default_telegram_api")]
    pub api_url: String,
}

fn default_telegram_api() -> String {
    crate::push::telegram::API.to_owned()
}

fn default_level() -> Level {
    Level::Warning
}

/// A daily window `start-end` in local time; `end` before `start` wraps
/// past midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub start: TimeOfDay,
    pub end: TimeOfDay,
}

impl QuietHours {
    pub fn parse(input: &str) -> Result<Self, String> {
        let (a, b) = input
            .split_once('-')
            .ok_or_else(|| format!("\"{input}\" is not a window like \"22:00-07:00\""))?;
        let start = TimeOfDay::parse(a)?;
        let end = TimeOfDay::parse(b)?;
        if start == end {
            return Err(format!("\"{input}\" is an empty window"));
        }
        Ok(Self { start, end })
    }

    /// Whether the minute of the day `minute` (0..1440) is inside.
    pub fn contains(&self, minute: u16) -> bool {
        let (s, e) = (self.start.minute_of_day(), self.end.minute_of_day());
        if s < e {
            (s..e).contains(&minute)
        } else {
            minute >= s || minute < e
        }
    }
}

/// The `[push]` checks, as (key, reason).
pub(super) fn check(p: &PushConfig) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut err = |k: &str, r: String| out.push((k.to_owned(), r));
    if p.listen.port() == 0 {
        err("push.listen", "port 0 is not allowed".into());
    }
    if !super::is_loopback(p.listen.ip()) && p.token.as_ref().is_none_or(|t| t.is_empty()) {
        err(
            "push.token",
            format!(
                "push.listen {} is reachable from the network: set push.token, or listen on 127.0.0.1",
                p.listen
            ),
        );
    }
    if p.token
        .as_ref()
        .is_some_and(|t| t.expose().trim().is_empty())
    {
        err("push.token", "must not be empty".into());
    }
    if let Some(f) = &p.vapid_private_key_file {
        if !f.is_file() {
            err(
                "push.vapid_private_key_file",
                format!("cannot read {}: no such file", f.display()),
            );
        }
    }
    if let Some(u) = &p.public_url {
        if !url::Url::parse(u)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        {
            err(
                "push.public_url",
                format!("\"{u}\" is not an http(s) URL like https://e2m.example.net/"),
            );
        }
    }
    if let Some(s) = &p.vapid_subject {
        let ok = (s.starts_with("mailto:") && s.len() > "mailto:".len() && s.contains('@'))
            || url::Url::parse(s).is_ok_and(|u| u.scheme() == "https" && u.host().is_some());
        if !ok {
            err(
                "push.vapid_subject",
                format!("\"{s}\" is neither mailto:you@example.com nor an https:// URL"),
            );
        }
    }
    if let Some(q) = &p.quiet_hours {
        if let Err(r) = QuietHours::parse(q) {
            err("push.quiet_hours", r);
        }
    }
    if p.device_lost_after.is_zero() {
        err("push.device_lost_after", "must be greater than 0".into());
    }
    for (i, n) in p.ntfy.iter().enumerate() {
        match url::Url::parse(&n.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => err(
                &format!("push.ntfy[{i}].url"),
                format!(
                    "\"{}\" is not an http(s) server URL like https://ntfy.sh",
                    n.url
                ),
            ),
        }
        let t = n.topic.as_str();
        if t.is_empty()
            || t.len() > 64
            || !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            err(
                &format!("push.ntfy[{i}].topic"),
                "use 1-64 letters, digits, '_' or '-' (what ntfy accepts)".into(),
            );
        }
    }
    for (i, t) in p.telegram.iter().enumerate() {
        // `123456:ABC-...`; a token with '/' or spaces would break the URL path.
        let tok = t.bot_token.expose();
        let ok = tok.split_once(':').is_some_and(|(id, rest)| {
            !id.is_empty()
                && id.bytes().all(|b| b.is_ascii_digit())
                && !rest.is_empty()
                && rest
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
        if !ok {
            err(
                &format!("push.telegram[{i}].bot_token"),
                "is not a bot token like 123456789:AAE... (from @BotFather)".into(),
            );
        }
        if !url::Url::parse(&t.api_url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        {
            err(
                &format!("push.telegram[{i}].api_url"),
                format!(
                    "\"{}\" is not an http(s) URL like https://api.telegram.org",
                    t.api_url
                ),
            );
        }
        if t.chat_ids.is_empty() {
            err(
                &format!("push.telegram[{i}].chat_ids"),
                "needs at least one chat id".into(),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_hours_wrap_past_midnight() {
        let q = QuietHours::parse("22:00-07:00").unwrap();
        assert!(q.contains(22 * 60));
        assert!(q.contains(3 * 60));
        assert!(!q.contains(7 * 60));
        assert!(!q.contains(12 * 60));
        let d = QuietHours::parse("13:00-14:30").unwrap();
        assert!(d.contains(14 * 60 + 29));
        assert!(!d.contains(14 * 60 + 30));
        assert!(!d.contains(12 * 60 + 59));
        assert!(QuietHours::parse("22:00").is_err());
        assert!(QuietHours::parse("07:00-07:00").is_err());
        assert!(QuietHours::parse("25:00-07:00").is_err());
    }

    #[test]
    fn checks_name_the_key() {
        let keys = |p: &PushConfig| check(p).into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert!(keys(&PushConfig::default()).is_empty());
        let p = PushConfig {
            listen: "0.0.0.0:8787".parse().unwrap(),
            vapid_subject: Some("me@example.com".into()),
            public_url: Some("e2m.local".into()),
            quiet_hours: Some("late".into()),
            ntfy: vec![NtfyConfig {
                url: "ntfy.sh".into(),
                topic: "a/b".into(),
                token: None,
                min_level: Level::Warning,
            }],
            telegram: vec![TelegramConfig {
                bot_token: Secret::new("nope"),
                chat_ids: vec![],
                min_level: Level::Warning,
                api_url: "api.telegram.org".into(),
            }],
            ..PushConfig::default()
        };
        assert_eq!(
            keys(&p),
            [
                "push.token",
                "push.public_url",
                "push.vapid_subject",
                "push.quiet_hours",
                "push.ntfy[0].url",
                "push.ntfy[0].topic",
                "push.telegram[0].bot_token",
                "push.telegram[0].api_url",
                "push.telegram[0].chat_ids",
            ]
        );
        let ok = PushConfig {
            listen: "0.0.0.0:8787".parse().unwrap(),
            token: Some(Secret::new("t0k3n")),
            vapid_subject: Some("https://example.com/contact".into()),
            telegram: vec![TelegramConfig {
                bot_token: Secret::new("123456:AAE-x_y"),
                chat_ids: vec![42],
                min_level: Level::Critical,
                api_url: default_telegram_api(),
            }],
            ..PushConfig::default()
        };
        assert!(keys(&ok).is_empty(), "{:?}", check(&ok));
    }
}
