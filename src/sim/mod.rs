//! Protocol-faithful device simulators for `energy2mqtt demo` and the tests.

pub mod demo;
pub mod deye_model;
pub mod jkbms;
pub mod modbus;
pub mod shelly;
pub mod solarman;
pub mod tapo;
