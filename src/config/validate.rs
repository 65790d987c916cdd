//! Checks serde cannot express: cross-references, ranges, formats.
//! Every error names the key it is about.

use std::collections::HashMap;
use std::time::Duration;

use super::load::{ConfigError, ConfigErrors};
use super::{Config, InverterTransport};

/// Device ids that would collide with the bridge's own topics.
/// Topic levels of the bridge's own (and the push sidecar's `push/state`).
pub const RESERVED_IDS: &[&str] = &[
    "bridge",
    "balancer",
    "alerts",
    "homeassistant",
    "site",
    "push",
];

/// Loopback, also written as an IPv4-mapped IPv6 address (`::ffff:127.0.0.1`).
pub fn is_loopback(ip: std::net::IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

pub fn validate(config: &Config) -> Result<(), ConfigErrors> {
    let mut errors = Vec::new();
    let mut err = |key: String, reason: String| errors.push(ConfigError::new(key, reason));

    // MQTT
    let mqtt = &config.mqtt;
    if let Some(url) = &mqtt.url {
        if let Err(reason) = crate::mqtt::settings::parse_url(url) {
            err("mqtt.url".into(), reason);
        }
    }
    if mqtt.client_id.trim().is_empty() {
        err("mqtt.client_id".into(), "must not be empty".into());
    }
    if mqtt.keepalive < Duration::from_secs(5) || mqtt.keepalive > Duration::from_secs(65_535) {
        err(
            "mqtt.keepalive".into(),
            "must be between 5s and 65535s".into(),
        );
    }
    if mqtt.reconnect_max < Duration::from_secs(1) {
        err("mqtt.reconnect_max".into(), "must be at least 1s".into());
    }
    if mqtt.username.is_none() && mqtt.password.is_some() {
        err(
            "mqtt.username".into(),
            "mqtt.password is set but mqtt.username is not".into(),
        );
    }
    if let Some(ca) = &mqtt.ca_file {
        if !ca.is_file() {
            err(
                "mqtt.ca_file".into(),
                format!("cannot read {}: no such file", ca.display()),
            );
        }
    }
    if let Err(reason) = check_topic_prefix(&mqtt.base_topic) {
        err("mqtt.base_topic".into(), reason);
    }

    // Home Assistant
    let ha = &config.homeassistant;
    if let Err(reason) = check_topic_prefix(&ha.discovery_prefix) {
        err("homeassistant.discovery_prefix".into(), reason);
    } else if ha.discovery_prefix == mqtt.base_topic {
        err(
            "homeassistant.discovery_prefix".into(),
            "must differ from mqtt.base_topic".into(),
        );
    }
    if let Err(reason) = check_topic_prefix(&ha.status_topic) {
        err("homeassistant.status_topic".into(), reason);
    }

    // Embedded broker
    let broker = &config.broker;
    if broker.listen.port() == 0 {
        err(
            "broker.listen".into(),
            "port 0 is not allowed: the bridge must know where to connect".into(),
        );
    }
    if broker.username.is_some() != broker.password.is_some() {
        err(
            "broker.password".into(),
            "broker.username and broker.password must be set together".into(),
        );
    }
    // An empty password would let anyone in as that user; an empty user
    // could never log in.
    if broker
        .username
        .as_deref()
        .is_some_and(|u| u.trim().is_empty())
    {
        err("broker.username".into(), "must not be empty".into());
    }
    if broker.password.as_ref().is_some_and(|p| p.is_empty()) {
        err(
            "broker.password".into(),
            "must not be empty: the embedded broker would accept the user without a password"
                .into(),
        );
    }
    if broker.enabled && !is_loopback(broker.listen.ip()) && broker.username.is_none() {
        err(
            "broker.username".into(),
            format!(
                "the embedded broker would listen on {}, which is reachable from the network: \
                 set broker.username and broker.password, or listen on 127.0.0.1",
                broker.listen
            ),
        );
    }
    if broker.max_connections == 0 {
        err("broker.max_connections".into(), "must be at least 1".into());
    }

    // Logging
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&config.log.level) {
        err(
            "log.level".into(),
            format!(
                "'{}' is not a log filter ({e}); use error, warn, info, debug or trace",
                config.log.level
            ),
        );
    }

    // Devices: ids unique across every kind, well-formed, not reserved.
    let mut seen: HashMap<String, String> = HashMap::new();
    for (id, _, _, path) in config.devices() {
        let key = format!("{path}.id");
        if let Err(reason) = check_device_id(&id) {
            err(key.clone(), reason);
        }
        match seen.get(&id) {
            Some(first) => err(
                key,
                format!("duplicate device id '{id}' (already used by {first})"),
            ),
            None => {
                seen.insert(id, path);
            }
        }
    }

    for (i, bms) in config.bms.iter().enumerate() {
        if !is_mac(&bms.mac) {
            err(
                format!("bms[{i}].mac"),
                format!(
                    "'{}' is not a Bluetooth address like C8:47:80:12:AB:34",
                    bms.mac
                ),
            );
        }
        if bms.publish_interval < Duration::from_millis(100) {
            err(
                format!("bms[{i}].publish_interval"),
                "must be at least 100ms".into(),
            );
        }
    }

    for (i, inv) in config.inverter.iter().enumerate() {
        let k = |f: &str| format!("inverter[{i}].{f}");
        match inv.transport {
            InverterTransport::Solarman | InverterTransport::ModbusTcp => {
                if inv.host.as_deref().is_none_or(|h| h.trim().is_empty()) {
                    err(
                        k("host"),
                        "required for this transport (IP address or host name)".into(),
                    );
                }
                if inv.transport == InverterTransport::Solarman && inv.serial.is_none() {
                    err(
                        k("serial"),
                        "required for the solarman transport: the logger stick's serial number (LOGGER_SN)".into(),
                    );
                }
            }
            InverterTransport::ModbusRtu => {
                if inv.device.is_none() {
                    err(
                        k("device"),
                        "required for modbus_rtu (e.g. /dev/ttyUSB0)".into(),
                    );
                }
            }
        }
        if inv.port == Some(0) {
            err(k("port"), "port 0 is not a valid port".into());
        }
        if !(1..=125).contains(&inv.max_block) {
            err(
                k("max_block"),
                format!(
                    "{} is outside 1-125 (the Modbus limit is 125 registers per read)",
                    inv.max_block
                ),
            );
        }
        if inv.unavailable_after == 0 {
            err(k("unavailable_after"), "must be at least 1".into());
        }
        if inv.power_scale != 1.0 && inv.power_scale != 10.0 {
            err(
                k("power_scale"),
                format!("{} is not 1 or 10", inv.power_scale),
            );
        }
        if inv.poll_interval < Duration::from_secs(1) {
            err(
                k("poll_interval"),
                "must be at least 1s (the stick serves one client at a time)".into(),
            );
        }
        if inv.timeout.is_zero() {
            err(k("timeout"), "must be greater than 0".into());
        }
        if inv.slave_id == 0 || inv.slave_id > 247 {
            err(k("slave_id"), "must be between 1 and 247".into());
        }
    }

    let tapo_default = config.tapo.email.is_some() && config.tapo.password.is_some();
    for (i, plug) in config.plug.iter().enumerate() {
        let k = |f: &str| format!("plug[{i}].{f}");
        if plug.connection.host().trim().is_empty() {
            err(k("host"), "must not be empty".into());
        }
        if plug.connection.port() == Some(0) {
            err(k("port"), "port 0 is not a valid port".into());
        }
        if let super::PlugConnection::Tapo(tapo) = &plug.connection {
            if tapo.email.is_some() != tapo.password.is_some() {
                err(
                    k("password"),
                    "email and password must be set together".into(),
                );
            }
            if tapo.email.is_none() && !tapo_default {
                err(
                    k("email"),
                    "no Tapo credentials: set [tapo] email and password (or TAPO_EMAIL/TAPO_PASSWORD), \
                     or email and password on this plug"
                        .into(),
                );
            }
        }
        if let Some(w) = plug.nominal_w {
            if !(0.0..=10_000.0).contains(&w) {
                err(k("nominal_w"), "must be between 0 and 10000 W".into());
            }
        }
        if plug.poll_interval < Duration::from_secs(1) {
            err(k("poll_interval"), "must be at least 1s".into());
        }
        if let Some(inv) = &plug.inverter {
            if !config.inverter.iter().any(|x| &x.id == inv) {
                err(k("inverter"), format!("no [[inverter]] with id '{inv}'"));
            }
        }
        for (key, reason) in super::schedule::check_plug(plug) {
            err(k(key), reason);
        }
    }

    let b = &config.balancer;
    if !(b.on_grid_w > 0.0 && b.on_grid_w.is_finite()) {
        err(
            "balancer.on_grid_w".into(),
            "must be a positive number of watts".into(),
        );
    }
    for (key, v) in [
        ("off_grid_percent", b.off_grid_percent),
        ("shed_at_percent", b.shed_at_percent),
        ("emergency_percent", b.emergency_percent),
        ("restore_below_percent", b.restore_below_percent),
    ] {
        if !(v > 0.0 && v <= 200.0) {
            err(
                format!("balancer.{key}"),
                "must be between 0 and 200".into(),
            );
        }
    }
    if b.restore_below_percent >= b.shed_at_percent {
        err(
            "balancer.restore_below_percent".into(),
            "must be below balancer.shed_at_percent, or plugs would flap".into(),
        );
    }
    if b.emergency_percent < b.shed_at_percent {
        err(
            "balancer.emergency_percent".into(),
            "must not be below balancer.shed_at_percent".into(),
        );
    }

    for (key, reason) in super::push::check(&config.push) {
        err(key, reason);
    }

    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Ids become topic levels, HA object ids and entity ids.
pub fn check_device_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && id.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !ok {
        return Err(format!(
            "'{id}' is not a device id: use 1-64 lowercase letters, digits, '_' or '-', starting with a letter or digit"
        ));
    }
    if RESERVED_IDS.contains(&id) {
        return Err(format!("'{id}' is reserved for the bridge's own topics"));
    }
    Ok(())
}

fn check_topic_prefix(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("must not be empty".into());
    }
    if t.contains(['+', '#', '\0']) {
        return Err(format!("'{t}' contains an MQTT wildcard (+ or #)"));
    }
    if t.starts_with('/') || t.ends_with('/') || t.contains("//") {
        return Err(format!(
            "'{t}' must not start or end with '/' or contain empty levels"
        ));
    }
    Ok(())
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}
