//! What every plug driver shares. The task loop: wait for a command, the
//! shutdown or the next poll; switch, then read the plug back at once;
//! poll; and carry out what a failed poll means ([`PollHealth`]: problem
//! once, backoff, offline after N). A driver says only how to reach its
//! plug (`PlugDevice`); the loop runs in the driver's span for the device.
//! And the entities (`field`) of what every plug reads alike.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::drivers::DriverEvent;
use crate::drivers::health::{Failure, PollHealth};
use crate::drivers::inbox::CommandInbox;
pub(crate) use crate::drivers::poll::Report;
use crate::drivers::poll::{Wake, Words, wait};
use crate::model::{DeviceCommand, FieldKind, FieldSpec, PlugReading, Reading, SwitchState};

/// Failed polls in a row before a plug is reported unavailable.
const UNAVAILABLE_AFTER: u32 = 2;
/// Backoff cap when a plug is unreachable.
const BACKOFF_MAX: Duration = Duration::from_secs(60);

const PLUG_WORDS: Words = Words {
    unusable: "plug cannot be used",
    failed: "plug poll failed",
};

/// One plug as its driver reaches it.
pub(crate) trait PlugDevice {
    type Error: std::fmt::Display;

    /// Reads the plug. The driver tells `report` what the plug is
    /// ([`Report::identified`]) at the point it learns it.
    async fn poll(&mut self, report: &mut Report) -> Result<PlugReading, Self::Error>;

    /// The relay's last known state, for TOGGLE.
    fn last_on(&self) -> Option<bool>;

    /// Asks the plug for its relay's state (a TOGGLE before any is known).
    async fn read_on(&mut self) -> Result<bool, Self::Error>;

    async fn set_on(&mut self, on: bool) -> Result<(), Self::Error>;

    /// What kind of failure a failed poll's error is; also where the
    /// driver forgets what a failure makes stale.
    fn failure(&mut self, e: &Self::Error) -> Failure;
}

/// How a plug is polled.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Polling {
    pub interval: Duration,
    /// Failed polls in a row before the plug is reported unavailable.
    pub unavailable_after: u32,
    /// Backoff cap when the plug is unreachable.
    pub backoff_max: Duration,
}

impl Polling {
    /// Every `interval`, as every plug is polled.
    pub(crate) fn every(interval: Duration) -> Self {
        Self {
            interval,
            unavailable_after: UNAVAILABLE_AFTER,
            backoff_max: BACKOFF_MAX,
        }
    }
}

/// Runs one plug until the shutdown or until the bridge drops its end of
/// `commands`.
pub(crate) async fn run<D: PlugDevice>(
    id: &str,
    mut device: D,
    polling: Polling,
    events: mpsc::Sender<DriverEvent>,
    mut commands: CommandInbox,
    shutdown: CancellationToken,
) {
    let interval = polling.interval;
    let mut health = PollHealth::new(interval, polling.unavailable_after, polling.backoff_max);
    let mut report = Report::new(id, events);
    let mut next = Instant::now();
    loop {
        match wait(&shutdown, next, &mut commands).await {
            Wake::Stop => break,
            Wake::Due | Wake::Command(DeviceCommand::Refresh) => {}
            Wake::Command(DeviceCommand::Switch(state)) => {
                if let Err(e) = switch(&mut device, state).await {
                    report
                        .send(DriverEvent::CommandFailed {
                            device: report.id.clone(),
                            reason: format!("switching failed: {e}"),
                        })
                        .await;
                }
                // Read back at once: Home Assistant shows the plug's
                // real state, whether the command worked or not.
            }
        }
        let started = Instant::now();
        let delay = match device.poll(&mut report).await {
            Ok(reading) => {
                health.succeeded();
                report.set_online(true).await;
                report
                    .send(DriverEvent::Readings {
                        device: report.id.clone(),
                        reading: Reading::Plug(reading),
                    })
                    .await;
                interval
            }
            Err(e) => failed(&mut device, &mut health, &mut report, e).await,
        };
        next = started + delay;
    }
}

