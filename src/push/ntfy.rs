//! ntfy (docs.ntfy.sh/publish): `POST <server>/<topic>` with the message
//! as the body and title, priority, tags and click link as headers.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::notify::{Kind, Notification};
use crate::config::NtfyConfig;
use crate::core::alerts::Level;

/// One ntfy publish: URL, headers (the token included), body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NtfyRequest {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// ntfy's 1-5 scale: critical alerts use 5 (bypasses Do Not Disturb on
/// Android when the user allows it), clears are quiet.
pub fn priority(n: &Notification) -> u8 {
    match (n.kind, n.level) {
        (Kind::Clear, _) => 2,
        (_, Level::Critical) => 5,
        (_, Level::Error) => 4,
        (_, Level::Warning) => 3,
    }
}

/// Emoji short codes ntfy shows before the title.
pub fn tags(n: &Notification) -> &'static str {
    match (n.kind, n.level) {
        (Kind::Clear, _) => "white_check_mark,energy2mqtt",
        (_, Level::Critical) => "rotating_light,energy2mqtt",
        (_, _) => "warning,energy2mqtt",
    }
}

/// HTTP headers carry ASCII only; ntfy (≥ 2.4) decodes RFC 2047 encoded
/// words, so "Température" or "→" still arrive as written.
pub fn header_text(s: &str) -> String {
    let clean: String = s.chars().filter(|c| !c.is_control()).collect();
    if clean.is_ascii() {
        clean
    } else {
        format!("=?UTF-8?B?{}?=", STANDARD.encode(clean.as_bytes()))
    }
}

pub fn request(channel: &NtfyConfig, n: &Notification) -> NtfyRequest {
    let url = format!("{}/{}", channel.url.trim_end_matches('/'), channel.topic);
    let mut headers = vec![
        ("Title", header_text(&n.title)),
        ("Priority", priority(n).to_string()),
        ("Tags", tags(n).to_owned()),
        ("Content-Type", "text/plain; charset=utf-8".to_owned()),
    ];
    if let Some(link) = &n.link {
        headers.push(("Click", header_text(link)));
    }
    if let Some(token) = &channel.token {
        headers.push(("Authorization", format!("Bearer {}", token.expose())));
    }
    NtfyRequest {
        url,
        headers,
        body: if n.body.is_empty() {
            n.title.clone()
        } else {
            n.body.clone()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn note(kind: Kind, level: Level) -> Notification {
        Notification {
            kind,
            title: "Critical: Batterie 1 – Zelle".into(),
            body: "Battery 1: SOC 8 % is below 10 %".into(),
            level,
            tag: "soc_critical-battery1".into(),
            time: "2026-11-21T18:04:00Z".into(),
            link: Some("https://e2m.example/".into()),
            repeat: false,
        }
    }

    #[test]
    fn a_publish_request() {
        let ch = NtfyConfig {
            url: "https://ntfy.example/".into(),
            topic: "e2m-a1b2".into(),
            token: Some(Secret::new("tk_secret")),
            min_level: Level::Warning,
        };
        let r = request(&ch, &note(Kind::Raise, Level::Critical));
        assert_eq!(r.url, "https://ntfy.example/e2m-a1b2");
        assert_eq!(r.body, "Battery 1: SOC 8 % is below 10 %");
        let h = |k: &str| {
            r.headers
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(h("Priority"), Some("5"));
        assert_eq!(h("Tags"), Some("rotating_light,energy2mqtt"));
        assert_eq!(h("Click"), Some("https://e2m.example/"));
        assert_eq!(h("Authorization"), Some("Bearer tk_secret"));
        let title = h("Title").unwrap();
        assert!(title.is_ascii());
        let b64 = title
            .strip_prefix("=?UTF-8?B?")
            .and_then(|t| t.strip_suffix("?="))
            .unwrap();
        assert_eq!(
            String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap(),
            "Critical: Batterie 1 – Zelle"
        );
        assert_eq!(header_text("plain\ntext"), "plaintext");
        assert_eq!(priority(&note(Kind::Clear, Level::Critical)), 2);
        assert_eq!(priority(&note(Kind::Raise, Level::Error)), 4);
        assert_eq!(priority(&note(Kind::Raise, Level::Warning)), 3);
        assert_eq!(
            tags(&note(Kind::Clear, Level::Error)),
            "white_check_mark,energy2mqtt"
        );
        // Without a token there is no Authorization header at all.
        let open = NtfyConfig { token: None, ..ch };
        let r = request(&open, &note(Kind::Raise, Level::Warning));
        assert!(r.headers.iter().all(|(k, _)| *k != "Authorization"));
    }
}
