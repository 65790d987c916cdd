//! A Solarman V5 logger stick on loopback, serving a simulated Deye through
//! the real envelope, with the stick's bad habits as knobs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::deye_model::{InverterModel, SimTime};
use crate::drivers::deye::rtu::{self, Request};
use crate::drivers::deye::v5::{self, Deframer, Times};

/// Gap between a heartbeat (or the first half of a split reply) and what
/// follows: clients that read "one recv = one frame", pysolarmanv5 among
/// them, lose the reply when the two arrive in one segment, and a loaded
/// machine merges writes a few ms apart.
const HEARTBEAT_GAP_MS: u64 = 50;

/// Faults a real stick shows, switchable while the simulator runs.
#[derive(Debug)]
pub struct Faults {
    /// Delay before each reply. Real sticks take 50–1000 ms; pysolarmanv5's
    /// synchronous client loses replies that come back within microseconds.
    pub latency_ms: AtomicU64,
    /// Close the connection after every N requests (0: never).
    pub drop_every: AtomicU64,
    /// Garbage bytes (no 0xA5 among them) before each reply.
    pub garbage: AtomicBool,
    /// A heartbeat frame before each reply, as a separate write.
    pub heartbeat: AtomicBool,
    /// A reply with somebody else's sequence byte before ours.
    pub stray_reply: AtomicBool,
    /// `00 00` after the Modbus CRC, as some Deye/stick pairs send.
    pub double_crc: AtomicBool,
    /// The AT banner newer firmware sends on connect.
    pub at_banner: AtomicBool,
    /// Every reply is the `05 00` status: the inverter does not answer.
    pub no_answer: AtomicBool,
    /// No reply at all: the request times out.
    pub silent: AtomicBool,
    /// Split each reply in two writes, and merge the second half with a
    /// heartbeat.
    pub fragment: AtomicBool,
    /// A frame with a bad checksum before each reply.
    pub corrupt: AtomicBool,
    /// Valid frames carrying nonsense: the inverter output (register 175)
    /// reads 32000 W, as the corrupted polls users report.
    pub spike: AtomicBool,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency_ms: AtomicU64::new(30),
            drop_every: AtomicU64::new(0),
            garbage: AtomicBool::new(false),
            heartbeat: AtomicBool::new(false),
            stray_reply: AtomicBool::new(false),
            double_crc: AtomicBool::new(false),
            at_banner: AtomicBool::new(false),
            no_answer: AtomicBool::new(false),
            silent: AtomicBool::new(false),
            fragment: AtomicBool::new(false),
            corrupt: AtomicBool::new(false),
            spike: AtomicBool::new(false),
        }
    }
}

impl Faults {
    /// Every fault off (latency stays).
    pub fn clear(&self) {
        for f in [
            &self.garbage,
            &self.heartbeat,
            &self.stray_reply,
            &self.double_crc,
            &self.at_banner,
            &self.no_answer,
            &self.silent,
            &self.fragment,
            &self.corrupt,
            &self.spike,
        ] {
            f.store(false, Ordering::Relaxed);
        }
        self.drop_every.store(0, Ordering::Relaxed);
    }
}

/// What the simulator has served, for tests.
#[derive(Debug, Default)]
pub struct SimStats {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
}

/// A running simulated logger stick.
pub struct SolarmanSim {
    pub addr: SocketAddr,
    pub serial: u32,
    pub faults: Arc<Faults>,
    pub stats: Arc<SimStats>,
    pub model: Arc<Mutex<InverterModel>>,
    task: JoinHandle<()>,
}

impl SolarmanSim {
    /// Listens on `listen` (use port 0 for a free one).
    pub async fn start(
        listen: SocketAddr,
        serial: u32,
        model: InverterModel,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let faults = Arc::new(Faults::default());
        let stats = Arc::new(SimStats::default());
        let model = Arc::new(Mutex::new(model));
        let shared = Shared {
            serial,
            faults: faults.clone(),
            stats: stats.clone(),
            model: model.clone(),
            started: SystemTime::now(),
        };
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(sock, shared).await {
                        tracing::debug!(error = %e, "simulated logger: connection ended");
                    }
                });
            }
        });
        Ok(Self {
            addr,
            serial,
            faults,
            stats,
            model,
            task,
        })
    }
}

impl Drop for SolarmanSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Shared {
    serial: u32,
    faults: Arc<Faults>,
    stats: Arc<SimStats>,
    model: Arc<Mutex<InverterModel>>,
    started: SystemTime,
}

impl Shared {
    fn times(&self) -> Times {
        let now = unix_now();
        let up = SystemTime::now()
            .duration_since(self.started)
            .map(|d| d.as_secs())
            .unwrap_or(0) as u32;
        // A stick that left the factory a while ago.
        let total = 4_000_000u32.saturating_add(up);
        Times {
            total_working: total,
            power_on: up,
            offset: (now as u32).saturating_sub(total),
        }
    }

