//! A fake BlueZ for JK-BMS tests: `org.bluez` on a private `dbus-daemon`
//! that the test starts itself, answering what bluer 0.17 asks (checked
//! against its source): the object manager at `/`, `Adapter1` at
//! `/org/bluez/hci0`, `AgentManager1` at `/org/bluez`, one `Device1` per
//! pack (appearing while discovery runs, if the pack advertises) and, once
//! connected, the pack's GATT tree: service FFE0 with one FFE1 (older
//! module) or two FFE1 (newer module: write on one, notify on the other).
//!
//! Each pack has a responder standing in for the BMS: a written `0x97` or
//! `0x96` command frame is answered with the frames the test gave for it,
//! in 20-byte notifications with `AT\r\n` junk and the `0xC8` ready record
//! in between, and after `0x96` the cell-info frames keep coming (~2 Hz)
//! until the link goes.
//!
//! The fake runs on its own thread with a blocking D-Bus connection, so it
//! outlives the test's runtime and serves a bridge child process as well as
//! an in-process bluer session: give the child
//! `DBUS_SYSTEM_BUS_ADDRESS=<address()>`. In-process, libdbus reads that
//! variable once per process, so all tests of one binary share one fake
//! ([`FakeBluez::shared`]) and take turns ([`FakeBluez::exclusive`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CString;
use std::os::unix::io::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path as FsPath, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dbus::Message;
use dbus::Path;
use dbus::arg::{PropMap, RefArg, Variant};
use dbus::channel::Channel;
use dbus::message::MessageType;
use dbus::strings::ErrorName;

pub const FFE0: &str = "0000ffe0-0000-1000-8000-00805f9b34fb";
pub const FFE1: &str = "0000ffe1-0000-1000-8000-00805f9b34fb";
pub const FFE2: &str = "0000ffe2-0000-1000-8000-00805f9b34fb";
/// Newer JK firmware lists FEE7 in its advertisement too.
pub const FEE7: &str = "0000fee7-0000-1000-8000-00805f9b34fb";
const DEVICE_INFORMATION: &str = "0000180a-0000-1000-8000-00805f9b34fb";
const MANUFACTURER_NAME: &str = "00002a29-0000-1000-8000-00805f9b34fb";

pub const ADAPTER_PATH: &str = "/org/bluez/hci0";
const ADAPTER_ADDRESS: &str = "00:1A:7D:DA:71:0F";
/// ATT MTU handed out by AcquireNotify: the default, so notifications are
/// at most 20 bytes as on a fresh JK link.
const MTU: u16 = 23;

const I_ADAPTER: &str = "org.bluez.Adapter1";
const I_DEVICE: &str = "org.bluez.Device1";
const I_SERVICE: &str = "org.bluez.GattService1";
const I_CHAR: &str = "org.bluez.GattCharacteristic1";
const I_AGENT_MANAGER: &str = "org.bluez.AgentManager1";
const I_PROPS: &str = "org.freedesktop.DBus.Properties";
const I_OBJECT_MANAGER: &str = "org.freedesktop.DBus.ObjectManager";

/// The 20-byte record many firmwares send after answering a command.
pub const READY_RECORD: [u8; 20] = [
    0xAA, 0x55, 0x90, 0xEB, 0xC8, 0x01, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x44,
];
pub const AT_JUNK: &[u8] = b"AT\r\n";

/// Which BLE module the pack has (spec §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// One FFE1 with write-without-response + write + notify (props 0x1C),
    /// plus FFE2.
    OneCharacteristic,
    /// Two FFE1: handle 3 write/write-without-response (0x0C), handle 5
    /// read + notify (0x12).
    TwoCharacteristics,
}

/// One write the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRecord {
    pub data: Vec<u8>,
    /// BlueZ's write type: `command` (without response) or `request`.
    pub op: String,
    /// The characteristic's object name, e.g. `char0002`.
    pub char_name: String,
}

/// An agent some client registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    pub sender: String,
    pub path: String,
    pub capability: String,
}

// ---------------------------------------------------------------------------
// The private bus
// ---------------------------------------------------------------------------

/// A `dbus-daemon` of our own, listening on a socket in a temp dir.
pub struct PrivateBus {
    address: String,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl PrivateBus {
    /// Whether `dbus-daemon` is installed.
    pub fn available() -> bool {
        Command::new("dbus-daemon")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("system_bus_socket");
        let conf = dir.path().join("bus.conf");
        let log = dir.path().join("daemon.log");
        let address = format!("unix:path={}", socket.display());
        std::fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>{address}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#
            ),
        )
        .expect("write bus config");
        // The shell kills the daemon (and removes the temp dir) once our end
        // of its stdin closes, which also happens when this process dies
        // without running destructors (the shared fake lives in a static).
        let child = Command::new("sh")
            .arg("-c")
            .arg(
                r#"dbus-daemon --nofork --nopidfile --config-file="$1" </dev/null & pid=$!
read -r _; kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$2""#,
            )
            .arg("sh")
            .arg(&conf)
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            // Its complaints (e.g. about the fd limit when not root) are
            // noise unless it fails to come up; then they are shown.
            .stderr(std::fs::File::create(&log).expect("daemon log"))
            .spawn()
            .expect("start dbus-daemon (apt-get install dbus-daemon)");
        let bus = Self {
            address,
            child: Some(child),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if socket.exists() && Channel::open_private(&bus.address).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "dbus-daemon did not come up at {}: {}",
                bus.address,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        bus
    }

