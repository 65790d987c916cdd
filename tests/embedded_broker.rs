//! The embedded broker as clients see it: retained messages, QoS 1,
//! credentials.

mod support;

use std::time::Duration;

use energy2mqtt::config::{BrokerConfig, Secret};
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS};
use support::free_port;

async fn start(username: Option<&str>, password: Option<&str>) -> u16 {
    let port = free_port();
    let cfg = BrokerConfig {
        enabled: true,
        listen: format!("127.0.0.1:{port}").parse().expect("addr"),
        username: username.map(str::to_owned),
        password: password.map(Secret::new),
        ..BrokerConfig::default()
    };
    energy2mqtt::broker::start(&cfg)
        .await
        .expect("broker starts");
    port
}

fn options(port: u16, creds: Option<(&str, &str)>) -> MqttOptions {
    let mut o = MqttOptions::new(format!("t{}", free_port()), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(10));
    if let Some((u, p)) = creds {
        o.set_credentials(u, p);
    }
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_retained_messages_and_delivers_qos1() {
    let port = start(None, None).await;
    let (publisher, mut el) = AsyncClient::new(options(port, None), 10);
    publisher
        .publish("e2m/test/retained", QoS::AtLeastOnce, true, "kept")
        .await
        .expect("publish");
    // Drive the publisher until its PUBACK arrives: QoS 1 is acknowledged.
    let acked = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(Event::Incoming(Packet::PubAck(_))) = el.poll().await {
                return true;
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(acked, "the broker acknowledges QoS 1");

    let (sub, mut el2) = AsyncClient::new(options(port, None), 10);
    sub.subscribe("e2m/test/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(Event::Incoming(Packet::Publish(p))) = el2.poll().await {
                return p;
            }
        }
    })
    .await
    .expect("the retained message reaches a late subscriber");
    assert_eq!(got.topic, "e2m/test/retained");
    assert_eq!(&got.payload[..], b"kept");
    assert!(got.retain);
    assert_eq!(got.qos, QoS::AtLeastOnce);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_credentials_it_refuses_strangers() {
    let port = start(Some("bridge"), Some("pa55")).await;
    for (creds, ok) in [
        (None, false),
        (Some(("bridge", "wrong")), false),
        (Some(("bridge", "pa55")), true),
    ] {
        let (_c, mut el) = AsyncClient::new(options(port, creds), 10);
        let outcome = tokio::time::timeout(Duration::from_secs(5), el.poll())
            .await
            .expect("an answer");
        match outcome {
            Ok(Event::Incoming(Packet::ConnAck(a))) => {
                assert!(ok, "{creds:?} accepted");
                assert_eq!(a.code, ConnectReturnCode::Success);
            }
            Err(ConnectionError::ConnectionRefused(_)) | Err(_) => {
                assert!(!ok, "{creds:?} refused")
            }
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
}

/// Home Assistant subscribes to `homeassistant/#` (at QoS 0) and must get
/// every discovery config at once; rumqttd's outgoing packet limit used to
/// cut the burst at 200, and at QoS 1 rumqttd 0.20 stopped after its
/// inflight window (100). Both must get all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_subscriber_gets_every_retained_message() {
    const N: usize = 1000;
    let port = start(None, None).await;
    let (publisher, mut el) = AsyncClient::new(options(port, None), 64);
    let pump = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    for i in 0..N {
        publisher
            .publish(
                format!("homeassistant/sensor/n/{i}/config"),
                QoS::AtLeastOnce,
                true,
                "{}",
            )
            .await
            .expect("publish");
    }
    // Let the broker store them all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let (sub, mut el) = AsyncClient::new(options(port, None), 64);
        sub.subscribe("homeassistant/#", qos)
            .await
            .expect("subscribe");
        let mut got = std::collections::HashSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while got.len() < N && tokio::time::Instant::now() < deadline {
            if let Ok(Ok(Event::Incoming(Packet::Publish(p)))) =
                tokio::time::timeout(Duration::from_millis(500), el.poll()).await
            {
                assert!(p.retain, "sent because of the subscription: retain set");
                got.insert(p.topic.clone());
            }
        }
        assert_eq!(got.len(), N, "subscribed at {qos:?}");
    }
    pump.abort();
}