    /// The Modbus answer to one RTU request, from the model.
    fn answer(&self, request: &[u8]) -> Option<Vec<u8>> {
        let req = match rtu::decode_request(request) {
            Ok(r) => r,
            // A real inverter ignores a frame it cannot read; the stick
            // then says it got no answer.
            Err(_) => return None,
        };
        let mut model = self.model.lock().ok()?;
        model.advance(SimTime::from_system_time(SystemTime::now()));
        Some(match req {
            Request::Read { slave, addr, qty } => {
                if qty == 0 || qty > 125 {
                    rtu::exception_reply(slave, 0x03, 0x03)
                } else {
                    match model.read(addr, qty) {
                        Some(mut values) => {
                            if self.faults.spike.load(Ordering::Relaxed) {
                                if let Some(v) = 175u16
                                    .checked_sub(addr)
                                    .and_then(|i| values.get_mut(usize::from(i)))
                                {
                                    *v = 32000;
                                }
                            }
                            rtu::read_reply(slave, &values)
                        }
                        // Beyond the modelled range the inverter stays
                        // silent, as a real Deye does (logger status 05).
                        None => return None,
                    }
                }
            }
            Request::WriteSingle { slave, addr, value } => match model.write(addr, &[value]) {
                Ok(()) => rtu::write_reply(slave, 0x06, addr, value),
                Err(_) => rtu::exception_reply(slave, 0x06, 0x02),
            },
            Request::WriteMultiple {
                slave,
                addr,
                values,
            } => match model.write(addr, &values) {
                Ok(()) => rtu::write_reply(slave, 0x10, addr, values.len() as u16),
                Err(_) => rtu::exception_reply(slave, 0x10, 0x02),
            },
            Request::Unsupported { slave, function } => rtu::exception_reply(slave, function, 0x01),
        })
    }
}

async fn serve(mut sock: TcpStream, shared: Shared) -> std::io::Result<()> {
    let faults = shared.faults.clone();
    shared.stats.connections.fetch_add(1, Ordering::Relaxed);
    let _ = sock.set_nodelay(true);
    if faults.at_banner.load(Ordering::Relaxed) {
        sock.write_all(b"AT+YZCMPVER=MW3_16U_5406_2.32-D1\r\n\r\n")
            .await?;
    }
    let mut deframer = Deframer::new(4096);
    let mut stick_seq: u8 = 0;
    let mut served: u64 = 0;
    let mut buf = [0u8; 1024];
    loop {
        let n = sock.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        deframer.push(&buf[..n]);
        while let Some(frame) = deframer.next_frame() {
            let Ok(frame) = frame else { continue };
            if frame.control != v5::REQUEST {
                continue;
            }
            let Ok(request) = v5::parse_request(&frame) else {
                continue;
            };
            shared.stats.requests.fetch_add(1, Ordering::Relaxed);
            served += 1;
            let latency = faults.latency_ms.load(Ordering::Relaxed);
            if latency > 0 {
                tokio::time::sleep(Duration::from_millis(latency)).await;
            }
            if faults.silent.load(Ordering::Relaxed) {
                continue;
            }
            let times = shared.times();
            let mut next_seq = || {
                stick_seq = stick_seq.wrapping_add(1);
                stick_seq
            };
            let reply = if frame.serial != shared.serial {
                v5::encode_status(frame.seq, next_seq(), shared.serial, times, [0x06, 0x00])
            } else if faults.no_answer.load(Ordering::Relaxed) {
                v5::encode_status(frame.seq, next_seq(), shared.serial, times, [0x05, 0x00])
            } else {
                match shared.answer(request) {
                    Some(mut rtu_reply) => {
                        if faults.double_crc.load(Ordering::Relaxed) {
                            rtu_reply.extend_from_slice(&[0, 0]);
                        }
                        v5::encode_response(frame.seq, next_seq(), shared.serial, times, &rtu_reply)
                    }
                    None => {
                        v5::encode_status(frame.seq, next_seq(), shared.serial, times, [0x05, 0x00])
                    }
                }
            };
            if faults.garbage.load(Ordering::Relaxed) {
                sock.write_all(b"\x00\x13\x37garbage\r\n").await?;
            }
            if faults.corrupt.load(Ordering::Relaxed) {
                let mut bad = reply.clone();
                if let Some(b) = bad.get_mut(30) {
                    *b ^= 0x5A;
                }
                sock.write_all(&bad).await?;
            }
            if faults.stray_reply.load(Ordering::Relaxed) {
                let other = frame.seq.wrapping_add(100);
                let stray = v5::encode_response(
                    other,
                    next_seq(),
                    shared.serial,
                    times,
                    &rtu::read_reply(1, &[0xFFFF; 4]),
                );
                sock.write_all(&stray).await?;
            }
            if faults.heartbeat.load(Ordering::Relaxed) {
                sock.write_all(&v5::encode_heartbeat(frame.seq, next_seq(), shared.serial))
                    .await?;
                sock.flush().await?;
                tokio::time::sleep(Duration::from_millis(HEARTBEAT_GAP_MS)).await;
            }
            if faults.fragment.load(Ordering::Relaxed) {
                let cut = reply.len() / 2;
                sock.write_all(&reply[..cut]).await?;
                sock.flush().await?;
                tokio::time::sleep(Duration::from_millis(HEARTBEAT_GAP_MS)).await;
                let mut rest = reply[cut..].to_vec();
                rest.extend(v5::encode_heartbeat(frame.seq, next_seq(), shared.serial));
                sock.write_all(&rest).await?;
            } else {
                sock.write_all(&reply).await?;
            }
            let every = faults.drop_every.load(Ordering::Relaxed);
            if every > 0 && served.is_multiple_of(every) {
                return Ok(());
            }
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
