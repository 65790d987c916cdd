//! Simulated JK-BMS packs behind the same link traits as BlueZ: they answer
//! 0x97 and 0x96 with real 300-byte frames from a battery model, cut into
//! 20-byte notifications with the junk real modules send, so the demo runs
//! the real session, assembler and decoder without Bluetooth hardware.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::deye_model::InverterModel;
use crate::config::BmsConfig;
use crate::drivers::jkbms::cell_info::{Cell, CellInfo, Temperatures};
use crate::drivers::jkbms::command::{Command, Request, ack_record};
use crate::drivers::jkbms::device_info::DeviceInfo;
use crate::drivers::jkbms::frame::Variant;
use crate::drivers::jkbms::link::{LinkError, PackConnector, PackLink};
use crate::drivers::jkbms::settings::Settings;

/// A BLE notification's payload size with the default MTU.
const FRAGMENT: usize = 20;
/// The cell-info stream's period.
const STREAM_PERIOD: Duration = Duration::from_millis(500);

/// One simulated pack.
#[derive(Debug, Clone)]
pub struct SimPack {
    pub cells: u8,
    pub capacity_ah: f64,
    pub soc: f64,
    /// Seed of the per-cell offsets.
    pub seed: u64,
}

impl Default for SimPack {
    fn default() -> Self {
        Self {
            cells: 16,
            capacity_ah: 280.0,
            soc: 65.0,
            seed: 1,
        }
    }
}

/// Where a pack's current comes from.
#[derive(Clone)]
pub enum CurrentSource {
    /// Its share of the simulated inverter's battery power (+ = discharging
    /// there, so the pack sees a negative current).
    Inverter {
        model: Arc<Mutex<InverterModel>>,
        share: f64,
    },
    /// A slow charge/discharge swing, for a demo without an inverter.
    Swing,
}

/// Opens links to simulated packs by MAC.
#[derive(Clone, Default)]
pub struct SimConnector {
    packs: Arc<Mutex<HashMap<String, (SimPack, CurrentSource)>>>,
}

impl SimConnector {
    pub fn add(&self, mac: &str, pack: SimPack, source: CurrentSource) {
        if let Ok(mut p) = self.packs.lock() {
            p.insert(mac.to_ascii_uppercase(), (pack, source));
        }
    }
}

impl PackConnector for SimConnector {
    type Link = SimLink;

    async fn open(&self, pack: &BmsConfig) -> Result<SimLink, LinkError> {
        let found = self
            .packs
            .lock()
            .ok()
            .and_then(|p| p.get(&pack.mac.to_ascii_uppercase()).cloned());
        let Some((model, source)) = found else {
            // What a pack that never advertises looks like.
            tokio::time::sleep(Duration::from_secs(2)).await;
            return Err(LinkError(format!("pack {} not seen", pack.mac)));
        };
        Ok(SimLink::start(model, source))
    }
}

/// One simulated connection: a task that turns commands into
/// notifications.
pub struct SimLink {
    commands: mpsc::Sender<Vec<u8>>,
    notifications: mpsc::Receiver<Vec<u8>>,
    task: JoinHandle<()>,
}

impl SimLink {
    fn start(pack: SimPack, source: CurrentSource) -> Self {
        let (cmd_tx, cmd_rx) = mpsc::channel(8);
        let (note_tx, note_rx) = mpsc::channel(256);
        let task = tokio::spawn(serve(pack, source, cmd_rx, note_tx));
        Self {
            commands: cmd_tx,
            notifications: note_rx,
            task,
        }
    }
}

impl PackLink for SimLink {
    async fn write(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        self.commands
            .send(frame.to_vec())
            .await
            .map_err(|_| LinkError("simulated link closed".into()))
    }

    async fn recv(&mut self) -> Option<Vec<u8>> {
        self.notifications.recv().await
    }

    async fn disconnect(self) {
        self.task.abort();
    }
}

