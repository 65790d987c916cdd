//! The channel rules' memory across restarts (`push-channels.json` in
//! `[storage] dir`): which tags each channel shows and when it last sent.
//! Without it, a sidecar restarted between a raise and its clear (an
//! upgrade, a reboot) would drop the clear as "nothing to clear", and the
//! phone would keep showing an alert that is long over; and the same
//! raise, re-sent by nobody, could not be told from a new one.
//!
//! Channels are keyed by their name (`webpush`, `ntfy <server>/<topic>`,
//! `telegram [<chat ids>]`), not their position, so reordering the
//! configuration keeps each channel's memory; a channel removed from the
//! configuration is forgotten at the next save.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::notify::ChannelState;
use crate::config::{NtfyConfig, TelegramConfig};
use crate::storage::{Store, StoreError};

pub const STORE_NAME: &str = "push-channels";

/// The Web Push channel's name (all browsers together).
pub const WEBPUSH: &str = "webpush";

/// An ntfy channel's name: never its token.
pub fn ntfy_name(c: &NtfyConfig) -> String {
    format!("ntfy {}/{}", c.url.trim_end_matches('/'), c.topic)
}

/// A Telegram channel's name: its chats, never the bot token.
pub fn telegram_name(c: &TelegramConfig) -> String {
    format!("telegram {:?}", c.chat_ids)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Memory(pub BTreeMap<String, ChannelState>);

impl Memory {
    /// What was saved; empty when nothing was, or when the file was
    /// unreadable (then moved aside by the store and the error returned
    /// for one log line: starting with an empty memory loses only the
    /// clears of alerts raised before the restart).
    pub fn load(store: &Store) -> (Self, Option<StoreError>) {
        match store.load::<Memory>(STORE_NAME) {
            Ok(m) => (m.unwrap_or_default(), None),
            Err(e) => (Self::default(), Some(e)),
        }
    }

    /// The channel's state, taken out (the caller puts it back with
    /// [`Memory::put`]); a channel new to the memory starts empty.
    pub fn take(&mut self, name: &str) -> ChannelState {
        self.0.remove(name).unwrap_or_default()
    }

    pub fn put(&mut self, name: String, state: ChannelState) {
        self.0.insert(name, state);
    }
}

/// Saves the latest memory, off the async task (the store fsyncs), one
/// write at a time, so an older snapshot never overwrites a newer one.
pub async fn keep_saved(store: Store, mut latest: tokio::sync::watch::Receiver<Memory>) {
    while latest.changed().await.is_ok() {
        let m = latest.borrow_and_update().clone();
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.save(STORE_NAME, &m)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot save the channels' memory"),
            Err(e) => tracing::warn!(error = %e, "cannot save the channels' memory"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_restart_by_channel_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let (empty, err) = Memory::load(&store);
        assert!(empty.0.is_empty() && err.is_none());

        let mut m = Memory::default();
        let mut s = ChannelState::default();
        s.active.insert("soc_critical-battery1".into());
        s.sent.push_back(1_764_612_000);
        m.put(WEBPUSH.into(), s.clone());
        m.put("ntfy https://ntfy.sh/e2m".into(), ChannelState::default());
        store.save(STORE_NAME, &m).unwrap();

        let (mut again, err) = Memory::load(&store);
        assert!(err.is_none());
        assert_eq!(again, m);
        assert_eq!(again.take(WEBPUSH), s);
        assert_eq!(again.take("telegram [1]"), ChannelState::default());
    }

    #[test]
    fn a_corrupt_file_starts_empty_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("push-channels.json"), b"{not json").unwrap();
        let (m, err) = Memory::load(&Store::new(dir.path()));
        assert!(m.0.is_empty());
        assert!(matches!(err, Some(StoreError::Corrupt { .. })), "{err:?}");
        assert!(dir.path().join("push-channels.json.bad").exists());
    }

    #[test]
    fn names_hold_no_secret() {
        let n = NtfyConfig {
            url: "https://ntfy.sh/".into(),
            topic: "e2m".into(),
            token: Some(crate::config::Secret::new("tk_secret")),
            min_level: crate::core::alerts::Level::Warning,
        };
        assert_eq!(ntfy_name(&n), "ntfy https://ntfy.sh/e2m");
        let t = TelegramConfig {
            bot_token: crate::config::Secret::new("123:SECRET"),
            chat_ids: vec![42, -7],
            min_level: crate::core::alerts::Level::Warning,
            api_url: crate::push::telegram::API.into(),
        };
        assert_eq!(telegram_name(&t), "telegram [42, -7]");
    }
}
