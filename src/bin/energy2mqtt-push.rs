//! `energy2mqtt-push`: the notification sidecar. Reads the bridge's
//! configuration file, listens to `<base>/alerts/event`, `<base>/bridge/event`
//! and `<base>/bridge/state`, and sends Web Push and ntfy notifications.
//! Wiring only; the rules live in `energy2mqtt::push`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use rumqttc::{AsyncClient, Event, LastWill, Packet, QoS};

use energy2mqtt::config::push::QuietHours;
use energy2mqtt::config::{self, Config};
use energy2mqtt::core::alerts::Level;
use energy2mqtt::mqtt::topics::Topics;
use energy2mqtt::push::notify::{self, ChannelState, Kind, Notification, Policy, Verdict, Watch};
use energy2mqtt::push::subscriptions::Subscriptions;
use energy2mqtt::push::vapid::VapidKey;
use energy2mqtt::push::webpush::{self, Outcome, Urgency};
use energy2mqtt::push::{ntfy, send, telegram};
use energy2mqtt::storage::Store;

#[derive(Parser)]
#[command(
    name = "energy2mqtt-push",
    version,
    about = "Phone notifications for energy2mqtt alerts"
)]
struct Cli {
    /// The bridge's configuration file (default: config/energy2mqtt.toml when it exists).
    #[arg(long, short, env = "E2M_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Send a test notification to every channel and report per channel.
    Test,
    /// Print the VAPID applicationServerKey (compare it with the original app's).
    PublicKey,
}

/// How long a push service keeps a message for a phone that is offline.
const TTL: Duration = Duration::from_secs(24 * 3600);

struct Sidecar {
    config: Config,
    http: reqwest::Client,
    vapid: VapidKey,
    subs: Subscriptions,
    webpush_state: ChannelState,
    ntfy_state: Vec<ChannelState>,
    telegram_state: Vec<ChannelState>,
    quiet: Option<QuietHours>,
    /// 401/403 explanations already logged, so each is logged once.
    told: std::collections::BTreeSet<String>,
}

// The wall clock and the local time through crate::clock, the one place
// that reads them.
fn now_unix() -> i64 {
    i64::try_from(energy2mqtt::clock::now().0 / 1000).unwrap_or(i64::MAX)
}

fn now_rfc3339() -> String {
    energy2mqtt::control::rfc3339(energy2mqtt::clock::now())
}

fn local_minute() -> u16 {
    energy2mqtt::clock::local_at(energy2mqtt::clock::now()).minute_of_day()
}

impl Sidecar {
    fn new(config: Config) -> anyhow::Result<Self> {
        let push = &config.push;
        let vapid = VapidKey::load_or_generate(
            push.vapid_private_key_file.as_deref(),
            &config.storage.dir,
        )?;
        let subs = Subscriptions::load(Store::new(&config.storage.dir))?;
        let http = energy2mqtt::https::client_builder()
            .timeout(Duration::from_secs(15))
            .build()
            .context("HTTP client")?;
        let quiet = match &push.quiet_hours {
            // Validated with the configuration already.
            Some(q) => QuietHours::parse(q).ok(),
            None => None,
        };
        Ok(Self {
            ntfy_state: vec![ChannelState::default(); push.ntfy.len()],
            telegram_state: vec![ChannelState::default(); push.telegram.len()],
            config,
            http,
            vapid,
            subs,
            webpush_state: ChannelState::default(),
            quiet,
            told: Default::default(),
        })
    }

    fn link(&self) -> Option<String> {
        None
    }

