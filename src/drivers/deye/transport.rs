//! The three ways to reach a Deye's registers, all ending in a tokio-modbus
//! client [`Context`], so the register layer never knows which one it has:
//!
//! - Solarman V5: Modbus RTU frames wrapped in the logger stick's envelope.
//!   [`V5Stream`] sits beneath tokio-modbus's RTU client and does the
//!   wrapping, the sequence matching and the resynchronisation;
//! - Modbus TCP (Ethernet sticks, RS485 gateways);
//! - Modbus RTU on a serial port (USB RS485 adapters).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::{ExceptionCode, Slave};

use super::rtu;
use super::v5::{self, Deframer, Reply};
use crate::config::{InverterConfig, InverterTransport};

pub const SOLARMAN_PORT: u16 = 8899;
pub const MODBUS_TCP_PORT: u16 = 502;

/// Bytes of unframed input kept while waiting for a frame's end: a few
/// replies' worth, so a stick spewing garbage cannot grow memory.
const MAX_BUFFER: usize = 4096;

/// Why a register read or write failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot connect to {target}: {source}")]
    Connect { target: String, source: io::Error },
    #[error("cannot open serial port {device}: {reason}")]
    Serial { device: String, reason: String },
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("connection lost: {0}")]
    Io(#[from] io::Error),
    #[error("Modbus protocol error: {0}")]
    Protocol(String),
    #[error("the inverter answered with Modbus exception {0}")]
    Exception(ExceptionCode),
    #[error(
        "the logger got no answer from the inverter (status 05 00): check slave_id and that the inverter is on"
    )]
    NoAnswer,
    #[error(
        "the logger stick says its serial is {reported}, not {configured}: set serial = {reported} for this inverter (the logger serial is printed on the stick, it is not the inverter's serial)"
    )]
    WrongSerial { configured: u32, reported: u32 },
    #[error("expected {expected} registers, got {got}")]
    ShortRead { expected: u16, got: usize },
}

impl TransportError {
    /// Errors after which the connection cannot be trusted any more.
    pub fn needs_reconnect(&self) -> bool {
        matches!(
            self,
            Self::Io(_) | Self::Protocol(_) | Self::Timeout(_) | Self::Connect { .. }
        )
    }
}

/// What the link saw that did not become a reply: counted per device and
/// published as diagnostics.
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Frames with a bad checksum, end byte or length.
    pub bad_frames: AtomicU64,
    /// Bytes skipped while looking for a frame start (AT banners, garbage).
    pub skipped_bytes: AtomicU64,
    /// Replies whose sequence byte was not ours (other clients, late replies).
    pub stray_replies: AtomicU64,
    /// Heartbeats and other frames that are not replies.
    pub heartbeats: AtomicU64,
}

impl LinkCounters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// The logger's answer when it was not a Modbus reply. tokio-modbus only
/// understands Modbus, so the stream hands it a "gateway" exception and
/// leaves the real cause here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoggerStatus {
    NoAnswer,
    WrongSerial { reported: u32 },
}

/// One Solarman V5 connection as a byte stream of Modbus RTU frames.
pub struct V5Stream {
    io: TcpStream,
    serial: u32,
    seq: u8,
    /// The request in flight: its sequence byte, slave and function.
    in_flight: Option<(u8, u8, u8)>,
    deframer: Deframer,
    /// RTU bytes tokio-modbus wrote, wrapped on flush.
    rtu_out: Vec<u8>,
    /// The V5 frame being written and how much of it is out.
    frame_out: Vec<u8>,
    frame_pos: usize,
    /// The RTU reply waiting to be read by tokio-modbus.
    rtu_in: Vec<u8>,
    rtu_pos: usize,
    status: Arc<Mutex<Option<LoggerStatus>>>,
    counters: Arc<LinkCounters>,
}