    pub fn address(&self) -> &str {
        &self.address
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Property values
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Val {
    Bool(bool),
    Str(String),
    Obj(String),
    U16(u16),
    U32(u32),
    I16(i16),
    Bytes(Vec<u8>),
    Strs(Vec<String>),
    Objs(Vec<String>),
    Makers(Vec<(u16, Vec<u8>)>),
}

impl Val {
    fn variant(&self) -> Variant<Box<dyn RefArg>> {
        Variant(match self {
            Val::Bool(b) => Box::new(*b),
            Val::Str(s) => Box::new(s.clone()),
            Val::Obj(p) => Box::new(Path::from(p.clone())),
            Val::U16(x) => Box::new(*x),
            Val::U32(x) => Box::new(*x),
            Val::I16(x) => Box::new(*x),
            Val::Bytes(b) => Box::new(b.clone()),
            Val::Strs(v) => Box::new(v.clone()),
            Val::Objs(v) => Box::new(
                v.iter()
                    .map(|p| Path::from(p.clone()))
                    .collect::<Vec<Path<'static>>>(),
            ),
            Val::Makers(m) => {
                let mut h: HashMap<u16, Variant<Box<dyn RefArg>>> = HashMap::new();
                for (id, body) in m {
                    h.insert(*id, Variant(Box::new(body.clone())));
                }
                Box::new(h)
            }
        })
    }
}

type Props = Vec<(&'static str, Val)>;

fn prop_map(props: &Props) -> PropMap {
    props
        .iter()
        .map(|(k, v)| (k.to_string(), v.variant()))
        .collect()
}

fn strs(v: &[&str]) -> Val {
    Val::Strs(v.iter().map(|s| s.to_string()).collect())
}

// ---------------------------------------------------------------------------
// GATT layout
// ---------------------------------------------------------------------------

struct SvcDef {
    id: u16,
    uuid: &'static str,
}

struct ChrDef {
    svc: u16,
    id: u16,
    uuid: &'static str,
    flags: &'static [&'static str],
    /// Commands written here reach the BMS's UART.
    takes_commands: bool,
    /// The BMS's UART output comes out here.
    gives_notifications: bool,
}

fn gatt_layout(generation: Option<Generation>) -> (Vec<SvcDef>, Vec<ChrDef>) {
    match generation {
        None => (Vec::new(), Vec::new()),
        Some(Generation::OneCharacteristic) => (
            vec![
                SvcDef {
                    id: 0x0001,
                    uuid: DEVICE_INFORMATION,
                },
                SvcDef {
                    id: 0x0010,
                    uuid: FFE0,
                },
            ],
            vec![
                ChrDef {
                    svc: 0x0001,
                    id: 0x0002,
                    uuid: MANUFACTURER_NAME,
                    flags: &["read"],
                    takes_commands: false,
                    gives_notifications: false,
                },
                ChrDef {
                    svc: 0x0010,
                    id: 0x0011,
                    uuid: FFE1,
                    flags: &["read", "write-without-response", "write", "notify"],
                    takes_commands: true,
                    gives_notifications: true,
                },
                ChrDef {
                    svc: 0x0010,
                    id: 0x0014,
                    uuid: FFE2,
                    flags: &["read", "write-without-response"],
                    takes_commands: false,
                    gives_notifications: false,
                },
            ],
        ),
        Some(Generation::TwoCharacteristics) => (
            vec![
                SvcDef {
                    id: 0x0001,
                    uuid: FFE0,
                },
                SvcDef {
                    id: 0x0010,
                    uuid: DEVICE_INFORMATION,
                },
            ],
            vec![
                ChrDef {
                    svc: 0x0001,
                    id: 0x0002,
                    uuid: FFE1,
                    flags: &["write-without-response", "write"],
                    takes_commands: true,
                    gives_notifications: false,
                },
                ChrDef {
                    svc: 0x0001,
                    id: 0x0004,
                    uuid: FFE1,
                    flags: &["read", "notify"],
                    takes_commands: false,
                    gives_notifications: true,
                },
                ChrDef {
                    svc: 0x0010,
                    id: 0x0011,
                    uuid: MANUFACTURER_NAME,
                    flags: &["read"],
                    takes_commands: false,
                    gives_notifications: false,
                },
            ],
        ),
    }
}

fn dev_path(mac: &str) -> String {
    format!("{ADAPTER_PATH}/dev_{}", mac.replace(':', "_"))
}

// ---------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------

struct Pack {
    mac: String,
    name: Option<String>,
    generation: Option<Generation>,
    /// Service UUIDs in the advertisement.
    adv_uuids: Vec<String>,
    maker: Option<(u16, Vec<u8>)>,
    rssi: i16,
    advertises: bool,
    requires_pairing: bool,
    /// When false, connection attempts fail (out of range, phone app on it).
    reachable: bool,

    exported: bool,
    rssi_valid: bool,
    connected: bool,
    resolved: bool,
    paired: bool,
    trusted: bool,
    blocked: bool,
    /// Bumped whenever the link goes down, so timers of an older link die.
    epoch: u64,
    /// A Connect or Pair waiting for its answer.
    pending: Option<Message>,
    /// That pending call is establishing the link (counts as "connecting").
    connecting: bool,

    responses: HashMap<u8, Vec<Vec<u8>>>,
    stream_interval: Duration,
    stream_frames: Vec<Vec<u8>>,
    stream_next: usize,
    streaming: bool,
    /// The BMS side is a UART: bursts go out one after the other.
    tx_free_at: Instant,

    notify_sessions: BTreeMap<u16, BTreeSet<String>>,
    acquired: BTreeMap<u16, UnixDatagram>,
    values: HashMap<u16, Vec<u8>>,

    connect_attempts: u32,
    pair_attempts: u32,
    /// Notifications that reached a subscribed client.
    delivered: u64,
    paired_with: Option<String>,
    writes: Vec<WriteRecord>,
    log: Vec<String>,
}

impl Pack {
    fn new(mac: &str, name: Option<&str>, generation: Option<Generation>, rssi: i16) -> Self {
        Self {
            mac: mac.to_ascii_uppercase(),
            name: name.map(str::to_string),
            generation,
            adv_uuids: Vec::new(),
            maker: None,
            rssi,
            advertises: true,
            requires_pairing: false,
            reachable: true,
            exported: false,
            rssi_valid: false,
            connected: false,
            resolved: false,
            paired: false,
            trusted: false,
            blocked: false,
            epoch: 0,
            pending: None,
            connecting: false,
            responses: HashMap::new(),
            stream_interval: Duration::from_millis(500),
            stream_frames: Vec::new(),
            stream_next: 0,
            streaming: false,
            tx_free_at: Instant::now(),
            notify_sessions: BTreeMap::new(),
            acquired: BTreeMap::new(),
            values: HashMap::new(),
            connect_attempts: 0,
            pair_attempts: 0,
            delivered: 0,
            paired_with: None,
            writes: Vec::new(),
            log: Vec::new(),
        }
    }

    fn path(&self) -> String {
        dev_path(&self.mac)
    }

    fn svc_path(&self, id: u16) -> String {
        format!("{}/service{id:04x}", self.path())
    }

    fn chr_path(&self, svc: u16, id: u16) -> String {
        format!("{}/char{id:04x}", self.svc_path(svc))
    }

    fn device_props(&self) -> Props {
        let mut uuids = self.adv_uuids.clone();
        if self.resolved {
            for s in gatt_layout(self.generation).0 {
                if !uuids.iter().any(|u| u == s.uuid) {
                    uuids.push(s.uuid.to_string());
                }
            }
        }
        let mut p: Props = vec![
            ("Address", Val::Str(self.mac.clone())),
            ("AddressType", Val::Str("public".into())),
            (
                "Alias",
                Val::Str(
                    self.name
                        .clone()
                        .unwrap_or_else(|| self.mac.replace(':', "-")),
                ),
            ),
            ("Paired", Val::Bool(self.paired)),
            ("Bonded", Val::Bool(self.paired)),
            ("Trusted", Val::Bool(self.trusted)),
            ("Blocked", Val::Bool(self.blocked)),
            ("LegacyPairing", Val::Bool(false)),
            ("Connected", Val::Bool(self.connected)),
            ("ServicesResolved", Val::Bool(self.resolved)),
            ("UUIDs", Val::Strs(uuids)),
            ("Adapter", Val::Obj(ADAPTER_PATH.into())),
        ];
        if let Some(name) = &self.name {
            p.push(("Name", Val::Str(name.clone())));
        }
        if self.rssi_valid {
            p.push(("RSSI", Val::I16(self.rssi)));
        }
        if let Some((id, body)) = &self.maker {
            p.push(("ManufacturerData", Val::Makers(vec![(*id, body.clone())])));
        }
        p
    }

    fn service_props(&self, s: &SvcDef) -> Props {
        vec![
            ("UUID", Val::Str(s.uuid.into())),
            ("Primary", Val::Bool(true)),
            ("Device", Val::Obj(self.path())),
            ("Includes", Val::Objs(Vec::new())),
            ("Handle", Val::U16(s.id)),
        ]
    }

    fn char_props(&self, c: &ChrDef) -> Props {
        let mut p: Props = vec![
            ("UUID", Val::Str(c.uuid.into())),
            ("Service", Val::Obj(self.svc_path(c.svc))),
            (
                "Value",
                Val::Bytes(self.values.get(&c.id).cloned().unwrap_or_default()),
            ),
            ("Flags", strs(c.flags)),
            ("MTU", Val::U16(MTU)),
            ("Handle", Val::U16(c.id + 1)),
        ];
        if c.flags.contains(&"notify") {
            let acquired = self.acquired.contains_key(&c.id);
            let sessions = self
                .notify_sessions
                .get(&c.id)
                .is_some_and(|s| !s.is_empty());
            p.push(("Notifying", Val::Bool(acquired || sessions)));
            p.push(("NotifyAcquired", Val::Bool(acquired)));
        }
        if c.flags.contains(&"write-without-response") {
            p.push(("WriteAcquired", Val::Bool(false)));
        }
        p
    }

    fn log(&mut self, what: impl Into<String>) {
        self.log.push(what.into());
    }
}

enum Action {
    LinkUp {
        mac: String,
        epoch: u64,
        pairing: bool,
    },
    Resolve {
        mac: String,
        epoch: u64,
    },
    DropUnpaired {
        mac: String,
        epoch: u64,
    },
    Notify {
        mac: String,
        epoch: u64,
        data: Vec<u8>,
    },
    StreamTick {
        mac: String,
        epoch: u64,
    },
    Advertise {
        generation: u64,
    },
}

/// Delays of the fake's world. Short, so tests are quick; the order of
/// events is what matters.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Connect (or Pair on a disconnected pack) → Connected.
    pub connect: Duration,
    /// Connected → ServicesResolved.
    pub resolve: Duration,
    /// StartDiscovery → first advertisements; then the re-advertising period.
    pub advertise_first: Duration,
    pub advertise_period: Duration,
    /// Between two 20-byte notifications of one burst.
    pub fragment_gap: Duration,
    /// How long an unpaired host stays connected to a pack that needs
    /// pairing.
    pub unpaired_drop: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            connect: Duration::from_millis(150),
            resolve: Duration::from_millis(50),
            advertise_first: Duration::from_millis(100),
            advertise_period: Duration::from_millis(250),
            fragment_gap: Duration::from_millis(2),
            unpaired_drop: Duration::from_millis(100),
        }
    }
}

