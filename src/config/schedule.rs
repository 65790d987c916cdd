//! A plug's time-of-day schedule in the configuration (`[[plug]] schedule`):
//! `{ on = "07:00", off = "08:30", days = ["mon", "fri"] }`. Times and
//! days are checked while the file is read, so an error names the exact
//! key (`plug[0].schedule[1].on`). What the entries do is in
//! `crate::core::timers` and docs/TIMERS.md.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::PlugConfig;

/// A wall-clock time in the local time zone, to the minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay(u16);

impl TimeOfDay {
    pub const MINUTES_PER_DAY: u16 = 24 * 60;

    pub fn new(hour: u8, minute: u8) -> Option<Self> {
        (hour < 24 && minute < 60).then(|| Self(u16::from(hour) * 60 + u16::from(minute)))
    }

    pub fn from_minute_of_day(minute: u16) -> Option<Self> {
        (minute < Self::MINUTES_PER_DAY).then_some(Self(minute))
    }

    pub fn minute_of_day(self) -> u16 {
        self.0
    }

    /// `"7:05"` and `"07:05"`; nothing else, so that `"7.05"` or `"7pm"`
    /// are rejected rather than guessed at.
    pub fn parse(input: &str) -> Result<Self, String> {
        let bad = || format!("\"{input}\" is not a time of day (HH:MM)");
        let (h, m) = input.trim().split_once(':').ok_or_else(bad)?;
        let digits = |s: &str, max_len: usize| {
            !s.is_empty() && s.len() <= max_len && s.bytes().all(|b| b.is_ascii_digit())
        };
        if !digits(h, 2) || !digits(m, 2) || m.len() != 2 {
            return Err(bad());
        }
        let hour: u8 = h.parse().map_err(|_| bad())?;
        let minute: u8 = m.parse().map_err(|_| bad())?;
        Self::new(hour, minute).ok_or_else(bad)
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

impl Serialize for TimeOfDay {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Other(serde::de::IgnoredAny),
        }
        match Raw::deserialize(d)? {
            Raw::Text(t) => Self::parse(&t).map_err(serde::de::Error::custom),
            Raw::Other(_) => Err(serde::de::Error::custom(
                "expected a time of day in quotes, e.g. \"07:30\"",
            )),
        }
    }
}

/// Days of the week, Monday first (ISO 8601).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    pub const ALL: [Weekday; 7] = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ];

    /// 0 for Monday … 6 for Sunday.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(i: usize) -> Self {
        Self::ALL[i % 7]
    }

    pub fn name(self) -> &'static str {
        ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][self.index()]
    }

    pub fn prev(self) -> Self {
        Self::from_index(self.index() + 6)
    }

    /// Accepts `mon` and `monday` in any case: both are what people write.
    pub fn parse(input: &str) -> Result<Self, String> {
        let s = input.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|d| {
                let full = [
                    "monday",
                    "tuesday",
                    "wednesday",
                    "thursday",
                    "friday",
                    "saturday",
                    "sunday",
                ][d.index()];
                s == d.name() || s == full
            })
            .ok_or_else(|| {
                format!("\"{input}\" is not a weekday (mon, tue, wed, thu, fri, sat, sun)")
            })
    }
}

impl fmt::Display for Weekday {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Weekday {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Weekday {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One entry of a plug's `schedule`. `off` earlier than `on` means the
/// window runs over midnight; `days` name the day a window *starts*, so
/// `{ on = "22:00", off = "06:00", days = ["fri"] }` ends on Saturday.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawSchedule")]
pub struct Schedule {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on: Option<TimeOfDay>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub off: Option<TimeOfDay>,
    pub days: Vec<Weekday>,
}

impl Schedule {
    /// Whether the entry switches on the given day (`on`), or at the
    /// window's end (`off`), which is the next day over midnight.
    pub fn runs_on(&self, day: Weekday) -> bool {
        self.days.contains(&day)
    }

    pub fn over_midnight(&self) -> bool {
        matches!((self.on, self.off), (Some(on), Some(off)) if off < on)
    }
}

/// What the file holds; [`Schedule`] is what survives the checks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    #[serde(default)]
    on: Option<TimeOfDay>,
    #[serde(default)]
    off: Option<TimeOfDay>,
    #[serde(default)]
    days: Option<Vec<Weekday>>,
}

impl TryFrom<RawSchedule> for Schedule {
    type Error = String;

