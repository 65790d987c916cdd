//! The BlueZ transport for JK-BMS packs, through `bluer` (BlueZ's own
//! bindings). btleplug cannot be used: it keeps only the first
//! characteristic per UUID, and the newer JK BLE module has two `FFE1`s
//! (spec `jkbms-ble.md` §1, §14).
//!
//! One [`BleLink`] is one connected pack: it was seen advertising, is
//! connected (and paired if asked), has its write and notify
//! characteristics found and is subscribed. Frames are not touched here;
//! the codec turns the notification bytes into frames.
//!
//! Notifications are taken through `AcquireNotify` (a socket from
//! bluetoothd) rather than `StartNotify` + `PropertiesChanged`: it costs no
//! D-Bus message per notification, and bluetoothd closes the socket when the
//! link goes, which is how [`BleLink::recv`] learns of a link loss.

use std::time::Duration;

use bluer::agent::{Agent, AgentHandle};
use bluer::gatt::remote::{Characteristic, CharacteristicWriteRequest};
use bluer::gatt::{CharacteristicFlags, CharacteristicReader, WriteOp};
use bluer::{
    Adapter, Address, Device, DiscoveryFilter, DiscoveryTransport, ErrorKind, InternalErrorKind,
    Session, Uuid,
};
use thiserror::Error;
use tokio::time::{Instant, sleep, timeout};

use super::notify::{Got, NotifySocket};
pub use super::scan::{Seen, scan};

/// The JK service (16-bit `0xFFE0`).
pub const SERVICE_FFE0: Uuid = Uuid::from_u128(0x0000ffe0_0000_1000_8000_00805f9b34fb);
/// The JK data characteristic (16-bit `0xFFE1`), once or twice per service.
pub const CHARACTERISTIC_FFE1: Uuid = Uuid::from_u128(0x0000ffe1_0000_1000_8000_00805f9b34fb);
/// Manufacturer-data company ids JK modules advertise (spec §1).
pub const JK_MANUFACTURER_IDS: [u16; 2] = [0x0B65, 0x4B4A];

/// How often a scan looks whether the pack has been seen. Polling instead
/// of following BlueZ's events: an RSSI change that lands between
/// subscribing and listing the known devices would otherwise be missed.
const SEEN_POLL: Duration = Duration::from_millis(100);
/// While no notification comes, how often [`BleLink::recv`] asks BlueZ
/// whether the link is still up (a safety net; the closed notify socket is
/// the normal signal).
const LINK_CHECK: Duration = Duration::from_secs(2);
/// After the first notification of a burst, how long the rest of it may
/// arrive before [`BleLink::recv`] reads: a 300-byte frame comes as about
/// fifteen 20-byte notifications within a few connection intervals, and
/// reading them together is one wake-up instead of fifteen (issue 15). A
/// frame is then at most this much later, against a 1 s publish interval.
const BURST: Duration = Duration::from_millis(40);
/// Writes are 20-byte commands; BlueZ's own D-Bus timeout is 120 s, far too
/// long to notice a wedged link.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach one pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BleOptions {
    pub mac: Address,
    /// Pair (bond) before connecting: needed by firmware ≥ 19.30 / V21,
    /// which drops unbonded hosts right after service discovery.
    pub pair: bool,
    /// How long to scan for the pack's advertisement before giving up.
    pub scan_timeout: Duration,
    /// Limit for the connection itself, for pairing and for service
    /// discovery (each).
    pub connect_timeout: Duration,
    /// How long [`connect_gate`] stays closed after this pack's connection
    /// attempt *failed*, so a struggling adapter is not handed the next
    /// pack's attempt at once. After a success the gate opens as soon as
    /// the link is up: BlueZ still never sees two connects at once.
    pub failure_pause: Duration,
}

impl BleOptions {
    pub fn new(mac: Address) -> Self {
        Self {
            mac,
            pair: false,
            scan_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(20),
            failure_pause: Duration::from_secs(2),
        }
    }

    /// Options for a MAC written as text (`C8:47:8C:12:34:56`).
    pub fn parse(mac: &str) -> Result<Self, BleError> {
        Ok(Self::new(parse_mac(mac)?))
    }
}

/// A MAC address as text, or what is wrong with it.
pub fn parse_mac(mac: &str) -> Result<Address, BleError> {
    mac.trim()
        .parse()
        .map_err(|_| BleError::BadAddress(mac.to_string()))
}

