//! The configuration through the real pipeline: figment loading from files
//! and injected environment, the original app's variables, `*_FILE`
//! secrets, validation, and `energy2mqtt check-config` as a user runs it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use energy2mqtt::config::schedule::{Schedule, TimeOfDay, Weekday};
use energy2mqtt::config::{
    AlertsConfig, BalancerConfig, BmsConfig, BmsVariant, BrokerConfig, Config, ConfigError,
    ConfigErrors, HomeAssistantConfig, InverterConfig, InverterTransport, LogConfig, MqttConfig,
    NtfyConfig, PlugConfig, PlugConnection, PushConfig, RuleOverride, Secret, ShellyPlug, Sources,
    StorageConfig, TapoConfig, TapoPlug, TelegramConfig, load_from,
};
use energy2mqtt::core::alerts::Level;

const BIN: &str = env!("CARGO_BIN_EXE_energy2mqtt");
const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/config/energy2mqtt.example.toml"
);
const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml");

/// Tapo credentials, so that plugs validate.
const TAPO: &str = r#"
[tapo]
email = "user@example.com"
password = "tapo-pw"
"#;

// ---------------------------------------------------------------- helpers

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A file in a temporary directory; the directory goes when it is dropped.
struct TempFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl TempFile {
    fn new(name: &str, contents: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(name);
        std::fs::write(&path, contents).expect("write temp file");
        Self { _dir: dir, path }
    }

    fn path_str(&self) -> &str {
        self.path.to_str().expect("utf-8 temp path")
    }
}

/// Loads `toml` as the configuration file, with `vars` as the environment.
fn load(toml: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let file = TempFile::new("energy2mqtt.toml", toml);
    load_from(&Sources {
        base_toml: None,
        file: Some(file.path.clone()),
        file_required: true,
        env: env(vars),
    })
}

fn load_ok(toml: &str, vars: &[(&str, &str)]) -> Config {
    load(toml, vars).unwrap_or_else(|e| panic!("expected a valid configuration, got {e}"))
}

fn load_err(toml: &str, vars: &[(&str, &str)]) -> ConfigErrors {
    match load(toml, vars) {
        Ok(c) => panic!("expected configuration errors, got {c:#?}"),
        Err(e) => e,
    }
}

/// The error about exactly `key`, whose reason contains `reason`.
#[track_caller]
fn expect_error<'a>(errors: &'a ConfigErrors, key: &str, reason: &str) -> &'a ConfigError {
    assert!(
        errors.mentions(key),
        "no error names `{key}`; got:\n{errors}"
    );
    let e = errors
        .0
        .iter()
        .find(|e| e.key == key && e.reason.contains(reason))
        .unwrap_or_else(|| panic!("no error on `{key}` says {reason:?}; got:\n{errors}"));
    assert!(
        errors.to_string().contains(&format!("`{key}`")),
        "the message names the key: {errors}"
    );
    e
}

fn file_config(path: &str) -> Result<Config, ConfigErrors> {
    load_from(&Sources {
        file: Some(path.into()),
        file_required: true,
        ..Sources::default()
    })
}

// ----------------------------------------------------------- unknown keys

#[test]
fn unknown_key_at_top_level() {
    let errors = load_err("bogus = 1\n", &[]);
    let e = expect_error(&errors, "bogus", "unknown key `bogus`");
    assert!(e.reason.contains("expected one of"), "{e}");
    assert!(e.reason.contains("mqtt"), "lists the valid keys: {e}");
    assert_eq!(errors.0.len(), 1, "{errors}");
}

#[test]
fn unknown_key_in_a_section() {
    let errors = load_err("[mqtt]\nbogus = 1\n", &[]);
    let e = expect_error(&errors, "mqtt.bogus", "unknown key `bogus`");
    assert!(e.reason.contains("base_topic"), "lists the valid keys: {e}");
    let origin = e.origin.as_deref().unwrap_or_default();
    assert!(
        origin.contains("energy2mqtt.toml"),
        "names the file: {origin}"
    );
}

#[test]
fn unknown_key_in_an_array_element() {
    let toml = format!(
        "{TAPO}
[[plug]]
id = \"boiler\"
host = \"127.0.0.1\"
bogus = true
"
    );
    let errors = load_err(&toml, &[]);
    let e = expect_error(&errors, "plug[0].bogus", "unknown key `bogus`");
    assert!(e.reason.contains("sheddable"), "lists the plug keys: {e}");

    let toml = format!(
        "{TAPO}
[[plug]]
id = \"a\"
host = \"127.0.0.1\"

[[plug]]
id = \"b\"
host = \"127.0.0.1\"
prio = 1
"
    );
    expect_error(&load_err(&toml, &[]), "plug[1].prio", "unknown key `prio`");
}

#[test]
fn missing_required_key_names_the_element() {
    let toml = format!("{TAPO}\n[[plug]]\nhost = \"127.0.0.1\"\n");
    expect_error(
        &load_err(&toml, &[]),
        "plug[0].id",
        "required key is missing",
    );
}

#[test]
fn unknown_key_from_the_environment_names_the_variable() {
    let errors = load_err("", &[("E2M_MQTT__BOGUS", "1")]);
    let e = expect_error(&errors, "mqtt.bogus", "unknown key `bogus`");
    let origin = e.origin.as_deref().unwrap_or_default();
    assert!(origin.contains("E2M_MQTT__BOGUS"), "origin: {origin}");
}

// -------------------------------------------------------------- schedules

