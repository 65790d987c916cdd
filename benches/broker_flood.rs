//! The embedded broker under a QoS 0 flood, side by side with Debian's
//! Mosquitto in the same run (issue 15): one subscriber on `flood/#`, one
//! publisher writing N × 600 B QoS 0 PUBLISH packets as fast as TCP takes
//! them (what `mosquitto_pub -l` does), then DISCONNECT. Reports, per
//! flood, how many the subscriber got and the broker process's VmRSS
//! before and after; after the last flood it waits past the bridge's
//! one-minute heap trim and reads the memory again.
//!
//! `cargo build --release && cargo bench --bench broker_flood`
//! Knobs: FLOOD_MESSAGES (100000), FLOOD_ROUNDS (6), FLOOD_SETTLE_S (65).
//! Both clients are raw sockets (no client library in the way).

#[path = "support/process.rs"]
mod process;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn remaining_length(mut len: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
}

fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn connect(port: u16, id: &str) -> Result<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    let mut body = Vec::new();
    string(b"MQTT", &mut body);
    body.extend_from_slice(&[4, 0x02, 0, 60]);
    string(id.as_bytes(), &mut body);
    let mut p = vec![0x10];
    remaining_length(body.len(), &mut p);
    p.extend_from_slice(&body);
    s.write_all(&p)?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack)?;
    if ack[0] != 0x20 || ack[3] != 0 {
        return Err(anyhow!("CONNACK {ack:02x?}"));
    }
    Ok(s)
}

/// Counts PUBLISH packets until `quiet` passes without a byte.
fn subscriber(port: u16, quiet: Duration) -> Result<std::thread::JoinHandle<Result<u64>>> {
    let mut s = connect(port, "flood-sub")?;
    let mut body = vec![0, 1];
    string(b"flood/#", &mut body);
    body.push(0);
    let mut p = vec![0x82];
    remaining_length(body.len(), &mut p);
    p.extend_from_slice(&body);
    s.write_all(&p)?;
    let mut ack = [0u8; 5];
    s.read_exact(&mut ack)?;
    if ack[0] != 0x90 {
        return Err(anyhow!("SUBACK {ack:02x?}"));
    }
    s.set_read_timeout(Some(quiet))?;
    Ok(std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        let (mut have, mut count) = (0usize, 0u64);
        loop {
            let n = match s.read(&mut buf[have..]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(_) => break, // quiet for `quiet`: the flood is over
            };
            have += n;
            let mut at = 0;
            while have - at >= 2 {
                let (mut len, mut mult, mut i) = (0usize, 1usize, at + 1);
                let mut complete = false;
                while i < have {
                    let b = buf[i];
                    len += (b & 0x7f) as usize * mult;
                    mult *= 128;
                    i += 1;
                    if b & 0x80 == 0 {
                        complete = true;
                        break;
                    }
                }
                if !complete || have - i < len {
                    break;
                }
                if buf[at] >> 4 == 3 {
                    count += 1;
                }
                at = i + len;
            }
            buf.copy_within(at..have, 0);
            have -= at;
        }
        Ok(count)
    }))
}

fn publish_flood(port: u16, messages: u64) -> Result<Duration> {
    let mut s = connect(port, "flood-pub")?;
    let payload = vec![b'x'; 600];
    let mut one = vec![0x30];
    let mut body = Vec::new();
    string(b"flood/data", &mut body);
    body.extend_from_slice(&payload);
    remaining_length(body.len(), &mut one);
    one.extend_from_slice(&body);
    let mut chunk = Vec::with_capacity(one.len() * 100);
    for _ in 0..100 {
        chunk.extend_from_slice(&one);
    }
    let t = Instant::now();
    let mut sent = 0;
    while sent < messages {
        let n = (messages - sent).min(100) as usize;
        s.write_all(&chunk[..one.len() * n])?;
        sent += n as u64;
    }
    s.write_all(&[0xE0, 0])?;
    let elapsed = t.elapsed();
    // Let the broker read up to the DISCONNECT before the socket closes.
    let mut rest = [0u8; 16];
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let _ = s.read(&mut rest);
    Ok(elapsed)
}

struct BrokerProcess {
    name: &'static str,
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_embedded() -> Result<BrokerProcess> {
    let bin = process::find_binary().ok_or_else(|| anyhow!("no energy2mqtt binary"))?;
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!("[broker]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n"),
    )?;
    let child = Command::new(bin)
        .arg("broker")
        .arg("--config")
        .arg(&config)
        .env_clear()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("energy2mqtt broker")?;
    Ok(BrokerProcess {
        name: "energy2mqtt broker",
        child,
        port,
        _dir: dir,
    })
}

fn start_mosquitto() -> Result<BrokerProcess> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let config = dir.path().join("mosquitto.conf");
    std::fs::write(
        &config,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    )?;
    let child = Command::new("/usr/sbin/mosquitto")
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("mosquitto (Debian package mosquitto)")?;
    Ok(BrokerProcess {
        name: "mosquitto",
        child,
        port,
        _dir: dir,
    })
}

fn rss(pid: u32) -> f64 {
    process::read_mem(Some(pid)).map_or(f64::NAN, |m| m.rss_mib())
}

fn main() -> Result<()> {
    let messages = knob("FLOOD_MESSAGES", 100_000);
    let rounds = knob("FLOOD_ROUNDS", 6);
    let settle = Duration::from_secs(knob("FLOOD_SETTLE_S", 65));
    println!(
        "QoS 0 flood: {rounds} rounds of {messages} x 600 B to flood/data, one subscriber on flood/#; {}",
        process::cpu_model()
    );
    let mut brokers = vec![start_embedded()?];
    match start_mosquitto() {
        Ok(b) => brokers.push(b),
        Err(e) => println!("mosquitto not measured: {e:#}"),
    }
    for b in &brokers {
        if !process::wait_for_port(b.port, Duration::from_secs(10)) {
            return Err(anyhow!("{} did not listen", b.name));
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let mut starts = Vec::new();
    for b in &brokers {
        starts.push(rss(b.child.id()));
    }
    for round in 1..=rounds {
        // The brokers take turns, so they share the machine alike.
        for (b, start) in brokers.iter().zip(&starts) {
            let sub = subscriber(b.port, Duration::from_secs(2))?;
            let took = publish_flood(b.port, messages)?;
            let got = sub.join().map_err(|_| anyhow!("subscriber panicked"))??;
            println!(
                "RESULT broker={:?} round={round} delivered={got} of={messages} ratio={:.3} publish_s={:.2} rss_start_mib={start:.2} rss_after_mib={:.2}",
                b.name,
                got as f64 / messages as f64,
                took.as_secs_f64(),
                rss(b.child.id())
            );
        }
    }
    println!(
        "waiting {} s (the bridge trims its heap once a minute)",
        settle.as_secs()
    );
    std::thread::sleep(settle);
    for (b, start) in brokers.iter().zip(&starts) {
        let now = rss(b.child.id());
        println!(
            "RESULT broker={:?} settled rss_start_mib={start:.2} rss_settled_mib={now:.2} grew_mib={:.2}",
            b.name,
            now - start
        );
    }
    Ok(())
}
