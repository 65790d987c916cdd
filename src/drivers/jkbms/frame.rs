//! The 300-byte BMS → host frame (`55 AA EB 90`, type, counter, body,
//! checksum at byte 299), the protocol variants and how to tell them apart.
//!
//! Offsets are 0-based from the first header byte; integers little-endian
//! (`/work/shared/specs/jkbms-ble.md` §4, §5).

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

pub const FRAME_LEN: usize = 300;
pub const HEADER: [u8; 4] = [0x55, 0xAA, 0xEB, 0x90];
const TYPE_AT: usize = 4;
const COUNTER_AT: usize = 5;
const CHECKSUM_AT: usize = FRAME_LEN - 1;

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("a JK-BMS frame is exactly {FRAME_LEN} bytes, got {0}")]
    Length(usize),
    #[error("a JK-BMS frame starts with 55 AA EB 90, got {0:02X?}")]
    Header([u8; 4]),
    #[error(
        "JK-BMS frame checksum mismatch: byte 299 is {got:#04x}, the bytes before sum to {computed:#04x}; the frame was corrupted or cut"
    )]
    Checksum { computed: u8, got: u8 },
    #[error(
        "JK-BMS frame type {0:#04x} is unknown (known: 0x01 settings, 0x02 cell info, 0x03 device info, 0x05 logbook)"
    )]
    Type(u8),
}

/// Byte 4 of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// 0x01, the answer to `0x96`.
    Settings,
    /// 0x02, pushed about twice a second after `0x96`.
    CellInfo,
    /// 0x03, the answer to `0x97`.
    DeviceInfo,
    /// 0x05, the answer to `0xA1` (JK02_32S).
    Logbook,
}

impl FrameType {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0x01 => Some(Self::Settings),
            0x02 => Some(Self::CellInfo),
            0x03 => Some(Self::DeviceInfo),
            0x05 => Some(Self::Logbook),
            _ => None,
        }
    }

    pub fn byte(self) -> u8 {
        match self {
            Self::Settings => 0x01,
            Self::CellInfo => 0x02,
            Self::DeviceInfo => 0x03,
            Self::Logbook => 0x05,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Settings => "settings",
            Self::CellInfo => "cell_info",
            Self::DeviceInfo => "device_info",
            Self::Logbook => "logbook",
        }
    }
}

/// The three frame layouts. The settings and cell-info frames cannot be read
/// without knowing which one a pack speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// Integer fields, 24 cell slots: software major 6…10.
    Jk02_24s,
    /// Integer fields, 32 cell slots, everything after byte 111 shifted by
    /// 32: software major ≥ 11 (JK-PB included).
    Jk02_32s,
    /// float32 fields, 24 cell slots: old JK-B2A16S (sw 3.x) and
    /// JK-B5A24S (sw 8.0.3M). Never detected, only configured: its
    /// software versions collide with JK02_24S ones.
    Jk04,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Self::Jk02_24s, Self::Jk02_32s, Self::Jk04];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jk02_24s => "jk02_24s",
            Self::Jk02_32s => "jk02_32s",
            Self::Jk04 => "jk04",
        }
    }

    /// Cell slots in a cell-info frame.
    pub fn cell_slots(self) -> usize {
        match self {
            Self::Jk02_32s => 32,
            Self::Jk02_24s | Self::Jk04 => 24,
        }
    }

    /// The configured variant; `Auto` means "detect".
    pub fn from_config(v: crate::config::BmsVariant) -> Option<Self> {
        use crate::config::BmsVariant;
        match v {
            BmsVariant::Auto => None,
            BmsVariant::Jk02_24s => Some(Self::Jk02_24s),
            BmsVariant::Jk02_32s => Some(Self::Jk02_32s),
            BmsVariant::Jk04 => Some(Self::Jk04),
        }
    }

    /// The rule of aiobmsble and batmon-ha: software major ≥ 11 → JK02_32S,
    /// else JK02_24S. `None` when the version has no leading number. A JK04
    /// pack comes out as JK02_24S here; [`super::cell_info::is_consistent`]
    /// then rejects its frames.
    pub fn detect(software_version: &str) -> Option<Self> {
        software_major(software_version).map(|major| {
            if major >= 11 {
                Self::Jk02_32s
            } else {
                Self::Jk02_24s
            }
        })
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The variant name is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown JK-BMS variant {0:?}: expected jk02_24s, jk02_32s or jk04")]
pub struct UnknownVariant(pub String);

impl FromStr for Variant {
    type Err = UnknownVariant;

    /// Case-insensitive, so the spellings of the references (`JK02_32S`)
    /// work too.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "jk02_24s" => Ok(Self::Jk02_24s),
            "jk02_32s" => Ok(Self::Jk02_32s),
            "jk04" => Ok(Self::Jk04),
            _ => Err(UnknownVariant(s.to_owned())),
        }
    }
}

