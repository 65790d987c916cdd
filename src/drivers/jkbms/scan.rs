//! `energy2mqtt scan`: the JK-BMS packs advertising nearby, for the
//! `[[bms]]` sections.

use std::time::Duration;

use bluer::Session;
use serde::Serialize;
use tokio::time::sleep;

use super::ble::{BleError, JK_MANUFACTURER_IDS, SERVICE_FFE0, default_adapter, start_discovery};

/// One advertising device that looks like a JK-BMS.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Seen {
    pub name: Option<String>,
    pub mac: String,
    pub rssi: Option<i16>,
    pub manufacturer_id: Option<u16>,
}

/// JK-BMS packs nearby, scanning for `duration`: devices with a JK
/// manufacturer id (0x0B65 / 0x4B4A), and devices advertising service FFE0
/// without any manufacturer data yet (BlueZ may not have had the scan
/// response). Devices with FFE0 but another maker's id (HM-10 style UART
/// modules use FFE0 too) are left out, and the MAC prefix says nothing
/// (spec §1). Sorted by MAC.
pub async fn scan(session: &Session, duration: Duration) -> Result<Vec<Seen>, BleError> {
    let adapter = default_adapter(session).await?;
    let discovery = start_discovery(&adapter).await?;
    sleep(duration).await;
    let mut out = Vec::new();
    // Read everything before the discovery ends: BlueZ forgets the RSSI
    // values when it stops.
    for addr in adapter.device_addresses().await? {
        let Ok(device) = adapter.device(addr) else {
            continue;
        };
        // A device can vanish between listing and asking; skip it then.
        let Ok(rssi) = device.rssi().await else {
            continue;
        };
        let connected = device.is_connected().await.unwrap_or(false);
        if rssi.is_none() && !connected {
            continue;
        }
        let uuids = device.uuids().await.ok().flatten().unwrap_or_default();
        let makers = device
            .manufacturer_data()
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        let jk_id = JK_MANUFACTURER_IDS
            .iter()
            .copied()
            .find(|id| makers.contains_key(id));
        let matches = jk_id.is_some() || (uuids.contains(&SERVICE_FFE0) && makers.is_empty());
        if !matches {
            continue;
        }
        out.push(Seen {
            name: device.name().await.ok().flatten(),
            mac: addr.to_string(),
            rssi,
            manufacturer_id: jk_id,
        });
    }
    drop(discovery);
    out.sort_by(|a, b| a.mac.cmp(&b.mac));
    Ok(out)
}