struct State {
    powered: bool,
    discovering: bool,
    discovery_clients: BTreeSet<String>,
    discovery_filters: HashMap<String, Vec<String>>,
    advert_generation: u64,
    packs: BTreeMap<String, Pack>,
    agents: Vec<AgentRecord>,
    agents_ever: Vec<AgentRecord>,
    default_agent: Option<(String, String)>,
    timing: Timing,
    /// Answer InProgress to a Connect while another link is being set up,
    /// as adapters do (spec §13.2).
    reject_overlapping_connects: bool,
    connecting_now: u32,
    max_concurrent_connects: u32,
    in_progress_rejections: u32,
    timers: BTreeMap<(Instant, u64), Action>,
    seq: u64,
    outbox: Vec<Message>,
    /// Set by a call answered later: the pack whose `pending` takes the
    /// call (a copy of a message has no serial to reply to).
    defer: Option<String>,
}

impl State {
    fn new() -> Self {
        Self {
            powered: true,
            discovering: false,
            discovery_clients: BTreeSet::new(),
            discovery_filters: HashMap::new(),
            advert_generation: 0,
            packs: BTreeMap::new(),
            agents: Vec::new(),
            agents_ever: Vec::new(),
            default_agent: None,
            timing: Timing::default(),
            reject_overlapping_connects: true,
            connecting_now: 0,
            max_concurrent_connects: 0,
            in_progress_rejections: 0,
            timers: BTreeMap::new(),
            seq: 0,
            outbox: Vec::new(),
            defer: None,
        }
    }

    fn at(&mut self, at: Instant, action: Action) {
        self.seq += 1;
        self.timers.insert((at, self.seq), action);
    }

    fn after(&mut self, d: Duration, action: Action) {
        self.at(Instant::now() + d, action);
    }

    fn pack(&mut self, mac: &str) -> &mut Pack {
        let mac = mac.to_ascii_uppercase();
        self.packs
            .get_mut(&mac)
            .unwrap_or_else(|| panic!("fake BlueZ has no device {mac}"))
    }

    // ---- signals ----

    fn props_changed(&mut self, path: &str, iface: &str, changed: Props, invalidated: &[&str]) {
        let m = Message::new_signal(path, I_PROPS, "PropertiesChanged")
            .expect("signal")
            .append3(
                iface,
                prop_map(&changed),
                invalidated
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<String>>(),
            );
        self.outbox.push(m);
    }