async fn switch<D: PlugDevice>(device: &mut D, state: SwitchState) -> Result<(), D::Error> {
    let on = match state {
        SwitchState::On => true,
        SwitchState::Off => false,
        SwitchState::Toggle => match device.last_on() {
            Some(current) => !current,
            None => !device.read_on().await?,
        },
    };
    device.set_on(on).await
}

/// What a failed poll means; returns how long to wait before the next.
async fn failed<D: PlugDevice>(
    device: &mut D,
    health: &mut PollHealth,
    report: &mut Report,
    e: D::Error,
) -> Duration {
    let kind = device.failure(&e);
    let message = e.to_string();
    let a = health.failed(kind, &message);
    report.failed(&a, &message, PLUG_WORDS).await;
    if matches!(kind, Failure::RateLimited { .. }) {
        tracing::debug!(wait = ?a.wait, "plug busy");
    }
    a.wait
}

/// The entities of the values every plug reads alike, whichever its brand
/// (the same state key, unit and class), for the drivers' `fields()`.
pub(crate) mod field {
    use super::{FieldKind, FieldSpec};

    /// Hidden from default dashboards.
    pub(crate) const fn diag(key: &'static str, name: &'static str) -> FieldSpec {
        FieldSpec {
            diagnostic: true,
            ..FieldSpec::sensor(key, name)
        }
    }

    /// An energy counter in kWh.
    pub(crate) const fn energy(key: &'static str, name: &'static str) -> FieldSpec {
        FieldSpec {
            unit: Some("kWh"),
            device_class: Some("energy"),
            state_class: Some("total_increasing"),
            precision: Some(3),
            ..FieldSpec::sensor(key, name)
        }
    }

    pub(crate) const POWER: FieldSpec = FieldSpec {
        unit: Some("W"),
        device_class: Some("power"),
        state_class: Some("measurement"),
        precision: Some(1),
        ..FieldSpec::sensor("power", "Power")
    };

    pub(crate) const OVERHEATED: FieldSpec = FieldSpec {
        device_class: Some("heat"),
        kind: FieldKind::Binary,
        ..diag("overheated", "Overheated")
    };

    pub(crate) const OVERLOADED: FieldSpec = FieldSpec {
        device_class: Some("problem"),
        kind: FieldKind::Binary,
        ..diag("overloaded", "Overloaded")
    };

    pub(crate) const RSSI: FieldSpec = FieldSpec {
        unit: Some("dBm"),
        device_class: Some("signal_strength"),
        state_class: Some("measurement"),
        ..diag("rssi", "Signal strength")
    };

    pub(crate) const FIRMWARE: FieldSpec = diag("firmware", "Firmware");
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::drivers::DeviceInfo as Identity;
    use crate::drivers::inbox;

    const MS: Duration = Duration::from_millis(1);
    /// Long enough that no poll comes from the timer during a test.
    const NEVER: Duration = Duration::from_secs(3600);

    #[derive(Debug, thiserror::Error)]
    #[error("{message}")]
    struct FakeError {
        message: &'static str,
        kind: Failure,
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Call {
        Poll,
        ReadOn,
        SetOn(bool),
    }

    #[derive(Debug, Default)]
    struct Seen {
        calls: Vec<Call>,
        polled_at: Vec<Instant>,
    }

    /// A plug whose relay obeys, with scripted poll failures.
    #[derive(Default)]
    struct Fake {
        relay: bool,
        known: Option<bool>,
        poll_errors: VecDeque<FakeError>,
        refuse_switch: Option<&'static str>,
        seen: Arc<Mutex<Seen>>,
    }

    impl Fake {
        fn call(&self, c: Call) {
            let mut seen = self.seen.lock().expect("seen");
            if c == Call::Poll {
                seen.polled_at.push(Instant::now());
            }
            seen.calls.push(c);
        }
    }

    impl PlugDevice for Fake {
        type Error = FakeError;

