//! Wiring: the embedded broker, the MQTT connection, one task per device
//! and the loop of the one task that owns the bridge's state
//! ([`crate::bridge::Bridge`]); shutdown in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bridge::Bridge;
use crate::config::{Config, PlugConnection};
use crate::drivers::{DriverEvent, DriverHandle};
use crate::mqtt::connection::Connection;
use crate::mqtt::outbox::{Class, Message, Outbox};
use crate::mqtt::{Topics, payloads, settings};

/// How often the bridge's own state (uptime, counters) is refreshed.
pub const BRIDGE_STATE_INTERVAL: Duration = Duration::from_secs(60);
/// The control plane also runs on every fresh reading; this bounds how
/// late timers, retries and staleness are noticed.
pub const CONTROL_INTERVAL: Duration = Duration::from_secs(1);

/// Starts the task of one BMS pack; which transport it uses is the
/// caller's choice (BlueZ, or the demo's simulated packs).
pub type BmsSpawner = Box<
    dyn Fn(
            crate::config::BmsConfig,
            crate::storage::Store,
            mpsc::Sender<DriverEvent>,
            CancellationToken,
        ) -> DriverHandle
        + Send
        + Sync,
>;

/// Packs over BlueZ (or, without the `ble` feature, a clear error per pack).
pub fn bluez_packs() -> BmsSpawner {
    #[cfg(feature = "ble")]
    {
        let connector = Arc::new(crate::drivers::jkbms::link::BluezConnector::default());
        Box::new(move |pack, store, events, shutdown| {
            crate::drivers::jkbms::task::spawn(pack, connector.clone(), store, events, shutdown)
        })
    }
    #[cfg(not(feature = "ble"))]
    {
        Box::new(|pack, _store, events, _shutdown| {
            let (tx, _rx) = crate::drivers::inbox::channel();
            let id = pack.id.clone();
            tokio::spawn(async move {
                let _ = events
                    .send(DriverEvent::Problem {
                        device: id,
                        message:
                            "this build has no Bluetooth support (built without the `ble` feature)"
                                .into(),
                    })
                    .await;
            });
            DriverHandle {
                commands: std::sync::Arc::new(tx),
                task: None,
            }
        })
    }
}

/// Runs the bridge until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with(config, shutdown, bluez_packs()).await
}

