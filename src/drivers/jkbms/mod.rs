//! JK-BMS batteries over Bluetooth LE: the pure codec. No I/O here; the BLE
//! transport and the task build on it, and so does the simulator.
//!
//! * [`command`]: the 20-byte host → BMS commands (`0x97` device info,
//!   `0x96` settings + cell-info stream); writes only with an explicit
//!   [`command::WritesEnabled`] token that nothing creates yet.
//! * [`assembler`]: notifications → 300-byte frames, resynchronising over
//!   cut frames, merged frames, `AT\r\n` floods and ready records, with
//!   bounded memory and counters of what it dropped.
//! * [`frame`]: frame validation, [`Variant`] and its detection.
//! * [`cell_info`], [`settings`], [`device_info`]: typed decoders and the
//!   encoders the simulator uses.
//! * [`publish`]: discovery fields and the JSON state object.
//! * [`StreamDecoder`] ties variant detection to decoding for the driver;
//!   [`decode_any`] is the `energy2mqtt decode jkbms` entry point.
//!
//! Protocol reference: `/work/shared/specs/jkbms-ble.md`.

pub mod assembler;
pub mod cell_info;
pub mod command;
pub mod device_info;
pub mod frame;
pub mod link;
pub mod publish;
pub mod settings;
pub mod task;

#[cfg(test)]
mod vector_tests;

use std::fmt;

use serde_json::{Value, json};
use thiserror::Error;

pub use assembler::{Assembler, AssemblerStats};
pub use cell_info::{CellInfo, is_consistent};
pub use device_info::DeviceInfo;
pub use frame::{Frame, FrameError, FrameType, Variant};
pub use publish::{PackShape, fields};
pub use settings::Settings;

impl fmt::Display for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the variant in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VariantSource {
    /// The `variant` config option (or the CLI's override).
    Configured,
    /// The software version of the device-info frame.
    DeviceInfo,
    /// The only JK02 layout whose pack voltage matches its cells; used
    /// while no device-info frame has been seen.
    Layout,
}

impl VariantSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Configured => "configured",
            Self::DeviceInfo => "device_info",
            Self::Layout => "layout",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("expected a {expected} frame, got {got}")]
    FrameType { expected: FrameType, got: FrameType },
    #[error(
        "the JK-BMS protocol variant is unknown: no device-info frame yet and the frame does not tell; set the pack's variant (jk02_24s, jk02_32s or jk04)"
    )]
    VariantUnknown,
    #[error(
        "the cell-info frame does not read as {variant} ({}): its pack voltage does not match its cells; {}",
        origin.as_str(),
        if *origin == VariantSource::Configured { "check the pack's variant setting" } else { "set the pack's variant (JK04 packs are never detected)" }
    )]
    Inconsistent {
        variant: Variant,
        origin: VariantSource,
    },
    #[error(
        "no valid JK-BMS frame in {bytes} bytes ({bad_checksums} frame(s) with a bad checksum, {junk_bytes} junk bytes)"
    )]
    NoFrame {
        bytes: usize,
        bad_checksums: u64,
        junk_bytes: u64,
    },
}

/// A frame decoded by [`StreamDecoder`].
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    CellInfo(CellInfo),
    Settings(Settings),
    DeviceInfo(DeviceInfo),
    /// Logbook frames are recognised but not decoded (optional in the
    /// spec, and the bridge does not request them).
    Logbook {
        counter: u8,
    },
}

/// Decodes the frames of one pack in arrival order, tracking the variant:
/// the configured one if any, else the one the device-info frame's software
/// version implies, else (until that frame comes) the JK02 layout the cell
/// frame itself fits. Cell frames that do not fit the variant in force are
/// rejected with [`DecodeError::Inconsistent`], never published.
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    configured: Option<Variant>,
    device_info: Option<DeviceInfo>,
}

impl StreamDecoder {
    pub fn new(configured: Option<Variant>) -> Self {
        Self {
            configured,
            device_info: None,
        }
    }

    /// The last device-info frame seen.
    pub fn device_info(&self) -> Option<&DeviceInfo> {
        self.device_info.as_ref()
    }

    /// The variant in force, `None` while it is not known yet.
    pub fn variant(&self) -> Option<(Variant, VariantSource)> {
        if let Some(v) = self.configured {
            return Some((v, VariantSource::Configured));
        }
        self.device_info
            .as_ref()
            .and_then(DeviceInfo::detected_variant)
            .map(|v| (v, VariantSource::DeviceInfo))
    }

