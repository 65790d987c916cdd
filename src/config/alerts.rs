//! `[alerts]`: whether the alert rules run, the threshold preset, the
//! timing shared by every rule, and per-rule overrides
//! (`[alerts.rules.<rule id>]`). Rule ids and override values are checked
//! while the file is read, so an error names the exact key
//! (`alerts.rules.soc_low.threshold`). The rules themselves are in
//! `crate::core::alerts` and docs/ALERTS.md.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::duration;
use crate::core::alerts::{self as engine, Level};

/// Chooses the cell-voltage and pack-voltage defaults of the rules.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BatteryChemistry {
    #[default]
    Lifepo4,
    Nmc,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    pub enabled: bool,
    /// Threshold preset of the cell- and pack-voltage rules.
    pub chemistry: BatteryChemistry,
    /// Nothing is raised this long after start, while readings arrive.
    #[serde(with = "duration")]
    pub startup_grace: Duration,
    /// Default repeat window of every rule.
    #[serde(with = "duration")]
    pub repeat_after: Duration,
    /// Default `for` of the `device_unreachable` rule.
    #[serde(with = "duration")]
    pub unreachable_after: Duration,
    /// Per-rule overrides, by rule id.
    #[serde(
        deserialize_with = "deserialize_rules",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub rules: BTreeMap<String, RuleOverride>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            chemistry: BatteryChemistry::Lifepo4,
            startup_grace: Duration::from_secs(180),
            repeat_after: Duration::from_secs(12 * 3600),
            unreachable_after: Duration::from_secs(300),
            rules: BTreeMap::new(),
        }
    }
}

/// `[alerts.rules.<rule id>]`: every key is optional; unset keys keep the
/// rule's default (for the chosen chemistry).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RuleOverride {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hysteresis: Option<f64>,
    /// How long the condition must hold before the alert is raised.
    #[serde(
        rename = "for",
        serialize_with = "serialize_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub for_duration: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<Level>,
    #[serde(
        serialize_with = "serialize_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub repeat_after: Option<Duration>,
}

const OVERRIDE_KEYS: &[&str] = &[
    "enabled",
    "threshold",
    "hysteresis",
    "for",
    "level",
    "repeat_after",
];

/// A rule must not wait longer than this before raising: a condition that
/// has to last a day is not an alert any more.
const MAX_FOR: Duration = Duration::from_secs(24 * 3600);
/// Shorter repeat windows would turn a lasting alert into a stream.
const MIN_REPEAT: Duration = Duration::from_secs(60);

fn serialize_opt_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => duration::serialize(d, s),
        None => s.serialize_none(),
    }
}

/// A custom map visitor rather than `BTreeMap::deserialize`: the key seed
/// rejects unknown rule ids and the value seed knows which rule it reads,
/// so range errors come back from inside the map and the loader's error
/// names `alerts.rules.<id>.<key>`.
fn deserialize_rules<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, RuleOverride>, D::Error> {
    d.deserialize_map(RulesVisitor)
}

struct RulesVisitor;

impl<'de> Visitor<'de> for RulesVisitor {
    type Value = BTreeMap<String, RuleOverride>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table of rule overrides, [alerts.rules.<rule id>]")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(id) = map.next_key_seed(RuleIdSeed)? {
            let o = map.next_value_seed(OverrideSeed { id: &id })?;
            out.insert(id, o);
        }
        Ok(out)
    }
}

struct RuleIdSeed;

impl<'de> DeserializeSeed<'de> for RuleIdSeed {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        let id = String::deserialize(d)?;
        if engine::rule_ids().any(|r| r == id) {
            Ok(id)
        } else {
            Err(de::Error::custom(format!(
                "unknown alert rule `{id}`; expected one of: {}",
                engine::rule_ids().collect::<Vec<_>>().join(", ")
            )))
        }
    }
}

struct OverrideSeed<'a> {
    id: &'a str,
}

impl<'de> DeserializeSeed<'de> for OverrideSeed<'_> {
    type Value = RuleOverride;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RuleOverride, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for OverrideSeed<'_> {
    type Value = RuleOverride;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a table of overrides for the alert rule `{}`", self.id)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RuleOverride, A::Error> {
        let mut o = RuleOverride::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "enabled" => o.enabled = Some(map.next_value()?),
                "threshold" => {
                    o.threshold = Some(map.next_value_seed(Checked {
                        id: self.id,
                        check: engine::check_threshold,
                    })?);
                }
                "hysteresis" => {
                    o.hysteresis = Some(map.next_value_seed(Checked {
                        id: self.id,
                        check: engine::check_hysteresis,
                    })?);
                }
                "for" => {
                    o.for_duration = Some(map.next_value_seed(DurationSeed {
                        check: |d| {
                            (d <= MAX_FOR)
                                .then_some(())
                                .ok_or("must be at most 1d".to_owned())
                        },
                    })?);
                }
                "level" => o.level = Some(map.next_value()?),
                "repeat_after" => {
                    o.repeat_after = Some(map.next_value_seed(DurationSeed {
                        check: |d| {
                            (d >= MIN_REPEAT)
                                .then_some(())
                                .ok_or("must be at least 1m".to_owned())
                        },
                    })?);
                }
                other => return Err(de::Error::unknown_field(other, OVERRIDE_KEYS)),
            }
        }
        Ok(o)
    }
}

/// A number checked against the rule's range by the alert engine.
struct Checked<'a> {
    id: &'a str,
    check: fn(&str, f64) -> Result<(), String>,
}

impl<'de> DeserializeSeed<'de> for Checked<'_> {
    type Value = f64;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<f64, D::Error> {
        // figment reads "0.08" from the environment as an f32 (0.0799999982);
        // no threshold needs more than micro-unit precision.
        let v = (f64::deserialize(d)? * 1e6).round() / 1e6;
        (self.check)(self.id, v).map_err(de::Error::custom)?;
        Ok(v)
    }
}

struct DurationSeed {
    check: fn(Duration) -> Result<(), String>,
}

impl<'de> DeserializeSeed<'de> for DurationSeed {
    type Value = Duration;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Duration, D::Error> {
        let v = duration::deserialize(d)?;
        (self.check)(v).map_err(de::Error::custom)?;
        Ok(v)
    }
}
