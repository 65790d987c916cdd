//! The `energy2mqtt` command line: parse, set up logging, load the
//! configuration, hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use energy2mqtt::config::{self, Config, ConfigErrors, LogFormat, Sources};
use tokio_util::sync::CancellationToken;

/// The demo's built-in configuration.
const DEMO_TOML: &str = include_str!("../config/demo.toml");

#[derive(Parser, Debug)]
#[command(
    name = "energy2mqtt",
    version,
    about = "JK-BMS, Deye and Tapo to MQTT and Home Assistant"
)]
struct Cli {
    /// Configuration file (default: config/energy2mqtt.toml when it exists).
    #[arg(long, short, global = true, value_name = "PATH", env = "E2M_CONFIG")]
    config: Option<PathBuf>,
    /// Log filter, e.g. `info`, `debug`, `energy2mqtt=debug` (overrides log.level).
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
    /// Log format (overrides log.format).
    #[arg(long, global = true, value_enum)]
    log_format: Option<FormatArg>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the bridge (the default).
    Run,
    /// Run the embedded broker and the bridge with the demo configuration.
    Demo,
    /// Check the configuration and print it with secrets redacted.
    CheckConfig,
    /// Print every Home Assistant discovery topic and payload as JSON.
    Discovery,
    /// Run only the embedded MQTT broker of the [broker] section.
    Broker,
    /// Exit 0 when the bridge using this configuration's storage dir is
    /// running and connected to its broker, 1 otherwise (a container
    /// HEALTHCHECK).
    Health,
    /// List JK-BMS packs nearby (name, MAC, RSSI, manufacturer id), for the
    /// [[bms]] sections.
    Scan {
        /// How long to listen for advertisements.
        #[arg(long, default_value = "10s")]
        duration: String,
    },
    /// Decode captured device data and print it as JSON (for bug reports
    /// and replays).
    Decode {
        #[command(subcommand)]
        what: DecodeCommand,
    },
}

#[derive(Subcommand, Debug)]
enum DecodeCommand {
    /// A JK-BMS frame or raw notification stream: hex on the command line,
    /// a file (hex text or raw bytes), or `-` for standard input.
    Jkbms {
        /// Hex bytes, a file path, or `-`.
        input: String,
        /// jk02_24s, jk02_32s or jk04 (JK04 cannot be detected); default:
        /// from a device-info frame in the input, else from the layout.
        #[arg(long)]
        variant: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.as_ref().unwrap_or(&Command::Run);
    // Decoding needs no configuration: it works on a bare capture.
    if let Command::Decode { what } = command {
        return decode(what);
    }
    if let Command::Scan { duration } = command {
        return scan(duration);
    }
    let sources = match command {
        Command::Demo => Sources {
            base_toml: Some(DEMO_TOML.to_owned()),
            file: cli.config.clone(),
            file_required: cli.config.is_some(),
            env: std::env::vars().collect(),
        },
        _ => Sources::from_process(cli.config.as_deref()),
    };
    let config = match config::load_from(&sources) {
        Ok(c) => c,
        Err(e) => return config_failure(&e),
    };
    if matches!(command, Command::Run) && cli.config.is_none() {
        if let Some(e) = nothing_to_run(&config) {
            eprintln!("energy2mqtt: {e}");
            return ExitCode::from(2);
        }
    }
    match command {
        Command::CheckConfig => check_config(&config),
        Command::Health => health(&config),
        Command::Discovery => print_discovery(&config),
        Command::Run => serve(&cli, config, Mode::Bridge),
        Command::Demo => serve(&cli, config, Mode::Demo),
        Command::Broker => serve(&cli, config, Mode::BrokerOnly),
        Command::Decode { what } => decode(what),
        Command::Scan { duration } => scan(duration),
    }
}

#[cfg(feature = "ble")]
fn scan(duration: &str) -> ExitCode {
    use energy2mqtt::drivers::jkbms::ble;
    let duration = match energy2mqtt::config::duration::parse(duration) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("energy2mqtt: --duration: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match runtime(Threads::One) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let found = runtime.block_on(async {
        let session = ble::open_session().await?;
        ble::scan(&session, duration).await
    });
    match found {
        Ok(packs) => {
            if packs.is_empty() {
                eprintln!(
                    "no JK-BMS pack seen in {duration:?} (is the phone app connected to it?)"
                );
            }
            for p in &packs {
                println!(
                    "{}  {:<20}  rssi {:>4}  manufacturer {}",
                    p.mac,
                    p.name.as_deref().unwrap_or("?"),
                    p.rssi.map(|r| r.to_string()).unwrap_or_else(|| "?".into()),
                    p.manufacturer_id
                        .map(|m| format!("0x{m:04X}"))
                        .unwrap_or_else(|| "?".into())
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("energy2mqtt: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(feature = "ble"))]
fn scan(_duration: &str) -> ExitCode {
    eprintln!("energy2mqtt: this build has no Bluetooth support (built without the `ble` feature)");
    ExitCode::FAILURE
}

fn decode(what: &DecodeCommand) -> ExitCode {
    let DecodeCommand::Jkbms { input, variant } = what;
    let variant = match variant.as_deref().map(str::parse) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(e)) => {
            eprintln!("energy2mqtt: --variant: {e}");
            return ExitCode::from(2);
        }
    };
    let bytes = match read_capture(input) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("energy2mqtt: {e}");
            return ExitCode::from(2);
        }
    };
    match energy2mqtt::drivers::jkbms::decode_any(&bytes, variant) {
        Ok(frames) => match serde_json::to_string_pretty(&frames) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("energy2mqtt: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("energy2mqtt: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Hex text (spaces, colons, newlines and `0x` allowed) or raw bytes, from
/// the argument itself, a file, or stdin (`-`).
fn read_capture(input: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let raw = if input == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| format!("reading standard input: {e}"))?;
        buf
    } else if std::path::Path::new(input).is_file() {
        std::fs::read(input).map_err(|e| format!("reading {input}: {e}"))?
    } else {
        input.as_bytes().to_vec()
    };
    match parse_hex(&raw) {
        Some(bytes) => Ok(bytes),
        // Not hex text: take the bytes as they are (a binary capture).
        None if input == "-" || std::path::Path::new(input).is_file() => Ok(raw),
        None => Err(format!(
            "'{input}' is neither hex nor a file (give hex bytes, a file path, or - for stdin)"
        )),
    }
}

fn parse_hex(raw: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(raw).ok()?;
    let text = text.replace("0x", "").replace("0X", "");
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && !matches!(b, b':' | b',' | b'-'))
        .collect();
    if digits.is_empty() || !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(s, 16).ok()
        })
        .collect()
}

