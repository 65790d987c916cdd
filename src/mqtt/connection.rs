//! The MQTT connection: one task polls rumqttc's event loop and does
//! nothing else (publishing from it can deadlock the loop), one task
//! writes what the outbox holds while the broker is connected.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::outbox::{Message, Outbox};

/// Incoming publishes waiting for the bridge; beyond this they are dropped
/// (and counted) rather than stall the event loop. At start-up the
/// discovery clean-up receives every retained config under the prefix in
/// one burst (a few hundred with two 16-cell packs), so leave room.
const INCOMING_CAPACITY: usize = 4096;
/// Requests between our handle and rumqttc's loop.
const CLIENT_CAPACITY: usize = 512;

/// The connection as the rest of the bridge sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status {
    pub connected: bool,
    /// Counts ConnAcks: each new value is a new session to set up.
    pub sessions: u64,
    /// Counts SUBACKs: retained messages of a subscription follow its SUBACK.
    pub subacks: u64,
}

/// Payloads above this are not kept: nothing the bridge subscribes to is
/// legitimately bigger (commands are capped lower still, discovery configs
/// are a few KiB), and a hostile one must not sit in the queue.
pub const MAX_KEPT_PAYLOAD: usize = 256 * 1024;

/// A received publish, reduced to what the bridge uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub topic: String,
    /// Empty when the payload was too large to keep (`oversized`).
    pub payload: bytes::Bytes,
    pub retain: bool,
    /// The size of a payload that was dropped for being over
    /// [`MAX_KEPT_PAYLOAD`].
    pub oversized: Option<usize>,
}

impl Incoming {
    pub fn new(topic: impl Into<String>, payload: impl Into<bytes::Bytes>, retain: bool) -> Self {
        let payload = payload.into();
        if payload.len() > MAX_KEPT_PAYLOAD {
            Self {
                topic: topic.into(),
                oversized: Some(payload.len()),
                payload: bytes::Bytes::new(),
                retain,
            }
        } else {
            Self {
                topic: topic.into(),
                payload,
                retain,
                oversized: None,
            }
        }
    }
}

/// A connection that ends this soon after its ConnAck counts as short.
const SHORT_SESSION: Duration = Duration::from_secs(5);
/// Short sessions in a row before we say why.
const SHORT_SESSIONS_TO_WARN: u32 = 3;
/// The backoff starts over only after a connection held this long, so a
/// broker that drops us right after connecting is not hammered 4 times a
/// second.
const STABLE_SESSION: Duration = Duration::from_secs(10);

/// Watches how long sessions last: two clients with one client id kick
/// each other off right after every connect, and the only sign is the
/// broker closing the connection. Pure; the times are passed in.
#[derive(Debug, Default)]
pub struct SessionWatch {
    connected_at: Option<tokio::time::Instant>,
    short_in_a_row: u32,
    warned: bool,
}

/// What the end of a session means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionEnd {
    /// The session held long enough to start the backoff over.
    pub was_stable: bool,
    /// Say once, in words, that another client probably uses our id.
    pub warn_duplicate_client_id: bool,
}

impl SessionWatch {
    pub fn connected(&mut self, now: tokio::time::Instant) {
        self.connected_at = Some(now);
    }

    /// A connection attempt or session ended with an error.
    pub fn ended(&mut self, now: tokio::time::Instant) -> SessionEnd {
        let Some(at) = self.connected_at.take() else {
            // A failed connect is not a session.
            return SessionEnd {
                was_stable: false,
                warn_duplicate_client_id: false,
            };
        };
        let held = now.saturating_duration_since(at);
        if held < SHORT_SESSION {
            self.short_in_a_row += 1;
        } else {
            self.short_in_a_row = 0;
        }
        let warn = self.short_in_a_row >= SHORT_SESSIONS_TO_WARN && !self.warned;
        if warn {
            self.warned = true;
        }
        if held >= STABLE_SESSION {
            // A later episode deserves its own warning.
            self.warned = false;
        }
        SessionEnd {
            was_stable: held >= STABLE_SESSION,
            warn_duplicate_client_id: warn,
        }
    }
}

