//! Turns BLE notifications into frames. The BLE module is a UART bridge:
//! notifications cut frames anywhere, carry the tail of one frame and the
//! head of the next, and interleave `AT\r\n` floods and 20-byte
//! `AA 55 90 EB C8 …` ready records (spec §4). This is batmon-ha's
//! resynchronising approach, which survives every capture we have.

use serde_json::{Map, Value};

use super::frame::Frame;
use super::frame::{FRAME_LEN, FrameType, HEADER, checksum};

/// The most bytes held back. A notification is at most an ATT MTU (≤ 512
/// bytes), so 4 KiB holds a frame and many notifications; anything beyond
/// means the caller stopped draining frames.
pub const MAX_BUFFER: usize = 4096;

/// What the assembler let through and threw away, for the driver to
/// publish. All counters only grow (until the assembler is replaced).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AssemblerStats {
    /// Frames emitted.
    pub frames: u64,
    /// Header-started 300-byte windows whose byte 299 did not match: a
    /// corrupted frame, a frame cut short by a lost notification, or a
    /// header pattern inside junk.
    pub bad_checksums: u64,
    /// Windows with a good checksum but a type byte we do not know.
    pub unknown_types: u64,
    /// Every byte received that did not leave in a frame and is not
    /// buffered: AT text, ready records, rejected headers, overflow, bytes
    /// forgotten by [`Assembler::clear`].
    pub junk_bytes: u64,
    /// Times the buffer overflowed because frames were not drained.
    pub overflows: u64,
}

impl AssemblerStats {
    /// The diagnostic counters of the state object
    /// (see [`super::publish::fields`]).
    pub fn to_map(&self) -> Map<String, Value> {
        let mut map = Map::new();
        map.insert("frames_bad_checksum".into(), self.bad_checksums.into());
        map.insert("junk_bytes".into(), self.junk_bytes.into());
        map
    }

    /// Both counts added: a pack's totals over its sessions, so that the
    /// `total_increasing` counters never fall back on a reconnect.
    pub fn plus(self, other: Self) -> Self {
        Self {
            frames: self.frames + other.frames,
            bad_checksums: self.bad_checksums + other.bad_checksums,
            unknown_types: self.unknown_types + other.unknown_types,
            junk_bytes: self.junk_bytes + other.junk_bytes,
            overflows: self.overflows + other.overflows,
        }
    }
}

/// Reassembles frames from notifications with bounded memory: never more
/// than [`MAX_BUFFER`] bytes, allocated once.
#[derive(Debug, Clone)]
pub struct Assembler {
    /// Invariant between calls: empty, a proper prefix of [`HEADER`], or
    /// starting with the whole header. Junk never waits here.
    buf: Vec<u8>,
    stats: AssemblerStats,
}

impl Default for Assembler {
    fn default() -> Self {
        Self::new()
    }
}

impl Assembler {
    pub fn new() -> Self {
        Self {
            buf: Vec::with_capacity(MAX_BUFFER),
            stats: AssemblerStats::default(),
        }
    }

    pub fn stats(&self) -> AssemblerStats {
        self.stats
    }

    /// Bytes held back, waiting for the rest of a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The buffer's allocation, which never grows past its first size.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Forgets a partial frame, on disconnect: its rest will never come.
    pub fn clear(&mut self) {
        self.drop_front(self.buf.len());
    }

    /// Adds one notification. Drain [`Self::next_frame`] until `None` after
    /// every push: if more than [`MAX_BUFFER`] bytes pile up, the oldest go
    /// (counted as junk). [`Self::feed`] does both for input of any size.
    // Inlined into `feed`: at HEAD thin LTO stopped doing so and the
    // assembler lost 10-15 % (docs/PERFORMANCE.md).
    #[inline]
    pub fn push(&mut self, bytes: &[u8]) {
        let mut bytes = bytes;
        let overflow = (self.buf.len() + bytes.len()).saturating_sub(MAX_BUFFER);
        if overflow > 0 {
            // The newest bytes are the most useful: a stalled consumer
            // should resume on fresh frames.
            self.stats.overflows += 1;
            let from_buf = overflow.min(self.buf.len());
            self.drop_front(from_buf);
            let from_input = overflow - from_buf;
            self.stats.junk_bytes += from_input as u64;
            bytes = bytes.get(from_input..).unwrap_or_default();
        }
        self.buf.extend_from_slice(bytes);
        if !self.buf.starts_with(&HEADER) {
            self.resync();
        }
    }