/// The leading integer of a software version: "11.48" → 11, "7.1.0H" → 7,
/// "V21S" → 21 (newest firmware prefixes a V).
pub fn software_major(software_version: &str) -> Option<u16> {
    let s = software_version.trim();
    let s = s.strip_prefix(['V', 'v']).unwrap_or(s);
    let digits: &str = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(end) => s.get(..end).unwrap_or_default(),
        None => s,
    };
    digits.parse().ok()
}

/// Sum of `bytes` mod 256: the checksum of frames (over bytes 0…298) and
/// of commands (over bytes 0…18).
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b))
}

/// One complete frame whose length, header, checksum and type were checked.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    bytes: [u8; FRAME_LEN],
    frame_type: FrameType,
}

impl Frame {
    /// Checks exactly one frame, nothing more.
    pub fn new(bytes: &[u8]) -> Result<Self, FrameError> {
        let bytes: [u8; FRAME_LEN] = bytes
            .try_into()
            .map_err(|_| FrameError::Length(bytes.len()))?;
        let [h0, h1, h2, h3, ..] = bytes;
        if [h0, h1, h2, h3] != HEADER {
            return Err(FrameError::Header([h0, h1, h2, h3]));
        }
        let Some((got, body)) = bytes.split_last() else {
            return Err(FrameError::Length(0));
        };
        let computed = checksum(body);
        if computed != *got {
            return Err(FrameError::Checksum {
                computed,
                got: *got,
            });
        }
        let type_byte = bytes.get(TYPE_AT).copied().unwrap_or_default();
        let frame_type = FrameType::from_byte(type_byte).ok_or(FrameError::Type(type_byte))?;
        Ok(Self { bytes, frame_type })
    }

    pub fn frame_type(&self) -> FrameType {
        self.frame_type
    }

    /// Byte 5, a rolling counter: repeats tell duplicated deliveries apart
    /// from fresh frames.
    pub fn counter(&self) -> u8 {
        self.u8(COUNTER_AT)
    }

    pub fn as_bytes(&self) -> &[u8; FRAME_LEN] {
        &self.bytes
    }

    fn array<const N: usize>(&self, at: usize) -> [u8; N] {
        // Offsets are constants below FRAME_LEN; the fallback only keeps a
        // typo from becoming a panic.
        self.bytes
            .get(at..at.saturating_add(N))
            .and_then(|s| <[u8; N]>::try_from(s).ok())
            .unwrap_or([0; N])
    }

    pub(crate) fn u8(&self, at: usize) -> u8 {
        self.bytes.get(at).copied().unwrap_or_default()
    }

    pub(crate) fn i8(&self, at: usize) -> i8 {
        i8::from_le_bytes(self.array(at))
    }

    pub(crate) fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes(self.array(at))
    }

    pub(crate) fn i16(&self, at: usize) -> i16 {
        i16::from_le_bytes(self.array(at))
    }

    pub(crate) fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.array(at))
    }

    pub(crate) fn i32(&self, at: usize) -> i32 {
        i32::from_le_bytes(self.array(at))
    }

    pub(crate) fn f32(&self, at: usize) -> f32 {
        f32::from_le_bytes(self.array(at))
    }

    /// ASCII, NUL-padded: up to the first NUL within `len` bytes. Bytes that
    /// are not UTF-8 become U+FFFD rather than failing the whole frame.
    pub(crate) fn string(&self, at: usize, len: usize) -> String {
        let field = self
            .bytes
            .get(at..at.saturating_add(len))
            .unwrap_or_default();
        let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
        String::from_utf8_lossy(field.get(..end).unwrap_or_default()).into_owned()
    }
}

impl fmt::Debug for Frame {
    // 300 numbers in a log line help nobody; the type and counter do.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("type", &self.frame_type)
            .field("counter", &self.counter())
            .finish()
    }
}

/// Fills a frame body for the encoders (the simulator's side).
pub(crate) struct FrameBuilder {
    bytes: [u8; FRAME_LEN],
}

impl FrameBuilder {
    pub(crate) fn new() -> Self {
        Self {
            bytes: [0; FRAME_LEN],
        }
    }

    fn put<const N: usize>(&mut self, at: usize, value: [u8; N]) {
        if let Some(dst) = self.bytes.get_mut(at..at.saturating_add(N)) {
            dst.copy_from_slice(&value);
        }
    }

    pub(crate) fn u8(&mut self, at: usize, v: u8) {
        self.put(at, [v]);
    }

    pub(crate) fn i8(&mut self, at: usize, v: i8) {
        self.put(at, v.to_le_bytes());
    }

    pub(crate) fn u16(&mut self, at: usize, v: u16) {
        self.put(at, v.to_le_bytes());
    }

    pub(crate) fn i16(&mut self, at: usize, v: i16) {
        self.put(at, v.to_le_bytes());
    }

    pub(crate) fn u32(&mut self, at: usize, v: u32) {
        self.put(at, v.to_le_bytes());
    }

    pub(crate) fn i32(&mut self, at: usize, v: i32) {
        self.put(at, v.to_le_bytes());
    }

