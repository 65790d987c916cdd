//! What waits to be published. Retained messages (discovery, availability,
//! states) are kept latest-per-topic, so a broker outage costs one message
//! per topic, never an ever-growing queue, and all of them are published
//! again after every reconnect. Transient messages (events, responses) sit
//! in a bounded queue that drops the oldest.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use rumqttc::QoS;
use tokio::sync::Notify;

/// Transient messages kept while the broker is away.
pub const TRANSIENT_CAPACITY: usize = 1024;

/// What a message is, which decides how it is kept and in which order
/// messages are republished after a reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// `bridge/state`: first, so HA marks entities available.
    BridgeState,
    Discovery,
    Availability,
    State,
    /// `bridge/info` and similar retained documents.
    Info,
    /// Events and responses: not retained, not republished.
    Transient,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
    pub qos: QoS,
    pub class: Class,
}

impl Message {
    pub fn retained(class: Class, topic: String, payload: impl Into<Bytes>) -> Self {
        Self {
            topic,
            payload: payload.into(),
            retain: true,
            qos: QoS::AtLeastOnce,
            class,
        }
    }

    pub fn transient(topic: String, payload: impl Into<Bytes>) -> Self {
        Self {
            topic,
            payload: payload.into(),
            retain: false,
            qos: QoS::AtMostOnce,
            class: Class::Transient,
        }
    }
}

/// The pure queue; [`Outbox`] adds a lock and a wake-up.
#[derive(Debug, Default)]
pub struct Queue {
    /// Latest retained message per topic, republished on reconnect.
    remembered: HashMap<String, Message>,
    /// Topics waiting to be sent, in first-queued order, latest payload wins.
    pending_order: VecDeque<String>,
    pending: HashMap<String, Message>,
    transient: VecDeque<Message>,
    dropped: u64,
    /// Nothing is handed out while held (the bridge has not yet made sure
    /// that no other instance holds its base topic).
    held: bool,
}

impl Queue {
    /// Queue a message. Retained ones replace what is waiting for their topic;
    /// an empty retained payload (a deletion) is sent once and forgotten.
    pub fn push(&mut self, msg: Message) {
        if msg.class == Class::Transient {
            if self.transient.len() >= TRANSIENT_CAPACITY {
                self.transient.pop_front();
                self.dropped += 1;
            }
            self.transient.push_back(msg);
            return;
        }
        if msg.payload.is_empty() {
            self.remembered.remove(&msg.topic);
        } else {
            self.remembered.insert(msg.topic.clone(), msg.clone());
        }
        if !self.pending.contains_key(&msg.topic) {
            self.pending_order.push_back(msg.topic.clone());
        }
        self.pending.insert(msg.topic.clone(), msg);
    }

    /// Like [`push`](Self::push), but a retained message equal to what was
    /// last published on its topic is not sent again (availability after
    /// every poll would be write churn on the broker's SD card; the
    /// reconnect and Home Assistant's birth republish it anyway).
    pub fn push_if_changed(&mut self, msg: Message) {
        let same = msg.retain
            && self
                .remembered
                .get(&msg.topic)
                .is_some_and(|m| m.payload == msg.payload && m.class == msg.class);
        if !same {
            self.push(msg);
        }
    }

    /// Everything that waits: retained first, in class order (`bridge/state`
    /// before discovery, discovery before states) and queue order within a
    /// class, then transients. Nothing while held.
    pub fn take(&mut self) -> Vec<Message> {
        if self.held {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(self.pending.len() + self.transient.len());
        while let Some(topic) = self.pending_order.pop_front() {
            if let Some(m) = self.pending.remove(&topic) {
                out.push(m);
            }
        }
        out.sort_by_key(|m| m.class);
        out.extend(self.transient.drain(..));
        out
    }

    pub fn set_held(&mut self, held: bool) {
        self.held = held;
    }

    /// Queue again every remembered message whose class `which` accepts, in
    /// class order (bridge state, discovery, availability, states, info).
    pub fn requeue(&mut self, which: impl Fn(Class) -> bool) {
        let mut again: Vec<Message> = self
            .remembered
            .values()
            .filter(|m| which(m.class))
            .cloned()
            .collect();
        again.sort_by(|a, b| (a.class, &a.topic).cmp(&(b.class, &b.topic)));
        for m in again {
            self.push(m);
        }
    }

    pub fn remembered(&self, topic: &str) -> Option<&Message> {
        self.remembered.get(topic)
    }

    /// Transient messages dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn len(&self) -> usize {
        self.pending.len() + self.transient.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The queue shared by producers and the writer task.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: std::sync::Mutex<Queue>,
    notify: Notify,
}

impl Outbox {
    pub fn push(&self, msg: Message) {
        self.with(|q| q.push(msg));
        self.notify.notify_one();
    }

