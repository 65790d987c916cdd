//! The notification sidecar `energy2mqtt-push` (docs/NOTIFICATIONS.md):
//! alert and bridge events in, Web Push / ntfy / Telegram out. The bridge
//! itself uses none of this.

pub mod delivery;
pub mod http;
pub mod memory;
pub mod notify;
pub mod ntfy;
pub mod rules;
pub mod send;
pub mod subscriptions;
pub mod telegram;
pub mod vapid;
pub mod webpush;

use std::sync::{Mutex, MutexGuard};

/// A poisoned lock means a panic mid-update; what it guards is always
/// whole (every change is one assignment), so go on with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
