//! Web Push delivery (RFC 8030/8291): subscriptions as browsers hand them
//! out, message encryption (web-push-native), the request headers, and what
//! a push service's answer means for us — a pure function, so every answer
//! is tested without a network.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};

use super::vapid::VapidKey;

/// Push services reject bodies over 4096 bytes, encryption included
/// ([`OVERHEAD`]).
pub const MAX_BODY: usize = 4096;

/// `PushSubscription.toJSON()`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Subscription {
    pub endpoint: String,
    pub keys: Keys,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Keys {
    /// The browser's P-256 public key, base64url (65-byte point).
    pub p256dh: String,
    /// The 16-byte auth secret, base64url.
    pub auth: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubscriptionError {
    #[error("endpoint is not a URL: {0}")]
    BadEndpoint(String),
    #[error("endpoint must be https:// (http:// only on loopback): {0}")]
    Insecure(String),
    #[error("keys.p256dh is not a P-256 public key")]
    BadP256dh,
    #[error("keys.auth is not 16 bytes of base64url")]
    BadAuth,
    #[error("payload of {0} bytes does not fit one push message (at most {max})", max = MAX_BODY - OVERHEAD)]
    TooLarge(usize),
    #[error("an empty payload cannot be sent")]
    Empty,
    #[error("encryption failed: {0}")]
    Encrypt(String),
}

/// Bytes encryption adds to a payload: salt 16 + rs 4 + idlen 1 + key id
/// 65, the padding delimiter 1 and the AES-GCM tag 16.
pub const OVERHEAD: usize = 16 + 4 + 1 + 65 + 1 + 16;

pub fn encrypted_len(payload: usize) -> usize {
    payload + OVERHEAD
}

/// Browsers send unpadded base64url; some libraries pad. Both are fine.
fn b64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
        .or_else(|| URL_SAFE.decode(s).ok())
}

/// A subscription whose endpoint and keys are usable; what [`encrypt`]
/// and [`request_parts`] take.
#[derive(Debug, Clone)]
pub struct Target {
    pub endpoint: url::Url,
    ua_public: web_push_native::p256::PublicKey,
    auth: web_push_native::Auth,
}

impl Subscription {
    pub fn target(&self) -> Result<Target, SubscriptionError> {
        let endpoint = check_endpoint(&self.endpoint)?;
        let key = b64(&self.keys.p256dh).ok_or(SubscriptionError::BadP256dh)?;
        let ua_public = web_push_native::p256::PublicKey::from_sec1_bytes(&key)
            .map_err(|_| SubscriptionError::BadP256dh)?;
        let auth = b64(&self.keys.auth).ok_or(SubscriptionError::BadAuth)?;
        if auth.len() != 16 {
            return Err(SubscriptionError::BadAuth);
        }
        Ok(Target {
            endpoint,
            ua_public,
            auth: web_push_native::Auth::clone_from_slice(&auth),
        })
    }
}

/// `https://` anywhere; `http://` only to a loopback host (local tests, a
/// push service on the same machine).
pub fn check_endpoint(endpoint: &str) -> Result<url::Url, SubscriptionError> {
    let url =
        url::Url::parse(endpoint).map_err(|_| SubscriptionError::BadEndpoint(endpoint.into()))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => crate::config::is_loopback(ip.into()),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => return Err(SubscriptionError::BadEndpoint(endpoint.into())),
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(SubscriptionError::Insecure(endpoint.into())),
    }
}

/// The `aes128gcm` body for `payload` (one record, random salt and
/// sender key).
pub fn encrypt(target: &Target, payload: &[u8]) -> Result<Vec<u8>, SubscriptionError> {
    // An empty record would give rs = 17, below RFC 8188's minimum of 18.
    if payload.is_empty() {
        return Err(SubscriptionError::Empty);
    }
    if encrypted_len(payload.len()) > MAX_BODY {
        return Err(SubscriptionError::TooLarge(payload.len()));
    }
    web_push_native::encrypt(payload.to_vec(), &target.ua_public, &target.auth)
        .map_err(|e| SubscriptionError::Encrypt(e.to_string()))
}