#[derive(Debug, Error)]
pub enum BleError {
    #[error(
        "cannot reach BlueZ on the system D-Bus ({0}); is bluetoothd running? In a container, mount /run/dbus/system_bus_socket"
    )]
    NoBluez(String),
    #[error(
        "BlueZ refused access ({0}); run as root or as a user the BlueZ D-Bus policy allows (usually group `bluetooth`)"
    )]
    PermissionDenied(String),
    #[error(
        "no Bluetooth adapter found; check `bluetoothctl list` and that the adapter is not rfkill-blocked"
    )]
    NoAdapter,
    #[error(
        "the Bluetooth adapter {adapter} is off and could not be powered on ({reason}); run `bluetoothctl power on` and check `rfkill list`"
    )]
    AdapterOff { adapter: String, reason: String },
    #[error("{0:?} is not a Bluetooth address; write it like C8:47:8C:12:34:56")]
    BadAddress(String),
    #[error(
        "JK-BMS {mac} was not seen within {secs:.0} s of scanning; check that it is powered and in range and that no phone app or other host is connected to it (the BMS takes one connection at a time)",
        secs = waited.as_secs_f64()
    )]
    NotFound { mac: Address, waited: Duration },
    #[error("connecting to JK-BMS failed: {0}")]
    Connect(String),
    #[error(
        "JK-BMS {mac} has no FFE0 service; BlueZ may hold a stale service cache: run `bluetoothctl remove {mac}` and let the bridge reconnect"
    )]
    NoService { mac: Address },
    #[error("JK-BMS FFE0 service is incomplete: {0}")]
    NoCharacteristic(String),
    #[error("pairing with JK-BMS failed: {0}")]
    Pairing(String),
    #[error("JK-BMS {mac}: the link is gone; connect again")]
    NotConnected { mac: Address },
    #[error("writing to JK-BMS {mac} got no answer from BlueZ within {} s; the link is probably wedged: disconnect and connect again", WRITE_TIMEOUT.as_secs())]
    WriteTimeout { mac: Address },
    #[error("BlueZ: {0}")]
    Bluez(#[from] bluer::Error),
}

impl BleError {
    /// Errors about reaching BlueZ at all get their own advice; the rest
    /// stay BlueZ errors.
    fn from_session(e: bluer::Error) -> Self {
        if let ErrorKind::Internal(InternalErrorKind::DBus(name)) = &e.kind {
            match name.as_str() {
                "org.freedesktop.DBus.Error.ServiceUnknown"
                | "org.freedesktop.DBus.Error.NameHasNoOwner"
                | "org.freedesktop.DBus.Error.NoServer"
                | "org.freedesktop.DBus.Error.FileNotFound"
                | "org.freedesktop.DBus.Error.Disconnected" => {
                    return Self::NoBluez(e.to_string());
                }
                "org.freedesktop.DBus.Error.AccessDenied" => {
                    return Self::PermissionDenied(e.to_string());
                }
                _ => {}
            }
        }
        Self::Bluez(e)
    }
}

/// A session to BlueZ on the system bus, with errors that say what to fix.
pub async fn open_session() -> Result<Session, BleError> {
    Session::new().await.map_err(BleError::from_session)
}

/// BlueZ answers `InProgress` to overlapping connection attempts and some
/// adapters wedge under them (spec §13.2): every [`BleLink::connect`] holds
/// this lock from its `Connect` until the link is ready (plus
/// [`BleOptions::failure_pause`] when the attempt failed). Scanning happens outside it, so a pack that
/// never shows up does not hold up the others.
pub fn connect_gate() -> &'static tokio::sync::Mutex<()> {
    static GATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    &GATE
}

/// One connected pack.
pub struct BleLink {
    mac: Address,
    device: Device,
    writer: Characteristic,
    write_op: WriteOp,
    /// `None` once the link is known to be gone.
    notify: Option<NotifySocket>,
}

impl std::fmt::Debug for BleLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BleLink")
            .field("mac", &self.mac)
            .field("write_char", &self.writer.id())
            .field("write_op", &self.write_op)
            .field("up", &self.notify.is_some())
            .finish()
    }
}

