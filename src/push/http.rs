//! The sidecar's HTTP interface on `[push] listen`: the subscribe page (a
//! PWA: page, manifest, icons, service worker), the VAPID key, the
//! subscriptions, a test notification and the active alerts.
//!
//! The API answers every bad request with a status and a message, never
//! by failing the process; request bodies are bounded ([`MAX_BODY`]).
//! With `[push] token` set, every `/api/` call needs
//! `Authorization: Bearer <token>`; the static files carry no secret and
//! are served to anyone who can reach the port.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::lock;
use super::send::Report;
use super::subscriptions::{Subscriptions, SubscriptionsError};
use super::webpush::Subscription;
use crate::config::Secret;

/// A `PushSubscription.toJSON()` is about 500 bytes; 8 KiB leaves room
/// for long endpoints and nothing for abuse.
pub const MAX_BODY: usize = 8 * 1024;

/// How long `POST /api/test` waits for the delivery task (it may be
/// honouring a push service's `Retry-After`).
pub const TEST_TIMEOUT: Duration = Duration::from_secs(90);

/// What the delivery task answers a test with.
pub type TestReply = oneshot::Sender<Vec<Report>>;

/// The page's files, compiled in: the sidecar is one file to install.
mod page {
    pub const INDEX: &str = include_str!("page/index.html");
    pub const APP_JS: &str = include_str!("page/app.js");
    pub const SW_JS: &str = include_str!("page/sw.js");
    pub const CSS: &str = include_str!("page/style.css");
    pub const MANIFEST: &str = include_str!("page/manifest.webmanifest");
    pub const ICON_SVG: &str = include_str!("page/icon.svg");
    pub const ICON_192: &[u8] = include_bytes!("page/icon-192.png");
    pub const ICON_512: &[u8] = include_bytes!("page/icon-512.png");
    pub const ICON_MASKABLE: &[u8] = include_bytes!("page/icon-maskable-512.png");
}

/// What the handlers share with the rest of the sidecar.
#[derive(Clone)]
pub struct Api {
    subs: Arc<Mutex<Subscriptions>>,
    key: Arc<str>,
    token: Option<Secret>,
    alerts: Arc<Mutex<Value>>,
    tester: mpsc::Sender<TestReply>,
    connected: Arc<AtomicBool>,
}

impl Api {
    /// `key`: the applicationServerKey; `alerts`: the latest retained
    /// `<base>/alerts`, kept up to date by the MQTT loop; `tester`: where
    /// a test request goes (the delivery task).
    pub fn new(
        subs: Arc<Mutex<Subscriptions>>,
        key: String,
        token: Option<Secret>,
        alerts: Arc<Mutex<Value>>,
        tester: mpsc::Sender<TestReply>,
    ) -> Self {
        Self {
            subs,
            key: key.into(),
            token,
            alerts,
            tester,
            connected: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Set by the MQTT loop; what `/healthz` reports.
    pub fn connected(&self) -> Arc<AtomicBool> {
        self.connected.clone()
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        // Compared as digests: the time taken says nothing about how much
        // of the token was right.
        given.is_some_and(|g| Sha256::digest(g) == Sha256::digest(token.expose()))
    }

    /// The 401 to answer, or `None` when the caller may go on.
    fn denied(&self, headers: &HeaderMap) -> Option<Response> {
        if self.authorized(headers) {
            None
        } else {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong token: send Authorization: Bearer <[push] token> (open the page as …/#token=<token> once)",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Some(r)
        }
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    if status.is_client_error() {
        tracing::info!(status = status.as_u16(), "push API: {message}");
    } else {
        tracing::warn!(status = status.as_u16(), "push API: {message}");
    }
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// The router: the page at `/`, the API under `/api/`. Every URL the page
/// uses is relative, so it also works under a path prefix (Home
/// Assistant's ingress, a reverse proxy's sub-path).
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/", get(|| file("text/html; charset=utf-8", page::INDEX)))
        .route(
            "/app.js",
            get(|| file("text/javascript; charset=utf-8", page::APP_JS)),
        )
        .route(
            "/sw.js",
            get(|| file("text/javascript; charset=utf-8", page::SW_JS)),
        )
        .route(
            "/style.css",
            get(|| file("text/css; charset=utf-8", page::CSS)),
        )
        .route(
            "/manifest.webmanifest",
            get(|| file("application/manifest+json", page::MANIFEST)),
        )
        .route("/icon.svg", get(|| file("image/svg+xml", page::ICON_SVG)))
        .route("/icon-192.png", get(|| file("image/png", page::ICON_192)))
        .route("/icon-512.png", get(|| file("image/png", page::ICON_512)))
        .route(
            "/icon-maskable-512.png",
            get(|| file("image/png", page::ICON_MASKABLE)),
        )
        .route("/api/vapid-public-key", get(vapid_public_key))
        .route(
            "/api/subscriptions",
            post(subscribe).delete(unsubscribe).get(count),
        )
        .route("/api/test", post(test))
        .route("/api/alerts", get(alerts))
        .route("/healthz", get(healthz))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such page") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(api)
}

async fn file(content_type: &'static str, body: impl IntoResponse) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Served from the binary: a new version must be fetched, not cached
    // for a day.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'self'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

async fn vapid_public_key(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Some(r) = api.denied(&headers) {
        return r;
    }
    axum::Json(json!({ "key": &*api.key })).into_response()
}

async fn count(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Some(r) = api.denied(&headers) {
        return r;
    }
    let n = lock(&api.subs).list().len();
    axum::Json(json!({ "subscriptions": n })).into_response()
}

async fn subscribe(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = api.denied(&headers) {
        return r;
    }
    let sub: Subscription = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "expected PushSubscription.toJSON(), {{\"endpoint\", \"keys\": {{\"p256dh\", \"auth\"}}}}: {e}"
                ),
            );
        }
    };
    let origin = super::vapid::audience_of(&sub.endpoint);
    // The store fsyncs: off the async task.
    let subs = api.subs.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut list = lock(&subs);
        list.add(sub).map(|changed| (changed, list.list().len()))
    })
    .await;
    let Ok(result) = result else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the subscription was not saved",
        );
    };
    match result {
        Ok((changed, n)) => {
            if changed {
                tracing::info!(%origin, subscriptions = n, "browser subscribed");
            }
            (
                StatusCode::CREATED,
                axum::Json(json!({ "subscriptions": n })),
            )
                .into_response()
        }
        Err(SubscriptionsError::Invalid(e)) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e @ SubscriptionsError::Full) => error(StatusCode::CONFLICT, &e.to_string()),
        Err(SubscriptionsError::Store(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot save the subscription: {e}"),
        ),
    }
}