    pub fn requeue(&self, which: impl Fn(Class) -> bool) {
        self.with(|q| q.requeue(which));
        self.notify.notify_one();
    }

    pub fn take(&self) -> Vec<Message> {
        self.with(Queue::take)
    }

    pub fn push_if_changed(&self, msg: Message) {
        self.with(|q| q.push_if_changed(msg));
        self.notify.notify_one();
    }

    /// Keeps everything queued until [`release`](Self::release).
    pub fn hold(&self) {
        self.with(|q| q.set_held(true));
    }

    pub fn release(&self) {
        self.with(|q| q.set_held(false));
        self.notify.notify_one();
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut Queue) -> T) -> T {
        // A panic while holding the lock leaves a consistent queue (every
        // method finishes its own writes), so a poisoned lock is still usable.
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut q)
    }

    /// Resolves when something was pushed since the last wake-up.
    pub async fn changed(&self) {
        self.notify.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(topic: &str, v: &str) -> Message {
        Message::retained(Class::State, topic.into(), v.to_owned())
    }

    #[test]
    fn keeps_latest_per_topic_while_away() {
        let mut q = Queue::default();
        for i in 0..10_000 {
            q.push(state("a", &i.to_string()));
            q.push(state("b", &i.to_string()));
        }
        let out = q.take();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].topic, "a");
        assert_eq!(out[0].payload, Bytes::from("9999"));
        assert!(q.is_empty());
    }

    #[test]
    fn bridge_state_goes_first_and_discovery_before_states() {
        let mut q = Queue::default();
        q.push(state("s", "1"));
        q.push(Message::retained(Class::Discovery, "d1".into(), "{}"));
        q.push(Message::transient("ev".into(), "x"));
        q.push(Message::retained(Class::Discovery, "d2".into(), "{}"));
        q.push(Message::retained(Class::BridgeState, "b".into(), "on"));
        let topics: Vec<String> = q.take().into_iter().map(|m| m.topic).collect();
        assert_eq!(topics, ["b", "d1", "d2", "s", "ev"]);
    }

    #[test]
    fn an_unchanged_retained_message_is_not_sent_again() {
        let mut q = Queue::default();
        let avail = |v: &str| Message::retained(Class::Availability, "a".into(), v.to_owned());
        q.push_if_changed(avail("online"));
        assert_eq!(q.take().len(), 1);
        q.push_if_changed(avail("online"));
        assert!(q.take().is_empty());
        q.push_if_changed(avail("offline"));
        assert_eq!(q.take()[0].payload, Bytes::from("offline"));
        // A reconnect still republishes it.
        q.requeue(|_| true);
        assert_eq!(q.take().len(), 1);
    }

    #[test]
    fn a_held_queue_hands_out_nothing_and_keeps_everything() {
        let mut q = Queue::default();
        q.set_held(true);
        q.push(state("s", "1"));
        q.push(Message::transient("ev".into(), "x"));
        assert!(q.take().is_empty());
        q.set_held(false);
        assert_eq!(q.take().len(), 2);
    }

    #[test]
    fn transients_are_bounded() {
        let mut q = Queue::default();
        for i in 0..(TRANSIENT_CAPACITY + 10) {
            q.push(Message::transient("ev".into(), i.to_string()));
        }
        let out = q.take();
        assert_eq!(out.len(), TRANSIENT_CAPACITY);
        assert_eq!(out[0].payload, Bytes::from("10"));
        assert_eq!(q.dropped(), 10);
    }

    #[test]
    fn requeue_orders_by_class_and_forgets_deletions() {
        let mut q = Queue::default();
        q.push(state("s", "1"));
        q.push(Message::retained(Class::Discovery, "d".into(), "{}"));
        q.push(Message::retained(Class::BridgeState, "b".into(), "on"));
        q.push(Message::retained(Class::Discovery, "gone".into(), "{}"));
        q.push(Message::retained(Class::Discovery, "gone".into(), ""));
        q.push(Message::transient("ev".into(), "x"));
        q.take();
        q.requeue(|_| true);
        let topics: Vec<String> = q.take().into_iter().map(|m| m.topic).collect();
        assert_eq!(topics, ["b", "d", "s"]);
        q.requeue(|c| c == Class::State);
        let topics: Vec<String> = q.take().into_iter().map(|m| m.topic).collect();
        assert_eq!(topics, ["s"]);
    }
}
