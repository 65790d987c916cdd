//! Parsing what arrives on command topics. Pure: (payload) → typed command
//! or an error that says what was wrong.

use serde_json::{Map, Value};

use crate::control::{BalancerChange, ThresholdEdits};
use crate::model::{PlugMode, SwitchState, TimerCommand};

/// Commands are small; anything bigger is refused before parsing.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("payload of {0} bytes is too large (at most {MAX_COMMAND_BYTES})")]
    TooLarge(usize),
    #[error("payload is not UTF-8 text")]
    NotUtf8,
    #[error("payload is neither JSON nor ON/OFF/TOGGLE: {0}")]
    NotJson(String),
    #[error("payload must be a JSON object")]
    NotObject,
    #[error("unknown field '{field}'; accepted: {accepted}")]
    UnknownField { field: String, accepted: String },
    #[error("invalid value {value} for '{field}'; expected one of: {expected}")]
    InvalidValue {
        field: String,
        value: String,
        expected: &'static str,
    },
    #[error("empty command: give at least one of: {0}")]
    Empty(String),
    #[error("{0}")]
    Conflict(&'static str),
    /// A field of a control command with a value of the wrong kind or out
    /// of its range; worded in full.
    #[error("{0}")]
    Field(String),
    #[error("nothing to set; accepted: {0}")]
    NothingToSet(&'static str),
    #[error("expected a JSON object of rule ids and thresholds, such as {{\"soc_low\": 25}}")]
    NoThresholds,
}

const SET_FIELDS: &[&str] = &["state", "mode", "timer"];

/// The longest plug timer: a day.
pub const MAX_TIMER_MINUTES: u64 = 24 * 60;

/// A `<device>/set` command: any of the fields may be given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SetCommand {
    pub state: Option<SwitchState>,
    pub mode: Option<PlugMode>,
    pub timer: Option<TimerCommand>,
}

/// What arrives for a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Set(SetCommand),
    /// `<device>/get`.
    Refresh,
}

/// `{"a": 1}` as a map, for the control commands (balancer, alerts).
pub fn parse_json_object(payload: &[u8]) -> Result<Map<String, Value>, ParseError> {
    let text = text(payload)?;
    match serde_json::from_str::<Value>(text.trim()) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ParseError::NotObject),
        Err(_) => Err(ParseError::NotJson(preview(text.trim()))),
    }
}

const BALANCER_FIELDS: &str = "enabled, on_grid_w, off_grid_percent";

/// `balancer/<inverter>/set`: `{"enabled": bool, "on_grid_w": W,
/// "off_grid_percent": %}`, any subset but not none.
pub fn parse_balancer_set(payload: &[u8]) -> Result<BalancerChange, ParseError> {
    let change = balancer_change(&parse_json_object(payload)?)?;
    if change.is_empty() {
        return Err(ParseError::NothingToSet(BALANCER_FIELDS));
    }
    Ok(change)
}

/// The fields of a balancer change, each checked against its range; an
/// empty object is an empty change (`bridge/request/balancer` then only
/// asks for the state).
pub fn balancer_change(obj: &Map<String, Value>) -> Result<BalancerChange, ParseError> {
    let mut change = BalancerChange::default();
    for (k, v) in obj {
        match k.as_str() {
            "enabled" => {
                change.enabled = Some(flag(v).ok_or_else(|| {
                    ParseError::Field(format!("enabled: expected true or false, got {v}"))
                })?)
            }
            "on_grid_w" => change.on_grid_w = Some(ranged(k, v, 100.0, 100_000.0)?),
            "off_grid_percent" => change.off_grid_percent = Some(ranged(k, v, 10.0, 100.0)?),
            other => {
                return Err(ParseError::UnknownField {
                    field: other.to_owned(),
                    accepted: BALANCER_FIELDS.to_owned(),
                });
            }
        }
    }
    Ok(change)
}

/// `alerts/set`: `{"<rule id>": value, ...}`, at least one. Whether the
/// rules exist and take the values is the control plane's to say.
pub fn parse_thresholds_set(payload: &[u8]) -> Result<ThresholdEdits, ParseError> {
    let edits = threshold_edits(&parse_json_object(payload)?)?;
    if edits.is_empty() {
        return Err(ParseError::NoThresholds);
    }
    Ok(edits)
}

/// The numbers of a threshold edit (numbers or numeric strings, as Home
/// Assistant's text and number entities send them).
pub fn threshold_edits(obj: &Map<String, Value>) -> Result<ThresholdEdits, ParseError> {
    obj.iter()
        .map(|(rule, v)| {
            v.as_f64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                .map(|value| (rule.clone(), value))
                .ok_or_else(|| ParseError::Field(format!("{rule}: expected a number, got {v}")))
        })
        .collect()
}

