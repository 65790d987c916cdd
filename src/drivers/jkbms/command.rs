//! Host → BMS command frames (spec §3): always 20 bytes,
//! `AA 55 90 EB`, register, payload length, payload, zero filler, checksum.
//!
//! Reading needs only [`Request`]. Writes change what the battery does
//! (MOSFETs, balancer, heater), so [`WriteCommand`] can only be built with a
//! [`WritesEnabled`] token; nothing in the app creates one yet.

use thiserror::Error;

use super::frame::{Variant, checksum};

pub const COMMAND_LEN: usize = 20;
pub const COMMAND_HEADER: [u8; 4] = [0xAA, 0x55, 0x90, 0xEB];
/// Bytes 6…18 can hold a payload.
pub const MAX_PAYLOAD: usize = 13;
/// The register of the ready/ack record the BMS sends after a command.
pub const ACK_REGISTER: u8 = 0xC8;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("a JK-BMS command is exactly {COMMAND_LEN} bytes, got {0}")]
    Length(usize),
    #[error("a JK-BMS command starts with AA 55 90 EB")]
    Header,
    #[error("JK-BMS command checksum mismatch: byte 19 is {got:#04x}, expected {computed:#04x}")]
    Checksum { computed: u8, got: u8 },
    #[error("JK-BMS command payload length {0} is over {MAX_PAYLOAD}")]
    PayloadLength(usize),
    #[error("{switch:?} cannot be switched on a {variant} BMS")]
    Unsupported { switch: Switch, variant: Variant },
}

/// The read requests. They change nothing on the BMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `0x97`: device-info frame 0x03 (plus, on most firmware, a ready
    /// record). Send it first: some firmware streams no cell info
    /// otherwise (esphome-jk-bms #1020).
    DeviceInfo,
    /// `0x96`: one settings frame 0x01, then cell-info frames 0x02 about
    /// twice a second for as long as the link lasts.
    CellInfo,
    /// `0xA1`: logbook frame 0x05 (JK02_32S).
    Logbook,
}

impl Request {
    pub const fn register(self) -> u8 {
        match self {
            Self::DeviceInfo => 0x97,
            Self::CellInfo => 0x96,
            Self::Logbook => 0xA1,
        }
    }

    pub fn encode(self) -> [u8; COMMAND_LEN] {
        build(self.register(), &[])
    }

    pub fn from_register(register: u8) -> Option<Self> {
        [Self::DeviceInfo, Self::CellInfo, Self::Logbook]
            .into_iter()
            .find(|r| r.register() == register)
    }
}

/// The checksummed 20 bytes; the filler stays zero as in esphome, aiobmsble
/// and batmon-ha (the official app's random filler is ignored by the BMS).
fn build(register: u8, payload: &[u8]) -> [u8; COMMAND_LEN] {
    let mut out = [0u8; COMMAND_LEN];
    if let Some(h) = out.get_mut(..4) {
        h.copy_from_slice(&COMMAND_HEADER);
    }
    let payload = payload.get(..MAX_PAYLOAD).unwrap_or(payload);
    if let Some([reg, len, rest @ ..]) = out.get_mut(4..COMMAND_LEN - 1) {
        *reg = register;
        *len = payload.len() as u8;
        if let Some(dst) = rest.get_mut(..payload.len()) {
            dst.copy_from_slice(payload);
        }
    }
    if let Some((sum, body)) = out.split_last_mut() {
        *sum = checksum(body);
    }
    out
}

/// A command as the BMS receives it: for the simulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub register: u8,
    pub payload: Vec<u8>,
}

impl Command {
    /// Checks length, header and checksum (over the filler too: the app's
    /// random filler is covered by its checksum).
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        let bytes: &[u8; COMMAND_LEN] = bytes
            .try_into()
            .map_err(|_| FrameError::Length(bytes.len()))?;
        let [h0, h1, h2, h3, register, len, rest @ ..] = bytes;
        if [*h0, *h1, *h2, *h3] != COMMAND_HEADER {
            return Err(FrameError::Header);
        }
        let (got, body) = bytes.split_last().ok_or(FrameError::Length(bytes.len()))?;
        let computed = checksum(body);
        if computed != *got {
            return Err(FrameError::Checksum {
                computed,
                got: *got,
            });
        }
        let len = usize::from(*len);
        let payload = rest
            .get(..len)
            .filter(|_| len <= MAX_PAYLOAD)
            .ok_or(FrameError::PayloadLength(len))?;
        Ok(Self {
            register: *register,
            payload: payload.to_vec(),
        })
    }

    /// The read request this is, if it is one.
    pub fn request(&self) -> Option<Request> {
        Request::from_register(self.register)
    }
}

/// The 20-byte ready record `AA 55 90 EB C8 01 01 00…00 44` that answers a
/// command; the simulator sends it, the assembler skips it.
pub fn ack_record() -> [u8; COMMAND_LEN] {
    build(ACK_REGISTER, &[0x01])
}

/// Proof that the user explicitly enabled writes to this BMS.
///
/// Writes switch the MOSFETs, the balancer or the heater of a battery:
/// a wrong one can cut power to a house or stop charging in winter. The
/// reference projects split on it (aiobmsble refuses writes for safety,
/// esphome-jk-bms and batmon-ha offer them), so energy2mqtt keeps them off
/// until a config option exists. **Nothing in the app creates this token
/// yet**; only code that has checked such an option may call
/// [`WritesEnabled::user_opted_in`].
#[derive(Debug)]
pub struct WritesEnabled(());

