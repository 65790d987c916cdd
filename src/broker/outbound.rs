//! What the broker keeps for one client session across its connections:
//! the queue to send, bounded in bytes, the QoS 1 messages sent but not
//! acknowledged, and the QoS 2 packet ids received but not released.
//!
//! The bound is what makes the broker both lossless and small (issue 15):
//! a publisher that outruns a connected subscriber waits for room in that
//! subscriber's queue instead of the broker buffering (and later freeing
//! or losing) the difference. A subscriber that leaves its queue full for
//! [`LAG_WAIT`] is marked lagging: from then on its messages are dropped
//! (counted) instead of holding up every publisher, until it has caught up.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::{Packet, Publish, QoS};

use super::router::ConnectionId;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Bytes a session may have queued (topic + payload + a little).
pub const QUEUE_BYTES: usize = 1024 * 1024;
/// How long a publisher waits for room in a connected subscriber's queue.
pub const LAG_WAIT: Duration = Duration::from_secs(1);
/// QoS 1 messages sent and not yet acknowledged, per session.
pub const MAX_INFLIGHT: usize = 100;
/// A writer sends what it has once this much is encoded.
const BATCH_BYTES: usize = 64 * 1024;
/// Replies a client may leave unread before it is disconnected.
pub const MAX_CONTROL: usize = 1024;

struct Queued {
    publish: Publish,
    /// Its share of the queue's room; `None` for a retained copy queued
    /// beyond the bound (see [`Outbound::queue_now`]).
    _room: Option<OwnedSemaphorePermit>,
}

#[derive(Default)]
struct Queue {
    /// Acknowledgements and other replies of the current connection, sent
    /// ahead of messages (a SUBACK before the retained messages it brings).
    control: VecDeque<Packet>,
    pending: VecDeque<Queued>,
    /// In the order they were sent, which is the order they are sent
    /// again in (packet ids wrap, so their order is not the ids' order).
    inflight: VecDeque<(u16, Queued)>,
    last_pkid: u16,
    /// QoS 2 packet ids delivered and not yet released by PUBREL: a
    /// resend with the same id, also on the session's next connection,
    /// is not delivered again (MQTT 3.1.1 §4.3.3).
    qos2_received: HashSet<u16>,
    /// The connection writing the session out now.
    owner: Option<ConnectionId>,
    lagging: bool,
    dropped: u64,
}

/// One session's outgoing side; shared by the router (which fills it) and
/// the session's current connection (which empties it).
pub struct Outbound {
    queue: Mutex<Queue>,
    room: Arc<Semaphore>,
    /// Wakes the writer: something was queued or acknowledged.
    pub wake: Notify,
}

/// What [`Outbound::deliver`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    Queued,
    /// Dropped: offline and QoS 0, or no room.
    Dropped,
    /// Dropped, and this is the message that made the session lagging.
    StartedLagging,
}

impl Default for Outbound {
    fn default() -> Self {
        Self {
            queue: Mutex::default(),
            room: Arc::new(Semaphore::new(QUEUE_BYTES)),
            wake: Notify::new(),
        }
    }
}

fn cost(p: &Publish) -> u32 {
    // A message bigger than the whole queue takes the whole queue.
    (p.topic.len() + p.payload.len() + 16).min(QUEUE_BYTES) as u32
}

