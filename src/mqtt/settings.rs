//! From the `[mqtt]` and `[broker]` configuration to rumqttc options.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{LastWill, MqttOptions, QoS, TlsConfiguration, Transport};

use super::payloads;
use super::topics::Topics;
use crate::config::Config;

/// Largest packet we send: discovery configs are a few KiB, `bridge/info`
/// grows with the device list.
pub const MAX_OUTGOING_PACKET: usize = 1024 * 1024;
/// Largest packet we accept: the largest MQTT 3.1.1 allows (the remaining
/// length is at most 268 435 455 bytes). rumqttc drops the connection on a
/// packet over its limit, and the broker delivers the same message again
/// after the reconnect (retained, or QoS 1 in our persistent session): any
/// client could keep the bridge off its broker with one message. So no
/// packet is over the limit; the payload is dropped on arrival
/// (`connection::MAX_KEPT_PAYLOAD`) and answered with an error. A broker's
/// `message_size_limit` bounds the memory such a message costs on the way.
pub const MAX_INCOMING_PACKET: usize = 268_435_455;

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// `mqtt://host[:port]` (also `tcp://`) or `mqtts://host[:port]` (`ssl://`).
pub fn parse_url(input: &str) -> Result<Endpoint, String> {
    let url = url::Url::parse(input).map_err(|e| format!("'{input}' is not a URL: {e}"))?;
    let (tls, default_port) = match url.scheme() {
        "mqtt" | "tcp" => (false, 1883),
        "mqtts" | "ssl" => (true, 8883),
        other => {
            return Err(format!(
                "unsupported scheme '{other}://'; use mqtt:// or mqtts://"
            ));
        }
    };
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("'{input}' has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if !url.username().is_empty() || url.password().is_some() {
        return Err("put credentials in mqtt.username / mqtt.password, not in the URL".into());
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() {
        return Err(format!("'{input}' must not have a path or query"));
    }
    let port = url.port().unwrap_or(default_port);
    if port == 0 {
        return Err("port 0 is not a valid port".into());
    }
    Ok(Endpoint { tls, host, port })
}

/// The broker the bridge talks to: `mqtt.url`, else the embedded broker
/// when enabled, else the local default.
pub fn endpoint(config: &Config) -> Result<Endpoint, String> {
    if let Some(url) = &config.mqtt.url {
        return parse_url(url);
    }
    if config.broker.enabled {
        let listen = config.broker.listen;
        let host = if listen.ip().is_unspecified() {
            if listen.is_ipv6() { "::1" } else { "127.0.0.1" }.to_owned()
        } else {
            listen.ip().to_string()
        };
        return Ok(Endpoint {
            tls: false,
            host,
            port: listen.port(),
        });
    }
    Ok(Endpoint {
        tls: false,
        host: "127.0.0.1".into(),
        port: 1883,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("mqtt.url: {0}")]
    Url(String),
    #[error("mqtt.ca_file: cannot read {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("TLS set-up failed: {0}")]
    Tls(String),
}

/// Client options with our Last Will, limits and credentials.
pub fn mqtt_options(config: &Config, topics: &Topics) -> Result<MqttOptions, SettingsError> {
    let ep = endpoint(config).map_err(SettingsError::Url)?;
    let mut opts = MqttOptions::new(config.mqtt.client_id.clone(), ep.host.clone(), ep.port);
    opts.set_keep_alive(config.mqtt.keepalive.max(Duration::from_secs(5)));
    // A persistent session: the broker queues QoS 1 commands published
    // while we reconnect (a restart of the broker or of the bridge) and
    // keeps our subscriptions. It needs a client id of our own, which
    // `mqtt.client_id` is.
    opts.set_clean_session(false);
    opts.set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET);
    opts.set_last_will(LastWill::new(
        topics.bridge_state(),
        payloads::OFFLINE,
        QoS::AtLeastOnce,
        true,
    ));
    // With the embedded broker and no explicit URL, use its credentials.
    let (user, pass) = if config.mqtt.url.is_none() && config.broker.enabled {
        (
            config.broker.username.clone(),
            config.broker.password.clone(),
        )
    } else {
        (config.mqtt.username.clone(), config.mqtt.password.clone())
    };
    if let Some(user) = user {
        let pass = pass.map(|p| p.expose().to_owned()).unwrap_or_default();
        opts.set_credentials(user, pass);
    }
    if ep.tls {
        opts.set_transport(Transport::Tls(tls_config(config)?));
    }
    Ok(opts)
}

fn tls_config(config: &Config) -> Result<TlsConfiguration, SettingsError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    match &config.mqtt.ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| SettingsError::CaFile {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(SettingsError::CaFile {
                    path: path.display().to_string(),
                    reason: "no PEM certificate in the file".into(),
                });
            }
            for cert in certs {
                roots.add(cert).map_err(|e| SettingsError::CaFile {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A malformed system certificate is not our business.
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SettingsError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConfiguration::Rustls(Arc::new(client)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            parse_url("mqtt://broker.lan").unwrap(),
            Endpoint {
                tls: false,
                host: "broker.lan".into(),
                port: 1883
            }
        );
        assert_eq!(parse_url("mqtts://10.0.0.2:8884").unwrap().port, 8884);
        assert!(parse_url("mqtts://h").unwrap().tls);
        assert_eq!(parse_url("mqtt://[::1]:1884").unwrap().host, "::1");
        assert!(parse_url("http://h").unwrap_err().contains("scheme"));
        assert!(
            parse_url("mqtt://u:p@h")
                .unwrap_err()
                .contains("credentials")
        );
        assert!(parse_url("broker:1883").is_err());
        assert!(parse_url("mqtt://h:0").is_err());
        assert!(parse_url("mqtt://h:70000").is_err());
    }
}