impl BleLink {
    /// Scans until the pack is seen (or `scan_timeout`), then, holding
    /// [`connect_gate`]: pairs first if `opts.pair` (through an agent
    /// registered for the session: NoInputNoOutput, i.e. just-works; JK
    /// modules have no PIN), connects, waits for service discovery, finds
    /// FFE0 with its writing and its notifying FFE1 (one characteristic on
    /// the older module, two on the newer) and subscribes before anything
    /// is written. On failure the pack is disconnected again, so it stays
    /// free for the phone app.
    pub async fn connect(session: &Session, opts: &BleOptions) -> Result<Self, BleError> {
        let adapter = default_adapter(session).await?;
        let device = adapter.device(opts.mac)?;
        wait_until_seen(&adapter, &device, opts).await?;

        let guard = connect_gate().lock().await;
        let result = establish(session, &device, opts).await;
        if result.is_err() {
            // Leave nothing half-open: a connected BMS refuses everybody else.
            let _ = timeout(DISCONNECT_TIMEOUT, device.disconnect()).await;
        }
        if result.is_ok() {
            // The next pack connects as soon as this one is up (issue 15:
            // a fixed 2 s pause put the second pack's first state at 3.5 s).
            drop(guard);
        } else {
            let pause = opts.failure_pause;
            tokio::spawn(async move {
                sleep(pause).await;
                drop(guard);
            });
        }
        let (writer, write_op, reader) = result?;
        let notify = NotifySocket::new(reader)
            .map_err(|e| BleError::Connect(format!("the notify socket: {e}")))?;
        tracing::info!(
            mac = %opts.mac,
            write_char = writer.id(),
            ?write_op,
            "JK-BMS connected and subscribed"
        );
        Ok(Self {
            mac: opts.mac,
            device,
            writer,
            write_op,
            notify: Some(notify),
        })
    }

    pub fn mac(&self) -> Address {
        self.mac
    }

    /// Writes one command frame: without response if the characteristic
    /// allows only that, else with response (so BlueZ reports failures).
    pub async fn write(&mut self, frame: &[u8]) -> Result<(), BleError> {
        if self.notify.is_none() {
            return Err(BleError::NotConnected { mac: self.mac });
        }
        let req = CharacteristicWriteRequest {
            op_type: self.write_op,
            ..Default::default()
        };
        match timeout(WRITE_TIMEOUT, self.writer.write_ext(frame, &req)).await {
            Err(_) => Err(BleError::WriteTimeout { mac: self.mac }),
            Ok(Err(e)) if is_link_gone(&e) => {
                self.notify = None;
                Err(BleError::NotConnected { mac: self.mac })
            }
            Ok(r) => Ok(r?),
        }
    }

    /// The next notification's bytes; `None` once the link is gone (and
    /// from then on). Cancel-safe: nothing is lost when the future is
    /// dropped before it completes.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        loop {
            match self.notify.as_mut()?.recv_one(LINK_CHECK).await {
                Got::Bytes(bytes) => return Some(bytes),
                Got::Closed => break,
                Got::Quiet if !self.connected().await => break,
                Got::Quiet => {}
            }
        }
        self.lost()
    }

    /// The bytes of every notification of a burst, in order, read together
    /// once the burst has had [`BURST`] to arrive (the session's reader:
    /// one wake-up per burst instead of one per notification, see
    /// [`super::notify`]); `None` once the link is gone (and from then
    /// on). Cancel-safe like [`Self::recv`].
    pub async fn recv_burst(&mut self) -> Option<Vec<u8>> {
        loop {
            match self.notify.as_mut()?.recv_burst(LINK_CHECK, BURST).await {
                Got::Bytes(bytes) => return Some(bytes),
                Got::Closed => break,
                Got::Quiet if !self.connected().await => break,
                Got::Quiet => {}
            }
        }
        self.lost()
    }

    /// BlueZ's view, asked when no notification came for a while (a safety
    /// net; the closed notify socket is the normal signal).
    async fn connected(&self) -> bool {
        matches!(self.device.is_connected().await, Ok(true))
    }

    fn lost(&mut self) -> Option<Vec<u8>> {
        if self.notify.take().is_some() {
            tracing::info!(mac = %self.mac, "JK-BMS link lost");
        }
        None
    }

    /// Closes the notification socket and disconnects, so the BMS is free
    /// for the phone app or the next connection. Dropping a `BleLink`
    /// without this leaves the link up until BlueZ or the pack ends it.
    pub async fn disconnect(mut self) {
        self.notify = None;
        match timeout(DISCONNECT_TIMEOUT, self.device.disconnect()).await {
            Ok(Ok(())) => tracing::info!(mac = %self.mac, "JK-BMS disconnected"),
            Ok(Err(e)) => tracing::debug!(mac = %self.mac, error = %e, "JK-BMS disconnect"),
            Err(_) => tracing::warn!(mac = %self.mac, "JK-BMS disconnect got no answer from BlueZ"),
        }
    }
}

