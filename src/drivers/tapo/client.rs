//! A KLAP v2 session with one plug over plain HTTP: handshake, encrypted
//! requests, and the recovery rules real plugs need (dead sessions, rate
//! limits, the P100 closing its connection after every reply, the P110
//! whose web server sleeps until a discovery probe). Requests to one plug
//! are serialised by construction: the client is owned by the plug's task
//! and every call takes `&mut self`.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, COOKIE, SET_COOKIE};
use serde_json::Value;
use tokio::time::Instant;

use super::api::{self, ApiError, BatchEntry, DeviceInfo, EnergyUsage, ErrorClass};
use super::klap::{self, Session};

/// Bodies above this are refused: a plug's answers are a few kB.
const MAX_BODY: usize = api::MAX_RESPONSE_BYTES;
/// Renew a session this long before the plug's own TIMEOUT, as python-kasa
/// does, so a poll never meets the expiry.
const RENEW_MARGIN: Duration = Duration::from_secs(1200);
/// UDP port of the Tapo discovery protocol (the "wake-up" probe).
const DISCOVERY_PORT: u16 = 20002;

/// The fix users need for every credential-like failure.
pub const CREDENTIALS_HINT: &str = "check the Tapo e-mail and password (the e-mail exactly as registered, it is case-sensitive) and enable Third-Party Compatibility in the Tapo app (Me > Third-Party Services); after a firmware update toggle it off and on";

#[derive(Debug, thiserror::Error)]
pub enum TapoError {
    #[error("the plug refused the Tapo credentials: {CREDENTIALS_HINT}")]
    Credentials,
    #[error(
        "the plug does not accept local KLAP connections (TPAP mode or Third-Party Compatibility off): {CREDENTIALS_HINT}"
    )]
    KlapDisabled,
    #[error(
        "the plug runs legacy firmware (securePassthrough) that energy2mqtt does not speak: update the plug's firmware in the Tapo app"
    )]
    LegacyFirmware,
    #[error("the plug asks to slow down (rate limited)")]
    RateLimited,
    #[error("the plug is unreachable: {0}")]
    Unreachable(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected answer from the plug: {0}")]
    Protocol(String),
    #[error("{0}")]
    Api(#[from] ApiError),
}

impl TapoError {
    /// Errors a user must fix; retrying them only locks accounts out.
    pub fn needs_user(&self) -> bool {
        matches!(
            self,
            Self::Credentials | Self::KlapDisabled | Self::LegacyFirmware
        )
    }

    pub fn is_rate_limit(&self) -> bool {
        matches!(self, Self::RateLimited)
            || matches!(
                self,
                Self::Api(ApiError::Device {
                    class: ErrorClass::RateLimited,
                    ..
                })
            )
    }
}

struct Active {
    cookie: String,
    klap: Session,
    renew_at: Instant,
}

/// One plug's client. `Debug` shows where it points, never the secrets.
pub struct PlugClient {
    http: reqwest::Client,
    host: String,
    port: u16,
    auth: [u8; 32],
    timeout: Duration,
    session: Option<Active>,
    probed: bool,
    handshakes: u64,
}

impl std::fmt::Debug for PlugClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlugClient")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("session", &self.session.is_some())
            .finish_non_exhaustive()
    }
}

impl PlugClient {
    pub fn new(host: &str, port: u16, username: &str, password: &str, timeout: Duration) -> Self {
        let http = crate::https::plain_client_builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // Plugs are picky HTTP servers: Title-Case headers, and no
            // idle connection kept for long (the P100 closes them anyway).
            .http1_title_case_headers()
            .pool_max_idle_per_host(1)
            .pool_idle_timeout(Duration::from_secs(20))
            .build()
            .unwrap_or_default();
        Self {
            http,
            host: host.to_owned(),
            port,
            auth: klap::auth_hash(username, password),
            timeout,
            session: None,
            probed: false,
            handshakes: 0,
        }
    }

    /// How many handshakes this client has made (for diagnostics).
    pub fn handshakes(&self) -> u64 {
        self.handshakes
    }

    fn url(&self, path: &str) -> String {
        crate::https::http_url(&self.host, self.port, path)
    }

