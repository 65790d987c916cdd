//! Pure builders of the JSON payloads of the topic contract.

use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::model::Timestamp;

pub const ONLINE: &str = r#"{"state":"online"}"#;
pub const OFFLINE: &str = r#"{"state":"offline"}"#;

pub fn availability(online: bool) -> &'static str {
    if online { ONLINE } else { OFFLINE }
}

/// RFC 3339 in UTC, as in `last_seen`.
pub fn timestamp(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// A control-plane time ([`Timestamp`], milliseconds) in RFC 3339, UTC.
pub fn instant(t: Timestamp) -> String {
    let nanos = i128::from(t.0) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .map(timestamp)
        .unwrap_or_default()
}

/// A device's retained state: its readings plus `last_seen`.
pub fn device_state(readings: &Map<String, Value>, last_seen: OffsetDateTime) -> String {
    let mut obj = readings.clone();
    obj.insert("last_seen".into(), Value::String(timestamp(last_seen)));
    Value::Object(obj).to_string()
}

/// `bridge/response/<cmd>`: `{"data":{},"status":"ok"|"error","error":...,"transaction":...}`.
pub fn response(result: Result<Value, String>, transaction: Option<Value>) -> String {
    let mut obj = Map::new();
    match result {
        Ok(data) => {
            obj.insert("data".into(), data);
            obj.insert("status".into(), "ok".into());
        }
        Err(error) => {
            obj.insert("data".into(), json!({}));
            obj.insert("status".into(), "error".into());
            obj.insert("error".into(), error.into());
        }
    }
    if let Some(t) = transaction {
        obj.insert("transaction".into(), t);
    }
    Value::Object(obj).to_string()
}

/// `bridge/event`: `{"type":..., "device":..., ...}`.
pub fn event(kind: &str, device: Option<&str>, fields: Map<String, Value>) -> String {
    let mut obj = Map::new();
    obj.insert("type".into(), kind.into());
    if let Some(d) = device {
        obj.insert("device".into(), d.into());
    }
    obj.extend(fields);
    Value::Object(obj).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_echoes_transaction() {
        let ok: Value =
            serde_json::from_str(&response(Ok(json!({"healthy":true})), Some(json!("t1"))))
                .unwrap();
        assert_eq!(
            ok,
            json!({"data":{"healthy":true},"status":"ok","transaction":"t1"})
        );
        let err: Value = serde_json::from_str(&response(Err("nope".into()), None)).unwrap();
        assert_eq!(err, json!({"data":{},"status":"error","error":"nope"}));
    }

    #[test]
    fn state_has_last_seen() {
        let mut m = Map::new();
        m.insert("power".into(), json!(12.5));
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let v: Value = serde_json::from_str(&device_state(&m, t)).unwrap();
        assert_eq!(v, json!({"power":12.5,"last_seen":"2023-11-14T22:13:20Z"}));
    }
}
