//! The register transports, each against a real peer: the Solarman V5
//! logger simulator, a tokio-modbus TCP server, and a tokio-modbus RTU
//! server on a pseudo-terminal. Typed errors, writes, and what the V5
//! stream counts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use energy2mqtt::config::{InverterConfig, InverterTransport};
use energy2mqtt::drivers::deye::registers::{self, Registers};
use energy2mqtt::drivers::deye::transport::{Link, LinkCounters, TransportError};
use energy2mqtt::sim::deye_model::{InverterModel, ModelConfig, SimTime};
use energy2mqtt::sim::modbus::{ModbusTcpSim, serve_rtu};
use energy2mqtt::sim::solarman::SolarmanSim;
use tokio_modbus::ExceptionCode;

const SERIAL: u32 = 2_712_345_678;

fn model() -> InverterModel {
    InverterModel::new(
        ModelConfig::default(),
        SimTime::from_system_time(SystemTime::now()),
    )
}

fn config(transport: InverterTransport, port: u16) -> InverterConfig {
    let mut c = InverterConfig::legacy("127.0.0.1".into());
    c.transport = transport;
    c.port = Some(port);
    c.serial = Some(SERIAL);
    c.timeout = Duration::from_millis(500);
    c
}

/// Identity and both poll blocks decode into a sample through `link`.
async fn read_everything(link: &mut Link) {
    let mut regs = Registers::new();
    let id = registers::IDENTITY;
    regs.insert_block(
        id.start,
        &link.read(id.start, id.count).await.expect("identity"),
    );
    let family = registers::detect_family(regs.get(0).unwrap_or(0)).expect("family");
    let identity = registers::decode_identity(&regs).expect("identity decodes");
    assert_eq!(identity.rated_power_w, 6000.0);
    assert_eq!(identity.inverter_serial, "2409123456");
    for b in family.blocks {
        regs.insert_block(b.start, &link.read(b.start, b.count).await.expect("block"));
    }
    let sample = registers::decode_sample(family, &regs, &Default::default()).expect("sample");
    registers::check(&sample, None, identity.rated_power_w).expect("plausible");
}

async fn write_and_read_back(link: &mut Link) {
    link.write(245, &[4321]).await.expect("write 245");
    assert_eq!(link.read(245, 1).await.expect("read back"), vec![4321]);
    // A register that is not a setting: the inverter refuses the write.
    match link.write(175, &[1]).await {
        Err(TransportError::Exception(code)) => {
            assert_eq!(code, ExceptionCode::IllegalDataAddress)
        }
        other => panic!("write to 175: {other:?}"),
    }
    // More than Modbus allows in one read.
    match link.read(0, 126).await {
        Err(TransportError::Exception(code)) => assert_eq!(code, ExceptionCode::IllegalDataValue),
        other => panic!("read of 126 registers: {other:?}"),
    }
}

#[tokio::test]
async fn solarman_v5_reads_writes_and_types_its_errors() {
    let sim = SolarmanSim::start(SocketAddr::from(([127, 0, 0, 1], 0)), SERIAL, model())
        .await
        .expect("simulator");
    sim.faults.latency_ms.store(0, Ordering::Relaxed);
    let port = sim.addr.port();
    let counters = Arc::new(LinkCounters::default());
    let mut link = Link::connect(&config(InverterTransport::Solarman, port), counters.clone())
        .await
        .expect("connect");
    read_everything(&mut link).await;
    write_and_read_back(&mut link).await;

    // The stick's statuses become typed errors, and the connection stays
    // usable afterwards.
    sim.faults.no_answer.store(true, Ordering::Relaxed);
    assert!(matches!(
        link.read(0, 1).await,
        Err(TransportError::NoAnswer)
    ));
    sim.faults.no_answer.store(false, Ordering::Relaxed);
    assert_eq!(link.read(0, 1).await.expect("after 05 00"), vec![3]);

    sim.faults.silent.store(true, Ordering::Relaxed);
    assert!(matches!(
        link.read(0, 1).await,
        Err(TransportError::Timeout(_))
    ));
    sim.faults.silent.store(false, Ordering::Relaxed);
    // The late reply to the timed-out request does not answer this one.
    assert_eq!(link.read(184, 1).await.expect("after a timeout").len(), 1);

    // Noise is counted, never taken for a reply.
    for f in [
        &sim.faults.heartbeat,
        &sim.faults.stray_reply,
        &sim.faults.corrupt,
        &sim.faults.garbage,
        &sim.faults.double_crc,
        &sim.faults.fragment,
    ] {
        f.store(true, Ordering::Relaxed);
    }
    for _ in 0..3 {
        assert_eq!(link.read(0, 1).await.expect("through the noise"), vec![3]);
    }
    assert!(LinkCounters::get(&counters.heartbeats) >= 3);
    assert!(LinkCounters::get(&counters.stray_replies) >= 3);
    assert!(LinkCounters::get(&counters.bad_frames) >= 3);
    assert!(LinkCounters::get(&counters.skipped_bytes) >= 3 * 12);
    link.close().await;

    // A wrong logger serial names the right one.
    let mut wrong = config(InverterTransport::Solarman, port);
    wrong.serial = Some(1_234_567_890);
    let mut link = Link::connect(&wrong, Arc::new(LinkCounters::default()))
        .await
        .expect("connect");
    match link.read(0, 1).await {
        Err(e @ TransportError::WrongSerial { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("2712345678") && text.contains("1234567890"),
                "{text}"
            );
        }
        other => panic!("wrong serial: {other:?}"),
    }
}

#[tokio::test]
async fn modbus_tcp_reads_and_writes() {
    let sim = ModbusTcpSim::start(SocketAddr::from(([127, 0, 0, 1], 0)), model())
        .await
        .expect("simulator");
    let cfg = config(InverterTransport::ModbusTcp, sim.addr.port());
    let mut link = Link::connect(&cfg, Arc::new(LinkCounters::default()))
        .await
        .expect("connect");
    read_everything(&mut link).await;
    write_and_read_back(&mut link).await;
    link.close().await;
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error_naming_the_target() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let cfg = config(InverterTransport::ModbusTcp, port);
    match Link::connect(&cfg, Arc::new(LinkCounters::default())).await {
        Err(e @ TransportError::Connect { .. }) => {
            assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("connected to a closed port"),
    }
}

#[tokio::test]
async fn modbus_rtu_on_a_serial_line_reads_and_writes() {
    // A pseudo-terminal pair stands in for the RS485 adapter: the
    // simulated inverter holds one end, the bridge opens the other by path.
    let (inverter_end, bridge_end) = match tokio_serial::SerialStream::pair() {
        Ok(p) => p,
        Err(e) => panic!("no pseudo-terminal available: {e}"),
    };
    let path = tokio_serial::SerialPort::name(&bridge_end).expect("pty path");
    let model = Arc::new(std::sync::Mutex::new(model()));
    let server = tokio::spawn(serve_rtu(inverter_end, model));
    let mut cfg = config(InverterTransport::ModbusRtu, 0);
    cfg.port = None;
    cfg.host = None;
    cfg.device = Some(path.into());
    cfg.baud = 9600;
    let mut link = Link::connect(&cfg, Arc::new(LinkCounters::default()))
        .await
        .expect("open the serial line");
    read_everything(&mut link).await;
    write_and_read_back(&mut link).await;
    link.close().await;
    drop(bridge_end);
    server.abort();
}
