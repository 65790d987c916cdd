//! The server side of the transport: request routing, the TPAP probe, the
//! KLAP handshakes and encrypted requests, and the sessions.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::device::hex_upper;
use super::http::{Request, Response};
use super::{
    COOKIE_TIMEOUT_S, JSON_DECODE_FAIL, MAX_SESSIONS, Shared, Slot, TRANSPORT_UNKNOWN, lock,
};
use crate::drivers::tapo::klap;

impl Shared {
    /// The answer to the TPAP probe the `tapo` crate sends first.
    fn tpap(&self, body: &[u8]) -> Response {
        let Ok(req) = serde_json::from_slice::<Value>(body) else {
            return Response::json(json!({ "error_code": JSON_DECODE_FAIL }));
        };
        let discover = req.get("method").and_then(Value::as_str) == Some("login")
            && req
                .get("params")
                .and_then(|p| p.get("sub_method"))
                .and_then(Value::as_str)
                == Some("discover");
        if !discover {
            return Response::json(json!({ "error_code": TRANSPORT_UNKNOWN }));
        }
        let mut result = Map::new();
        result.insert("sub_method".into(), "discover".into());
        if self.knobs.klap_disabled.load(Ordering::Relaxed) {
            result.insert("tpap_preferred".into(), true.into());
            result.insert("mac".into(), self.identity.mac.replace('-', "").into());
            result.insert(
                "tpap".into(),
                json!({ "tls": 0, "dac": 0, "noc": 0, "pake": [2], "port": self.identity.port }),
            );
        } else {
            result.insert("tpap_preferred".into(), false.into());
        }
        Response::json(json!({ "error_code": 0, "result": result }))
    }

    // ---- KLAP ----------------------------------------------------------

    pub(super) fn handle(&self, req: &Request) -> Response {
        let (path, query) = match req.target.split_once('?') {
            Some((p, q)) => (p, q),
            None => (req.target.as_str(), ""),
        };
        if path == "/app/handshake1" {
            self.handshakes.fetch_add(1, Ordering::Relaxed);
        }
        if self.knobs.rate_limited.load(Ordering::Relaxed) {
            return Response::status(429);
        }
        let known = matches!(
            path,
            "/" | "/app" | "/app/handshake1" | "/app/handshake2" | "/app/request"
        );
        if !known {
            return Response::status(404);
        }
        if req.method != "POST" {
            return Response::status(405);
        }
        if self.knobs.legacy_firmware.load(Ordering::Relaxed) {
            return match path {
                // -1010: what passthrough firmware says to a handshake
                // without a valid RSA key; it is JSON, so it proves the
                // old protocol is there.
                "/app" => Response::json(json!({ "error_code": -1010 })),
                _ => Response::status(404),
            };
        }
        match path {
            "/app/handshake1" => self.handshake1(&req.body),
            "/app/handshake2" => self.handshake2(req),
            "/app/request" => self.klap_request(req, query),
            "/" => self.tpap(&req.body),
            // Plain JSON to /app is the legacy passthrough, which this
            // firmware no longer speaks.
            _ => Response::json(json!({ "error_code": TRANSPORT_UNKNOWN })),
        }
    }

    fn handshake1(&self, body: &[u8]) -> Response {
        if self.knobs.klap_disabled.load(Ordering::Relaxed) {
            return Response::status(403);
        }
        let Ok(local_seed) = <[u8; 16]>::try_from(body) else {
            return Response::status(400);
        };
        let mut remote_seed = [0u8; 16];
        let mut id = [0u8; 16];
        if getrandom::fill(&mut remote_seed).is_err() || getrandom::fill(&mut id).is_err() {
            return Response::status(500);
        }
        let auth = if self.knobs.wrong_credentials.load(Ordering::Relaxed) {
            // The plug is bound to another account; neither blank nor the
            // factory defaults, which clients also try.
            klap::auth_hash("someone-else@energy2mqtt.invalid", "not-your-password")
        } else {
            self.auth
        };
        let server_hash = klap::handshake1_hash(&local_seed, &remote_seed, &auth);
        let id = hex_upper(&id);
        {
            let mut sessions = lock(&self.sessions);
            let ttl = self.ttl();
            sessions.retain(|_, s| s.created.elapsed() < ttl);
            while sessions.len() >= MAX_SESSIONS {
                let oldest = sessions
                    .iter()
                    .min_by_key(|(_, s)| s.created)
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => sessions.remove(&k),
                    None => break,
                };
            }
            sessions.insert(
                id.clone(),
                Slot {
                    local_seed,
                    remote_seed,
                    auth,
                    created: Instant::now(),
                    session: None,
                },
            );
        }
        let mut body = Vec::with_capacity(48);
        body.extend_from_slice(&remote_seed);
        body.extend_from_slice(&server_hash);
        Response {
            set_cookie: Some(format!("TP_SESSIONID={id};TIMEOUT={COOKIE_TIMEOUT_S}")),
            ..Response::bytes(body)
        }
    }

    fn handshake2(&self, req: &Request) -> Response {
        let Some(id) = session_cookie(req) else {
            return Response::status(403);
        };
        let ttl = self.ttl();
        let mut sessions = lock(&self.sessions);
        let Some(slot) = sessions.get_mut(&id) else {
            return Response::status(403);
        };
        if slot.created.elapsed() >= ttl {
            sessions.remove(&id);
            return Response::status(403);
        }
        let expected = klap::handshake2_hash(&slot.local_seed, &slot.remote_seed, &slot.auth);
        if !ct_eq(&req.body, &expected) {
            sessions.remove(&id);
            return Response::status(403);
        }
        slot.session = Some(klap::Session::new(
            &slot.local_seed,
            &slot.remote_seed,
            &slot.auth,
        ));
        Response::bytes(Vec::new())
    }

    fn klap_request(&self, req: &Request, query: &str) -> Response {
        let Some(seq) = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("seq="))
            .and_then(|v| v.parse::<i32>().ok())
        else {
            return Response::status(400);
        };
        let Some(id) = session_cookie(req) else {
            return Response::status(403);
        };
        let session = {
            let ttl = self.ttl();
            let mut sessions = lock(&self.sessions);
            match sessions.get(&id) {
                Some(slot) if slot.created.elapsed() >= ttl => {
                    sessions.remove(&id);
                    None
                }
                Some(slot) => slot.session.clone(),
                None => None,
            }
        };
        let Some(session) = session else {
            return Response::status(403);
        };
        if !session.verify(seq, &req.body) {
            return Response::status(400);
        }
        let Ok(plaintext) = session.decrypt(seq, &req.body) else {
            return Response::status(400);
        };
        let answer = self.dispatch(&plaintext);
        Response::bytes(session.encrypt(seq, answer.to_string().as_bytes()))
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.knobs.session_ttl_s.load(Ordering::Relaxed))
    }
}

fn session_cookie(req: &Request) -> Option<String> {
    req.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("cookie"))
        .flat_map(|(_, v)| v.split(';'))
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| k.trim() == "TP_SESSIONID")
        .map(|(_, v)| v.trim().to_owned())
}

/// Constant time, so a network peer cannot probe handshake2 byte by byte.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
