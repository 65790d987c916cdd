//! TP-Link Tapo P100/P110 plugs over their local KLAP protocol.

pub mod api;
pub mod client;
pub mod klap;
pub mod task;

use crate::config::{Config, PlugConfig};

/// The port a plug's KLAP server listens on unless configured.
pub const DEFAULT_PORT: u16 = 80;

/// Everything the plug's task needs, credentials resolved: the plug's own,
/// else the `[tapo]` ones.
pub fn link_for(config: &Config, plug: &PlugConfig) -> task::PlugLink {
    let pick = |own: &Option<crate::config::Secret>, shared: &Option<crate::config::Secret>| {
        own.as_ref()
            .or(shared.as_ref())
            .map(|s| s.expose().to_owned())
            .unwrap_or_default()
    };
    task::PlugLink {
        id: plug.id.clone(),
        host: plug.host.clone(),
        port: plug.port.unwrap_or(DEFAULT_PORT),
        username: pick(&plug.email, &config.tapo.email),
        password: pick(&plug.password, &config.tapo.password),
        timeout: config.tapo.timeout,
        poll_interval: plug.poll_interval,
    }
}

/// Whether a model name is a plug without energy metering.
pub fn is_unmetered(model: &str) -> bool {
    model.starts_with("P100") || model.starts_with("P105")
}
