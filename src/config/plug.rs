//! `[[plug]]`: a load the bridge may switch. Two halves: the load policy
//! (priority, sheddable, minimum on/off times, nominal power, schedules,
//! the surplus rule, the inverter it belongs to), which the balancer, the
//! timers and the entities read whatever the brand; and the connection
//! (`kind = "tapo"` by default, or `"shelly"`), which only the plug's
//! driver reads. In the file they are one flat table, as they always were.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Secret, duration, schedule};

/// A plug brand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlugKind {
    /// TP-Link Tapo P100/P110 (KLAP).
    #[default]
    Tapo,
    /// Shelly Gen2/Gen3 single-switch devices (HTTP RPC).
    Shelly,
}

/// How the bridge reaches a Tapo plug.
#[derive(Debug, Clone, PartialEq)]
pub struct TapoPlug {
    pub host: String,
    pub port: Option<u16>,
    /// Own credentials; `[tapo]` is used when unset.
    pub email: Option<Secret>,
    pub password: Option<Secret>,
}

/// How the bridge reaches a Shelly plug.
#[derive(Debug, Clone, PartialEq)]
pub struct ShellyPlug {
    pub host: String,
    pub port: Option<u16>,
    /// The device's password (user `admin`) when authentication is on.
    pub password: Option<Secret>,
    /// Which switch of the device (0 on a plug).
    pub switch_id: u8,
}

/// The connection half of a plug.
#[derive(Debug, Clone, PartialEq)]
pub enum PlugConnection {
    Tapo(TapoPlug),
    Shelly(ShellyPlug),
}

impl PlugConnection {
    pub fn kind(&self) -> PlugKind {
        match self {
            Self::Tapo(_) => PlugKind::Tapo,
            Self::Shelly(_) => PlugKind::Shelly,
        }
    }

    pub fn host(&self) -> &str {
        match self {
            Self::Tapo(t) => &t.host,
            Self::Shelly(s) => &s.host,
        }
    }

    pub fn port(&self) -> Option<u16> {
        match self {
            Self::Tapo(t) => t.port,
            Self::Shelly(s) => s.port,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(try_from = "PlugToml", into = "PlugToml")]
pub struct PlugConfig {
    pub id: String,
    pub name: Option<String>,
    pub connection: PlugConnection,
    pub poll_interval: Duration,
    /// What the load draws when on, for plugs without metering (P100).
    pub nominal_w: Option<f64>,
    /// The inverter whose overload this plug helps to avoid.
    pub inverter: Option<String>,
    /// Lower is shed first.
    pub priority: i32,
    pub sheddable: bool,
    pub min_on: Duration,
    pub min_off: Duration,
    /// Switch off when inverter data has been stale for `balancer.failsafe_after`.
    pub failsafe_shed: bool,
    /// Switch off when PV stays below the load (the original's auto-off).
    pub pv_deficit_off: bool,
    /// Time-of-day switching; see docs/TIMERS.md.
    pub schedule: Vec<schedule::Schedule>,
    /// Switch on once the PV surplus (PV − house load) has stayed at or
    /// above this many W for `surplus_for`; unset = no surplus rule.
    pub surplus_on_w: Option<f64>,
    /// Switch a plug the surplus rule turned on off again once the surplus
    /// has stayed below this for `surplus_for`.
    pub surplus_off_w: f64,
    pub surplus_for: Duration,
}

/// `[[plug]]` as written in the file: one flat table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlugToml {
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<PlugKind>,
    host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    email: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    switch_id: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nominal_w: Option<f64>,
    #[serde(default = "default_plug_poll", with = "duration")]
    poll_interval: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inverter: Option<String>,
    #[serde(default)]
    priority: i32,
    #[serde(default = "yes")]
    sheddable: bool,
    #[serde(default = "default_min_on", with = "duration")]
    min_on: Duration,
    #[serde(default = "default_min_off", with = "duration")]
    min_off: Duration,
    #[serde(default)]
    failsafe_shed: bool,
    #[serde(default)]
    pv_deficit_off: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    schedule: Vec<schedule::Schedule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    surplus_on_w: Option<f64>,
    #[serde(default = "schedule::default_surplus_off_w")]
    surplus_off_w: f64,
    #[serde(default = "schedule::default_surplus_for", with = "duration")]
    surplus_for: Duration,
}

fn yes() -> bool {
    true
}
fn default_plug_poll() -> Duration {
    Duration::from_secs(5)
}
fn default_min_on() -> Duration {
    Duration::from_secs(60)
}
fn default_min_off() -> Duration {
    Duration::from_secs(300)
}

impl TryFrom<PlugToml> for PlugConfig {
    type Error = String;

