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
use crate::drivers::jkbms::cell_info::{BalancerState, Cell, CellInfo, Temperatures};
use crate::drivers::jkbms::command::{Command, Request, ack_record};
use crate::drivers::jkbms::device_info::DeviceInfo;
use crate::drivers::jkbms::frame::Variant;
use crate::drivers::jkbms::link::{LinkError, PackConnector, PackLink};
use crate::drivers::jkbms::settings::Settings;

/// A BLE notification's payload size with the default MTU.
const FRAGMENT: usize = 20;
/// The cell-info stream's period.
const STREAM_PERIOD: Duration = Duration::from_millis(500);
/// How far a healthy cell wanders from the pack's mean, in V: a balanced
/// pack keeps its cell delta below twice this.
const CELL_SPREAD_V: f64 = 0.008;
/// What the active balancer moves while a drifted cell is being pulled
/// back, in A.
const BALANCING_A: f64 = 0.6;
/// Below this deviation the balancer idles, in V.
const BALANCE_TRIGGER_V: f64 = 0.01;

/// One simulated pack.
#[derive(Debug, Clone)]
pub struct SimPack {
    pub cells: u8,
    pub capacity_ah: f64,
    pub soc: f64,
    /// Seed of the per-cell offsets.
    pub seed: u64,
    /// One cell runs away from the others and is balanced back, on a
    /// script; `None`: every cell stays close to the mean.
    pub drift: Option<DriftScript>,
}

impl Default for SimPack {
    fn default() -> Self {
        Self {
            cells: 16,
            capacity_ah: 280.0,
            soc: 65.0,
            seed: 1,
            drift: None,
        }
    }
}

/// A cell that drifts away from the others and back: starting `start`
/// after the pack was added to its [`SimConnector`], its voltage deviates
/// linearly up to `peak_v` over `rise`, stays there for `hold`, and the
/// balancer pulls it back over `fall`; then it starts again every `every`
/// (`None`: once). Time counts from when the pack was added, so a
/// reconnect does not restart the script.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftScript {
    /// The cell's number, 1-based as the BMS counts them.
    pub cell: u8,
    /// V; positive runs high, negative runs low.
    pub peak_v: f64,
    pub start: Duration,
    pub rise: Duration,
    pub hold: Duration,
    pub fall: Duration,
    pub every: Option<Duration>,
}

impl DriftScript {
    /// The demo's: cell 5 runs 80 mV high 30 s after start for about a
    /// minute and a half, balanced back within half a minute; every ten
    /// minutes. With the healthy cells within ±[`CELL_SPREAD_V`] the pack's
    /// cell delta stays between 64 and 96 mV for over 80 s (above the
    /// usual 50 mV imbalance threshold, below a 100 mV critical one) and is
    /// back below 20 mV 155 s after start.
    pub fn demo() -> Self {
        Self {
            cell: 5,
            peak_v: 0.08,
            start: Duration::from_secs(30),
            rise: Duration::from_secs(15),
            hold: Duration::from_secs(80),
            fall: Duration::from_secs(30),
            every: Some(Duration::from_secs(600)),
        }
    }

    /// How long one drift lasts, from its start until the cell is back.
    pub fn length(&self) -> Duration {
        self.rise + self.hold + self.fall
    }

    /// Where the script is at `elapsed` after the pack was added.
    pub fn stage_at(&self, elapsed: Duration) -> DriftStage {
        match self.phase(elapsed) {
            None => DriftStage::Quiet,
            Some(into) if into < self.rise => DriftStage::Rising,
            Some(into) if into < self.rise + self.hold => DriftStage::Holding,
            Some(_) => DriftStage::Falling,
        }
    }

    /// Time into the current drift, `None` outside one.
    fn phase(&self, elapsed: Duration) -> Option<Duration> {
        let since = elapsed.checked_sub(self.start)?;
        let into = match self.every {
            Some(every) if !every.is_zero() => {
                Duration::from_nanos((since.as_nanos() % every.as_nanos()) as u64)
            }
            _ => since,
        };
        (into < self.length()).then_some(into)
    }

    /// The cell's deviation in V at `elapsed` after the pack was added.
    pub fn offset_at(&self, elapsed: Duration) -> f64 {
        let Some(into) = self.phase(elapsed) else {
            return 0.0;
        };
        let peak = if self.peak_v.is_finite() {
            self.peak_v
        } else {
            0.0
        };
        let frac = |part: Duration, of: Duration| {
            if of.is_zero() {
                1.0
            } else {
                part.as_secs_f64() / of.as_secs_f64()
            }
        };
        if into < self.rise {
            peak * frac(into, self.rise)
        } else if into < self.rise + self.hold {
            peak
        } else {
            peak * (1.0 - frac(into - self.rise - self.hold, self.fall))
        }
    }

    /// The balancer works on the cell from when it starts falling back.
    fn balancing(&self, elapsed: Duration) -> bool {
        self.stage_at(elapsed) == DriftStage::Falling
            && self.offset_at(elapsed).abs() > BALANCE_TRIGGER_V
    }
}

