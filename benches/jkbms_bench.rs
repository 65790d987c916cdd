//! Benchmarks of the JK-BMS codec, as a plain binary (`harness = false`):
//!
//! 1. decode throughput: one JK02_32S cell-info frame (16 cells, our own
//!    values) decoded over and over;
//! 2. assembler throughput on a junk-laden notification stream (20-byte
//!    fragments, `AT\r\n` floods, ready records, a corrupt frame in ten);
//! 3. the session's work per frame: assemble + decode + the typed reading
//!    into the registry entry + its state JSON with `last_seen` as the
//!    bridge publishes it (`DeviceEntry::state_json`), scaled to two packs
//!    streaming at 2 Hz; beside it the same through a `serde_json::Map`,
//!    each step timed alone, and what this section measured up to 3bf35f0
//!    (the map, no `last_seen`).
//!
//! `cargo bench --bench jkbms_bench`. Figures go to docs/PERFORMANCE.md.

use std::hint::black_box;
use std::time::Instant;

use energy2mqtt::core::registry::DeviceEntry;
use energy2mqtt::drivers::jkbms::assembler::Assembler;
use energy2mqtt::drivers::jkbms::cell_info::{Cell, CellInfo};
use energy2mqtt::drivers::jkbms::command::ack_record;
use energy2mqtt::drivers::jkbms::frame::{Frame, Variant};
use energy2mqtt::drivers::jkbms::{Decoded, StreamDecoder};
use energy2mqtt::model::{DeviceKind, Reading};
use energy2mqtt::mqtt::payloads;
use serde_json::Map;
use time::OffsetDateTime;

fn frame() -> Frame {
    let mut c = CellInfo::new(Variant::Jk02_32s);
    c.cells = (1..=16)
        .map(|n| Cell {
            number: n,
            voltage: 3.3 + f64::from(n) * 0.001,
            resistance: 60.0,
        })
        .collect();
    c.enabled_cells_mask = Some(0xFFFF);
    c.pack_voltage = c.cells.iter().map(|c| c.voltage).sum();
    c.current = Some(-12.5);
    c.soc = Some(71);
    c.encode().expect("encode")
}

