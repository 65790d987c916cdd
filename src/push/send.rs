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
pub async fn ntfy(client: &reqwest::Client, req: &NtfyRequest) -> Plain {
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
        match super::webpush::backoff(attempt) {
            Some(d) => {
                tokio::time::sleep(d.min(Duration::from_secs(8))).await;
                attempt += 1;
            }
            None => return Plain::Failed(result),
        }
    }
}
