//! `energy2mqtt-push`: the notification sidecar. Reads the bridge's
//! configuration file, listens to `<base>/alerts/event`, `<base>/bridge/event`
//! and `<base>/bridge/state`, and sends Web Push, ntfy and Telegram
//! notifications. Wiring only; the rules live in `energy2mqtt::push`.
//!
//! Two parts: the MQTT loop decides (pure rules, instantly) which channels
//! get a notification, and one delivery task sends, in order. A push
//! service that answers slowly or asks us to wait (429) then never stalls
//! the MQTT connection, and a clear can never overtake its raise.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use rumqttc::{AsyncClient, Event, LastWill, Packet, QoS};

use energy2mqtt::config::{self, Config};
use energy2mqtt::mqtt::payloads::{OFFLINE, ONLINE};
use energy2mqtt::mqtt::topics::Topics;
use energy2mqtt::push::delivery::{Delivery, Work, test_notification};
use energy2mqtt::push::http::{self, Api, TestReply};
use energy2mqtt::push::lock;
use energy2mqtt::push::memory::{self, Memory};
use energy2mqtt::push::notify::{self, Watch};
use energy2mqtt::push::rules::Rules;
use energy2mqtt::push::vapid::VapidKey;
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
    /// Exit 0 when a running sidecar answers on [push] listen and is
    /// connected to the broker (container health checks).
    Health,
}

// The wall clock and the local time through crate::clock, the one place
// that reads them.
fn now_unix() -> i64 {
    i64::try_from(energy2mqtt::clock::now().0 / 1000).unwrap_or(i64::MAX)
}

fn now_rfc3339() -> String {
    energy2mqtt::mqtt::payloads::instant(energy2mqtt::clock::now())
}

