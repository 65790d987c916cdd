//! What the pack's session needs from a transport: open a link to a pack,
//! write commands, receive notifications. BlueZ is one implementation; the
//! demo's simulated packs are another, so the demo runs the real session,
//! assembler and decoder.

use std::future::Future;

use crate::config::BmsConfig;

/// Why a link could not be opened or used; the message says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LinkError(pub String);

/// Opens links to packs.
pub trait PackConnector: Send + Sync + 'static {
    type Link: PackLink;
    fn open(&self, pack: &BmsConfig) -> impl Future<Output = Result<Self::Link, LinkError>> + Send;
}

/// One open link to one pack.
pub trait PackLink: Send + 'static {
    fn write(&mut self, frame: &[u8]) -> impl Future<Output = Result<(), LinkError>> + Send;
    /// The bytes of the next notification, or of several that came
    /// together, in order (the assembler takes a byte stream); `None` once
    /// the link is gone.
    fn recv(&mut self) -> impl Future<Output = Option<Vec<u8>>> + Send;
    /// Releases the pack (so the phone app can connect).
    fn disconnect(self) -> impl Future<Output = ()> + Send;
}

#[cfg(feature = "ble")]
pub use bluez::BluezConnector;

#[cfg(feature = "ble")]
mod bluez {
    use std::time::Duration;

    use tokio::sync::OnceCell;

    use super::*;
    use crate::drivers::jkbms::ble::{self, BleLink, BleOptions};

    /// Packs over BlueZ; the D-Bus session is opened on first use, so a
    /// machine without Bluetooth only fails the packs, not the bridge.
    #[derive(Default)]
    pub struct BluezConnector {
        session: OnceCell<bluer::Session>,
    }

    impl PackConnector for BluezConnector {
        type Link = BleLink;

        async fn open(&self, pack: &BmsConfig) -> Result<BleLink, LinkError> {
            let session = self
                .session
                .get_or_try_init(ble::open_session)
                .await
                .map_err(|e| LinkError(e.to_string()))?;
            let mut opts = BleOptions::parse(&pack.mac).map_err(|e| LinkError(e.to_string()))?;
            opts.pair = pack.pair;
            opts.scan_timeout = opts.scan_timeout.max(Duration::from_secs(10));
            BleLink::connect(session, &opts)
                .await
                .map_err(|e| LinkError(e.to_string()))
        }
    }

    impl PackLink for BleLink {
        async fn write(&mut self, frame: &[u8]) -> Result<(), LinkError> {
            BleLink::write(self, frame)
                .await
                .map_err(|e| LinkError(e.to_string()))
        }

        async fn recv(&mut self) -> Option<Vec<u8>> {
            BleLink::recv_burst(self).await
        }

        async fn disconnect(self) {
            BleLink::disconnect(self).await
        }
    }
}
