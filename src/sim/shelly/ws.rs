//! The `/rpc` WebSocket: JSON-RPC frames and `NotifyStatus`.

use super::*;

pub(super) async fn ws_upgrade(State(sim): Sim, ws: WebSocketUpgrade) -> Response {
    if let Some(r) = sim.gate("/rpc").await {
        return r;
    }
    ws.on_upgrade(move |socket| serve_ws(sim, socket))
}

pub(super) enum WsEvent {
    Frame(Option<Result<Message, axum::Error>>),
    Note(Result<Value, broadcast::error::RecvError>),
    Close,
}

pub(super) async fn serve_ws(sim: Arc<Shared>, mut socket: WebSocket) {
    let mut notes = sim.notify.subscribe();
    let mut offline = sim.offline.subscribe();
    // Who the device sends notifications to: the `src` of the peer's
    // requests, as the real device learns it.
    let mut peer: Option<String> = None;
    loop {
        let ev = tokio::select! {
            _ = sim.stop.cancelled() => WsEvent::Close,
            _ = offline.wait_for(|o| *o) => WsEvent::Close,
            m = socket.recv() => WsEvent::Frame(m),
            n = notes.recv() => WsEvent::Note(n),
        };
        let reply = match ev {
            WsEvent::Close | WsEvent::Frame(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => break,
            WsEvent::Frame(Some(Ok(Message::Text(text)))) => {
                sim.requests.fetch_add(1, Ordering::Relaxed);
                let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                if let Some(src) = frame.get("src").and_then(Value::as_str) {
                    peer = Some(src.to_owned());
                }
                let latency = sim.knobs.latency_ms.load(Ordering::Relaxed);
                if latency > 0 {
                    tokio::time::sleep(Duration::from_millis(latency)).await;
                }
                sim.frame(&frame, peer.as_deref(), "WS_in", false)
            }
            // Pings are answered by the WebSocket layer itself.
            WsEvent::Frame(Some(Ok(_))) => None,
            WsEvent::Note(Ok(params)) => peer.as_deref().map(|dst| {
                json!({"src": sim.id, "dst": dst, "method": "NotifyStatus", "params": params})
            }),
            WsEvent::Note(Err(broadcast::error::RecvError::Lagged(_))) => None,
            WsEvent::Note(Err(broadcast::error::RecvError::Closed)) => break,
        };
        if let Some(out) = reply {
            if socket.send(Message::Text(out.to_string())).await.is_err() {
                break;
            }
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}