    fn interfaces_added(&mut self, path: &str, ifaces: Vec<(&'static str, Props)>) {
        let map: HashMap<String, PropMap> = ifaces
            .iter()
            .map(|(i, p)| (i.to_string(), prop_map(p)))
            .collect();
        let m = Message::new_signal("/", I_OBJECT_MANAGER, "InterfacesAdded")
            .expect("signal")
            .append2(Path::from(path.to_string()), map);
        self.outbox.push(m);
    }

    fn interfaces_removed(&mut self, path: &str, ifaces: &[&str]) {
        let m = Message::new_signal("/", I_OBJECT_MANAGER, "InterfacesRemoved")
            .expect("signal")
            .append2(
                Path::from(path.to_string()),
                ifaces
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<String>>(),
            );
        self.outbox.push(m);
    }

    fn set_discovering(&mut self, on: bool) {
        if self.discovering == on {
            return;
        }
        self.discovering = on;
        self.props_changed(
            ADAPTER_PATH,
            I_ADAPTER,
            vec![("Discovering", Val::Bool(on))],
            &[],
        );
        self.advert_generation += 1;
        if on {
            let generation = self.advert_generation;
            let d = self.timing.advertise_first;
            self.after(d, Action::Advertise { generation });
        } else {
            // As BlueZ does when discovery ends: the RSSI values are stale.
            let paths: Vec<String> = self
                .packs
                .values_mut()
                .filter(|p| p.exported && p.rssi_valid)
                .map(|p| {
                    p.rssi_valid = false;
                    p.path()
                })
                .collect();
            for path in paths {
                self.props_changed(&path, I_DEVICE, Vec::new(), &["RSSI"]);
            }
        }
    }

    // ---- the world ----

    fn advertise(&mut self, generation: u64) {
        if !self.discovering || generation != self.advert_generation {
            return;
        }
        let macs: Vec<String> = self
            .packs
            .values()
            .filter(|p| p.advertises && !p.connected && (!p.exported || !p.rssi_valid))
            .map(|p| p.mac.clone())
            .collect();
        for mac in macs {
            let p = self.pack(&mac);
            p.rssi_valid = true;
            let path = p.path();
            if p.exported {
                let rssi = p.rssi;
                self.props_changed(&path, I_DEVICE, vec![("RSSI", Val::I16(rssi))], &[]);
            } else {
                p.exported = true;
                let props = p.device_props();
                self.interfaces_added(&path, vec![(I_DEVICE, props)]);
            }
        }
        let d = self.timing.advertise_period;
        self.after(d, Action::Advertise { generation });
    }

    fn begin_link(&mut self, mac: &str) -> u64 {
        self.connecting_now += 1;
        self.max_concurrent_connects = self.max_concurrent_connects.max(self.connecting_now);
        let p = self.pack(mac);
        p.connecting = true;
        p.connect_attempts += 1;
        p.epoch
    }

    fn link_up(&mut self, mac: &str, epoch: u64, pairing: bool) {
        let timing = self.timing;
        let p = self.pack(mac);
        if p.epoch != epoch {
            return;
        }
        let was_connecting = std::mem::take(&mut p.connecting);
        let pending = p.pending.take();
        if was_connecting {
            self.connecting_now = self.connecting_now.saturating_sub(1);
        }
        let p = self.pack(mac);
        if !p.reachable {
            p.log("connect failed: unreachable");
            if let Some(call) = pending {
                let e = error(
                    &call,
                    "org.bluez.Error.Failed",
                    "Software caused connection abort",
                );
                self.outbox.push(e);
            }
            return;
        }
        let path = p.path();
        let mut changed: Props = Vec::new();
        if !p.connected {
            p.connected = true;
            changed.push(("Connected", Val::Bool(true)));
        }
        if pairing && !p.paired {
            p.paired = true;
            changed.push(("Paired", Val::Bool(true)));
            changed.push(("Bonded", Val::Bool(true)));
        }
        let needs_pairing = p.requires_pairing && !p.paired;
        let resolved = p.resolved;
        p.log(if pairing { "paired" } else { "connected" });
        if !changed.is_empty() {
            self.props_changed(&path, I_DEVICE, changed, &[]);
        }
        if let Some(call) = pending {
            self.outbox.push(call.method_return());
        }
        if needs_pairing {
            // Firmware 19.30+: unbonded hosts are dropped before they get
            // to use the service.
            self.after(
                timing.unpaired_drop,
                Action::DropUnpaired {
                    mac: mac.to_string(),
                    epoch,
                },
            );
        } else if !resolved {
            self.after(
                timing.resolve,
                Action::Resolve {
                    mac: mac.to_string(),
                    epoch,
                },
            );
        }
    }

    fn resolve(&mut self, mac: &str, epoch: u64) {
        let p = self.pack(mac);
        if p.epoch != epoch || !p.connected || p.resolved {
            return;
        }
        let (services, chars) = gatt_layout(p.generation);
        let mut added = Vec::new();
        for s in &services {
            added.push((p.svc_path(s.id), I_SERVICE, p.service_props(s)));
        }
        for c in &chars {
            added.push((p.chr_path(c.svc, c.id), I_CHAR, p.char_props(c)));
        }
        p.resolved = true;
        let path = p.path();
        let uuids = p
            .device_props()
            .into_iter()
            .find(|(k, _)| *k == "UUIDs")
            .map(|(_, v)| v);
        p.log("services resolved");
        for (obj, iface, props) in added {
            self.interfaces_added(&obj, vec![(iface, props)]);
        }
        let mut changed: Props = Vec::new();
        if let Some(u) = uuids {
            changed.push(("UUIDs", u));
        }
        changed.push(("ServicesResolved", Val::Bool(true)));
        self.props_changed(&path, I_DEVICE, changed, &[]);
    }

    /// The link ends, for whatever reason: what BlueZ shows a client.
    fn link_down(&mut self, mac: &str, why: &str) {
        let p = self.pack(mac);
        p.epoch += 1;
        p.streaming = false;
        p.stream_next = 0;
        p.tx_free_at = Instant::now();
        // A zero-length read is how bluetoothd's notify socket (a
        // SOCK_SEQPACKET) reports its closing; a datagram socket needs
        // an explicit empty datagram for the same effect.
        for (_, sock) in std::mem::take(&mut p.acquired) {
            let _ = sock.send(&[]);
        }
        p.notify_sessions.clear();
        let was_connecting = std::mem::take(&mut p.connecting);
        let pending = p.pending.take();
        let path = p.path();
        let was_resolved = std::mem::take(&mut p.resolved);
        let was_connected = std::mem::take(&mut p.connected);
        let (services, chars) = gatt_layout(p.generation);
        let gatt_paths: Vec<(String, &str)> = chars
            .iter()
            .map(|c| (p.chr_path(c.svc, c.id), I_CHAR))
            .chain(services.iter().map(|s| (p.svc_path(s.id), I_SERVICE)))
            .collect();
        p.log(format!("link down: {why}"));
        if was_connecting {
            self.connecting_now = self.connecting_now.saturating_sub(1);
        }
        if let Some(call) = pending {
            let e = error(&call, "org.bluez.Error.Failed", "Operation aborted");
            self.outbox.push(e);
        }
        if was_resolved {
            self.props_changed(
                &path,
                I_DEVICE,
                vec![("ServicesResolved", Val::Bool(false))],
                &[],
            );
            for (obj, iface) in gatt_paths {
                self.interfaces_removed(&obj, &[iface]);
            }
        }
        if was_connected {
            self.props_changed(&path, I_DEVICE, vec![("Connected", Val::Bool(false))], &[]);
        }
    }

    fn unexport(&mut self, mac: &str) {
        self.link_down(mac, "removed");
        let p = self.pack(mac);
        if !std::mem::take(&mut p.exported) {
            return;
        }
        p.rssi_valid = false;
        p.paired = false;
        p.trusted = false;
        let path = p.path();
        self.interfaces_removed(&path, &[I_DEVICE]);
    }

    /// Sends `bytes` as 20-byte notifications after whatever the pack is
    /// still sending.
    fn burst(&mut self, mac: &str, bytes: &[u8]) -> Instant {
        let gap = self.timing.fragment_gap;
        let p = self.pack(mac);
        let epoch = p.epoch;
        let mut at = p.tx_free_at.max(Instant::now());
        let chunks: Vec<Vec<u8>> = bytes.chunks(20).map(<[u8]>::to_vec).collect();
        for data in chunks {
            self.at(
                at,
                Action::Notify {
                    mac: mac.to_string(),
                    epoch,
                    data,
                },
            );
            at += gap;
        }
        self.pack(mac).tx_free_at = at;
        at
    }

    fn notify(&mut self, mac: &str, epoch: u64, data: Vec<u8>) {
        let p = self.pack(mac);
        if p.epoch != epoch || !p.connected {
            return;
        }
        let Some(c) = gatt_layout(p.generation)
            .1
            .into_iter()
            .find(|c| c.gives_notifications)
        else {
            return;
        };
        p.values.insert(c.id, data.clone());
        let mut delivered = false;
        let mut closed = false;
        if let Some(sock) = p.acquired.get(&c.id) {
            match sock.send(&data) {
                Ok(_) => delivered = true,
                // Full buffer: the notification is lost, as over the air.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => closed = true,
            }
        }
        let path = p.chr_path(c.svc, c.id);
        if closed {
            p.acquired.remove(&c.id);
            p.log("notify socket closed by the client");
            self.props_changed(
                &path,
                I_CHAR,
                vec![
                    ("NotifyAcquired", Val::Bool(false)),
                    ("Notifying", Val::Bool(false)),
                ],
                &[],
            );
        }
        let p = self.pack(mac);
        if p.notify_sessions.get(&c.id).is_some_and(|s| !s.is_empty()) {
            self.props_changed(&path, I_CHAR, vec![("Value", Val::Bytes(data))], &[]);
            delivered = true;
        }
        if delivered {
            self.pack(mac).delivered += 1;
        }
    }

    /// The BMS's answer to a command frame written to it.
    fn respond(&mut self, mac: &str, cmd: u8) {
        let p = self.pack(mac);
        let frames = p.responses.get(&cmd).cloned().unwrap_or_default();
        let (stream, once): (Vec<Vec<u8>>, Vec<Vec<u8>>) = if cmd == 0x96 {
            frames.into_iter().partition(|f| f.get(4) == Some(&0x02))
        } else {
            (Vec::new(), frames)
        };
        let mut bytes = Vec::new();
        for (i, f) in once.iter().enumerate() {
            if i > 0 {
                bytes.extend_from_slice(AT_JUNK);
            }
            bytes.extend_from_slice(f);
        }
        bytes.extend_from_slice(&READY_RECORD);
        bytes.extend_from_slice(AT_JUNK);
        let end = self.burst(mac, &bytes);
        let p = self.pack(mac);
        if cmd == 0x96 && !stream.is_empty() {
            p.stream_frames = stream;
            if !p.streaming {
                p.streaming = true;
                let epoch = p.epoch;
                self.at(
                    end,
                    Action::StreamTick {
                        mac: mac.to_string(),
                        epoch,
                    },
                );
            }
        }
    }

    fn stream_tick(&mut self, mac: &str, epoch: u64) {
        let p = self.pack(mac);
        if p.epoch != epoch || !p.connected || !p.streaming || p.stream_frames.is_empty() {
            return;
        }
        let frame = p.stream_frames[p.stream_next % p.stream_frames.len()].clone();
        p.stream_next += 1;
        let interval = p.stream_interval;
        self.burst(mac, &frame);
        self.after(
            interval,
            Action::StreamTick {
                mac: mac.to_string(),
                epoch,
            },
        );
    }

    fn run(&mut self, action: Action) {
        match action {
            Action::LinkUp {
                mac,
                epoch,
                pairing,
            } => self.link_up(&mac, epoch, pairing),
            Action::Resolve { mac, epoch } => self.resolve(&mac, epoch),
            Action::DropUnpaired { mac, epoch } => {
                let p = self.pack(&mac);
                if p.epoch == epoch && p.connected && !p.paired {
                    self.link_down(&mac, "not paired");
                }
            }
            Action::Notify { mac, epoch, data } => self.notify(&mac, epoch, data),
            Action::StreamTick { mac, epoch } => self.stream_tick(&mac, epoch),
            Action::Advertise { generation } => self.advertise(generation),
        }
    }

    fn run_due(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let action = entry.remove();
            self.run(action);
        }
    }

    fn client_gone(&mut self, name: &str) {
        self.discovery_filters.remove(name);
        if self.discovery_clients.remove(name) && self.discovery_clients.is_empty() {
            self.set_discovering(false);
        }
        self.agents.retain(|a| a.sender != name);
        if self.default_agent.as_ref().is_some_and(|(s, _)| s == name) {
            self.default_agent = None;
        }
        let macs: Vec<String> = self.packs.keys().cloned().collect();
        for mac in macs {
            let p = self.pack(&mac);
            for sessions in p.notify_sessions.values_mut() {
                sessions.remove(name);
            }
        }
    }

    // ---- method calls ----

