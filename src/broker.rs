//! The optional embedded MQTT broker (rumqttd), for installations without
//! one. The bridge talks to it over loopback like to any other broker.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::config::BrokerConfig;

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

/// The largest payload the embedded broker takes from anyone.
pub const MAX_PAYLOAD: usize = 4 * 1024 * 1024;

/// The rumqttd configuration for our small `[broker]` table.
pub fn rumqttd_config(cfg: &BrokerConfig) -> Result<Config, BrokerError> {
    let auth = match (&cfg.username, &cfg.password) {
        (Some(u), Some(p)) => Some(HashMap::from([(u.clone(), p.expose().to_owned())])),
        _ if !crate::config::is_loopback(cfg.listen.ip()) => {
            return Err(BrokerError::Unprotected(cfg.listen));
        }
        _ => None,
    };
    let listener = ServerSettings {
        name: "v4".into(),
        listen: cfg.listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 5_000,
            // A publisher of anything bigger is disconnected by the broker
            // itself; up to this, an oversized command reaches the bridge
            // and gets an error response.
            max_payload_size: MAX_PAYLOAD,
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
            // Also caps the retained messages a new subscription gets in
            // one go: Home Assistant subscribing to `homeassistant/#` must
            // receive every discovery config (the demo has over 400).
            max_outgoing_packet_count: 4096,
            // rumqttd keeps this much history per subscription filter and
            // never frees it; 16 MiB x 10 grew the process past 200 MiB.
            // A segment may overflow by one message, so big payloads pass.
            max_segment_size: 1024 * 1024,
            max_segment_count: 2,
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
        match probe_connect(probe, cfg).await {
            Ok(()) => {
                tracing::info!(listen = %addr, "embedded MQTT broker started");
                return Ok(());
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(BrokerError::NotListening { addr, reason: last })
}

/// A real MQTT CONNECT / CONNACK / DISCONNECT, so the broker sees a
/// well-behaved client rather than a socket that closes mid-handshake.
async fn probe_connect(addr: SocketAddr, cfg: &BrokerConfig) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    fn field(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    }
    let mut body = Vec::new();
    field(&mut body, b"MQTT");
    let mut flags = 0x02; // clean session
    if cfg.username.is_some() {
        flags |= 0x80 | 0x40;
    }
    body.extend_from_slice(&[4, flags, 0, 10]);
    field(&mut body, b"energy2mqtt-probe");
    if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
        field(&mut body, u.as_bytes());
        field(&mut body, p.expose().as_bytes());
    }
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(&packet).await?;
    let mut ack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut ack))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no CONNACK"))??;
    if ack[0] != 0x20 || ack[3] != 0 {
        return Err(std::io::Error::other(format!(
            "CONNACK refused: {ack:02x?}"
        )));
    }
    stream.write_all(&[0xE0, 0x00]).await?;
    // Let the broker close the connection, so its router is done with it.
    let mut rest = [0u8; 16];
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut rest)).await;
    Ok(())
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
        assert!(matches!(
            rumqttd_config(&cfg),
            Err(BrokerError::Unprotected(_))
        ));
        cfg.username = Some("u".into());
        cfg.password = Some(Secret::new("p"));
        let c = rumqttd_config(&cfg).unwrap();
        let l = &c.v4.unwrap()["1"];
        assert_eq!(l.connections.auth.as_ref().unwrap()["u"], "p");
    }
}