/// The stages of one [`DriftScript`] run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftStage {
    /// Every cell close to the mean.
    Quiet,
    /// The cell moves away.
    Rising,
    /// The cell stays away.
    Holding,
    /// The balancer pulls it back.
    Falling,
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
    packs: Arc<Mutex<HashMap<String, Entry>>>,
}

/// A pack, where its current comes from, and when it was added (the epoch
/// of its drift script).
type Entry = (SimPack, CurrentSource, Instant);

impl SimConnector {
    pub fn add(&self, mac: &str, pack: SimPack, source: CurrentSource) {
        if let Ok(mut p) = self.packs.lock() {
            p.insert(mac.to_ascii_uppercase(), (pack, source, Instant::now()));
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
        let Some((model, source, epoch)) = found else {
            // What a pack that never advertises looks like.
            tokio::time::sleep(Duration::from_secs(2)).await;
            return Err(LinkError(format!("pack {} not seen", pack.mac)));
        };
        Ok(SimLink::start(model, source, epoch))
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
    fn start(pack: SimPack, source: CurrentSource, epoch: Instant) -> Self {
        let (cmd_tx, cmd_rx) = mpsc::channel(8);
        let (note_tx, note_rx) = mpsc::channel(256);
        let task = tokio::spawn(serve(Battery::new(pack, source, epoch), cmd_rx, note_tx));
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
    /// When the pack was added: the drift script's time zero.
    epoch: Instant,
    last: Instant,
    current: f64,
    temp: f64,
}

impl Battery {
    fn new(pack: SimPack, source: CurrentSource, epoch: Instant) -> Self {
        let mut rng = pack.seed.max(1);
        let offsets = (0..pack.cells)
            .map(|_| (next(&mut rng) % 13) as f64 / 1000.0 - 0.006)
            .collect();
        Self {
            pack,
            source,
            offsets,
            rng,
            epoch,
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
        self.step_at(Instant::now())
    }

    /// The pack at `now`; time before the last step counts as none.
    fn step_at(&mut self, now: Instant) -> CellInfo {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
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
        // Cells wander a little apart and back.
        for o in &mut self.offsets {
            let r = (next(&mut self.rng) % 3) as f64 - 1.0;
            *o = (*o + r * 0.0002).clamp(-CELL_SPREAD_V, CELL_SPREAD_V);
        }
        let elapsed = now.saturating_duration_since(self.epoch);
        let drift = self.pack.drift.as_ref();
        let drifted = drift.and_then(|d| d.cell.checked_sub(1)).map(usize::from);
        let drift_v = drift.map_or(0.0, |d| d.offset_at(elapsed));
        self.temp = (self.temp + self.current.abs() * 0.0005 * dt
            - (self.temp - 22.0) * 0.001 * dt)
            .clamp(-10.0, 60.0);
        let base = Self::ocv(self.pack.soc) + self.current * 0.0005;
        let mut info = CellInfo::new(Variant::Jk02_32s);
        info.cells = self
            .offsets
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let o = if Some(i) == drifted { o + drift_v } else { *o };
                Cell {
                    number: i as u8 + 1,
                    voltage: ((base + o) * 1000.0).round() / 1000.0,
                    resistance: 60.0 + i as f64,
                }
            })
            .collect();
        if drift.is_some_and(|d| d.balancing(elapsed)) {
            // An active balancer moves charge from the highest cell to the
            // lowest; JK reports the direction of the drifted cell.
            info.balancer = if drift_v > 0.0 {
                BalancerState::Discharging
            } else {
                BalancerState::Charging
            };
            info.balancing_current = BALANCING_A;
        }
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
    if next(rng).is_multiple_of(8) && tx.send(b"AT\r\n".to_vec()).await.is_err() {
        return false;
    }
    true
}

/// What a simulated pack answers to the device-info request.
pub fn device_info_frame(pack: &SimPack) -> Vec<u8> {
    let mut info = DeviceInfo::example();
    info.device_name = format!("JK-sim-{}", pack.seed);
    info.serial_number = format!("5032148490{:05}", pack.seed);
    info.encode().as_bytes().to_vec()
}

/// The settings frame a simulated pack sends before it streams.
pub fn settings_frame() -> Option<Vec<u8>> {
    Settings::example(Variant::Jk02_32s)
        .encode()
        .ok()
        .map(|f| f.as_bytes().to_vec())
}

/// `n` consecutive cell-info frames of `pack`, `period` apart, for a
/// Bluetooth stack that replays them (the fake BlueZ of the benches).
pub fn cell_frames(pack: &SimPack, n: usize, period: Duration) -> Vec<Vec<u8>> {
    let epoch = Instant::now();
    let mut battery = Battery::new(pack.clone(), CurrentSource::Swing, epoch);
    (0..n)
        .filter_map(|k| {
            let mut info = battery.step_at(epoch + period * (k as u32 + 1));
            info.counter = (k as u8).wrapping_add(1);
            info.encode().ok().map(|f| f.as_bytes().to_vec())
        })
        .collect()
}

async fn serve(
    mut battery: Battery,
    mut commands: mpsc::Receiver<Vec<u8>>,
    tx: mpsc::Sender<Vec<u8>>,
) {
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
                        if !send_fragmented(&tx, &device_info_frame(&battery.pack), &mut rng).await {
                            return;
                        }
                        // The "ready" record some firmware sends after it.
                        if tx.send(ack_record().to_vec()).await.is_err() {
                            return;
                        }
                    }
                    Some(Request::CellInfo) => {
                        if let Some(frame) = settings_frame() {
                            if !send_fragmented(&tx, &frame, &mut rng).await {
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

    /// Cell delta of every frame of a pack streamed for `secs` seconds after
    /// it was added, in (seconds since added, V).
    fn deltas(pack: SimPack, secs: u64) -> Vec<(f64, f64)> {
        let epoch = Instant::now();
        let mut battery = Battery::new(pack, CurrentSource::Swing, epoch);
        (0..secs * 2)
            .map(|k| {
                let at = Duration::from_millis(500 * k);
                let info = battery.step_at(epoch + at);
                let stats = info.stats().expect("cells");
                (at.as_secs_f64(), stats.delta_voltage)
            })
            .collect()
    }

    #[test]
    fn the_drift_script_raises_the_cell_delta_inside_its_window_only() {
        let script = DriftScript::demo();
        let start = script.start.as_secs_f64();
        let period = script.every.expect("repeats").as_secs_f64();
        for seed in 1..=8 {
            let pack = SimPack {
                seed,
                drift: Some(script.clone()),
                ..SimPack::default()
            };
            let mut above = 0.0;
            for (t, delta) in deltas(pack, 2 * period as u64) {
                // Seconds into the current drift, or before the first one.
                let into = if t < start {
                    -1.0
                } else {
                    (t - start) % period
                };
                if (15.0..95.0).contains(&into) {
                    assert!(delta > 0.06, "seed {seed}: {delta} V at {t} s");
                }
                assert!(delta < 0.098, "seed {seed}: {delta} V at {t} s");
                if !(0.0..125.0).contains(&into) {
                    assert!(delta < 0.02, "seed {seed}: {delta} V at {t} s");
                }
                if t < period && delta > 0.05 {
                    above += 0.5;
                }
            }
            assert!((80.0..=110.0).contains(&above), "seed {seed}: {above} s");
        }
    }

    #[test]
    fn without_a_drift_the_cells_stay_together_for_hours() {
        for seed in 1..=4 {
            let pack = SimPack {
                seed,
                ..SimPack::default()
            };
            let worst = deltas(pack, 4 * 3600)
                .into_iter()
                .map(|(_, d)| d)
                .fold(0.0, f64::max);
            assert!(worst < 0.02, "seed {seed}: {worst} V");
        }
    }

    #[test]
    fn drift_offsets_follow_the_script() {
        let s = DriftScript::demo();
        let at = |secs: f64| s.offset_at(Duration::from_secs_f64(secs));
        assert_eq!(at(0.0), 0.0);
        assert_eq!(at(29.9), 0.0);
        assert!((at(37.5) - 0.04).abs() < 1e-9, "half way up");
        assert_eq!(at(45.0), 0.08);
        assert_eq!(at(124.9), 0.08);
        assert!((at(140.0) - 0.04).abs() < 1e-9, "half way back");
        assert_eq!(at(155.0), 0.0);
        assert_eq!(at(629.0), 0.0);
        assert_eq!(at(600.0 + 60.0), 0.08, "again ten minutes later");
        let once = DriftScript { every: None, ..s };
        assert_eq!(once.offset_at(Duration::from_secs(660)), 0.0);
        // The balancer reports its work while the cell comes back.
        assert!(!once.balancing(Duration::from_secs(100)));
        assert!(once.balancing(Duration::from_secs(130)));
        assert!(!once.balancing(Duration::from_secs(154)));
    }

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

    #[test]
    fn replayable_frames_decode_in_order() {
        let pack = SimPack {
            cells: 8,
            ..SimPack::default()
        };
        let mut bytes = device_info_frame(&pack);
        bytes.extend(settings_frame().expect("settings frame"));
        for f in cell_frames(&pack, 3, Duration::from_millis(500)) {
            bytes.extend(f);
        }
        let mut assembler = Assembler::new();
        let mut frames = Vec::new();
        assembler.feed(&bytes, |f| frames.push(f));
        let mut decoder = StreamDecoder::new(None);
        let decoded: Vec<Decoded> = frames
            .iter()
            .map(|f| decoder.decode(f).expect("decodes"))
            .collect();
        assert_eq!(decoded.len(), 5);
        assert!(
            matches!(&decoded[0], Decoded::DeviceInfo(d) if d.device_name == "JK-sim-1"),
            "{:?}",
            decoded[0]
        );
        assert!(matches!(decoded[1], Decoded::Settings(_)));
        for (k, d) in decoded[2..].iter().enumerate() {
            let Decoded::CellInfo(c) = d else {
                panic!("cell info expected: {d:?}")
            };
            assert_eq!(c.counter, k as u8 + 1);
            assert_eq!(c.cells.len(), 8);
        }
    }
}
