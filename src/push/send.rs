//! The thin transport: sends what the pure modules built and hands the
//! answer back to them. Network errors count as transient.

use std::time::Duration;

use super::ntfy::NtfyRequest;
use super::webpush::{Outcome, PushRequest, classify};

/// One Web Push attempt.
pub async fn webpush_once(client: &reqwest::Client, req: &PushRequest, now_unix: i64) -> Outcome {
    let mut r = client.post(req.url.as_str()).body(req.body.clone());
    for (k, v) in &req.headers {
        r = r.header(*k, v);
    }
    match r.send().await {
        Ok(resp) => {
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            classify(resp.status().as_u16(), retry_after.as_deref(), now_unix)
        }
        Err(e) => {
            tracing::debug!(error = %e, "push service unreachable");
            Outcome::Transient
        }
    }
}

/// Web Push with retries: 429 waits for `Retry-After`, 5xx and network
/// errors back off ([`super::webpush::backoff`]); the final outcome.
pub async fn webpush(
    client: &reqwest::Client,
    req: &PushRequest,
    now_unix: impl Fn() -> i64,
) -> Outcome {
    let mut attempt = 1;
    loop {
        let outcome = webpush_once(client, req, now_unix()).await;
        let wait = match &outcome {
            Outcome::RetryAfter(d) => Some(*d),
            Outcome::Transient => super::webpush::backoff(attempt),
            _ => None,
        };
        match wait {
            Some(d) if attempt < super::webpush::MAX_ATTEMPTS => {
                tokio::time::sleep(d).await;
                attempt += 1;
            }
            _ => return outcome,
        }
    }
}

/// Retries on 5xx and network errors for ntfy and Telegram: `attempts`
/// in all, waiting `first`, then twice as long each time.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    pub first: Duration,
}

impl Retry {
    /// 1 s, 2 s, 4 s, 8 s: five attempts within 15 s.
    pub const DEFAULT: Retry = Retry {
        attempts: super::webpush::MAX_ATTEMPTS,
        first: Duration::from_secs(1),
    };

    /// The wait after failed attempt `attempt` (1-based), `None` when done.
    pub fn wait(&self, attempt: u32) -> Option<Duration> {
        (1..self.attempts)
            .contains(&attempt)
            .then(|| self.first * (1 << (attempt - 1).min(16)))
    }
}

/// One channel's result of one delivery, as `test` and `POST /api/test`
/// report it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// `webpush <origin>`, `ntfy <server>/<topic>`, `telegram [<chat ids>]`:
    /// never a secret nor a whole endpoint.
    pub channel: String,
    pub result: String,
    pub ok: bool,
}

/// What an ntfy or Telegram server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plain {
    Ok,
    /// 4xx: a configuration problem; the text says which.
    Rejected(String),
    /// 5xx/network after every retry.
    Failed(String),
}

/// POSTs with bounded retries on 5xx and network errors.
pub async fn ntfy(client: &reqwest::Client, req: &NtfyRequest, retry: Retry) -> Plain {
    let mut attempt = 1;
    loop {
        let mut r = client.post(&req.url).body(req.body.clone());
        for (k, v) in &req.headers {
            r = r.header(*k, v);
        }
        let result = match r.send().await {
            Ok(resp) if resp.status().is_success() => return Plain::Ok,
            Ok(resp) if resp.status().is_client_error() => {
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                let text: String = text.chars().take(200).collect();
                return Plain::Rejected(format!(
                    "ntfy answered {status} {}: check push.ntfy url, topic and token",
                    text.trim()
                ));
            }
            Ok(resp) => format!("ntfy answered {}", resp.status().as_u16()),
            Err(e) => format!("ntfy unreachable: {e}"),
        };
        match retry.wait(attempt) {
            Some(d) => {
                tokio::time::sleep(d).await;
                attempt += 1;
            }
            None => return Plain::Failed(result),
        }
    }
}