    /// The variant in force, or the layout `frame` fits if exactly one
    /// JK02 layout does.
    pub fn variant_for(&self, frame: &Frame) -> Option<(Variant, VariantSource)> {
        self.variant().or_else(|| {
            let mut fits = [Variant::Jk02_24s, Variant::Jk02_32s]
                .into_iter()
                .filter(|&v| is_consistent(frame, v));
            match (fits.next(), fits.next()) {
                (Some(v), None) => Some((v, VariantSource::Layout)),
                _ => None,
            }
        })
    }

    fn software_major(&self) -> Option<u16> {
        self.device_info
            .as_ref()
            .and_then(DeviceInfo::software_major)
    }

    pub fn decode(&mut self, frame: &Frame) -> Result<Decoded, DecodeError> {
        match frame.frame_type() {
            FrameType::DeviceInfo => {
                let info = DeviceInfo::decode(frame)?;
                self.device_info = Some(info.clone());
                Ok(Decoded::DeviceInfo(info))
            }
            FrameType::CellInfo => {
                let (variant, source) =
                    self.variant_for(frame).ok_or(DecodeError::VariantUnknown)?;
                if !is_consistent(frame, variant) {
                    return Err(DecodeError::Inconsistent {
                        variant,
                        origin: source,
                    });
                }
                CellInfo::decode(frame, variant, self.software_major()).map(Decoded::CellInfo)
            }
            FrameType::Settings => {
                let (variant, _) = self.variant().ok_or(DecodeError::VariantUnknown)?;
                Settings::decode(frame, variant).map(Decoded::Settings)
            }
            FrameType::Logbook => Ok(Decoded::Logbook {
                counter: frame.counter(),
            }),
        }
    }
}

/// `energy2mqtt decode jkbms HEX|FILE`: every frame in `bytes` (one frame
/// or a raw notification stream with junk around it) as JSON, in stream
/// order. `variant` overrides detection; otherwise a device-info frame
/// anywhere in the input decides it for all frames. A frame that cannot be
/// decoded gets an `error` member instead of failing the rest; a cell frame
/// that does not fit the variant is still shown, with `consistent: false`.
/// Errors only when no frame at all is found.
pub fn decode_any(bytes: &[u8], variant: Option<Variant>) -> Result<Vec<Value>, DecodeError> {
    let mut assembler = Assembler::new();
    let mut frames = Vec::new();
    assembler.feed(bytes, |f| frames.push(f));
    if frames.is_empty() {
        let stats = assembler.stats();
        return Err(DecodeError::NoFrame {
            bytes: bytes.len(),
            bad_checksums: stats.bad_checksums,
            junk_bytes: stats.junk_bytes + assembler.buffered() as u64,
        });
    }
    let mut decoder = StreamDecoder::new(variant);
    // The device-info frame usually comes first, but a capture may start
    // mid-stream; its answer applies to the whole capture.
    if let Some(info) = frames
        .iter()
        .find(|f| f.frame_type() == FrameType::DeviceInfo)
    {
        let _ = decoder.decode(info);
    }
    Ok(frames.iter().map(|f| frame_json(&mut decoder, f)).collect())
}

fn set_variant(obj: &mut serde_json::Map<String, Value>, v: Variant, s: VariantSource) {
    obj.insert("variant".into(), v.as_str().into());
    obj.insert("variant_source".into(), s.as_str().into());
}