pub struct Connection {
    pub client: AsyncClient,
    pub outbox: Arc<Outbox>,
    pub status: watch::Receiver<Status>,
    pub incoming: mpsc::Receiver<Incoming>,
    /// Incoming publishes dropped because the bridge did not keep up.
    pub incoming_dropped: Arc<AtomicU64>,
    poll_task: JoinHandle<()>,
    write_task: JoinHandle<()>,
    stop: CancellationToken,
}

/// Exponential backoff: 250 ms doubling to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(250);

    pub fn new(max: Duration) -> Self {
        Self {
            next: Self::FIRST,
            max,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.next.min(self.max);
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Skip to the cap (wrong credentials: no point in hurrying).
    pub fn give_up_hurrying(&mut self) {
        self.next = self.max;
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Connection {
    pub fn start(options: MqttOptions, reconnect_max: Duration) -> Self {
        Self::start_with(options, reconnect_max, Outbox::default())
    }

    /// [`start`](Self::start) writing from `outbox` (which may be held:
    /// nothing is written until the caller releases it).
    pub fn start_with(options: MqttOptions, reconnect_max: Duration, outbox: Outbox) -> Self {
        let (client, mut eventloop) = AsyncClient::new(options, CLIENT_CAPACITY);
        // Small packets, latency matters (a switch command, a state after
        // it): without this, Nagle holds the second of two writes ~40 ms.
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);
        let outbox = Arc::new(outbox);
        let (status_tx, status) = watch::channel(Status::default());
        let (incoming_tx, incoming) = mpsc::channel(INCOMING_CAPACITY);
        let stop = CancellationToken::new();
        let incoming_dropped = Arc::new(AtomicU64::new(0));
        let poll_task = tokio::spawn(poll_loop(
            eventloop,
            status_tx,
            incoming_tx,
            incoming_dropped.clone(),
            Backoff::new(reconnect_max),
            stop.clone(),
        ));
        let write_task = tokio::spawn(write_loop(
            client.clone(),
            outbox.clone(),
            status.clone(),
            stop.clone(),
        ));
        Self {
            client,
            outbox,
            status,
            incoming,
            incoming_dropped,
            poll_task,
            write_task,
            stop,
        }
    }

    /// Publish `last` (the offline state) and disconnect cleanly, so the
    /// broker does not need the Last Will; give up after `timeout`.
    pub async fn shutdown(self, last: Option<Message>, timeout: Duration) {
        self.write_task.abort();
        let connected = self.status.borrow().connected;
        if connected {
            if let Some(m) = last {
                let _ = tokio::time::timeout(
                    timeout,
                    self.client.publish(m.topic, m.qos, m.retain, m.payload),
                )
                .await;
            }
            let _ = tokio::time::timeout(timeout, self.client.disconnect()).await;
            // The poll task ends once the DISCONNECT has been written.
            let mut poll = self.poll_task;
            if tokio::time::timeout(timeout, &mut poll).await.is_err() {
                poll.abort();
            }
        } else {
            self.stop.cancel();
            self.poll_task.abort();
        }
    }
}

async fn poll_loop(
    mut eventloop: EventLoop,
    status: watch::Sender<Status>,
    incoming: mpsc::Sender<Incoming>,
    dropped_total: Arc<AtomicU64>,
    mut backoff: Backoff,
    stop: CancellationToken,
) {
    let target = format!(
        "{}:{}",
        eventloop.mqtt_options.broker_address().0,
        eventloop.mqtt_options.broker_address().1
    );
    let mut dropped: u64 = 0;
    let mut was_connected = false;
    let mut last_error = String::new();
    let mut sessions = SessionWatch::default();
    let client_id = eventloop.mqtt_options.client_id();
    let mut leaving = false;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = eventloop.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                sessions.connected(tokio::time::Instant::now());
                was_connected = true;
                last_error.clear();
                tracing::info!(broker = %target, "MQTT connected");
                status.send_modify(|s| {
                    s.connected = true;
                    s.sessions += 1;
                });
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let msg = Incoming::new(p.topic, p.payload, p.retain);
                if incoming.try_send(msg).is_err() {
                    dropped += 1;
                    dropped_total.fetch_add(1, Ordering::Relaxed);
                    if dropped.is_power_of_two() {
                        tracing::warn!(
                            dropped,
                            "incoming MQTT messages dropped: the bridge is busy"
                        );
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                status.send_modify(|s| s.subacks += 1);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                status.send_modify(|s| s.connected = false);
                leaving = true;
            }
            // After our DISCONNECT, read on until the broker closes the
            // connection: closing first with messages still unread makes
            // the kernel send a reset, which can reach the broker before
            // it has read the DISCONNECT, and the broker then publishes
            // our Last Will (a refusing second instance marked the first
            // one offline that way). `shutdown` bounds the wait.
            _ if leaving => {
                if event.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                status.send_modify(|s| s.connected = false);
                let text = e.to_string();
                let end = sessions.ended(tokio::time::Instant::now());
                if end.was_stable {
                    backoff.reset();
                }
                if end.warn_duplicate_client_id {
                    tracing::error!(
                        broker = %target,
                        client_id = %client_id,
                        "the broker closed the connection right after connecting {SHORT_SESSIONS_TO_WARN} times in a row: \
                         another client uses client_id {client_id}; give each bridge its own mqtt.client_id"
                    );
                }
                if was_connected {
                    tracing::warn!(broker = %target, error = %text, "MQTT connection lost; reconnecting");
                } else if text != last_error {
                    tracing::warn!(broker = %target, error = %text, "MQTT connection failed; retrying");
                } else {
                    tracing::debug!(broker = %target, error = %text, "MQTT connection failed again");
                }
                if let ConnectionError::ConnectionRefused(code) = &e {
                    tracing::error!(
                        broker = %target,
                        ?code,
                        "the broker refused the connection: check mqtt.username / mqtt.password"
                    );
                    backoff.give_up_hurrying();
                }
                was_connected = false;
                last_error = text;
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

async fn write_loop(
    client: AsyncClient,
    outbox: Arc<Outbox>,
    mut status: watch::Receiver<Status>,
    stop: CancellationToken,
) {
    loop {
        if !status.borrow().connected {
            tokio::select! {
                _ = stop.cancelled() => return,
                r = status.changed() => if r.is_err() { return },
            }
            continue;
        }
        let batch = outbox.take();
        if batch.is_empty() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = outbox.changed() => {}
                r = status.changed() => if r.is_err() { return },
            }
            continue;
        }
        for m in batch {
            // Awaiting here only waits for room in rumqttc's channel; the
            // producers never wait, they only replace what is in the outbox.
            if let Err(e) = client.publish(m.topic, m.qos, m.retain, m.payload).await {
                tracing::debug!(error = %e, "publish not handed to the MQTT loop");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_dropped_right_after_connect_are_reported_once() {
        let t0 = tokio::time::Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut w = SessionWatch::default();
        // Failed connects are not sessions.
        assert!(!w.ended(at(0)).warn_duplicate_client_id);
        let mut warnings = Vec::new();
        for i in 0..6u64 {
            w.connected(at(i * 1000));
            let end = w.ended(at(i * 1000 + 200));
            assert!(!end.was_stable);
            warnings.push(end.warn_duplicate_client_id);
        }
        assert_eq!(warnings, [false, false, true, false, false, false]);
        // A session that held resets the count, and a later episode is
        // reported again.
        w.connected(at(10_000));
        assert!(w.ended(at(30_000)).was_stable);
        let mut again = Vec::new();
        for i in 0..3u64 {
            w.connected(at(40_000 + i * 1000));
            again.push(w.ended(at(40_100 + i * 1000)).warn_duplicate_client_id);
        }
        assert_eq!(again, [false, false, true]);
        // Five seconds or more is not short, but not yet stable either.
        w.connected(at(60_000));
        let end = w.ended(at(66_000));
        assert!(!end.was_stable && !end.warn_duplicate_client_id);
    }

    #[test]
    fn oversized_payloads_are_not_kept() {
        let m = Incoming::new("e/boiler/set", vec![b'x'; MAX_KEPT_PAYLOAD + 1], true);
        assert_eq!(m.oversized, Some(MAX_KEPT_PAYLOAD + 1));
        assert!(m.payload.is_empty());
        let m = Incoming::new("e/boiler/set", &b"ON"[..], false);
        assert_eq!((m.oversized, &m.payload[..]), (None, &b"ON"[..]));
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(30));
        let seq: Vec<u64> = (0..10).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(
            seq,
            [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        b.reset();
        assert_eq!(b.next_delay(), Backoff::FIRST);
        b.give_up_hurrying();
        assert_eq!(b.next_delay(), Duration::from_secs(30));
    }
}
