//! TP-Link Tapo P100/P110 plugs over their local KLAP protocol.

pub mod api;
pub mod client;
pub mod klap;
pub mod task;

use crate::config::{Config, PlugConfig, TapoPlug};

/// The port a plug's KLAP server listens on unless configured.
pub const DEFAULT_PORT: u16 = 80;

/// Everything the plug's task needs, credentials resolved: the plug's own,
/// else the `[tapo]` ones.
pub fn link_for(config: &Config, plug: &PlugConfig, tapo: &TapoPlug) -> task::PlugLink {
    let pick = |own: &Option<crate::config::Secret>, shared: &Option<crate::config::Secret>| {
        own.as_ref()
            .or(shared.as_ref())
            .map(|s| s.expose().to_owned())
            .unwrap_or_default()
    };
    task::PlugLink {
        id: plug.id.clone(),
        host: tapo.host.clone(),
        port: tapo.port.unwrap_or(DEFAULT_PORT),
        username: pick(&tapo.email, &config.tapo.email),
        password: pick(&tapo.password, &config.tapo.password),
        timeout: config.tapo.timeout,
        poll_interval: plug.poll_interval,
    }
}

/// A plug for discovery: a P100 has no power entities; a plug that has
/// not said its model is assumed as `assume` says.
pub fn describe(
    info: &crate::drivers::DeviceInfo,
    assume: crate::drivers::Assume,
) -> crate::drivers::Description {
    let unmetered = match info.model.as_deref() {
        Some(model) => is_unmetered(model),
        None => assume == crate::drivers::Assume::Common,
    };
    crate::drivers::Description {
        manufacturer: "TP-Link",
        model: "Tapo plug",
        identifiers: Vec::new(),
        fields: if unmetered {
            task::fields_without_metering()
        } else {
            task::fields()
        },
        complete: info.model.is_some(),
    }
}

/// Whether a model name is a plug without energy metering.
pub fn is_unmetered(model: &str) -> bool {
    model.starts_with("P100") || model.starts_with("P105")
}
