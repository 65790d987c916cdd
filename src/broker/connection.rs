//! One client connection (MQTT 3.1.1): the CONNECT handshake, then a
//! reader (this task) and a writer task that empties the session's
//! [`Outbound`]. The reader hands each PUBLISH to its subscribers itself,
//! so a publisher that outruns them is slowed down by TCP, not buffered.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::{
    ConnAck, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, Publish, QoS, UnsubAck,
};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::sync::CancellationToken;

use super::outbound::{Delivered, Outbound};
use super::router::{ConnectionId, Router};
use super::topic;
use crate::config::Secret;

/// The whole broker's settings, as the connections need them.
pub struct Settings {
    pub auth: Option<(String, Secret)>,
    /// The largest packet taken (anything bigger: disconnected).
    pub max_packet: usize,
    /// How long a new connection has to send its CONNECT.
    pub connect_timeout: Duration,
}

/// Why a connection ended without a DISCONNECT (its Last Will is sent).
#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error("connection closed")]
    Closed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("bad packet: {0}")]
    Protocol(String),
    #[error("keep-alive expired")]
    KeepAlive,
    #[error("taken over by a new connection with the same client id")]
    TakenOver,
    #[error("the client does not read its acknowledgements")]
    NotReading,
    #[error("not MQTT 3.1.1")]
    Version,
}

impl From<rumqttc::mqttbytes::Error> for Ended {
    fn from(e: rumqttc::mqttbytes::Error) -> Self {
        use rumqttc::mqttbytes::Error as E;
        match e {
            E::InvalidProtocol | E::InvalidProtocolLevel(_) => Ended::Version,
            e => Ended::Protocol(e.to_string()),
        }
    }
}

struct Reader {
    half: OwnedReadHalf,
    buf: BytesMut,
    max_packet: usize,
}