fn flag(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.to_ascii_uppercase().as_str() {
            "ON" | "TRUE" => Some(true),
            "OFF" | "FALSE" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn ranged(key: &str, v: &Value, min: f64, max: f64) -> Result<f64, ParseError> {
    let n = v
        .as_f64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        .filter(|n: &f64| n.is_finite());
    match n {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ParseError::Field(format!(
            "{key}: expected a number from {min} to {max}, got {v}"
        ))),
    }
}

/// `{"state":"ON"}`, `{"mode":"auto"}`, `{"state":"OFF","mode":"off"}`,
/// or a bare `ON` / `OFF` / `TOGGLE`.
pub fn parse_set(payload: &[u8]) -> Result<SetCommand, ParseError> {
    let text = text(payload)?;
    let trimmed = text.trim();
    if let Some(state) = switch_state(trimmed) {
        return Ok(SetCommand {
            state: Some(state),
            ..Default::default()
        });
    }
    let value: Value =
        serde_json::from_str(trimmed).map_err(|_| ParseError::NotJson(preview(trimmed)))?;
    let map = match value {
        Value::Object(map) => map,
        Value::String(s) => {
            return switch_state(&s)
                .map(|state| SetCommand {
                    state: Some(state),
                    ..Default::default()
                })
                .ok_or_else(|| invalid("state", &Value::String(s), "ON, OFF, TOGGLE"));
        }
        _ => return Err(ParseError::NotObject),
    };
    set_from_map(&map)
}

/// `<device>/set/<attribute>` with a bare value: `…/set/state` ← `ON`.
pub fn parse_set_attribute(attribute: &str, payload: &[u8]) -> Result<SetCommand, ParseError> {
    let text = text(payload)?;
    let value = serde_json::from_str::<Value>(text.trim())
        .unwrap_or_else(|_| Value::String(text.trim().to_owned()));
    let mut map = Map::new();
    map.insert(attribute.to_owned(), value);
    set_from_map(&map)
}

fn set_from_map(map: &Map<String, Value>) -> Result<SetCommand, ParseError> {
    let mut state = None;
    let mut mode = None;
    let mut timer = None;
    for (key, value) in map {
        match key.as_str() {
            "state" => {
                state = Some(
                    value
                        .as_str()
                        .and_then(switch_state)
                        .ok_or_else(|| invalid("state", value, "ON, OFF, TOGGLE"))?,
                )
            }
            "mode" => {
                mode = Some(
                    value
                        .as_str()
                        .and_then(plug_mode)
                        .ok_or_else(|| invalid("mode", value, "auto, on, off"))?,
                )
            }
            "timer" => timer = Some(timer_command(value)?),
            other => {
                return Err(ParseError::UnknownField {
                    field: other.to_owned(),
                    accepted: SET_FIELDS.join(", "),
                });
            }
        }
    }
    if state.is_none() && mode.is_none() && timer.is_none() {
        return Err(ParseError::Empty(SET_FIELDS.join(", ")));
    }
    // A timer decides the relay itself: a start switches the plug on, a
    // cancel switches it off. A `state` beside it may only say the same
    // (and is then left to the timer); anything else would switch twice
    // and leave a timer running on a plug that was just turned off.
    if let (Some(t), Some(s)) = (timer, state) {
        match (t, s) {
            (TimerCommand::Start(_), SwitchState::On)
            | (TimerCommand::Cancel, SwitchState::Off) => {
                state = None;
            }
            (TimerCommand::Start(_), _) => {
                return Err(ParseError::Conflict(
                    "a timer switches the plug on for its minutes: give `state` ON or no `state` with it",
                ));
            }
            (TimerCommand::Cancel, _) => {
                return Err(ParseError::Conflict(
                    "cancelling the timer switches the plug off: give `state` OFF or no `state` with it",
                ));
            }
        }
    }
    Ok(SetCommand { state, mode, timer })
}

/// `"timer": 30` (minutes; 0 stops it) or `"timer": "cancel"`.
fn timer_command(value: &Value) -> Result<TimerCommand, ParseError> {
    const EXPECTED: &str = "minutes from 1 to 1440, 0 or \"cancel\" to stop";
    let minutes = match value {
        Value::String(s) if s.trim().eq_ignore_ascii_case("cancel") => {
            return Ok(TimerCommand::Cancel);
        }
        Value::String(s) => s.trim().parse::<f64>().ok(),
        v => v.as_f64(),
    };
    match minutes {
        Some(0.0) => Ok(TimerCommand::Cancel),
        Some(m) if m.fract() == 0.0 && (1.0..=MAX_TIMER_MINUTES as f64).contains(&m) => Ok(
            TimerCommand::Start(std::time::Duration::from_secs(m as u64 * 60)),
        ),
        _ => Err(invalid("timer", value, EXPECTED)),
    }
}

/// A `bridge/request/<cmd>` body: empty, or a JSON object whose optional
/// `transaction` is echoed in the response.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub body: Map<String, Value>,
    pub transaction: Option<Value>,
}