impl Outbound {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves a consistent queue (every
        // change is a single push or pop): keep going.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a message, waiting up to [`LAG_WAIT`] for room while the
    /// session is connected and keeping up.
    pub async fn deliver(&self, publish: Publish) -> Delivered {
        let need = cost(&publish);
        let (online, lagging) = {
            let q = self.lock();
            (q.owner.is_some(), q.lagging)
        };
        if !online && publish.qos == QoS::AtMostOnce {
            return self.dropped(false);
        }
        let room = match self.room.clone().try_acquire_many_owned(need) {
            Ok(r) => r,
            Err(_) if !online || lagging => return self.dropped(false),
            Err(_) => {
                match tokio::time::timeout(LAG_WAIT, self.room.clone().acquire_many_owned(need))
                    .await
                {
                    Ok(Ok(r)) => r,
                    _ => return self.dropped(true),
                }
            }
        };
        self.lock().pending.push_back(Queued {
            publish,
            _room: Some(room),
        });
        self.wake.notify_waiters();
        Delivered::Queued
    }

    /// Queues a message without waiting, beyond the bound if there is no
    /// room: for the retained copies a SUBSCRIBE brings, which the router
    /// queues under its lock so that no newer live message can overtake
    /// them, and whose memory the retained store bounds already. Waiting
    /// there could also wait on the subscriber's own acknowledgements,
    /// which only its reader, the one waiting, would read.
    pub fn queue_now(&self, publish: Publish) {
        let room = self
            .room
            .clone()
            .try_acquire_many_owned(cost(&publish))
            .ok();
        let mut q = self.lock();
        if q.owner.is_none() && publish.qos == QoS::AtMostOnce {
            return;
        }
        q.pending.push_back(Queued {
            publish,
            _room: room,
        });
        drop(q);
        self.wake.notify_waiters();
    }

    /// A QoS 2 PUBLISH arrived: whether it is new (to be delivered).
    pub fn qos2_received(&self, pkid: u16) -> bool {
        self.lock().qos2_received.insert(pkid)
    }

    /// The client released a QoS 2 packet id (PUBREL).
    pub fn qos2_released(&self, pkid: u16) {
        self.lock().qos2_received.remove(&pkid);
    }

    fn dropped(&self, timed_out: bool) -> Delivered {
        let mut q = self.lock();
        q.dropped += 1;
        if timed_out && !q.lagging {
            q.lagging = true;
            return Delivered::StartedLagging;
        }
        Delivered::Dropped
    }

    /// Messages dropped for this session so far.
    #[cfg(test)]
    pub fn dropped_total(&self) -> u64 {
        self.lock().dropped
    }

    /// A connection takes the session over (`Some`) or leaves it
    /// (`None`). Leaving drops the queued QoS 0 messages: they are for
    /// that connection only (MQTT 3.1.1 §3.1.2.4).
    pub fn set_owner(&self, owner: Option<ConnectionId>) {
        let mut q = self.lock();
        q.owner = owner;
        q.lagging = false;
        q.control.clear();
        if owner.is_none() {
            q.pending.retain(|m| m.publish.qos != QoS::AtMostOnce);
        }
        drop(q);
        // A writer of a previous connection sees it is no longer the owner.
        self.wake.notify_waiters();
    }

    /// Queues a reply of connection `conn`; `false` if the client has left
    /// too many unread (it is then disconnected).
    pub fn reply(&self, conn: ConnectionId, packet: Packet) -> bool {
        let mut q = self.lock();
        if q.owner != Some(conn) {
            return true; // taken over: the reply has nowhere to go
        }
        if q.control.len() >= MAX_CONTROL {
            return false;
        }
        q.control.push_back(packet);
        drop(q);
        self.wake.notify_waiters();
        true
    }

    /// The client acknowledged a QoS 1 message.
    pub fn acked(&self, pkid: u16) {
        let mut q = self.lock();
        let Some(at) = q.inflight.iter().position(|(id, _)| *id == pkid) else {
            return;
        };
        q.inflight.remove(at);
        drop(q);
        self.wake.notify_waiters();
    }

    /// Whether connection `conn` still writes this session out.
    pub fn is_owner(&self, conn: ConnectionId) -> bool {
        self.lock().owner == Some(conn)
    }

    /// Encodes what was sent but not acknowledged again, with DUP set: a
    /// new connection of a persistent session starts with these.
    pub fn encode_unacked(&self, conn: ConnectionId, out: &mut BytesMut) {
        let mut q = self.lock();
        if q.owner != Some(conn) {
            return;
        }
        for (_, m) in q.inflight.iter_mut() {
            m.publish.dup = true;
            // Encoding a publish we built ourselves cannot fail.
            let _ = m.publish.write(out);
        }
    }

    /// Moves replies, then queued messages into `out` (QoS 1 ones into
    /// the in-flight set with a packet id) until the batch is full, the
    /// queue is empty or the in-flight window is, if `conn` still owns the
    /// session. Returns whether anything was encoded.
    pub fn encode(&self, conn: ConnectionId, out: &mut BytesMut) -> bool {
        let start = out.len();
        let mut q = self.lock();
        if q.owner != Some(conn) {
            return false;
        }
        while let Some(p) = q.control.pop_front() {
            // Replies we built ourselves always encode.
            let _ = p.write(out, usize::MAX);
        }
        while out.len() < BATCH_BYTES {
            let qos1_blocked = q.inflight.len() >= MAX_INFLIGHT;
            let Some(front) = q.pending.front() else {
                break;
            };
            if front.publish.qos != QoS::AtMostOnce && qos1_blocked {
                break;
            }
            let Some(mut m) = q.pending.pop_front() else {
                break;
            };
            if m.publish.qos == QoS::AtMostOnce {
                m.publish.pkid = 0;
                let _ = m.publish.write(out);
                continue;
            }
            let pkid = next_pkid(&mut q);
            m.publish.pkid = pkid;
            let _ = m.publish.write(out);
            q.inflight.push_back((pkid, m));
        }
        if q.pending.is_empty() {
            q.lagging = false;
        }
        out.len() > start
    }
}

fn next_pkid(q: &mut Queue) -> u16 {
    // At most MAX_INFLIGHT ids are taken, so a free one is near.
    loop {
        q.last_pkid = q.last_pkid.wrapping_add(1).max(1);
        let id = q.last_pkid;
        if !q.inflight.iter().any(|(taken, _)| *taken == id) {
            return q.last_pkid;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn msg(qos: QoS, len: usize) -> Publish {
        Publish::new("t", qos, vec![b'x'; len])
    }

    fn decode(mut buf: BytesMut) -> Vec<Publish> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            match Packet::read(&mut buf, usize::MAX) {
                Ok(Packet::Publish(p)) => out.push(p),
                other => panic!("{other:?}"),
            }
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_holds_the_publisher_then_marks_the_session_lagging() {
        let o = Outbound::default();
        o.set_owner(Some(1));
        let big = QUEUE_BYTES / 2;
        assert_eq!(
            o.deliver(msg(QoS::AtMostOnce, big)).await,
            Delivered::Queued
        );
        // The second no longer fits: the publisher waits LAG_WAIT (paused
        // time), then the session is lagging and the message dropped.
        let t0 = tokio::time::Instant::now();
        assert_eq!(
            o.deliver(msg(QoS::AtMostOnce, big)).await,
            Delivered::StartedLagging
        );
        assert_eq!(t0.elapsed(), LAG_WAIT);
        // While lagging, nobody waits.
        let t1 = tokio::time::Instant::now();
        assert_eq!(
            o.deliver(msg(QoS::AtMostOnce, big)).await,
            Delivered::Dropped
        );
        assert_eq!(t1.elapsed(), Duration::ZERO);
        assert_eq!(o.dropped_total(), 2);
        // Once the writer has emptied the queue, it is waited for again.
        let mut buf = BytesMut::new();
        assert!(o.encode(1, &mut buf));
        assert_eq!(decode(buf).len(), 1);
        assert_eq!(
            o.deliver(msg(QoS::AtMostOnce, big)).await,
            Delivered::Queued
        );
    }

    #[tokio::test]
    async fn room_comes_back_as_the_writer_sends_and_a_waiting_publisher_goes_on() {
        let o = Arc::new(Outbound::default());
        o.set_owner(Some(1));
        let n = 3 * QUEUE_BYTES / 1000;
        let writer = {
            let o = o.clone();
            tokio::spawn(async move {
                let mut got = 0;
                while got < n {
                    let woken = o.wake.notified();
                    tokio::pin!(woken);
                    woken.as_mut().enable();
                    let mut buf = BytesMut::new();
                    if o.encode(1, &mut buf) {
                        got += decode(buf).len();
                    } else {
                        woken.await;
                    }
                }
                got
            })
        };
        for _ in 0..n {
            assert_eq!(
                o.deliver(msg(QoS::AtMostOnce, 900)).await,
                Delivered::Queued
            );
        }
        assert_eq!(writer.await.unwrap(), n);
        assert_eq!(o.dropped_total(), 0);
    }

    #[tokio::test]
    async fn qos1_waits_for_acks_and_is_sent_again_with_dup() {
        let o = Outbound::default();
        o.set_owner(Some(1));
        for _ in 0..MAX_INFLIGHT + 5 {
            assert_eq!(
                o.deliver(msg(QoS::AtLeastOnce, 10)).await,
                Delivered::Queued
            );
        }
        let mut buf = BytesMut::new();
        o.encode(1, &mut buf);
        let sent = decode(buf);
        assert_eq!(sent.len(), MAX_INFLIGHT, "the window is full");
        let mut buf = BytesMut::new();
        assert!(!o.encode(1, &mut buf));
        o.acked(sent[0].pkid);
        assert!(o.encode(1, &mut buf));
        assert_eq!(decode(buf).len(), 1);
        // The connection drops: QoS 1 stays, QoS 0 goes, and a new
        // connection starts with the unacknowledged ones, DUP set.
        o.deliver(msg(QoS::AtMostOnce, 10)).await;
        o.set_owner(None);
        assert_eq!(
            o.deliver(msg(QoS::AtMostOnce, 10)).await,
            Delivered::Dropped
        );
        o.set_owner(Some(1));
        let mut buf = BytesMut::new();
        o.encode_unacked(1, &mut buf);
        let again = decode(buf);
        assert_eq!(again.len(), MAX_INFLIGHT);
        assert!(again.iter().all(|p| p.dup && p.qos == QoS::AtLeastOnce));
        let mut buf = BytesMut::new();
        assert!(!o.encode(1, &mut buf), "the 4 still queued wait for acks");
        for p in &again {
            o.acked(p.pkid);
        }
        assert!(o.encode(1, &mut buf));
        assert_eq!(
            decode(buf).len(),
            4,
            "the QoS 0 message left with its connection"
        );
    }

    #[tokio::test]
    async fn after_the_packet_ids_wrap_messages_are_sent_again_in_their_order() {
        let o = Outbound::default();
        o.set_owner(Some(1));
        o.lock().last_pkid = u16::MAX - 2;
        for i in 0..5u8 {
            o.deliver(Publish::new("t", QoS::AtLeastOnce, vec![i]))
                .await;
        }
        let mut buf = BytesMut::new();
        o.encode(1, &mut buf);
        let ids: Vec<u16> = decode(buf).iter().map(|p| p.pkid).collect();
        assert_eq!(ids, vec![u16::MAX - 1, u16::MAX, 1, 2, 3]);
        o.set_owner(None);
        o.set_owner(Some(2));
        let mut buf = BytesMut::new();
        o.encode_unacked(2, &mut buf);
        let order: Vec<u8> = decode(buf).iter().map(|p| p.payload[0]).collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn qos2_ids_are_remembered_by_the_session_across_connections() {
        let o = Outbound::default();
        o.set_owner(Some(1));
        assert!(o.qos2_received(9));
        o.set_owner(None);
        o.set_owner(Some(2));
        assert!(!o.qos2_received(9), "a resend on the next connection");
        o.qos2_released(9);
        assert!(o.qos2_received(9));
    }
}
