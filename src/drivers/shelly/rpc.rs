//! The few Shelly Gen2+ RPC shapes a plug needs, parsed as pure functions:
//! `Shelly.GetDeviceInfo` (also served without authentication as
//! `/shelly`), `Shelly.GetStatus` (the switch and the WiFi in one
//! answer), `Switch.GetStatus`, `Switch.Set` and the error object.
//! Fields a plug may leave out are optional; a missing required field or
//! a wrong type is a [`BadAnswer`], never a panic.

use serde::Deserialize;
use serde_json::Value;

/// Answers above this are refused: a plug's status is about 2 kB.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// An answer that is not what the API describes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadAnswer(pub String);

/// `Shelly.GetDeviceInfo` / `GET /shelly`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DeviceInfo {
    /// The device id, `shellyplusplugs-<mac>`: also the digest realm.
    pub id: String,
    pub mac: String,
    /// The SKU, `SNPL-00112EU`.
    #[serde(default)]
    pub model: Option<String>,
    /// Gen1 devices answer `/shelly` without it (and speak another API).
    #[serde(rename = "gen", default)]
    pub generation: Option<u8>,
    /// `20241011-114455/1.4.4-g6d2a586`: build date, version, commit.
    #[serde(default)]
    pub fw_id: Option<String>,
    /// `1.4.4`.
    #[serde(default)]
    pub ver: Option<String>,
    /// The firmware's application, `PlugS`.
    #[serde(default)]
    pub app: Option<String>,
    /// The user's name for it, when set in the app.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub auth_en: bool,
    /// The realm when it differs from the id (older firmware sends null).
    #[serde(default)]
    pub auth_domain: Option<String>,
}

impl DeviceInfo {
    /// The digest realm.
    pub fn realm(&self) -> &str {
        self.auth_domain.as_deref().unwrap_or(&self.id)
    }

    /// The version to show: `ver`, else the version part of `fw_id`.
    pub fn firmware(&self) -> Option<String> {
        self.ver.clone().or_else(|| {
            let fw = self.fw_id.as_deref()?;
            let v = fw.split_once('/').map_or(fw, |(_, v)| v);
            Some(v.split_once('-').map_or(v, |(v, _)| v).to_owned())
        })
    }

    /// A readable model name: Shelly's marketing name for the plugs we
    /// know, else the SKU, else the firmware's application.
    pub fn model_name(&self) -> Option<String> {
        match self.model.as_deref() {
            Some(sku) => Some(model_name(sku).map_or_else(|| sku.to_owned(), str::to_owned)),
            None => self.app.clone(),
        }
    }
}

/// Names of the single-switch plugs by SKU (aioshelly's table has the
/// same SKUs).
pub fn model_name(sku: &str) -> Option<&'static str> {
    Some(match sku {
        "SNPL-00112EU" | "SNPL-10112EU" => "Shelly Plus Plug S",
        "SNPL-00112UK" => "Shelly Plus Plug UK",
        "SNPL-00110IT" => "Shelly Plus Plug IT",
        "SNPL-00116US" => "Shelly Plus Plug US",
        "S3PL-00112EU" => "Shelly Plug S Gen3",
        "S3PL-10112EU" => "Shelly AZ Plug",
        "S3PL-20112EU" => "Shelly Outdoor Plug S Gen3",
        "S3PL-30110EU" => "Shelly Plug M Gen3",
        "S3PL-30116EU" => "Shelly Plug PM Gen3",
        _ => return None,
    })
}

fn parse<T: for<'de> Deserialize<'de>>(what: &str, body: &[u8]) -> Result<T, BadAnswer> {
    serde_json::from_slice(body).map_err(|e| BadAnswer(format!("{what}: {e}")))
}

/// Why an identification is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InfoError {
    #[error("{0}")]
    Bad(#[from] BadAnswer),
    /// A Gen1 device (its `/shelly` has `type` and no `gen`).
    #[error(
        "this is a Shelly Gen1 device ({model}), which speaks another API: energy2mqtt supports Gen2 and later (Plus, Pro, Gen3)"
    )]
    Gen1 { model: String },
}