pub fn parse_request(payload: &[u8]) -> Result<Request, ParseError> {
    let text = text(payload)?;
    if text.trim().is_empty() {
        return Ok(Request {
            body: Map::new(),
            transaction: None,
        });
    }
    match serde_json::from_str::<Value>(text.trim()) {
        Ok(Value::Object(mut body)) => {
            let transaction = body.remove("transaction");
            Ok(Request { body, transaction })
        }
        Ok(Value::String(s)) if s.is_empty() => Ok(Request {
            body: Map::new(),
            transaction: None,
        }),
        Ok(_) => Err(ParseError::NotObject),
        Err(e) => Err(ParseError::NotJson(e.to_string())),
    }
}

/// The `transaction` of a request that could not be parsed whole, so that
/// even an error response can be matched by the caller.
pub fn salvage_transaction(payload: &[u8]) -> Option<Value> {
    if payload.len() > MAX_COMMAND_BYTES {
        return None;
    }
    serde_json::from_slice::<Value>(payload)
        .ok()?
        .get("transaction")
        .cloned()
}

fn text(payload: &[u8]) -> Result<&str, ParseError> {
    if payload.len() > MAX_COMMAND_BYTES {
        return Err(ParseError::TooLarge(payload.len()));
    }
    std::str::from_utf8(payload).map_err(|_| ParseError::NotUtf8)
}

fn switch_state(s: &str) -> Option<SwitchState> {
    match s.trim().to_ascii_uppercase().as_str() {
        "ON" => Some(SwitchState::On),
        "OFF" => Some(SwitchState::Off),
        "TOGGLE" => Some(SwitchState::Toggle),
        _ => None,
    }
}

fn plug_mode(s: &str) -> Option<PlugMode> {
    match s.trim().to_ascii_lowercase().as_str() {
        "auto" => Some(PlugMode::Auto),
        "on" => Some(PlugMode::On),
        "off" => Some(PlugMode::Off),
        _ => None,
    }
}

fn invalid(field: &str, value: &Value, expected: &'static str) -> ParseError {
    ParseError::InvalidValue {
        field: field.to_owned(),
        value: preview(&value.to_string()),
        expected,
    }
}

