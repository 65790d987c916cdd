//! The notification sidecar `energy2mqtt-push` (docs/NOTIFICATIONS.md):
//! alert and bridge events in, Web Push / ntfy / Telegram out. The bridge
//! itself uses none of this.

pub mod http;
pub mod memory;
pub mod notify;
pub mod ntfy;
pub mod send;
pub mod subscriptions;
pub mod telegram;
pub mod vapid;
pub mod webpush;
