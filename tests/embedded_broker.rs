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
