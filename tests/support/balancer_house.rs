//! What the balancer suites (tests/balancer.rs, tests/shelly_balancer.rs)
//! share: a night-time inverter, the fast balancer's configuration, and
//! what they look for on the broker.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use energy2mqtt::sim::deye_model::{InverterModel, ModelConfig, SimTime};
use energy2mqtt::sim::solarman::SolarmanSim;
use tokio::time::Instant;

use super::Msg;

/// A Solarman inverter whose model's clock is at 03:00 local: no sun, no
/// random appliances, only its small base load (and what the test adds).
pub async fn night_inverter(serial: u32) -> SolarmanSim {
    let sod = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        % 86_400;
    let mut offset = 3 * 3600 - sod as i64;
    if offset > 43_200 {
        offset -= 86_400;
    } else if offset < -43_200 {
        offset += 86_400;
    }
    let model = InverterModel::new(
        ModelConfig {
            base_load_w: 250.0,
            utc_offset_s: offset as i32,
            ..ModelConfig::default()
        },
        SimTime::from_system_time(SystemTime::now()),
    );
    SolarmanSim::start(SocketAddr::from(([127, 0, 0, 1], 0)), serial, model)
        .await
        .expect("inverter simulator")
}

/// `[tapo]`, the inverter polled every second and a balancer with short
/// delays; the suites add their `[[plug]]`s.
pub fn fast_balancer_config(
    user: &str,
    pass: &str,
    inverter: &SolarmanSim,
    serial: u32,
    limit_w: f64,
) -> String {
    format!(
        r#"
[tapo]
email = "{user}"
password = "{pass}"
timeout = "1s"

[[inverter]]
id = "inverter"
host = "127.0.0.1"
port = {port}
serial = {serial}
poll_interval = "1s"
timeout = "700ms"

[balancer]
on_grid_w = {limit_w}
shed_delay = "1s"
restore_delay = "2s"
settle_after_shed = "2s"
settle_after_restore = "2s"
stale_after = "5s"
failsafe_after = "30s"
override_window = "10m"
"#,
        port = inverter.addr.port(),
    )
}

/// Waits up to 5 s for `is_on` (a plug simulator's relay) to be `on`.
pub async fn relay_becomes(is_on: impl Fn() -> bool, on: bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_on() != on && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The balancer's retained status.
pub fn status(m: &Msg) -> bool {
    m.topic == "energy2mqtt/balancer/inverter"
}

/// A `balancer_action` event: `kind` (shed | restore) of `plug`.
pub fn action(kind: &'static str, plug: &'static str) -> impl Fn(&Msg) -> bool {
    move |m: &Msg| {
        let v = m.json();
        m.topic == "energy2mqtt/bridge/event"
            && v["type"] == "balancer_action"
            && v["action"] == kind
            && v["plug"] == plug
    }
}
