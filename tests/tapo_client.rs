//! Our KLAP client against the plug simulator: the recovery rules and the
//! errors users see, one by one.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use energy2mqtt::drivers::tapo::client::{PlugClient, TapoError};
use energy2mqtt::sim::tapo::{Flavour, Load, TapoSim};

const USER: &str = "plugs@example.com";
const PASS: &str = "correct horse";

async fn sim(flavour: Flavour) -> TapoSim {
    TapoSim::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        flavour,
        Load::Constant { watts: 750.0 },
        USER,
        PASS,
    )
    .await
    .expect("simulator")
}

fn client(port: u16) -> PlugClient {
    PlugClient::new("127.0.0.1", port, USER, PASS, Duration::from_secs(1))
}

#[tokio::test]
async fn reads_switches_and_reuses_one_session() {
    let p110 = sim(Flavour::P110).await;
    let mut c = client(p110.addr.port());
    let info = c.get_device_info().await.expect("device info");
    assert_eq!(info.model.as_deref(), Some("P110"));
    c.set_on(false).await.expect("off");
    assert!(!p110.is_on());
    assert!(!c.get_device_info().await.expect("info").device_on);
    c.set_on(true).await.expect("on");
    assert!(p110.is_on());
    let e = c
        .get_energy_usage()
        .await
        .expect("energy")
        .expect("a P110 meters");
    assert_eq!(e.current_power_w, Some(750.0));
    assert_eq!(c.get_current_power().await.expect("power"), Some(750.0));
    assert_eq!(p110.handshakes(), 1);
    assert_eq!(c.handshakes(), 1);

    // A P100 closes the connection after every reply and has no metering.
    let p100 = sim(Flavour::P100).await;
    let mut c = client(p100.addr.port());
    for _ in 0..10 {
        c.get_device_info()
            .await
            .expect("info through closed connections");
    }
    assert_eq!(c.get_energy_usage().await.expect("answer"), None);
    assert_eq!(p100.handshakes(), 1);
}

#[tokio::test]
async fn an_expired_session_is_renewed_transparently() {
    let plug = sim(Flavour::P110).await;
    plug.knobs.session_ttl_s.store(1, Ordering::Relaxed);
    let mut c = client(plug.addr.port());
    c.get_device_info().await.expect("first");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.get_device_info().await.expect("after expiry");
    assert_eq!(plug.handshakes(), 2);
}

#[tokio::test]
async fn credential_problems_say_how_to_fix_them() {
    let plug = sim(Flavour::P110).await;
    plug.knobs.wrong_credentials.store(true, Ordering::Relaxed);
    let mut c = client(plug.addr.port());
    let e = c.get_device_info().await.expect_err("wrong credentials");
    assert!(matches!(e, TapoError::Credentials), "{e}");
    assert!(e.needs_user());
    assert!(e.to_string().contains("Third-Party Compatibility"));

    plug.knobs.wrong_credentials.store(false, Ordering::Relaxed);
    plug.knobs.klap_disabled.store(true, Ordering::Relaxed);
    let e = c.get_device_info().await.expect_err("TPAP mode");
    assert!(matches!(e, TapoError::KlapDisabled), "{e}");
    assert!(e.to_string().contains("Third-Party Compatibility"));

    plug.knobs.klap_disabled.store(false, Ordering::Relaxed);
    plug.knobs.legacy_firmware.store(true, Ordering::Relaxed);
    let e = c.get_device_info().await.expect_err("legacy firmware");
    assert!(matches!(e, TapoError::LegacyFirmware), "{e}");
    assert!(e.to_string().contains("update the plug's firmware"));
}

#[tokio::test]
async fn rate_limits_and_dead_plugs_are_typed() {
    let plug = sim(Flavour::P110).await;
    let mut c = client(plug.addr.port());
    c.get_device_info().await.expect("first");
    plug.knobs.rate_limited.store(true, Ordering::Relaxed);
    let e = c.get_device_info().await.expect_err("429");
    assert!(e.is_rate_limit(), "{e}");
    plug.knobs.rate_limited.store(false, Ordering::Relaxed);
    plug.knobs.offline.store(true, Ordering::Relaxed);
    let started = std::time::Instant::now();
    let e = c.get_device_info().await.expect_err("offline");
    assert!(
        matches!(e, TapoError::Unreachable(_) | TapoError::Timeout(_)),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    plug.knobs.offline.store(false, Ordering::Relaxed);
    c.get_device_info().await.expect("back");
}

/// A P110 on firmware 1.4.6 keeps port 80 closed until it hears a
/// discovery probe on UDP 20002: the client sends one on "connection
/// refused" and tries once more.
#[tokio::test]
async fn a_sleeping_plug_is_woken_by_a_discovery_probe() {
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:20002")
        .await
        .expect("UDP 127.0.0.1:20002 must be free for this test");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let call = tokio::spawn(async move {
        let mut c = client(port);
        c.get_device_info().await
    });
    let mut buf = [0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(3), udp.recv_from(&mut buf))
        .await
        .expect("a probe within 3 s")
        .expect("recv");
    let probe = &buf[..n];
    assert_eq!(&probe[..4], &[2, 0, 0, 1], "version 2, probe op");
    assert_eq!(
        usize::from(u16::from_be_bytes([probe[4], probe[5]])),
        n - 16,
        "payload size"
    );
    // The plug wakes up: its web server starts listening.
    let _plug = TapoSim::start(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Flavour::P110,
        Load::Constant { watts: 5.0 },
        USER,
        PASS,
    )
    .await
    .expect("simulator on the reserved port");
    let info = call
        .await
        .expect("join")
        .expect("the retry reaches the plug");
    assert_eq!(info.model.as_deref(), Some("P110"));
}