/// RFC 8030 §5.3: how soon the phone should wake up for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    Low,
    Normal,
    High,
}

impl Urgency {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
        }
    }

    /// Critical alerts wake the phone; the rest may wait for it.
    pub fn for_level(level: crate::core::alerts::Level) -> Self {
        match level {
            crate::core::alerts::Level::Critical => Self::High,
            _ => Self::Normal,
        }
    }
}

/// Everything of one push request but the transport: URL, headers, body.
#[derive(Debug, Clone)]
pub struct PushRequest {
    pub url: url::Url,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// The request for `payload`: encrypted body, `TTL` (how long the service
/// keeps it for an offline phone — independent of the JWT's lifetime),
/// `Urgency`, an optional `Topic` (a newer message with the same topic
/// replaces an undelivered one) and the VAPID authorization.
#[allow(clippy::too_many_arguments)]
pub fn request_parts(
    target: &Target,
    vapid: &VapidKey,
    subject: Option<&str>,
    payload: &[u8],
    ttl: Duration,
    urgency: Urgency,
    topic: Option<&str>,
    now_unix: u64,
) -> Result<PushRequest, PushBuildError> {
    let body = encrypt(target, payload)?;
    let authorization = vapid.authorization(
        &target.endpoint,
        subject,
        now_unix,
        Duration::from_secs(12 * 3600),
    )?;
    let mut headers = vec![
        ("TTL", ttl.as_secs().to_string()),
        ("Urgency", urgency.as_str().to_owned()),
        ("Content-Encoding", "aes128gcm".to_owned()),
        ("Content-Type", "application/octet-stream".to_owned()),
        ("Authorization", authorization),
    ];
    if let Some(t) = topic.filter(|t| is_topic(t)) {
        headers.push(("Topic", t.to_owned()));
    }
    Ok(PushRequest {
        url: target.endpoint.clone(),
        headers,
        body,
    })
}

/// RFC 8030 §5.4: at most 32 characters of the base64url alphabet.
pub fn is_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 32
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[derive(Debug, thiserror::Error)]
pub enum PushBuildError {
    #[error(transparent)]
    Subscription(#[from] SubscriptionError),
    #[error(transparent)]
    Vapid(#[from] super::vapid::VapidError),
}

/// What to do after a push service answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 201 (or another 2xx): delivered to the push service.
    Delivered,
    /// 404/410: the browser unsubscribed or the subscription expired;
    /// delete it.
    Gone,
    /// 413: send a shorter payload.
    TooLarge,
    /// 429: try again after this long.
    RetryAfter(Duration),
    /// 5xx or a network error: retry with backoff.
    Transient,
    /// 400/401/403 and other 4xx: retrying will not help; log once, with
    /// what the user can do.
    Rejected(String),
}

/// The longest `Retry-After` we wait for one message (a longer one is
/// cut to this): later notifications queue behind it, and an alert
/// delivered an hour late is worth little.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// Used when a 429 comes without a readable `Retry-After`.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Maps a push service's answer to what to do. `retry_after` is the raw
/// header (seconds or an HTTP date), `now_unix` to read the date form.
pub fn classify(status: u16, retry_after: Option<&str>, now_unix: i64) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        404 | 410 => Outcome::Gone,
        413 => Outcome::TooLarge,
        429 => Outcome::RetryAfter(
            retry_after
                .and_then(|v| parse_retry_after(v, now_unix))
                .unwrap_or(DEFAULT_RETRY_AFTER)
                .min(MAX_RETRY_AFTER),
        ),
        500..=599 => Outcome::Transient,
        400 => Outcome::Rejected(
            "the push service rejected the request as malformed (400); \
             report it with the log line"
                .into(),
        ),
        401 | 403 => Outcome::Rejected(format!(
            "the push service refused our VAPID authorization ({status}): the subscription \
             was made with another key — keep the original vapid_private_key_file, or \
             subscribe this browser again; check vapid_subject is mailto: or https:"
        )),
        _ => Outcome::Rejected(format!("the push service answered {status}")),
    }
}

