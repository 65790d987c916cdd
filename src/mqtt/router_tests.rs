//! The router as tables: every kind of incoming message, without a broker.

use serde_json::json;

use super::*;
use crate::model::{PlugMode, SwitchState, TimerCommand};

struct House;

impl Devices for House {
    fn kind(&self, id: &str) -> Option<DeviceKind> {
        match id {
            "boiler" => Some(DeviceKind::Plug),
            "battery1" => Some(DeviceKind::Bms),
            "deye" => Some(DeviceKind::Inverter),
            _ => None,
        }
    }

    fn ids(&self) -> Vec<&str> {
        vec!["battery1", "boiler", "deye"]
    }
}

struct Empty;

impl Devices for Empty {
    fn kind(&self, _: &str) -> Option<DeviceKind> {
        None
    }

    fn ids(&self) -> Vec<&str> {
        Vec::new()
    }
}

fn topics() -> Topics {
    Topics::new("e2m", "homeassistant", "homeassistant/status")
}

fn msg<'a>(topic: &'a str, payload: &'a [u8]) -> Inbound<'a> {
    Inbound {
        topic,
        payload,
        retain: false,
        oversized: None,
    }
}

fn routed<'a>(m: Inbound<'a>) -> Route<'a> {
    route(&topics(), m, &House)
}

fn refused(device: &str, error: &str) -> Route<'static> {
    Route::Refused {
        device: Box::leak(device.to_owned().into_boxed_str()),
        error: error.to_owned(),
        clear: false,
    }
}

