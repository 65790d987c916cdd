//! The commands waiting for one device's task. A switch is a wish about
//! the relay's final state, so the latest command wins: commands that
//! arrive while the plug is busy are merged into one, never refused (a
//! burst of ON/OFF must leave the plug as the last command said), and
//! what was merged away is counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::model::{DeviceCommand, SwitchState};

#[derive(Debug, Default)]
struct Waiting {
    switch: Option<SwitchState>,
    refresh: bool,
    sender_gone: bool,
    receiver_gone: bool,
}

#[derive(Debug, Default)]
struct Shared {
    waiting: Mutex<Waiting>,
    notify: Notify,
    superseded: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        // A panic while holding this lock cannot leave it inconsistent:
        // every update is a single assignment.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The bridge's end.
#[derive(Debug)]
pub struct CommandSender {
    shared: Arc<Shared>,
}

/// The device task's end.
#[derive(Debug)]
pub struct CommandInbox {
    shared: Arc<Shared>,
}

/// The device's task has ended: nobody will carry the command out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the device's task is not running")]
pub struct TaskGone;

pub fn channel() -> (CommandSender, CommandInbox) {
    let shared = Arc::new(Shared::default());
    (
        CommandSender {
            shared: shared.clone(),
        },
        CommandInbox { shared },
    )
}

/// `then` after `first`, as one command with the same end state.
fn merge(first: SwitchState, then: SwitchState) -> Option<SwitchState> {
    use SwitchState::*;
    match (first, then) {
        // Two toggles leave the relay as it is.
        (Toggle, Toggle) => None,
        (On, Toggle) => Some(Off),
        (Off, Toggle) => Some(On),
        (_, last) => Some(last),
    }
}

impl CommandSender {
    /// Hands `command` to the task; never waits and never refuses while the
    /// task runs.
    pub fn send(&self, command: DeviceCommand) -> Result<(), TaskGone> {
        let mut w = self.shared.lock();
        if w.receiver_gone {
            return Err(TaskGone);
        }
        match command {
            DeviceCommand::Refresh => w.refresh = true,
            DeviceCommand::Switch(state) => {
                w.switch = match w.switch {
                    Some(earlier) => {
                        self.shared.superseded.fetch_add(1, Ordering::Relaxed);
                        merge(earlier, state)
                    }
                    None => Some(state),
                };
            }
        }
        drop(w);
        self.shared.notify.notify_one();
        Ok(())
    }

    /// Whether the task still takes commands.
    pub fn is_open(&self) -> bool {
        !self.shared.lock().receiver_gone
    }

    /// Commands merged into a later one since the start.
    pub fn superseded(&self) -> u64 {
        self.shared.superseded.load(Ordering::Relaxed)
    }
}

impl Drop for CommandSender {
    fn drop(&mut self) {
        self.shared.lock().sender_gone = true;
        self.shared.notify.notify_one();
    }
}

impl CommandInbox {
    /// The next command (a switch before a refresh: the switch's read-back
    /// refreshes too); `None` once the bridge has dropped its end.
    pub async fn recv(&mut self) -> Option<DeviceCommand> {
        loop {
            {
                let mut w = self.shared.lock();
                if let Some(state) = w.switch.take() {
                    return Some(DeviceCommand::Switch(state));
                }
                if std::mem::take(&mut w.refresh) {
                    return Some(DeviceCommand::Refresh);
                }
                if w.sender_gone {
                    return None;
                }
            }
            // `notify_one` keeps a permit when nobody waits, so a command
            // sent between the check above and this await is not missed.
            self.shared.notify.notified().await;
        }
    }
}

impl Drop for CommandInbox {
    fn drop(&mut self) {
        self.shared.lock().receiver_gone = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeviceCommand::{Refresh, Switch};
    use SwitchState::{Off, On, Toggle};

    #[tokio::test]
    async fn the_latest_switch_wins_and_what_it_replaced_is_counted() {
        let (tx, mut rx) = channel();
        for i in 0..50 {
            tx.send(Switch(if i % 2 == 0 { On } else { Off })).unwrap();
        }
        assert_eq!(rx.recv().await, Some(Switch(Off)));
        assert_eq!(tx.superseded(), 49);
        // Nothing else is left.
        tx.send(Refresh).unwrap();
        assert_eq!(rx.recv().await, Some(Refresh));
    }

    #[tokio::test]
    async fn toggles_merge_into_the_same_end_state() {
        let (tx, mut rx) = channel();
        tx.send(Switch(On)).unwrap();
        tx.send(Switch(Toggle)).unwrap();
        assert_eq!(rx.recv().await, Some(Switch(Off)));
        tx.send(Switch(Toggle)).unwrap();
        tx.send(Switch(Toggle)).unwrap();
        tx.send(Refresh).unwrap();
        // Two toggles cancel out; the refresh remains.
        assert_eq!(rx.recv().await, Some(Refresh));
        tx.send(Switch(Toggle)).unwrap();
        assert_eq!(rx.recv().await, Some(Switch(Toggle)));
    }

    #[tokio::test]
    async fn a_switch_comes_before_a_refresh_and_refreshes_merge() {
        let (tx, mut rx) = channel();
        tx.send(Refresh).unwrap();
        tx.send(Refresh).unwrap();
        tx.send(Switch(On)).unwrap();
        assert_eq!(rx.recv().await, Some(Switch(On)));
        assert_eq!(rx.recv().await, Some(Refresh));
        assert_eq!(tx.superseded(), 0);
    }

    #[tokio::test]
    async fn a_waiting_task_is_woken_and_ends_with_the_sender() {
        let (tx, mut rx) = channel();
        let task = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(c) = rx.recv().await {
                got.push(c);
            }
            got
        });
        tokio::task::yield_now().await;
        tx.send(Switch(On)).unwrap();
        tokio::task::yield_now().await;
        drop(tx);
        let got = task.await.unwrap();
        assert_eq!(got, vec![Switch(On)]);
    }

    #[test]
    fn sending_to_an_ended_task_fails() {
        let (tx, rx) = channel();
        drop(rx);
        assert_eq!(tx.send(Refresh), Err(TaskGone));
    }
}
