//! The RPC methods and the answers built from the device's state.

use super::*;

impl Shared {
    pub(super) fn device_info(&self) -> Value {
        let auth = lock(&self.password).is_some();
        json!({
            "name": self.config.name,
            "id": self.id,
            "mac": self.mac,
            "slot": 0,
            "model": self.sku,
            "gen": self.gen_,
            "fw_id": self.fw_id,
            "ver": self.ver,
            "app": self.app,
            "auth_en": auth,
            "auth_domain": if auth { Value::from(self.id.as_str()) } else { Value::Null },
        })
    }

    pub(super) fn switch_status(&self) -> Value {
        let unix = unix_now();
        let mut st = self.state();
        st.advance(Instant::now());
        let power = round(self.power(&st, unix), 1);
        let voltage = round(self.config.voltage_v, 1);
        let current = if voltage > 0.0 {
            round(power / voltage, 3)
        } else {
            0.0
        };
        // mWh in each of the last three whole minutes, newest first.
        let per_minute = if st.on {
            round(st.load_w * 1000.0 / 60.0, 3)
        } else {
            0.0
        };
        let t = self.config.temperature_c;
        let mut sw = json!({
            "id": 0,
            "source": st.source,
            "output": st.on,
            "apower": power,
            "voltage": voltage,
            "current": current,
            "aenergy": {
                "total": round(st.total_wh, 3),
                "by_minute": [per_minute, per_minute, per_minute],
                "minute_ts": (unix as u64 / 60) * 60,
            },
            "temperature": {"tC": round(t, 1), "tF": round(t * 9.0 / 5.0 + 32.0, 1)},
        });
        let errors = st.errors();
        if !errors.is_empty() {
            sw["errors"] = json!(errors);
        }
        sw
    }

    pub(super) fn sys_status(&self) -> Value {
        let unix = unix_now() as u64;
        let day = unix % 86_400;
        json!({
            "mac": self.mac,
            "restart_required": false,
            "time": format!("{:02}:{:02}", day / 3600, day % 3600 / 60),
            "unixtime": unix,
            "uptime": self.started.elapsed().as_secs(),
            "ram_size": 262_144,
            "ram_free": 118_000,
            "fs_size": 458_752,
            "fs_free": 135_168,
            "cfg_rev": 7,
            "kvs_rev": 0,
            "schedule_rev": 0,
            "webhook_rev": 0,
            "available_updates": {},
            "reset_reason": 3,
        })
    }

    pub(super) fn wifi_status(&self) -> Value {
        json!({
            "sta_ip": "127.0.0.1",
            "status": "got ip",
            "ssid": "energy2mqtt-sim",
            "rssi": self.config.rssi_dbm,
        })
    }

    pub(super) fn status(&self) -> Value {
        json!({
            "ble": {},
            "cloud": {"connected": false},
            "mqtt": {"connected": false},
            "plugs_ui": {},
            "switch:0": self.switch_status(),
            "sys": self.sys_status(),
            "wifi": self.wifi_status(),
            "ws": {"connected": false},
        })
    }

    pub(super) fn switch_config(&self) -> Value {
        json!({
            "id": 0,
            "name": null,
            "initial_state": "restore_last",
            "auto_on": false,
            "auto_on_delay": 60.0,
            "auto_off": false,
            "auto_off_delay": 60.0,
            "power_limit": self.config.power_limit_w,
            "voltage_limit": 280,
            "autorecover_voltage_errors": false,
            "current_limit": 12.0,
        })
    }

    pub(super) fn config(&self) -> Value {
        json!({
            "ble": {"enable": true, "rpc": {"enable": true}, "observer": {"enable": false}},
            "cloud": {"enable": false, "server": null},
            "mqtt": {"enable": false, "server": null, "client_id": self.id, "topic_prefix": self.id},
            "plugs_ui": {"leds": {"mode": "power", "night_mode": {"enable": false}}},
            "switch:0": self.switch_config(),
            "sys": {
                "device": {
                    "name": self.config.name,
                    "mac": self.mac,
                    "fw_id": self.fw_id,
                    "discoverable": true,
                    "eco_mode": false,
                },
                "location": {"tz": "UTC", "lat": null, "lon": null},
                "ui_data": {},
                "cfg_rev": 7,
            },
            "wifi": {
                "ap": {"ssid": self.id, "is_open": true, "enable": false},
                "sta": {"ssid": "energy2mqtt-sim", "is_open": false, "enable": true, "ipv4mode": "dhcp"},
            },
            "ws": {"enable": false, "server": null, "ssl_ca": "ca.pem"},
        })
    }

    /// One RPC call.
    pub(super) fn call(
        &self,
        method: &str,
        params: &Value,
        source: &'static str,
    ) -> Result<Value, RpcError> {
        match method {
            "Shelly.GetDeviceInfo" => Ok(self.device_info()),
            "Shelly.GetStatus" => Ok(self.status()),
            "Shelly.GetConfig" => Ok(self.config()),
            "Shelly.GetComponents" => Ok(json!({
                "components": [], "cfg_rev": 7, "offset": 0, "total": 0,
            })),
            "Shelly.ListMethods" => Ok(json!({"methods": METHODS})),
            "Sys.GetStatus" => Ok(self.sys_status()),
            "WiFi.GetStatus" => Ok(self.wifi_status()),
            "Switch.GetStatus" => {
                switch_id(params)?;
                Ok(self.switch_status())
            }
            "Switch.GetConfig" => {
                switch_id(params)?;
                Ok(self.switch_config())
            }
            "Switch.Set" => {
                switch_id(params)?;
                let on = match params.get("on") {
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err(RpcError::invalid("on")),
                    None => return Err(RpcError::missing("on")),
                };
                self.switch_sets.fetch_add(1, Ordering::Relaxed);
                Ok(json!({"was_on": self.switch(on, source)}))
            }
            "Switch.Toggle" => {
                switch_id(params)?;
                let on = !self.state().on;
                Ok(json!({"was_on": self.switch(on, source)}))
            }
            _ => Err(RpcError {
                code: 404,
                message: format!("No handler for {method}"),
            }),
        }
    }