    /// Sends `n` to every channel that admits it; per channel a line of
    /// what happened.
    async fn dispatch(&mut self, n: &Notification, force: bool) -> Vec<(String, String)> {
        let mut report = Vec::new();
        let now = now_unix();
        let minute = local_minute();
        let policy = Policy {
            min_level: self.config.push.min_level,
            quiet: self.quiet,
        };
        if force || notify::admit(n, &policy, &mut self.webpush_state, now, minute) == Verdict::Send
        {
            report.extend(self.webpush(n).await);
        }
        for i in 0..self.config.push.ntfy.len() {
            let ch = self.config.push.ntfy[i].clone();
            let policy = Policy {
                min_level: ch.min_level,
                quiet: self.quiet,
            };
            let name = format!("ntfy {}/{}", ch.url.trim_end_matches('/'), ch.topic);
            let verdict = notify::admit(n, &policy, &mut self.ntfy_state[i], now, minute);
            if force || verdict == Verdict::Send {
                let r = send::ntfy(&self.http, &ntfy::request(&ch, n), send::Retry::DEFAULT).await;
                report.push((name, format!("{r:?}")));
            } else {
                tracing::debug!(channel = %name, tag = %n.tag, ?verdict, "not sent");
            }
        }
        for i in 0..self.config.push.telegram.len() {
            let ch = self.config.push.telegram[i].clone();
            let policy = Policy {
                min_level: ch.min_level,
                quiet: self.quiet,
            };
            // The bot token is a secret: the channel is named by its chats.
            let name = format!("telegram {:?}", ch.chat_ids);
            let verdict = notify::admit(n, &policy, &mut self.telegram_state[i], now, minute);
            if force || verdict == Verdict::Send {
                let reqs = telegram::requests(&ch, n, telegram::API);
                let r = send::telegram(&self.http, &reqs, send::Retry::DEFAULT).await;
                report.push((name, format!("{r:?}")));
            } else {
                tracing::debug!(channel = %name, tag = %n.tag, ?verdict, "not sent");
            }
        }
        for (channel, result) in &report {
            tracing::info!(%channel, tag = %n.tag, %result, "notification");
        }
        report
    }

    async fn webpush(&mut self, n: &Notification) -> Vec<(String, String)> {
        let payload = n.payload(notify::MAX_PAYLOAD);
        let urgency = Urgency::for_level(n.level);
        let subject = self.config.push.vapid_subject.clone();
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for sub in self.subs.list().to_vec() {
            let name = format!("webpush {}", origin(&sub.endpoint));
            let req = sub
                .target()
                .map_err(webpush::PushBuildError::from)
                .and_then(|t| {
                    webpush::request_parts(
                        &t,
                        &self.vapid,
                        subject.as_deref(),
                        &payload,
                        TTL,
                        urgency,
                        webpush::is_topic(&n.tag).then_some(n.tag.as_str()),
                        now_unix() as u64,
                    )
                });
            let outcome = match req {
                Ok(req) => send::webpush(&self.http, &req, now_unix).await,
                Err(e) => Outcome::Rejected(e.to_string()),
            };
            match &outcome {
                Outcome::Gone => gone.push(sub.endpoint.clone()),
                Outcome::Rejected(fix) if self.told.insert(fix.clone()) => {
                    tracing::warn!(channel = %name, "{fix}");
                }
                _ => {}
            }
            out.push((name, format!("{outcome:?}")));
        }
        for endpoint in gone {
            match self.subs.remove(&endpoint) {
                Ok(_) => {
                    tracing::info!(endpoint = %origin(&endpoint), "subscription gone (404/410): deleted")
                }
                Err(e) => tracing::warn!(error = %e, "cannot save the subscriptions"),
            }
        }
        out
    }
}

/// Endpoints are capability URLs: log only their origin.
fn origin(endpoint: &str) -> String {
    url::Url::parse(endpoint)
        .ok()
        .and_then(|u| energy2mqtt::push::vapid::audience(&u))
        .unwrap_or_else(|| "?".into())
}