    fn try_from(t: PlugToml) -> Result<Self, String> {
        let kind = t.kind.unwrap_or_default();
        let connection = match kind {
            PlugKind::Tapo => {
                if t.switch_id.is_some() {
                    return Err(format!(
                        "plug '{}': switch_id is a Shelly key; a Tapo plug has one switch",
                        t.id
                    ));
                }
                PlugConnection::Tapo(TapoPlug {
                    host: t.host,
                    port: t.port,
                    email: t.email,
                    password: t.password,
                })
            }
            PlugKind::Shelly => {
                if t.email.is_some() {
                    return Err(format!(
                        "plug '{}': email is a Tapo key; a Shelly plug takes only password (user admin)",
                        t.id
                    ));
                }
                PlugConnection::Shelly(ShellyPlug {
                    host: t.host,
                    port: t.port,
                    password: t.password,
                    switch_id: t.switch_id.unwrap_or(0),
                })
            }
        };
        Ok(Self {
            id: t.id,
            name: t.name,
            connection,
            poll_interval: t.poll_interval,
            nominal_w: t.nominal_w,
            inverter: t.inverter,
            priority: t.priority,
            sheddable: t.sheddable,
            min_on: t.min_on,
            min_off: t.min_off,
            failsafe_shed: t.failsafe_shed,
            pv_deficit_off: t.pv_deficit_off,
            schedule: t.schedule,
            surplus_on_w: t.surplus_on_w,
            surplus_off_w: t.surplus_off_w,
            surplus_for: t.surplus_for,
        })
    }
}

impl From<PlugConfig> for PlugToml {
    fn from(p: PlugConfig) -> Self {
        let (kind, host, port, email, password, switch_id) = match p.connection {
            // Tapo is the default: written without `kind`, as before.
            PlugConnection::Tapo(t) => (None, t.host, t.port, t.email, t.password, None),
            PlugConnection::Shelly(s) => (
                Some(PlugKind::Shelly),
                s.host,
                s.port,
                None,
                s.password,
                Some(s.switch_id),
            ),
        };
        Self {
            id: p.id,
            name: p.name,
            kind,
            host,
            port,
            email,
            password,
            switch_id,
            nominal_w: p.nominal_w,
            poll_interval: p.poll_interval,
            inverter: p.inverter,
            priority: p.priority,
            sheddable: p.sheddable,
            min_on: p.min_on,
            min_off: p.min_off,
            failsafe_shed: p.failsafe_shed,
            pv_deficit_off: p.pv_deficit_off,
            schedule: p.schedule,
            surplus_on_w: p.surplus_on_w,
            surplus_off_w: p.surplus_off_w,
            surplus_for: p.surplus_for,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plug(toml: &str) -> Result<PlugConfig, String> {
        toml::from_str(toml).map_err(|e| e.to_string())
    }

    #[test]
    fn a_plug_without_kind_is_a_tapo_and_is_written_back_without_it() {
        let p = plug("id = \"boiler\"\nhost = \"127.0.0.1\"\nemail = \"a@b.c\"\npassword = \"x\"\npriority = 2")
            .unwrap();
        assert_eq!(p.connection.kind(), PlugKind::Tapo);
        assert_eq!(p.connection.host(), "127.0.0.1");
        assert_eq!(p.priority, 2);
        let written = serde_json::to_value(&p).unwrap();
        assert!(written.get("kind").is_none(), "{written}");
        assert_eq!(written["host"], "127.0.0.1");
    }

    #[test]
    fn a_shelly_plug_has_its_own_keys() {
        let p = plug(
            "id = \"kettle\"\nkind = \"shelly\"\nhost = \"127.0.0.1\"\nport = 8080\npassword = \"pw\"\nsheddable = false",
        )
        .unwrap();
        let PlugConnection::Shelly(s) = &p.connection else {
            panic!("not a Shelly: {:?}", p.connection);
        };
        assert_eq!((s.port, s.switch_id), (Some(8080), 0));
        assert_eq!(s.password.as_ref().map(Secret::expose), Some("pw"));
        assert!(!p.sheddable);
        let written = serde_json::to_value(&p).unwrap();
        assert_eq!(written["kind"], "shelly");
        // The secret never leaves in clear text.
        assert!(!written.to_string().contains("\"pw\""), "{written}");
    }

    #[test]
    fn a_key_of_the_other_brand_is_named() {
        let e = plug("id = \"k\"\nkind = \"shelly\"\nhost = \"h\"\nemail = \"a@b.c\"").unwrap_err();
        assert!(e.contains("email is a Tapo key"), "{e}");
        let e = plug("id = \"k\"\nhost = \"h\"\nswitch_id = 1").unwrap_err();
        assert!(e.contains("switch_id is a Shelly key"), "{e}");
        let e = plug("id = \"k\"\nkind = \"zigbee\"\nhost = \"h\"").unwrap_err();
        assert!(e.contains("zigbee"), "{e}");
    }
}
