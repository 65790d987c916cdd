//! Shelly Gen2/Gen3 plugs (Plus Plug S, Plug S Gen3, any single-switch
//! Gen2+ device) over their local HTTP RPC: `GET /rpc/<Method>`, with
//! SHA-256 digest authentication when the device has a password.

pub mod client;
pub mod digest;
pub mod rpc;
pub mod task;

use std::time::Duration;

pub use client::{ShellyClient, ShellyError};
pub use task::{ShellyLink, fields, spawn};

use crate::config::{PlugConfig, ShellyPlug};

/// The port a Shelly's HTTP server listens on unless configured.
pub const DEFAULT_PORT: u16 = 80;
/// How long one request may take: short, so the balancer is never stuck
/// behind a plug (a Shelly on the LAN answers in tens of milliseconds).
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// Everything the plug's task needs, from its `[[plug]]` section.
pub fn link_for(plug: &PlugConfig, shelly: &ShellyPlug) -> ShellyLink {
    ShellyLink {
        id: plug.id.clone(),
        host: shelly.host.clone(),
        port: shelly.port.unwrap_or(DEFAULT_PORT),
        password: shelly
            .password
            .as_ref()
            .map(|s| s.expose().to_owned())
            .filter(|p| !p.is_empty()),
        switch_id: shelly.switch_id,
        timeout: TIMEOUT,
        poll_interval: plug.poll_interval,
    }
}

/// A Shelly plug for discovery: every Gen2+ plug meters, so its entities
/// do not depend on what it says (the device block fills in from its
/// identity).
pub fn describe() -> crate::drivers::Description {
    crate::drivers::Description {
        manufacturer: "Shelly",
        model: "Shelly plug",
        identifiers: Vec::new(),
        fields: fields(),
        complete: true,
    }
}