/// Reads `Shelly.GetDeviceInfo` or `/shelly`; a Gen1 device is refused.
pub fn parse_device_info(body: &[u8]) -> Result<DeviceInfo, InfoError> {
    let v: Value = parse("Shelly.GetDeviceInfo", body)?;
    if v.get("gen").is_none() {
        if let Some(model) = v.get("type").and_then(Value::as_str) {
            return Err(InfoError::Gen1 {
                model: model.to_owned(),
            });
        }
    }
    let info: DeviceInfo =
        serde_json::from_value(v).map_err(|e| BadAnswer(format!("Shelly.GetDeviceInfo: {e}")))?;
    match info.generation {
        Some(g) if g >= 2 => Ok(info),
        _ => Err(InfoError::Gen1 {
            model: info.model.unwrap_or(info.id),
        }),
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
pub struct Energy {
    /// Lifetime counter, Wh.
    pub total: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
pub struct Temperature {
    /// Null when out of the sensor's range.
    #[serde(rename = "tC", default)]
    pub t_c: Option<f64>,
}

/// `Switch.GetStatus`, also `switch:<id>` of `Shelly.GetStatus`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct SwitchStatus {
    pub id: u8,
    pub output: bool,
    /// W.
    #[serde(default)]
    pub apower: Option<f64>,
    /// V.
    #[serde(default)]
    pub voltage: Option<f64>,
    /// A.
    #[serde(default)]
    pub current: Option<f64>,
    #[serde(default)]
    pub aenergy: Option<Energy>,
    #[serde(default)]
    pub temperature: Option<Temperature>,
    /// `overtemp`, `overpower`, `overvoltage`, …; absent when none.
    #[serde(default)]
    pub errors: Vec<String>,
}

impl SwitchStatus {
    pub fn has_error(&self, e: &str) -> bool {
        self.errors.iter().any(|x| x == e)
    }
}

pub fn parse_switch_status(body: &[u8]) -> Result<SwitchStatus, BadAnswer> {
    parse("Switch.GetStatus", body)
}

/// What one `Shelly.GetStatus` tells about a plug.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceStatus {
    pub switch: SwitchStatus,
    /// `wifi.rssi`, dBm; absent on Ethernet or while not connected.
    pub rssi: Option<i64>,
    /// `sys.uptime`, s: going down means the device restarted (perhaps
    /// into new firmware).
    pub uptime_s: Option<u64>,
}

/// Why `Shelly.GetStatus` has nothing for the configured switch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    #[error("{0}")]
    Bad(#[from] BadAnswer),
    /// The device has no `switch:<id>`; `available` lists the ids it has.
    #[error("the device has no switch {id} (it has: {available})")]
    NoSuchSwitch { id: u8, available: String },
}

/// Reads `Shelly.GetStatus` for switch `id`.
pub fn parse_status(body: &[u8], id: u8) -> Result<DeviceStatus, StatusError> {
    let v: Value = parse("Shelly.GetStatus", body)?;
    let obj = v
        .as_object()
        .ok_or_else(|| BadAnswer("Shelly.GetStatus: not an object".into()))?;
    let key = format!("switch:{id}");
    let Some(sw) = obj.get(&key) else {
        let mut ids: Vec<&str> = obj
            .keys()
            .filter_map(|k| k.strip_prefix("switch:"))
            .collect();
        ids.sort_unstable();
        let available = if ids.is_empty() {
            "no switch at all".to_owned()
        } else {
            ids.join(", ")
        };
        return Err(StatusError::NoSuchSwitch { id, available });
    };
    let switch: SwitchStatus = serde_json::from_value(sw.clone())
        .map_err(|e| BadAnswer(format!("Shelly.GetStatus {key}: {e}")))?;
    let rssi = obj
        .get("wifi")
        .and_then(|w| w.get("rssi"))
        .and_then(Value::as_f64)
        .map(|r| r.round() as i64);
    let uptime_s = obj
        .get("sys")
        .and_then(|s| s.get("uptime"))
        .and_then(Value::as_u64);
    Ok(DeviceStatus {
        switch,
        rssi,
        uptime_s,
    })
}

/// `Switch.Set`'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct SetResult {
    pub was_on: bool,
}

pub fn parse_set_result(body: &[u8]) -> Result<SetResult, BadAnswer> {
    parse("Switch.Set", body)
}