    /// What a Gen1 plug answers on `path`.
    pub(super) fn gen1_answer(&self, path: &str) -> Response {
        if path == "/shelly" {
            axum::Json(json!({
                "type": "SHPLG-S",
                "mac": self.mac,
                "auth": false,
                "fw": "20230913-112003/v1.14.0-gcb84623",
                "discoverable": false,
                "longid": 1,
                "num_outputs": 1,
                "num_meters": 1,
            }))
            .into_response()
        } else {
            (StatusCode::NOT_FOUND, "Not Found").into_response()
        }
    }

    /// Waits out the knobs before an HTTP answer on `path`; `Some`
    /// answers instead.
    pub(super) async fn gate(&self, path: &str) -> Option<Response> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut offline = self.offline.subscribe();
        tokio::select! {
            _ = self.stop.cancelled() => return Some(StatusCode::SERVICE_UNAVAILABLE.into_response()),
            _ = offline.wait_for(|o| !*o) => {}
        }
        let latency = self.knobs.latency_ms.load(Ordering::Relaxed);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        if self.knobs.gen1.load(Ordering::Relaxed) {
            return Some(self.gen1_answer(path));
        }
        if self.knobs.busy.load(Ordering::Relaxed) {
            return Some(
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(json!({"code": 503, "message": "Service unavailable"})),
                )
                    .into_response(),
            );
        }
        None
    }

    /// A JSON-RPC request frame → the response frame (`None` for a
    /// notification, which gets no answer).
    /// `authenticated`: the sender proved itself another way (the digest
    /// header of `POST /rpc`).
    pub(super) fn frame(
        &self,
        frame: &Value,
        peer: Option<&str>,
        source: &'static str,
        authenticated: bool,
    ) -> Option<Value> {
        let id = frame.get("id").filter(|v| !v.is_null())?.clone();
        let mut out = Map::new();
        out.insert("id".into(), id);
        out.insert("src".into(), Value::from(self.id.as_str()));
        if let Some(p) = peer {
            out.insert("dst".into(), Value::from(p));
        }
        let Some(method) = frame.get("method").and_then(Value::as_str) else {
            out.insert(
                "error".into(),
                json!({"code": -103, "message": "Missing required argument 'method'!"}),
            );
            return Some(Value::Object(out));
        };
        let empty = Value::Object(Map::new());
        let params = frame.get("params").unwrap_or(&empty);
        let checked = if authenticated {
            Ok(())
        } else {
            self.frame_auth(method, frame)
        };
        let answer = match checked {
            Err(stale) => Err(RpcError {
                code: 401,
                message: self.frame_challenge(stale),
            }),
            Ok(()) => self.call(method, params, source),
        };
        match answer {
            Ok(result) => out.insert("result".into(), result),
            Err(e) => out.insert(
                "error".into(),
                json!({"code": e.code, "message": e.message}),
            ),
        };
        Some(Value::Object(out))
    }
}

pub(super) fn is_open(method: &str) -> bool {
    method == "Shelly.GetDeviceInfo"
}

pub(super) const METHODS: &[&str] = &[
    "Shelly.GetDeviceInfo",
    "Shelly.GetStatus",
    "Shelly.GetConfig",
    "Shelly.GetComponents",
    "Shelly.ListMethods",
    "Sys.GetStatus",
    "WiFi.GetStatus",
    "Switch.GetStatus",
    "Switch.GetConfig",
    "Switch.Set",
    "Switch.Toggle",
];

#[derive(Debug)]
pub(super) struct RpcError {
    pub(super) code: i64,
    pub(super) message: String,
}

impl RpcError {
    pub(super) fn missing(arg: &str) -> Self {
        Self {
            code: -103,
            message: format!("Missing required argument '{arg}'!"),
        }
    }

    pub(super) fn invalid(arg: &str) -> Self {
        Self {
            code: -103,
            message: format!("Invalid argument '{arg}'!"),
        }
    }

    pub(super) fn http_status(&self) -> StatusCode {
        match self.code {
            401 => StatusCode::UNAUTHORIZED,
            404 | -105 => StatusCode::NOT_FOUND,
            -103 => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The simulated plug has one switch, `switch:0`.
pub(super) fn switch_id(params: &Value) -> Result<(), RpcError> {
    match params.get("id") {
        None => Err(RpcError::missing("id")),
        Some(v) if v.as_u64() == Some(0) => Ok(()),
        Some(v) if v.is_u64() => Err(RpcError {
            code: -105,
            message: format!("Argument 'id', value {v} not found!"),
        }),
        Some(_) => Err(RpcError::invalid("id")),
    }
}

/// `?id=0&on=true` → `{"id":0,"on":true}`: each value as JSON, else as a
/// string.
pub(super) fn query_params(query: Option<&str>) -> Value {
    let mut m = Map::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let value = serde_json::from_str(&v).unwrap_or_else(|_| Value::String(v.into_owned()));
        m.insert(k.into_owned(), value);
    }
    Value::Object(m)
}

pub(super) fn http_answer(r: Result<Value, RpcError>) -> Response {
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => (
            e.http_status(),
            axum::Json(json!({"code": e.code, "message": e.message})),
        )
            .into_response(),
    }
}
