//! Reading the configuration: defaults < TOML file < `E2M_*` environment <
//! the original app's variables, with `*_FILE` variants for secrets.

use std::fmt;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Toml};

use super::{Config, InverterConfig, Secret};

/// The default file, read when it exists and no `--config` was given.
pub const DEFAULT_PATH: &str = "config/energy2mqtt.toml";
/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "E2M_";

/// One thing wrong with the configuration: the key it concerns, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path (`mqtt.keepalive`, `plug[1].id`) or the variable name.
    pub key: String,
    pub reason: String,
    /// Where the value came from (file, environment variable), when known.
    pub origin: Option<String>,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
            origin: None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.key, self.reason)?;
        if let Some(origin) = &self.origin {
            write!(f, " (in {origin})")?;
        }
        Ok(())
    }
}

/// Everything wrong with a configuration, reported at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration")?;
        for e in &self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    pub fn one(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self(vec![ConfigError::new(key, reason)])
    }

    /// Whether any error names this key (tests and callers use it).
    pub fn mentions(&self, key: &str) -> bool {
        self.0.iter().any(|e| e.key == key)
    }
}

/// Where the configuration comes from. `load` fills it from the process;
/// tests fill it themselves.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// TOML that sits below the file (the demo's built-in configuration).
    pub base_toml: Option<String>,
    /// The file; it must exist when `file_required`.
    pub file: Option<PathBuf>,
    pub file_required: bool,
    /// Environment variables (name, value).
    pub env: Vec<(String, String)>,
}

impl Sources {
    /// The process environment and the file chosen on the command line, or
    /// the default file when it exists.
    pub fn from_process(cli_path: Option<&Path>) -> Self {
        let (file, file_required) = match cli_path {
            Some(p) => (Some(p.to_path_buf()), true),
            None => (Some(PathBuf::from(DEFAULT_PATH)), false),
        };
        Self {
            base_toml: None,
            file,
            file_required,
            env: std::env::vars().collect(),
        }
    }
}

/// Loads and validates the configuration of this process.
pub fn load(cli_path: Option<&Path>) -> Result<Config, ConfigErrors> {
    load_from(&Sources::from_process(cli_path))
}

/// Loads and validates a configuration from explicit sources.
pub fn load_from(sources: &Sources) -> Result<Config, ConfigErrors> {
    let mut figment = Figment::new();
    if let Some(base) = &sources.base_toml {
        figment = figment.merge(Toml::string(base));
    }
    if let Some(path) = &sources.file {
        if path.is_file() {
            check_toml_syntax(path)?;
            figment = figment.merge(Toml::file_exact(path));
        } else if sources.file_required {
            return Err(ConfigErrors::one(
                "--config",
                format!("cannot read {}: no such file", path.display()),
            ));
        }
    }
    for var in env_providers(&sources.env) {
        figment = figment.merge(var);
    }
    for (name, key, value) in secret_files(&sources.env)? {
        figment = figment.merge(EnvVar { name, key, value });
    }
    let mut config: Config = figment.extract_lossy().map_err(from_figment)?;
    apply_legacy(&mut config, &sources.env)?;
    super::validate::validate(&config)?;
    Ok(config)
}

/// Reports a TOML syntax error by line and column only. The parser's own
/// message quotes the offending line, and that line may hold a password
/// (a backslash in it is enough to make it invalid TOML).
fn check_toml_syntax(path: &Path) -> Result<(), ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::one("--config", format!("cannot read {}: {e}", path.display()))
    })?;
    let Err(e) = toml::from_str::<toml::Table>(&text) else {
        return Ok(());
    };
    let at = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: ")
        }
        None => String::new(),
    };
    // The key being written, when the line starts with one: the message
    // then names it without showing what follows the `=`.
    let key = e
        .span()
        .and_then(|span| text[..span.start.min(text.len())].rsplit('\n').next())
        .and_then(|line| line.split_once('='))
        .map(|(k, _)| k.trim().trim_matches('"').to_owned())
        .filter(|k| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        });
    let mut error = ConfigError::new(
        key.unwrap_or_else(|| "(syntax)".into()),
        format!("{at}invalid TOML: {}", first_line(e.message())),
    );
    error.origin = Some(format!("TOML file {}", path.display()));
    Err(ConfigErrors(vec![error]))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s).trim()
}