        async fn poll(&mut self, report: &mut Report) -> Result<PlugReading, FakeError> {
            self.call(Call::Poll);
            if let Some(e) = self.poll_errors.pop_front() {
                return Err(e);
            }
            report
                .identified(Identity {
                    model: Some("fake".into()),
                    ..Identity::default()
                })
                .await;
            self.known = Some(self.relay);
            Ok(PlugReading {
                on: self.relay,
                ..PlugReading::default()
            })
        }

        fn last_on(&self) -> Option<bool> {
            self.known
        }

        async fn read_on(&mut self) -> Result<bool, FakeError> {
            self.call(Call::ReadOn);
            Ok(self.relay)
        }

        async fn set_on(&mut self, on: bool) -> Result<(), FakeError> {
            self.call(Call::SetOn(on));
            match self.refuse_switch {
                Some(message) => Err(FakeError {
                    message,
                    kind: Failure::Transient,
                }),
                None => {
                    self.relay = on;
                    Ok(())
                }
            }
        }

        fn failure(&mut self, e: &FakeError) -> Failure {
            e.kind
        }
    }

    struct Running {
        commands: Option<inbox::CommandSender>,
        events: mpsc::Receiver<DriverEvent>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        seen: Arc<Mutex<Seen>>,
    }

    fn start(fake: Fake, polling: Polling) -> Running {
        let seen = fake.seen.clone();
        let (tx, rx) = mpsc::channel(64);
        let (commands, inbox) = inbox::channel();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run("p1", fake, polling, tx, inbox, shutdown.clone()));
        Running {
            commands: Some(commands),
            events: rx,
            shutdown,
            task,
            seen,
        }
    }

    fn polling(interval: Duration) -> Polling {
        Polling {
            interval,
            unavailable_after: 2,
            backoff_max: 60 * interval,
        }
    }

    impl Running {
        fn send(&self, c: DeviceCommand) {
            self.commands
                .as_ref()
                .expect("sender")
                .send(c)
                .expect("task runs");
        }

        /// Events up to and including the next `Readings`.
        async fn until_readings(&mut self) -> Vec<DriverEvent> {
            let mut got = Vec::new();
            loop {
                let ev = tokio::time::timeout(Duration::from_secs(5), self.events.recv())
                    .await
                    .expect("an event in time")
                    .expect("the task is running");
                let done = matches!(ev, DriverEvent::Readings { .. });
                got.push(ev);
                if done {
                    return got;
                }
            }
        }

        /// Ends the task by dropping the bridge's end; what it did.
        async fn finish(mut self) -> (Vec<Call>, Vec<Instant>, Vec<DriverEvent>) {
            drop(self.commands.take());
            tokio::time::timeout(Duration::from_secs(5), self.task)
                .await
                .expect("the task ends with the sender")
                .expect("no panic");
            let mut rest = Vec::new();
            while let Ok(ev) = self.events.try_recv() {
                rest.push(ev);
            }
            let seen = std::mem::take(&mut *self.seen.lock().expect("seen"));
            (seen.calls, seen.polled_at, rest)
        }
    }

    fn online(online: bool) -> DriverEvent {
        DriverEvent::Availability {
            device: "p1".into(),
            online,
        }
    }

    fn readings(on: bool) -> DriverEvent {
        DriverEvent::Readings {
            device: "p1".into(),
            reading: Reading::Plug(PlugReading {
                on,
                ..PlugReading::default()
            }),
        }
    }

    fn identity() -> DriverEvent {
        DriverEvent::Identity {
            device: "p1".into(),
            info: Identity {
                model: Some("fake".into()),
                ..Identity::default()
            },
        }
    }

    #[tokio::test]
    async fn a_switch_is_read_back_at_once_and_the_identity_sent_once() {
        let mut plug = start(Fake::default(), polling(NEVER));
        assert_eq!(
            plug.until_readings().await,
            [identity(), online(true), readings(false)]
        );
        plug.send(DeviceCommand::Switch(SwitchState::On));
        assert_eq!(plug.until_readings().await, [readings(true)]);
        // The state the last poll saw is toggled, without asking again.
        plug.send(DeviceCommand::Switch(SwitchState::Toggle));
        assert_eq!(plug.until_readings().await, [readings(false)]);
        plug.send(DeviceCommand::Refresh);
        assert_eq!(plug.until_readings().await, [readings(false)]);
        let (calls, _, rest) = plug.finish().await;
        use Call::*;
        assert_eq!(
            calls,
            [Poll, SetOn(true), Poll, SetOn(false), Poll, Poll],
            "one read-back per command, nothing from the timer"
        );
        assert_eq!(rest, []);
    }

