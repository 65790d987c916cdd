//! energy2mqtt: JK-BMS batteries, Deye inverters and Tapo plugs on MQTT,
//! with Home Assistant discovery. See docs/ for the user-facing contract.

pub mod app;
pub mod bridge;
pub mod broker;
pub mod clock;
pub mod config;
pub mod control;
pub mod core;
pub mod drivers;
pub mod health;
pub mod https;
pub mod memory;
pub mod model;
pub mod mqtt;
pub mod push;
pub mod signals;
pub mod sim;
pub mod storage;
#[cfg(test)]
mod testing;
