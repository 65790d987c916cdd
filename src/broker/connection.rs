//! One client connection (MQTT 3.1.1): the CONNECT handshake, then a
//! reader (this task) and a writer task that empties the session's
//! [`Outbound`]. The reader hands each PUBLISH to its subscribers itself,
//! so a publisher that outruns them is slowed down by TCP, not buffered.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::{
    ConnAck, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, Publish, QoS, SubAck, UnsubAck,
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
}

impl From<rumqttc::mqttbytes::Error> for Ended {
    fn from(e: rumqttc::mqttbytes::Error) -> Self {
        Ended::Protocol(e.to_string())
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

async fn refuse(write: &mut OwnedWriteHalf, code: ConnectReturnCode) {
    let mut buf = BytesMut::new();
    let _ = Packet::ConnAck(ConnAck::new(code, false)).write(&mut buf, usize::MAX);
    let _ = write.write_all(&buf).await;
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Serves one accepted connection to its end.
pub async fn serve(stream: TcpStream, router: Arc<Router>, settings: Arc<Settings>) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = Reader {
        half: read,
        buf: BytesMut::with_capacity(4096),
        max_packet: settings.max_packet,
    };
    let connect = match tokio::time::timeout(settings.connect_timeout, reader.next()).await {
        Ok(Ok(Packet::Connect(c))) => c,
        Ok(Ok(_)) | Ok(Err(_)) | Err(_) => return,
    };
    if connect.protocol != rumqttc::mqttbytes::Protocol::V4 {
        return refuse(&mut write, ConnectReturnCode::RefusedProtocolVersion).await;
    }
    if let Some((user, password)) = &settings.auth {
        let ok = connect.login.as_ref().is_some_and(|l| {
            let u = l.username.as_bytes().ct_eq(user.as_bytes());
            let p = l.password.as_bytes().ct_eq(password.expose().as_bytes());
            bool::from(u & p)
        });
        if !ok {
            tracing::info!(client = %connect.client_id, "refused: bad username or password");
            return refuse(&mut write, ConnectReturnCode::BadUserNamePassword).await;
        }
    }
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let client: Arc<str> = if connect.client_id.is_empty() {
        if !connect.clean_session {
            return refuse(&mut write, ConnectReturnCode::BadClientId).await;
        }
        format!("energy2mqtt-broker-auto-{id}").into()
    } else {
        connect.client_id.as_str().into()
    };
    let span = tracing::debug_span!("broker", client = %client);
    let kick = CancellationToken::new();
    let (outbound, present, previous) =
        router.connect(&client, connect.clean_session, id, kick.clone());
    if let Some(previous) = previous {
        previous.cancel();
    }
    let mut buf = BytesMut::new();
    let _ = Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, present))
        .write(&mut buf, usize::MAX);
    if write.write_all(&buf).await.is_err() {
        router.disconnected(&client, id);
        return;
    }
    let writer_stop = CancellationToken::new();
    let writer = tokio::spawn(write_loop(write, outbound.clone(), id, writer_stop.clone()));
    let will = connect.last_will.map(|w| {
        let mut p = Publish::from_bytes(w.topic, w.qos, Bytes::copy_from_slice(&w.message));
        p.retain = w.retain;
        p
    });
    // 1.5 × the keep-alive the client asked for (MQTT 3.1.1 §3.1.2.10).
    let idle = (connect.keep_alive > 0)
        .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
    let mut session = Session {
        router: &router,
        client: &client,
        outbound: &outbound,
        id,
        qos2_received: HashSet::new(),
    };
    tracing::debug!(parent: &span, clean = connect.clean_session, present, "connected");
    let ended = {
        tokio::select! {
            r = session.run(&mut reader, idle) => r,
            _ = kick.cancelled() => Err(Ended::TakenOver),
            _ = writer_stop.cancelled() => Err(Ended::Closed),
        }
    };
    writer_stop.cancel();
    let _ = writer.await;
    match ended {
        Ok(()) => tracing::debug!(parent: &span, "disconnected"),
        Err(e) => {
            tracing::debug!(parent: &span, reason = %e, "connection lost");
            if let Some(will) = will {
                if topic::valid_name(&will.topic) {
                    forward(&router, will, &client).await;
                }
            }
        }
    }
    router.disconnected(&client, id);
}

struct Session<'a> {
    router: &'a Router,
    client: &'a Arc<str>,
    outbound: &'a Outbound,
    id: ConnectionId,
    /// QoS 2 packet ids delivered and not yet released (PUBREL).
    qos2_received: HashSet<u16>,
}

impl Session<'_> {
    /// Until the client's DISCONNECT (`Ok`) or the end of the connection.
    async fn run(&mut self, reader: &mut Reader, idle: Option<Duration>) -> Result<(), Ended> {
        loop {
            let packet = match idle {
                Some(d) => tokio::time::timeout(d, reader.next())
                    .await
                    .map_err(|_| Ended::KeepAlive)??,
                None => reader.next().await?,
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
                            forward(self.router, p, self.client).await;
                            None
                        }
                        QoS::AtLeastOnce => {
                            forward(self.router, p, self.client).await;
                            Some(Packet::PubAck(PubAck::new(pkid)))
                        }
                        QoS::ExactlyOnce => {
                            // Delivered on the first PUBLISH; a resend with
                            // the same id before PUBREL is not delivered again.
                            if self.qos2_received.insert(pkid) {
                                forward(self.router, p, self.client).await;
                            }
                            Some(Packet::PubRec(PubRec::new(pkid)))
                        }
                    }
                }
                Packet::PubRel(r) => {
                    self.qos2_received.remove(&r.pkid);
                    Some(Packet::PubComp(PubComp::new(r.pkid)))
                }
                Packet::PubAck(a) => {
                    self.outbound.acked(a.pkid);
                    None
                }
                // We never send QoS 2 (subscriptions are granted QoS 1 at most).
                Packet::PubRec(_) | Packet::PubComp(_) => None,
                Packet::Subscribe(s) => {
                    let (codes, retained) = self.router.subscribe(self.client, &s.filters);
                    if !self
                        .outbound
                        .reply(self.id, Packet::SubAck(SubAck::new(s.pkid, codes)))
                    {
                        return Err(Ended::NotReading);
                    }
                    for p in retained {
                        self.outbound.deliver(p).await;
                    }
                    None
                }
                Packet::Unsubscribe(u) => {
                    self.router.unsubscribe(self.client, &u.topics);
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
            if half.write_all(&buf).await.is_err() {
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
