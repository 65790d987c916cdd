//! The balancer's view of the devices, read from the drivers' typed
//! readings, whose serialisation is the published state object: the
//! balancer sees exactly what Home Assistant sees.

use time::OffsetDateTime;

use crate::core::balancer::{InverterSnapshot, PlugSnapshot, Timestamp};
use crate::core::registry::{DeviceEntry, Registry};
use crate::model::{DeviceKind, PlugMode};

/// Deye fault F18 (AC over-current) is bit 17 of registers 103–106; F34
/// (AC overload) bit 33. Either means the inverter is already overloaded.
const OVERLOAD_FAULT_BITS: u64 = (1 << 17) | (1 << 33);
/// Inverter losses between the battery and the AC side.
const INVERTER_EFFICIENCY: f64 = 0.95;

pub fn timestamp(t: OffsetDateTime) -> Timestamp {
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    Timestamp::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// The latest inverter sample; `None` until the registers needed for the
/// limit have been read (the rating arrives with the identity).
pub fn inverter(
    entry: &DeviceEntry,
    bms_discharge_limit_w: Option<f64>,
) -> Option<InverterSnapshot> {
    let r = entry.inverter()?;
    let seen = entry.last_seen?;
    let finite = |v: f64| v.is_finite().then_some(v);
    Some(InverterSnapshot {
        sample_time: timestamp(seen),
        rated_w: r.rated_power_w.and_then(finite)?,
        ac_output_w: finite(r.inverter_power_w)?,
        grid_port_w: finite(r.grid_port_power_w).unwrap_or(0.0),
        gen_port_w: finite(r.gen_port_power_w).unwrap_or(0.0),
        grid_connected: r.grid_connected,
        pv_w: finite(r.pv_power_w),
        load_w: finite(r.load_power_w),
        bms_discharge_limit_w,
        overload_fault: r.fault_bits & OVERLOAD_FAULT_BITS != 0,
    })
}

/// What the packs may deliver together, when every reporting pack says
/// its limit; only meaningful with one inverter (which pack feeds which
/// inverter is not configured).
pub fn bms_discharge_limit(registry: &Registry) -> Option<f64> {
    let mut total = 0.0;
    let mut any = false;
    for (_, d) in registry.iter() {
        if d.kind != DeviceKind::Bms || d.online != Some(true) {
            continue;
        }
        let pack = d.pack();
        let finite = |v: Option<f64>| v.filter(|v| v.is_finite());
        let (Some(amps), Some(volts)) = (
            finite(pack.and_then(|p| p.max_discharge_current_a)),
            finite(pack.and_then(|p| p.voltage_v)),
        ) else {
            return None;
        };
        total += amps.max(0.0) * volts.max(0.0) * INVERTER_EFFICIENCY;
        any = true;
    }
    any.then_some(total)
}

/// A plug as the balancer sees it.
pub fn plug(id: &str, entry: Option<&DeviceEntry>, mode: PlugMode, pending: bool) -> PlugSnapshot {
    let reading = entry.and_then(DeviceEntry::plug);
    PlugSnapshot {
        id: id.to_owned(),
        reachable: entry.is_some_and(|e| e.online == Some(true)),
        on: reading.map(|r| r.on),
        power_w: reading.and_then(|r| r.power_w).filter(|v| v.is_finite()),
        last_seen: entry.and_then(|e| e.last_seen).map(timestamp),
        mode,
        command_pending: pending,
    }
}

/// PV surplus (PV − house load) of an inverter, for surplus rules.
pub fn surplus_w(entry: &DeviceEntry) -> Option<f64> {
    Some(entry.inverter()?.surplus_w()).filter(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn entry(kind: DeviceKind, readings: Value, online: bool) -> DeviceEntry {
        let state = readings.as_object().cloned().unwrap_or_default();
        DeviceEntry {
            kind,
            name: "x".into(),
            online: Some(online),
            reading: Some(crate::model::Reading::from_state(kind, &state).unwrap()),
            annotations: Default::default(),
            last_seen: Some(OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()),
        }
    }

    #[test]
    fn inverter_sample_from_published_keys() {
        let e = entry(
            DeviceKind::Inverter,
            json!({"rated_power": 6000, "inverter_power": 4200, "grid_port_power": 300,
                   "gen_port_power": 0, "grid_connected": true, "pv_power": 1000,
                   "load_power": 4500, "fault_bits": 1u64 << 17}),
            true,
        );
        let s = inverter(&e, Some(5000.0)).unwrap();
        assert_eq!(s.sample_time, Timestamp::from_millis(1_700_000_000_000));
        assert_eq!(s.load_port_w(), 4500.0);
        assert!(s.overload_fault);
        assert_eq!(s.bms_discharge_limit_w, Some(5000.0));
        // Without the rating (identity not read yet) there is no sample.
        let mut e2 = e.clone();
        if let Some(crate::model::Reading::Inverter(i)) = &mut e2.reading {
            i.rated_power_w = None;
        }
        assert!(inverter(&e2, None).is_none());
    }

    #[test]
    fn plug_state_and_power() {
        let e = entry(
            DeviceKind::Plug,
            json!({"state": "ON", "power": 1999.5}),
            true,
        );
        let p = plug("boiler", Some(&e), PlugMode::Auto, false);
        assert_eq!(p.on, Some(true));
        assert_eq!(p.power_w, Some(1999.5));
        assert!(p.reachable);
        let unknown = plug("boiler", None, PlugMode::Off, true);
        assert_eq!(unknown.on, None);
        assert!(!unknown.reachable && unknown.command_pending);
    }
}
