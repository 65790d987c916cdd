//! `energy2mqtt decode jkbms`: what users attach to bug reports.

use std::io::Write;
use std::process::{Command, Stdio};

use energy2mqtt::drivers::jkbms::cell_info::{Cell, CellInfo};
use energy2mqtt::drivers::jkbms::frame::Variant;

const BIN: &str = env!("CARGO_BIN_EXE_energy2mqtt");

/// A frame of our own: 4 cells of 3.30 V, 13.2 V, 5 A charging, 80 %.
fn own_frame() -> Vec<u8> {
    let mut c = CellInfo::new(Variant::Jk02_32s);
    c.cells = (1..=4)
        .map(|n| Cell {
            number: n,
            voltage: 3.3,
            resistance: 0.05,
        })
        .collect();
    c.enabled_cells_mask = Some(0b1111);
    c.pack_voltage = 13.2;
    c.current = Some(5.0);
    c.soc = Some(80);
    c.encode().expect("encode").as_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn run(args: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn decodes_hex_arguments_stdin_and_files() {
    let frame = own_frame();
    let (code, out, err) = run(&["decode", "jkbms", &hex(&frame)], None);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let first = &v[0]["values"];
    assert_eq!(first["cell_count"], 4, "{out}");
    assert_eq!(first["soc"], 80, "{out}");
    assert_eq!(first["current"], 5.0, "{out}");

    // A raw notification stream: junk, the frame in 20-byte pieces, junk.
    let mut stream = b"AT\r\n".to_vec();
    stream.extend_from_slice(&frame);
    stream.extend_from_slice(b"AT\r\nAT\r\n");
    let (code, out, err) = run(&["decode", "jkbms", "-"], Some(&stream));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"cell_count\": 4"), "{out}");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("capture.txt");
    std::fs::write(&path, hex(&frame)).expect("write");
    let (code, out, _) = run(
        &[
            "decode",
            "jkbms",
            path.to_str().expect("utf-8"),
            "--variant",
            "jk02_32s",
        ],
        None,
    );
    assert_eq!(code, 0);
    assert!(out.contains("\"consistent\": true"), "{out}");

    // The wrong variant is shown as such, not decoded into nonsense.
    let (code, out, _) = run(
        &["decode", "jkbms", &hex(&frame), "--variant", "jk02_24s"],
        None,
    );
    assert_eq!(code, 0);
    assert!(out.contains("\"consistent\": false"), "{out}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let (code, _, err) = run(&["decode", "jkbms", "not hex"], None);
    assert_eq!(code, 2);
    assert!(err.contains("neither hex nor a file"), "{err}");
    let (code, _, err) = run(&["decode", "jkbms", "aa55", "--variant", "jk99"], None);
    assert_eq!(code, 2);
    assert!(err.contains("--variant"), "{err}");
    let (code, _, err) = run(&["decode", "jkbms", "41 54 0d 0a"], None);
    assert_eq!(code, 1);
    assert!(!err.is_empty());
}
