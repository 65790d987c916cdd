//! SHA-256 digest authentication as the device does it: nonces, the HTTP
//! challenge and the JSON-RPC `auth` object.

use super::*;

impl Shared {
    pub(super) fn issue_nonce(&self) -> u64 {
        let mut g = lock(&self.nonces);
        let (list, next) = &mut *g;
        let value = *next;
        *next += 1;
        if list.len() >= MAX_NONCES {
            list.pop_front();
        }
        list.push_back(Nonce {
            value,
            issued: Instant::now(),
            last_nc: 0,
        });
        value
    }

    /// Checks a nonce; `nc` (HTTP only) must grow with every use.
    pub(super) fn check_nonce(&self, nonce: &str, nc: Option<u32>) -> NonceCheck {
        let Ok(value) = nonce.parse::<u64>() else {
            return NonceCheck::Unknown;
        };
        let ttl = Duration::from_millis(self.knobs.nonce_ttl_ms.load(Ordering::Relaxed));
        let single_use = self.knobs.single_use_nonces.load(Ordering::Relaxed);
        let mut g = lock(&self.nonces);
        let list = &mut g.0;
        let Some(i) = list.iter().position(|n| n.value == value) else {
            return NonceCheck::Unknown;
        };
        if list[i].issued.elapsed() > ttl {
            list.remove(i);
            return NonceCheck::Stale;
        }
        if let Some(nc) = nc {
            if nc <= list[i].last_nc {
                return NonceCheck::Unknown;
            }
            list[i].last_nc = nc;
            if single_use {
                list.remove(i);
            }
        }
        NonceCheck::Good
    }

    /// Whether an HTTP request may call `method`: `Err(stale)` asks for
    /// (new) credentials.
    pub(super) fn http_auth(
        &self,
        method: &str,
        headers: &HeaderMap,
        verb: &str,
        uri: &str,
    ) -> Result<(), bool> {
        let Some(ha1) = self.ha1() else { return Ok(()) };
        if is_open(method) {
            return Ok(());
        }
        let Some(a) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|h| digest::parse_authorization(h).ok())
        else {
            return Err(false);
        };
        if a.username != digest::USER || a.realm != self.realm() || a.uri != uri || a.qop != "auth"
        {
            return Err(false);
        }
        if !a.verifies(&ha1, verb) {
            return Err(false);
        }
        match self.check_nonce(&a.nonce, Some(a.count().unwrap_or(0))) {
            NonceCheck::Good => Ok(()),
            NonceCheck::Stale => Err(true),
            NonceCheck::Unknown => Err(false),
        }
    }

    /// Whether a JSON-RPC frame may call `method`.
    pub(super) fn frame_auth(&self, method: &str, frame: &Value) -> Result<(), bool> {
        let Some(ha1) = self.ha1() else { return Ok(()) };
        if is_open(method) {
            return Ok(());
        }
        let Some(auth) = frame.get("auth") else {
            return Err(false);
        };
        if auth.get("realm").and_then(Value::as_str) != Some(self.realm()) {
            return Err(false);
        }
        let Some(nonce) = digest::rpc_auth_verifies(auth, &ha1) else {
            return Err(false);
        };
        // Over a frame the nonce is reused with the same or any nc: Shelly
        // documents building the auth object once per connection.
        match self.check_nonce(&nonce, None) {
            NonceCheck::Good => Ok(()),
            NonceCheck::Stale => Err(true),
            NonceCheck::Unknown => Err(false),
        }
    }

    /// The `error.message` of a 401 frame: the challenge as JSON text.
    pub(super) fn frame_challenge(&self, stale: bool) -> String {
        let mut c = json!({
            "auth_type": "digest",
            "nonce": self.issue_nonce(),
            "nc": 1,
            "realm": self.realm(),
            "algorithm": digest::ALGORITHM,
        });
        if stale {
            c["stale"] = Value::Bool(true);
        }
        c.to_string()
    }

    pub(super) fn unauthorized(&self, stale: bool) -> Response {
        let nonce = self.issue_nonce().to_string();
        (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                digest::challenge_header(self.realm(), &nonce, stale),
            )],
            axum::Json(json!({"code": 401, "message": "Unauthorized"})),
        )
            .into_response()
    }
}