/// Telegram `sendMessage`s with bounded retries; `Plain::Ok` once every
/// chat got it. Errors never include the URL (it holds the bot token).
pub async fn telegram(
    client: &reqwest::Client,
    requests: &[(String, serde_json::Value)],
    retry: Retry,
) -> Plain {
    for (url, body) in requests {
        let mut attempt = 1;
        loop {
            let sent = client
                .post(url)
                .header("Content-Type", "application/json")
                .body(body.to_string())
                .send()
                .await;
            let result = match sent {
                Ok(resp) if resp.status().is_success() => break,
                Ok(resp) if resp.status().is_client_error() => {
                    let status = resp.status().as_u16();
                    let text = resp.text().await.unwrap_or_default();
                    let text: String = text.chars().take(200).collect();
                    return Plain::Rejected(format!(
                        "Telegram answered {status} {}: check push.telegram bot_token and chat_ids \
                         (the bot must have been started in that chat)",
                        text.trim()
                    ));
                }
                Ok(resp) => format!("Telegram answered {}", resp.status().as_u16()),
                // without_url: reqwest's message would include the token.
                Err(e) => format!("Telegram unreachable: {}", e.without_url()),
            };
            match retry.wait(attempt) {
                Some(d) => {
                    tokio::time::sleep(d).await;
                    attempt += 1;
                }
                None => return Plain::Failed(result),
            }
        }
    }
    Plain::Ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A one-request-at-a-time HTTP server on loopback answering `statuses`
    /// in turn; returns the port and the requests it saw.
    async fn fake(statuses: Vec<u16>) -> (u16, tokio::task::JoinHandle<Vec<String>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            for status in statuses {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the head, then as much body as Content-Length says.
                loop {
                    let n = s.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break;
                        }
                    }
                    if n == 0 {
                        break;
                    }
                }
                seen.push(String::from_utf8_lossy(&buf).to_string());
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
                );
                s.write_all(reply.as_bytes()).await.unwrap();
            }
            seen
        });
        (port, task)
    }

    const FAST: Retry = Retry {
        attempts: 5,
        first: Duration::from_millis(10),
    };

    #[test]
    fn default_retry_is_bounded() {
        let waits: Vec<_> = (1..=6).map(|a| Retry::DEFAULT.wait(a)).collect();
        let s = |n| Some(Duration::from_secs(n));
        assert_eq!(waits, [s(1), s(2), s(4), s(8), None, None]);
    }

    fn client() -> reqwest::Client {
        crate::https::plain_client_builder().build().unwrap()
    }

    #[tokio::test]
    async fn telegram_posts_json_and_retries_5xx_a_bounded_number_of_times() {
        let (port, seen) = fake(vec![503, 200]).await;
        let ch = crate::config::TelegramConfig {
            bot_token: crate::config::Secret::new("123:ABC"),
            chat_ids: vec![42],
            min_level: crate::core::alerts::Level::Warning,
            api_url: format!("http://127.0.0.1:{port}"),
        };
        let n = crate::push::notify::Notification {
            kind: crate::push::notify::Kind::Raise,
            title: "Error: Deye".into(),
            body: "F35 no AC grid.".into(),
            level: crate::core::alerts::Level::Error,
            tag: "t".into(),
            time: "2026-11-21T18:04:00Z".into(),
            link: None,
            repeat: false,
        };
        let ch = crate::config::TelegramConfig {
            api_url: format!("http://127.0.0.1:{port}"),
            ..ch.clone()
        };
        let reqs = crate::push::telegram::requests(&ch, &n);
        assert_eq!(telegram(&client(), &reqs, FAST).await, Plain::Ok);
        let seen = seen.await.unwrap();
        assert_eq!(seen.len(), 2, "one retry after the 503");
        let req = &seen[1];
        assert!(
            req.starts_with("POST /bot123:ABC/sendMessage HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(
            req.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{req}"
        );
        let body: serde_json::Value =
            serde_json::from_str(req.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"chat_id": 42, "text": "*Error: Deye*\nF35 no AC grid\\.",
                               "parse_mode": "MarkdownV2", "disable_notification": false})
        );

        // Always 5xx: MAX_ATTEMPTS tries, then it gives up.
        let (port, seen) = fake(vec![500; FAST.attempts as usize]).await;
        let ch = crate::config::TelegramConfig {
            api_url: format!("http://127.0.0.1:{port}"),
            ..ch.clone()
        };
        let reqs = crate::push::telegram::requests(&ch, &n);
        assert_eq!(
            telegram(&client(), &reqs, FAST).await,
            Plain::Failed("Telegram answered 500".into())
        );
        assert_eq!(
            seen.await.unwrap().len(),
            super::super::webpush::MAX_ATTEMPTS as usize
        );

        // 4xx is not retried and names the keys to check.
        let (port, seen) = fake(vec![401]).await;
        let ch = crate::config::TelegramConfig {
            api_url: format!("http://127.0.0.1:{port}"),
            ..ch.clone()
        };
        let reqs = crate::push::telegram::requests(&ch, &n);
        let Plain::Rejected(why) = telegram(&client(), &reqs, FAST).await else {
            panic!("a 401 is a rejection")
        };
        assert!(why.contains("bot_token"), "{why}");
        assert!(!why.contains("123:ABC"), "the token stays out: {why}");
        assert_eq!(seen.await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn ntfy_posts_and_retries_5xx_a_bounded_number_of_times() {
        let n = crate::push::notify::Notification {
            kind: crate::push::notify::Kind::Raise,
            title: "Critical: Battery 1".into(),
            body: "SOC 8 % is below 10 %".into(),
            level: crate::core::alerts::Level::Critical,
            tag: "soc_critical-battery1".into(),
            time: "2026-11-21T18:04:00Z".into(),
            link: None,
            repeat: false,
        };
        let channel = |port: u16| crate::config::NtfyConfig {
            url: format!("http://127.0.0.1:{port}"),
            topic: "e2m".into(),
            token: Some(crate::config::Secret::new("tk_1")),
            min_level: crate::core::alerts::Level::Warning,
        };
        // 502 then 200: retried once, the same request both times.
        let (port, seen) = fake(vec![502, 200]).await;
        let req = crate::push::ntfy::request(&channel(port), &n);
        assert_eq!(ntfy(&client(), &req, FAST).await, Plain::Ok);
        let seen = seen.await.unwrap();
        assert_eq!(seen.len(), 2);
        for r in &seen {
            assert!(r.starts_with("POST /e2m HTTP/1.1\r\n"), "{r}");
            let head = r.to_ascii_lowercase();
            assert!(head.contains("authorization: bearer tk_1"), "{r}");
            assert!(head.contains("priority: 5"), "{r}");
            assert!(r.ends_with("\r\n\r\nSOC 8 % is below 10 %"), "{r}");
        }
        // Always 5xx: exactly `attempts` tries, then it gives up.
        let (port, seen) = fake(vec![500; FAST.attempts as usize]).await;
        let req = crate::push::ntfy::request(&channel(port), &n);
        assert!(matches!(
            ntfy(&client(), &req, FAST).await,
            Plain::Failed(_)
        ));
        assert_eq!(seen.await.unwrap().len(), FAST.attempts as usize);
        // A 4xx is not retried.
        let (port, seen) = fake(vec![403]).await;
        let req = crate::push::ntfy::request(&channel(port), &n);
        let Plain::Rejected(why) = ntfy(&client(), &req, FAST).await else {
            panic!("a 403 is a rejection")
        };
        assert!(why.contains("token"), "{why}");
        assert_eq!(seen.await.unwrap().len(), 1);
    }
}
