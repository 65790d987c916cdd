//! One Shelly's HTTP RPC client: `GET /rpc/<Method>?params`, with digest
//! authentication when the device has a password. The last challenge is
//! kept and its nonce reused with a growing `nc` (firmware 2.0 accepts
//! that for an hour), so a poll costs one request; a device that wants a
//! fresh nonce every time answers 401 with a new one and gets it. Owned by
//! the device's task: every call takes `&mut self`.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, RETRY_AFTER, WWW_AUTHENTICATE};

use super::digest::{self, Challenge};
use super::rpc::{
    self, BadAnswer, DeviceInfo, DeviceStatus, InfoError, RpcFailure, StatusError, SwitchStatus,
};
use crate::drivers::health::Failure;

/// After a problem only the user can fix, try again this rarely (or on
/// `get`).
pub const NEEDS_USER_RETRY: Duration = Duration::from_secs(3600);
/// How long to wait when a busy device does not say.
pub const BUSY_BACKOFF: Duration = Duration::from_secs(30);
/// A `Retry-After` longer than this is not believed.
const BUSY_MAX: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellyError {
    #[error("the Shelly is unreachable: {0}")]
    Unreachable(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected answer from the Shelly: {0}")]
    BadAnswer(String),
    #[error(
        "the Shelly has a password (authentication is enabled in its web UI or app) and none is configured: set `password` under this [[plug]]"
    )]
    AuthRequired,
    #[error(
        "the Shelly refused the password (user admin, realm {realm}): check `password` under this [[plug]], it is the one set in the Shelly app or web UI"
    )]
    WrongPassword { realm: String },
    #[error("the Shelly is busy (HTTP {status}): slowing down")]
    Busy {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("the Shelly refused {method}: {message} (code {code})")]
    Rpc {
        method: String,
        code: i64,
        message: String,
    },
    /// HTTP 404 without an RPC error: not a Shelly RPC endpoint.
    #[error("no Shelly RPC at this address (HTTP 404)")]
    NotFound,
    #[error("{0}: set `switch_id` under this [[plug]] to one of them")]
    NoSuchSwitch(String),
    #[error("{0}")]
    Unsupported(String),
}

impl From<BadAnswer> for ShellyError {
    fn from(e: BadAnswer) -> Self {
        Self::BadAnswer(e.0)
    }
}

impl From<StatusError> for ShellyError {
    fn from(e: StatusError) -> Self {
        match e {
            StatusError::Bad(b) => b.into(),
            e @ StatusError::NoSuchSwitch { .. } => Self::NoSuchSwitch(e.to_string()),
        }
    }
}

impl ShellyError {
    /// What the failure means for polling.
    pub fn failure(&self) -> Failure {
        match self {
            Self::AuthRequired
            | Self::WrongPassword { .. }
            | Self::NoSuchSwitch(_)
            | Self::Unsupported(_) => Failure::NeedsUser {
                offline_for: Some(NEEDS_USER_RETRY),
            },
            Self::Busy { retry_after, .. } => Failure::RateLimited {
                wait: retry_after.unwrap_or(BUSY_BACKOFF).min(BUSY_MAX),
            },
            Self::Unreachable(_)
            | Self::Timeout(_)
            | Self::BadAnswer(_)
            | Self::NotFound
            | Self::Rpc { .. } => Failure::Transient,
        }
    }
}

/// The answer to one request, before it is read as JSON.
struct Answer {
    status: StatusCode,
    challenge: Option<String>,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

/// The nonce in use and how many requests it has signed.
struct Nonce {
    challenge: Challenge,
    count: u32,
}

/// One device's client. `Debug` shows where it points, never the password.
pub struct ShellyClient {
    http: reqwest::Client,
    host: String,
    port: u16,
    password: Option<String>,
    timeout: Duration,
    nonce: Option<Nonce>,
    requests: u64,
}

impl std::fmt::Debug for ShellyClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShellyClient")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl ShellyClient {
    pub fn new(host: &str, port: u16, password: Option<&str>, timeout: Duration) -> Self {
        let http = crate::https::plain_client_builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // One connection kept: a Shelly serves few at once, and
            // keep-alive spares it a TCP handshake per poll.
            .pool_max_idle_per_host(1)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Self {
            http,
            host: host.to_owned(),
            port,
            password: password.filter(|p| !p.is_empty()).map(str::to_owned),
            timeout,
            nonce: None,
            requests: 0,
        }
    }

