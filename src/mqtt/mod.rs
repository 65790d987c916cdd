//! The MQTT and Home Assistant surface: topics, payloads, discovery,
//! command parsing and the connection. Knows nothing of device protocols.

pub mod commands;
pub mod connection;
pub mod control_entities;
pub mod devices;
pub mod discovery;
pub mod outbox;
pub mod payloads;
pub mod publish;
pub mod router;
pub mod settings;
pub mod topics;

pub use topics::Topics;