/// Whether `key` (a dotted path) holds a secret: its value must not appear
/// in any message about it.
fn is_secret_key(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    let last = last.split('[').next().unwrap_or(last);
    matches!(last, "password" | "token" | "email") || last.ends_with("_key")
}

/// Removes quoted values from a message about a secret key.
fn redact_quoted(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    let mut quote: Option<char> = None;
    for c in reason.chars() {
        match quote {
            Some(q) if c == q => {
                out.push_str(super::secret::REDACTED);
                out.push(c);
                quote = None;
            }
            Some(_) => {}
            None if c == '`' || c == '"' => {
                out.push(c);
                quote = Some(c);
            }
            None => out.push(c),
        }
    }
    if quote.is_some() {
        out.push_str(super::secret::REDACTED);
    }
    out
}

/// One environment variable as a figment provider, so that an error names it.
struct EnvVar {
    name: String,
    key: String,
    value: String,
}

impl figment::Provider for EnvVar {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(format!("environment variable {}", self.name))
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let value = figment::util::nest(&self.key, self.value.clone().into());
        let dict = value.into_dict().unwrap_or_default();
        Ok(figment::Profile::Default.collect(dict))
    }
}

/// `E2M_MQTT__URL` → `mqtt.url`. Only nested names are taken, so other
/// `E2M_*` variables (test switches, paths) never turn into unknown keys.
/// Values stay strings; `extract_lossy` reads numbers and booleans from them.
fn env_providers(env: &[(String, String)]) -> Vec<EnvVar> {
    env.iter()
        .filter_map(|(name, value)| {
            let rest = name.strip_prefix(ENV_PREFIX)?;
            if !rest.contains("__") || secret_file_target(rest).is_some() {
                return None;
            }
            Some(EnvVar {
                name: name.clone(),
                key: env_key(rest),
                value: value.clone(),
            })
        })
        .collect()
}

/// Keys whose own name ends in `_file`: `E2M_MQTT__CA_FILE` sets
/// `mqtt.ca_file`; it is not a secret file holding `mqtt.ca`.
const FILE_KEYS: &[&str] = &["mqtt.ca_file", "push.vapid_private_key_file"];

/// `MQTT__URL` → `mqtt.url`.
fn env_key(rest: &str) -> String {
    rest.to_ascii_lowercase().replace("__", ".")
}

/// `MQTT__PASSWORD_FILE` → `mqtt.password`; `None` for every other name.
fn secret_file_target(rest: &str) -> Option<String> {
    if FILE_KEYS.contains(&env_key(rest).as_str()) {
        return None;
    }
    let target = rest.strip_suffix("_FILE")?;
    target.contains("__").then(|| env_key(target))
}

