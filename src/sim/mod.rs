//! Protocol-faithful device simulators for `energy2mqtt demo` and the tests.

pub mod deye_model;
pub mod solarman;
pub mod demo;
