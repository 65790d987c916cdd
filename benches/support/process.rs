//! Helpers the benches share for measuring the real `energy2mqtt` binary
//! in a process of its own: finding it, running it, reading its memory.

#![allow(dead_code)]

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Clone, Copy)]
pub struct Mem {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

impl Mem {
    pub fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 * 1024.0 / MIB
    }
    pub fn hwm_mib(&self) -> f64 {
        self.hwm_kib as f64 * 1024.0 / MIB
    }
}

/// Numeric fields (`"VmRSS:"`, `"RssAnon:"`, … in KiB) of
/// `/proc/<pid>/status` (this process when `None`), in the order asked.
pub fn status_fields<const N: usize>(pid: Option<u32>, names: [&str; N]) -> Option<[u64; N]> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let mut out = [0u64; N];
    for (slot, name) in out.iter_mut().zip(names) {
        *slot = text
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
    }
    Some(out)
}

/// VmRSS and VmHWM of `pid` (this process when `None`).
pub fn read_mem(pid: Option<u32>) -> Option<Mem> {
    let [rss_kib, hwm_kib] = status_fields(pid, ["VmRSS:", "VmHWM:"])?;
    Some(Mem { rss_kib, hwm_kib })
}

/// The CPU's model name, for the bench's header.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The `energy2mqtt` binary: the one cargo built for this bench, else
/// target/release, else target/debug next to the bench executable or the
/// manifest.
pub fn find_binary() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(p) = option_env!("CARGO_BIN_EXE_energy2mqtt") {
        candidates.push(PathBuf::from(p));
    }
    let mut target_dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/deps/mqtt_bench-<hash>
        if let Some(t) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
            target_dirs.push(t.to_path_buf());
        }
    }
    target_dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    for profile in ["release", "debug"] {
        for t in &target_dirs {
            candidates.push(t.join(profile).join("energy2mqtt"));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// A child process that is killed when dropped (also on error or panic).
pub struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(
        bin: &Path,
        args: &[&str],
        env: &[(&str, String)],
        dir: &Path,
        name: &str,
    ) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let stderr = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(bin)
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {} {}", bin.display(), args.join(" ")))?;
        Ok(Self { child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Err with the end of its log when the process already exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(anyhow!("exited ({status}): {}", self.log_tail())),
            Err(e) => Err(anyhow!("cannot query the process: {e}")),
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while Instant::now() < until {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// utime + stime of `pid`, in clock ticks (threads that ended included).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: count fields after its ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of proc(5); `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time (ns, `/proc/<pid>/task/<tid>/schedstat`) of each thread of
/// `pid` alive now.
pub fn thread_cpu_ns(pid: u32) -> Vec<(u32, u64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let tid: u32 = e.file_name().to_str()?.parse().ok()?;
        let s = std::fs::read_to_string(e.path().join("schedstat")).ok()?;
        Some((tid, s.split_whitespace().next()?.parse().ok()?))
    })
    .collect()
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 when it cannot say).
pub fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