fn local_minute() -> u16 {
    energy2mqtt::clock::local_at(energy2mqtt::clock::now()).minute_of_day()
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
        OFFLINE,
        QoS::AtLeastOnce,
        true,
    ));
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let (alerts, alerts_view, events, state) = (
        topics.alerts_event(),
        topics.alerts(),
        topics.bridge_event(),
        topics.bridge_state(),
    );
    let store = Store::new(&config.storage.dir);
    let (remembered, unreadable) = Memory::load(&store);
    if let Some(e) = unreadable {
        tracing::warn!(error = %e, "the channels' memory is unreadable: starting without it");
    }
    let mut rules = Rules::new(&config, remembered);
    let (remember, latest) = tokio::sync::watch::channel(rules.memory());
    let saving = tokio::spawn(memory::keep_saved(store, latest));
    let lost_after = config.push.device_lost_after;
    let reconnect_max = config.mqtt.reconnect_max;
    let listen = config.push.listen;
    let token = config.push.token.clone();
    let link = config.push.public_url.clone();
    let mut delivery = Delivery::new(config)?;

    // The HTTP interface first: a port already in use is a configuration
    // problem to report at once, not after the broker answered.
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!("cannot listen on {listen}: set [push] listen to a free address")
        })?;
    let active = Arc::new(Mutex::new(http::no_alerts_yet()));
    let (tests, mut test_queue) = tokio::sync::mpsc::channel::<TestReply>(4);
    let api = Api::new(
        delivery.subs.clone(),
        delivery.vapid.application_server_key(),
        token,
        active.clone(),
        tests,
    );
    let connected = api.connected();
    let (stop_http, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        if let Err(e) = http::serve(listener, api, async {
            let _ = stopped.await;
        })
        .await
        {
            tracing::error!(error = %e, "the HTTP interface stopped");
        }
    });
    tracing::info!(
        %listen,
        key = %delivery.vapid.application_server_key(),
        subscriptions = lock(&delivery.subs).list().len(),
        ntfy = delivery.config.push.ntfy.len(),
        telegram = delivery.config.push.telegram.len(),
        "energy2mqtt-push started"
    );
    if delivery.config.push.vapid_subject.is_none() {
        tracing::warn!(
            "[push] vapid_subject is not set: Apple's push service (Safari, iPhone) refuses pushes without it; set it to mailto:you@example.com"
        );
    }
    // Bounded: a flood of events waits here rather than growing memory.
    let (jobs, mut queue) = tokio::sync::mpsc::channel::<Work>(64);
    let test_link = link.clone();
    let worker = tokio::spawn(async move {
        loop {
            // Tests from the page go through the same task, so they queue
            // behind (never overtake) notifications being sent.
            let work = tokio::select! {
                w = queue.recv() => match w {
                    Some(w) => w,
                    None => break,
                },
                Some(reply) = test_queue.recv() => Work::Test(reply),
            };
            match work {
                Work::Job(job) => {
                    delivery.deliver(&job).await;
                }
                Work::Test(reply) => {
                    let job = delivery.all(test_notification(test_link.as_deref(), now_rfc3339()));
                    let _ = reply.send(delivery.deliver(&job).await);
                }
            }
        }
    });
    let shutdown = energy2mqtt::signals::shutdown_requested();
    tokio::pin!(shutdown);
    let mut watch = Watch::default();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut backoff = Duration::from_millis(500);
    loop {
        let mut found = Vec::new();
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                found = notify::due_device_lost(&mut watch, lost_after, now_unix(), &now_rfc3339(), link.as_deref());
            }
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(500);
                    connected.store(true, std::sync::atomic::Ordering::Relaxed);
                    for t in [&alerts, &alerts_view, &events, &state] {
                        client.subscribe(t.as_str(), QoS::AtLeastOnce).await?;
                    }
                    client.publish(topics.push_state(), QoS::AtLeastOnce, true, ONLINE).await?;
                    tracing::info!("connected to the broker");
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) else {
                        tracing::debug!(topic = %p.topic, "not JSON, ignored");
                        continue;
                    };
                    let now = now_rfc3339();
                    let n = if p.topic == alerts {
                        notify::from_alert_event(&v, &now, link.as_deref())
                    } else if p.topic == alerts_view {
                        // What the page shows; only an object with a list
                        // replaces what we have.
                        if v.get("active").is_some_and(serde_json::Value::is_array) {
                            *lock(&active) = v;
                        }
                        None
                    } else if p.topic == events {
                        notify::from_bridge_event(&v, &mut watch, now_unix(), &now, link.as_deref())
                    } else if p.topic == state {
                        notify::from_bridge_state(&v, &mut watch, &now, link.as_deref())
                    } else {
                        None
                    };
                    found.extend(n);
                }
                Ok(_) => {}
                Err(e) => {
                    connected.store(false, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(error = %e, "MQTT connection lost; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(reconnect_max);
                }
            }
        }
        for n in found {
            let (job, changed) = rules.decide(n, now_unix(), local_minute());
            if changed {
                let _ = remember.send(rules.memory());
            }
            if job.any() {
                // Only fails once the worker is gone, which only the end of
                // the process does.
                let _ = jobs.send(Work::Job(job)).await;
            }
        }
    }
    let _ = stop_http.send(());
    let _ = client
        .publish(topics.push_state(), QoS::AtLeastOnce, true, OFFLINE)
        .await;
    let _ = client.disconnect().await;
    // Let the broker get the offline state and the worker finish what it has.
    drop(jobs);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(5), worker).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
    // The last snapshot on disk before we go.
    drop(remember);
    let _ = tokio::time::timeout(Duration::from_secs(2), saving).await;
    Ok(())
}

/// `health`: GET /healthz on our own listen address.
async fn health(config: &Config) -> anyhow::Result<bool> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut addr = config.push.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        s.take(4096).read_to_end(&mut buf).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&buf).into_owned())
    })
    .await;
    match answer {
        Ok(Ok(text)) if text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200") => {
            println!("energy2mqtt-push on {addr}: connected to the broker");
            Ok(true)
        }
        Ok(Ok(_)) => {
            eprintln!("energy2mqtt-push on {addr} runs but is not connected to the broker");
            Ok(false)
        }
        Ok(Err(e)) => {
            eprintln!("nothing answers on {addr}: {e}");
            Ok(false)
        }
        Err(_) => {
            eprintln!("no answer from {addr} within 5 s");
            Ok(false)
        }
    }
}

async fn test(config: Config) -> anyhow::Result<bool> {
    let link = config.push.public_url.clone();
    let mut delivery = Delivery::new(config)?;
    let job = delivery.all(test_notification(link.as_deref(), now_rfc3339()));
    let report = delivery.deliver(&job).await;
    if report.is_empty() {
        println!(
            "no channel configured: subscribe a browser, or add [[push.ntfy]] or [[push.telegram]]"
        );
        return Ok(false);
    }
    let mut ok = true;
    for r in &report {
        ok &= r.ok;
        println!(
            "{} {}: {}",
            if r.ok { "ok  " } else { "FAIL" },
            r.channel,
            r.result
        );
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
    // Logs on stderr: stdout carries the answers of `test` and `public-key`.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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
            Some(Command::Health) => health(&config).await,
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