pub(super) async fn default_adapter(session: &Session) -> Result<Adapter, BleError> {
    let adapter = match session.default_adapter().await {
        Ok(a) => a,
        Err(e) if e.kind == ErrorKind::NotFound => return Err(BleError::NoAdapter),
        Err(e) => return Err(BleError::from_session(e)),
    };
    if !adapter.is_powered().await.map_err(BleError::from_session)? {
        tracing::info!(
            adapter = adapter.name(),
            "powering the Bluetooth adapter on"
        );
        if let Err(e) = adapter.set_powered(true).await {
            return Err(BleError::AdapterOff {
                adapter: adapter.name().to_string(),
                reason: e.to_string(),
            });
        }
    }
    Ok(adapter)
}

/// Starts (or joins) LE discovery; it runs as long as the returned value
/// lives. The value is a stream of events nobody reads: seeing a device is
/// decided by polling (see [`SEEN_POLL`]).
pub(super) async fn start_discovery(adapter: &Adapter) -> Result<impl Sized + use<>, BleError> {
    let filter = DiscoveryFilter {
        transport: DiscoveryTransport::Le,
        ..Default::default()
    };
    // Fails with DiscoveryActive while another scan of this session runs;
    // that scan's filter is the same, so carrying on is right.
    let _ = adapter.set_discovery_filter(filter).await;
    Ok(adapter.discover_devices().await?)
}

/// Returns once BlueZ has a fresh advertisement from the pack (an RSSI),
/// or at once if BlueZ is still connected to it (a connected BMS does not
/// advertise; a link left over from an earlier run is reused).
async fn wait_until_seen(
    adapter: &Adapter,
    device: &Device,
    opts: &BleOptions,
) -> Result<(), BleError> {
    if device.is_connected().await.unwrap_or(false) {
        tracing::debug!(mac = %opts.mac, "JK-BMS already connected in BlueZ; no scan");
        return Ok(());
    }
    let started = Instant::now();
    let deadline = started + opts.scan_timeout;
    let discovery = start_discovery(adapter).await?;
    loop {
        // Errors mean BlueZ has no such device (yet).
        if matches!(device.rssi().await, Ok(Some(_))) {
            tracing::debug!(mac = %opts.mac, after = ?started.elapsed(), "JK-BMS seen");
            drop(discovery);
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(BleError::NotFound {
                mac: opts.mac,
                waited: opts.scan_timeout,
            });
        }
        sleep(SEEN_POLL.min(deadline - now)).await;
    }
}

type Ready = (Characteristic, WriteOp, CharacteristicReader);

