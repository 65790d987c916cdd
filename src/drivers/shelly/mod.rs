//! Shelly Gen2/Gen3 plugs (Plus Plug S, Plug S Gen3, any single-switch
//! Gen2+ device) over their local HTTP RPC: `GET /rpc/<Method>`, with
//! SHA-256 digest authentication when the device has a password.

pub mod client;
pub mod digest;
pub mod rpc;
pub mod task;

pub use client::{ShellyClient, ShellyError};
pub use task::{ShellyLink, fields, spawn};

/// The port a Shelly's HTTP server listens on unless configured.
pub const DEFAULT_PORT: u16 = 80;