/// `E2M_MQTT__PASSWORD_FILE=/run/secrets/x` → (`mqtt.password`, contents).
fn secret_files(env: &[(String, String)]) -> Result<Vec<(String, String, String)>, ConfigErrors> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (name, path) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let Some(key) = secret_file_target(rest) else {
            continue;
        };
        let plain = &name[..name.len() - "_FILE".len()];
        if env.iter().any(|(k, v)| k == plain && !v.is_empty()) {
            errors.push(both_set(plain, name));
            continue;
        }
        match read_secret_file(path) {
            Ok(value) => out.push((name.clone(), key, value)),
            Err(reason) => errors.push(ConfigError::new(name.clone(), reason)),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn read_secret_file(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
        .map_err(|e| format!("cannot read secret file {path}: {e}"))
}

/// `X` and `X_FILE` both set: which one is meant would be a guess.
fn both_set(plain: &str, file_var: &str) -> ConfigError {
    ConfigError::new(
        file_var,
        format!("{plain} is set as well; set only one of {plain} and {file_var}"),
    )
}

/// The original app's variables, and their `_FILE` forms. Empty values
/// (`TAPO_PASSWORD=` left in a compose file) count as unset.
fn legacy_var(env: &[(String, String)], name: &str) -> Result<Option<String>, ConfigError> {
    let get = |n: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.trim().is_empty())
    };
    let file_var = format!("{name}_FILE");
    match (get(name), get(&file_var)) {
        (Some(_), Some(_)) => Err(both_set(name, &file_var)),
        (Some(v), None) => Ok(Some(v)),
        (None, Some(path)) => read_secret_file(&path)
            .map(Some)
            .map_err(|reason| ConfigError::new(file_var, reason)),
        (None, None) => Ok(None),
    }
}

fn apply_legacy(config: &mut Config, env: &[(String, String)]) -> Result<(), ConfigErrors> {
    let mut errors = Vec::new();
    let mut take = |name: &str| match legacy_var(env, name) {
        Ok(v) => v.filter(|v| !v.trim().is_empty()),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let ip = take("INVERTER_IP");
    let sn = take("LOGGER_SN");
    let email = take("TAPO_EMAIL");
    let password = take("TAPO_PASSWORD");
    if let Some(ip) = ip {
        match config.inverter.first_mut() {
            Some(first) => first.host = Some(ip.trim().to_owned()),
            None => config
                .inverter
                .push(InverterConfig::legacy(ip.trim().to_owned())),
        }
    }
    if let Some(sn) = sn {
        match sn.trim().parse::<u32>() {
            Ok(serial) => match config.inverter.first_mut() {
                Some(first) => first.serial = Some(serial),
                None => errors.push(ConfigError::new(
                    "LOGGER_SN",
                    "set without INVERTER_IP or an [[inverter]] section to apply it to",
                )),
            },
            Err(_) => errors.push(ConfigError::new(
                "LOGGER_SN",
                format!("'{sn}' is not a logger serial number (digits, at most 4294967295)"),
            )),
        }
    }
    if let Some(email) = email {
        config.tapo.email = Some(Secret::new(email.trim()));
    }
    if let Some(password) = password {
        config.tapo.password = Some(Secret::new(password));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// figment's errors carry the key path; turn them into ours.
fn from_figment(err: figment::Error) -> ConfigErrors {
    use figment::error::Kind;
    let errors = err
        .into_iter()
        .map(|e| {
            let mut path: Vec<String> = e.path.clone();
            let reason = match &e.kind {
                Kind::UnknownField(field, expected) => {
                    // figment already ends the path with the unknown key.
                    if path.last() != Some(field) {
                        path.push(field.clone());
                    }
                    format!(
                        "unknown key `{field}`; expected one of: {}",
                        expected.join(", ")
                    )
                }
                Kind::MissingField(field) => {
                    path.push(field.to_string());
                    "required key is missing".to_owned()
                }
                other => other.to_string(),
            };
            let origin = e.metadata.as_ref().map(|m| match &m.source {
                Some(src) => format!("{} {src}", m.name),
                None => m.name.to_string(),
            });
            let key = key_path(&path);
            let reason = if is_secret_key(&key) {
                redact_quoted(&reason)
            } else {
                reason
            };
            ConfigError {
                key,
                reason,
                origin,
            }
        })
        .collect();
    ConfigErrors(errors)
}

/// `["plug", "1", "id"]` → `plug[1].id`.
fn key_path(path: &[String]) -> String {
    let mut out = String::new();
    for seg in path {
        if seg.chars().all(|c| c.is_ascii_digit()) && !seg.is_empty() {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    if out.is_empty() { "(root)".into() } else { out }
}