/// An error object: the body of a failed `GET /rpc/<Method>` and the
/// `error` of a JSON-RPC frame.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RpcFailure {
    pub code: i64,
    #[serde(default)]
    pub message: String,
}

/// The error object in a failed answer, if the body holds one.
pub fn parse_failure(body: &[u8]) -> Option<RpcFailure> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error").cloned().unwrap_or(v);
    serde_json::from_value(e).ok()
}

/// The path and query of `GET /rpc/<method>?k=v&…`: values are JSON
/// (`true`, `0`), which needs no escaping for the numbers and booleans a
/// plug is sent.
pub fn rpc_path(method: &str, params: &[(&str, String)]) -> String {
    let mut p = format!("/rpc/{method}");
    for (i, (k, v)) in params.iter().enumerate() {
        p.push(if i == 0 { '?' } else { '&' });
        p.push_str(k);
        p.push('=');
        p.extend(url::form_urlencoded::byte_serialize(v.as_bytes()));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shaped as a Plus Plug S on 1.4.4 answers (Shelly's API docs, with
    // a made-up MAC).
    const DEVICE_INFO: &str = r#"{"name":null,"id":"shellyplusplugs-e86beae2a5f0","mac":"E86BEAE2A5F0","slot":0,"model":"SNPL-00112EU","gen":2,"fw_id":"20241011-114455/1.4.4-g6d2a586","ver":"1.4.4","app":"PlugS","auth_en":true,"auth_domain":"shellyplusplugs-e86beae2a5f0"}"#;

    const STATUS: &str = r#"{"ble":{},"cloud":{"connected":false},"mqtt":{"connected":false},"plugs_ui":{},
        "switch:0":{"id":0,"source":"WS_in","output":true,"apower":1234.5,"voltage":229.8,"current":5.372,
            "aenergy":{"total":98765.432,"by_minute":[20575.0,20571.0,20570.0],"minute_ts":1700000040},
            "temperature":{"tC":41.2,"tF":106.2}},
        "sys":{"mac":"E86BEAE2A5F0","restart_required":false,"time":"12:34","unixtime":1700000075,"uptime":5025,
            "ram_size":260000,"ram_free":120000,"fs_size":458752,"fs_free":135168,"cfg_rev":12,"kvs_rev":0,
            "schedule_rev":0,"webhook_rev":0,"available_updates":{}},
        "wifi":{"sta_ip":"192.168.1.50","status":"got ip","ssid":"home","rssi":-61},
        "ws":{"connected":false}}"#;

    #[test]
    fn device_info_of_a_plus_plug_s() {
        let i = parse_device_info(DEVICE_INFO.as_bytes()).expect("info");
        assert_eq!(i.id, "shellyplusplugs-e86beae2a5f0");
        assert_eq!(i.mac, "E86BEAE2A5F0");
        assert_eq!(i.generation, Some(2));
        assert!(i.auth_en);
        assert_eq!(i.realm(), "shellyplusplugs-e86beae2a5f0");
        assert_eq!(i.firmware().as_deref(), Some("1.4.4"));
        assert_eq!(i.model_name().as_deref(), Some("Shelly Plus Plug S"));
    }

    #[test]
    fn firmware_from_fw_id_and_unknown_models() {
        let i = parse_device_info(
            br#"{"id":"shellyx-1","mac":"AA","gen":3,"fw_id":"20240625-122245/1.3.3-gbdfd9b3","model":"S9XX-1","auth_en":false,"auth_domain":null}"#,
        )
        .expect("info");
        assert_eq!(i.firmware().as_deref(), Some("1.3.3"));
        assert_eq!(i.model_name().as_deref(), Some("S9XX-1"));
        assert_eq!(i.realm(), "shellyx-1");
    }

    #[test]
    fn gen1_and_garbage_are_bad_answers() {
        // A Gen1 Plug S's /shelly: a type, no gen, no id.
        let e = parse_device_info(
            br#"{"type":"SHPLG-S","mac":"A4CF12F45A1B","auth":false,"fw":"20230913-112003/v1.14.0-gcb84623","discoverable":false,"longid":1,"num_outputs":1,"num_meters":1}"#,
        )
        .expect_err("gen1");
        assert_eq!(
            e,
            InfoError::Gen1 {
                model: "SHPLG-S".into()
            }
        );
        assert!(e.to_string().contains("Gen2 and later"), "{e}");
        let e = parse_device_info(br#"{"id":"x","mac":"AA","gen":1,"model":"SHSW-1"}"#)
            .expect_err("gen 1");
        assert_eq!(
            e,
            InfoError::Gen1 {
                model: "SHSW-1".into()
            }
        );
        assert!(matches!(
            parse_device_info(b"<html>"),
            Err(InfoError::Bad(_))
        ));
        assert!(matches!(
            parse_device_info(br#"{"id":1}"#),
            Err(InfoError::Bad(_))
        ));
    }

    #[test]
    fn status_gives_the_switch_and_the_wifi() {
        let s = parse_status(STATUS.as_bytes(), 0).expect("status");
        assert!(s.switch.output);
        assert_eq!(s.switch.apower, Some(1234.5));
        assert_eq!(s.switch.voltage, Some(229.8));
        assert_eq!(s.switch.current, Some(5.372));
        assert_eq!(s.switch.aenergy.map(|e| e.total), Some(98765.432));
        assert_eq!(s.switch.temperature.and_then(|t| t.t_c), Some(41.2));
        assert!(s.switch.errors.is_empty());
        assert_eq!(s.rssi, Some(-61));
        assert_eq!(s.uptime_s, Some(5025));
    }

    #[test]
    fn a_missing_switch_names_the_ones_there_are() {
        assert_eq!(
            parse_status(STATUS.as_bytes(), 1),
            Err(StatusError::NoSuchSwitch {
                id: 1,
                available: "0".into()
            })
        );
        assert_eq!(
            parse_status(br#"{"sys":{}}"#, 0),
            Err(StatusError::NoSuchSwitch {
                id: 0,
                available: "no switch at all".into()
            })
        );
        assert!(matches!(
            parse_status(br#"{"switch:0":{"id":0,"output":"yes"}}"#, 0),
            Err(StatusError::Bad(_))
        ));
        assert!(matches!(parse_status(b"[]", 0), Err(StatusError::Bad(_))));
    }

    #[test]
    fn errors_and_a_null_temperature() {
        let s = parse_switch_status(
            br#"{"id":0,"source":"timer","output":false,"apower":0,"voltage":237.571,"current":0,
                "aenergy":{"total":14.093,"by_minute":[0,0,0],"minute_ts":1626942420},
                "temperature":{"tC":null,"tF":null},"errors":["overtemp","overpower"]}"#,
        )
        .expect("status");
        assert!(!s.output);
        assert!(s.has_error("overtemp") && s.has_error("overpower"));
        assert!(!s.has_error("overvoltage"));
        assert_eq!(s.temperature.map(|t| t.t_c), Some(None));
        // An unmetered switch: only id and output.
        let bare = parse_switch_status(br#"{"id":0,"source":"init","output":true}"#).expect("bare");
        assert_eq!((bare.apower, bare.aenergy), (None, None));
    }

    #[test]
    fn set_result_and_failures() {
        assert_eq!(
            parse_set_result(br#"{"was_on":false}"#),
            Ok(SetResult { was_on: false })
        );
        assert!(parse_set_result(br#"{}"#).is_err());
        assert_eq!(
            parse_failure(br#"{"code":-105,"message":"Argument 'id', value 3 not found!"}"#),
            Some(RpcFailure {
                code: -105,
                message: "Argument 'id', value 3 not found!".into()
            })
        );
        assert_eq!(
            parse_failure(
                br#"{"id":1,"src":"x","error":{"code":404,"message":"No handler for X.Y"}}"#
            )
            .map(|f| f.code),
            Some(404)
        );
        assert_eq!(parse_failure(b"Unauthorized"), None);
    }

    #[test]
    fn paths_carry_json_values() {
        assert_eq!(
            rpc_path("Switch.Set", &[("id", "0".into()), ("on", "true".into())]),
            "/rpc/Switch.Set?id=0&on=true"
        );
        assert_eq!(rpc_path("Shelly.GetStatus", &[]), "/rpc/Shelly.GetStatus");
        assert_eq!(
            rpc_path("X.Y", &[("name", "\"a b\"".into())]),
            "/rpc/X.Y?name=%22a+b%22"
        );
    }
}
