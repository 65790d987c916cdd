//! The identity block: family detection and the static facts of an
//! inverter.

use serde_json::{Map, Value as Json};
use thiserror::Error;

use super::{DecodeError, Family, Registers, SINGLE_PHASE_LV, number_json, read_int, word};
use crate::model::{FieldSpec, round};

/// Why register 0 does not select a supported family.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FamilyError {
    #[error("device type 0x{code:04X} is a {kind}, not supported yet")]
    Unsupported { code: u16, kind: &'static str },
    #[error("unknown device type 0x{0:04X}")]
    Unknown(u16),
}

/// Picks the family from register 0 (as ha-solarman does).
pub fn detect_family(reg0: u16) -> Result<&'static Family, FamilyError> {
    if SINGLE_PHASE_LV.device_types.contains(&reg0) {
        return Ok(&SINGLE_PHASE_LV);
    }
    let kind = match reg0 {
        0x0005 | 0x0500 => "three-phase LV hybrid (SG04LP3)",
        0x0006 | 0x0601 | 0x0602 => "three-phase HV hybrid",
        0x0002 => "string inverter",
        0x0004 | 0x0400 => "micro-inverter",
        0x0103 => "off-grid inverter",
        0x0104 => "storage inverter",
        // Sunsynk and ha-solarman disagree on this one; refusing is the only
        // safe answer until someone brings a register dump.
        0x0200 => "single-phase LV hybrid with 3 MPPTs or a string inverter (sources disagree)",
        _ => return Err(FamilyError::Unknown(reg0)),
    };
    Err(FamilyError::Unsupported { code: reg0, kind })
}

/// Static facts about one inverter.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub device_type: u16,
    /// [`Family::name`]; `detect_family(device_type)` gives the family.
    pub family: &'static str,
    pub inverter_serial: String,
    pub rated_power_w: f64,
    pub mppts: u8,
    pub phases: u8,
    /// Four nibbles, e.g. 0x0104.
    pub protocol_version: u16,
    pub fw_control_board: String,
    pub fw_comm_board: String,
    pub modbus_address: u16,
}

impl Identity {
    /// A model label for the HA device, e.g. "SUN-5K single-phase LV
    /// hybrid". The SGxx suffix is not in any register, so it is left out
    /// rather than guessed.
    pub fn model_name(&self) -> String {
        let kw = round(self.rated_power_w / 1000.0, 1);
        if kw > 0.0 {
            format!("SUN-{}K {}", number_json(kw), self.family)
        } else {
            format!("Deye {}", self.family)
        }
    }

    /// Values for the keys of [`identity_fields`].
    pub fn to_map(&self) -> Map<String, Json> {
        let mut map = Map::new();
        map.insert(
            "device_type".into(),
            format!("0x{:04X}", self.device_type).into(),
        );
        map.insert("family".into(), self.family.into());
        map.insert(
            "inverter_serial".into(),
            self.inverter_serial.clone().into(),
        );
        map.insert("rated_power".into(), number_json(self.rated_power_w));
        map.insert("mppts".into(), self.mppts.into());
        map.insert("phases".into(), self.phases.into());
        map.insert(
            "protocol_version".into(),
            format!("0x{:04X}", self.protocol_version).into(),
        );
        map.insert(
            "fw_control_board".into(),
            self.fw_control_board.clone().into(),
        );
        map.insert("fw_comm_board".into(), self.fw_comm_board.clone().into());
        map.insert("modbus_address".into(), self.modbus_address.into());
        map
    }
}

/// Discovery descriptions of [`Identity::to_map`]'s keys, all diagnostic.
pub fn identity_fields(family: &Family) -> Vec<FieldSpec> {
    let diag = |key, name| FieldSpec {
        diagnostic: true,
        ..FieldSpec::sensor(key, name)
    };
    vec![
        diag("device_type", "Device type"),
        diag("family", "Family"),
        diag("inverter_serial", "Inverter serial"),
        FieldSpec {
            precision: Some(0),
            ..family.rated_power.field_spec()
        },
        diag("mppts", "MPPTs"),
        diag("phases", "Phases"),
        diag("protocol_version", "Protocol version"),
        diag("fw_control_board", "Control board firmware"),
        diag("fw_comm_board", "Communication board firmware"),
        diag("modbus_address", "Modbus address"),
    ]
}

fn ascii_serial(regs: &Registers, addrs: &[u16]) -> Result<String, DecodeError> {
    let mut bytes = Vec::with_capacity(addrs.len() * 2);
    for &addr in addrs {
        bytes.extend_from_slice(&word(regs, addr)?.to_be_bytes());
    }
    // The serial ends up in MQTT topics and HA unique ids: keep it ASCII.
    let text: String = bytes
        .iter()
        .map(|&b| {
            if b == 0 || b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect();
    Ok(text.trim_matches(|c| c == '\0' || c == ' ').to_owned())
}

fn hex_words(regs: &Registers, addrs: &[u16]) -> Result<String, DecodeError> {
    let mut parts = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        parts.push(format!("{:04X}", word(regs, addr)?));
    }
    Ok(parts.join("-"))
}

/// Decodes the identity block (0..22 for the single-phase family). The
/// family comes from register 0, so an unsupported inverter fails here with
/// a message naming its type.
pub fn decode_identity(regs: &Registers) -> Result<Identity, DecodeError> {
    let device_type = word(regs, 0)?;
    let family = detect_family(device_type)?;
    let layout = &family.layout;
    let rated = &family.rated_power;
    let rated_power_w = round(
        read_int(regs, rated.addrs, rated.signed)? as f64 * rated.scale,
        rated.decimals,
    );
    let mppt_phases = word(regs, layout.mppt_phases)?;
    Ok(Identity {
        device_type,
        family: family.name,
        inverter_serial: ascii_serial(regs, layout.serial)?,
        rated_power_w,
        mppts: ((mppt_phases >> 8) & 0x0F) as u8,
        phases: (mppt_phases & 0x0F) as u8,
        protocol_version: word(regs, layout.protocol_version)?,
        fw_control_board: hex_words(regs, layout.fw_control_board)?,
        fw_comm_board: hex_words(regs, layout.fw_comm_board)?,
        modbus_address: word(regs, layout.modbus_address)?,
    })
}
