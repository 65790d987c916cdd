//! The device-info frame 0x03 (spec §10): what the pack says it is. Its
//! software version picks the variant (§5).

use serde_json::{Value, json};

use super::DecodeError;
use super::frame::{Frame, FrameBuilder, FrameType, Variant, software_major};
use crate::config::secret::Secret;

mod o {
    pub const MODEL: (usize, usize) = (6, 16);
    pub const HARDWARE: (usize, usize) = (22, 8);
    pub const SOFTWARE: (usize, usize) = (30, 8);
    pub const UPTIME: usize = 38;
    pub const POWER_ON_COUNT: usize = 42;
    pub const DEVICE_NAME: (usize, usize) = (46, 16);
    pub const DEVICE_PASSCODE: (usize, usize) = (62, 16);
    pub const MANUFACTURED: (usize, usize) = (78, 8);
    /// NUL-terminated: up to 15 characters on v19; older firmware puts a
    /// 4-character string after the NUL, which is not part of the serial.
    pub const SERIAL: (usize, usize) = (86, 16);
    pub const USER_DATA: (usize, usize) = (102, 16);
    pub const SETUP_PASSCODE: (usize, usize) = (118, 16);
    pub const USER_DATA_2: (usize, usize) = (134, 16);
}

/// One decoded device-info frame.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    pub counter: u8,
    /// Vendor / model string, e.g. `JK_PB2A16S20P`.
    pub model: String,
    pub hardware_version: String,
    pub software_version: String,
    /// s since power-on.
    pub uptime_s: u32,
    pub power_on_count: u32,
    /// The BLE name, editable in the app.
    pub device_name: String,
    /// Readable by anyone in radio range: kept out of logs and JSON.
    pub device_passcode: Secret,
    /// `YYMMDD` as sent; see [`DeviceInfo::manufacturing_date`].
    pub manufacturing_date_raw: String,
    pub serial_number: String,
    pub user_data: String,
    pub setup_passcode: Secret,
    /// JK02_32S firmware only (software major ≥ 11).
    pub user_data_2: Option<String>,
}

impl DeviceInfo {
    pub fn decode(frame: &Frame) -> Result<Self, DecodeError> {
        if frame.frame_type() != FrameType::DeviceInfo {
            return Err(DecodeError::FrameType {
                expected: FrameType::DeviceInfo,
                got: frame.frame_type(),
            });
        }
        let s = |(at, len)| frame.string(at, len);
        let software_version = s(o::SOFTWARE);
        let wide = software_major(&software_version).is_some_and(|m| m >= 11);
        Ok(Self {
            counter: frame.counter(),
            model: s(o::MODEL),
            hardware_version: s(o::HARDWARE),
            software_version,
            uptime_s: frame.u32(o::UPTIME),
            power_on_count: frame.u32(o::POWER_ON_COUNT),
            device_name: s(o::DEVICE_NAME),
            device_passcode: Secret::new(s(o::DEVICE_PASSCODE)),
            manufacturing_date_raw: s(o::MANUFACTURED),
            serial_number: s(o::SERIAL),
            user_data: s(o::USER_DATA),
            setup_passcode: Secret::new(s(o::SETUP_PASSCODE)),
            user_data_2: wide.then(|| s(o::USER_DATA_2)),
        })
    }

    /// The frame the simulator sends for `0x97`.
    pub fn encode(&self) -> Frame {
        let mut b = FrameBuilder::new();
        for ((at, len), v) in [
            (o::MODEL, self.model.as_str()),
            (o::HARDWARE, self.hardware_version.as_str()),
            (o::SOFTWARE, self.software_version.as_str()),
            (o::DEVICE_NAME, self.device_name.as_str()),
            (o::DEVICE_PASSCODE, self.device_passcode.expose()),
            (o::MANUFACTURED, self.manufacturing_date_raw.as_str()),
            (o::SERIAL, self.serial_number.as_str()),
            (o::USER_DATA, self.user_data.as_str()),
            (o::SETUP_PASSCODE, self.setup_passcode.expose()),
            (o::USER_DATA_2, self.user_data_2.as_deref().unwrap_or("")),
        ] {
            b.string(at, len, v);
        }
        b.u32(o::UPTIME, self.uptime_s);
        b.u32(o::POWER_ON_COUNT, self.power_on_count);
        b.finish(FrameType::DeviceInfo, self.counter)
    }