fn main() {
    println!("energy2mqtt jkbms_bench");
    let f = frame();

    println!("\n== 1. decode ==");
    let mut decoder = StreamDecoder::new(Some(Variant::Jk02_32s));
    const N: u32 = 1_000_000;
    let t = Instant::now();
    for _ in 0..N {
        match decoder.decode(black_box(&f)) {
            Ok(Decoded::CellInfo(c)) => {
                black_box(c);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "cell-info decode (JK02_32S, 16 cells, with the variant cross-check): {:.0} frames/s ({:.0} ns each); target >= 500 000",
        f64::from(N) / secs,
        secs / f64::from(N) * 1e9
    );

    println!("\n== 2. assembler on a junk-laden stream ==");
    let mut stream = Vec::new();
    let mut good = 0u64;
    for i in 0..2000u32 {
        stream.extend_from_slice(b"AT\r\nAT\r\nAT\r\n");
        stream.extend_from_slice(&ack_record());
        let mut bytes = f.as_bytes().to_vec();
        if i % 10 == 9 {
            bytes[150] ^= 0xFF;
        } else {
            good += 1;
        }
        stream.extend_from_slice(&bytes);
    }
    let mut frames = 0u64;
    let rounds = 20;
    let t = Instant::now();
    for _ in 0..rounds {
        let mut a = Assembler::new();
        for chunk in stream.chunks(20) {
            a.feed(chunk, |fr| {
                frames += 1;
                black_box(fr);
            });
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let bytes = stream.len() as f64 * rounds as f64;
    assert_eq!(frames, good * rounds as u64, "every good frame, no bad one");
    println!(
        "{:.1} MB/s, {:.0} frames/s ({} bytes per round, 20-byte fragments, {} good frames and {} corrupt per round)",
        bytes / secs / 1e6,
        frames as f64 / secs,
        stream.len(),
        good,
        2000 - good
    );

    println!("\n== 3. session work per frame, two packs at 2 Hz ==");
    let per_frame: Vec<u8> = {
        let mut v = b"AT\r\n".to_vec();
        v.extend_from_slice(f.as_bytes());
        v
    };
    let seen =
        OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let mut entry = DeviceEntry {
        kind: DeviceKind::Bms,
        name: "pack".into(),
        online: Some(true),
        reading: None,
        annotations: Map::new(),
        last_seen: None,
    };
    // What the session and the bridge do with each frame: the reading
    // replaces the last one in the registry (`Registry::record`) and
    // the state with `last_seen` is written for the outbox
    // (`Bridge::republish_device`).
    let mut publish = |c: CellInfo, state: fn(&DeviceEntry, OffsetDateTime) -> String| {
        entry.reading = Some(Reading::Pack(Box::new(c.reading())));
        entry.last_seen = Some(seen);
        state(&entry, seen).len()
    };
    let written = |e: &DeviceEntry, t| {
        e.state_json(&payloads::timestamp(t))
            .unwrap_or_else(|err| panic!("state not written: {err}"))
    };
    let through_map = |e: &DeviceEntry, t| payloads::device_state(&e.state(), t);
    let per = session(&per_frame, |c| publish(c, written));
    println!(
        "{:.1} us per frame (16 fragments, decode, reading, state JSON with last_seen written by model::StateJson) => two packs at 2 Hz: {:.4} % of one core",
        per * 1e6,
        per * 4.0 * 100.0
    );
    let per_map = session(&per_frame, |c| publish(c, through_map));
    println!(
        "  for comparison: {:.1} us per frame with the state through a serde_json::Map (Reading::to_state, payloads::device_state)",
        per_map * 1e6
    );
    // Where the time goes: each step alone on one decoded frame.
    let mut decoder = StreamDecoder::new(None);
    let Ok(Decoded::CellInfo(c)) = decoder.decode(&f) else {
        panic!("the bench frame does not decode");
    };
    entry.reading = Some(Reading::Pack(Box::new(c.reading())));
    let steps: [(&str, &dyn Fn() -> usize); 4] = [
        ("CellInfo::reading", &|| c.reading().cells.len()),
        ("payloads::timestamp", &|| payloads::timestamp(seen).len()),
        ("DeviceEntry::state_json", &|| written(&entry, seen).len()),
        ("DeviceEntry::state + payloads::device_state", &|| {
            through_map(&entry, seen).len()
        }),
    ];
    for (what, step) in steps {
        const K: u32 = 100_000;
        let t = Instant::now();
        for _ in 0..K {
            black_box(step());
        }
        println!(
            "  of which {what}: {:.2} us",
            t.elapsed().as_secs_f64() / f64::from(K) * 1e6
        );
    }
    // 3bf35f0's section 3 measured this (the map, no last_seen).
    let per_old = session(&per_frame, |c| {
        serde_json::to_string(&c.to_map()).map_or(0, |s| s.len())
    });
    println!(
        "  for comparison: {:.1} us per frame as 3bf35f0's section 3 measured it (CellInfo::to_map + serde_json::to_string, no last_seen)",
        per_old * 1e6
    );
}

/// Seconds per frame: `M` times, one frame in 20-byte fragments with an
/// `AT\r\n` before it through one session's assembler and decoder, then
/// `publish`.
fn session(per_frame: &[u8], mut publish: impl FnMut(CellInfo) -> usize) -> f64 {
    const M: u32 = 100_000;
    let mut a = Assembler::new();
    let mut decoder = StreamDecoder::new(None);
    let t = Instant::now();
    for _ in 0..M {
        let mut got = Vec::new();
        for chunk in per_frame.chunks(20) {
            a.feed(chunk, |fr| got.push(fr));
        }
        for fr in got {
            if let Ok(Decoded::CellInfo(c)) = decoder.decode(&fr) {
                black_box(publish(c));
            }
        }
    }
    t.elapsed().as_secs_f64() / f64::from(M)
}
