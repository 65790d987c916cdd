//! What `energy2mqtt health` (a container's HEALTHCHECK) reads: the
//! running bridge keeps `health.json` in `[storage] dir`, written when its
//! broker connection comes or goes (never periodically: SD cards), and the
//! check says unhealthy when the bridge is not connected or the process
//! that wrote the file is gone.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::storage::Store;

/// The file's name in the storage directory (without `.json`).
pub const FILE: &str = "health";

/// What the bridge last said about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub pid: u32,
    /// Connected to the broker and holding its base topic.
    pub connected: bool,
    /// When `connected` last changed (RFC 3339).
    pub since: String,
    pub broker: String,
}

/// Records the bridge's state; blocking (call it off the async threads).
pub fn write(store: &Store, health: &Health) -> Result<(), crate::storage::StoreError> {
    store.save(FILE, health)
}

/// Why the check fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unhealthy {
    #[error("no bridge has run with storage dir {0} (no health.json)")]
    NeverRan(String),
    #[error("the bridge (pid {0}) is not running")]
    NotRunning(u32),
    #[error("not connected to the MQTT broker {broker} since {since}")]
    Disconnected { broker: String, since: String },
    #[error("{0}")]
    Unreadable(String),
}

/// The verdict on a record, given whether its process is alive. Pure.
pub fn judge(
    record: Option<Health>,
    alive: impl Fn(u32) -> bool,
    dir: &str,
) -> Result<Health, Unhealthy> {
    let h = record.ok_or_else(|| Unhealthy::NeverRan(dir.to_owned()))?;
    if !alive(h.pid) {
        return Err(Unhealthy::NotRunning(h.pid));
    }
    if !h.connected {
        return Err(Unhealthy::Disconnected {
            broker: h.broker,
            since: h.since,
        });
    }
    Ok(h)
}

/// Whether `pid` is a running process (Linux: `/proc/<pid>`). A zombie
/// counts as gone.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// `energy2mqtt health`: the bridge using `dir` is running and connected.
pub fn check(dir: &Path) -> Result<Health, Unhealthy> {
    let store = Store::new(dir);
    let record = store
        .load::<Health>(FILE)
        .map_err(|e| Unhealthy::Unreadable(e.to_string()))?;
    judge(record, process_alive, &dir.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(connected: bool) -> Health {
        Health {
            pid: 42,
            connected,
            since: "2026-12-01T10:00:00Z".into(),
            broker: "mqtt://127.0.0.1:1883".into(),
        }
    }

    #[test]
    fn healthy_only_when_running_and_connected() {
        assert!(judge(Some(record(true)), |_| true, "/data").is_ok());
        assert_eq!(
            judge(Some(record(false)), |_| true, "/data").unwrap_err(),
            Unhealthy::Disconnected {
                broker: "mqtt://127.0.0.1:1883".into(),
                since: "2026-12-01T10:00:00Z".into()
            }
        );
        // A connected record of a process that died (kill -9) is stale.
        assert_eq!(
            judge(Some(record(true)), |_| false, "/data").unwrap_err(),
            Unhealthy::NotRunning(42)
        );
        assert_eq!(
            judge(None, |_| true, "/data").unwrap_err(),
            Unhealthy::NeverRan("/data".into())
        );
    }

    #[test]
    fn this_process_is_alive_and_a_free_pid_is_not() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX));
    }

    #[test]
    fn round_trip_through_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let mut h = record(true);
        h.pid = std::process::id();
        write(&store, &h).unwrap();
        assert_eq!(check(dir.path()).unwrap(), h);
    }
}