#[derive(Deserialize)]
struct Unsubscribe {
    endpoint: String,
}

async fn unsubscribe(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = api.denied(&headers) {
        return r;
    }
    let req: Unsubscribe = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"endpoint\": \"…\"}}: {e}"),
            );
        }
    };
    let subs = api.subs.clone();
    let endpoint = req.endpoint.clone();
    let result = tokio::task::spawn_blocking(move || lock(&subs).remove(&endpoint)).await;
    let Ok(result) = result else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the subscriptions were not saved",
        );
    };
    match result {
        Ok(removed) => {
            if removed {
                tracing::info!(origin = %super::vapid::audience_of(&req.endpoint), "browser unsubscribed");
            }
            // Idempotent: gone is what was asked for, either way.
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot save the subscriptions: {e}"),
        ),
    }
}

#[derive(Serialize)]
struct TestAnswer {
    ok: bool,
    channels: Vec<Report>,
}

async fn test(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Some(r) = api.denied(&headers) {
        return r;
    }
    let (reply, answer) = oneshot::channel();
    let sent = tokio::time::timeout(TEST_TIMEOUT, api.tester.send(reply)).await;
    if !matches!(sent, Ok(Ok(()))) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the delivery task is busy (a push service asked us to wait): try again later",
        );
    }
    match tokio::time::timeout(TEST_TIMEOUT, answer).await {
        Ok(Ok(channels)) => {
            let ok = !channels.is_empty() && channels.iter().all(|c| c.ok);
            axum::Json(TestAnswer { ok, channels }).into_response()
        }
        _ => error(
            StatusCode::GATEWAY_TIMEOUT,
            "no answer from the delivery task in time: see the sidecar's log",
        ),
    }
}

async fn alerts(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Some(r) = api.denied(&headers) {
        return r;
    }
    let v = lock(&api.alerts).clone();
    axum::Json(v).into_response()
}

/// For the container's health check (`energy2mqtt-push health`): no
/// token, nothing but whether the broker connection is up.
async fn healthz(State(api): State<Api>) -> Response {
    if api.connected.load(Ordering::Relaxed) {
        axum::Json(json!({ "mqtt": "connected" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "mqtt": "not connected" })),
        )
            .into_response()
    }
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Api,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(api))
        .with_graceful_shutdown(shutdown)
        .await
}

/// What `/api/alerts` answers before the bridge's retained alerts
/// arrived.
pub fn no_alerts_yet() -> Value {
    json!({ "count": 0, "active": [], "known": false })
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