/// Everything between "seen" and "subscribed", run under the gate.
async fn establish(
    session: &Session,
    device: &Device,
    opts: &BleOptions,
) -> Result<Ready, BleError> {
    let mac = opts.mac;
    let secs = opts.connect_timeout.as_secs_f64();
    if opts.pair && !device.is_paired().await? {
        pair(session, device, opts).await?;
    }
    if !device.is_connected().await? {
        match timeout(opts.connect_timeout, device.connect()).await {
            Err(_) => {
                return Err(BleError::Connect(format!(
                    "{mac}: no connection within {secs:.0} s; the pack may be out of range or busy with another host"
                )));
            }
            Ok(Err(e)) if e.kind == ErrorKind::AlreadyConnected => {}
            Ok(Err(e)) if e.kind == ErrorKind::InProgress => {
                return Err(BleError::Connect(format!(
                    "{mac}: BlueZ is busy with another connection attempt ({e}); another program may be connecting at the same time"
                )));
            }
            Ok(Err(e)) => {
                return Err(BleError::Connect(format!(
                    "{mac}: {e}; if this repeats, close the phone app, move the adapter closer or power-cycle the BMS's BLE module"
                )));
            }
            Ok(Ok(())) => {}
        }
    }
    let services = match timeout(opts.connect_timeout, device.services()).await {
        Err(_) => {
            return Err(BleError::Connect(format!(
                "{mac}: services not discovered within {secs:.0} s; try `bluetoothctl remove {mac}` to clear BlueZ's cache"
            )));
        }
        Ok(Err(e)) if e.kind == ErrorKind::ServicesUnresolved => {
            let hint = if opts.pair {
                "the pack dropped the link during service discovery"
            } else {
                "the pack dropped the link during service discovery; firmware 19.30+ / V21 does this to hosts that have not paired: set `pair = true` for this pack"
            };
            return Err(BleError::Connect(format!("{mac}: {hint}")));
        }
        Ok(r) => r?,
    };

    let mut service = None;
    for s in services {
        if s.uuid().await? == SERVICE_FFE0 {
            service = Some(s);
            break;
        }
    }
    let service = service.ok_or(BleError::NoService { mac })?;

    let mut ffe1: Vec<(Characteristic, CharacteristicFlags)> = Vec::new();
    for c in service.characteristics().await? {
        if c.uuid().await? == CHARACTERISTIC_FFE1 {
            let flags = c.flags().await?;
            ffe1.push((c, flags));
        }
    }
    // BlueZ lists objects in no particular order; the handle order keeps
    // the choice stable when both characteristics could serve.
    ffe1.sort_by_key(|(c, _)| c.id());
    let (writer, wflags) = ffe1
        .iter()
        .find(|(_, f)| f.write || f.write_without_response)
        .cloned()
        .ok_or_else(|| {
            BleError::NoCharacteristic(format!(
                "{mac}: no FFE1 characteristic that can be written ({} FFE1 found)",
                ffe1.len()
            ))
        })?;
    let (notifier, _) = ffe1
        .iter()
        .find(|(_, f)| f.notify)
        .cloned()
        .ok_or_else(|| {
            BleError::NoCharacteristic(format!(
                "{mac}: no FFE1 characteristic that notifies ({} FFE1 found)",
                ffe1.len()
            ))
        })?;
    let write_op = if wflags.write {
        WriteOp::Request
    } else {
        WriteOp::Command
    };
    tracing::debug!(
        %mac,
        write_char = writer.id(),
        notify_char = notifier.id(),
        "JK-BMS characteristics"
    );
    // Subscribing first: the answer to the first command must not be missed.
    let reader = notifier.notify_io().await?;
    Ok((writer, write_op, reader))
}

async fn pair(session: &Session, device: &Device, opts: &BleOptions) -> Result<(), BleError> {
    let mac = opts.mac;
    // Held for the pairing only. BlueZ allows one agent per D-Bus client, so
    // a second registration (another pack pairing right after, before the
    // previous unregistration went out) answers AlreadyExists: an agent of
    // ours is in place then, which is all pairing needs.
    let _agent: Option<AgentHandle> = match session.register_agent(Agent::default()).await {
        Ok(h) => Some(h),
        Err(e) if e.kind == ErrorKind::AlreadyExists => None,
        Err(e) => {
            return Err(BleError::Pairing(format!(
                "{mac}: registering an agent: {e}"
            )));
        }
    };
    tracing::info!(%mac, "pairing with JK-BMS");
    match timeout(opts.connect_timeout, device.pair()).await {
        Err(_) => Err(BleError::Pairing(format!(
            "{mac}: no answer within {:.0} s",
            opts.connect_timeout.as_secs_f64()
        ))),
        Ok(Err(e)) if e.kind == ErrorKind::AlreadyExists => Ok(()),
        Ok(Err(e)) => {
            let hint = match e.kind {
                ErrorKind::AuthenticationCanceled
                | ErrorKind::AuthenticationRejected
                | ErrorKind::AuthenticationFailed => {
                    "the BMS refused to bond; some firmware (e.g. 19.05) rejects pairing: set `pair = false` for this pack"
                }
                _ => "check that the pack is in range and not connected elsewhere",
            };
            Err(BleError::Pairing(format!("{mac}: {e}; {hint}")))
        }
        Ok(Ok(())) => {
            // Trusted: BlueZ then accepts the pack's reconnections and
            // security requests without asking an agent again.
            if let Err(e) = device.set_trusted(true).await {
                tracing::warn!(%mac, error = %e, "could not mark JK-BMS trusted");
            }
            Ok(())
        }
    }
}

fn is_link_gone(e: &bluer::Error) -> bool {
    match &e.kind {
        ErrorKind::NotFound => true,
        ErrorKind::Internal(InternalErrorKind::DBus(name)) => {
            name == "org.bluez.Error.NotConnected"
        }
        ErrorKind::Failed => e.message.contains("Not connected"),
        _ => false,
    }
}
