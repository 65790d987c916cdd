//! The HTTP interface on a real loopback socket, with reqwest as the
//! browser: every route, every bad input, the token.

use super::*;
use crate::push::send::Report;
use crate::storage::Store;

const P256DH: &str =
    "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";

struct Running {
    base: String,
    subs: Arc<Mutex<Subscriptions>>,
    alerts: Arc<Mutex<Value>>,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

/// Serves on a free loopback port; `tests` answers test requests (or, when
/// `None`, nobody does: the receiver is dropped).
async fn start(token: Option<&str>, answer: Option<Vec<Report>>) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let subs = Arc::new(Mutex::new(
        Subscriptions::load(Store::new(dir.path())).unwrap(),
    ));
    let alerts = Arc::new(Mutex::new(no_alerts_yet()));
    let (tx, mut rx) = mpsc::channel::<TestReply>(1);
    match answer {
        Some(reports) => {
            tokio::spawn(async move {
                while let Some(reply) = rx.recv().await {
                    let _ = reply.send(reports.clone());
                }
            });
        }
        None => drop(rx),
    }
    let api = Api::new(
        subs.clone(),
        "BPUBLICKEY".into(),
        token.map(Secret::new),
        alerts.clone(),
        tx,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(listener, api, std::future::pending()));
    Running {
        base,
        subs,
        alerts,
        _dir: dir,
        http: crate::https::client_builder().build().unwrap(),
    }
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn json(&self, method: reqwest::Method, path: &str, body: &str) -> (u16, Value) {
        let r = self
            .http
            .request(method, self.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

fn subscription(endpoint: &str) -> String {
    json!({"endpoint": endpoint, "expirationTime": null,
           "keys": {"p256dh": P256DH, "auth": AUTH}})
    .to_string()
}

#[tokio::test]
async fn the_page_its_manifest_icons_and_service_worker_are_served() {
    let s = start(None, None).await;
    let get = |p: &str| s.http.get(s.url(p)).send();
    let r = get("/").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert!(
        r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    let html = r.text().await.unwrap();
    assert!(html.contains(r#"<link rel="manifest" href="manifest.webmanifest">"#));
    assert!(html.contains(r#"<script src="app.js" defer></script>"#));

    let r = get("/manifest.webmanifest").await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/manifest+json");
    let m: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(m["display"], "standalone");
    assert_eq!(m["start_url"], "./");
    // Every icon the manifest names is served, with the size it claims.
    for icon in m["icons"].as_array().unwrap() {
        let src = icon["src"].as_str().unwrap();
        let r = get(&format!("/{src}")).await.unwrap();
        assert_eq!(r.status(), 200, "{src}");
        let bytes = r.bytes().await.unwrap();
        if icon["type"] == "image/png" {
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{src}");
            let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
            let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
            assert_eq!(icon["sizes"], format!("{w}x{h}"), "{src}");
        }
    }
    for (path, kind) in [
        ("/sw.js", "text/javascript; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
    ] {
        let r = get(path).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], kind, "{path}");
    }
    let (status, body) = s.json(reqwest::Method::GET, "/nope", "").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("no such page"))
    );
}

#[tokio::test]
async fn subscriptions_are_added_replaced_and_removed() {
    let s = start(None, None).await;
    let (status, key) = s
        .json(reqwest::Method::GET, "/api/vapid-public-key", "")
        .await;
    assert_eq!((status, key), (200, json!({"key": "BPUBLICKEY"})));

    let ep = "https://push.example.net/send/abc";
    let (status, body) = s
        .json(
            reqwest::Method::POST,
            "/api/subscriptions",
            &subscription(ep),
        )
        .await;
    assert_eq!((status, body), (201, json!({"subscriptions": 1})));
    // Again (the page re-sends on every visit): still one.
    let (status, body) = s
        .json(
            reqwest::Method::POST,
            "/api/subscriptions",
            &subscription(ep),
        )
        .await;
    assert_eq!((status, body), (201, json!({"subscriptions": 1})));
    assert_eq!(lock(&s.subs).list()[0].endpoint, ep);
    let (_, body) = s.json(reqwest::Method::GET, "/api/subscriptions", "").await;
    assert_eq!(body, json!({"subscriptions": 1}));

    let (status, _) = s
        .json(
            reqwest::Method::DELETE,
            "/api/subscriptions",
            &json!({ "endpoint": ep }).to_string(),
        )
        .await;
    assert_eq!(status, 204);
    assert!(lock(&s.subs).list().is_empty());
    // Gone already: still 204.
    let (status, _) = s
        .json(
            reqwest::Method::DELETE,
            "/api/subscriptions",
            &json!({ "endpoint": ep }).to_string(),
        )
        .await;
    assert_eq!(status, 204);
}

#[tokio::test]
async fn bad_input_is_a_400_with_a_message_and_the_server_keeps_serving() {
    let s = start(None, None).await;
    let cases: [(reqwest::Method, &str, String, &str); 6] = [
        (
            reqwest::Method::POST,
            "/api/subscriptions",
            "{".into(),
            "expected PushSubscription.toJSON()",
        ),
        (
            reqwest::Method::POST,
            "/api/subscriptions",
            r#"{"endpoint": "https://p.example/x"}"#.into(),
            "missing field `keys`",
        ),
        (
            reqwest::Method::POST,
            "/api/subscriptions",
            subscription("http://push.example.net/x"),
            "must be https://",
        ),
        (
            reqwest::Method::POST,
            "/api/subscriptions",
            subscription("not a url"),
            "not a URL",
        ),
        (
            reqwest::Method::POST,
            "/api/subscriptions",
            json!({"endpoint": "https://p.example/x", "keys": {"p256dh": "AAAA", "auth": AUTH}})
                .to_string(),
            "not a P-256 public key",
        ),
        (
            reqwest::Method::DELETE,
            "/api/subscriptions",
            "[]".into(),
            "expected {\"endpoint\"",
        ),
    ];
    for (method, path, body, expected) in cases {
        let (status, answer) = s.json(method, path, &body).await;
        assert_eq!(status, 400, "{body}");
        let msg = answer["error"].as_str().unwrap_or_default();
        assert!(msg.contains(expected), "{body}: {msg}");
    }
    // Bounded: 9 KiB is refused before it is parsed.
    let big = format!(
        r#"{{"endpoint": "https://p.example/{}"}}"#,
        "x".repeat(9 * 1024)
    );
    let (status, _) = s
        .json(reqwest::Method::POST, "/api/subscriptions", &big)
        .await;
    assert_eq!(status, 413);
    assert!(lock(&s.subs).list().is_empty());
    let (status, _) = s
        .json(reqwest::Method::GET, "/api/vapid-public-key", "")
        .await;
    assert_eq!(status, 200, "still serving");
}

#[tokio::test]
async fn with_a_token_the_api_needs_it_and_the_page_does_not() {
    let s = start(Some("s3cret-token"), None).await;
    let r = s
        .http
        .get(s.url("/api/vapid-public-key"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let body = r.text().await.unwrap();
    assert!(!body.contains("s3cret"), "{body}");
    for given in [
        "Bearer wrong",
        "s3cret-token",
        "Basic s3cret-token",
        "Bearer s3cret-toke",
    ] {
        let r = s
            .http
            .get(s.url("/api/alerts"))
            .header("authorization", given)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{given}");
    }
    let r = s
        .http
        .post(s.url("/api/subscriptions"))
        .body(subscription("https://p.example/y"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(lock(&s.subs).list().is_empty());
    let r = s
        .http
        .get(s.url("/api/vapid-public-key"))
        .header("authorization", "Bearer s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.http.get(s.url("/")).send().await.unwrap().status(), 200);
    assert_eq!(
        s.http.get(s.url("/sw.js")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn test_reports_per_channel_and_alerts_show_what_the_bridge_retained() {
    let reports = vec![
        Report {
            channel: "webpush https://push.example.net".into(),
            result: "Delivered".into(),
            ok: true,
        },
        Report {
            channel: "ntfy https://ntfy.sh/e2m".into(),
            result: "Failed(\"ntfy answered 502\")".into(),
            ok: false,
        },
    ];
    let s = start(None, Some(reports.clone())).await;
    let (status, body) = s.json(reqwest::Method::POST, "/api/test", "").await;
    assert_eq!(status, 200);
    assert_eq!(body["ok"], false);
    assert_eq!(body["channels"], serde_json::to_value(&reports).unwrap());

    let (_, body) = s.json(reqwest::Method::GET, "/api/alerts", "").await;
    assert_eq!(body, no_alerts_yet());
    let view = json!({"count": 1, "active": [{"rule": "soc_low", "level": "warning",
        "device": "battery1", "message": "Battery 1: SOC 18 % is below 20 %",
        "since": "2026-12-01T18:00:00Z"}]});
    *lock(&s.alerts) = view.clone();
    let (_, body) = s.json(reqwest::Method::GET, "/api/alerts", "").await;
    assert_eq!(body, view);

    // Nobody to deliver (the task ended): a 503 with a message, not a hang.
    let s = start(None, None).await;
    let (status, body) = s.json(reqwest::Method::POST, "/api/test", "").await;
    assert_eq!(status, 503);
    assert!(body["error"].as_str().unwrap().contains("try again"));
}
