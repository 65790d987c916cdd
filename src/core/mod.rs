//! Pure logic of the bridge: what the bridge knows about each configured
//! device, the overload balancer, alerts, timers, and the arbiter that
//! decides whose wish switches a plug.

pub mod alerts;
pub mod arbiter;
pub mod balancer;
pub mod energy;
pub mod registry;
pub mod site;
pub mod timers;