    /// A JK-PB pack on 19.x firmware: the simulator's default identity.
    pub fn example() -> Self {
        Self {
            counter: 0,
            model: "JK_PB2A16S20P".into(),
            hardware_version: "19A".into(),
            software_version: "19.27".into(),
            uptime_s: 553_800,
            power_on_count: 11,
            device_name: "JK-sim".into(),
            device_passcode: Secret::new("1234"),
            manufacturing_date_raw: "250524".into(),
            serial_number: "503214849000643".into(),
            user_data: "JK-BMS".into(),
            setup_passcode: Secret::new("000000"),
            user_data_2: Some("JK-BMS".into()),
        }
    }

    /// `YYMMDD` as `20YY-MM-DD`; `None` when the field is not six digits
    /// (JK04 leaves it empty).
    pub fn manufacturing_date(&self) -> Option<String> {
        let d = self.manufacturing_date_raw.as_bytes();
        if d.len() != 6 || !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let part = |r: std::ops::Range<usize>| self.manufacturing_date_raw.get(r).unwrap_or("");
        Some(format!("20{}-{}-{}", part(0..2), part(2..4), part(4..6)))
    }

    pub fn software_major(&self) -> Option<u16> {
        software_major(&self.software_version)
    }

    /// [`Variant::detect`] on the software version.
    pub fn detected_variant(&self) -> Option<Variant> {
        Variant::detect(&self.software_version)
    }

    /// What the bridge's HA device block shows.
    pub fn identity(&self) -> crate::drivers::DeviceInfo {
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        crate::drivers::DeviceInfo {
            manufacturer: Some("JK BMS (Jikong)".into()),
            model: non_empty(&self.model),
            serial_number: non_empty(&self.serial_number),
            sw_version: non_empty(&self.software_version),
            // HA's device registry has no manufacturing date; the hardware
            // version is where users look for such facts.
            hw_version: match (non_empty(&self.hardware_version), self.manufacturing_date()) {
                (Some(hw), Some(date)) => Some(format!("{hw} (made {date})")),
                (hw, None) => hw,
                (None, Some(date)) => Some(format!("made {date}")),
            },
        }
    }

    /// Everything but the passcodes, for `energy2mqtt decode`.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "model": self.model,
            "hardware_version": self.hardware_version,
            "software_version": self.software_version,
            "uptime_s": self.uptime_s,
            "power_on_count": self.power_on_count,
            "device_name": self.device_name,
            "manufacturing_date": self.manufacturing_date(),
            "serial_number": self.serial_number,
            "user_data": self.user_data,
        });
        if let (Some(map), Some(u2)) = (v.as_object_mut(), &self.user_data_2) {
            map.insert("user_data_2".into(), u2.clone().into());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_views() {
        let mut d = DeviceInfo::example();
        d.counter = 3;
        let f = d.encode();
        let back = DeviceInfo::decode(&f).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.manufacturing_date().as_deref(), Some("2025-05-24"));
        assert_eq!(back.detected_variant(), Some(Variant::Jk02_32s));
        let json = back.to_json().to_string();
        assert!(!json.contains("1234") && !json.contains("000000"), "{json}");
        assert!(!format!("{back:?}").contains("1234"));
        assert_eq!(
            back.identity().serial_number.as_deref(),
            Some("503214849000643")
        );
    }

    #[test]
    fn old_firmware_has_no_user_data_2_and_odd_dates_are_none() {
        let mut d = DeviceInfo::example();
        d.software_version = "10.07".into();
        d.user_data_2 = None;
        d.manufacturing_date_raw = String::new();
        let back = DeviceInfo::decode(&d.encode()).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.manufacturing_date(), None);
        assert_eq!(back.detected_variant(), Some(Variant::Jk02_24s));
        assert!(back.to_json().get("user_data_2").is_none());
    }

    #[test]
    fn long_strings_are_cut_to_their_fields() {
        let mut d = DeviceInfo::example();
        d.serial_number = "0123456789ABCDEFGHIJ".into();
        let back = DeviceInfo::decode(&d.encode()).unwrap();
        assert_eq!(back.serial_number, "0123456789ABCDEF");
        assert_eq!(back.user_data, "JK-BMS");
    }
}
