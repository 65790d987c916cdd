//! Deye hybrid inverters: the Solarman V5 envelope, Modbus RTU frames, the
//! register map, and the poll task that ties them together.

pub mod registers;
pub mod rtu;
pub mod v5;