/// At most 40 characters of what the user sent, for error messages.
fn preview(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if s.chars().count() > 40 {
        out.push('…');
    }
    format!("'{out}'")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(state: Option<SwitchState>, mode: Option<PlugMode>) -> SetCommand {
        SetCommand {
            state,
            mode,
            timer: None,
        }
    }

    #[test]
    fn accepts_json_and_bare_forms() {
        assert_eq!(
            parse_set(br#"{"state":"ON"}"#),
            Ok(set(Some(SwitchState::On), None))
        );
        assert_eq!(parse_set(b"off"), Ok(set(Some(SwitchState::Off), None)));
        assert_eq!(
            parse_set(b" TOGGLE\n"),
            Ok(set(Some(SwitchState::Toggle), None))
        );
        assert_eq!(parse_set(br#""ON""#), Ok(set(Some(SwitchState::On), None)));
        assert_eq!(
            parse_set(br#"{"mode":"auto","state":"off"}"#),
            Ok(set(Some(SwitchState::Off), Some(PlugMode::Auto)))
        );
        assert_eq!(
            parse_set_attribute("state", b"ON"),
            Ok(set(Some(SwitchState::On), None))
        );
        assert_eq!(
            parse_set_attribute("mode", br#""off""#),
            Ok(set(None, Some(PlugMode::Off)))
        );
    }

    #[test]
    fn rejects_with_a_reason() {
        assert!(matches!(parse_set(b"banana"), Err(ParseError::NotJson(_))));
        assert!(matches!(
            parse_set(b"{not json"),
            Err(ParseError::NotJson(_))
        ));
        assert_eq!(parse_set(b"[1,2]"), Err(ParseError::NotObject));
        assert!(matches!(parse_set(b"{}"), Err(ParseError::Empty(_))));
        let e = parse_set(br#"{"state":"ON","colour":"red"}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown field 'colour'; accepted: state, mode, timer"
        );
        assert_eq!(
            parse_set(br#"{"timer":30}"#).map(|c| c.timer),
            Ok(Some(TimerCommand::Start(std::time::Duration::from_secs(
                1800
            ))))
        );
        assert_eq!(
            parse_set_attribute("timer", b"cancel").map(|c| c.timer),
            Ok(Some(TimerCommand::Cancel))
        );
        assert_eq!(
            parse_set(br#"{"timer":0}"#).map(|c| c.timer),
            Ok(Some(TimerCommand::Cancel))
        );
        for bad in [
            &br#"{"timer":-5}"#[..],
            br#"{"timer":1441}"#,
            br#"{"timer":2.5}"#,
            br#"{"timer":"soon"}"#,
        ] {
            let e = parse_set(bad).unwrap_err();
            assert!(e.to_string().contains("'timer'"), "{e}");
        }
        assert!(matches!(
            parse_json_object(b"[1]"),
            Err(ParseError::NotObject)
        ));
        assert!(parse_json_object(br#"{"enabled":false}"#).is_ok());
        let e = parse_set(br#"{"state":"MAYBE"}"#).unwrap_err();
        assert!(e.to_string().contains("'state'"), "{e}");
        let big = vec![b'a'; 1024 * 1024];
        assert_eq!(parse_set(&big), Err(ParseError::TooLarge(1024 * 1024)));
        assert_eq!(parse_set(&[0xff, 0xfe]), Err(ParseError::NotUtf8));
    }

    #[test]
    fn a_timer_and_a_state_must_agree() {
        let start = TimerCommand::Start(std::time::Duration::from_secs(30 * 60));
        // Agreeing: the timer does the switching.
        assert_eq!(
            parse_set(br#"{"timer":30,"state":"ON"}"#).unwrap(),
            SetCommand {
                timer: Some(start),
                ..Default::default()
            }
        );
        assert_eq!(
            parse_set(br#"{"timer":"cancel","state":"OFF"}"#).unwrap(),
            SetCommand {
                timer: Some(TimerCommand::Cancel),
                ..Default::default()
            }
        );
        for bad in [
            &br#"{"timer":30,"state":"OFF"}"#[..],
            br#"{"timer":30,"state":"TOGGLE"}"#,
            br#"{"timer":0,"state":"ON"}"#,
        ] {
            let e = parse_set(bad).unwrap_err();
            assert!(matches!(e, ParseError::Conflict(_)), "{e}");
            assert!(e.to_string().contains("`state`"), "{e}");
        }
        // With a mode, both are kept.
        let both = parse_set(br#"{"timer":30,"mode":"auto"}"#).unwrap();
        assert_eq!((both.timer, both.mode), (Some(start), Some(PlugMode::Auto)));
    }

    #[test]
    fn requests_echo_transactions() {
        let r = parse_request(br#"{"transaction":"abc","x":1}"#).unwrap();
        assert_eq!(r.transaction, Some(Value::String("abc".into())));
        assert_eq!(r.body.get("x"), Some(&Value::from(1)));
        assert_eq!(parse_request(b"").unwrap().transaction, None);
        assert!(parse_request(b"nope").is_err());
        assert_eq!(
            salvage_transaction(br#"{"transaction":7}"#),
            Some(Value::from(7))
        );
    }

    /// Moved from control's `balancer_commands_are_validated_as_a_whole`:
    /// the fields are checked here, before control sees the change.
    #[test]
    fn balancer_changes_are_validated_as_a_whole() {
        for (bad, why) in [
            (&br#"{"on_grid_w": 50}"#[..], "on_grid_w"),
            (br#"{"enabled": "maybe"}"#, "enabled"),
            (
                br#"{"enabled": false, "colour": 1}"#,
                "unknown field 'colour'",
            ),
            (br#"{}"#, "nothing to set"),
            (br#"[1]"#, "JSON object"),
        ] {
            let e = parse_balancer_set(bad).unwrap_err();
            assert!(
                e.to_string().contains(why),
                "{}: {e}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_balancer_set(br#"{"on_grid_w": "6000", "enabled": "OFF"}"#),
            Ok(BalancerChange {
                enabled: Some(false),
                on_grid_w: Some(6000.0),
                off_grid_percent: None,
            })
        );
        assert_eq!(
            parse_balancer_set(br#"{"off_grid_percent": 101}"#)
                .unwrap_err()
                .to_string(),
            "off_grid_percent: expected a number from 10 to 100, got 101"
        );
        // A request may ask without changing anything.
        assert_eq!(balancer_change(&Map::new()), Ok(BalancerChange::default()));
    }

    #[test]
    fn threshold_edits_are_numbers() {
        assert_eq!(
            parse_thresholds_set(br#"{"soc_low": 25, "cell_high": " 3.6 "}"#),
            Ok(vec![
                ("cell_high".to_owned(), 3.6),
                ("soc_low".to_owned(), 25.0)
            ])
        );
        assert_eq!(
            parse_thresholds_set(br#"{"soc_low": true}"#)
                .unwrap_err()
                .to_string(),
            "soc_low: expected a number, got true"
        );
        assert_eq!(
            parse_thresholds_set(b"{}").unwrap_err().to_string(),
            r#"expected a JSON object of rule ids and thresholds, such as {"soc_low": 25}"#
        );
    }
}