    /// POSTs `body`, returning status, Set-Cookie and the (bounded) body.
    async fn post(
        &self,
        path: &str,
        cookie: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Option<String>, Vec<u8>), reqwest::Error> {
        let mut req = self.http.post(self.url(path)).body(body);
        if let Some(c) = cookie {
            req = req.header(COOKIE, format!("TP_SESSIONID={c}"));
        }
        let mut resp = req.send().await?;
        let status = resp.status();
        let set_cookie = resp
            .headers()
            .get(SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let declared = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let mut out = Vec::new();
        if declared.is_some_and(|n| n > MAX_BODY) {
            return Ok((StatusCode::PAYLOAD_TOO_LARGE, set_cookie, out));
        }
        while let Some(chunk) = resp.chunk().await? {
            if out.len() + chunk.len() > MAX_BODY {
                return Ok((StatusCode::PAYLOAD_TOO_LARGE, set_cookie, Vec::new()));
            }
            out.extend_from_slice(&chunk);
        }
        Ok((status, set_cookie, out))
    }

    fn transport_error(&self, e: reqwest::Error) -> TapoError {
        if e.is_timeout() {
            TapoError::Timeout(self.timeout)
        } else {
            TapoError::Unreachable(crate::https::unreachable(&self.host, self.port, &e))
        }
    }

    /// KLAP handshake1 + handshake2; a fresh session on success.
    async fn handshake(&mut self) -> Result<(), TapoError> {
        self.session = None;
        let mut local = [0u8; 16];
        getrandom::fill(&mut local)
            .map_err(|e| TapoError::Protocol(format!("no randomness for the handshake: {e}")))?;
        self.handshakes += 1;
        let first = match self.post("/app/handshake1", None, local.to_vec()).await {
            Err(e) if e.is_connect() && !self.probed => {
                // P110 fw 1.4.6 keeps port 80 closed until it hears a
                // discovery probe: knock once, give it a moment, retry.
                self.probed = true;
                self.send_discovery_probe().await;
                tokio::time::sleep(Duration::from_secs(2)).await;
                self.post("/app/handshake1", None, local.to_vec()).await
            }
            other => other,
        };
        let (status, set_cookie, body) = first.map_err(|e| self.transport_error(e))?;
        match status {
            StatusCode::OK => {}
            StatusCode::FORBIDDEN => return Err(TapoError::KlapDisabled),
            StatusCode::TOO_MANY_REQUESTS => return Err(TapoError::RateLimited),
            StatusCode::NOT_FOUND => return Err(self.explain_missing_klap().await),
            other => {
                return Err(TapoError::Protocol(format!(
                    "handshake1 answered HTTP {other}"
                )));
            }
        }
        let (remote, server_hash) =
            klap::parse_handshake1(&body).map_err(|e| TapoError::Protocol(e.to_string()))?;
        if server_hash != klap::handshake1_hash(&local, &remote, &self.auth) {
            // The plug proved it knows other credentials than ours. It
            // never learns of this failure, but retrying cannot help.
            return Err(TapoError::Credentials);
        }
        let (cookie, timeout_s) = set_cookie
            .as_deref()
            .and_then(klap::parse_session_cookie)
            .ok_or_else(|| TapoError::Protocol("handshake1 set no TP_SESSIONID cookie".into()))?;
        let confirm = klap::handshake2_hash(&local, &remote, &self.auth).to_vec();
        let (status, _, _) = self
            .post("/app/handshake2", Some(&cookie), confirm)
            .await
            .map_err(|e| self.transport_error(e))?;
        match status {
            StatusCode::OK => {}
            StatusCode::TOO_MANY_REQUESTS => return Err(TapoError::RateLimited),
            StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => return Err(TapoError::Credentials),
            other => {
                return Err(TapoError::Protocol(format!(
                    "handshake2 answered HTTP {other}"
                )));
            }
        }
        let lifetime = Duration::from_secs(timeout_s.unwrap_or(86_400));
        self.session = Some(Active {
            cookie,
            klap: Session::new(&local, &remote, &self.auth),
            renew_at: Instant::now() + lifetime.saturating_sub(RENEW_MARGIN).max(lifetime / 2),
        });
        tracing::debug!("KLAP session established");
        Ok(())
    }

    /// A 404 on handshake1: either legacy securePassthrough firmware or not
    /// a Tapo plug at all. Legacy firmware answers plain JSON on /app.
    async fn explain_missing_klap(&self) -> TapoError {
        let probe = br#"{"method":"component_nego"}"#.to_vec();
        match self.post("/app", None, probe).await {
            Ok((StatusCode::OK, _, body)) => match api::parse_response(&body) {
                Err(ApiError::Device { code: 1003, .. }) => {
                    TapoError::Protocol("the plug speaks neither KLAP nor securePassthrough".into())
                }
                _ => TapoError::LegacyFirmware,
            },
            _ => TapoError::Protocol("no KLAP endpoint on this address: is it a Tapo plug?".into()),
        }
    }

    async fn send_discovery_probe(&self) {
        let Ok(sock) = tokio::net::UdpSocket::bind(("0.0.0.0", 0)).await else {
            return;
        };
        let probe = discovery_probe();
        if let Err(e) = sock
            .send_to(&probe, (self.host.as_str(), DISCOVERY_PORT))
            .await
        {
            tracing::debug!(error = %e, "discovery probe not sent");
        } else {
            tracing::info!(
                "connection refused: sent a discovery probe to wake the plug's web server"
            );
        }
    }

    /// One encrypted request; re-handshakes and resends once when the
    /// session turns out dead.
    pub async fn call(&mut self, request: &[u8]) -> Result<Value, TapoError> {
        let mut fresh = false;
        if self
            .session
            .as_ref()
            .is_none_or(|s| Instant::now() >= s.renew_at)
        {
            self.handshake().await?;
            fresh = true;
        }
        match self.call_once(request).await {
            Err(Retry::Session) if !fresh => {
                tracing::debug!("KLAP session expired; handshaking again");
                self.handshake().await?;
                self.call_once(request).await.map_err(Retry::into_error)
            }
            Err(Retry::Connection(e)) => {
                // The P100 closes its connection after every reply; a
                // pooled connection may be dead on reuse. Once more.
                tracing::debug!(error = %e, "connection dropped; sending again");
                self.call_once(request).await.map_err(Retry::into_error)
            }
            other => other.map_err(Retry::into_error),
        }
    }

    async fn call_once(&mut self, request: &[u8]) -> Result<Value, Retry> {
        let Some(active) = self.session.as_mut() else {
            return Err(Retry::Session);
        };
        let Some(seq) = active.klap.next_seq() else {
            // Wrapping the signed sequence is undefined on the plug.
            self.session = None;
            return Err(Retry::Session);
        };
        let body = active.klap.encrypt(seq, request);
        let cookie = active.cookie.clone();
        let path = format!("/app/request?seq={seq}");
        let (status, _, body) = match self.post(&path, Some(&cookie), body).await {
            Ok(r) => r,
            Err(e) if e.is_connect() || e.is_request() && !e.is_timeout() => {
                return Err(Retry::Connection(self.transport_error(e)));
            }
            Err(e) => return Err(Retry::Fatal(self.transport_error(e))),
        };
        match status {
            StatusCode::OK => {}
            StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => {
                self.session = None;
                return Err(Retry::Session);
            }
            StatusCode::TOO_MANY_REQUESTS => return Err(Retry::Fatal(TapoError::RateLimited)),
            other => {
                return Err(Retry::Fatal(TapoError::Protocol(format!(
                    "request answered HTTP {other}"
                ))));
            }
        }
        let Some(active) = self.session.as_ref() else {
            return Err(Retry::Session);
        };
        let plain = active
            .klap
            .decrypt(seq, &body)
            .map_err(|e| Retry::Fatal(TapoError::Protocol(e.to_string())))?;
        match api::parse_response(&plain) {
            Err(ApiError::Device {
                class: ErrorClass::SessionExpired,
                ..
            }) => {
                self.session = None;
                Err(Retry::Session)
            }
            Err(e) => Err(Retry::Fatal(e.into())),
            Ok(v) => Ok(v),
        }
    }

    pub async fn get_device_info(&mut self) -> Result<DeviceInfo, TapoError> {
        let req = api::request("get_device_info", None, now_ms());
        let result = self.call(&req).await?;
        Ok(api::parse_device_info(&result)?)
    }

    pub async fn set_on(&mut self, on: bool) -> Result<(), TapoError> {
        let req = api::request(
            "set_device_info",
            Some(serde_json::json!({ "device_on": on })),
            now_ms(),
        );
        self.call(&req).await.map(|_| ())
    }

    /// Several parameterless getters in one multipleRequest, so a poll is
    /// one round trip; each entry carries its own result or device error.
    pub async fn get_many(&mut self, methods: &[&str]) -> Result<Vec<BatchEntry>, TapoError> {
        let req = api::multiple_request(methods, now_ms());
        let result = self.call(&req).await?;
        Ok(api::batch_entries(result)?)
    }

    /// `None` on plugs without metering (P100): they answer "unknown
    /// method".
    pub async fn get_energy_usage(&mut self) -> Result<Option<EnergyUsage>, TapoError> {
        let req = api::request("get_energy_usage", None, now_ms());
        match self.call(&req).await {
            Ok(v) => Ok(Some(api::parse_energy_usage(&v)?)),
            Err(TapoError::Api(ApiError::Device {
                class: ErrorClass::UnknownMethod,
                ..
            })) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Instantaneous power in whole watts; `None` without metering.
    pub async fn get_current_power(&mut self) -> Result<Option<f64>, TapoError> {
        let req = api::request("get_current_power", None, now_ms());
        match self.call(&req).await {
            Ok(v) => Ok(Some(api::parse_current_power(&v)?)),
            Err(TapoError::Api(ApiError::Device {
                class: ErrorClass::UnknownMethod,
                ..
            })) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

enum Retry {
    /// The session is dead: handshake and send again.
    Session,
    /// The connection dropped before an answer: send again.
    Connection(TapoError),
    Fatal(TapoError),
}

impl Retry {
    fn into_error(self) -> TapoError {
        match self {
            Self::Session => TapoError::Protocol("the plug rejected a fresh session".into()),
            Self::Connection(e) | Self::Fatal(e) => e,
        }
    }
}

fn now_ms() -> u64 {
    crate::clock::now().0
}

/// The Tapo discovery probe (UDP 20002): a 16-byte header (version 2, type
/// 0, op 1, payload size, flags 17, a random serial, CRC-32 of the whole
/// message computed with the field holding 0x5A6B7C8D) and a JSON payload.
/// Its content matters little here: it only wakes the web server up.
pub fn discovery_probe() -> Vec<u8> {
    let payload = br#"{"params":{"rsa_key":""}}"#;
    let mut serial = [0u8; 4];
    let _ = getrandom::fill(&mut serial);
    let mut msg = Vec::with_capacity(16 + payload.len());
    msg.extend_from_slice(&[2, 0, 0, 1]);
    msg.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    msg.extend_from_slice(&[17, 0]);
    msg.extend_from_slice(&serial);
    msg.extend_from_slice(&0x5A6B_7C8Du32.to_be_bytes());
    msg.extend_from_slice(payload);
    let crc = crc32(&msg);
    msg[12..16].copy_from_slice(&crc.to_be_bytes());
    msg
}

/// CRC-32 (IEEE, as zlib): small enough not to need a crate.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn the_probe_carries_its_own_crc() {
        let mut p = discovery_probe();
        assert_eq!(&p[..4], &[2, 0, 0, 1]);
        let size = u16::from_be_bytes([p[4], p[5]]) as usize;
        assert_eq!(size, p.len() - 16);
        let crc = u32::from_be_bytes([p[12], p[13], p[14], p[15]]);
        p[12..16].copy_from_slice(&0x5A6B_7C8Du32.to_be_bytes());
        assert_eq!(crc32(&p), crc);
    }

    #[test]
    fn debug_shows_no_secrets() {
        let c = PlugClient::new(
            "127.0.0.1",
            80,
            "me@example.com",
            "hunter2",
            Duration::from_secs(1),
        );
        let d = format!("{c:?}");
        assert!(d.contains("127.0.0.1"));
        assert!(!d.contains("hunter2") && !d.contains("me@example.com"));
    }
}
