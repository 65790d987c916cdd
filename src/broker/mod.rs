//! The optional embedded MQTT broker (MQTT 3.1.1), for installations
//! without one. The bridge talks to it over loopback like to any other
//! broker; it runs on the caller's tokio runtime.
//!
//! Our own and not rumqttd (issue 15): rumqttd keeps a commit log per
//! filter that a fast publisher overruns, so a subscriber lost about half
//! of a QoS 0 flood, and the log's memory never came back. Here a
//! publisher waits for room in each subscriber's bounded queue
//! ([`outbound`]), so nothing is lost while subscribers keep up and the
//! memory is bounded per session. Packets are encoded and decoded by
//! rumqttc's `mqttbytes`, the codec the bridge's own client uses.

mod connection;
mod outbound;
mod router;
mod topic;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::BrokerConfig;
use connection::Settings;
use router::Router;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "broker.username: the embedded broker would listen on {0}, reachable from the network, \
         without a username and password"
    )]
    Unprotected(SocketAddr),
    #[error("the embedded broker cannot listen on {addr}: {reason}")]
    NotListening { addr: SocketAddr, reason: String },
}

/// The largest payload the embedded broker takes from anyone.
pub const MAX_PAYLOAD: usize = 4 * 1024 * 1024;

/// The connections' settings for our small `[broker]` table.
fn settings(cfg: &BrokerConfig) -> Result<Settings, BrokerError> {
    let auth = match (&cfg.username, &cfg.password) {
        (Some(u), Some(p)) => Some((u.clone(), p.clone())),
        _ if !crate::config::is_loopback(cfg.listen.ip()) => {
            return Err(BrokerError::Unprotected(cfg.listen));
        }
        _ => None,
    };
    Ok(Settings {
        auth,
        // A publisher of anything bigger is disconnected by the broker
        // itself; up to this, an oversized command reaches the bridge and
        // gets an error response. The rest is room for the topic.
        max_packet: MAX_PAYLOAD + 64 * 1024,
        connect_timeout: Duration::from_secs(5),
    })
}

/// Starts listening and returns once connections are accepted; the broker
/// then runs on the current runtime until the process ends.
pub async fn start(cfg: &BrokerConfig) -> Result<(), BrokerError> {
    let settings = Arc::new(settings(cfg)?);
    let addr = cfg.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| BrokerError::NotListening {
            addr,
            reason: e.to_string(),
        })?;
    let router = Arc::new(Router::default());
    let slots = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    tokio::spawn(accept_loop(listener, router, settings, slots));
    tracing::info!(listen = %addr, "embedded MQTT broker started");
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    router: Arc<Router>,
    settings: Arc<Settings>,
    slots: Arc<Semaphore>,
) {
    let mut full_reported = false;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: try again shortly
                // rather than spin.
                tracing::warn!(error = %e, "embedded broker: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if !full_reported {
                tracing::warn!(%peer, "embedded broker: broker.max_connections reached, connection refused");
                full_reported = true;
            }
            drop(stream);
            continue;
        };
        full_reported = false;
        let (router, settings) = (router.clone(), settings.clone());
        tokio::spawn(async move {
            connection::serve(stream, router, settings).await;
            drop(slot);
        });
    }
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
        assert!(matches!(settings(&cfg), Err(BrokerError::Unprotected(_))));
        cfg.username = Some("u".into());
        cfg.password = Some(Secret::new("p"));
        let s = settings(&cfg).unwrap();
        let (user, password) = s.auth.as_ref().unwrap();
        assert_eq!((user.as_str(), password.expose()), ("u", "p"));
    }
}