/// [`run`] with the packs' transport chosen by the caller.
pub async fn run_with(
    config: Config,
    shutdown: CancellationToken,
    packs: BmsSpawner,
) -> anyhow::Result<()> {
    if config.broker.enabled {
        crate::broker::start(&config.broker)
            .await
            .context("embedded broker")?;
    }
    let topics = Topics::from_config(&config);
    let options = settings::mqtt_options(&config, &topics)?;
    let endpoint = settings::endpoint(&config).map_err(anyhow::Error::msg)?;
    tracing::info!(broker = %endpoint, base = topics.base(), "starting energy2mqtt {}", env!("CARGO_PKG_VERSION"));
    // Held until the base-topic claim is settled: nothing of ours reaches
    // the broker before we know no other instance holds the base topic.
    let outbox = Outbox::default();
    outbox.hold();
    let mut conn = Connection::start_with(options, config.mqtt.reconnect_max, outbox);
    let (driver_tx, mut driver_rx) = mpsc::channel::<DriverEvent>(256);
    let drivers = spawn_drivers(&config, &driver_tx, &shutdown, &packs);
    // Without any device there is nothing for the control step to time
    // (no timers, balancer or alerts): the idle bridge then sleeps until
    // the broker or the 60 s statistics wake it (issue 15).
    let control_needed = !drivers.is_empty();
    let mut bridge = Bridge::new(config, topics, conn.outbox.clone(), conn.client.clone());
    bridge.drivers = drivers;
    bridge.incoming_dropped = conn.incoming_dropped.clone();
    bridge.set_healthy(false);
    bridge.publish_initial();

    let mut stats_tick = tokio::time::interval(BRIDGE_STATE_INTERVAL);
    stats_tick.tick().await;
    let mut control_tick = tokio::time::interval(CONTROL_INTERVAL);
    control_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sessions_seen = 0;
    let refused = loop {
        let gc_deadline = bridge.gc.as_ref().map(|g| g.deadline);
        let birth_deadline = bridge.ha_birth_at;
        let claim_deadline = bridge.claim.as_ref().and_then(|c| c.deadline);
        tokio::select! {
            _ = shutdown.cancelled() => break None,
            changed = conn.status.changed() => {
                if changed.is_err() {
                    anyhow::bail!("the MQTT connection task stopped");
                }
                let status = *conn.status.borrow_and_update();
                if !status.connected {
                    bridge.set_healthy(false);
                }
                if status.connected && status.sessions > sessions_seen {
                    sessions_seen = status.sessions;
                    if bridge.claim.is_some() {
                        bridge.start_claim(status.subacks).await;
                    } else {
                        bridge.on_session(status.sessions).await;
                    }
                }
                if let Some(claim) = &mut bridge.claim {
                    claim.on_status(status.subacks, Instant::now());
                }
            }
            _ = sleep_until(claim_deadline), if claim_deadline.is_some() => {
                if let Err(refusal) = bridge.settle_claim(sessions_seen).await {
                    break Some(refusal);
                }
            }
            Some(msg) = conn.incoming.recv() => {
                if let Some(claim) = &mut bridge.claim {
                    if claim.on_incoming(&bridge.topics, &msg) {
                        if let Err(refusal) = bridge.settle_claim(sessions_seen).await {
                            break Some(refusal);
                        }
                    }
                    continue;
                }
                bridge.on_incoming(msg)
            }
            Some(ev) = driver_rx.recv() => bridge.on_driver_event(ev),
            _ = sleep_until(gc_deadline), if gc_deadline.is_some() => bridge.finish_cleanup().await,
            _ = sleep_until(birth_deadline), if birth_deadline.is_some() => bridge.on_ha_birth(),
            _ = stats_tick.tick() => {
                bridge.publish_bridge_state();
                crate::memory::release_free_heap();
            }
            _ = control_tick.tick(), if control_needed => bridge.control_step(),
        }
    };
    if let Some(refusal) = refused {
        // Leave without a trace on the other instance's topics: no offline
        // state (the clean DISCONNECT also keeps our Last Will unsent).
        bridge.outbox.with(|q| q.set_held(true));
        conn.shutdown(None, Duration::from_secs(2)).await;
        return Err(anyhow::Error::new(refusal));
    }
    tracing::info!("shutting down");
    bridge.set_healthy(false);
    // Whatever control state is still pending reaches the disk first.
    let writer = bridge.control_writer();
    let _ = tokio::task::spawn_blocking(move || writer.write()).await;
    // The drivers' tokens are children of `shutdown`: give them a moment to
    // release their devices (a pack must be free for the phone app, a
    // logger stick runs out of sockets when clients vanish).
    let releases: Vec<_> = bridge
        .drivers
        .values_mut()
        .filter_map(|d| d.task.take())
        .collect();
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        for t in releases {
            let _ = t.await;
        }
    })
    .await;
    // Stopped before the claim was settled: the base topic may be another
    // instance's, so say nothing on it.
    let offline = bridge.claim.is_none().then(|| {
        Message::retained(
            Class::BridgeState,
            bridge.topics.bridge_state(),
            payloads::OFFLINE,
        )
    });
    conn.shutdown(offline, Duration::from_secs(2)).await;
    Ok(())
}

/// One task per configured device that has a driver.
fn spawn_drivers(
    config: &Config,
    events: &mpsc::Sender<DriverEvent>,
    shutdown: &CancellationToken,
    packs: &BmsSpawner,
) -> HashMap<String, DriverHandle> {
    let mut out = HashMap::new();
    let store = crate::storage::Store::new(config.storage.dir.clone());
    for pack in &config.bms {
        let handle = packs(
            pack.clone(),
            store.clone(),
            events.clone(),
            shutdown.child_token(),
        );
        out.insert(pack.id.clone(), handle);
    }
    for inv in &config.inverter {
        let handle =
            crate::drivers::deye::task::spawn(inv.clone(), events.clone(), shutdown.child_token());
        out.insert(inv.id.clone(), handle);
    }
    for plug in &config.plug {
        let handle = match &plug.connection {
            PlugConnection::Tapo(tapo) => {
                let link = crate::drivers::tapo::link_for(config, plug, tapo);
                crate::drivers::tapo::task::spawn(link, events.clone(), shutdown.child_token())
            }
            PlugConnection::Shelly(shelly) => {
                let link = crate::drivers::shelly::link_for(plug, shelly);
                crate::drivers::shelly::task::spawn(link, events.clone(), shutdown.child_token())
            }
        };
        out.insert(plug.id.clone(), handle);
    }
    out
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
pub use crate::bridge::{BaseTopicTaken, Claim};
pub use crate::mqtt::devices::{Known, SITE_ID, discovery_messages};