/// Issue 15: a QoS 0 flood from a publisher as fast as TCP takes it
/// (what `mosquitto_pub -l` does) reaches a subscriber that keeps reading
/// whole: the broker makes the publisher wait for room in the
/// subscriber's queue instead of dropping. rumqttd lost most of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos0_flood_reaches_a_subscriber_that_keeps_reading_whole() {
    use std::io::{Read, Write};
    const N: usize = 30_000;
    let port = start(None, None).await;
    let (sub, mut el) = AsyncClient::new(options(port, None), 64);
    sub.subscribe("flood/#", QoS::AtMostOnce)
        .await
        .expect("subscribe");
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = el.poll().await.expect("subscribed") {
            break;
        }
    }
    // A raw publisher: CONNECT, then N PUBLISH of 600 B in large writes.
    let publisher = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.write_all(b"\x10\x12\x00\x04MQTT\x04\x02\x00\x3c\x00\x06floodp")
            .expect("CONNECT");
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack).expect("CONNACK");
        assert_eq!(ack, [0x20, 2, 0, 0]);
        let mut one = vec![0x30, 0xE4, 0x04, 0x00, 0x0a];
        one.extend_from_slice(b"flood/data");
        one.extend(std::iter::repeat_n(b'x', 600));
        assert_eq!(one.len() - 3, 0x04 * 128 + 0x64);
        let chunk: Vec<u8> = one.iter().copied().cycle().take(one.len() * 100).collect();
        for _ in 0..N / 100 {
            s.write_all(&chunk).expect("PUBLISH");
        }
        s.write_all(&[0xE0, 0]).expect("DISCONNECT");
        let _ = s.read(&mut ack);
    });
    let mut got = 0;
    while got < N {
        match tokio::time::timeout(Duration::from_secs(3), el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                assert_eq!(p.payload.len(), 600);
                got += 1;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("subscriber lost its connection: {e}"),
            Err(_) => break, // 3 s without a message: the flood is over
        }
    }
    publisher.await.expect("publisher");
    assert_eq!(got, N, "every message of the flood arrives");
}

/// A raw client, for what rumqttc's client would not do: stop reading,
/// keep a tiny receive buffer, speak MQTT 3.1.
struct Raw {
    stream: tokio::net::TcpStream,
    buf: bytes::BytesMut,
}

impl Raw {
    async fn open(port: u16, small_receive_buffer: bool) -> Raw {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        if small_receive_buffer {
            socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        }
        let stream = socket
            .connect(([127, 0, 0, 1], port).into())
            .await
            .expect("connect");
        Raw {
            stream,
            buf: bytes::BytesMut::new(),
        }
    }

    async fn connect(
        port: u16,
        id: &str,
        keep_alive: u16,
        will: Option<(&str, &str)>,
        small_receive_buffer: bool,
    ) -> Raw {
        let mut raw = Raw::open(port, small_receive_buffer).await;
        let mut c = rumqttc::Connect::new(id);
        c.keep_alive = keep_alive;
        c.clean_session = true;
        c.last_will = will.map(|(t, m)| rumqttc::LastWill::new(t, m, QoS::AtLeastOnce, true));
        raw.send(Packet::Connect(c)).await;
        match raw.next().await {
            Packet::ConnAck(a) => assert_eq!(a.code, ConnectReturnCode::Success),
            other => panic!("{other:?}"),
        }
        raw
    }

    async fn send(&mut self, p: Packet) {
        use tokio::io::AsyncWriteExt;
        let mut out = bytes::BytesMut::new();
        p.write(&mut out, usize::MAX).expect("encodes");
        self.stream.write_all(&out).await.expect("write");
    }

    async fn next(&mut self) -> Packet {
        use tokio::io::AsyncReadExt;
        loop {
            match Packet::read(&mut self.buf, usize::MAX) {
                Ok(p) => return p,
                Err(rumqttc::Error::InsufficientBytes(_)) => {
                    let n = tokio::time::timeout(
                        Duration::from_secs(10),
                        self.stream.read_buf(&mut self.buf),
                    )
                    .await
                    .expect("a packet within 10 s")
                    .expect("read");
                    assert!(n > 0, "closed by the broker");
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    async fn subscribe(&mut self, filter: &str) {
        let s = rumqttc::Subscribe::new(filter, QoS::AtMostOnce);
        self.send(Packet::Subscribe(s)).await;
        assert!(matches!(self.next().await, Packet::SubAck(_)));
    }
}

/// Floods `flood/data` from a raw publisher with `n` × 600 B at QoS 0.
async fn flood(port: u16, n: usize) {
    use std::io::{Read, Write};
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.write_all(b"\x10\x12\x00\x04MQTT\x04\x02\x00\x3c\x00\x06floodp")
            .expect("CONNECT");
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack).expect("CONNACK");
        let mut one = vec![0x30, 0xE4, 0x04, 0x00, 0x0a];
        one.extend_from_slice(b"flood/data");
        one.extend(std::iter::repeat_n(b'x', 600));
        let chunk: Vec<u8> = one.iter().copied().cycle().take(one.len() * 100).collect();
        for _ in 0..n / 100 {
            s.write_all(&chunk).expect("PUBLISH");
        }
        s.write_all(&[0xE0, 0]).expect("DISCONNECT");
        let _ = s.read(&mut ack);
    })
    .await
    .expect("flood");
}

/// A watcher of `topic` (QoS 1), and the first message it gets there.
async fn first_message(port: u16, topic: &str, within: Duration) -> Option<String> {
    let (c, mut el) = AsyncClient::new(options(port, None), 10);
    c.subscribe(topic, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let wait = async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    return String::from_utf8_lossy(&p.payload).into_owned();
                }
                Ok(_) => {}
                Err(e) => panic!("watcher lost the broker: {e}"),
            }
        }
    };
    tokio::time::timeout(within, wait).await.ok()
}