    fn objects(&self) -> Vec<(String, Vec<(&'static str, Props)>)> {
        let mut out = vec![
            (
                "/org/bluez".to_string(),
                vec![(I_AGENT_MANAGER, Vec::new())],
            ),
            (
                ADAPTER_PATH.to_string(),
                vec![(I_ADAPTER, self.adapter_props())],
            ),
        ];
        for p in self.packs.values().filter(|p| p.exported) {
            out.push((p.path(), vec![(I_DEVICE, p.device_props())]));
            if p.resolved {
                let (services, chars) = gatt_layout(p.generation);
                for s in &services {
                    out.push((p.svc_path(s.id), vec![(I_SERVICE, p.service_props(s))]));
                }
                for c in &chars {
                    out.push((p.chr_path(c.svc, c.id), vec![(I_CHAR, p.char_props(c))]));
                }
            }
        }
        out
    }

    fn adapter_props(&self) -> Props {
        vec![
            ("Address", Val::Str(ADAPTER_ADDRESS.into())),
            ("AddressType", Val::Str("public".into())),
            ("Name", Val::Str("fake-bluez".into())),
            ("Alias", Val::Str("fake-bluez".into())),
            ("Class", Val::U32(0)),
            ("Powered", Val::Bool(self.powered)),
            ("Discoverable", Val::Bool(false)),
            ("DiscoverableTimeout", Val::U32(180)),
            ("Pairable", Val::Bool(true)),
            ("PairableTimeout", Val::U32(0)),
            ("Discovering", Val::Bool(self.discovering)),
            ("UUIDs", Val::Strs(Vec::new())),
            ("Modalias", Val::Str("usb:v1D6Bp0246d0548".into())),
            ("Roles", strs(&["central", "peripheral"])),
        ]
    }

    /// Which pack, and which of its objects, a path names.
    fn locate(&self, path: &str) -> Option<(String, Option<u16>, Option<u16>)> {
        let rest = path.strip_prefix(ADAPTER_PATH)?.strip_prefix("/dev_")?;
        let mut parts = rest.split('/');
        let mac = parts.next()?.replace('_', ":");
        let p = self.packs.get(&mac).filter(|p| p.exported)?;
        let svc = match parts.next() {
            None => return Some((mac, None, None)),
            Some(s) => u16::from_str_radix(s.strip_prefix("service")?, 16).ok()?,
        };
        let (services, chars) = gatt_layout(p.generation);
        if !p.resolved || !services.iter().any(|s| s.id == svc) {
            return None;
        }
        let chr = match parts.next() {
            None => return Some((mac, Some(svc), None)),
            Some(c) => u16::from_str_radix(c.strip_prefix("char")?, 16).ok()?,
        };
        if parts.next().is_some() || !chars.iter().any(|c| c.svc == svc && c.id == chr) {
            return None;
        }
        Some((mac, Some(svc), Some(chr)))
    }

    /// The interfaces and properties of one object, if it exists.
    fn object(&self, path: &str) -> Option<Vec<(&'static str, Props)>> {
        match path {
            "/org/bluez" => return Some(vec![(I_AGENT_MANAGER, Vec::new())]),
            ADAPTER_PATH => return Some(vec![(I_ADAPTER, self.adapter_props())]),
            _ => {}
        }
        let (mac, svc, chr) = self.locate(path)?;
        let p = self.packs.get(&mac)?;
        let (services, chars) = gatt_layout(p.generation);
        Some(match (svc, chr) {
            (None, _) => vec![(I_DEVICE, p.device_props())],
            (Some(s), None) => {
                let s = services.iter().find(|x| x.id == s)?;
                vec![(I_SERVICE, p.service_props(s))]
            }
            (Some(_), Some(c)) => {
                let c = chars.iter().find(|x| x.id == c)?;
                vec![(I_CHAR, p.char_props(c))]
            }
        })
    }

    /// Answers a method call now, or `None` when the answer comes later.
    fn call(&mut self, msg: &Message) -> Option<Message> {
        let path = msg.path().map(|p| p.to_string()).unwrap_or_default();
        let iface = msg.interface().map(|i| i.to_string()).unwrap_or_default();
        let member = msg.member().map(|m| m.to_string()).unwrap_or_default();
        let sender = msg.sender().map(|s| s.to_string()).unwrap_or_default();

        if path == "/" && iface == I_OBJECT_MANAGER && member == "GetManagedObjects" {
            let map: HashMap<Path<'static>, HashMap<String, PropMap>> = self
                .objects()
                .into_iter()
                .map(|(path, ifaces)| {
                    (
                        Path::from(path),
                        ifaces
                            .iter()
                            .map(|(i, p)| (i.to_string(), prop_map(p)))
                            .collect(),
                    )
                })
                .collect();
            return Some(msg.method_return().append1(map));
        }
        let Some(ifaces) = self.object(&path) else {
            return Some(error(
                msg,
                "org.freedesktop.DBus.Error.UnknownObject",
                &format!("No such object path '{path}'"),
            ));
        };
        if iface == I_PROPS {
            return Some(self.properties(msg, &path, &member, &ifaces));
        }
        if iface == "org.freedesktop.DBus.Introspectable" && member == "Introspect" {
            let mut xml = String::from("<node>");
            for (i, _) in &ifaces {
                xml.push_str(&format!("<interface name=\"{i}\"/>"));
            }
            xml.push_str("</node>");
            return Some(msg.method_return().append1(xml));
        }
        if !ifaces.iter().any(|(i, _)| *i == iface) {
            return Some(error(
                msg,
                "org.freedesktop.DBus.Error.UnknownMethod",
                &format!("No interface {iface} at {path}"),
            ));
        }
        match iface.as_str() {
            I_AGENT_MANAGER => Some(self.agent_manager(msg, &sender, &member)),
            I_ADAPTER => Some(self.adapter(msg, &sender, &member)),
            I_DEVICE => {
                let (mac, _, _) = self.locate(&path)?;
                self.device(msg, &sender, &mac, &member)
            }
            I_CHAR => {
                let (mac, _, chr) = self.locate(&path)?;
                Some(self.characteristic(msg, &sender, &mac, chr?, &member))
            }
            _ => Some(unknown_method(msg, &member)),
        }
    }

    fn properties(
        &mut self,
        msg: &Message,
        path: &str,
        member: &str,
        ifaces: &[(&'static str, Props)],
    ) -> Message {
        match member {
            "Get" => {
                let Ok((iface, name)) = msg.read2::<&str, &str>() else {
                    return bad_args(msg);
                };
                let Some((_, props)) = ifaces.iter().find(|(i, _)| *i == iface) else {
                    return error(
                        msg,
                        "org.freedesktop.DBus.Error.InvalidArgs",
                        &format!("No such interface '{iface}'"),
                    );
                };
                match props.iter().find(|(k, _)| *k == name) {
                    Some((_, v)) => msg.method_return().append1(v.variant()),
                    None => error(
                        msg,
                        "org.freedesktop.DBus.Error.InvalidArgs",
                        &format!("No such property '{name}'"),
                    ),
                }
            }
            "GetAll" => {
                let Ok(iface) = msg.read1::<&str>() else {
                    return bad_args(msg);
                };
                let props = ifaces
                    .iter()
                    .find(|(i, _)| *i == iface)
                    .map(|(_, p)| prop_map(p))
                    .unwrap_or_default();
                msg.method_return().append1(props)
            }
            "Set" => {
                let Ok((iface, name, value)) = msg.read3::<&str, &str, Variant<Box<dyn RefArg>>>()
                else {
                    return bad_args(msg);
                };
                let as_bool = dbus::arg::cast::<bool>(&value.0).copied();
                match (iface, name, as_bool) {
                    (I_ADAPTER, "Powered", Some(on)) => {
                        if self.powered != on {
                            self.powered = on;
                            self.props_changed(
                                ADAPTER_PATH,
                                I_ADAPTER,
                                vec![("Powered", Val::Bool(on))],
                                &[],
                            );
                            if !on {
                                self.discovery_clients.clear();
                                self.set_discovering(false);
                            }
                        }
                        msg.method_return()
                    }
                    (I_DEVICE, "Trusted" | "Blocked", Some(on)) => {
                        let Some((mac, None, None)) = self.locate(path) else {
                            return bad_args(msg);
                        };
                        let p = self.pack(&mac);
                        if name == "Trusted" {
                            p.trusted = on;
                        } else {
                            p.blocked = on;
                        }
                        p.log(format!("set {name}={on}"));
                        let key = if name == "Trusted" {
                            "Trusted"
                        } else {
                            "Blocked"
                        };
                        self.props_changed(path, I_DEVICE, vec![(key, Val::Bool(on))], &[]);
                        msg.method_return()
                    }
                    _ => error(
                        msg,
                        "org.freedesktop.DBus.Error.PropertyReadOnly",
                        &format!("{iface}.{name} cannot be set here"),
                    ),
                }
            }
            _ => unknown_method(msg, member),
        }
    }

    fn agent_manager(&mut self, msg: &Message, sender: &str, member: &str) -> Message {
        match member {
            "RegisterAgent" => {
                let Ok((path, capability)) = msg.read2::<Path, &str>() else {
                    return bad_args(msg);
                };
                const CAPS: [&str; 6] = [
                    "",
                    "DisplayOnly",
                    "DisplayYesNo",
                    "KeyboardOnly",
                    "NoInputNoOutput",
                    "KeyboardDisplay",
                ];
                if !CAPS.contains(&capability) {
                    return error(msg, "org.bluez.Error.InvalidArguments", "Invalid Arguments");
                }
                if self.agents.iter().any(|a| a.sender == sender) {
                    return error(msg, "org.bluez.Error.AlreadyExists", "Already Exists");
                }
                let rec = AgentRecord {
                    sender: sender.to_string(),
                    path: path.to_string(),
                    capability: capability.to_string(),
                };
                self.agents.push(rec.clone());
                self.agents_ever.push(rec);
                msg.method_return()
            }
            "UnregisterAgent" => {
                let Ok(path) = msg.read1::<Path>() else {
                    return bad_args(msg);
                };
                let before = self.agents.len();
                self.agents
                    .retain(|a| !(a.sender == sender && a.path == path.to_string()));
                if self.agents.len() == before {
                    return error(msg, "org.bluez.Error.DoesNotExist", "Does Not Exist");
                }
                if self
                    .default_agent
                    .as_ref()
                    .is_some_and(|(s, p)| s == sender && *p == path.to_string())
                {
                    self.default_agent = None;
                }
                msg.method_return()
            }
            "RequestDefaultAgent" => {
                let Ok(path) = msg.read1::<Path>() else {
                    return bad_args(msg);
                };
                if !self
                    .agents
                    .iter()
                    .any(|a| a.sender == sender && a.path == path.to_string())
                {
                    return error(msg, "org.bluez.Error.DoesNotExist", "Does Not Exist");
                }
                self.default_agent = Some((sender.to_string(), path.to_string()));
                msg.method_return()
            }
            _ => unknown_method(msg, member),
        }
    }

    fn adapter(&mut self, msg: &Message, sender: &str, member: &str) -> Message {
        match member {
            "StartDiscovery" => {
                if !self.powered {
                    return error(msg, "org.bluez.Error.NotReady", "Resource Not Ready");
                }
                if !self.discovery_clients.insert(sender.to_string()) {
                    return error(
                        msg,
                        "org.bluez.Error.InProgress",
                        "Operation already in progress",
                    );
                }
                self.set_discovering(true);
                msg.method_return()
            }
            "StopDiscovery" => {
                if !self.discovery_clients.remove(sender) {
                    return error(msg, "org.bluez.Error.Failed", "No discovery started");
                }
                if self.discovery_clients.is_empty() {
                    self.set_discovering(false);
                }
                msg.method_return()
            }
            "SetDiscoveryFilter" => {
                let Ok(filter) = msg.read1::<PropMap>() else {
                    return bad_args(msg);
                };
                const KEYS: [&str; 7] = [
                    "UUIDs",
                    "RSSI",
                    "Pathloss",
                    "Transport",
                    "DuplicateData",
                    "Discoverable",
                    "Pattern",
                ];
                if let Some(k) = filter.keys().find(|k| !KEYS.contains(&String::as_str(k))) {
                    return error(
                        msg,
                        "org.bluez.Error.InvalidArguments",
                        &format!("Invalid filter key {k}"),
                    );
                }
                let mut keys: Vec<String> = filter.keys().cloned().collect();
                keys.sort();
                self.discovery_filters.insert(sender.to_string(), keys);
                msg.method_return()
            }
            "GetDiscoveryFilters" => msg.method_return().append1(
                [
                    "UUIDs",
                    "RSSI",
                    "Pathloss",
                    "Transport",
                    "DuplicateData",
                    "Discoverable",
                    "Pattern",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<String>>(),
            ),
            "RemoveDevice" => {
                let Ok(path) = msg.read1::<Path>() else {
                    return bad_args(msg);
                };
                match self.locate(&path) {
                    Some((mac, None, None)) => {
                        self.unexport(&mac);
                        msg.method_return()
                    }
                    _ => error(msg, "org.bluez.Error.DoesNotExist", "Does Not Exist"),
                }
            }
            _ => unknown_method(msg, member),
        }
    }

    fn device(&mut self, msg: &Message, sender: &str, mac: &str, member: &str) -> Option<Message> {
        let timing = self.timing;
        match member {
            "Connect" => {
                let p = self.pack(mac);
                p.log("Connect");
                if p.pending.is_some() {
                    p.connect_attempts += 1;
                    return Some(error(msg, "org.bluez.Error.InProgress", "In Progress"));
                }
                if p.connected {
                    p.connect_attempts += 1;
                    return Some(msg.method_return());
                }
                if self.reject_overlapping_connects && self.connecting_now > 0 {
                    self.in_progress_rejections += 1;
                    self.pack(mac).connect_attempts += 1;
                    return Some(error(msg, "org.bluez.Error.InProgress", "In Progress"));
                }
                let epoch = self.begin_link(mac);
                self.defer = Some(mac.to_string());
                self.after(
                    timing.connect,
                    Action::LinkUp {
                        mac: mac.to_string(),
                        epoch,
                        pairing: false,
                    },
                );
                None
            }
            "Disconnect" => {
                let p = self.pack(mac);
                p.log("Disconnect");
                if !p.connected && p.pending.is_none() {
                    return Some(error(msg, "org.bluez.Error.NotConnected", "Not Connected"));
                }
                self.link_down(mac, "Disconnect");
                Some(msg.method_return())
            }
            "Pair" => {
                let agent = self
                    .agents
                    .iter()
                    .find(|a| a.sender == sender)
                    .map(|a| a.capability.clone())
                    .or_else(|| {
                        let (s, path) = self.default_agent.clone()?;
                        self.agents
                            .iter()
                            .find(|a| a.sender == s && a.path == path)
                            .map(|a| a.capability.clone())
                    })
                    .unwrap_or_else(|| "none".to_string());
                let p = self.pack(mac);
                p.log(format!("Pair (agent: {agent})"));
                p.pair_attempts += 1;
                if p.paired {
                    return Some(error(
                        msg,
                        "org.bluez.Error.AlreadyExists",
                        "Already Exists",
                    ));
                }
                if p.pending.is_some() {
                    return Some(error(msg, "org.bluez.Error.InProgress", "In Progress"));
                }
                p.paired_with = Some(agent);
                let delay;
                let epoch;
                if p.connected {
                    delay = timing.resolve;
                    epoch = p.epoch;
                } else {
                    if self.reject_overlapping_connects && self.connecting_now > 0 {
                        self.in_progress_rejections += 1;
                        return Some(error(msg, "org.bluez.Error.InProgress", "In Progress"));
                    }
                    delay = timing.connect;
                    epoch = self.begin_link(mac);
                }
                self.defer = Some(mac.to_string());
                self.after(
                    delay,
                    Action::LinkUp {
                        mac: mac.to_string(),
                        epoch,
                        pairing: true,
                    },
                );
                None
            }
            "CancelPairing" => {
                let p = self.pack(mac);
                p.log("CancelPairing");
                if p.pending.is_some() && !p.paired {
                    self.link_down(mac, "pairing cancelled");
                }
                Some(msg.method_return())
            }
            _ => Some(unknown_method(msg, member)),
        }
    }

    fn characteristic(
        &mut self,
        msg: &Message,
        sender: &str,
        mac: &str,
        chr: u16,
        member: &str,
    ) -> Message {
        let p = self.pack(mac);
        let Some(c) = gatt_layout(p.generation)
            .1
            .into_iter()
            .find(|c| c.id == chr)
        else {
            return unknown_method(msg, member);
        };
        let path = p.chr_path(c.svc, c.id);
        let name = format!("char{chr:04x}");
        let can = |f: &str| c.flags.contains(&f);
        match member {
            "ReadValue" => {
                if !can("read") {
                    return error(msg, "org.bluez.Error.NotPermitted", "Read not permitted");
                }
                let v = p.values.get(&chr).cloned().unwrap_or_default();
                msg.method_return().append1(v)
            }
            "WriteValue" => {
                let Ok((data, opts)) = msg.read2::<Vec<u8>, PropMap>() else {
                    return bad_args(msg);
                };
                let op = dbus::arg::prop_cast::<String>(&opts, "type")
                    .cloned()
                    .unwrap_or_else(|| if can("write") { "request" } else { "command" }.into());
                let allowed = match op.as_str() {
                    "command" => can("write-without-response"),
                    "request" | "reliable" => can("write"),
                    _ => false,
                };
                if !allowed {
                    p.log(format!("write {op} {name} refused"));
                    return error(
                        msg,
                        "org.bluez.Error.NotSupported",
                        "Operation is not supported",
                    );
                }
                p.log(format!(
                    "write {op} {name} {:02x}",
                    data.get(4).copied().unwrap_or(0)
                ));
                p.writes.push(WriteRecord {
                    data: data.clone(),
                    op,
                    char_name: name,
                });
                if let Some(cmd) = parse_command(&data).filter(|_| c.takes_commands) {
                    self.respond(mac, cmd);
                }
                msg.method_return()
            }
            "StartNotify" => {
                if !can("notify") {
                    return error(
                        msg,
                        "org.bluez.Error.NotSupported",
                        "Operation is not supported",
                    );
                }
                if p.acquired.contains_key(&chr) {
                    return error(msg, "org.bluez.Error.NotPermitted", "Notify acquired");
                }
                let sessions = p.notify_sessions.entry(chr).or_default();
                let first = sessions.is_empty();
                if !sessions.insert(sender.to_string()) {
                    return error(msg, "org.bluez.Error.InProgress", "In Progress");
                }
                p.log(format!("notify start {name}"));
                if first {
                    self.props_changed(&path, I_CHAR, vec![("Notifying", Val::Bool(true))], &[]);
                }
                msg.method_return()
            }
            "StopNotify" => {
                let removed = p
                    .notify_sessions
                    .get_mut(&chr)
                    .is_some_and(|s| s.remove(sender));
                if !removed {
                    return error(msg, "org.bluez.Error.Failed", "No notify session started");
                }
                p.log(format!("notify stop {name}"));
                if p.notify_sessions.get(&chr).is_some_and(BTreeSet::is_empty) {
                    self.props_changed(&path, I_CHAR, vec![("Notifying", Val::Bool(false))], &[]);
                }
                msg.method_return()
            }
            "AcquireNotify" => {
                if !can("notify") {
                    return error(
                        msg,
                        "org.bluez.Error.NotSupported",
                        "Operation is not supported",
                    );
                }
                if p.notify_sessions.get(&chr).is_some_and(|s| !s.is_empty()) {
                    return error(msg, "org.bluez.Error.NotPermitted", "Already notifying");
                }
                let Ok((ours, theirs)) = UnixDatagram::pair() else {
                    return error(msg, "org.bluez.Error.Failed", "socketpair failed");
                };
                let _ = ours.set_nonblocking(true);
                // A client that let go of an earlier socket: BlueZ would have
                // seen the hang-up already.
                if let Some(old) = p.acquired.insert(chr, ours) {
                    let _ = old.send(&[]);
                }
                p.log(format!("notify acquire {name}"));
                // SAFETY: `theirs` is an open socket we own; ownership moves
                // into the D-Bus argument, which closes it after sending a
                // duplicate.
                let fd = unsafe { dbus::arg::OwnedFd::from_raw_fd(theirs.into_raw_fd()) };
                self.props_changed(
                    &path,
                    I_CHAR,
                    vec![
                        ("NotifyAcquired", Val::Bool(true)),
                        ("Notifying", Val::Bool(true)),
                    ],
                    &[],
                );
                msg.method_return().append2(fd, MTU)
            }
            "AcquireWrite" => error(
                msg,
                "org.bluez.Error.NotSupported",
                "Operation is not supported",
            ),
            _ => unknown_method(msg, member),
        }
    }

    fn handle(&mut self, msg: Message) {
        match msg.msg_type() {
            MessageType::MethodCall => match self.call(&msg) {
                Some(reply) => {
                    if !msg.get_no_reply() {
                        self.outbox.push(reply);
                    }
                }
                None => {
                    if let Some(mac) = self.defer.take() {
                        self.pack(&mac).pending = Some(msg);
                    }
                }
            },
            MessageType::Signal => {
                if msg.member().as_deref() != Some("NameOwnerChanged") {
                    return;
                }
                if let (Some(name), _, Some(new)) = msg.get3::<String, String, String>() {
                    if new.is_empty() && name.starts_with(':') {
                        self.client_gone(&name);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The command byte of a well-formed 20-byte host → BMS frame (spec §3).
pub fn parse_command(data: &[u8]) -> Option<u8> {
    if data.len() != 20 || data[..4] != [0xAA, 0x55, 0x90, 0xEB] {
        return None;
    }
    let sum = data[..19].iter().fold(0u8, |a, b| a.wrapping_add(*b));
    (sum == data[19]).then_some(data[4])
}

fn error(msg: &Message, name: &str, text: &str) -> Message {
    let name = ErrorName::new(name.to_string()).expect("error name");
    let text = CString::new(text).unwrap_or_default();
    msg.error(&name, &text)
}

fn bad_args(msg: &Message) -> Message {
    error(
        msg,
        "org.freedesktop.DBus.Error.InvalidArgs",
        "Invalid arguments",
    )
}

fn unknown_method(msg: &Message, member: &str) -> Message {
    error(
        msg,
        "org.freedesktop.DBus.Error.UnknownMethod",
        &format!("Unknown method {member}"),
    )
}

// ---------------------------------------------------------------------------
// The fake
// ---------------------------------------------------------------------------

struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub struct FakeBluez {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    bus: PrivateBus,
}

/// A test's turn on the shared fake, reset for it.
pub struct Exclusive {
    _turn: MutexGuard<'static, ()>,
    fake: &'static FakeBluez,
}

impl std::ops::Deref for Exclusive {
    type Target = FakeBluez;
    fn deref(&self) -> &FakeBluez {
        self.fake
    }
}

impl FakeBluez {
    /// A fake on a bus of its own.
    pub fn start() -> Self {
        let bus = PrivateBus::start();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new()),
            stop: AtomicBool::new(false),
        });
        let mut chan = Channel::open_private(bus.address()).expect("connect to the private bus");
        chan.register().expect("Hello on the private bus");
        let request = Message::new_method_call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "RequestName",
        )
        .expect("RequestName")
        .append2("org.bluez", 4u32);
        let reply = chan
            .send_with_reply_and_block(request, Duration::from_secs(5))
            .expect("own org.bluez");
        assert_eq!(
            reply.get1::<u32>(),
            Some(1),
            "not primary owner of org.bluez"
        );
        let watch = Message::new_method_call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "AddMatch",
        )
        .expect("AddMatch")
        .append1(
            "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged'",
        );
        chan.send_with_reply_and_block(watch, Duration::from_secs(5))
            .expect("watch NameOwnerChanged");

        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("fake-bluez".into())
            .spawn(move || serve(chan, &thread_shared))
            .expect("fake BlueZ thread");
        Self {
            shared,
            thread: Some(thread),
            bus,
        }
    }

    /// The process-wide fake that in-process bluer sessions talk to
    /// (`DBUS_SYSTEM_BUS_ADDRESS` points at it from the first call on).
    /// `None`, after saying so, when `dbus-daemon` is not installed;
    /// with `CI=true` that is a failure instead.
    pub fn shared() -> Option<&'static FakeBluez> {
        static FAKE: OnceLock<Option<FakeBluez>> = OnceLock::new();
        FAKE.get_or_init(|| {
            if !PrivateBus::available() {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "dbus-daemon is not installed (apt-get install dbus-daemon)"
                );
                eprintln!(
                    "BLE tests not run: dbus-daemon is not installed (apt-get install dbus-daemon)"
                );
                return None;
            }
            let fake = FakeBluez::start();
            // SAFETY: set once, before any bluer session (libdbus reads the
            // variable when the first system-bus connection is made and
            // caches it); the tests of this binary all come through here
            // before touching D-Bus.
            unsafe { std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", fake.address()) };
            Some(fake)
        })
        .as_ref()
    }

    /// Waits for the turn on the shared fake and resets it.
    pub fn exclusive() -> Option<Exclusive> {
        static TURN: Mutex<()> = Mutex::new(());
        let fake = Self::shared()?;
        let turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
        fake.reset();
        Some(Exclusive { _turn: turn, fake })
    }

    /// The bus address, for `DBUS_SYSTEM_BUS_ADDRESS`.
    pub fn address(&self) -> &str {
        self.bus.address()
    }

    /// The environment a bridge child process needs to use this fake.
    pub fn env(&self) -> [(&'static str, String); 1] {
        [("DBUS_SYSTEM_BUS_ADDRESS", self.address().to_string())]
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    /// Forgets every device and counter; knobs back to defaults.
    pub fn reset(&self) {
        let mut st = self.state();
        let macs: Vec<String> = st.packs.keys().cloned().collect();
        for mac in &macs {
            st.unexport(mac);
        }
        st.packs.clear();
        st.timers.clear();
        st.discovery_clients.clear();
        st.set_discovering(false);
        st.powered = true;
        st.timing = Timing::default();
        st.reject_overlapping_connects = true;
        st.connecting_now = 0;
        st.max_concurrent_connects = 0;
        st.in_progress_rejections = 0;
        st.agents_ever.clear();
    }

    /// A JK-BMS: advertises FFE0 (+FEE7) and manufacturer id 0x0B65 with
    /// `88 A0 <MAC>` as observed (spec §1).
    pub fn add_pack(
        &self,
        mac: &str,
        name: &str,
        generation: Generation,
        advertises: bool,
        requires_pairing: bool,
    ) {
        let mut st = self.state();
        let rssi = -55 - 5 * st.packs.len() as i16;
        let mut p = Pack::new(mac, Some(name), Some(generation), rssi);
        p.adv_uuids = vec![FFE0.into(), FEE7.into()];
        let mut body = vec![0x88, 0xA0];
        body.extend(
            mac.split(':')
                .filter_map(|b| u8::from_str_radix(b, 16).ok()),
        );
        p.maker = Some((0x0B65, body));
        p.advertises = advertises;
        p.requires_pairing = requires_pairing;
        st.packs.insert(p.mac.clone(), p);
    }

    /// Some other BLE device (not connectable to anything useful).
    pub fn add_device(
        &self,
        mac: &str,
        name: Option<&str>,
        uuids: &[&str],
        maker: Option<(u16, Vec<u8>)>,
    ) {
        let mut st = self.state();
        let rssi = -70 - st.packs.len() as i16;
        let mut p = Pack::new(mac, name, None, rssi);
        p.adv_uuids = uuids.iter().map(|s| s.to_string()).collect();
        p.maker = maker;
        st.packs.insert(p.mac.clone(), p);
    }

    pub fn set_manufacturer(&self, mac: &str, maker: Option<(u16, Vec<u8>)>) {
        self.state().pack(mac).maker = maker;
    }

    pub fn set_rssi(&self, mac: &str, rssi: i16) {
        self.state().pack(mac).rssi = rssi;
    }

    pub fn set_advertising(&self, mac: &str, on: bool) {
        self.state().pack(mac).advertises = on;
    }

    /// While false, connection attempts fail after the connect delay.
    pub fn set_reachable(&self, mac: &str, on: bool) {
        self.state().pack(mac).reachable = on;
    }

    /// What the pack sends when `cmd` is written. For `0x96` the
    /// cell-info frames (type 0x02) among them are then repeated every
    /// stream interval until the link goes.
    pub fn set_responses(&self, mac: &str, cmd: u8, frames: Vec<Vec<u8>>) {
        self.state().pack(mac).responses.insert(cmd, frames);
    }

    pub fn set_stream_interval(&self, mac: &str, every: Duration) {
        self.state().pack(mac).stream_interval = every;
    }

    pub fn set_timing(&self, timing: Timing) {
        self.state().timing = timing;
    }

    pub fn set_reject_overlapping_connects(&self, on: bool) {
        self.state().reject_overlapping_connects = on;
    }

    /// Link loss: Connected=false, services gone, notifications stop.
    pub fn drop_link(&self, mac: &str) {
        self.state().link_down(mac, "link lost");
    }

    /// Like `bluetoothctl remove`.
    pub fn remove_device(&self, mac: &str) {
        self.state().unexport(mac);
    }

    pub fn connect_attempts(&self, mac: &str) -> u32 {
        self.state().pack(mac).connect_attempts
    }

    /// Notifications that reached a subscribed client.
    pub fn notifications_delivered(&self, mac: &str) -> u64 {
        self.state().pack(mac).delivered
    }

    pub fn pair_attempts(&self, mac: &str) -> u32 {
        self.state().pack(mac).pair_attempts
    }

    /// The capability of the agent a Pair went through ("none" without).
    pub fn paired_with(&self, mac: &str) -> Option<String> {
        self.state().pack(mac).paired_with.clone()
    }

    pub fn is_connected(&self, mac: &str) -> bool {
        self.state().pack(mac).connected
    }

    pub fn is_paired(&self, mac: &str) -> bool {
        self.state().pack(mac).paired
    }

    pub fn is_trusted(&self, mac: &str) -> bool {
        self.state().pack(mac).trusted
    }

    /// Whether a client holds a notification subscription on the pack.
    pub fn is_subscribed(&self, mac: &str) -> bool {
        let mut st = self.state();
        let p = st.pack(mac);
        !p.acquired.is_empty() || p.notify_sessions.values().any(|s| !s.is_empty())
    }

    pub fn is_discovering(&self) -> bool {
        self.state().discovering
    }

    pub fn writes(&self, mac: &str) -> Vec<WriteRecord> {
        self.state().pack(mac).writes.clone()
    }

    /// What happened to the pack, in order (`Connect`, `connected`,
    /// `notify acquire char0004`, `write request char0002 97`, …).
    pub fn log(&self, mac: &str) -> Vec<String> {
        self.state().pack(mac).log.clone()
    }

    /// Agents registered now / ever since the last reset.
    pub fn agents(&self) -> Vec<AgentRecord> {
        self.state().agents.clone()
    }

    pub fn agents_ever(&self) -> Vec<AgentRecord> {
        self.state().agents_ever.clone()
    }

    pub fn max_concurrent_connects(&self) -> u32 {
        self.state().max_concurrent_connects
    }

    pub fn in_progress_rejections(&self) -> u32 {
        self.state().in_progress_rejections
    }

    /// Polls `pred` until it holds or `timeout` passes.
    pub async fn until(&self, timeout: Duration, mut pred: impl FnMut(&Self) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for FakeBluez {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The fake's loop: timers, outgoing signals, incoming calls. Knobs called
/// from tests only change the state; this loop sends what they queue
/// within one poll period.
fn serve(chan: Channel, shared: &Shared) {
    const POLL: Duration = Duration::from_millis(5);
    while !shared.stop.load(Ordering::SeqCst) {
        let wait = {
            let mut st = shared.lock();
            st.run_due();
            for m in st.outbox.drain(..) {
                let _ = chan.send(m);
            }
            st.timers
                .keys()
                .next()
                .map(|(at, _)| at.saturating_duration_since(Instant::now()))
                .unwrap_or(POLL)
                .min(POLL)
        };
        if chan.read_write(Some(wait)).is_err() {
            return;
        }
        while let Some(msg) = chan.pop_message() {
            let mut st = shared.lock();
            st.handle(msg);
            for m in st.outbox.drain(..) {
                let _ = chan.send(m);
            }
        }
    }
    chan.flush();
}

// ---------------------------------------------------------------------------
// Test vectors
// ---------------------------------------------------------------------------

/// The JK-BMS vectors folder (`$E2M_VECTORS/jkbms`, else
/// `../shared/vectors/jkbms`), or `None` after printing that `test` was not
/// run; with `CI=true` a missing folder fails instead. Captured frames are
/// read from there at test time, never copied into the repository.
pub fn jkbms_vectors(test: &str) -> Option<PathBuf> {
    let root = match std::env::var_os("E2M_VECTORS") {
        Some(v) => PathBuf::from(v),
        None => FsPath::new(env!("CARGO_MANIFEST_DIR")).join("../shared/vectors"),
    };
    let dir = root.join("jkbms");
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: JK-BMS vectors missing at {} (set E2M_VECTORS)",
        dir.display()
    );
    println!(
        "{test}: not run: {} missing (set E2M_VECTORS)",
        dir.display()
    );
    None
}

/// `frame_hex` of one vector file (name without `.json`).
pub fn vector_frame(dir: &FsPath, name: &str) -> Vec<u8> {
    let path = dir.join(format!("{name}.json"));
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("vector JSON");
    let hex = json["frame_hex"].as_str().expect("frame_hex");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}