    /// Only tests build JK04 frames.
    #[cfg(test)]
    pub(crate) fn f32(&mut self, at: usize, v: f32) {
        self.put(at, v.to_le_bytes());
    }

    /// NUL-padded; cut at `len` bytes (on a char boundary) if longer.
    pub(crate) fn string(&mut self, at: usize, len: usize, s: &str) {
        let mut end = s.len().min(len);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let src = s.as_bytes().get(..end).unwrap_or_default();
        if let Some(dst) = self.bytes.get_mut(at..at.saturating_add(len)) {
            dst.fill(0);
            if let Some(head) = dst.get_mut(..src.len()) {
                head.copy_from_slice(src);
            }
        }
    }

    /// Header, type, counter and checksum around the body written so far.
    pub(crate) fn finish(mut self, frame_type: FrameType, counter: u8) -> Frame {
        self.put(0, HEADER);
        self.u8(TYPE_AT, frame_type.byte());
        self.u8(COUNTER_AT, counter);
        let sum = checksum(self.bytes.get(..CHECKSUM_AT).unwrap_or_default());
        self.u8(CHECKSUM_AT, sum);
        Frame {
            bytes: self.bytes,
            frame_type,
        }
    }
}

/// Raw fixed-point integer → physical value. Division rather than
/// multiplication by 0.001: n / 1000 is the double nearest the decimal, so
/// 3308 mV prints as 3.308, not 3.3080000000000003.
pub(crate) fn scaled(raw: impl Into<f64>, divisor: f64) -> f64 {
    raw.into() / divisor
}

/// Physical value → raw fixed-point integer, rounded and saturated (the
/// simulator's model may hand us anything, NaN included → 0).
pub(crate) fn unscaled(value: f64, factor: f64) -> f64 {
    let raw = (value * factor).round();
    if raw.is_finite() { raw } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn software_major_reads_the_leading_number() {
        assert_eq!(software_major("11.48"), Some(11));
        assert_eq!(software_major("7.1.0H"), Some(7));
        assert_eq!(software_major("19.27"), Some(19));
        assert_eq!(software_major("V21S"), Some(21));
        assert_eq!(software_major(" 10.08"), Some(10));
        assert_eq!(software_major("3.3.0"), Some(3));
        assert_eq!(software_major(""), None);
        assert_eq!(software_major("abc"), None);
        assert_eq!(software_major("99999999"), None);
    }

    #[test]
    fn detection_splits_at_major_11() {
        assert_eq!(Variant::detect("10.08"), Some(Variant::Jk02_24s));
        assert_eq!(Variant::detect("10.99"), Some(Variant::Jk02_24s));
        assert_eq!(Variant::detect("11.00"), Some(Variant::Jk02_32s));
        assert_eq!(Variant::detect("11.288H"), Some(Variant::Jk02_32s));
        assert_eq!(Variant::detect("V21S"), Some(Variant::Jk02_32s));
        // JK04 cannot be told apart: it looks like an old JK02_24S.
        assert_eq!(Variant::detect("3.3.0"), Some(Variant::Jk02_24s));
        assert_eq!(Variant::detect("?"), None);
    }

    #[test]
    fn variant_names_round_trip() {
        for v in Variant::ALL {
            assert_eq!(v.as_str().parse::<Variant>(), Ok(v));
            assert_eq!(v.as_str().to_uppercase().parse::<Variant>(), Ok(v));
        }
        assert!("jk05".parse::<Variant>().is_err());
    }

    #[test]
    fn frame_new_checks_everything() {
        let good = FrameBuilder::new().finish(FrameType::CellInfo, 7);
        let bytes = *good.as_bytes();
        assert_eq!(Frame::new(&bytes), Ok(good.clone()));
        assert_eq!(good.counter(), 7);

        assert_eq!(Frame::new(&bytes[..299]), Err(FrameError::Length(299)));
        let mut bad = bytes;
        bad[0] = 0xAA;
        assert!(matches!(Frame::new(&bad), Err(FrameError::Header(_))));
        let mut bad = bytes;
        bad[100] ^= 1;
        assert!(matches!(Frame::new(&bad), Err(FrameError::Checksum { .. })));
        let mut bad = bytes;
        bad[4] = 0x04;
        bad[299] = bad[299].wrapping_add(2);
        assert_eq!(Frame::new(&bad), Err(FrameError::Type(4)));
    }

    #[test]
    fn strings_stop_at_nul_and_are_cut_to_the_field() {
        let mut b = FrameBuilder::new();
        b.string(10, 8, "0123456789");
        b.string(20, 8, "ab");
        b.string(30, 2, "aé"); // 'é' is 2 bytes: cut before it, not inside
        let f = b.finish(FrameType::DeviceInfo, 0);
        assert_eq!(f.string(10, 8), "01234567");
        assert_eq!(f.string(20, 8), "ab");
        assert_eq!(f.string(30, 2), "a");
    }
}