/// `Retry-After: 120` or `Retry-After: Wed, 21 Oct 2026 07:28:00 GMT`.
pub fn parse_retry_after(value: &str, now_unix: i64) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?.timestamp();
    Some(Duration::from_secs(
        at.saturating_sub(now_unix).max(0) as u64
    ))
}

/// Attempts for one message on transient failures, the first included.
pub const MAX_ATTEMPTS: u32 = 5;

/// The wait before attempt `attempt + 1` (1 s, 2 s, 4 s, 8 s), `None`
/// once [`MAX_ATTEMPTS`] have been made.
pub fn backoff(attempt: u32) -> Option<Duration> {
    (1..MAX_ATTEMPTS)
        .contains(&attempt)
        .then(|| Duration::from_secs(1 << (attempt - 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    /// RFC 8291 Appendix A, read from the shared vectors in place.
    fn vector() -> Option<serde_json::Value> {
        let dir = crate::testing::vectors_dir("webpush")?;
        let text = std::fs::read_to_string(dir.join("rfc8291.json")).expect("rfc8291.json");
        Some(serde_json::from_str(&text).expect("rfc8291.json is JSON"))
    }

    fn ua_secret(v: &serde_json::Value) -> web_push_native::p256::SecretKey {
        let raw = decode(v["inputs"]["ua_private"].as_str().unwrap());
        web_push_native::p256::SecretKey::from_slice(&raw).unwrap()
    }

    fn auth_of(v: &serde_json::Value) -> web_push_native::Auth {
        web_push_native::Auth::clone_from_slice(&decode(
            v["inputs"]["auth_secret"].as_str().unwrap(),
        ))
    }

    #[test]
    fn rfc8291_appendix_a_decrypts_to_its_plaintext() {
        let Some(v) = vector() else { return };
        let body = decode(v["body"].as_str().unwrap());
        let plain = web_push_native::decrypt(body.clone(), &ua_secret(&v), &auth_of(&v)).unwrap();
        assert_eq!(plain, decode(v["inputs"]["plaintext"].as_str().unwrap()));
        assert_eq!(
            String::from_utf8(plain).unwrap(),
            "When I grow up, I want to be a watermelon"
        );
        assert_eq!(
            &body[..86],
            &decode(v["intermediate"]["header"].as_str().unwrap())[..]
        );
        assert_eq!(encrypted_len(41), body.len());
    }

    #[test]
    fn our_bodies_have_the_rfc_layout_and_round_trip() {
        let Some(v) = vector() else { return };
        let sub = Subscription {
            endpoint: "https://push.example.net/send/abc".into(),
            keys: Keys {
                p256dh: v["inputs"]["ua_public"].as_str().unwrap().into(),
                auth: v["inputs"]["auth_secret"].as_str().unwrap().into(),
            },
        };
        let target = sub.target().unwrap();
        let mut seen_salts = std::collections::HashSet::new();
        for len in [1usize, 41, 500, MAX_BODY - OVERHEAD] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let body = encrypt(&target, &payload).unwrap();
            assert_eq!(body.len(), encrypted_len(len));
            // salt(16) ‖ rs ‖ idlen = 65 ‖ keyid = an uncompressed point.
            // web-push-native sizes the one record exactly (rs = payload +
            // delimiter + tag) where the RFC example uses 4096; RFC 8188
            // allows any rs ≥ 18 that holds the record.
            let rs = u32::from_be_bytes([body[16], body[17], body[18], body[19]]);
            assert_eq!(rs as usize, len + 17);
            assert_eq!(body[20], 65);
            assert_eq!(body[21], 0x04);
            assert!(seen_salts.insert(body[..16].to_vec()), "salt reused");
            let plain = web_push_native::decrypt(body, &ua_secret(&v), &auth_of(&v)).unwrap();
            assert_eq!(plain, payload);
        }
        assert_eq!(encrypt(&target, b"").unwrap_err(), SubscriptionError::Empty);
        assert_eq!(
            encrypt(&target, &vec![0; MAX_BODY - OVERHEAD + 1]).unwrap_err(),
            SubscriptionError::TooLarge(MAX_BODY - OVERHEAD + 1)
        );
    }

    #[test]
    fn endpoints_must_be_https_except_on_loopback() {
        assert!(check_endpoint("https://fcm.googleapis.com/fcm/send/x").is_ok());
        assert!(check_endpoint("http://127.0.0.1:8768/push/1").is_ok());
        assert!(check_endpoint("http://[::1]:8768/push/1").is_ok());
        assert!(check_endpoint("http://localhost/push/1").is_ok());
        assert_eq!(
            check_endpoint("http://push.example.net/x"),
            Err(SubscriptionError::Insecure(
                "http://push.example.net/x".into()
            ))
        );
        assert!(matches!(
            check_endpoint("http://192.168.1.5/x"),
            Err(SubscriptionError::Insecure(_))
        ));
        assert!(matches!(
            check_endpoint("file:///etc/passwd"),
            Err(SubscriptionError::BadEndpoint(_))
        ));
        assert!(matches!(
            check_endpoint("not a url"),
            Err(SubscriptionError::BadEndpoint(_))
        ));
    }

    #[test]
    fn bad_keys_are_rejected() {
        let good = Subscription {
            endpoint: "https://p.example/x".into(),
            keys: Keys {
                p256dh: "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4".into(),
                auth: "BTBZMqHH6r4Tts7J_aSIgg".into(),
            },
        };
        assert!(good.target().is_ok());
        let mut padded = good.clone();
        padded.keys.auth = "BTBZMqHH6r4Tts7J_aSIgg==".into();
        assert!(padded.target().is_ok());
        let mut bad = good.clone();
        bad.keys.p256dh = "BAAA".into();
        assert_eq!(bad.target().unwrap_err(), SubscriptionError::BadP256dh);
        let mut bad = good;
        bad.keys.auth = "AAAA".into();
        assert_eq!(bad.target().unwrap_err(), SubscriptionError::BadAuth);
    }

    #[test]
    fn answers_map_to_actions() {
        let now = 1_800_000_000;
        let table: &[(u16, Option<&str>, Outcome)] = &[
            (201, None, Outcome::Delivered),
            (202, None, Outcome::Delivered),
            (404, None, Outcome::Gone),
            (410, None, Outcome::Gone),
            (413, None, Outcome::TooLarge),
            (429, Some("7"), Outcome::RetryAfter(Duration::from_secs(7))),
            (429, None, Outcome::RetryAfter(DEFAULT_RETRY_AFTER)),
            (429, Some("soon"), Outcome::RetryAfter(DEFAULT_RETRY_AFTER)),
            (429, Some("999999"), Outcome::RetryAfter(MAX_RETRY_AFTER)),
            (500, None, Outcome::Transient),
            (503, Some("5"), Outcome::Transient),
        ];
        for (status, ra, want) in table {
            assert_eq!(&classify(*status, *ra, now), want, "{status} {ra:?}");
        }
        for status in [400, 401, 403, 405] {
            assert!(
                matches!(classify(status, None, now), Outcome::Rejected(_)),
                "{status}"
            );
        }
        let Outcome::Rejected(fix) = classify(403, None, now) else {
            unreachable!()
        };
        assert!(fix.contains("vapid_private_key_file"), "{fix}");
        // The HTTP-date form, 90 s ahead.
        let date = chrono::DateTime::from_timestamp(now + 90, 0)
            .unwrap()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(90)));
        assert_eq!(parse_retry_after(&date, now + 200), Some(Duration::ZERO));
    }

    #[test]
    fn backoff_is_bounded() {
        let waits: Vec<_> = (1..=MAX_ATTEMPTS).map(backoff).collect();
        assert_eq!(
            waits,
            [1, 2, 4, 8]
                .into_iter()
                .map(|s| Some(Duration::from_secs(s)))
                .chain([None])
                .collect::<Vec<_>>()
        );
        assert_eq!(backoff(0), None);
    }

    #[test]
    fn urgency_and_topic() {
        use crate::core::alerts::Level;
        assert_eq!(Urgency::for_level(Level::Critical), Urgency::High);
        assert_eq!(Urgency::for_level(Level::Error), Urgency::Normal);
        assert!(is_topic("soc_critical-battery1"));
        assert!(!is_topic("a.b"));
        assert!(!is_topic(&"x".repeat(33)));
    }
}
