//! The JK-BMS BlueZ transport (`drivers::jkbms::ble`) through a real bluer
//! session against the fake BlueZ on a private dbus-daemon. Captured
//! frames come from the shared vectors folder at test time.
#![cfg(feature = "ble")]

mod support;

use std::time::{Duration, Instant};

use bluer::{ErrorKind, Session};
use energy2mqtt::drivers::jkbms::ble::{self, BleError, BleLink, BleOptions, Seen};
use energy2mqtt::sim::jkbms::{SimPack, cell_frames, device_info_frame};
use support::fake_bluez::{
    FakeBluez, Generation, READY_RECORD, WriteRecord, jkbms_vectors, vector_frame,
};

const PACK_A: &str = "C8:47:8C:00:00:0A";
const PACK_B: &str = "20:21:11:00:00:0B";
const PACK_C: &str = "A4:C1:38:00:00:0C";

/// A host → BMS command frame with no payload, built per spec §3.
fn command(cmd: u8) -> Vec<u8> {
    let mut f = vec![0u8; 20];
    f[..4].copy_from_slice(&[0xAA, 0x55, 0x90, 0xEB]);
    f[4] = cmd;
    f[19] = f[..19].iter().fold(0u8, |a, b| a.wrapping_add(*b));
    f
}

fn opts(mac: &str) -> BleOptions {
    BleOptions {
        scan_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        failure_pause: Duration::from_millis(100),
        ..BleOptions::parse(mac).expect("mac")
    }
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

/// Concatenated notifications until `done` holds for them (or `within`).
async fn receive_until(
    link: &mut BleLink,
    within: Duration,
    done: impl Fn(&[u8]) -> bool,
) -> (Vec<u8>, usize) {
    let mut bytes = Vec::new();
    let mut notifications = 0;
    let deadline = tokio::time::Instant::now() + within;
    while !done(&bytes) {
        match tokio::time::timeout_at(deadline, link.recv()).await {
            Ok(Some(n)) => {
                assert!(n.len() <= 20, "notification longer than MTU-3: {}", n.len());
                notifications += 1;
                bytes.extend_from_slice(&n);
            }
            Ok(None) => panic!("link lost while receiving"),
            Err(_) => panic!(
                "not all expected bytes within {within:?} ({} bytes in {notifications} notifications)",
                bytes.len()
            ),
        }
    }
    (bytes, notifications)
}

fn first(log: &[String], prefix: &str) -> usize {
    log.iter()
        .position(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in {log:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_module_generations_connect_subscribe_and_stream() {
    let Some(fake) = FakeBluez::exclusive() else {
        return;
    };
    let Some(dir) = jkbms_vectors("both_module_generations_connect_subscribe_and_stream") else {
        return;
    };
    let session = Session::new().await.expect("bluer session");
    let cases = [
        (
            PACK_A,
            Generation::OneCharacteristic,
            "jk02_24s",
            "devinfo_jk02_24s_b2a24s20p_v10.07",
            "settings_jk02_24s_b2a24s20p_v10.07",
            "jk02_24s_cell_b2a24s20p_v10.07_24cells",
            ["char0011", "char0011"],
        ),
        (
            PACK_B,
            Generation::TwoCharacteristics,
            "jk02_32s",
            "devinfo_jk02_32s_b2a8s20p_v11.48",
            "settings_jk02_32s_b2a8s20p_v11.17",
            "jk02_32s_cell_b2a8s20p_v11.48_discharging",
            ["char0002", "char0004"],
        ),
    ];
    for (mac, generation, label, devinfo, settings, cell, [write_char, notify_char]) in cases {
        let devinfo = vector_frame(&dir, devinfo);
        let settings = vector_frame(&dir, settings);
        let cell = vector_frame(&dir, cell);
        fake.add_pack(mac, &format!("JK-{label}"), generation, true, false);
        fake.set_responses(mac, 0x97, vec![devinfo.clone()]);
        fake.set_responses(mac, 0x96, vec![settings.clone(), cell.clone()]);
        fake.set_stream_interval(mac, Duration::from_millis(100));

        let mut link = BleLink::connect(&session, &opts(mac))
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(link.mac().to_string(), mac);

        let device_info_cmd = command(0x97);
        assert_eq!(device_info_cmd[19], 0x11, "spec §3 checksum sanity value");
        link.write(&device_info_cmd).await.expect("write 0x97");
        let (got, n) = receive_until(&mut link, Duration::from_secs(3), |b| {
            count(b, &devinfo) == 1 && count(b, &READY_RECORD) == 1
        })
        .await;
        assert!(
            n >= 15,
            "{label}: a 300-byte frame in 20-byte notifications, got {n}"
        );
        assert!(count(&got, b"AT\r\n") <= 1);

        let settings_cmd = command(0x96);
        assert_eq!(settings_cmd[19], 0x10);
        link.write(&settings_cmd).await.expect("write 0x96");
        // The settings frame once, then cell-info frames for as long as the
        // link lasts: three of them prove the stream.
        let (got, _) = receive_until(&mut link, Duration::from_secs(3), |b| {
            count(b, &settings) == 1 && count(b, &cell) >= 3
        })
        .await;
        assert_eq!(count(&got, &settings), 1, "{label}");

        let log = fake.log(mac);
        assert!(
            first(&log, &format!("notify acquire {notify_char}")) < first(&log, "write"),
            "{label}: subscribed before the first write: {log:?}"
        );
        assert_eq!(
            fake.writes(mac),
            vec![
                WriteRecord {
                    data: device_info_cmd,
                    op: "request".into(),
                    char_name: write_char.into(),
                },
                WriteRecord {
                    data: settings_cmd,
                    op: "request".into(),
                    char_name: write_char.into(),
                },
            ],
            "{label}"
        );

        link.disconnect().await;
        assert!(
            !fake.is_connected(mac),
            "{label}: released after disconnect()"
        );
        assert!(!fake.is_subscribed(mac));
        assert_eq!(fake.connect_attempts(mac), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_loss_ends_recv_and_reconnecting_works() {
    let Some(fake) = FakeBluez::exclusive() else {
        return;
    };
    let Some(dir) = jkbms_vectors("link_loss_ends_recv_and_reconnecting_works") else {
        return;
    };
    let devinfo = vector_frame(&dir, "devinfo_jk02_32s_pb2a16s15p_v15.38");
    let cell = vector_frame(&dir, "jk02_32s_cell_pb2a16s15p_v15.38_charging");
    fake.add_pack(
        PACK_B,
        "JK_PB2A16S15P",
        Generation::TwoCharacteristics,
        true,
        false,
    );
    fake.set_responses(PACK_B, 0x97, vec![devinfo.clone()]);
    fake.set_responses(PACK_B, 0x96, vec![cell.clone()]);
    fake.set_stream_interval(PACK_B, Duration::from_millis(100));
    let session = Session::new().await.expect("bluer session");

    let mut link = BleLink::connect(&session, &opts(PACK_B))
        .await
        .expect("connect");
    link.write(&command(0x96)).await.expect("write 0x96");
    receive_until(&mut link, Duration::from_secs(3), |b| count(b, &cell) >= 1).await;

    fake.drop_link(PACK_B);
    let drained = tokio::time::timeout(Duration::from_secs(3), async {
        while link.recv().await.is_some() {}
    })
    .await;
    assert!(drained.is_ok(), "recv() did not end after the link loss");
    assert!(link.recv().await.is_none(), "recv() stays ended");
    assert!(matches!(
        link.write(&command(0x97)).await,
        Err(BleError::NotConnected { .. })
    ));

    let mut link = BleLink::connect(&session, &opts(PACK_B))
        .await
        .expect("reconnect");
    assert_eq!(fake.connect_attempts(PACK_B), 2);
    link.write(&command(0x97)).await.expect("write 0x97");
    receive_until(&mut link, Duration::from_secs(3), |b| {
        count(b, &devinfo) == 1
    })
    .await;
    link.disconnect().await;
    assert!(!fake.is_connected(PACK_B));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packs_connect_one_at_a_time_and_a_silent_one_blocks_nobody() {
    let Some(fake) = FakeBluez::exclusive() else {
        return;
    };
    fake.add_pack(PACK_A, "JK-A", Generation::OneCharacteristic, true, false);
    fake.add_pack(PACK_B, "JK-B", Generation::TwoCharacteristics, true, false);
    fake.add_pack(PACK_C, "JK-C", Generation::OneCharacteristic, false, false);
    let session = Session::new().await.expect("bluer session");

    let silent_timeout = Duration::from_secs(2);
    let started = Instant::now();
    let timed = |mac: &'static str, scan: Duration| {
        let session = session.clone();
        async move {
            let o = BleOptions {
                scan_timeout: scan,
                // Longer than the silent pack's scan: the second pack must
                // not wait for it after a successful connect (issue 15).
                failure_pause: Duration::from_secs(3),
                ..opts(mac)
            };
            let r = BleLink::connect(&session, &o).await;
            (r, started.elapsed())
        }
    };
    let ((a, a_at), (b, b_at), (c, c_at)) = tokio::join!(
        timed(PACK_A, Duration::from_secs(5)),
        timed(PACK_B, Duration::from_secs(5)),
        timed(PACK_C, silent_timeout),
    );
    let a = a.expect("pack A connects");
    let b = b.expect("pack B connects");
    assert!(
        a_at < silent_timeout && b_at < silent_timeout,
        "A and B waited for the silent pack or a pause: {a_at:?} {b_at:?}"
    );
    match c {
        Err(BleError::NotFound { mac, waited }) => {
            assert_eq!(mac.to_string(), PACK_C);
            assert_eq!(waited, silent_timeout);
            assert!(c_at >= silent_timeout);
            let text = BleError::NotFound { mac, waited }.to_string();
            assert!(text.contains("phone app"), "{text}");
        }
        other => panic!("silent pack: {other:?}"),
    }
    assert_eq!(fake.max_concurrent_connects(), 1, "connects overlapped");
    assert_eq!(fake.in_progress_rejections(), 0);
    assert_eq!(fake.connect_attempts(PACK_A), 1);
    assert_eq!(fake.connect_attempts(PACK_B), 1);
    assert_eq!(fake.connect_attempts(PACK_C), 0);
    a.disconnect().await;
    b.disconnect().await;

    // Without the gate the fake answers as BlueZ does to overlapping
    // connects, which is what the gate is for.
    let adapter = session.default_adapter().await.expect("adapter");
    let (ra, rb) = tokio::join!(
        async {
            adapter
                .device(PACK_A.parse().unwrap())
                .unwrap()
                .connect()
                .await
        },
        async {
            adapter
                .device(PACK_B.parse().unwrap())
                .unwrap()
                .connect()
                .await
        },
    );
    let kinds: Vec<Option<ErrorKind>> = [ra, rb]
        .into_iter()
        .map(|r| r.err().map(|e| e.kind))
        .collect();
    assert!(
        kinds.contains(&None) && kinds.contains(&Some(ErrorKind::InProgress)),
        "{kinds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_that_needs_bonding_is_paired_through_an_agent() {
    let Some(fake) = FakeBluez::exclusive() else {
        return;
    };
    fake.add_pack(
        PACK_C,
        "JK_PB2A16S20P",
        Generation::TwoCharacteristics,
        true,
        true,
    );
    let session = Session::new().await.expect("bluer session");

    // Without pairing the pack drops the link before its services can be
    // used, and the error says what to do.
    match BleLink::connect(&session, &opts(PACK_C)).await {
        Err(BleError::Connect(text)) => assert!(text.contains("pair = true"), "{text}"),
        other => panic!("unpaired connect: {other:?}"),
    }
    assert!(!fake.is_connected(PACK_C));
    assert!(!fake.is_paired(PACK_C));

    let paired = BleOptions {
        pair: true,
        ..opts(PACK_C)
    };
    let mut link = BleLink::connect(&session, &paired)
        .await
        .expect("paired connect");
    assert!(fake.is_paired(PACK_C));
    assert!(fake.is_trusted(PACK_C), "trusted after pairing");
    assert_eq!(fake.pair_attempts(PACK_C), 1);
    assert_eq!(fake.paired_with(PACK_C).as_deref(), Some("NoInputNoOutput"));
    assert!(
        fake.agents_ever()
            .iter()
            .any(|a| a.capability == "NoInputNoOutput")
    );
    // The agent was only needed for the pairing.
    assert!(
        fake.until(Duration::from_secs(2), |f| f.agents().is_empty())
            .await
    );

    link.write(&command(0x97)).await.expect("write 0x97");
    receive_until(&mut link, Duration::from_secs(3), |b| {
        count(b, &READY_RECORD) == 1
    })
    .await;
    link.disconnect().await;

    // Bonded now: connecting again does not pair again.
    let link = BleLink::connect(&session, &paired)
        .await
        .expect("reconnect");
    assert_eq!(fake.pair_attempts(PACK_C), 1);
    link.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_lists_advertising_jk_packs_only() {
    let Some(fake) = FakeBluez::exclusive() else {
        return;
    };
    fake.add_pack(
        PACK_A,
        "JK-B2A24S20P",
        Generation::OneCharacteristic,
        true,
        false,
    );
    fake.set_rssi(PACK_A, -61);
    fake.add_pack(
        PACK_B,
        "JK_Batt_2",
        Generation::TwoCharacteristics,
        true,
        false,
    );
    fake.set_rssi(PACK_B, -72);
    fake.set_manufacturer(PACK_B, Some((0x4B4A, vec![0x88, 0xA0])));
    // Not advertising: not listed.
    fake.add_pack(
        PACK_C,
        "JK-silent",
        Generation::OneCharacteristic,
        false,
        false,
    );
    // No FFE0, another maker.
    fake.add_device(
        "11:22:33:44:55:66",
        Some("Phone"),
        &["0000180f-0000-1000-8000-00805f9b34fb"],
        Some((0x004C, vec![1, 2, 3])),
    );
    // FFE0 but another maker's id: an HM-10 style UART module.
    fake.add_device(
        "11:22:33:44:55:77",
        Some("HMSoft"),
        &[support::fake_bluez::FFE0],
        Some((0x1234, vec![9])),
    );
    let session = Session::new().await.expect("bluer session");

    let seen = ble::scan(&session, Duration::from_millis(800))
        .await
        .expect("scan");
    assert_eq!(
        seen,
        vec![
            Seen {
                name: Some("JK_Batt_2".into()),
                mac: PACK_B.into(),
                rssi: Some(-72),
                manufacturer_id: Some(0x4B4A),
            },
            Seen {
                name: Some("JK-B2A24S20P".into()),
                mac: PACK_A.into(),
                rssi: Some(-61),
                manufacturer_id: Some(0x0B65),
            },
        ]
    );
    assert!(
        fake.until(Duration::from_secs(2), |f| !f.is_discovering())
            .await,
        "discovery stopped after the scan"
    );
    let json = serde_json::to_value(&seen[0]).expect("json");
    assert_eq!(json["manufacturer_id"], 0x4B4A);
}

#[test]
fn options_reject_a_bad_mac_with_advice() {
    let err = BleOptions::parse("C8:47:8C:12:34").unwrap_err();
    assert!(err.to_string().contains("C8:47:8C:12:34:56"), "{err}");
    assert!(BleOptions::parse("c8:47:8c:12:34:56").is_ok());
}

/// The fake also serves clients that subscribe with `StartNotify` and read
/// `PropertiesChanged` "Value" signals (the other way BlueZ offers), spoken
/// to here with plain D-Bus calls.
#[test]
fn fake_serves_start_notify_subscribers_too() {
    use dbus::blocking::Connection;
    use dbus::channel::MatchingReceiver;
    use dbus::message::MatchRule;
    use std::sync::{Arc, Mutex};

    let Some(fake) = FakeBluez::exclusive() else {
        return;
    };
    fake.add_pack(PACK_A, "JK-A", Generation::OneCharacteristic, true, false);
    let conn = Connection::new_system().expect("system bus = the fake");
    let call = |path: &str, iface: &str, member: &str| -> Result<(), dbus::Error> {
        conn.with_proxy("org.bluez", path.to_string(), Duration::from_secs(5))
            .method_call(iface, member, ())
    };
    let dev = "/org/bluez/hci0/dev_C8_47_8C_00_00_0A";
    let chr = format!("{dev}/service0010/char0011");
    call("/org/bluez/hci0", "org.bluez.Adapter1", "StartDiscovery").expect("discovery");
    let deadline = Instant::now() + Duration::from_secs(3);
    while call(dev, "org.bluez.Device1", "Connect").is_err() {
        assert!(Instant::now() < deadline, "pack never appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while call(&chr, "org.bluez.GattCharacteristic1", "StartNotify").is_err() {
        assert!(Instant::now() < deadline, "services never resolved");
        std::thread::sleep(Duration::from_millis(20));
    }

    let values = Arc::new(Mutex::new(Vec::<u8>::new()));
    let rule = MatchRule::new_signal("org.freedesktop.DBus.Properties", "PropertiesChanged")
        .with_path(chr.clone());
    conn.add_match_no_cb(&rule.match_str()).expect("match");
    let sink = values.clone();
    conn.start_receive(
        rule,
        Box::new(move |msg, _| {
            let (_, changed): (String, dbus::arg::PropMap) = msg.read2().expect("args");
            if let Some(v) = dbus::arg::prop_cast::<Vec<u8>>(&changed, "Value") {
                sink.lock().unwrap().extend_from_slice(v);
            }
            true
        }),
    );
    conn.with_proxy("org.bluez", chr.clone(), Duration::from_secs(5))
        .method_call::<(), _, _, _>(
            "org.bluez.GattCharacteristic1",
            "WriteValue",
            (command(0x97), dbus::arg::PropMap::new()),
        )
        .expect("write");
    let deadline = Instant::now() + Duration::from_secs(3);
    while count(&values.lock().unwrap(), &READY_RECORD) == 0 {
        assert!(Instant::now() < deadline, "no ready record notified");
        conn.process(Duration::from_millis(50)).expect("process");
    }
    assert_eq!(
        fake.writes(PACK_A)[0].op,
        "request",
        "BlueZ's default with `write`"
    );
    call(&chr, "org.bluez.GattCharacteristic1", "StopNotify").expect("StopNotify");
    assert!(!fake.is_subscribed(PACK_A));
    call(dev, "org.bluez.Device1", "Disconnect").expect("Disconnect");
    assert!(!fake.is_connected(PACK_A));
}

/// The session reads a frame's notifications together (issue 15: one
/// wake-up per burst, not per 20-byte notification): the bytes are the
/// notifications in order, and far fewer reads than notifications.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_notifications_is_read_in_one_go() {
    let Some(fake) = FakeBluez::exclusive() else {
        return;
    };
    let session = Session::new().await.expect("bluer session");
    let pack = SimPack::default();
    let frames = cell_frames(&pack, 3, Duration::from_millis(500));
    fake.add_pack(
        PACK_C,
        "JK_B2A16S20P",
        Generation::OneCharacteristic,
        true,
        false,
    );
    fake.set_responses(PACK_C, 0x97, vec![device_info_frame(&pack)]);
    fake.set_responses(PACK_C, 0x96, frames.clone());
    fake.set_stream_interval(PACK_C, Duration::from_millis(150));
    let mut link = BleLink::connect(&session, &opts(PACK_C))
        .await
        .expect("connect");
    let before = fake.notifications_delivered(PACK_C);
    link.write(&command(0x96)).await.expect("write 0x96");
    let (mut bytes, mut reads) = (Vec::new(), 0u64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !frames.iter().all(|f| count(&bytes, f) >= 1) {
        match tokio::time::timeout_at(deadline, link.recv_burst()).await {
            Ok(Some(b)) => {
                assert!(!b.is_empty(), "a read returns at least one notification");
                reads += 1;
                bytes.extend_from_slice(&b);
            }
            Ok(None) => panic!("link lost while receiving"),
            Err(_) => panic!("not all three frames within 5 s ({} bytes)", bytes.len()),
        }
    }
    let delivered = fake.notifications_delivered(PACK_C) - before;
    assert!(
        delivered >= 45,
        "three 300-byte frames are at least 45 notifications, the fake counted {delivered}"
    );
    assert!(
        reads * 4 <= delivered,
        "{reads} reads for {delivered} notifications: the burst was not read together"
    );
    link.disconnect().await;
}
