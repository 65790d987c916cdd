//! reqwest clients with an explicit rustls configuration (ring provider,
//! like the MQTT client). reqwest is built with `rustls-no-provider`, so
//! a client built without one of these would panic for want of a
//! process-wide crypto provider.

use std::sync::Arc;

/// `http://host:port/path` for a device on the LAN; an IPv6 literal gets
/// its brackets (`[fe80::1]:80`), a name or IPv4 address none.
pub fn http_url(host: &str, port: u16, path: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("http://[{host}]:{port}{path}")
    } else {
        format!("http://{host}:{port}{path}")
    }
}

/// Why a device could not be reached, as `host:port: <innermost cause>`:
/// the innermost cause names what went wrong ("Connection refused") where
/// reqwest's own message does not.
pub fn unreachable(host: &str, port: u16, e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    format!("{host}:{port}: {cause}")
}

fn config(roots: rustls::RootCertStore) -> Option<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

fn with(config: Option<rustls::ClientConfig>) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder();
    match config {
        Some(c) => builder.tls_backend_preconfigured(c),
        // Unreachable with ring's defaults (they cover every safe TLS
        // version); `build()` then returns an error naming the TLS backend.
        None => builder.tls_backend_preconfigured(()),
    }
}

/// For plain-http peers (Tapo and Shelly plugs): TLS is configured but
/// trusts nothing, so an https URL fails rather than being trusted
/// blindly. One configuration for all of them, cloned (its session cache
/// is shared): a fresh one per plug cost 14 KiB of heap each (issue 15).
pub fn plain_client_builder() -> reqwest::ClientBuilder {
    static PLAIN: std::sync::OnceLock<Option<rustls::ClientConfig>> = std::sync::OnceLock::new();
    with(
        PLAIN
            .get_or_init(|| config(rustls::RootCertStore::empty()))
            .clone(),
    )
}

/// For https peers: the system's root certificates.
pub fn client_builder() -> reqwest::ClientBuilder {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A malformed system certificate is not our business.
        let _ = roots.add(cert);
    }
    with(config(roots))
}

#[cfg(test)]
mod tests {
    #[test]
    fn device_urls_bracket_ipv6_literals_only() {
        assert_eq!(
            super::http_url("127.0.0.1", 80, "/app"),
            "http://127.0.0.1:80/app"
        );
        assert_eq!(
            super::http_url("::1", 8080, "/rpc"),
            "http://[::1]:8080/rpc"
        );
        assert_eq!(super::http_url("[::1]", 80, "/rpc"), "http://[::1]:80/rpc");
        assert_eq!(
            super::http_url("plug.lan", 80, "/shelly"),
            "http://plug.lan:80/shelly"
        );
    }

    #[test]
    fn both_builders_build() {
        assert!(super::plain_client_builder().build().is_ok());
        assert!(super::client_builder().build().is_ok());
    }
}