    /// The next complete frame with a good checksum and a known type, or
    /// `None` until more bytes arrive. Rejected windows are counted in
    /// [`AssemblerStats`].
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            let window = self.buf.get(..FRAME_LEN)?;
            let sum_ok = window
                .split_last()
                .is_some_and(|(sum, body)| *sum == checksum(body));
            let type_ok = window
                .get(4)
                .is_some_and(|&t| FrameType::from_byte(t).is_some());
            if sum_ok && type_ok {
                if let Ok(frame) = Frame::new(window) {
                    self.buf.drain(..FRAME_LEN);
                    self.resync();
                    self.stats.frames += 1;
                    return Some(frame);
                }
            }
            if sum_ok {
                self.stats.unknown_types += 1;
            } else {
                self.stats.bad_checksums += 1;
            }
            // Only the header goes: the good frame that follows a cut one
            // starts inside this window.
            self.drop_front(HEADER.len());
            self.resync();
        }
    }

    /// Pushes input of any length and hands every frame to `each`; nothing
    /// is lost to overflow because frames are drained between pieces.
    pub fn feed(&mut self, bytes: &[u8], mut each: impl FnMut(Frame)) {
        for piece in bytes.chunks(FRAME_LEN) {
            self.push(piece);
            while let Some(frame) = self.next_frame() {
                each(frame);
            }
        }
    }

    /// Drops everything before the next header; with no header, keeps only
    /// a tail that could be the start of one split across notifications.
    fn resync(&mut self) {
        let junk = match self.buf.windows(HEADER.len()).position(|w| w == HEADER) {
            Some(at) => at,
            None => self.buf.len() - header_prefix_at_end(&self.buf),
        };
        self.drop_front(junk);
    }

    fn drop_front(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        self.buf.drain(..n);
        self.stats.junk_bytes += n as u64;
    }
}