#[test]
fn device_commands() {
    assert_eq!(
        routed(msg("e2m/boiler/set", b"ON")),
        Route::Set {
            device: "boiler",
            set: SetCommand {
                state: Some(SwitchState::On),
                ..SetCommand::default()
            }
        }
    );
    assert_eq!(
        routed(msg("e2m/boiler/set", br#"{"mode": "off", "timer": 30}"#)),
        Route::Set {
            device: "boiler",
            set: SetCommand {
                mode: Some(PlugMode::Off),
                timer: Some(TimerCommand::Start(std::time::Duration::from_secs(1800))),
                ..SetCommand::default()
            }
        }
    );
    assert_eq!(
        routed(msg("e2m/boiler/set/mode", b"auto")),
        Route::Set {
            device: "boiler",
            set: SetCommand {
                mode: Some(PlugMode::Auto),
                ..SetCommand::default()
            }
        }
    );
    assert_eq!(
        routed(msg("e2m/battery1/get", b"")),
        Route::Refresh { device: "battery1" }
    );
    assert_eq!(routed(msg("e2m/bridge/get", b"")), Route::BridgeRefresh);
}

#[test]
fn refused_device_commands_say_why() {
    let cases = [
        (
            msg("e2m/bridge/set", b"ON"),
            refused(
                "bridge",
                "the bridge takes requests on bridge/request/<command>, not set",
            ),
        ),
        (
            msg("e2m/heater/set", b"ON"),
            refused(
                "heater",
                "unknown device 'heater'; configured devices: battery1, boiler, deye",
            ),
        ),
        (
            msg("e2m/battery1/set", b"ON"),
            refused(
                "battery1",
                "'battery1' is a BMS and accepts no set commands (only battery1/get)",
            ),
        ),
        // Malformed, to a device that takes no sets: the kind is the news.
        (
            msg("e2m/deye/set", b"{"),
            refused(
                "deye",
                "'deye' is an inverter and accepts no set commands (only deye/get)",
            ),
        ),
        (
            msg("e2m/boiler/set", b"MAYBE"),
            refused(
                "boiler",
                "payload is neither JSON nor ON/OFF/TOGGLE: 'MAYBE'",
            ),
        ),
    ];
    for (m, want) in cases {
        assert_eq!(routed(m), want, "{}", m.topic);
    }
    assert_eq!(
        route(&topics(), msg("e2m/boiler/get", b""), &Empty),
        refused(
            "boiler",
            "unknown device 'boiler'; configured devices: none"
        )
    );
}

#[test]
fn retained_empty_and_oversized_commands() {
    let retained = Inbound {
        retain: true,
        ..msg("e2m/boiler/set", b"ON")
    };
    assert_eq!(routed(retained), Route::ClearRetained);
    // Clearing a retained command arrives as an empty retained message.
    let cleared = Inbound {
        retain: true,
        ..msg("e2m/boiler/set", b"")
    };
    assert_eq!(routed(cleared), Route::Empty);
    assert_eq!(routed(msg("e2m/alerts/set", b"")), Route::Empty);
    // A read or a request may be empty.
    assert_eq!(
        routed(msg("e2m/boiler/get", b"")),
        Route::Refresh { device: "boiler" }
    );
    let big = Inbound {
        retain: true,
        oversized: Some(300_000),
        ..msg("e2m/balancer/deye/set", b"")
    };
    assert_eq!(
        routed(big),
        Route::Refused {
            device: "deye",
            error: ParseError::TooLarge(300_000).to_string(),
            clear: true,
        }
    );
    let big_request = Inbound {
        oversized: Some(300_000),
        ..msg("e2m/bridge/request/info", b"")
    };
    assert_eq!(
        routed(big_request),
        Route::RequestRefused {
            cmd: "info",
            error: ParseError::TooLarge(300_000).to_string(),
            transaction: None,
            clear: false,
        }
    );
}

#[test]
fn bridge_requests() {
    assert_eq!(
        routed(msg(
            "e2m/bridge/request/health_check",
            br#"{"transaction": 7}"#
        )),
        Route::Request {
            cmd: "health_check",
            request: BridgeRequest::HealthCheck,
            transaction: Some(json!(7)),
        }
    );
    assert_eq!(
        routed(msg("e2m/bridge/request/info", b"")),
        Route::Request {
            cmd: "info",
            request: BridgeRequest::Info,
            transaction: None,
        }
    );
    let Route::Request {
        request: BridgeRequest::Balancer { inverter, change },
        ..
    } = routed(msg(
        "e2m/bridge/request/balancer",
        br#"{"inverter": "deye", "enabled": false}"#,
    ))
    else {
        panic!("a balancer request")
    };
    assert_eq!(inverter, "deye");
    assert_eq!(change.enabled, Some(false));
    assert_eq!(
        routed(msg(
            "e2m/bridge/request/balancer",
            br#"{"transaction": "a"}"#
        )),
        Route::RequestRefused {
            cmd: "balancer",
            error: "give the balancer's inverter: {\"inverter\": \"<id>\"}".into(),
            transaction: Some(json!("a")),
            clear: false,
        }
    );
    assert_eq!(
        routed(msg("e2m/bridge/request/reboot", br#"{"transaction": 1}"#)),
        Route::RequestRefused {
            cmd: "reboot",
            error: "unknown request 'reboot'; available: health_check, info, balancer, alert_thresholds".into(),
            transaction: Some(json!(1)),
            clear: false,
        }
    );
    // Not an object: refused, and a transaction cannot be salvaged.
    assert_eq!(
        routed(msg("e2m/bridge/request/info", b"[1]")),
        Route::RequestRefused {
            cmd: "info",
            error: ParseError::NotObject.to_string(),
            transaction: None,
            clear: false,
        }
    );
}

#[test]
fn control_commands_and_the_rest() {
    assert_eq!(
        routed(msg("e2m/alerts/set", br#"{"soc_low": 25}"#)),
        Route::AlertThresholds(vec![("soc_low".to_owned(), 25.0)])
    );
    assert_eq!(
        routed(msg("e2m/alerts/set", b"25")),
        refused("alerts", &ParseError::NotObject.to_string())
    );
    assert_eq!(
        routed(msg("e2m/balancer/deye/set", br#"{"enabled": true}"#)),
        Route::Balancer {
            inverter: "deye",
            change: crate::control::BalancerChange {
                enabled: Some(true),
                ..Default::default()
            }
        }
    );
    assert_eq!(
        routed(msg("homeassistant/status", b"online\n")),
        Route::HaOnline
    );
    assert_eq!(
        routed(msg("homeassistant/status", b"offline")),
        Route::Nothing
    );
    assert_eq!(routed(msg("e2m/boiler", b"{}")), Route::Nothing);
    assert_eq!(routed(msg("elsewhere/boiler/set", b"ON")), Route::Nothing);
    // A discovery config counts only retained, non-empty and ours.
    let ours = json!({"origin": {"name": discovery::ORIGIN_NAME},
                      "device": {"via_device": discovery::bridge_identifier(&topics())}})
    .to_string();
    let theirs =
        json!({"origin": {"name": "zigbee2mqtt"}, "device": {"identifiers": ["x"]}}).to_string();
    let config = Inbound {
        retain: true,
        ..msg("homeassistant/sensor/x/y/config", ours.as_bytes())
    };
    assert_eq!(routed(config), Route::OurDiscovery);
    assert_eq!(
        routed(Inbound {
            retain: false,
            ..config
        }),
        Route::Nothing
    );
    assert_eq!(
        routed(Inbound {
            payload: theirs.as_bytes(),
            ..config
        }),
        Route::Nothing
    );
}
