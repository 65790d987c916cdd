//! Device identity and JSON methods: the plug's answers to the smart
//! protocol, from its identity and the load model.

use std::net::SocketAddr;
use std::sync::MutexGuard;
use std::time::SystemTime;

use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::meter::{Meter, local_time, noise, unix_secs};
use super::{
    Flavour, JSON_DECODE_FAIL, Load, PARAMS_ERROR, REGION, Shared, TIME_DIFF_MIN, UNKNOWN_METHOD,
    lock,
};
#[derive(Debug)]
pub(super) struct Identity {
    model: &'static str,
    fw_ver: &'static str,
    hw_ver: &'static str,
    nickname: String,
    pub(super) mac: String,
    device_id: String,
    hw_id: String,
    fw_id: String,
    oem_id: String,
    ip: String,
    pub(super) port: u16,
}

impl Identity {
    pub(super) fn new(flavour: Flavour, load: Load, addr: SocketAddr) -> Self {
        let (model, fw_ver, hw_ver) = match flavour {
            Flavour::P110 => ("P110", "1.3.4 Build 250117 Rel.101500", "1.0"),
            Flavour::P100 => ("P100", "1.4.3 Build 20250110 Rel. 40213", "1.0.0"),
        };
        let name = match load {
            Load::Boiler { .. } => "E2M Sim Boiler",
            Load::Heater { .. } => "E2M Sim Heater",
            Load::Fridge { .. } => "E2M Sim Fridge",
            Load::Constant { .. } => "E2M Sim Plug",
        };
        // Locally administered (02-…) so it can never be a real vendor's
        // address; the port makes several simulators distinguishable.
        let [hi, lo] = addr.port().to_be_bytes();
        let mac = format!("02-E2-4D-00-{hi:02X}-{lo:02X}");
        Self {
            model,
            fw_ver,
            hw_ver,
            nickname: name.to_owned(),
            device_id: hex_id(&["energy2mqtt sim device", &mac], 40),
            hw_id: hex_id(&["energy2mqtt sim hw", model], 32),
            fw_id: hex_id(&["energy2mqtt sim fw", fw_ver], 32),
            oem_id: hex_id(&["energy2mqtt sim oem", model], 32),
            mac,
            ip: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

fn hex_id(parts: &[&str], len: usize) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    let mut s = hex_upper(&h.finalize());
    s.truncate(len);
    s
}

pub(super) fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

impl Shared {
    pub(super) fn meter(&self) -> MutexGuard<'_, Meter> {
        lock(&self.meter)
    }

    fn metering(&self) -> bool {
        self.flavour == Flavour::P110
    }

    pub(super) fn switch(&self, on: bool, now: SystemTime) {
        let mut m = self.meter();
        m.advance(self.load, now);
        if m.on != on {
            m.on = on;
            m.on_since = now;
        }
    }

    pub(super) fn power_at(&self, now: SystemTime) -> f64 {
        let m = self.meter();
        m.power(self.load, now)
    }

    pub(super) fn set_drawing(&self, drawing: bool, now: SystemTime) {
        let mut m = self.meter();
        m.advance(self.load, now);
        m.idle = !drawing;
    }

    /// One smart-protocol request (already decrypted) to its JSON answer.
    pub(super) fn dispatch(&self, plaintext: &[u8]) -> Value {
        let Ok(req) = serde_json::from_slice::<Value>(plaintext) else {
            return json!({ "error_code": JSON_DECODE_FAIL });
        };
        let Some(method) = req.get("method").and_then(Value::as_str) else {
            return json!({ "error_code": JSON_DECODE_FAIL });
        };
        let params = req.get("params");
        if method == "multipleRequest" {
            return self.multiple(params);
        }
        envelope(self.call(method, params, SystemTime::now()))
    }

    fn multiple(&self, params: Option<&Value>) -> Value {
        let Some(requests) = params
            .and_then(|p| p.get("requests"))
            .and_then(Value::as_array)
        else {
            return json!({ "error_code": PARAMS_ERROR });
        };
        // One clock reading for the whole batch, so that device info and
        // energy agree with each other.
        let now = SystemTime::now();
        let responses: Vec<Value> = requests
            .iter()
            .map(|r| {
                let method = r.get("method").and_then(Value::as_str).unwrap_or("");
                let outcome = match method {
                    "" => Err(PARAMS_ERROR),
                    // Batches do not nest.
                    "multipleRequest" => Err(UNKNOWN_METHOD),
                    m => self.call(m, r.get("params"), now),
                };
                let mut v = envelope(outcome);
                if let Value::Object(o) = &mut v {
                    o.insert("method".into(), Value::from(method));
                }
                v
            })
            .collect();
        json!({ "error_code": 0, "result": { "responses": responses } })
    }

    /// `Ok(None)` is a success without `result`, as setters answer.
    fn call(
        &self,
        method: &str,
        params: Option<&Value>,
        now: SystemTime,
    ) -> Result<Option<Value>, i64> {
        let p110 = self.metering();
        let v = match method {
            "component_nego" => self.components(),
            "get_device_info" => self.device_info(now),
            "set_device_info" => {
                self.set_device_info(params, now)?;
                return Ok(None);
            }
            "get_device_usage" => self.device_usage(now),
            "get_device_time" => json!({
                "timestamp": unix_secs(now),
                "time_diff": TIME_DIFF_MIN,
                "region": REGION,
            }),
            "get_connect_cloud_state" => json!({ "status": 0 }),
            "get_led_info" => json!({
                "led_rule": "always",
                "led_status": self.meter().on,
            }),
            "get_latest_fw" => json!({
                "fw_ver": self.identity.fw_ver,
                "need_to_upgrade": false,
                "type": 0,
                "fw_size": 0,
                "release_date": "",
                "release_note": "",
                "hw_id": "",
                "oem_id": "",
            }),
            "get_schedule_rules" => json!({
                "enable": false,
                "rule_list": [],
                "schedule_rule_max_count": 32,
                "start_index": 0,
                "sum": 0,
            }),
            "get_countdown_rules" => json!({
                "countdown_rule_max_count": 1,
                "enable": false,
                "rule_list": [],
            }),
            "get_auto_update_info" if p110 => json!({
                "enable": false,
                "time": 180,
                "random_range": 120,
            }),
            "get_auto_off_config" if p110 => json!({ "enable": false, "delay_min": 60 }),
            "get_protection_power" if p110 => json!({ "enabled": false, "protection_power": 0 }),
            // 16 A at 230 V.
            "get_max_power" if p110 => json!({ "max_power": 3680 }),
            "get_energy_usage" if p110 => self.energy_usage(now),
            "get_current_power" if p110 => {
                let w = self.power_at(now);
                json!({ "current_power": w.round() as u64 })
            }
            "get_emeter_data" if p110 => self.emeter_data(now),
            // python-kasa drops the whole Energy module when this is missing
            // on energy_monitoring v2 (spec §4.6); the values are our
            // calibration constants, not a real plug's.
            "get_emeter_vgain_igain" if p110 => json!({ "vgain": 125_000, "igain": 11_500 }),
            _ => return Err(UNKNOWN_METHOD),
        };
        Ok(Some(v))
    }

    fn components(&self) -> Value {
        let mut list: Vec<(&str, u32)> = vec![
            ("device", 2),
            ("firmware", if self.metering() { 2 } else { 1 }),
            ("quick_setup", 3),
            ("time", 1),
            ("wireless", 1),
            ("schedule", 2),
            ("countdown", 2),
            ("led", 1),
            ("cloud_connect", 1),
            ("default_states", 1),
        ];
        if self.metering() {
            list.extend([
                ("auto_off", 2),
                ("energy_monitoring", 2),
                ("power_protection", 1),
            ]);
        }
        let list: Vec<Value> = list
            .into_iter()
            .map(|(id, ver)| json!({ "id": id, "ver_code": ver }))
            .collect();
        json!({ "component_list": list })
    }

    fn device_info(&self, now: SystemTime) -> Value {
        let (on, on_time) = {
            let m = self.meter();
            let on_time = if m.on {
                now.duration_since(m.on_since)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            } else {
                0
            };
            (m.on, on_time)
        };
        let id = &self.identity;
        // A plug on a shelf near the router: the signal wanders a little.
        let rssi = -52 + (noise((unix_secs(now) / 60) ^ 0x7255) * 3.0).round() as i64;
        let signal_level = match rssi {
            r if r > -60 => 3,
            r if r > -70 => 2,
            r if r > -80 => 1,
            _ => 0,
        };
        let mut info = json!({
            "device_id": id.device_id,
            "fw_ver": id.fw_ver,
            "hw_ver": id.hw_ver,
            "type": "SMART.TAPOPLUG",
            "model": id.model,
            "mac": id.mac,
            "hw_id": id.hw_id,
            "fw_id": id.fw_id,
            "oem_id": id.oem_id,
            "ip": id.ip,
            "time_diff": TIME_DIFF_MIN,
            "ssid": b64("energy2mqtt-sim"),
            "rssi": rssi,
            "signal_level": signal_level,
            "latitude": 0,
            "longitude": 0,
            "lang": "en_US",
            "avatar": "plug",
            "region": REGION,
            "specs": "",
            "nickname": b64(&id.nickname),
            "has_set_location_info": false,
            "device_on": on,
            "on_time": on_time,
            "default_states": { "type": "last_states", "state": {} },
        });
        if let Value::Object(o) = &mut info {
            match self.flavour {
                Flavour::P110 => {
                    for (k, v) in [
                        ("overheat_status", "normal"),
                        ("power_protection_status", "normal"),
                        ("overcurrent_status", "normal"),
                        ("charging_status", "normal"),
                        ("auto_off_status", "off"),
                    ] {
                        o.insert(k.into(), Value::from(v));
                    }
                    o.insert("auto_off_remain_time".into(), Value::from(0));
                }
                // P100 firmware still reports the older boolean.
                Flavour::P100 => {
                    o.insert("overheated".into(), Value::from(false));
                }
            }
        }
        info
    }

    fn set_device_info(&self, params: Option<&Value>, now: SystemTime) -> Result<(), i64> {
        let Some(p) = params.and_then(Value::as_object) else {
            return Err(PARAMS_ERROR);
        };
        match p.get("device_on") {
            None => Ok(()),
            Some(Value::Bool(on)) => {
                self.switch(*on, now);
                Ok(())
            }
            Some(_) => Err(PARAMS_ERROR),
        }
    }

    fn device_usage(&self, now: SystemTime) -> Value {
        let totals = {
            let mut m = self.meter();
            m.advance(self.load, now);
            m.totals(now)
        };
        let minutes = |s: f64| (s / 60.0).floor() as u64;
        let wh = |e: f64| e.floor() as u64;
        let time_usage = json!({
            "today": minutes(totals.today.on_s),
            "past7": minutes(totals.past7.on_s),
            "past30": minutes(totals.past30.on_s),
        });
        if !self.metering() {
            return json!({ "time_usage": time_usage });
        }
        json!({
            "time_usage": time_usage,
            "power_usage": {
                "today": wh(totals.today.wh),
                "past7": wh(totals.past7.wh),
                "past30": wh(totals.past30.wh),
            },
            // What a standby-killing plug "saved" is the firmware's own
            // estimate; ours saves nothing.
            "saved_power": { "today": 0, "past7": 0, "past30": 0 },
        })
    }

    fn energy_usage(&self, now: SystemTime) -> Value {
        let (totals, power) = {
            let mut m = self.meter();
            m.advance(self.load, now);
            (m.totals(now), m.power(self.load, now))
        };
        json!({
            "current_power": (power * 1000.0).round() as u64,
            "today_energy": totals.today.wh.floor() as u64,
            "month_energy": totals.month.wh.floor() as u64,
            "today_runtime": (totals.today.on_s / 60.0).floor() as u64,
            "month_runtime": (totals.month.on_s / 60.0).floor() as u64,
            "local_time": local_time(now),
            "electricity_charge": [0, 0, 0],
        })
    }

    fn emeter_data(&self, now: SystemTime) -> Value {
        let (power, since_boot_wh) = {
            let mut m = self.meter();
            m.advance(self.load, now);
            (m.power(self.load, now), m.since_boot_wh)
        };
        let volts = 230.0 + 1.5 * noise(unix_secs(now) ^ 0x5654);
        json!({
            "voltage_mv": (volts * 1000.0).round() as u64,
            "current_ma": (power / volts * 1000.0).round() as u64,
            "power_mw": (power * 1000.0).round() as u64,
            "energy_wh": since_boot_wh.floor() as u64,
        })
    }
}

fn envelope(outcome: Result<Option<Value>, i64>) -> Value {
    match outcome {
        Ok(Some(result)) => json!({ "error_code": 0, "result": result }),
        Ok(None) => json!({ "error_code": 0 }),
        Err(code) => json!({ "error_code": code }),
    }
}