/// `run` without a configuration file and without any device from the
/// environment would start an empty bridge whose start-up clean-up removes
/// the discovery configs of a bridge that does have devices (a systemd
/// unit without `WorkingDirectory` does exactly this): refuse, and say
/// where the file was looked for.
fn nothing_to_run(config: &Config) -> Option<String> {
    let default = std::path::Path::new(config::DEFAULT_PATH);
    if default.is_file()
        || !config.bms.is_empty()
        || !config.inverter.is_empty()
        || !config.plug.is_empty()
    {
        return None;
    }
    let looked = std::env::current_dir()
        .map(|d| d.join(default).display().to_string())
        .unwrap_or_else(|_| config::DEFAULT_PATH.to_owned());
    Some(format!(
        "no configuration file: {looked} does not exist, and no device is configured in the \
         environment; give the file with --config PATH (or E2M_CONFIG=PATH)"
    ))
}

fn config_failure(e: &ConfigErrors) -> ExitCode {
    eprintln!("energy2mqtt: {e}");
    ExitCode::from(2)
}

fn check_config(config: &Config) -> ExitCode {
    match toml::to_string_pretty(config) {
        Ok(text) => {
            print!("{text}");
            eprintln!("configuration OK");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("energy2mqtt: cannot print the configuration: {e}");
            ExitCode::FAILURE
        }
    }
}

fn health(config: &Config) -> ExitCode {
    match energy2mqtt::health::check(&config.storage.dir) {
        Ok(h) => {
            println!("healthy: connected to {} since {}", h.broker, h.since);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_discovery(config: &Config) -> ExitCode {
    let topics = energy2mqtt::mqtt::Topics::from_config(config);
    let messages = energy2mqtt::app::discovery_messages(config, &topics, &Default::default());
    match serde_json::to_string_pretty(&messages) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("energy2mqtt: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(cli: &Cli, config: &Config) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let level = cli
        .log_level
        .clone()
        .unwrap_or_else(|| config.log.level.clone());
    let mut directives = level.clone();
    // rumqttc says "Collision on packet id" at info whenever the broker
    // acknowledges out of order after a reconnect; it resolves itself.
    if !level.contains("rumqttc") {
        directives.push_str(",rumqttc::state=warn");
    }
    let filter =
        EnvFilter::try_new(&directives).map_err(|e| format!("--log-level '{level}': {e}"))?;
    let format = match cli.log_format {
        Some(FormatArg::Json) => LogFormat::Json,
        Some(FormatArg::Text) => LogFormat::Text,
        None => config.log.format,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Bridge,
    /// The bridge plus simulated devices.
    Demo,
    BrokerOnly,
}

fn serve(cli: &Cli, mut config: Config, mode: Mode) -> ExitCode {
    if let Err(e) = init_tracing(cli, &config) {
        eprintln!("energy2mqtt: {e}");
        return ExitCode::from(2);
    }
    // The bridge alone waits on a few sockets and one timer: one thread
    // does that with fewer wake-ups and less memory (issue 15). The demo's
    // simulators and the broker-only mode keep two workers.
    let threads = if mode == Mode::Bridge {
        Threads::One
    } else {
        Threads::Two
    };
    let runtime = match runtime(threads) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(wait_for_signal(shutdown.clone()));
        match mode {
            Mode::BrokerOnly => {
                config.broker.enabled = true;
                energy2mqtt::broker::start(&config.broker).await?;
                // A flood's buffers are freed as it ends; give the pages
                // back as `run` does.
                let mut trim = tokio::time::interval(std::time::Duration::from_secs(60));
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = trim.tick() => energy2mqtt::memory::release_free_heap(),
                    }
                }
                Ok(())
            }
            Mode::Demo => {
                let devices = energy2mqtt::sim::demo::start(&config).await?;
                let packs = devices.pack_spawner();
                energy2mqtt::app::run_with(config, shutdown, packs).await
            }
            Mode::Bridge => energy2mqtt::app::run(config, shutdown).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            if let Some(refusal) = e.downcast_ref::<energy2mqtt::app::BaseTopicTaken>() {
                eprintln!("energy2mqtt: {refusal}");
                return ExitCode::from(2);
            }
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Threads {
    One,
    Two,
}

/// The tokio runtime, or the exit code when it cannot start.
fn runtime(threads: Threads) -> Result<tokio::runtime::Runtime, ExitCode> {
    let built = match threads {
        Threads::One => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Threads::Two => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
    };
    built.map_err(|e| {
        eprintln!("energy2mqtt: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

/// Ctrl-C, or SIGTERM from `docker stop` / systemd.
async fn wait_for_signal(shutdown: CancellationToken) {
    energy2mqtt::signals::shutdown_requested().await;
    shutdown.cancel();
}