    #[tokio::test]
    async fn a_refused_switch_is_reported_read_back_and_not_counted_as_a_failed_poll() {
        let fake = Fake {
            refuse_switch: Some("relay stuck"),
            ..Fake::default()
        };
        let mut plug = start(
            fake,
            Polling {
                unavailable_after: 1,
                ..polling(NEVER)
            },
        );
        plug.until_readings().await;
        plug.send(DeviceCommand::Switch(SwitchState::On));
        assert_eq!(
            plug.until_readings().await,
            [
                DriverEvent::CommandFailed {
                    device: "p1".into(),
                    reason: "switching failed: relay stuck".into(),
                },
                readings(false),
            ]
        );
        let (calls, _, rest) = plug.finish().await;
        assert_eq!(calls, [Call::Poll, Call::SetOn(true), Call::Poll]);
        assert_eq!(rest, [], "still online, no problem");
    }

    #[tokio::test]
    async fn commands_that_wait_are_merged_into_the_latest() {
        let plug = start(Fake::default(), polling(NEVER));
        plug.send(DeviceCommand::Switch(SwitchState::On));
        plug.send(DeviceCommand::Switch(SwitchState::Off));
        plug.send(DeviceCommand::Switch(SwitchState::Toggle));
        let (calls, _, events) = plug.finish().await;
        let switched: Vec<_> = calls.iter().filter(|c| **c != Call::Poll).collect();
        // Off then toggle is on, whether the first poll came first or not.
        assert_eq!(switched, [&Call::SetOn(true)]);
        assert_eq!(events.last(), Some(&readings(true)));
    }

    #[tokio::test]
    async fn a_toggle_before_any_poll_asks_the_plug() {
        let mut fake = Fake {
            relay: true,
            ..Fake::default()
        };
        switch(&mut fake, SwitchState::Toggle)
            .await
            .expect("switched");
        assert_eq!(
            fake.seen.lock().expect("seen").calls,
            [Call::ReadOn, Call::SetOn(false)]
        );
        assert!(!fake.relay);
    }

    #[tokio::test]
    async fn failures_go_offline_after_n_back_off_and_report_a_problem_once() {
        let transient = || FakeError {
            message: "timed out",
            kind: Failure::Transient,
        };
        let wrong = || FakeError {
            message: "wrong password",
            kind: Failure::NeedsUser {
                offline_for: Some(15 * MS),
            },
        };
        let fake = Fake {
            poll_errors: VecDeque::from([transient(), transient(), transient(), wrong(), wrong()]),
            ..Fake::default()
        };
        let mut plug = start(
            fake,
            Polling {
                interval: 10 * MS,
                unavailable_after: 2,
                backoff_max: 40 * MS,
            },
        );
        assert_eq!(
            plug.until_readings().await,
            [
                online(false),
                DriverEvent::Problem {
                    device: "p1".into(),
                    message: "wrong password".into(),
                },
                identity(),
                online(true),
                readings(false),
            ]
        );
        plug.shutdown.cancel();
        let (calls, polled_at, rest) = plug.finish().await;
        assert_eq!(calls, [Call::Poll; 6]);
        assert_eq!(rest, []);
        // Timers never fire early: each pause is at least what the health
        // said (the interval twice, the backoff doubled, then the wait for
        // the user, twice).
        let gaps: Vec<Duration> = polled_at.windows(2).map(|w| w[1] - w[0]).collect();
        let least = [10 * MS, 10 * MS, 20 * MS, 15 * MS, 15 * MS];
        assert!(
            gaps.iter().zip(least).all(|(gap, least)| *gap >= least),
            "{gaps:?} shorter than {least:?}"
        );
    }
}
