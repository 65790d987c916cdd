//! Telegram (core.telegram.org/bots/api#sendmessage): one `sendMessage`
//! per chat id, the text in MarkdownV2 with every special character
//! escaped. Telegram cannot replace a message, so a clear is a new, silent
//! message.

use serde_json::{Value, json};

use super::notify::{Kind, Notification};
use crate::config::TelegramConfig;

pub const API: &str = "https://api.telegram.org";

/// Telegram caps a message at 4096 characters.
const MAX_TEXT: usize = 4096;

/// MarkdownV2 treats these as markup anywhere in the text.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if "_*[]()~`>#+-=|{}.!\\".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The message text: the title in bold, then the body.
pub fn text(n: &Notification) -> String {
    let t = format!("*{}*\n{}", escape(&n.title), escape(&n.body));
    if t.chars().count() <= MAX_TEXT {
        return t;
    }
    // Cut the plain body and escape again, so no escape is split in two.
    let room = MAX_TEXT.saturating_sub(n.title.chars().count() * 2 + 8);
    let body: String = n.body.chars().take(room / 2).collect();
    format!("*{}*\n{}…", escape(&n.title), escape(&body))
}

/// `(url, JSON body)` of each `sendMessage`, one per chat. The URL holds
/// the bot token: never log it.
pub fn requests(channel: &TelegramConfig, n: &Notification) -> Vec<(String, Value)> {
    let url = format!(
        "{}/bot{}/sendMessage",
        channel.api_url.trim_end_matches('/'),
        channel.bot_token.expose()
    );
    let text = text(n);
    channel
        .chat_ids
        .iter()
        .map(|chat| {
            (
                url.clone(),
                json!({
                    "chat_id": chat,
                    "text": text,
                    "parse_mode": "MarkdownV2",
                    "disable_notification": n.kind == Kind::Clear,
                }),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::core::alerts::Level;

    fn note(kind: Kind, body: &str) -> Notification {
        Notification {
            kind,
            title: "Critical: Battery 1".into(),
            body: body.into(),
            level: Level::Critical,
            tag: "soc_critical-battery1".into(),
            time: "2026-11-21T18:04:00Z".into(),
            link: None,
            repeat: false,
        }
    }

    #[test]
    fn markdown_v2_is_escaped() {
        assert_eq!(
            escape("SOC 8.5 % (below 10 %) - cell_3 [x]!"),
            r"SOC 8\.5 % \(below 10 %\) \- cell\_3 \[x\]\!"
        );
        assert_eq!(escape(r"a\b*c`d"), r"a\\b\*c\`d");
        assert_eq!(
            text(&note(Kind::Raise, "Battery 1: SOC 8 % is below 10 %.")),
            "*Critical: Battery 1*\nBattery 1: SOC 8 % is below 10 %\\."
        );
        let long = text(&note(Kind::Raise, &"-".repeat(5000)));
        assert!(long.chars().count() <= MAX_TEXT, "{}", long.chars().count());
        assert!(!long.trim_end_matches('…').ends_with('\\'));
    }

    #[test]
    fn one_request_per_chat() {
        let ch = TelegramConfig {
            bot_token: Secret::new("123:ABC"),
            chat_ids: vec![42, -1001],
            min_level: Level::Warning,
            api_url: "http://127.0.0.1:9/".into(),
        };
        let r = requests(&ch, &note(Kind::Clear, "back"));
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].0, "http://127.0.0.1:9/bot123:ABC/sendMessage");
        assert_eq!(r[0].1["chat_id"], 42);
        assert_eq!(r[1].1["chat_id"], -1001);
        assert_eq!(r[0].1["parse_mode"], "MarkdownV2");
        assert_eq!(r[0].1["disable_notification"], true);
        assert_eq!(r[0].1["text"], "*Critical: Battery 1*\nback");
    }
}
