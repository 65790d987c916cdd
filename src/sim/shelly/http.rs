//! The HTTP handlers: `/shelly`, `/rpc/<Method>` and JSON-RPC frames on
//! `POST /rpc`.

use super::*;

pub(super) type Sim = State<Arc<Shared>>;

pub(super) async fn shelly(State(sim): Sim) -> Response {
    if let Some(r) = sim.gate("/shelly").await {
        return r;
    }
    axum::Json(sim.device_info()).into_response()
}

pub(super) fn path_and_query(uri: &Uri) -> &str {
    uri.path_and_query()
        .map_or_else(|| uri.path(), |p| p.as_str())
}

pub(super) async fn rpc_get(
    State(sim): Sim,
    Path(method): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = sim.gate(uri.path()).await {
        return r;
    }
    if let Err(stale) = sim.http_auth(&method, &headers, "GET", path_and_query(&uri)) {
        return sim.unauthorized(stale);
    }
    http_answer(sim.call(&method, &query_params(uri.query()), "http"))
}

/// `POST /rpc/<Method>` with the parameters as a JSON body.
pub(super) async fn rpc_post(
    State(sim): Sim,
    Path(method): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = sim.gate(uri.path()).await {
        return r;
    }
    if let Err(stale) = sim.http_auth(&method, &headers, "POST", path_and_query(&uri)) {
        return sim.unauthorized(stale);
    }
    let params = if body.is_empty() {
        Value::Object(Map::new())
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return http_answer(Err(RpcError {
                    code: -103,
                    message: format!("Bad JSON: {e}"),
                }));
            }
        }
    };
    http_answer(sim.call(&method, &params, "http"))
}

/// `POST /rpc` with a JSON-RPC frame: credentials either as the digest
/// header or as the frame's `auth` object.
pub(super) async fn rpc_frame(
    State(sim): Sim,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = sim.gate(uri.path()).await {
        return r;
    }
    let Ok(frame) = serde_json::from_slice::<Value>(&body) else {
        return http_answer(Err(RpcError {
            code: -103,
            message: "Bad JSON-RPC frame".into(),
        }));
    };
    let method = frame
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let peer = frame.get("src").and_then(Value::as_str).map(str::to_owned);
    let by_header = headers.contains_key(header::AUTHORIZATION);
    if by_header {
        if let Err(stale) = sim.http_auth(&method, &headers, "POST", path_and_query(&uri)) {
            return sim.unauthorized(stale);
        }
    }
    match sim.frame(&frame, peer.as_deref(), "http", by_header) {
        Some(out) => {
            let refused = out
                .get("error")
                .and_then(|e| e.get("code"))
                .and_then(Value::as_i64)
                == Some(401);
            if refused {
                // An HTTP client gets the header challenge too.
                let nonce = sim.issue_nonce().to_string();
                (
                    StatusCode::UNAUTHORIZED,
                    [(
                        header::WWW_AUTHENTICATE,
                        digest::challenge_header(sim.realm(), &nonce, false),
                    )],
                    axum::Json(out),
                )
                    .into_response()
            } else {
                axum::Json(out).into_response()
            }
        }
        None => StatusCode::OK.into_response(),
    }
}
