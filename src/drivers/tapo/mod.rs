//! TP-Link Tapo P100/P110 plugs over their local KLAP protocol.

pub mod api;
pub mod klap;
