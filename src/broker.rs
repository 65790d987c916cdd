//! The optional embedded MQTT broker (rumqttd), for installations without
//! one. The bridge talks to it over loopback like to any other broker.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::config::BrokerConfig;
use crate::mqtt::settings::MAX_INCOMING_PACKET;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "broker.username: the embedded broker would listen on {0}, reachable from the network, \
         without a username and password"
    )]
    Unprotected(SocketAddr),
    #[error("cannot start the embedded broker thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("the embedded broker did not start listening on {addr}: {reason}")]
    NotListening { addr: SocketAddr, reason: String },
}

/// The rumqttd configuration for our small `[broker]` table.
pub fn rumqttd_config(cfg: &BrokerConfig) -> Result<Config, BrokerError> {
    let auth = match (&cfg.username, &cfg.password) {
        (Some(u), Some(p)) => Some(HashMap::from([(u.clone(), p.expose().to_owned())])),
        _ if !cfg.listen.ip().is_loopback() => return Err(BrokerError::Unprotected(cfg.listen)),
        _ => None,
    };
    let listener = ServerSettings {
        name: "v4".into(),
        listen: cfg.listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 5_000,
            // Above the bridge's own incoming limit, so an oversized command
            // reaches the bridge and gets an error response.
            max_payload_size: MAX_INCOMING_PACKET,
            max_inflight_count: 100,
            auth,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    Ok(Config {
        id: 0,
        router: RouterConfig {
            max_connections: cfg.max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 10,
            ..Default::default()
        },
        v4: Some(HashMap::from([("1".to_string(), listener)])),
        ..Default::default()
    })
}

/// Starts rumqttd on its own threads and waits until it accepts connections.
pub async fn start(cfg: &BrokerConfig) -> Result<(), BrokerError> {
    let config = rumqttd_config(cfg)?;
    let addr = cfg.listen;
    // Fail early and clearly when the port is taken: rumqttd would only log it.
    if let Err(e) = std::net::TcpListener::bind(addr) {
        return Err(BrokerError::NotListening {
            addr,
            reason: e.to_string(),
        });
    }
    let mut broker = Broker::new(config);
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })?;
    let probe = if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let mut last = String::new();
    for _ in 0..100 {
        match tokio::net::TcpStream::connect(probe).await {
            Ok(_) => {
                tracing::info!(listen = %addr, "embedded MQTT broker started");
                return Ok(());
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(BrokerError::NotListening { addr, reason: last })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn refuses_open_network_listener_without_credentials() {
        let mut cfg = BrokerConfig {
            listen: "0.0.0.0:1883".parse().unwrap(),
            ..BrokerConfig::default()
        };
        assert!(matches!(rumqttd_config(&cfg), Err(BrokerError::Unprotected(_))));
        cfg.username = Some("u".into());
        cfg.password = Some(Secret::new("p"));
        let c = rumqttd_config(&cfg).unwrap();
        let l = &c.v4.unwrap()["1"];
        assert_eq!(l.connections.auth.as_ref().unwrap()["u"], "p");
    }
}