/// A subscriber that stops reading (its socket full, the broker's writer
/// stuck in a write) and goes silent: its keep-alive ends it, and its
/// Last Will goes out then. The writer used to wait for the write to
/// finish, which a peer that never reads again never lets happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_that_stops_reading_is_dropped_and_its_will_goes_out() {
    let port = start(None, None).await;
    let mut dead = Raw::connect(port, "dead", 2, Some(("will/dead", "gone")), true).await;
    dead.subscribe("flood/#").await;
    let watcher = tokio::spawn(first_message(port, "will/dead", Duration::from_secs(15)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    flood(port, 20_000).await;
    // keep-alive 2 s × 1.5: the will is due about 3 s after the last
    // packet from `dead`.
    assert_eq!(
        watcher.await.expect("watcher").as_deref(),
        Some("gone"),
        "the will of a dead peer arrives"
    );
    drop(dead);
}

/// A takeover while the old connection's writer is stuck: the old
/// connection's Last Will must not land after what the new connection
/// publishes (a retained "offline" over its "online").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_over_connection_s_will_lands_before_the_new_birth() {
    let port = start(None, None).await;
    let mut old = Raw::connect(port, "dup", 0, Some(("dup/status", "offline")), true).await;
    old.subscribe("flood/#").await;
    flood(port, 20_000).await;
    let mut new = Raw::connect(port, "dup", 0, Some(("dup/status", "offline")), false).await;
    let mut birth = rumqttc::Publish::new("dup/status", QoS::AtLeastOnce, "online");
    birth.retain = true;
    birth.pkid = 1;
    new.send(Packet::Publish(birth)).await;
    assert!(matches!(new.next().await, Packet::PubAck(_)));
    // The old socket goes now: its stuck write fails at last.
    drop(old);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        first_message(port, "dup/status", Duration::from_secs(5))
            .await
            .as_deref(),
        Some("online")
    );
    drop(new);
}

/// More than a queue (1 MiB) of retained messages to a QoS 1 subscriber:
/// the copies are queued at once, not waited for, since only the
/// subscriber's own reader (the one that would wait) reads its PUBACKs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos1_subscriber_gets_more_than_a_queue_of_retained_messages() {
    const N: usize = 200;
    let port = start(None, None).await;
    let mut o = options(port, None);
    o.set_max_packet_size(64 * 1024, 64 * 1024);
    let (publisher, mut el) = AsyncClient::new(o.clone(), 64);
    let pump = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    for i in 0..N {
        publisher
            .publish(
                format!("big/{i}"),
                QoS::AtLeastOnce,
                true,
                vec![b'r'; 20_000],
            )
            .await
            .expect("publish");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut o = options(port, None);
    o.set_max_packet_size(64 * 1024, 64 * 1024);
    let (sub, mut el) = AsyncClient::new(o, 64);
    sub.subscribe("big/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let mut got = std::collections::HashSet::new();
    while got.len() < N {
        match tokio::time::timeout(Duration::from_secs(3), el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                got.insert(p.topic.clone());
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => break,
        }
    }
    assert_eq!(got.len(), N);
    pump.abort();
}

/// A client subscribed at QoS 1 to what it publishes itself, faster than
/// a queue: its reader goes on reading its PUBACKs while its publish
/// waits for room in its own queue, so nothing is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_subscribed_to_itself_at_qos1_gets_everything_it_publishes() {
    const N: usize = 800;
    let port = start(None, None).await;
    let mut o = options(port, None);
    o.set_max_packet_size(64 * 1024, 64 * 1024);
    let (c, mut el) = AsyncClient::new(o, 256);
    c.subscribe("loop/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let publisher = tokio::spawn(async move {
        for i in 0..N {
            let mut payload = vec![b'l'; 10_000];
            payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
            c.publish("loop/x", QoS::AtLeastOnce, false, payload)
                .await
                .expect("publish");
        }
        c
    });
    let mut got = std::collections::HashSet::new();
    while got.len() < N {
        match tokio::time::timeout(Duration::from_secs(3), el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                got.insert(u64::from_be_bytes(p.payload[..8].try_into().expect("8")));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => break,
        }
    }
    assert_eq!(got.len(), N);
    drop(publisher.await);
}

/// An MQTT 3.1 client ("MQIsdp", level 3) is told why it is refused:
/// CONNACK 0x01, unacceptable protocol version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_3_1_client_gets_unacceptable_protocol_version() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = start(None, None).await;
    let mut raw = Raw::open(port, false).await;
    raw.stream
        .write_all(b"\x10\x10\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x02v3")
        .await
        .expect("CONNECT");
    let mut ack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), raw.stream.read_exact(&mut ack))
        .await
        .expect("an answer")
        .expect("a CONNACK");
    assert_eq!(ack, [0x20, 2, 0, 1]);
}