fn frame_json(decoder: &mut StreamDecoder, frame: &Frame) -> Value {
    let mut out = json!({
        "frame": frame.frame_type().as_str(),
        "counter": frame.counter(),
    });
    let Some(obj) = out.as_object_mut() else {
        return out;
    };
    match decoder.decode(frame) {
        Ok(Decoded::CellInfo(info)) => {
            if let Some((v, s)) = decoder.variant_for(frame) {
                set_variant(obj, v, s);
            }
            obj.insert("consistent".into(), true.into());
            obj.insert("values".into(), Value::Object(info.to_map()));
        }
        Ok(Decoded::Settings(settings)) => {
            if let Some((v, s)) = decoder.variant() {
                set_variant(obj, v, s);
            }
            obj.insert("values".into(), settings.to_json());
        }
        Ok(Decoded::DeviceInfo(info)) => {
            if let Some(v) = info.detected_variant() {
                obj.insert("detected_variant".into(), v.as_str().into());
            }
            obj.insert("values".into(), info.to_json());
        }
        Ok(Decoded::Logbook { .. }) => {}
        Err(e @ DecodeError::Inconsistent { variant: v, origin }) => {
            set_variant(obj, v, origin);
            obj.insert("consistent".into(), false.into());
            obj.insert("error".into(), e.to_string().into());
            if let Ok(info) = CellInfo::decode(frame, v, decoder.software_major()) {
                obj.insert("values".into(), Value::Object(info.to_map()));
            }
        }
        Err(e) => {
            obj.insert("error".into(), e.to_string().into());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::jkbms::cell_info::Cell;

    fn cell_frame(variant: Variant) -> Frame {
        let mut m = CellInfo::new(variant);
        m.cells = (1..=8)
            .map(|n| Cell {
                number: n,
                voltage: 3.31,
                resistance: 60.0,
            })
            .collect();
        m.pack_voltage = 26.48;
        m.current = Some(1.5);
        m.encode().unwrap()
    }

    fn device_frame(sw: &str) -> Frame {
        let mut d = DeviceInfo::example();
        d.software_version = sw.into();
        d.encode()
    }

    #[test]
    fn stream_decoder_detects_from_device_info_then_checks_cells() {
        let mut d = StreamDecoder::new(None);
        assert_eq!(d.variant(), None);
        // Before the device info: the layout decides.
        let f32s = cell_frame(Variant::Jk02_32s);
        assert_eq!(
            d.variant_for(&f32s),
            Some((Variant::Jk02_32s, VariantSource::Layout))
        );
        assert!(matches!(d.decode(&f32s), Ok(Decoded::CellInfo(_))));
        let settings = Settings::example(Variant::Jk02_32s).encode().unwrap();
        assert_eq!(d.decode(&settings), Err(DecodeError::VariantUnknown));

        assert!(matches!(
            d.decode(&device_frame("19.27")),
            Ok(Decoded::DeviceInfo(_))
        ));
        assert_eq!(
            d.variant(),
            Some((Variant::Jk02_32s, VariantSource::DeviceInfo))
        );
        assert!(matches!(d.decode(&settings), Ok(Decoded::Settings(_))));
        // A 24S frame now is rejected, not misread.
        assert_eq!(
            d.decode(&cell_frame(Variant::Jk02_24s)),
            Err(DecodeError::Inconsistent {
                variant: Variant::Jk02_32s,
                origin: VariantSource::DeviceInfo
            })
        );
    }

    #[test]
    fn configured_variant_wins() {
        let mut d = StreamDecoder::new(Some(Variant::Jk02_24s));
        let _ = d.decode(&device_frame("19.27"));
        assert_eq!(
            d.variant(),
            Some((Variant::Jk02_24s, VariantSource::Configured))
        );
        let err = d.decode(&cell_frame(Variant::Jk02_32s)).unwrap_err();
        assert!(
            err.to_string().contains("check the pack's variant"),
            "{err}"
        );
    }

    #[test]
    fn decode_any_reads_a_stream_with_junk_in_any_order() {
        let mut stream = b"AT\r\n".to_vec();
        stream.extend_from_slice(cell_frame(Variant::Jk02_32s).as_bytes());
        stream.extend_from_slice(&command::ack_record());
        stream.extend_from_slice(device_frame("11.48").as_bytes());
        stream.extend_from_slice(
            Settings::example(Variant::Jk02_32s)
                .encode()
                .unwrap()
                .as_bytes(),
        );
        let out = decode_any(&stream, None).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0]["frame"], "cell_info");
        assert_eq!(out[0]["variant"], "jk02_32s");
        assert_eq!(out[0]["variant_source"], "device_info");
        assert_eq!(out[0]["values"]["cell_count"], 8);
        assert_eq!(out[0]["values"]["power"], 39.72);
        assert_eq!(out[1]["frame"], "device_info");
        assert_eq!(out[1]["detected_variant"], "jk02_32s");
        assert_eq!(out[2]["values"]["nominal_capacity"], 280);

        // A wrong override is shown, flagged.
        let out = decode_any(
            cell_frame(Variant::Jk02_32s).as_bytes(),
            Some(Variant::Jk02_24s),
        )
        .unwrap();
        assert_eq!(out[0]["consistent"], false);
        assert!(out[0]["error"].as_str().unwrap().contains("jk02_24s"));
    }

    #[test]
    fn decode_any_without_a_frame_says_what_it_saw() {
        let mut bad = *cell_frame(Variant::Jk02_32s).as_bytes();
        bad[100] ^= 1;
        let err = decode_any(&bad, None).unwrap_err();
        assert_eq!(
            err,
            DecodeError::NoFrame {
                bytes: 300,
                bad_checksums: 1,
                junk_bytes: 300
            }
        );
        assert!(decode_any(b"", None).is_err());
        assert!(decode_any(b"AT\r\n", Some(Variant::Jk04)).is_err());
    }
}

#[cfg(feature = "ble")]
pub mod ble;
#[cfg(feature = "ble")]
mod notify;
#[cfg(feature = "ble")]
mod scan;