async fn run(config: Config) -> anyhow::Result<()> {
    let topics = Topics::from_config(&config);
    let mut opts = energy2mqtt::mqtt::settings::mqtt_options(&config, &topics)?;
    // Its own client id and a persistent session (events published while
    // it reconnects are queued by the broker), and its own Last Will: the
    // bridge's `bridge/state` must never be touched by us.
    opts.set_client_id(format!("{}-push", config.mqtt.client_id));
    opts.set_last_will(LastWill::new(
        topics.push_state(),
        energy2mqtt::mqtt::payloads::OFFLINE,
        QoS::AtLeastOnce,
        true,
    ));
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let alerts = topics.alerts_event();
    let events = topics.bridge_event();
    let state = topics.bridge_state();
    let mut sidecar = Sidecar::new(config)?;
    let mut watch = Watch::default();
    let lost_after = sidecar.config.push.device_lost_after;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tracing::info!(
        key = %sidecar.vapid.application_server_key(),
        subscriptions = sidecar.subs.list().len(),
        ntfy = sidecar.config.push.ntfy.len(),
        "energy2mqtt-push started"
    );
    let mut backoff = Duration::from_millis(500);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                let _ = client.publish(topics.push_state(), QoS::AtLeastOnce, true, energy2mqtt::mqtt::payloads::OFFLINE).await;
                let _ = client.disconnect().await;
                return Ok(());
            }
            _ = tick.tick() => {
                let link = sidecar.link();
                for n in notify::due_device_lost(&mut watch, lost_after, now_unix(), &now_rfc3339(), link.as_deref()) {
                    sidecar.dispatch(&n, false).await;
                }
            }
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(500);
                    for t in [&alerts, &events, &state] {
                        client.subscribe(t.as_str(), QoS::AtLeastOnce).await?;
                    }
                    client.publish(topics.push_state(), QoS::AtLeastOnce, true, energy2mqtt::mqtt::payloads::ONLINE).await?;
                    tracing::info!("connected to the broker");
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) else {
                        tracing::debug!(topic = %p.topic, "not JSON, ignored");
                        continue;
                    };
                    let link = sidecar.link();
                    let now = now_rfc3339();
                    let n = if p.topic == alerts {
                        notify::from_alert_event(&v, &now, link.as_deref())
                    } else if p.topic == events {
                        notify::from_bridge_event(&v, &mut watch, now_unix(), &now, link.as_deref())
                    } else if p.topic == state {
                        notify::from_bridge_state(&v, &mut watch, &now, link.as_deref())
                    } else {
                        None
                    };
                    if let Some(n) = n {
                        sidecar.dispatch(&n, false).await;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "MQTT connection lost; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(sidecar.config.mqtt.reconnect_max);
                }
            }
        }
    }
}

async fn test(config: Config) -> anyhow::Result<bool> {
    let mut sidecar = Sidecar::new(config)?;
    let n = Notification {
        kind: Kind::Raise,
        title: "energy2mqtt test".into(),
        body: "If you read this, notifications reach you.".into(),
        level: Level::Warning,
        tag: "e2m-test".into(),
        time: now_rfc3339(),
        link: sidecar.link(),
        repeat: false,
    };
    let report = sidecar.dispatch(&n, true).await;
    if report.is_empty() {
        println!(
            "no channel configured: subscribe a browser, or add [[push.ntfy]] or [[push.telegram]]"
        );
        return Ok(false);
    }
    let mut ok = true;
    for (channel, result) in &report {
        let good = result == "Delivered" || result == "Ok";
        ok &= good;
        println!("{} {channel}: {result}", if good { "ok  " } else { "FAIL" });
    }
    Ok(ok)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let config = match config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            None => run(config).await.map(|()| true),
            Some(Command::Test) => test(config).await,
            Some(Command::PublicKey) => {
                let key = VapidKey::load_or_generate(
                    config.push.vapid_private_key_file.as_deref(),
                    &config.storage.dir,
                )?;
                println!("{}", key.application_server_key());
                Ok(true)
            }
        }
    });
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("energy2mqtt-push: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
