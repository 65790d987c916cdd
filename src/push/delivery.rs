//! Sending: one notification to the channels that took it, in order, with
//! each channel's answer. Owns the HTTP client and the VAPID key; shares
//! the subscription list with the HTTP interface.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::Config;
use crate::core::alerts::Level;
use crate::storage::{Store, StoreError};

use super::http::TestReply;
use super::memory;
use super::notify::{self, Kind, Notification};
use super::rules::Job;
use super::send::{self, Report};
use super::subscriptions::Subscriptions;
use super::vapid::{VapidError, VapidKey, audience_of};
use super::webpush::{self, Outcome, Urgency};
use super::{lock, ntfy, telegram};

/// How long a push service keeps a message for a phone that is offline.
const TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Vapid(#[from] VapidError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot make the HTTP client: {0}")]
    Http(String),
}

/// The wall clock through crate::clock, the one place that reads it.
fn now_unix() -> i64 {
    i64::try_from(crate::clock::now().0 / 1000).unwrap_or(i64::MAX)
}

/// Sends; owns the HTTP client and the key, shares the subscription list
/// with the HTTP interface.
pub struct Delivery {
    pub config: Config,
    http: reqwest::Client,
    pub vapid: VapidKey,
    pub subs: Arc<Mutex<Subscriptions>>,
    /// Rejections (400/401/403) already explained, so each is logged once.
    told: BTreeSet<String>,
}

impl Delivery {
    pub fn new(config: Config) -> Result<Self, DeliveryError> {
        let vapid = VapidKey::load_or_generate(
            config.push.vapid_private_key_file.as_deref(),
            &config.storage.dir,
        )?;
        let subs = Subscriptions::load(Store::new(&config.storage.dir))?;
        let http = crate::https::client_builder()
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| DeliveryError::Http(e.to_string()))?;
        Ok(Self {
            config,
            http,
            vapid,
            subs: Arc::new(Mutex::new(subs)),
            told: BTreeSet::new(),
        })
    }

    /// Every channel, for `test`.
    pub fn all(&self, n: Notification) -> Job {
        Job {
            n,
            webpush: true,
            ntfy: (0..self.config.push.ntfy.len()).collect(),
            telegram: (0..self.config.push.telegram.len()).collect(),
        }
    }

    /// Sends `job`; per channel what happened.
    pub async fn deliver(&mut self, job: &Job) -> Vec<Report> {
        let n = &job.n;
        let mut report = Vec::new();
        if job.webpush {
            report.extend(self.webpush(n).await);
        }
        for &i in &job.ntfy {
            let Some(ch) = self.config.push.ntfy.get(i) else {
                continue;
            };
            let name = memory::ntfy_name(ch);
            let r = send::ntfy(&self.http, &ntfy::request(ch, n), send::Retry::DEFAULT).await;
            report.push(plain(name, &r));
        }
        for &i in &job.telegram {
            let Some(ch) = self.config.push.telegram.get(i) else {
                continue;
            };
            // The bot token is a secret: the channel is named by its chats.
            let name = memory::telegram_name(ch);
            let reqs = telegram::requests(ch, n);
            let r = send::telegram(&self.http, &reqs, send::Retry::DEFAULT).await;
            report.push(plain(name, &r));
        }
        for r in &report {
            tracing::info!(channel = %r.channel, tag = %n.tag, result = %r.result, "notification");
        }
        report
    }

    async fn push_one(
        &self,
        sub: &webpush::Subscription,
        payload: &[u8],
        urgency: Urgency,
        subject: Option<&str>,
        topic: Option<&str>,
    ) -> Outcome {
        let req = sub
            .target()
            .map_err(webpush::PushBuildError::from)
            .and_then(|t| {
                webpush::request_parts(
                    &t,
                    &self.vapid,
                    subject,
                    payload,
                    TTL,
                    urgency,
                    topic,
                    u64::try_from(now_unix()).unwrap_or(0),
                )
            });
        match req {
            Ok(req) => send::webpush(&self.http, &req, now_unix).await,
            Err(e) => Outcome::Rejected(e.to_string()),
        }
    }

    async fn webpush(&mut self, n: &Notification) -> Vec<Report> {
        let payload = n.payload(notify::MAX_PAYLOAD);
        let urgency = Urgency::for_level(n.level);
        let subject = self.config.push.vapid_subject.clone();
        let topic = webpush::is_topic(&n.tag).then_some(n.tag.as_str());
        let mut out = Vec::new();
        let list = lock(&self.subs).list().to_vec();
        for sub in list {
            let name = format!("webpush {}", audience_of(&sub.endpoint));
            let mut outcome = self
                .push_one(&sub, &payload, urgency, subject.as_deref(), topic)
                .await;
            if outcome == Outcome::TooLarge {
                // A service with a smaller limit than 4 KB: try once more
                // with half the room (the body is cut, the title stays).
                let shorter = n.payload(notify::MAX_PAYLOAD / 2);
                outcome = self
                    .push_one(&sub, &shorter, urgency, subject.as_deref(), topic)
                    .await;
            }
            match &outcome {
                Outcome::Gone => match lock(&self.subs).remove(&sub.endpoint) {
                    Ok(_) => {
                        tracing::info!(channel = %name, "subscription gone (404/410): deleted")
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot save the subscriptions"),
                },
                Outcome::Rejected(fix) if self.told.insert(fix.clone()) => {
                    tracing::warn!(channel = %name, "{fix}");
                }
                _ => {}
            }
            out.push(Report {
                channel: name,
                ok: outcome == Outcome::Delivered,
                result: format!("{outcome:?}"),
            });
        }
        out
    }
}

fn plain(channel: String, r: &send::Plain) -> Report {
    Report {
        channel,
        ok: *r == send::Plain::Ok,
        result: format!("{r:?}"),
    }
}

/// The notification `test` and `POST /api/test` send.
pub fn test_notification(link: Option<&str>, time: String) -> Notification {
    Notification {
        kind: Kind::Raise,
        title: "energy2mqtt test".into(),
        body: "If you read this, notifications reach you.".into(),
        level: Level::Warning,
        tag: "e2m-test".into(),
        time,
        link: link.map(str::to_owned),
        repeat: false,
    }
}

/// What the delivery task is asked to do, in order.
pub enum Work {
    Job(Job),
    Test(TestReply),
}