    fn try_from(raw: RawSchedule) -> Result<Self, String> {
        if raw.on.is_none() && raw.off.is_none() {
            return Err("a schedule entry needs `on`, `off` or both".into());
        }
        if raw.on.is_some() && raw.on == raw.off {
            return Err("`on` and `off` are the same time".into());
        }
        let days = match raw.days {
            None => Weekday::ALL.to_vec(),
            Some(d) if d.is_empty() => {
                return Err("`days` is empty; leave it out for every day".into());
            }
            Some(mut d) => {
                d.sort();
                d.dedup();
                d
            }
        };
        Ok(Self {
            on: raw.on,
            off: raw.off,
            days,
        })
    }
}

/// Defaults of the PV-surplus keys of `[[plug]]`.
pub fn default_surplus_off_w() -> f64 {
    0.0
}
pub fn default_surplus_for() -> Duration {
    Duration::from_secs(120)
}

/// Checks across the surplus keys of one plug that serde cannot express,
/// as (key below `plug[i]`, reason). Meant for `validate`.
pub fn check_plug(plug: &PlugConfig) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let watts = |v: f64| v.is_finite() && v.abs() <= 100_000.0;
    if let Some(on) = plug.surplus_on_w {
        if !watts(on) {
            out.push((
                "surplus_on_w",
                "must be between -100000 and 100000 W".into(),
            ));
        } else if plug.surplus_off_w >= on {
            // Equal or crossed thresholds would switch the plug on and off
            // every `surplus_for`.
            out.push((
                "surplus_off_w",
                format!("must be below surplus_on_w ({on} W), or the plug would flap"),
            ));
        }
    }
    if !watts(plug.surplus_off_w) {
        out.push((
            "surplus_off_w",
            "must be between -100000 and 100000 W".into(),
        ));
    }
    if plug.surplus_for > Duration::from_secs(24 * 3600) {
        out.push(("surplus_for", "must be at most 1d".into()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_and_print() {
        assert_eq!(
            TimeOfDay::parse("07:05").map(|t| t.minute_of_day()),
            Ok(425)
        );
        assert_eq!(TimeOfDay::parse("7:05").map(|t| t.minute_of_day()), Ok(425));
        assert_eq!(
            TimeOfDay::parse("23:59").map(|t| t.to_string()),
            Ok("23:59".into())
        );
        for bad in [
            "25:00", "24:00", "7:5", "07:60", "7", "", "7.05", "-1:00", "07:05:00", "+7:05",
        ] {
            let e = TimeOfDay::parse(bad).unwrap_err();
            assert!(e.contains("is not a time of day (HH:MM)"), "{bad}: {e}");
        }
    }

    #[test]
    fn weekdays_parse_short_and_long() {
        assert_eq!(Weekday::parse("mon"), Ok(Weekday::Mon));
        assert_eq!(Weekday::parse("Sunday"), Ok(Weekday::Sun));
        assert!(
            Weekday::parse("funday")
                .unwrap_err()
                .contains("is not a weekday")
        );
        assert_eq!(Weekday::Mon.prev(), Weekday::Sun);
    }

    #[test]
    fn schedule_entries_are_checked() {
        let parse = |s: &str| toml::from_str::<Schedule>(s).map_err(|e| e.to_string());
        let s = parse("on = \"22:00\"\noff = \"06:00\"").unwrap();
        assert!(s.over_midnight());
        assert_eq!(s.days, Weekday::ALL.to_vec());
        assert!(
            parse("days = [\"mon\"]")
                .unwrap_err()
                .contains("needs `on`, `off`")
        );
        assert!(
            parse("on = \"07:00\"\noff = \"07:00\"")
                .unwrap_err()
                .contains("same time")
        );
        assert!(
            parse("on = \"07:00\"\ndays = []")
                .unwrap_err()
                .contains("empty")
        );
        assert!(
            parse("on = \"07:00\"\nat = \"x\"")
                .unwrap_err()
                .contains("unknown field")
        );
    }
}