/// The battery's state between frames.
struct Battery {
    pack: SimPack,
    source: CurrentSource,
    offsets: Vec<f64>,
    rng: u64,
    last: Instant,
    current: f64,
    temp: f64,
}

impl Battery {
    fn new(pack: SimPack, source: CurrentSource) -> Self {
        let mut rng = pack.seed.max(1);
        let offsets = (0..pack.cells)
            .map(|_| (next(&mut rng) % 21) as f64 / 1000.0 - 0.010)
            .collect();
        Self {
            pack,
            source,
            offsets,
            rng,
            last: Instant::now(),
            current: 0.0,
            temp: 22.0,
        }
    }

    /// LFP open-circuit voltage per cell, roughly: flat in the middle.
    fn ocv(soc: f64) -> f64 {
        match soc {
            s if s < 10.0 => 3.0 + s * 0.02,
            s if s > 95.0 => 3.35 + (s - 95.0) * 0.01,
            s => 3.2 + (s - 10.0) * 0.15 / 85.0,
        }
    }

    fn step(&mut self) -> CellInfo {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        let nominal_v = self.pack.cells as f64 * 3.2;
        self.current = match &self.source {
            CurrentSource::Inverter { model, share } => model
                .lock()
                .map(|m| -m.snapshot().battery_w * share / nominal_v)
                .unwrap_or(0.0),
            CurrentSource::Swing => {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                30.0 * (t / 600.0).sin()
            }
        };
        self.pack.soc = (self.pack.soc
            + self.current * dt / 3600.0 / self.pack.capacity_ah * 100.0)
            .clamp(0.0, 100.0);
        // Cells drift slowly apart and back.
        for o in &mut self.offsets {
            let r = (next(&mut self.rng) % 3) as f64 - 1.0;
            *o = (*o + r * 0.0002).clamp(-0.02, 0.02);
        }
        self.temp = (self.temp + self.current.abs() * 0.0005 * dt
            - (self.temp - 22.0) * 0.001 * dt)
            .clamp(-10.0, 60.0);
        let base = Self::ocv(self.pack.soc) + self.current * 0.0005;
        let mut info = CellInfo::new(Variant::Jk02_32s);
        info.cells = self
            .offsets
            .iter()
            .enumerate()
            .map(|(i, o)| Cell {
                number: i as u8 + 1,
                voltage: ((base + o) * 1000.0).round() / 1000.0,
                resistance: 60.0 + i as f64,
            })
            .collect();
        info.enabled_cells_mask = Some(((1u64 << self.pack.cells) - 1) as u32);
        info.pack_voltage = info.cells.iter().map(|c| c.voltage).sum();
        info.current = Some((self.current * 1000.0).round() / 1000.0);
        info.soc = Some(self.pack.soc.round() as u8);
        info.soh = Some(100);
        info.remaining_capacity = Some(self.pack.capacity_ah * self.pack.soc / 100.0);
        info.full_charge_capacity = Some(self.pack.capacity_ah);
        info.cycle_count = Some(42);
        info.total_cycle_capacity = Some(42.0 * self.pack.capacity_ah);
        info.temperatures = Temperatures {
            mosfet: Some(self.temp + 3.0),
            t1: Some(self.temp),
            t2: Some(self.temp - 0.5),
            t3: None,
            t4: None,
            t5: None,
        };
        info.charging_mosfet = Some(true);
        info.discharging_mosfet = Some(true);
        info.uptime_s = 553_800 + self.pack.seed as u32;
        info
    }
}

