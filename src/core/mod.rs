//! Pure logic of the bridge. For now: what the bridge knows about each
//! configured device. The balancer, alerts and timers join it here.

pub mod energy;
pub mod registry;
pub mod site;