impl WritesEnabled {
    /// Only after checking the user's explicit opt-in for this device.
    pub fn user_opted_in() -> Self {
        Self(())
    }
}

/// The switches we know how to write (spec §3.2). The settings frame shows
/// the result: re-request it with [`Request::CellInfo`] after a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    Charging,
    Discharging,
    Balancer,
    /// JK02_32S only.
    Heating,
    /// JK-PB (JK02_32S) only.
    ChargingFloatMode,
}

/// A write to the BMS. Construction requires [`WritesEnabled`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteCommand {
    bytes: [u8; COMMAND_LEN],
}

impl WriteCommand {
    /// Switch on or off. Registers and payload lengths differ per variant;
    /// a switch the variant lacks is an error, not a guess.
    pub fn switch(
        _writes: &WritesEnabled,
        variant: Variant,
        switch: Switch,
        on: bool,
    ) -> Result<Self, FrameError> {
        let value = u32::from(on).to_le_bytes();
        let (register, payload): (u8, &[u8]) = match (variant, switch) {
            (Variant::Jk02_24s | Variant::Jk02_32s, Switch::Charging) => (0x1D, &value),
            (Variant::Jk02_24s | Variant::Jk02_32s, Switch::Discharging) => (0x1E, &value),
            (Variant::Jk02_24s | Variant::Jk02_32s, Switch::Balancer) => (0x1F, &value),
            (Variant::Jk02_32s, Switch::Heating) => (0x27, &value),
            (Variant::Jk02_32s, Switch::ChargingFloatMode) => (0x30, &value),
            (Variant::Jk04, Switch::Balancer) => (0x6C, &[u8::from(on)]),
            _ => return Err(FrameError::Unsupported { switch, variant }),
        };
        Ok(Self {
            bytes: build(register, payload),
        })
    }

    pub fn register(&self) -> u8 {
        self.bytes.get(4).copied().unwrap_or_default()
    }

    pub fn encode(&self) -> [u8; COMMAND_LEN] {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::hex;

    #[test]
    fn read_requests_match_the_spec_sanity_values() {
        assert_eq!(
            Request::DeviceInfo.encode().to_vec(),
            hex("aa5590eb97000000000000000000000000000011")
        );
        assert_eq!(
            Request::CellInfo.encode().to_vec(),
            hex("aa5590eb96000000000000000000000000000010")
        );
        assert_eq!(
            Request::Logbook.encode().to_vec(),
            hex("aa5590eba100000000000000000000000000001b")
        );
    }

    #[test]
    fn writes_match_the_spec_sanity_value() {
        let token = WritesEnabled::user_opted_in();
        let on = WriteCommand::switch(&token, Variant::Jk02_32s, Switch::Charging, true).unwrap();
        assert_eq!(
            on.encode().to_vec(),
            hex("aa5590eb1d04010000000000000000000000009c")
        );
        assert_eq!(on.register(), 0x1D);
        let jk04 = WriteCommand::switch(&token, Variant::Jk04, Switch::Balancer, true).unwrap();
        assert_eq!(
            jk04.encode().to_vec(),
            hex("aa5590eb6c0101000000000000000000000000e8")
        );
        assert_eq!(
            WriteCommand::switch(&token, Variant::Jk02_24s, Switch::Heating, true),
            Err(FrameError::Unsupported {
                switch: Switch::Heating,
                variant: Variant::Jk02_24s
            })
        );
        assert!(WriteCommand::switch(&token, Variant::Jk04, Switch::Charging, false).is_err());
    }

    #[test]
    fn ack_record_is_the_one_the_bms_sends() {
        // Spec §2: AA 55 90 EB C8 01 01 00…00 44.
        let ack = ack_record();
        assert_eq!(ack[..7], [0xAA, 0x55, 0x90, 0xEB, 0xC8, 0x01, 0x01]);
        assert!(ack[7..19].iter().all(|&b| b == 0));
        assert_eq!(ack[19], 0x44);
    }

    #[test]
    fn command_decode_checks_and_round_trips() {
        for r in [Request::DeviceInfo, Request::CellInfo, Request::Logbook] {
            let c = Command::decode(&r.encode()).unwrap();
            assert_eq!(c.request(), Some(r));
            assert!(c.payload.is_empty());
        }
        let token = WritesEnabled::user_opted_in();
        let w = WriteCommand::switch(&token, Variant::Jk02_32s, Switch::ChargingFloatMode, true)
            .unwrap();
        let c = Command::decode(&w.encode()).unwrap();
        assert_eq!((c.register, c.payload), (0x30, vec![1, 0, 0, 0]));

        let mut bad = Request::CellInfo.encode();
        bad[10] = 1;
        assert!(matches!(
            Command::decode(&bad),
            Err(FrameError::Checksum { .. })
        ));
        assert_eq!(Command::decode(&bad[..19]), Err(FrameError::Length(19)));
        let mut bad = Request::CellInfo.encode();
        bad[0] = 0;
        assert_eq!(Command::decode(&bad), Err(FrameError::Header));
        let mut bad = Request::CellInfo.encode();
        bad[5] = 14;
        bad[19] = bad[19].wrapping_add(14);
        assert_eq!(Command::decode(&bad), Err(FrameError::PayloadLength(14)));
    }
}