impl V5Stream {
    fn new(
        io: TcpStream,
        serial: u32,
        status: Arc<Mutex<Option<LoggerStatus>>>,
        counters: Arc<LinkCounters>,
    ) -> Self {
        // Start somewhere else than a previous connection did, so a late
        // reply to it cannot match.
        let seq = (crate::clock::now().0 % 250) as u8;
        Self {
            io,
            serial,
            seq,
            in_flight: None,
            deframer: Deframer::new(MAX_BUFFER),
            rtu_out: Vec::new(),
            frame_out: Vec::new(),
            frame_pos: 0,
            rtu_in: Vec::new(),
            rtu_pos: 0,
            status,
            counters,
        }
    }

    fn set_status(&self, s: LoggerStatus) {
        if let Ok(mut slot) = self.status.lock() {
            *slot = Some(s);
        }
    }

    /// Handles one frame; true when it completed the request in flight.
    fn accept(&mut self, frame: v5::Frame) -> bool {
        if frame.control != v5::RESPONSE {
            // Heartbeats carry our last sequence byte too: the control code
            // tells them apart.
            self.counters.heartbeats.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let Some((seq, slave, function)) = self.in_flight else {
            self.counters.stray_replies.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        if frame.seq != seq {
            self.counters.stray_replies.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let rtu = match v5::parse_response(&frame) {
            Ok(Reply::Modbus(rtu)) => rtu.to_vec(),
            Ok(Reply::NoAnswer) => {
                self.set_status(LoggerStatus::NoAnswer);
                // 0x0B: gateway target device failed to respond.
                rtu::exception_reply(slave, function, 0x0B)
            }
            Ok(Reply::WrongSerial { reported }) => {
                self.set_status(LoggerStatus::WrongSerial { reported });
                // 0x0A: gateway path unavailable.
                rtu::exception_reply(slave, function, 0x0A)
            }
            Err(e) => {
                tracing::debug!(error = %e, "dropping a bad reply");
                self.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        };
        self.in_flight = None;
        self.rtu_in = rtu;
        self.rtu_pos = 0;
        true
    }

    fn sync_skipped(&self) {
        self.counters
            .skipped_bytes
            .store(self.deframer.skipped_bytes(), Ordering::Relaxed);
    }
}

impl AsyncWrite for V5Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // Collected until flush: tokio-modbus flushes once per request.
        self.get_mut().rtu_out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.frame_pos >= me.frame_out.len() && !me.rtu_out.is_empty() {
            // A retry must never reuse a sequence byte: a late reply to the
            // first attempt would be taken for the answer to the second.
            me.seq = me.seq.wrapping_add(1);
            let slave = me.rtu_out.first().copied().unwrap_or(0);
            let function = me.rtu_out.get(1).copied().unwrap_or(0);
            me.in_flight = Some((me.seq, slave, function));
            me.frame_out = v5::encode_request(me.seq, me.serial, &me.rtu_out);
            me.frame_pos = 0;
            me.rtu_out.clear();
            me.rtu_in.clear();
            me.rtu_pos = 0;
        }
        while me.frame_pos < me.frame_out.len() {
            let n = ready!(Pin::new(&mut me.io).poll_write(cx, &me.frame_out[me.frame_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            me.frame_pos += n;
        }
        Pin::new(&mut me.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl AsyncRead for V5Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            if me.rtu_pos < me.rtu_in.len() {
                let rest = &me.rtu_in[me.rtu_pos..];
                let n = rest.len().min(buf.remaining());
                buf.put_slice(&rest[..n]);
                me.rtu_pos += n;
                return Poll::Ready(Ok(()));
            }
            let mut delivered = false;
            while let Some(next) = me.deframer.next_frame() {
                match next {
                    Ok(frame) => {
                        if me.accept(frame) {
                            delivered = true;
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "dropping a corrupt frame");
                        me.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            me.sync_skipped();
            if delivered {
                continue;
            }
            let mut chunk = [0u8; 1024];
            let mut rb = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut me.io).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the logger closed the connection",
                )));
            }
            me.deframer.push(rb.filled());
        }
    }
}

/// A connected register client and what is needed to explain its errors.
pub struct Link {
    ctx: Context,
    status: Arc<Mutex<Option<LoggerStatus>>>,
    serial: u32,
    timeout: Duration,
}

impl Link {
    /// Connects with the transport the inverter's configuration names.
    pub async fn connect(
        config: &InverterConfig,
        counters: Arc<LinkCounters>,
    ) -> Result<Self, TransportError> {
        let slave = Slave(config.slave_id);
        let status = Arc::new(Mutex::new(None));
        let serial = config.serial.unwrap_or(0);
        let ctx = match config.transport {
            InverterTransport::Solarman => {
                let io = tcp(config, SOLARMAN_PORT).await?;
                let stream = V5Stream::new(io, serial, status.clone(), counters);
                tokio_modbus::client::rtu::attach_slave(stream, slave)
            }
            InverterTransport::ModbusTcp => {
                let io = tcp(config, MODBUS_TCP_PORT).await?;
                tokio_modbus::client::tcp::attach_slave(io, slave)
            }
            InverterTransport::ModbusRtu => {
                use tokio_serial::SerialPortBuilderExt;
                let device = config
                    .device
                    .as_ref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default();
                let port = tokio_serial::new(&device, config.baud)
                    .timeout(config.timeout)
                    .open_native_async()
                    .map_err(|e| TransportError::Serial {
                        device: device.clone(),
                        reason: e.to_string(),
                    })?;
                tokio_modbus::client::rtu::attach_slave(port, slave)
            }
        };
        Ok(Self {
            ctx,
            status,
            serial,
            timeout: config.timeout,
        })
    }

    /// Reads `count` holding registers from `start` (function 0x03).
    pub async fn read(&mut self, start: u16, count: u16) -> Result<Vec<u16>, TransportError> {
        self.take_status();
        let res =
            tokio::time::timeout(self.timeout, self.ctx.read_holding_registers(start, count)).await;
        let values = self.outcome(res)?;
        if values.len() != usize::from(count) {
            return Err(TransportError::ShortRead {
                expected: count,
                got: values.len(),
            });
        }
        Ok(values)
    }

    /// Writes registers from `start` (function 0x10, even for one register:
    /// what the Deye tools that work use).
    pub async fn write(&mut self, start: u16, values: &[u16]) -> Result<(), TransportError> {
        self.take_status();
        let res = tokio::time::timeout(
            self.timeout,
            self.ctx.write_multiple_registers(start, values),
        )
        .await;
        self.outcome(res)
    }

    fn take_status(&self) -> Option<LoggerStatus> {
        self.status.lock().ok().and_then(|mut s| s.take())
    }

    fn outcome<T>(
        &self,
        res: Result<tokio_modbus::Result<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, TransportError> {
        match res {
            Err(_) => Err(TransportError::Timeout(self.timeout)),
            Ok(Err(tokio_modbus::Error::Transport(e))) => Err(TransportError::Io(e)),
            Ok(Err(tokio_modbus::Error::Protocol(e))) => {
                Err(TransportError::Protocol(e.to_string()))
            }
            Ok(Ok(Err(code))) => Err(match self.take_status() {
                Some(LoggerStatus::NoAnswer) => TransportError::NoAnswer,
                Some(LoggerStatus::WrongSerial { reported }) => TransportError::WrongSerial {
                    configured: self.serial,
                    reported,
                },
                None => TransportError::Exception(code),
            }),
            Ok(Ok(Ok(v))) => Ok(v),
        }
    }

    /// Closes the connection politely: sticks run out of sockets when
    /// clients vanish without a FIN.
    pub async fn close(mut self) {
        use tokio_modbus::client::Client;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ctx.disconnect()).await;
    }
}

async fn tcp(config: &InverterConfig, default_port: u16) -> Result<TcpStream, TransportError> {
    let host = config.host.clone().unwrap_or_default();
    let port = config.port.unwrap_or(default_port);
    let target = format!("{host}:{port}");
    let io = tokio::time::timeout(config.timeout, TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| TransportError::Connect {
            target: target.clone(),
            source: io::ErrorKind::TimedOut.into(),
        })?
        .map_err(|source| TransportError::Connect {
            target: target.clone(),
            source,
        })?;
    let _ = io.set_nodelay(true);
    Ok(io)
}