impl Reader {
    async fn next(&mut self) -> Result<Packet, Ended> {
        loop {
            match Packet::read(&mut self.buf, self.max_packet) {
                Ok(p) => {
                    if self.buf.is_empty() && self.buf.capacity() > 64 * 1024 {
                        // After a big packet, give its buffer back.
                        self.buf = BytesMut::with_capacity(4096);
                    }
                    return Ok(p);
                }
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(n)) => {
                    self.buf.reserve(n.max(4096));
                    if self.half.read_buf(&mut self.buf).await? == 0 {
                        return Err(Ended::Closed);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Sends a refusing CONNACK, if the peer takes it within `within`.
async fn refuse(write: &mut OwnedWriteHalf, code: ConnectReturnCode, within: Duration) {
    let mut buf = BytesMut::new();
    let _ = Packet::ConnAck(ConnAck::new(code, false)).write(&mut buf, usize::MAX);
    let _ = tokio::time::timeout(within, write.write_all(&buf)).await;
}

/// How long a write may make no progress before the client is taken for
/// gone: a peer that stops reading (or vanished with data unsent, which
/// TCP retransmits for about 15 minutes) would otherwise hold its
/// connection slot and its Last Will.
const WRITE_STALL: Duration = Duration::from_secs(30);

/// TCP keep-alive on every accepted socket: finds a vanished client that
/// asked for no MQTT keep-alive (keep_alive = 0) within about 2 minutes.
fn tcp_keepalive(stream: &TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(5);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&ka);
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Serves one accepted connection to its end.
pub async fn serve(stream: TcpStream, router: Arc<Router>, settings: Arc<Settings>) {
    let _ = stream.set_nodelay(true);
    tcp_keepalive(&stream);
    let (read, mut write) = stream.into_split();
    let mut reader = Reader {
        half: read,
        buf: BytesMut::with_capacity(4096),
        max_packet: settings.max_packet,
    };
    let within = settings.connect_timeout;
    let connect = match tokio::time::timeout(within, reader.next()).await {
        Ok(Ok(Packet::Connect(c))) => c,
        // MQTT 3.1 ("MQIsdp") and the like: say so (§3.2.2.3, code 1).
        Ok(Err(Ended::Version)) => {
            return refuse(
                &mut write,
                ConnectReturnCode::RefusedProtocolVersion,
                within,
            )
            .await;
        }
        Ok(Ok(_)) | Ok(Err(_)) | Err(_) => return,
    };
    if connect.protocol != rumqttc::mqttbytes::Protocol::V4 {
        return refuse(
            &mut write,
            ConnectReturnCode::RefusedProtocolVersion,
            within,
        )
        .await;
    }
    if let Some((user, password)) = &settings.auth {
        let ok = connect.login.as_ref().is_some_and(|l| {
            let u = l.username.as_bytes().ct_eq(user.as_bytes());
            let p = l.password.as_bytes().ct_eq(password.expose().as_bytes());
            bool::from(u & p)
        });
        if !ok {
            tracing::info!(client = %connect.client_id, "refused: bad username or password");
            return refuse(&mut write, ConnectReturnCode::BadUserNamePassword, within).await;
        }
    }
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let client: Arc<str> = if connect.client_id.is_empty() {
        if !connect.clean_session {
            return refuse(&mut write, ConnectReturnCode::BadClientId, within).await;
        }
        format!("energy2mqtt-broker-auto-{id}").into()
    } else {
        connect.client_id.as_str().into()
    };
    let span = tracing::debug_span!("broker", client = %client);
    let will = connect
        .last_will
        .filter(|w| topic::valid_name(&w.topic))
        .map(|w| {
            let mut p = Publish::from_bytes(w.topic, w.qos, Bytes::copy_from_slice(&w.message));
            p.retain = w.retain;
            p
        });
    let kick = CancellationToken::new();
    let connected = router.connect(&client, connect.clean_session, id, kick.clone(), will);
    if let Some(will) = connected.taken_over_will {
        // Before our CONNACK: nothing this client publishes can precede it.
        forward(&router, will, &client).await;
    }
    let outbound = connected.outbound;
    let present = connected.session_present;
    let mut buf = BytesMut::new();
    let _ = Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, present))
        .write(&mut buf, usize::MAX);
    if !matches!(
        tokio::time::timeout(within, write.write_all(&buf)).await,
        Ok(Ok(()))
    ) {
        if let Some(will) = router.disconnected(&client, id, false) {
            forward(&router, will, &client).await;
        }
        return;
    }
    let writer_stop = CancellationToken::new();
    let writer = tokio::spawn(write_loop(write, outbound.clone(), id, writer_stop.clone()));
    // 1.5 × the keep-alive the client asked for (MQTT 3.1.1 §3.1.2.10).
    let idle = (connect.keep_alive > 0)
        .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
    let session = Session {
        router: &router,
        client: &client,
        outbound: &outbound,
        id,
        idle,
    };
    tracing::debug!(parent: &span, clean = connect.clean_session, present, "connected");
    let ended = {
        tokio::select! {
            r = session.run(&mut reader) => r,
            _ = kick.cancelled() => Err(Ended::TakenOver),
            _ = writer_stop.cancelled() => Err(Ended::Closed),
        }
    };
    // The writer stops at once, also in the middle of a write that a
    // vanished peer never takes.
    writer_stop.cancel();
    let _ = writer.await;
    match &ended {
        Ok(()) => tracing::debug!(parent: &span, "disconnected"),
        Err(e) => tracing::debug!(parent: &span, reason = %e, "connection lost"),
    }
    if let Some(will) = router.disconnected(&client, id, ended.is_ok()) {
        forward(&router, will, &client).await;
    }
}

struct Session<'a> {
    router: &'a Router,
    client: &'a Arc<str>,
    outbound: &'a Outbound,
    id: ConnectionId,
    /// No packet for this long: the client is gone.
    idle: Option<Duration>,
}

/// Packets read while a PUBLISH waited for room in a subscriber's queue,
/// handled after it, in order.
#[derive(Default)]
struct Held {
    packets: VecDeque<Packet>,
    bytes: usize,
}

/// Held packets' bytes beyond which reading pauses (TCP then slows the
/// client down). A client's own window of QoS 1 publishes we have not
/// acknowledged yet (rumqttc: 100, paho: 20) is what it sends while we
/// wait, so this holds such a window of 10 KiB messages twice over; a
/// client with more in flight that subscribes to itself can still wait
/// out [`super::outbound::LAG_WAIT`] and lose messages.
const HELD_BYTES: usize = 2 * super::outbound::QUEUE_BYTES;

impl Session<'_> {
    async fn read(&self, reader: &mut Reader) -> Result<Packet, Ended> {
        match self.idle {
            Some(d) => tokio::time::timeout(d, reader.next())
                .await
                .map_err(|_| Ended::KeepAlive)?,
            None => reader.next().await,
        }
    }

    /// Until the client's DISCONNECT (`Ok`) or the end of the connection.
    async fn run(&self, reader: &mut Reader) -> Result<(), Ended> {
        let mut held = Held::default();
        loop {
            let packet = match held.packets.pop_front() {
                Some(p) => {
                    held.bytes -= held_size(&p);
                    p
                }
                None => self.read(reader).await?,
            };
            let reply = match packet {
                Packet::Publish(mut p) => {
                    if !topic::valid_name(&p.topic) {
                        return Err(Ended::Protocol(format!("PUBLISH to {:?}", p.topic)));
                    }
                    // Its own copy: what was read shares the read buffer,
                    // which a queued or retained message would keep alive.
                    p.payload = Bytes::copy_from_slice(&p.payload);
                    let (qos, pkid) = (p.qos, p.pkid);
                    match qos {
                        QoS::AtMostOnce => {
                            self.forward_reading(reader, p, &mut held).await?;
                            None
                        }
                        QoS::AtLeastOnce => {
                            self.forward_reading(reader, p, &mut held).await?;
                            Some(Packet::PubAck(PubAck::new(pkid)))
                        }
                        QoS::ExactlyOnce => {
                            // Delivered on the first PUBLISH; a resend with
                            // the same id before PUBREL is not delivered again.
                            if self.outbound.qos2_received(pkid) {
                                self.forward_reading(reader, p, &mut held).await?;
                            }
                            Some(Packet::PubRec(PubRec::new(pkid)))
                        }
                    }
                }
                Packet::PubRel(r) => {
                    self.outbound.qos2_released(r.pkid);
                    Some(Packet::PubComp(PubComp::new(r.pkid)))
                }
                Packet::PubAck(a) => {
                    self.outbound.acked(a.pkid);
                    None
                }
                // We never send QoS 2 (subscriptions are granted QoS 1 at most).
                Packet::PubRec(_) | Packet::PubComp(_) => None,
                Packet::Subscribe(s) => {
                    self.router
                        .subscribe(self.client, self.id, s.pkid, &s.filters)
                        .map_err(|_| Ended::NotReading)?;
                    None
                }
                Packet::Unsubscribe(u) => {
                    self.router.unsubscribe(self.client, self.id, &u.topics);
                    Some(Packet::UnsubAck(UnsubAck::new(u.pkid)))
                }
                Packet::PingReq => Some(Packet::PingResp),
                Packet::Disconnect => return Ok(()),
                other @ (Packet::Connect(_)
                | Packet::ConnAck(_)
                | Packet::SubAck(_)
                | Packet::UnsubAck(_)
                | Packet::PingResp) => {
                    return Err(Ended::Protocol(format!("{other:?} from a client")));
                }
            };
            if let Some(r) = reply {
                if !self.outbound.reply(self.id, r) {
                    return Err(Ended::NotReading);
                }
            }
        }
    }

    /// Hands a message to its subscribers and goes on reading while it
    /// waits for room: a subscriber's room comes back with its PUBACKs,
    /// and this client may be that subscriber (or subscribed to by the
    /// one it publishes to), so its acknowledgements and pings are
    /// handled at once; anything else is held for after, up to
    /// [`HELD_BYTES`].
    async fn forward_reading(
        &self,
        reader: &mut Reader,
        publish: Publish,
        held: &mut Held,
    ) -> Result<(), Ended> {
        let delivered = forward(self.router, publish, self.client);
        tokio::pin!(delivered);
        loop {
            if held.bytes >= HELD_BYTES {
                delivered.await;
                return Ok(());
            }
            tokio::select! {
                biased;
                () = &mut delivered => return Ok(()),
                packet = self.read(reader) => match packet? {
                    Packet::PubAck(a) => self.outbound.acked(a.pkid),
                    Packet::PingReq => {
                        if !self.outbound.reply(self.id, Packet::PingResp) {
                            return Err(Ended::NotReading);
                        }
                    }
                    other => {
                        held.bytes += held_size(&other);
                        held.packets.push_back(other);
                    }
                },
            }
        }
    }
}

/// What a held packet counts against [`HELD_BYTES`].
fn held_size(p: &Packet) -> usize {
    match p {
        Packet::Publish(p) => p.topic.len() + p.payload.len() + 16,
        _ => 16,
    }
}

/// Hands a message to every session subscribed to it.
async fn forward(router: &Router, publish: Publish, from: &str) {
    let targets = router.route(&publish);
    for t in targets {
        let mut p = publish.clone();
        p.qos = t.qos;
        p.retain = false;
        p.dup = false;
        if t.outbound.deliver(p).await == Delivered::StartedLagging {
            tracing::warn!(
                client = %t.client,
                from,
                "a subscriber does not keep up: its messages are dropped until it has caught up"
            );
        }
    }
}

/// Writes all of `buf`, failing when a write makes no progress for
/// [`WRITE_STALL`].
async fn write_all(half: &mut OwnedWriteHalf, buf: &[u8]) -> std::io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        match tokio::time::timeout(WRITE_STALL, half.write(&buf[at..])).await {
            Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => at += n,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
    Ok(())
}

async fn write_loop(
    mut half: OwnedWriteHalf,
    outbound: Arc<Outbound>,
    id: ConnectionId,
    stop: CancellationToken,
) {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    outbound.encode_unacked(id, &mut buf);
    loop {
        let woken = outbound.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if !outbound.is_owner(id) {
            break;
        }
        if outbound.encode(id, &mut buf) || !buf.is_empty() {
            let written = tokio::select! {
                r = write_all(&mut half, &buf) => r.is_ok(),
                _ = stop.cancelled() => false,
            };
            if !written {
                break;
            }
            buf.clear();
            if buf.capacity() > 256 * 1024 {
                buf = BytesMut::with_capacity(8 * 1024);
            }
            continue;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = &mut woken => {}
        }
    }
    // The reader learns of a dead socket from here too.
    stop.cancel();
}