    /// HTTP requests made so far (a poll should cost one).
    pub fn requests(&self) -> u64 {
        self.requests
    }

    fn url(&self, path: &str) -> String {
        crate::https::http_url(&self.host, self.port, path)
    }

    fn transport_error(&self, e: &reqwest::Error) -> ShellyError {
        if e.is_timeout() {
            ShellyError::Timeout(self.timeout)
        } else {
            ShellyError::Unreachable(crate::https::unreachable(&self.host, self.port, e))
        }
    }

    async fn get(&mut self, path: &str) -> Result<Answer, ShellyError> {
        let mut req = self.http.get(self.url(path));
        if let (Some(pw), Some(n)) = (self.password.as_deref(), self.nonce.as_mut()) {
            n.count = n.count.saturating_add(1);
            let cnonce = cnonce()?;
            req = req.header(
                AUTHORIZATION,
                digest::authorization(&n.challenge, pw, "GET", path, n.count, &cnonce),
            );
        }
        self.requests += 1;
        let mut resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let header = |resp: &reqwest::Response, name| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let status = resp.status();
        let challenge = header(&resp, WWW_AUTHENTICATE);
        let retry_after = header(&resp, RETRY_AFTER)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        if header(&resp, CONTENT_LENGTH)
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|n| n > rpc::MAX_ANSWER_BYTES)
        {
            return Err(ShellyError::BadAnswer("the answer is too large".into()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport_error(&e))? {
            if body.len() + chunk.len() > rpc::MAX_ANSWER_BYTES {
                return Err(ShellyError::BadAnswer("the answer is too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            challenge,
            retry_after,
            body,
        })
    }

    /// Calls `method` and returns the answer's body. A 401 is answered
    /// with the new challenge once (twice when the first only said our
    /// nonce had gone stale); a 401 to credentials built on a fresh
    /// challenge is a wrong password.
    async fn call(
        &mut self,
        method: &str,
        params: &[(&str, String)],
    ) -> Result<Vec<u8>, ShellyError> {
        let path = rpc::rpc_path(method, params);
        let mut fresh = false;
        let mut stale_retried = false;
        loop {
            let a = self.get(&path).await?;
            match a.status {
                StatusCode::OK => return Ok(a.body),
                StatusCode::UNAUTHORIZED => {
                    if self.password.is_none() {
                        return Err(ShellyError::AuthRequired);
                    }
                    let challenge = a
                        .challenge
                        .as_deref()
                        .ok_or_else(|| {
                            ShellyError::BadAnswer(
                                "401 without a WWW-Authenticate challenge".into(),
                            )
                        })
                        .and_then(|h| {
                            digest::parse_challenge(h)
                                .map_err(|e| ShellyError::Unsupported(e.to_string()))
                        })?;
                    if fresh {
                        // Our credentials answered a challenge of this
                        // very call: unless the nonce merely expired in
                        // between, the password is wrong.
                        if challenge.stale && !stale_retried {
                            stale_retried = true;
                        } else {
                            self.nonce = None;
                            return Err(ShellyError::WrongPassword {
                                realm: challenge.realm,
                            });
                        }
                    }
                    self.nonce = Some(Nonce {
                        challenge,
                        count: 0,
                    });
                    fresh = true;
                }
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                    return Err(ShellyError::Busy {
                        status: a.status.as_u16(),
                        retry_after: a.retry_after,
                    });
                }
                StatusCode::NOT_FOUND if rpc::parse_failure(&a.body).is_none() => {
                    return Err(ShellyError::NotFound);
                }
                other => {
                    return Err(match rpc::parse_failure(&a.body) {
                        Some(RpcFailure { code, message }) => ShellyError::Rpc {
                            method: method.to_owned(),
                            code,
                            message,
                        },
                        None => ShellyError::BadAnswer(format!("{method} answered HTTP {other}")),
                    });
                }
            }
        }
    }

    /// `Shelly.GetDeviceInfo`: never needs the password. A device without
    /// the RPC (HTTP 404) is asked `/shelly`, which Gen1 devices answer
    /// too, so that the user learns it is one.
    pub async fn device_info(&mut self) -> Result<DeviceInfo, ShellyError> {
        let body = match self.call("Shelly.GetDeviceInfo", &[]).await {
            Err(ShellyError::Rpc { code: 404, .. }) | Err(ShellyError::NotFound) => {
                let a = self.get("/shelly").await?;
                return match rpc::parse_device_info(&a.body) {
                    Err(e @ InfoError::Gen1 { .. }) => Err(ShellyError::Unsupported(e.to_string())),
                    _ => Err(ShellyError::BadAnswer(
                        "no Shelly RPC at this address (is it a Shelly Gen2 or later?)".into(),
                    )),
                };
            }
            other => other?,
        };
        rpc::parse_device_info(&body).map_err(|e| match e {
            InfoError::Gen1 { .. } => ShellyError::Unsupported(e.to_string()),
            InfoError::Bad(b) => b.into(),
        })
    }

    /// `Shelly.GetStatus`: the switch, the WiFi and the uptime at once.
    pub async fn status(&mut self, switch_id: u8) -> Result<DeviceStatus, ShellyError> {
        let body = self.call("Shelly.GetStatus", &[]).await?;
        Ok(rpc::parse_status(&body, switch_id)?)
    }

    /// `Switch.GetStatus`.
    pub async fn switch_status(&mut self, switch_id: u8) -> Result<SwitchStatus, ShellyError> {
        let body = self
            .call("Switch.GetStatus", &[("id", switch_id.to_string())])
            .await?;
        Ok(rpc::parse_switch_status(&body)?)
    }

    /// `Switch.Set`; returns whether it was on before.
    pub async fn set(&mut self, switch_id: u8, on: bool) -> Result<bool, ShellyError> {
        let body = self
            .call(
                "Switch.Set",
                &[("id", switch_id.to_string()), ("on", on.to_string())],
            )
            .await?;
        Ok(rpc::parse_set_result(&body)?.was_on)
    }
}

/// A client nonce: 16 random bytes as hex.
fn cnonce() -> Result<String, ShellyError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b)
        .map_err(|e| ShellyError::Unreachable(format!("no randomness for the digest: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_for_polling() {
        let needs_user = Failure::NeedsUser {
            offline_for: Some(NEEDS_USER_RETRY),
        };
        let cases = [
            (
                ShellyError::Unreachable("refused".into()),
                Failure::Transient,
            ),
            (
                ShellyError::Timeout(Duration::from_secs(3)),
                Failure::Transient,
            ),
            (ShellyError::BadAnswer("x".into()), Failure::Transient),
            (ShellyError::NotFound, Failure::Transient),
            (
                ShellyError::Rpc {
                    method: "Switch.Set".into(),
                    code: -103,
                    message: "x".into(),
                },
                Failure::Transient,
            ),
            (ShellyError::AuthRequired, needs_user),
            (
                ShellyError::WrongPassword {
                    realm: "shellyplusplugs-1".into(),
                },
                needs_user,
            ),
            (ShellyError::NoSuchSwitch("no switch 1".into()), needs_user),
            (ShellyError::Unsupported("Gen1".into()), needs_user),
            (
                ShellyError::Busy {
                    status: 503,
                    retry_after: None,
                },
                Failure::RateLimited { wait: BUSY_BACKOFF },
            ),
            (
                ShellyError::Busy {
                    status: 429,
                    retry_after: Some(Duration::from_secs(5)),
                },
                Failure::RateLimited {
                    wait: Duration::from_secs(5),
                },
            ),
            (
                ShellyError::Busy {
                    status: 429,
                    retry_after: Some(Duration::from_secs(86_400)),
                },
                Failure::RateLimited { wait: BUSY_MAX },
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.failure(), want, "{e}");
        }
    }

    #[test]
    fn a_missing_switch_is_worded_for_the_user() {
        let e: ShellyError = StatusError::NoSuchSwitch {
            id: 2,
            available: "0".into(),
        }
        .into();
        assert_eq!(
            e.to_string(),
            "the device has no switch 2 (it has: 0): set `switch_id` under this [[plug]] to one of them"
        );
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = ShellyClient::new("127.0.0.1", 80, Some("hunter2"), Duration::from_secs(1));
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2"), "{d}");
        assert!(d.contains("redacted"), "{d}");
        // An empty password is no password.
        let c = ShellyClient::new("127.0.0.1", 80, Some(""), Duration::from_secs(1));
        assert!(c.password.is_none());
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        let c = ShellyClient::new("fe80::1", 8080, None, Duration::from_secs(1));
        assert_eq!(c.url("/shelly"), "http://[fe80::1]:8080/shelly");
        let c = ShellyClient::new("plug.local", 80, None, Duration::from_secs(1));
        assert_eq!(c.url("/rpc/X"), "http://plug.local:80/rpc/X");
    }
}
