//! The `site` device: several inverters' key powers added up, for users
//! with parallel or separate inverters who want one figure per flow.

use serde_json::{Map, Value};

use crate::model::{FieldSpec, InverterReading};

/// The summed fields: each inverter publishes them with the same key.
/// Reads one flow of an inverter.
type Flow = fn(&InverterReading) -> f64;

const SUMMED: [(&str, Flow); 4] = [
    ("pv_power", |i| i.pv_power_w),
    ("load_power", |i| i.load_power_w),
    ("battery_power", |i| i.battery_power_w),
    ("grid_power", |i| i.grid_power_w),
];

/// How the site device's fields are presented.
pub fn fields() -> Vec<FieldSpec> {
    let power = |key, name| FieldSpec {
        unit: Some("W"),
        device_class: Some("power"),
        state_class: Some("measurement"),
        precision: Some(0),
        ..FieldSpec::sensor(key, name)
    };
    vec![
        power("pv_power", "PV power"),
        power("load_power", "Load power"),
        power("battery_power", "Battery power"),
        power("grid_power", "Grid power"),
        FieldSpec {
            diagnostic: true,
            ..FieldSpec::sensor("inverters_reporting", "Inverters reporting")
        },
    ]
}

/// Sums over the inverters given (those online with readings). A field
/// none of them has (not a finite number) is left out rather than
/// reported as 0.
pub fn totals<'a>(inverters: impl IntoIterator<Item = &'a InverterReading>) -> Map<String, Value> {
    let mut sums = [None::<f64>; SUMMED.len()];
    let mut reporting = 0u64;
    for inverter in inverters {
        reporting += 1;
        for (sum, (_, get)) in sums.iter_mut().zip(SUMMED) {
            let v = get(inverter);
            if v.is_finite() {
                *sum = Some(sum.unwrap_or(0.0) + v);
            }
        }
    }
    let mut out = Map::new();
    for (sum, (key, _)) in sums.iter().zip(SUMMED) {
        if let Some(v) = sum {
            out.insert((*key).to_owned(), Value::from(v.round()));
        }
    }
    out.insert("inverters_reporting".into(), reporting.into());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inverter(v: Value) -> InverterReading {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn sums_each_flow_and_keeps_signs() {
        let a = inverter(
            json!({"pv_power": 1200, "load_power": 800, "battery_power": -300, "grid_power": -100}),
        );
        let b = inverter(
            json!({"pv_power": 300.4, "load_power": 2500, "battery_power": 1500, "grid_power": 700}),
        );
        let t = totals([&a, &b]);
        assert_eq!(t["pv_power"], json!(1500.0));
        assert_eq!(t["load_power"], json!(3300.0));
        assert_eq!(t["battery_power"], json!(1200.0));
        assert_eq!(t["grid_power"], json!(600.0));
        assert_eq!(t["inverters_reporting"], json!(2));
    }

    #[test]
    fn a_field_nobody_has_is_left_out() {
        // Typed readings always carry the four powers; one that is not a
        // number is what "nobody has it" means now.
        let a = InverterReading {
            pv_power_w: 10.0,
            grid_power_w: f64::NAN,
            ..InverterReading::default()
        };
        let t = totals([&a]);
        assert_eq!(t["pv_power"], json!(10.0));
        assert!(t.get("grid_power").is_none());
        let none = totals(std::iter::empty());
        assert_eq!(none["inverters_reporting"], json!(0));
    }
}
