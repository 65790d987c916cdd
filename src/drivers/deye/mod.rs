//! Deye hybrid inverters: the Solarman V5 envelope, Modbus RTU frames, the
//! register map, the three transports and the poll task that ties them
//! together.

pub mod registers;
pub mod rtu;
pub mod task;
pub mod transport;
pub mod v5;

use crate::model::FieldSpec;

/// Every field an inverter's state object can hold, for discovery: the
/// register map's own plus the driver's diagnostics.
/// An inverter for discovery: its entities do not depend on what it says.
pub fn describe() -> crate::drivers::Description {
    crate::drivers::Description {
        manufacturer: "Deye",
        model: "Hybrid inverter",
        identifiers: Vec::new(),
        fields: fields(),
        complete: true,
    }
}

pub fn fields() -> Vec<FieldSpec> {
    let mut out = registers::fields(&registers::SINGLE_PHASE_LV);
    // Serials and firmware go into the HA device block; of the identity
    // only the rating is worth an entity (the balancer's limit comes from it).
    out.extend(
        registers::identity_fields(&registers::SINGLE_PHASE_LV)
            .into_iter()
            .filter(|f| f.key == "rated_power"),
    );
    let diag = |key, name| FieldSpec {
        diagnostic: true,
        ..FieldSpec::sensor(key, name)
    };
    out.extend([
        FieldSpec {
            state_class: Some("total_increasing"),
            ..diag("link_errors", "Link errors")
        },
        FieldSpec {
            state_class: Some("total_increasing"),
            ..diag("samples_rejected", "Samples rejected")
        },
        FieldSpec {
            state_class: Some("total_increasing"),
            ..diag("polls_failed", "Polls failed")
        },
        FieldSpec {
            unit: Some("ms"),
            device_class: Some("duration"),
            state_class: Some("measurement"),
            ..diag("poll_ms", "Poll duration")
        },
    ]);
    out
}
