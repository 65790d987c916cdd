//! Pure logic of the bridge: what the bridge knows about each configured
//! device, and the overload balancer. Alerts and timers join it here.

pub mod alerts;
pub mod balancer;
pub mod energy;
pub mod registry;
pub mod site;
pub mod timers;