fn next(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

/// Sends `frame` as 20-byte notifications, sometimes with an `AT\r\n`
/// in between as real modules do.
async fn send_fragmented(tx: &mpsc::Sender<Vec<u8>>, frame: &[u8], rng: &mut u64) -> bool {
    for chunk in frame.chunks(FRAGMENT) {
        if tx.send(chunk.to_vec()).await.is_err() {
            return false;
        }
    }
    if next(rng) % 8 == 0 && tx.send(b"AT\r\n".to_vec()).await.is_err() {
        return false;
    }
    true
}

async fn serve(
    pack: SimPack,
    source: CurrentSource,
    mut commands: mpsc::Receiver<Vec<u8>>,
    tx: mpsc::Sender<Vec<u8>>,
) {
    let mut battery = Battery::new(pack, source);
    let mut rng = battery.pack.seed.wrapping_mul(0x9E37_79B9).max(1);
    let mut streaming = false;
    let mut counter: u8 = 0;
    let mut tick = tokio::time::interval(STREAM_PERIOD);
    loop {
        tokio::select! {
            cmd = commands.recv() => {
                let Some(bytes) = cmd else { return };
                let Ok(cmd) = Command::decode(&bytes) else { continue };
                match Request::from_register(cmd.register) {
                    Some(Request::DeviceInfo) => {
                        let mut info = DeviceInfo::example();
                        info.device_name = format!("JK-sim-{}", battery.pack.seed);
                        info.serial_number = format!("5032148490{:05}", battery.pack.seed);
                        if !send_fragmented(&tx, info.encode().as_bytes(), &mut rng).await {
                            return;
                        }
                        // The "ready" record some firmware sends after it.
                        if tx.send(ack_record().to_vec()).await.is_err() {
                            return;
                        }
                    }
                    Some(Request::CellInfo) => {
                        if let Ok(frame) = Settings::example(Variant::Jk02_32s).encode() {
                            if !send_fragmented(&tx, frame.as_bytes(), &mut rng).await {
                                return;
                            }
                        }
                        streaming = true;
                    }
                    _ => {}
                }
            }
            _ = tick.tick(), if streaming => {
                let mut info = battery.step();
                counter = counter.wrapping_add(1);
                info.counter = counter;
                if let Ok(frame) = info.encode() {
                    if !send_fragmented(&tx, frame.as_bytes(), &mut rng).await {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::jkbms::assembler::Assembler;
    use crate::drivers::jkbms::{Decoded, StreamDecoder};

    #[tokio::test]
    async fn a_simulated_pack_streams_frames_the_real_decoder_accepts() {
        let connector = SimConnector::default();
        connector.add(
            "AA:BB:CC:00:00:01",
            SimPack::default(),
            CurrentSource::Swing,
        );
        let cfg: BmsConfig =
            toml::from_str("id = \"p\"\nmac = \"aa:bb:cc:00:00:01\"").expect("config");
        let mut link = connector.open(&cfg).await.expect("open");
        link.write(&Request::DeviceInfo.encode())
            .await
            .expect("write");
        link.write(&Request::CellInfo.encode())
            .await
            .expect("write");
        let mut assembler = Assembler::new();
        let mut decoder = StreamDecoder::new(None);
        let (mut device, mut cells) = (0, 0);
        let deadline = Instant::now() + Duration::from_secs(5);
        while cells < 3 && Instant::now() < deadline {
            let Some(bytes) = link.recv().await else {
                break;
            };
            let mut frames = Vec::new();
            assembler.feed(&bytes, |f| frames.push(f));
            for f in frames {
                match decoder.decode(&f) {
                    Ok(Decoded::DeviceInfo(_)) => device += 1,
                    Ok(Decoded::CellInfo(c)) => {
                        assert_eq!(c.cells.len(), 16);
                        let sum: f64 = c.cells.iter().map(|c| c.voltage).sum();
                        assert!((c.pack_voltage - sum).abs() < 0.05);
                        cells += 1;
                    }
                    _ => {}
                }
            }
        }
        assert_eq!(device, 1);
        assert!(cells >= 3, "{cells} cell frames");
        link.disconnect().await;

        let other: BmsConfig =
            toml::from_str("id = \"q\"\nmac = \"aa:bb:cc:00:00:09\"").expect("config");
        assert!(
            connector.open(&other).await.is_err(),
            "an unknown pack is not seen"
        );
    }
}