#[test]
fn plug_schedule_loads() {
    let toml = format!(
        "{TAPO}
[[plug]]
id = \"boiler\"
host = \"127.0.0.1\"
schedule = [
  {{ on = \"07:00\", off = \"8:30\", days = [\"mon\", \"Friday\"] }},
  {{ on = \"22:00\", off = \"06:00\" }},
  {{ off = \"23:15\", days = [\"sun\"] }},
]
surplus_on_w = 2200
surplus_for = \"5m\"
"
    );
    let c = load_ok(&toml, &[]);
    let p = &c.plug[0];
    assert_eq!(
        p.schedule,
        vec![
            Schedule {
                on: TimeOfDay::new(7, 0),
                off: TimeOfDay::new(8, 30),
                days: vec![Weekday::Mon, Weekday::Fri],
            },
            Schedule {
                on: TimeOfDay::new(22, 0),
                off: TimeOfDay::new(6, 0),
                days: Weekday::ALL.to_vec(),
            },
            Schedule {
                on: None,
                off: TimeOfDay::new(23, 15),
                days: vec![Weekday::Sun],
            },
        ]
    );
    assert_eq!(p.surplus_on_w, Some(2200.0));
    assert_eq!(p.surplus_off_w, 0.0);
    assert_eq!(p.surplus_for, Duration::from_secs(300));
    // Without the keys: no schedule, no surplus rule, the defaults.
    let plain = load_ok(
        &format!("{TAPO}\n[[plug]]\nid = \"p\"\nhost = \"127.0.0.1\"\n"),
        &[],
    );
    assert!(plain.plug[0].schedule.is_empty());
    assert_eq!(plain.plug[0].surplus_on_w, None);
    assert_eq!(plain.plug[0].surplus_for, Duration::from_secs(120));
}

#[test]
fn plug_schedule_bad_time_names_the_key() {
    let toml = format!(
        "{TAPO}
[[plug]]
id = \"boiler\"
host = \"127.0.0.1\"
schedule = [{{ on = \"07:00\" }}, {{ on = \"25:00\", off = \"08:00\" }}]
"
    );
    let errors = load_err(&toml, &[]);
    expect_error(
        &errors,
        "plug[0].schedule[1].on",
        "\"25:00\" is not a time of day (HH:MM)",
    );
}

#[test]
fn plug_schedule_bad_weekday_names_the_key() {
    let toml = format!(
        "{TAPO}
[[plug]]
id = \"boiler\"
host = \"127.0.0.1\"
schedule = [{{ on = \"07:00\", days = [\"mon\", \"funday\"] }}]
"
    );
    let errors = load_err(&toml, &[]);
    expect_error(
        &errors,
        "plug[0].schedule[0].days[1]",
        "\"funday\" is not a weekday",
    );
}

#[test]
fn plug_schedule_entry_needs_a_time() {
    let toml = format!(
        "{TAPO}
[[plug]]
id = \"boiler\"
host = \"127.0.0.1\"
schedule = [{{ days = [\"mon\"] }}]
"
    );
    let errors = load_err(&toml, &[]);
    expect_error(&errors, "plug[0].schedule[0]", "needs `on`, `off` or both");
}

// ---------------------------------------------------------------- devices

#[test]
fn device_ids_are_unique_across_kinds() {
    let toml = format!(
        "{TAPO}
[[bms]]
id = \"boiler\"
mac = \"C8:47:80:12:AB:34\"

[[plug]]
id = \"boiler\"
host = \"127.0.0.1\"
"
    );
    let errors = load_err(&toml, &[]);
    let e = expect_error(&errors, "plug[0].id", "duplicate device id 'boiler'");
    assert!(e.reason.contains("bms[0]"), "names the first user: {e}");
    assert!(
        !errors.mentions("bms[0].id"),
        "the first one is fine: {errors}"
    );
}

#[test]
fn reserved_device_id() {
    let toml = format!("{TAPO}\n[[plug]]\nid = \"bridge\"\nhost = \"127.0.0.1\"\n");
    expect_error(&load_err(&toml, &[]), "plug[0].id", "reserved");

    let toml = "[[bms]]\nid = \"bridge\"\nmac = \"C8:47:80:12:AB:34\"\n";
    expect_error(&load_err(toml, &[]), "bms[0].id", "'bridge' is reserved");

    // The sidecar's `push/state` lives there.
    let toml = "[[bms]]\nid = \"push\"\nmac = \"C8:47:80:12:AB:34\"\n";
    expect_error(&load_err(toml, &[]), "bms[0].id", "'push' is reserved");
}

#[test]
fn malformed_device_id() {
    let toml = format!("{TAPO}\n[[plug]]\nid = \"Boiler!\"\nhost = \"127.0.0.1\"\n");
    let errors = load_err(&toml, &[]);
    expect_error(&errors, "plug[0].id", "'Boiler!' is not a device id");
}

#[test]
fn plug_inverter_must_exist() {
    let toml = format!(
        "{TAPO}
[[plug]]
id = \"boiler\"
host = \"127.0.0.1\"
inverter = \"garage\"
"
    );
    expect_error(
        &load_err(&toml, &[]),
        "plug[0].inverter",
        "no [[inverter]] with id 'garage'",
    );
}

#[test]
fn solarman_inverter_needs_a_serial() {
    let toml = "[[inverter]]\nid = \"deye\"\nhost = \"127.0.0.1\"\n";
    let errors = load_err(toml, &[]);
    expect_error(
        &errors,
        "inverter[0].serial",
        "required for the solarman transport",
    );
    assert_eq!(errors.0.len(), 1, "{errors}");

    let ok = load_ok(&format!("{toml}serial = 2712345678\n"), &[]);
    assert_eq!(ok.inverter[0].transport, InverterTransport::Solarman);
    assert_eq!(ok.inverter[0].serial, Some(2_712_345_678));
}

#[test]
fn plug_without_any_tapo_credentials() {
    let toml = "[[plug]]\nid = \"boiler\"\nhost = \"127.0.0.1\"\n";
    expect_error(&load_err(toml, &[]), "plug[0].email", "no Tapo credentials");
}

// ------------------------------------------------------------------ ports

#[test]
fn broker_listen_port_zero() {
    let errors = load_err("[broker]\nlisten = \"127.0.0.1:0\"\n", &[]);
    expect_error(&errors, "broker.listen", "port 0");
}

#[test]
fn plug_port_out_of_range() {
    let toml = format!(
        "{TAPO}
[[plug]]
id = \"boiler\"
host = \"127.0.0.1\"
port = 70000
"
    );
    let errors = load_err(&toml, &[]);
    expect_error(&errors, "plug[0].port", "70000");
}

#[test]
fn mqtt_url_port_zero() {
    let errors = load_err("[mqtt]\nurl = \"mqtt://h:0\"\n", &[]);
    expect_error(&errors, "mqtt.url", "port 0 is not a valid port");
}

#[test]
fn validation_reports_every_error_at_once() {
    let toml = "[mqtt]\nurl = \"mqtt://h:0\"\n[broker]\nlisten = \"127.0.0.1:0\"\n";
    let errors = load_err(toml, &[]);
    expect_error(&errors, "mqtt.url", "port 0");
    expect_error(&errors, "broker.listen", "port 0");
}

// -------------------------------------------------------------- durations

#[test]
fn bad_duration_in_the_file() {
    let errors = load_err("[mqtt]\nkeepalive = \"5x\"\n", &[]);
    let e = expect_error(&errors, "mqtt.keepalive", "invalid duration '5x'");
    assert!(e.reason.contains("5s, 500ms"), "says what is expected: {e}");
}

#[test]
fn bad_duration_from_the_environment() {
    let errors = load_err("", &[("E2M_MQTT__KEEPALIVE", "5x")]);
    let e = expect_error(&errors, "mqtt.keepalive", "invalid duration '5x'");
    let origin = e.origin.as_deref().unwrap_or_default();
    assert!(origin.contains("E2M_MQTT__KEEPALIVE"), "origin: {origin}");
    assert!(
        errors.to_string().contains("E2M_MQTT__KEEPALIVE"),
        "{errors}"
    );
}

#[test]
fn durations_accept_units_and_bare_seconds() {
    let toml = "[mqtt]\nkeepalive = 45\nreconnect_max = \"1m30s\"\n[homeassistant]\nbirth_delay = \"500ms\"\n";
    let c = load_ok(toml, &[("E2M_BALANCER__OVERRIDE_WINDOW", "2h")]);
    assert_eq!(c.mqtt.keepalive, Duration::from_secs(45));
    assert_eq!(c.mqtt.reconnect_max, Duration::from_secs(90));
    assert_eq!(c.homeassistant.birth_delay, Duration::from_millis(500));
    assert_eq!(c.balancer.override_window, Duration::from_secs(7200));
}

// ----------------------------------------------------------------- broker

#[test]
fn network_broker_needs_credentials() {
    let toml = "[broker]\nenabled = true\nlisten = \"0.0.0.0:1883\"\n";
    let errors = load_err(toml, &[]);
    expect_error(&errors, "broker.username", "reachable from the network");

    let with_credentials = format!("{toml}username = \"u\"\npassword = \"p\"\n");
    load_ok(&with_credentials, &[]);
    load_ok(
        "[broker]\nenabled = true\nlisten = \"127.0.0.1:1884\"\n",
        &[],
    );
}

#[test]
fn empty_broker_credentials_are_refused() {
    // An empty password would let `admin` in without one.
    let open = "[broker]\nenabled = true\nlisten = \"0.0.0.0:1883\"\n";
    let errors = load_err(
        &format!("{open}username = \"admin\"\npassword = \"\"\n"),
        &[],
    );
    expect_error(&errors, "broker.password", "must not be empty");
    // An empty user: the check used to pass and the broker failed at start.
    let errors = load_err(&format!("{open}username = \"\"\npassword = \"p\"\n"), &[]);
    expect_error(&errors, "broker.username", "must not be empty");
    // The same from the environment.
    let errors = load_err(
        open,
        &[
            ("E2M_BROKER__USERNAME", "admin"),
            ("E2M_BROKER__PASSWORD", ""),
        ],
    );
    expect_error(&errors, "broker.password", "must not be empty");
}

#[test]
fn an_ipv4_mapped_loopback_address_is_loopback() {
    load_ok(
        "[broker]\nenabled = true\nlisten = \"[::ffff:127.0.0.1]:1884\"\n",
        &[],
    );
    let errors = load_err(
        "[broker]\nenabled = true\nlisten = \"[::ffff:192.168.1.2]:1884\"\n",
        &[],
    );
    expect_error(&errors, "broker.username", "reachable from the network");
}

#[test]
fn a_toml_syntax_error_never_shows_a_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("bad.toml");
    // A backslash makes the password invalid TOML; the parser's own message
    // quotes the whole line.
    std::fs::write(
        &cfg,
        "[mqtt]\nusername = \"u\"\npassword = \"hunter2\\qsecret\"\n",
    )
    .unwrap();
    let out = run(
        dir.path(),
        &["check-config", "--config", cfg.to_str().unwrap()],
        &[],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 3"), "says where: {stderr}");
    assert!(stderr.contains("`password`"), "names the key: {stderr}");
    for leak in ["hunter2", "qsecret"] {
        assert!(!stderr.contains(leak), "{leak} leaked: {stderr}");
    }
    // A type error about a secret key does not quote the value either.
    std::fs::write(&cfg, "[tapo]\nemail = { a = \"hunter2\" }\n").unwrap();
    let out = run(
        dir.path(),
        &["check-config", "--config", cfg.to_str().unwrap()],
        &[],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("hunter2"), "leaked: {stderr}");
}

// ------------------------------------------------------------- precedence

#[test]
fn defaults_then_file_then_env() {
    assert_eq!(load_ok("", &[]).mqtt.base_topic, "energy2mqtt");

    let file = "[mqtt]\nbase_topic = \"from-file\"\nclient_id = \"file-client\"\n";
    let c = load_ok(file, &[]);
    assert_eq!(c.mqtt.base_topic, "from-file");

    let c = load_ok(file, &[("E2M_MQTT__BASE_TOPIC", "from-env")]);
    assert_eq!(c.mqtt.base_topic, "from-env");
    assert_eq!(
        c.mqtt.client_id, "file-client",
        "the rest of the file stays"
    );
    assert_eq!(
        c.mqtt.keepalive,
        Duration::from_secs(30),
        "defaults fill in"
    );
}

#[test]
fn env_values_are_typed_like_the_file() {
    let c = load_ok(
        "",
        &[
            ("E2M_BROKER__ENABLED", "true"),
            ("E2M_BROKER__LISTEN", "127.0.0.1:1884"),
            ("E2M_BROKER__MAX_CONNECTIONS", "10"),
            ("E2M_HOMEASSISTANT__DISCOVERY", "false"),
            ("E2M_BALANCER__ON_GRID_W", "5000"),
            ("E2M_LOG__FORMAT", "json"),
            ("E2M_MQTT__CLIENT_ID", "1234"),
            ("E2M_MQTT__URL", "mqtt://127.0.0.1:1885"),
        ],
    );
    assert!(c.broker.enabled);
    assert_eq!(c.broker.listen.port(), 1884);
    assert_eq!(c.broker.max_connections, 10);
    assert!(!c.homeassistant.discovery);
    assert_eq!(c.balancer.on_grid_w, 5000.0);
    assert_eq!(c.log.format, energy2mqtt::config::LogFormat::Json);
    assert_eq!(c.mqtt.client_id, "1234", "a numeric string stays a string");
    assert_eq!(c.mqtt.url.as_deref(), Some("mqtt://127.0.0.1:1885"));

    let errors = load_err("", &[("E2M_BALANCER__ON_GRID_W", "lots")]);
    expect_error(&errors, "balancer.on_grid_w", "lots");
}

#[test]
fn legacy_variables_override_file_and_e2m_env() {
    let toml = "
[tapo]
email = \"file@example.com\"
password = \"file-pw\"

[[inverter]]
id = \"deye\"
host = \"127.0.0.3\"
serial = 1

[[inverter]]
id = \"deye2\"
host = \"127.0.0.4\"
serial = 2
";
    let c = load_ok(
        toml,
        &[
            ("E2M_TAPO__EMAIL", "env@example.com"),
            ("E2M_TAPO__PASSWORD", "env-pw"),
            ("INVERTER_IP", " 127.0.0.2 "),
            ("LOGGER_SN", "2712345678"),
            ("TAPO_EMAIL", "legacy@example.com"),
            ("TAPO_PASSWORD", "legacy-pw"),
        ],
    );
    assert_eq!(c.inverter.len(), 2);
    assert_eq!(c.inverter[0].id, "deye", "applied to the first inverter");
    assert_eq!(c.inverter[0].host.as_deref(), Some("127.0.0.2"));
    assert_eq!(c.inverter[0].serial, Some(2_712_345_678));
    assert_eq!(c.inverter[1].host.as_deref(), Some("127.0.0.4"));
    assert_eq!(c.inverter[1].serial, Some(2));
    assert_eq!(
        c.tapo.email.as_ref().map(Secret::expose),
        Some("legacy@example.com")
    );
    assert_eq!(
        c.tapo.password.as_ref().map(Secret::expose),
        Some("legacy-pw")
    );

    // Without the original variables the E2M_ ones win over the file.
    let c = load_ok(toml, &[("E2M_TAPO__EMAIL", "env@example.com")]);
    assert_eq!(
        c.tapo.email.as_ref().map(Secret::expose),
        Some("env@example.com")
    );
    assert_eq!(
        c.tapo.password.as_ref().map(Secret::expose),
        Some("file-pw")
    );
}

#[test]
fn legacy_variables_alone_create_the_inverter() {
    let c = load_ok(
        "",
        &[
            ("INVERTER_IP", "127.0.0.2"),
            ("LOGGER_SN", "1234567890"),
            ("TAPO_EMAIL", "legacy@example.com"),
            ("TAPO_PASSWORD", "legacy-pw"),
        ],
    );
    assert_eq!(c.inverter.len(), 1);
    let inv = &c.inverter[0];
    assert_eq!(inv.id, "inverter");
    assert_eq!(inv.transport, InverterTransport::Solarman);
    assert_eq!(inv.host.as_deref(), Some("127.0.0.2"));
    assert_eq!(inv.serial, Some(1_234_567_890));
    assert_eq!(inv.port, None, "the transport's default port");
    assert_eq!(inv.poll_interval, Duration::from_secs(5));
    assert_eq!(
        c.tapo.password.as_ref().map(Secret::expose),
        Some("legacy-pw")
    );

    // INVERTER_IP alone: the created inverter still needs its serial.
    let errors = load_err("", &[("INVERTER_IP", "127.0.0.2")]);
    expect_error(&errors, "inverter[0].serial", "LOGGER_SN");

    // Empty legacy variables (docker-compose `VAR=`) are ignored.
    let c = load_ok("", &[("INVERTER_IP", ""), ("LOGGER_SN", " ")]);
    assert!(c.inverter.is_empty());
}

#[test]
fn bad_logger_sn_names_the_variable() {
    let errors = load_err("", &[("INVERTER_IP", "127.0.0.2"), ("LOGGER_SN", "abc")]);
    expect_error(&errors, "LOGGER_SN", "'abc' is not a logger serial number");

    let errors = load_err("", &[("LOGGER_SN", "1234")]);
    expect_error(&errors, "LOGGER_SN", "without INVERTER_IP");
}

// ---------------------------------------------------------------- secrets

#[test]
fn secrets_from_files_lose_the_trailing_newline() {
    let mqtt_pw = TempFile::new("mqtt_password", "mqtt-s3cret\n");
    let tapo_pw = TempFile::new("tapo_password", "tapo-s3cret\r\n");
    let c = load_ok(
        "[mqtt]\nusername = \"bridge-user\"\n",
        &[
            ("E2M_MQTT__PASSWORD_FILE", mqtt_pw.path_str()),
            ("TAPO_PASSWORD_FILE", tapo_pw.path_str()),
        ],
    );
    assert_eq!(
        c.mqtt.password.as_ref().map(Secret::expose),
        Some("mqtt-s3cret")
    );
    assert_eq!(
        c.tapo.password.as_ref().map(Secret::expose),
        Some("tapo-s3cret")
    );
}

#[test]
fn plain_and_file_variable_together_are_an_error() {
    let pw = TempFile::new("pw", "from-file\n");
    let errors = load_err(
        "[mqtt]\nusername = \"u\"\n",
        &[
            ("E2M_MQTT__PASSWORD", "from-env"),
            ("E2M_MQTT__PASSWORD_FILE", pw.path_str()),
        ],
    );
    expect_error(
        &errors,
        "E2M_MQTT__PASSWORD_FILE",
        "set only one of E2M_MQTT__PASSWORD and E2M_MQTT__PASSWORD_FILE",
    );

    let errors = load_err(
        "",
        &[
            ("TAPO_PASSWORD", "plain"),
            ("TAPO_PASSWORD_FILE", pw.path_str()),
        ],
    );
    expect_error(
        &errors,
        "TAPO_PASSWORD_FILE",
        "set only one of TAPO_PASSWORD and TAPO_PASSWORD_FILE",
    );
}

#[test]
fn empty_plain_variable_leaves_the_file_variable_in_charge() {
    // `TAPO_PASSWORD=` left over in a compose file next to a Docker secret.
    let pw = TempFile::new("pw", "from-file\n");
    let c = load_ok(
        "[mqtt]\nusername = \"u\"\npassword = \"from-toml\"\n",
        &[
            ("E2M_MQTT__PASSWORD", ""),
            ("E2M_MQTT__PASSWORD_FILE", pw.path_str()),
            ("TAPO_PASSWORD", ""),
            ("TAPO_PASSWORD_FILE", pw.path_str()),
        ],
    );
    assert_eq!(
        c.mqtt.password.as_ref().map(Secret::expose),
        Some("from-file")
    );
    assert_eq!(
        c.tapo.password.as_ref().map(Secret::expose),
        Some("from-file")
    );
}

#[test]
fn missing_secret_file_names_the_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope");
    let missing = missing.to_str().expect("utf-8");

    let errors = load_err("", &[("E2M_MQTT__PASSWORD_FILE", missing)]);
    let e = expect_error(
        &errors,
        "E2M_MQTT__PASSWORD_FILE",
        "cannot read secret file",
    );
    assert!(e.reason.contains(missing), "names the path: {e}");

    let errors = load_err("", &[("TAPO_PASSWORD_FILE", missing)]);
    let e = expect_error(&errors, "TAPO_PASSWORD_FILE", "cannot read secret file");
    assert!(e.reason.contains(missing), "names the path: {e}");
}

#[test]
fn numeric_password_from_env() {
    let c = load_ok(
        "",
        &[
            ("E2M_MQTT__USERNAME", "1234"),
            ("E2M_MQTT__PASSWORD", "1234"),
        ],
    );
    assert_eq!(c.mqtt.username.as_deref(), Some("1234"));
    assert_eq!(c.mqtt.password.as_ref().map(Secret::expose), Some("1234"));

    let c = load_ok("[tapo]\nemail = \"a@b.c\"\npassword = 5678\n", &[]);
    assert_eq!(c.tapo.password.as_ref().map(Secret::expose), Some("5678"));
}

#[test]
fn ca_file_is_a_key_not_a_secret_file() {
    // `E2M_MQTT__CA_FILE` sets `mqtt.ca_file`; it is not `mqtt.ca` read from a file.
    let ca = TempFile::new("ca.pem", "-----BEGIN CERTIFICATE-----\n");
    let c = load_ok("", &[("E2M_MQTT__CA_FILE", ca.path_str())]);
    assert_eq!(c.mqtt.ca_file.as_deref(), Some(ca.path.as_path()));

    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.pem");
    let errors = load_err("", &[("E2M_MQTT__CA_FILE", missing.to_str().unwrap())]);
    expect_error(&errors, "mqtt.ca_file", "no such file");
}

#[test]
fn unrelated_e2m_variables_are_ignored() {
    let c = load_ok(
        "",
        &[
            ("E2M_TEST_MOSQUITTO", "1"),
            ("E2M_VECTORS", "/x"),
            ("E2M_VECTORS_FILE", "/nonexistent"),
            ("E2M", "x"),
            ("PATH", "/usr/bin"),
            ("HOME", "/root"),
        ],
    );
    assert_eq!(c, Config::default());
}

// ------------------------------------------------------------ alert rules

#[test]
fn alert_rule_override_is_read() {
    let c = load_ok(
        "[alerts.rules.soc_low]
enabled = false
threshold = 25
hysteresis = 3.5
for = \"2m\"
level = \"critical\"
repeat_after = \"1h\"
",
        &[],
    );
    assert_eq!(
        c.alerts.rules["soc_low"],
        RuleOverride {
            enabled: Some(false),
            threshold: Some(25.0),
            hysteresis: Some(3.5),
            for_duration: Some(Duration::from_secs(120)),
            level: Some(Level::Critical),
            repeat_after: Some(Duration::from_secs(3600)),
        }
    );
    assert_eq!(c.alerts.rules.len(), 1);
}

#[test]
fn unknown_alert_rule_is_rejected_naming_the_key() {
    let errors = load_err("[alerts.rules.soc_lowest]\nthreshold = 5\n", &[]);
    let e = expect_error(
        &errors,
        "alerts.rules.soc_lowest",
        "unknown alert rule `soc_lowest`",
    );
    assert!(e.reason.contains("soc_low,"), "lists the rule ids: {e}");
    let origin = e.origin.as_deref().unwrap_or_default();
    assert!(
        origin.contains("energy2mqtt.toml"),
        "names the file: {origin}"
    );
}

#[test]
fn bad_alert_threshold_is_rejected_naming_the_key() {
    let errors = load_err("[alerts.rules.soc_low]\nthreshold = 150\n", &[]);
    expect_error(
        &errors,
        "alerts.rules.soc_low.threshold",
        "150 is outside 1 to 99 %",
    );
    let errors = load_err("[alerts.rules.cell_max_high]\nthreshold = 36.5\n", &[]);
    expect_error(
        &errors,
        "alerts.rules.cell_max_high.threshold",
        "36.5 is outside 2 to 4.5 V",
    );
    let errors = load_err("[alerts.rules.bms_alarm]\nthreshold = 1\n", &[]);
    expect_error(
        &errors,
        "alerts.rules.bms_alarm.threshold",
        "has no threshold",
    );
    let errors = load_err("[alerts.rules.soc_low]\nhysteresis = -1\n", &[]);
    expect_error(&errors, "alerts.rules.soc_low.hysteresis", "outside 0 to");
}

#[test]
fn bad_alert_rule_keys_and_values_name_the_key() {
    let errors = load_err("[alerts.rules.soc_low]\nlevel = \"fatal\"\n", &[]);
    expect_error(&errors, "alerts.rules.soc_low.level", "fatal");
    let errors = load_err("[alerts.rules.soc_low]\nfor = \"5x\"\n", &[]);
    expect_error(&errors, "alerts.rules.soc_low.for", "invalid duration");
    let errors = load_err("[alerts.rules.soc_low]\nrepeat_after = \"10s\"\n", &[]);
    expect_error(&errors, "alerts.rules.soc_low.repeat_after", "at least 1m");
    let errors = load_err("[alerts.rules.soc_low]\nbogus = 1\n", &[]);
    let e = expect_error(&errors, "alerts.rules.soc_low.bogus", "unknown key `bogus`");
    assert!(e.reason.contains("threshold"), "lists the keys: {e}");
}

#[test]
fn alert_rule_override_from_the_environment() {
    let c = load_ok(
        "",
        &[("E2M_ALERTS__RULES__CELL_DELTA_ERROR__THRESHOLD", "0.08")],
    );
    assert_eq!(c.alerts.rules["cell_delta_error"].threshold, Some(0.08));

    let errors = load_err("", &[("E2M_ALERTS__RULES__SOC_LOW__THRESHOLD", "250")]);
    let e = expect_error(&errors, "alerts.rules.soc_low.threshold", "outside");
    let origin = e.origin.as_deref().unwrap_or_default();
    assert!(
        origin.contains("E2M_ALERTS__RULES__SOC_LOW__THRESHOLD"),
        "names the variable: {origin}"
    );
}

#[test]
fn example_alert_rule_block_loads_when_uncommented() {
    let text = std::fs::read_to_string(EXAMPLE).expect("example file");
    let start = text
        .find("# [alerts.rules.")
        .expect("an [alerts.rules.<id>] example");
    let mut toml = String::new();
    for line in text[start..].lines() {
        let Some(rest) = line.strip_prefix("# ") else {
            break;
        };
        if rest.starts_with('[') || key_of(line).is_some() {
            toml.push_str(rest);
            toml.push('\n');
        }
    }
    let c = load_ok(&toml, &[]);
    assert_eq!(c.alerts.rules.len(), 1, "{toml}");
    let o = c.alerts.rules.values().next().expect("one rule");
    assert!(o.threshold.is_some() && o.for_duration.is_some(), "{toml}");
}

#[test]
fn alerts_doc_examples_load() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/ALERTS.md");
    let doc = std::fs::read_to_string(path).expect("docs/ALERTS.md");
    let mut blocks = 0;
    for block in doc.split("```toml\n").skip(1) {
        let toml = &block[..block.find("```").expect("closed block")];
        load(toml, &[]).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        blocks += 1;
    }
    assert!(blocks >= 2, "the [alerts] and [alerts.rules] examples");
}

// ------------------------------------------------------- shipped configs

#[test]
fn example_file_loads_and_validates() {
    let c = file_config(EXAMPLE).unwrap_or_else(|e| panic!("{EXAMPLE}: {e}"));
    assert_eq!(c.bms.len(), 1);
    assert_eq!(c.inverter.len(), 1);
    assert_eq!(c.inverter[0].transport, InverterTransport::Solarman);
    assert!(c.inverter[0].serial.is_some());
    assert_eq!(c.plug.len(), 2);
    assert!(
        c.plug
            .iter()
            .all(|p| p.inverter.as_deref() == Some("inverter"))
    );
    assert!(c.tapo.email.is_some() && c.tapo.password.is_some());

    // The global sections show the defaults.
    assert_eq!(c.mqtt, MqttConfig::default());
    assert_eq!(c.homeassistant, HomeAssistantConfig::default());
    assert_eq!(c.broker, BrokerConfig::default());
    assert_eq!(c.log, LogConfig::default());
    assert_eq!(c.storage, StorageConfig::default());
    assert_eq!(c.tapo.timeout, TapoConfig::default().timeout);
    assert_eq!(c.balancer, BalancerConfig::default());
    assert_eq!(c.alerts, AlertsConfig::default());

    // Keys left at their default in the device sections show the default too.
    let bms = &c.bms[0];
    assert_eq!(bms.variant, BmsVariant::Auto);
    assert!(!bms.pair);
    assert_eq!(bms.publish_interval, Duration::from_secs(1));
    let inv = &c.inverter[0];
    assert_eq!((inv.baud, inv.slave_id), (9600, 1));
    assert_eq!(inv.poll_interval, Duration::from_secs(5));
    assert_eq!(inv.timeout, Duration::from_secs(5));
    let plug = &c.plug[0];
    assert_eq!(plug.poll_interval, Duration::from_secs(5));
    assert!(plug.sheddable);
    assert_eq!(plug.min_on, Duration::from_secs(60));
}

#[test]
fn demo_file_loads_and_validates() {
    let c = file_config(DEMO).unwrap_or_else(|e| panic!("{DEMO}: {e}"));
    assert!(c.broker.enabled);
    assert!(c.broker.listen.ip().is_loopback());
}

#[test]
fn empty_file_gives_the_defaults() {
    assert_eq!(load_ok("", &[]), Config::default());
    assert_eq!(load_ok("# nothing here\n", &[]), Config::default());
    // No file at all (the default path does not exist) is fine as well.
    let dir = tempfile::tempdir().expect("tempdir");
    let c = load_from(&Sources {
        file: Some(dir.path().join("energy2mqtt.toml")),
        file_required: false,
        ..Sources::default()
    });
    assert_eq!(c, Ok(Config::default()));
}

#[test]
fn missing_required_file_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let errors = load_from(&Sources {
        file: Some(dir.path().join("nope.toml")),
        file_required: true,
        ..Sources::default()
    })
    .expect_err("a missing --config file");
    expect_error(&errors, "--config", "nope.toml");
}

/// A configuration in which every optional key is set, so that serializing
/// it yields every key there is.
fn every_key() -> Config {
    let d = Duration::from_secs(1);
    Config {
        mqtt: MqttConfig {
            url: Some("mqtt://127.0.0.1:1883".into()),
            username: Some("u".into()),
            password: Some(Secret::new("p")),
            client_id: "c".into(),
            keepalive: d,
            ca_file: Some("/ca.pem".into()),
            base_topic: "b".into(),
            reconnect_max: d,
        },
        homeassistant: HomeAssistantConfig::default(),
        broker: BrokerConfig {
            enabled: true,
            listen: "127.0.0.1:1883".parse().unwrap(),
            username: Some("u".into()),
            password: Some(Secret::new("p")),
            max_connections: 1,
        },
        log: LogConfig::default(),
        storage: StorageConfig::default(),
        tapo: TapoConfig {
            email: Some(Secret::new("e")),
            password: Some(Secret::new("p")),
            timeout: d,
        },
        bms: vec![BmsConfig {
            id: "b".into(),
            name: Some("n".into()),
            mac: "m".into(),
            variant: BmsVariant::Auto,
            pair: false,
            publish_interval: d,
        }],
        inverter: vec![InverterConfig {
            id: "i".into(),
            name: Some("n".into()),
            transport: InverterTransport::Solarman,
            host: Some("h".into()),
            port: Some(1),
            serial: Some(1),
            device: Some("/dev/null".into()),
            baud: 1,
            slave_id: 1,
            poll_interval: d,
            timeout: d,
            max_block: 1,
            unavailable_after: 1,
            power_scale: 1.0,
        }],
        plug: vec![
            PlugConfig {
                id: "p".into(),
                name: Some("n".into()),
                connection: PlugConnection::Tapo(TapoPlug {
                    host: "h".into(),
                    port: Some(1),
                    email: Some(Secret::new("e")),
                    password: Some(Secret::new("p")),
                }),
                nominal_w: Some(1.0),
                poll_interval: d,
                inverter: Some("i".into()),
                priority: 1,
                sheddable: true,
                min_on: d,
                min_off: d,
                failsafe_shed: true,
                pv_deficit_off: true,
                schedule: vec![Schedule {
                    on: TimeOfDay::new(7, 0),
                    off: TimeOfDay::new(8, 30),
                    days: vec![Weekday::Mon],
                }],
                surplus_on_w: Some(1.0),
                surplus_off_w: 0.0,
                surplus_for: d,
            },
            PlugConfig {
                id: "s".into(),
                name: Some("n".into()),
                connection: PlugConnection::Shelly(ShellyPlug {
                    host: "h".into(),
                    port: Some(1),
                    password: Some(Secret::new("p")),
                    switch_id: 1,
                }),
                nominal_w: Some(1.0),
                poll_interval: d,
                inverter: Some("i".into()),
                priority: 1,
                sheddable: true,
                min_on: d,
                min_off: d,
                failsafe_shed: true,
                pv_deficit_off: true,
                schedule: vec![Schedule {
                    on: TimeOfDay::new(7, 0),
                    off: TimeOfDay::new(8, 30),
                    days: vec![Weekday::Mon],
                }],
                surplus_on_w: Some(1.0),
                surplus_off_w: 0.0,
                surplus_for: d,
            },
        ],
        balancer: BalancerConfig::default(),
        alerts: AlertsConfig::default(),
        push: PushConfig {
            listen: "127.0.0.1:8787".parse().unwrap(),
            token: Some(Secret::new("t")),
            vapid_private_key_file: Some("/vapid.pem".into()),
            public_url: Some("https://e2m.example.net/".into()),
            vapid_subject: Some("mailto:a@b".into()),
            min_level: Level::Error,
            quiet_hours: Some("22:00-07:00".into()),
            device_lost_after: d,
            ntfy: vec![NtfyConfig {
                url: "https://ntfy.sh".into(),
                topic: "t".into(),
                token: Some(Secret::new("t")),
                min_level: Level::Error,
            }],
            telegram: vec![TelegramConfig {
                bot_token: Secret::new("1:a"),
                chat_ids: vec![1],
                min_level: Level::Error,
                api_url: "https://api.telegram.org".into(),
            }],
        },
    }
}

/// `(section, key)` for every key of the configuration.
fn all_keys() -> BTreeSet<(String, String)> {
    let value = toml::Value::try_from(every_key()).expect("serializable");
    let mut out = BTreeSet::new();
    for (section, v) in value.as_table().expect("a table") {
        // Every element of a list: a Shelly plug has keys a Tapo plug has not.
        let tables: Vec<&toml::Table> = match v {
            toml::Value::Table(t) => vec![t],
            toml::Value::Array(a) => a
                .iter()
                .map(|t| t.as_table().expect("array of tables"))
                .collect(),
            other => panic!("top-level key {section} is not a section: {other:?}"),
        };
        for key in tables.iter().flat_map(|t| t.keys()) {
            out.insert((section.clone(), key.clone()));
        }
    }
    out
}

/// `key` when the line is `key = ...` or `# key = ...`.
fn key_of(line: &str) -> Option<&str> {
    let line = line.trim();
    let line = line.strip_prefix('#').map(str::trim_start).unwrap_or(line);
    let (key, _) = line.split_once('=')?;
    let key = key.trim_end();
    let ok = key.starts_with(|c: char| c.is_ascii_lowercase())
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    ok.then_some(key)
}

/// `[section]`, or `# [section]` for a table shown commented out.
fn table_header(trimmed: &str) -> Option<&str> {
    let uncommented = trimmed
        .strip_prefix('#')
        .map(str::trim)
        .filter(|h| h.starts_with('[') && h.ends_with(']') && !h.contains(' '));
    uncommented.or_else(|| trimmed.starts_with('[').then_some(trimmed))
}

/// The keys of an `[alerts.rules.<id>]` table.
fn rule_override_keys() -> Vec<String> {
    let every = RuleOverride {
        enabled: Some(true),
        threshold: Some(1.0),
        hysteresis: Some(1.0),
        for_duration: Some(Duration::from_secs(1)),
        level: Some(Level::Error),
        repeat_after: Some(Duration::from_secs(60)),
    };
    let value = toml::Value::try_from(every).expect("serializable");
    value.as_table().expect("a table").keys().cloned().collect()
}

#[test]
fn example_file_documents_every_key() {
    let text = std::fs::read_to_string(EXAMPLE).expect("example file");
    let mut documented = BTreeSet::new();
    let mut section: Option<String> = None;
    let mut previous = "";
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(header) = table_header(trimmed) {
            let name = header.trim_matches(|c| c == '[' || c == ']');
            section = Some(name.to_owned());
        } else if let (Some(section), Some(key)) = (&section, key_of(line)) {
            let first = documented.insert((section.clone(), key.to_owned()));
            if first {
                let prev = previous.trim();
                assert!(
                    prev.starts_with('#') && key_of(prev).is_none(),
                    "[{section}] {key}: the first mention needs a comment line above it"
                );
            }
        }
        previous = line;
    }
    let mut expected = all_keys();
    // `[alerts.rules.<id>]` is shown commented out, for one rule at least.
    let rule_sections: BTreeSet<&String> = documented
        .iter()
        .map(|(section, _)| section)
        .filter(|s| s.starts_with("alerts.rules."))
        .collect();
    assert!(!rule_sections.is_empty(), "no [alerts.rules.<id>] example");
    for section in rule_sections {
        let id = &section["alerts.rules.".len()..];
        assert!(
            energy2mqtt::core::alerts::rule_ids().any(|r| r == id),
            "[{section}]: no such rule"
        );
        for key in rule_override_keys() {
            expected.insert((section.clone(), key));
        }
    }
    let missing: Vec<_> = expected.difference(&documented).collect();
    assert!(missing.is_empty(), "keys not in the example: {missing:?}");
    let unknown: Vec<_> = documented.difference(&expected).collect();
    assert!(
        unknown.is_empty(),
        "example keys that do not exist: {unknown:?}"
    );
}

#[test]
fn every_key_ending_in_file_can_be_set_from_env() {
    // A key named `*_file` must not be taken for a `*_FILE` secret variable.
    let target = TempFile::new("some.file", "x\n");
    for (section, key) in all_keys() {
        if !key.ends_with("_file") || matches!(section.as_str(), "bms" | "inverter" | "plug") {
            continue;
        }
        let var = format!("E2M_{}__{}", section.to_uppercase(), key.to_uppercase());
        let c =
            load("", &[(var.as_str(), target.path_str())]).unwrap_or_else(|e| panic!("{var}: {e}"));
        let json = c.redacted_json();
        assert_eq!(
            json[&section][&key].as_str(),
            Some(target.path_str()),
            "{var} sets {section}.{key}"
        );
    }
}

// ------------------------------------------------------- the binary

fn run(dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .current_dir(dir)
        .args(args)
        .envs(vars.iter().copied());
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.output().expect("run energy2mqtt")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_config_exits_2_and_names_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("bad.toml");
    let toml = format!(
        "{TAPO}
[[plug]]
id = \"boiler\"
host = \"127.0.0.1\"
bogus = 1
"
    );
    std::fs::write(&cfg, toml).unwrap();
    let out = run(
        dir.path(),
        &["check-config", "--config", cfg.to_str().unwrap()],
        &[("E2M_MQTT__PASSWORD", "env-mqtt-s3cret")],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stderr.contains("`plug[0].bogus`"), "stderr: {stderr}");
    assert!(stderr.contains("unknown key `bogus`"), "stderr: {stderr}");
    assert!(stdout.is_empty(), "nothing on stdout: {stdout}");
    for secret in ["tapo-pw", "env-mqtt-s3cret"] {
        assert!(!stderr.contains(secret), "{secret} leaked: {stderr}");
    }

    // A validation error and an environment error, the same way.
    std::fs::write(&cfg, "[broker]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let out = run(
        dir.path(),
        &["check-config", "--config", cfg.to_str().unwrap()],
        &[("E2M_MQTT__KEEPALIVE", "5x")],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("`mqtt.keepalive`"), "stderr: {stderr}");
    assert!(stderr.contains("E2M_MQTT__KEEPALIVE"), "stderr: {stderr}");

    // A --config file that does not exist.
    let out = run(dir.path(), &["check-config", "--config", "nope.toml"], &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("`--config`"), "stderr: {stderr}");
}

const SECRETS: &[&str] = &[
    "file-mqtt-s3cret",
    "file-tapo-s3cret",
    "env-mqtt-s3cret",
    "env-tapo-s3cret",
    "filevar-broker-s3cret",
    "filevar-tapo-s3cret",
];

#[track_caller]
fn assert_redacted(out: &Output) -> toml::Table {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    for secret in SECRETS {
        assert!(!stdout.contains(secret), "{secret} in stdout:\n{stdout}");
        assert!(!stderr.contains(secret), "{secret} in stderr:\n{stderr}");
    }
    assert!(stderr.contains("configuration OK"), "stderr: {stderr}");
    stdout
        .parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("stdout is TOML: {e}\n{stdout}"))
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_redacted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("energy2mqtt.toml");
    std::fs::write(
        &cfg,
        "
[mqtt]
username = \"bridge\"
password = \"file-mqtt-s3cret\"

[tapo]
email = \"user@example.com\"
password = \"file-tapo-s3cret\"

[[plug]]
id = \"boiler\"
host = \"127.0.0.1\"
",
    )
    .unwrap();
    let cfg_arg = cfg.to_str().unwrap();

    // Secrets from the file.
    let out = run(dir.path(), &["check-config", "--config", cfg_arg], &[]);
    let printed = assert_redacted(&out);
    assert_eq!(printed["mqtt"]["username"].as_str(), Some("bridge"));
    assert_eq!(printed["mqtt"]["password"].as_str(), Some("<redacted>"));
    assert_eq!(printed["tapo"]["password"].as_str(), Some("<redacted>"));
    assert_eq!(printed["tapo"]["email"].as_str(), Some("<redacted>"));
    assert_eq!(printed["plug"][0]["id"].as_str(), Some("boiler"));

    // Secrets from the environment, plain and through *_FILE.
    let broker_pw = TempFile::new("broker_pw", "filevar-broker-s3cret\n");
    let tapo_pw = TempFile::new("tapo_pw", "filevar-tapo-s3cret\n");
    let out = run(
        dir.path(),
        &["check-config", "--config", cfg_arg],
        &[
            ("E2M_MQTT__PASSWORD", "env-mqtt-s3cret"),
            ("TAPO_PASSWORD", "env-tapo-s3cret"),
            ("E2M_BROKER__USERNAME", "broker-user"),
            ("E2M_BROKER__PASSWORD_FILE", broker_pw.path_str()),
            ("E2M_MQTT__BASE_TOPIC", "from-env"),
        ],
    );
    let printed = assert_redacted(&out);
    assert_eq!(printed["mqtt"]["base_topic"].as_str(), Some("from-env"));
    assert_eq!(printed["mqtt"]["password"].as_str(), Some("<redacted>"));
    assert_eq!(printed["broker"]["username"].as_str(), Some("broker-user"));
    assert_eq!(printed["broker"]["password"].as_str(), Some("<redacted>"));
    assert_eq!(printed["tapo"]["password"].as_str(), Some("<redacted>"));

    let out = run(
        dir.path(),
        &["check-config", "--config", cfg_arg],
        &[("TAPO_PASSWORD_FILE", tapo_pw.path_str())],
    );
    let printed = assert_redacted(&out);
    assert_eq!(printed["tapo"]["password"].as_str(), Some("<redacted>"));
}

#[test]
fn check_config_output_loads_back_to_the_same_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(dir.path(), &["check-config", "--config", EXAMPLE], &[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));

    let original = file_config(EXAMPLE).expect("example");
    let printed = load_ok(&stdout, &[]);
    assert_eq!(printed.redacted_json(), original.redacted_json());
}

// ------------------------------------------------------------ docs/CONFIG.md

const CONFIG_DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/CONFIG.md");

#[test]
fn config_doc_lists_every_key_and_variable() {
    let doc = std::fs::read_to_string(CONFIG_DOC).expect("docs/CONFIG.md");
    for (section, key) in all_keys() {
        let list = matches!(section.as_str(), "bms" | "inverter" | "plug");
        let heading = if list {
            format!("### `[[{section}]]`")
        } else {
            format!("### `[{section}]`")
        };
        let start = doc
            .find(&heading)
            .unwrap_or_else(|| panic!("no heading {heading}"));
        let body = &doc[start + heading.len()..];
        let body = &body[..body.find("\n### ").unwrap_or(body.len())];
        assert!(
            body.contains(&format!("\n| `{key}` |")),
            "{heading}: no row for `{key}`"
        );
        if !list {
            let var = format!("`E2M_{}__{}`", section.to_uppercase(), key.to_uppercase());
            assert!(body.contains(&var), "{heading}: {var} missing");
        }
    }
}

#[test]
fn config_doc_examples_load() {
    let doc = std::fs::read_to_string(CONFIG_DOC).expect("docs/CONFIG.md");
    let mut blocks = 0;
    for block in doc.split("```toml\n").skip(1) {
        let toml = &block[..block.find("```").expect("closed block")];
        load(toml, &[]).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        blocks += 1;
    }
    assert!(blocks > 0, "no TOML example in the doc");
}

// ------------------------------------------------------------ [push]

#[test]
fn push_section_is_validated_and_its_secrets_stay_redacted() {
    let errors = load_err(
        r#"
[push]
listen = "0.0.0.0:8787"
vapid_subject = "me@example.com"
quiet_hours = "22-07"

[[push.ntfy]]
url = "ntfy.sh"
topic = "a/b"

[[push.telegram]]
bot_token = "nope"
chat_ids = []
"#,
        &[],
    );
    expect_error(&errors, "push.token", "reachable from the network");
    expect_error(&errors, "push.vapid_subject", "mailto:");
    expect_error(&errors, "push.quiet_hours", "22");
    expect_error(&errors, "push.ntfy[0].url", "not an http(s) server URL");
    expect_error(&errors, "push.ntfy[0].topic", "letters, digits");
    expect_error(&errors, "push.telegram[0].bot_token", "bot token");
    expect_error(&errors, "push.telegram[0].chat_ids", "at least one");
    assert!(!errors.to_string().contains("nope"), "{errors}");

    let token = TempFile::new("token", "s3cret-token\n");
    let c = load_ok(
        r#"
[push]
listen = "0.0.0.0:8787"
vapid_subject = "mailto:me@example.com"
quiet_hours = "22:00-07:00"
min_level = "error"

[[push.ntfy]]
url = "https://ntfy.sh"
topic = "e2m-a1b2"
token = "tk_hidden"

[[push.telegram]]
bot_token = "123456:AAE-hidden"
chat_ids = [42]
"#,
        &[("E2M_PUSH__TOKEN_FILE", token.path_str())],
    );
    assert_eq!(
        c.push.token.as_ref().map(Secret::expose),
        Some("s3cret-token")
    );
    assert_eq!(c.push.min_level, Level::Error);
    assert_eq!(c.push.ntfy[0].min_level, Level::Warning);
    assert_eq!(c.push.telegram[0].chat_ids, [42]);
    let shown = c.redacted_json().to_string();
    for secret in ["s3cret-token", "tk_hidden", "AAE-hidden"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
        assert!(!format!("{c:?}").contains(secret), "{secret} in Debug");
    }
    assert_eq!(c.redacted_json()["push"]["token"], "<redacted>");

    // Untouched, the section is left out of the effective configuration.
    assert!(load_ok("", &[]).redacted_json().get("push").is_none());
}
