//! The driver contract. Each driver speaks one protocol, knows nothing of
//! MQTT, sends [`DriverEvent`]s and takes [`DeviceCommand`](crate::model::DeviceCommand)s.

pub mod deye;
pub mod health;
pub mod inbox;
pub mod jkbms;
pub mod plug_loop;
pub(crate) mod poll;
pub mod shelly;
pub mod tapo;

use std::future::Future;

use tokio::sync::mpsc;
use tracing::Instrument;

/// What a driver reports about one device.
#[derive(Debug, Clone, PartialEq)]
pub enum DriverEvent {
    /// A fresh report (merged into the registry and published retained on
    /// `<base>/<id>` as [`Reading::to_state`](crate::model::Reading::to_state)).
    Readings {
        device: String,
        reading: crate::model::Reading,
    },
    /// The device became reachable or unreachable.
    Availability { device: String, online: bool },
    /// A command could not be carried out.
    CommandFailed { device: String, reason: String },
    /// What the device says it is (model, serial, firmware), learnt after
    /// connecting; the discovery configs are republished with it.
    Identity { device: String, info: DeviceInfo },
    /// The entities a device has, when they depend on the device (a
    /// pack's cell count): the discovery configs are redone with them.
    Fields {
        device: String,
        fields: Vec<crate::model::FieldSpec>,
    },
    /// Something the user must fix (wrong serial, unsupported model): sent
    /// once per episode, published on `bridge/event` as an error.
    Problem { device: String, message: String },
}

/// A device's own description of itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial_number: Option<String>,
    pub sw_version: Option<String>,
    pub hw_version: Option<String>,
}

/// What a driver says of one of its devices for Home Assistant: the
/// device block's defaults until the device has said what it is, extra
/// identifiers, and the entities it has. Vendor knowledge (which model
/// meters, how a pack is identified) lives here, in the drivers; the MQTT
/// layer composes discovery from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Description {
    pub manufacturer: &'static str,
    pub model: &'static str,
    /// Identifiers beside the bridge's own `<base>_<id>`.
    pub identifiers: Vec<String>,
    pub fields: Vec<crate::model::FieldSpec>,
    /// Whether the device has said everything its entities depend on (a
    /// pack its cell count, a Tapo plug its model): until then a retained
    /// config the bridge does not produce is not judged stale.
    pub complete: bool,
}

/// What to assume of a device that has not said its model yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assume {
    /// Only what every model has: no entities that vanish a moment later.
    Common,
    /// Everything a model may have (`energy2mqtt discovery`).
    Any,
}

/// How the bridge reaches the task that owns a device.
#[derive(Debug)]
pub struct DriverHandle {
    /// Shared with the bridge's actuator while a switch waits for the
    /// control state it rests on to reach the disk.
    pub commands: std::sync::Arc<inbox::CommandSender>,
    /// The task itself: at shutdown the bridge waits a moment for it to
    /// release its device (close a TCP connection, disconnect a pack).
    pub task: Option<tokio::task::JoinHandle<()>>,
}

/// Spawns a driver's task in its tracing span, with its command channel.
pub fn spawn_task<F>(
    span: tracing::Span,
    run: impl FnOnce(inbox::CommandInbox) -> F,
) -> DriverHandle
where
    F: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = inbox::channel();
    let task = tokio::spawn(run(rx).instrument(span));
    DriverHandle {
        commands: std::sync::Arc::new(tx),
        task: Some(task),
    }
}

/// A device's reachability as last reported: an event only on change.
#[derive(Debug)]
pub struct Reachability {
    device: String,
    online: Option<bool>,
}

impl Reachability {
    pub fn new(device: &str) -> Self {
        Self {
            device: device.to_owned(),
            online: None,
        }
    }

    pub async fn set(&mut self, events: &mpsc::Sender<DriverEvent>, online: bool) {
        if self.online != Some(online) {
            self.online = Some(online);
            let _ = events
                .send(DriverEvent::Availability {
                    device: self.device.clone(),
                    online,
                })
                .await;
        }
    }
}