/// Length of the longest proper prefix of the header that `buf` ends with.
fn header_prefix_at_end(buf: &[u8]) -> usize {
    (1..HEADER.len())
        .rev()
        .find(|&k| HEADER.get(..k).is_some_and(|prefix| buf.ends_with(prefix)))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::drivers::jkbms::cell_info::{Cell, CellInfo};
    use crate::drivers::jkbms::command::ack_record;
    use crate::drivers::jkbms::device_info::DeviceInfo;
    use crate::drivers::jkbms::frame::{FrameBuilder, Variant};
    use crate::drivers::jkbms::settings::Settings;
    use crate::drivers::jkbms::{StreamDecoder, decode_any};
    use crate::testing::XorShift;

    fn sample_cell_frame(variant: Variant, counter: u8, cells: u8) -> Frame {
        let mut info = CellInfo::new(variant);
        info.counter = counter;
        info.cells = (1..=cells)
            .map(|n| Cell {
                number: n,
                voltage: 3.2 + f64::from(n) / 1000.0,
                resistance: 50.0 + f64::from(n),
            })
            .collect();
        info.pack_voltage = info.cells.iter().map(|c| c.voltage).sum();
        info.current = Some(-12.5);
        info.encode().unwrap()
    }

    fn drain(a: &mut Assembler) -> Vec<Frame> {
        std::iter::from_fn(|| a.next_frame()).collect()
    }

    /// frames × 300 + junk + buffered = everything pushed.
    fn assert_accounted(a: &Assembler, pushed: u64) {
        let s = a.stats();
        assert_eq!(
            s.frames * FRAME_LEN as u64 + s.junk_bytes + a.buffered() as u64,
            pushed,
            "{s:?}"
        );
    }

    #[test]
    fn whole_frame_in_one_push() {
        let f = sample_cell_frame(Variant::Jk02_32s, 1, 16);
        let mut a = Assembler::new();
        a.push(f.as_bytes());
        assert_eq!(drain(&mut a), vec![f]);
        assert_eq!(a.buffered(), 0);
        assert_accounted(&a, 300);
    }

    #[test]
    fn fragments_that_ignore_frame_boundaries() {
        let f1 = sample_cell_frame(Variant::Jk02_32s, 1, 16);
        let f2 = sample_cell_frame(Variant::Jk02_32s, 2, 16);
        let mut stream = f1.as_bytes().to_vec();
        stream.extend_from_slice(f2.as_bytes());
        for pattern in [&[128, 22][..], &[128, 128, 44], &[20], &[1], &[7, 131, 13]] {
            let mut a = Assembler::new();
            let mut out = Vec::new();
            let mut rest = &stream[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = pattern[i % pattern.len()].min(rest.len());
                a.push(&rest[..n]);
                out.extend(drain(&mut a));
                rest = &rest[n..];
                i += 1;
            }
            assert_eq!(out, vec![f1.clone(), f2.clone()], "pattern {pattern:?}");
            assert_eq!(a.stats().junk_bytes, 0);
        }
    }

    #[test]
    fn two_frames_in_one_notification_and_a_head_left_over() {
        let f1 = sample_cell_frame(Variant::Jk02_24s, 1, 8);
        let f2 = sample_cell_frame(Variant::Jk02_24s, 2, 8);
        let f3 = sample_cell_frame(Variant::Jk02_24s, 3, 8);
        let mut chunk = f1.as_bytes().to_vec();
        chunk.extend_from_slice(f2.as_bytes());
        chunk.extend_from_slice(&f3.as_bytes()[..84]);
        let mut a = Assembler::new();
        a.push(&chunk);
        assert_eq!(drain(&mut a), vec![f1, f2]);
        // The head of the third frame is kept, not thrown away.
        assert_eq!(a.buffered(), 84);
        a.push(&f3.as_bytes()[84..]);
        assert_eq!(drain(&mut a), vec![f3]);
        assert_accounted(&a, 900);
    }

    #[test]
    fn at_floods_and_ready_records_are_skipped_and_counted() {
        let f = sample_cell_frame(Variant::Jk02_32s, 1, 4);
        let mut a = Assembler::new();
        let mut pushed = 0u64;
        let mut push = |a: &mut Assembler, b: &[u8]| {
            a.push(b);
            pushed += b.len() as u64;
        };
        for _ in 0..2000 {
            push(&mut a, b"AT\r\n");
        }
        push(&mut a, &ack_record());
        push(&mut a, f.as_bytes());
        push(&mut a, &ack_record());
        push(&mut a, b"AT\r\n");
        assert_eq!(drain(&mut a), vec![f]);
        assert_eq!(a.stats().junk_bytes, 2001 * 4 + 40);
        assert_eq!(a.buffered(), 0);
        assert_accounted(&a, pushed);
    }

    #[test]
    fn ready_record_glued_to_a_frame_end() {
        // The historical "320-byte frame": the checksum stays at byte 299.
        let f = sample_cell_frame(Variant::Jk02_32s, 9, 16);
        let mut chunk = f.as_bytes().to_vec();
        chunk.extend_from_slice(&ack_record());
        chunk.extend_from_slice(b"AT\r\n");
        let mut a = Assembler::new();
        a.push(&chunk);
        assert_eq!(drain(&mut a), vec![f]);
        assert_eq!(a.stats().junk_bytes, 24);
    }

    #[test]
    fn corrupt_frame_is_dropped_and_the_next_one_found_inside_it() {
        let f1 = sample_cell_frame(Variant::Jk02_32s, 1, 16);
        let f2 = sample_cell_frame(Variant::Jk02_32s, 2, 16);
        let mut bad = f1.as_bytes().to_vec();
        bad[150] ^= 0x40;
        // A frame cut short by a lost notification, then a good one: the
        // 300-byte window spans both.
        let mut stream = f1.as_bytes()[..200].to_vec();
        stream.extend_from_slice(f2.as_bytes());
        stream.extend_from_slice(&bad);
        stream.extend_from_slice(f1.as_bytes());
        let mut a = Assembler::new();
        a.push(&stream);
        assert_eq!(drain(&mut a), vec![f2, f1]);
        assert_eq!(a.stats().bad_checksums, 2);
        assert_eq!(a.stats().junk_bytes, 500);
        assert_accounted(&a, stream.len() as u64);
    }

    #[test]
    fn good_checksum_with_unknown_type_is_rejected() {
        let f = sample_cell_frame(Variant::Jk02_32s, 1, 2);
        let mut odd = *f.as_bytes();
        odd[4] = 0x04;
        odd[299] = odd[299].wrapping_add(2);
        let mut a = Assembler::new();
        a.push(&odd);
        a.push(f.as_bytes());
        assert_eq!(drain(&mut a), vec![f]);
        assert_eq!(a.stats().unknown_types, 1);
    }

    #[test]
    fn header_split_across_notifications() {
        let f = sample_cell_frame(Variant::Jk02_32s, 1, 2);
        for cut in 1..4 {
            let mut a = Assembler::new();
            a.push(b"AT\r\n");
            a.push(&f.as_bytes()[..cut]);
            assert_eq!(a.buffered(), cut);
            a.push(&f.as_bytes()[cut..]);
            assert_eq!(drain(&mut a), vec![f.clone()]);
        }
        // A tail that only looks like a header start is dropped once the
        // next byte disagrees.
        let mut a = Assembler::new();
        a.push(&[0x01, 0x55, 0xAA]);
        assert_eq!(a.buffered(), 2);
        a.push(&[0x00]);
        assert_eq!(a.buffered(), 0);
        assert_eq!(a.stats().junk_bytes, 4);
    }

    #[test]
    fn duplicated_notification_costs_one_frame_only() {
        let f1 = sample_cell_frame(Variant::Jk02_32s, 1, 16);
        let f2 = sample_cell_frame(Variant::Jk02_32s, 2, 16);
        let mut a = Assembler::new();
        a.push(&f1.as_bytes()[..128]);
        a.push(&f1.as_bytes()[128..256]);
        a.push(&f1.as_bytes()[128..256]);
        a.push(&f1.as_bytes()[256..]);
        a.push(f2.as_bytes());
        assert_eq!(drain(&mut a), vec![f2]);
        assert_eq!(a.stats().bad_checksums, 1);
    }

    #[test]
    fn overflow_keeps_the_newest_bytes_and_the_buffer_bounded() {
        let f = sample_cell_frame(Variant::Jk02_32s, 1, 16);
        let mut a = Assembler::new();
        let cap = a.capacity();
        let mut pushed = 0u64;
        // 20 frames without draining: far beyond the buffer.
        for _ in 0..20 {
            a.push(f.as_bytes());
            pushed += 300;
            assert!(a.buffered() <= MAX_BUFFER);
        }
        assert!(a.stats().overflows > 0);
        let out = drain(&mut a);
        assert!(!out.is_empty() && out.len() <= MAX_BUFFER / FRAME_LEN);
        assert_eq!(a.capacity(), cap);
        assert_accounted(&a, pushed);

        // One huge push: only the last MAX_BUFFER bytes survive.
        let mut a = Assembler::new();
        let big: Vec<u8> = f.as_bytes().repeat(40);
        a.push(&big);
        assert_eq!(a.buffered(), MAX_BUFFER - MAX_BUFFER % FRAME_LEN);
        assert_accounted(&a, big.len() as u64);
    }

    #[test]
    fn feed_loses_nothing_however_large_the_input() {
        let f = sample_cell_frame(Variant::Jk02_32s, 1, 16);
        let big: Vec<u8> = f.as_bytes().repeat(40);
        let mut a = Assembler::new();
        let mut n = 0;
        a.feed(&big, |_| n += 1);
        assert_eq!(n, 40);
        assert_eq!(a.stats().junk_bytes, 0);
    }

    #[test]
    fn clear_forgets_the_partial_frame() {
        let f = sample_cell_frame(Variant::Jk02_32s, 1, 16);
        let mut a = Assembler::new();
        a.push(&f.as_bytes()[..100]);
        a.clear();
        assert_eq!(a.buffered(), 0);
        a.push(&f.as_bytes()[100..]);
        assert_eq!(drain(&mut a), vec![]);
        assert_accounted(&a, 300);
    }

    // ---- bad input: a million generated chunks plus proptest ----

    /// Bytes that make headers, ready records, AT text and type bytes
    /// common, so the search and reject paths run often.
    const HOT: [u8; 14] = [
        0x55, 0xAA, 0xEB, 0x90, 0x01, 0x02, 0x03, 0x05, 0xC8, b'A', b'T', b'\r', b'\n', 0x00,
    ];

    /// Valid frames of every type and variant, built by our encoders.
    fn frame_pool() -> Vec<Vec<u8>> {
        let mut pool = Vec::new();
        for (i, variant) in [Variant::Jk02_24s, Variant::Jk02_32s]
            .into_iter()
            .enumerate()
        {
            for cells in [0u8, 4, 16, 24] {
                pool.push(sample_cell_frame(variant, cells, cells).as_bytes().to_vec());
            }
            let settings = Settings::example(variant);
            pool.push(settings.encode().unwrap().as_bytes().to_vec());
            let mut info = DeviceInfo::example();
            info.software_version = ["10.08", "19.27"][i].into();
            pool.push(info.encode().as_bytes().to_vec());
        }
        pool
    }

    /// 1,000,000 generated chunks (the proptest properties below and in the
    /// other files add ~8,000 more): hot-byte noise, AT floods, ready
    /// records, good frames whole or in pieces, frames with a flipped bit,
    /// truncated frames and repeated pieces. After every chunk: the buffer
    /// stays within MAX_BUFFER and its allocation never grows, every byte
    /// is accounted for, and every emitted frame decodes without panicking.
    #[test]
    fn a_million_generated_chunks_never_break_the_assembler() {
        const CHUNKS: usize = 1_000_000;
        let pool = frame_pool();
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        let mut a = Assembler::new();
        let cap = a.capacity();
        let mut decoder = StreamDecoder::new(None);
        let mut pushed = 0u64;
        let mut pending: Vec<u8> = Vec::new();
        let mut chunk: Vec<u8> = Vec::with_capacity(512);
        let mut last: Vec<u8> = Vec::new();
        let (mut frames, mut decoded) = (0u64, 0u64);
        for _ in 0..CHUNKS {
            chunk.clear();
            match rng.below(16) {
                0..=4 => {
                    for _ in 0..rng.below(40) {
                        chunk.push(rng.byte_from(&HOT));
                    }
                }
                5 => {
                    for _ in 0..1 + rng.below(8) {
                        chunk.extend_from_slice(b"AT\r\n");
                    }
                }
                6 => chunk.extend_from_slice(&ack_record()),
                7 => chunk.extend_from_slice(&last),
                8..=14 if pending.is_empty() => {
                    pending.extend_from_slice(&pool[rng.below(pool.len())]);
                    match rng.below(10) {
                        0 => {
                            let at = rng.below(FRAME_LEN);
                            pending[at] ^= 1 << rng.below(8);
                        }
                        1 => pending.truncate(rng.below(FRAME_LEN)),
                        _ => {}
                    }
                }
                _ => {}
            }
            if !pending.is_empty() {
                // MTU-sized pieces, or the rest at once.
                let take = match rng.below(3) {
                    0 => pending.len(),
                    1 => pending.len().min(20),
                    _ => pending.len().min(1 + rng.below(256)),
                };
                chunk.extend(pending.drain(..take));
            }
            a.push(&chunk);
            pushed += chunk.len() as u64;
            assert!(a.buffered() <= MAX_BUFFER);
            assert_eq!(a.capacity(), cap);
            while let Some(frame) = a.next_frame() {
                frames += 1;
                if decoder.decode(&frame).is_ok() {
                    decoded += 1;
                }
            }
            std::mem::swap(&mut last, &mut chunk);
        }
        assert_accounted(&a, pushed);
        let s = a.stats();
        println!("assembler: {CHUNKS} chunks, {pushed} bytes, {s:?}, {decoded} decoded");
        // The generator reaches both the good and the bad paths.
        assert!(frames > 100_000, "{frames} frames");
        assert!(decoded > 50_000, "{decoded} decoded");
        assert!(s.bad_checksums > 10_000, "{s:?}");
        assert!(s.junk_bytes > 1_000_000, "{s:?}");
    }

    /// Frames with a valid checksum and random bodies: every decoder, every
    /// variant, every firmware gate, and the JSON views, must cope.
    #[test]
    fn random_bodies_with_valid_checksums_never_panic_the_decoders() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let types = [0x01u8, 0x02, 0x03, 0x05];
        for i in 0..20_000 {
            let mut b = FrameBuilder::new();
            for at in (6..FRAME_LEN - 1).step_by(8) {
                let r = rng.next();
                let bytes = if i % 4 == 0 {
                    r & 0x0F0F_0F0F_0F0F_0F0F
                } else {
                    r
                };
                for (k, byte) in bytes.to_le_bytes().into_iter().enumerate() {
                    b.u8(at + k, byte);
                }
            }
            let ty = FrameType::from_byte(types[rng.below(4)]).unwrap();
            let frame = b.finish(ty, rng.next() as u8);
            let frame = Frame::new(frame.as_bytes()).unwrap();
            for variant in Variant::ALL {
                for sw in [None, Some(10), Some(19)] {
                    if let Ok(info) = CellInfo::decode(&frame, variant, sw) {
                        let map = info.to_map();
                        assert!(map.values().all(|v| !v.is_null()));
                        let _ = crate::drivers::jkbms::cell_info::is_consistent(&frame, variant);
                    }
                }
                if let Ok(s) = Settings::decode(&frame, variant) {
                    let _ = s.to_json();
                    let _ = s.state_map();
                }
            }
            if let Ok(d) = DeviceInfo::decode(&frame) {
                let _ = d.to_json();
            }
        }
    }

    fn hot_byte() -> impl Strategy<Value = u8> {
        any::<u16>().prop_map(|r| {
            if r & 1 == 0 {
                HOT[usize::from(r >> 1) % HOT.len()]
            } else {
                (r >> 8) as u8
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Noise with frames spliced in, cut anywhere: never a panic, the
        /// buffer bounded, every byte accounted for, every spliced frame
        /// that survived intact found.
        #[test]
        fn assembler_never_panics_and_stays_bounded(
            noise in proptest::collection::vec(hot_byte(), 0..600),
            frame_at in proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let frame = sample_cell_frame(Variant::Jk02_32s, 3, 8);
            let mut stream = noise.clone();
            let mut spliced = 0;
            for at in &frame_at {
                let at = at.index(stream.len() + 1);
                stream.splice(at..at, frame.as_bytes().iter().copied());
                spliced += 1;
            }
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            at.push(0);
            at.push(stream.len());
            at.sort_unstable();
            let mut a = Assembler::new();
            let mut found = 0;
            for w in at.windows(2) {
                a.push(&stream[w[0]..w[1]]);
                prop_assert!(a.buffered() <= MAX_BUFFER);
                while let Some(f) = a.next_frame() {
                    if f == frame {
                        found += 1;
                    }
                }
            }
            let s = a.stats();
            prop_assert_eq!(
                s.frames * FRAME_LEN as u64 + s.junk_bytes + a.buffered() as u64,
                stream.len() as u64
            );
            // A frame spliced into the middle of another is destroyed, so
            // only the last one is sure to survive.
            if spliced > 0 {
                prop_assert!(found >= 1, "found {} of {}", found, spliced);
            }
        }

        /// Arbitrary bytes through the CLI entry point: an error or JSON,
        /// never a panic.
        #[test]
        fn decode_any_never_panics(
            bytes in proptest::collection::vec(hot_byte(), 0..700),
            variant in proptest::option::of(proptest::sample::select(Variant::ALL.to_vec())),
        ) {
            let _ = decode_any(&bytes, variant);
        }
    }
}
