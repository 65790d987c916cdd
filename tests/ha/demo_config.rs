//! The demo configuration on free ports, for tests that run
//! `energy2mqtt demo` (shared by `#[path]`).

use std::path::Path;

/// config/demo.toml with every simulator on the given ports: the demo's own
/// ports are fixed, and a test must never depend on a fixed port. Arrays of
/// tables replace the base's when `demo --config` merges a file, so the
/// overlay repeats them whole. `edit` changes the plug list before it is
/// written.
pub fn demo_overlay(
    inverter_port: u16,
    plug_ports: &[u16],
    edit: impl FnOnce(&mut Vec<toml::Value>),
) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml");
    let text = std::fs::read_to_string(path).expect("config/demo.toml");
    let mut doc: toml::Table = text.parse().expect("demo.toml parses");
    let inverters = doc
        .get_mut("inverter")
        .and_then(toml::Value::as_array_mut)
        .expect("[[inverter]]");
    for inv in inverters.iter_mut() {
        inv["port"] = toml::Value::Integer(i64::from(inverter_port));
    }
    let plugs = doc
        .get_mut("plug")
        .and_then(toml::Value::as_array_mut)
        .expect("[[plug]]");
    assert_eq!(plugs.len(), plug_ports.len(), "one free port per demo plug");
    for (p, port) in plugs.iter_mut().zip(plug_ports) {
        p["port"] = toml::Value::Integer(i64::from(*port));
    }
    edit(plugs);
    toml::to_string(&doc).expect("overlay serialises")
}

/// How many plugs config/demo.toml has.
pub const DEMO_PLUGS: usize = 5;
