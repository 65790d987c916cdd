//! Who gets a message: the sessions, their subscriptions, their Last
//! Wills and the retained messages. Every method takes the lock briefly
//! and never awaits under it; waiting for room in a live subscriber's
//! queue happens afterwards, in the publisher's task.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rumqttc::{Packet, Publish, QoS, SubAck, SubscribeFilter, SubscribeReasonCode};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::outbound::Outbound;
use super::topic;

/// A connection of a session, so that a connection that was taken over
/// cannot end the session of the one that took it.
pub type ConnectionId = u64;

/// Filters one session may hold; a SUBSCRIBE beyond gets "failure" for
/// the rest. Home Assistant subscribes once per MQTT entity, so this is
/// far above any household and only stops a client adding without end.
pub const MAX_FILTERS: usize = 10_000;
/// Retained topics kept, and their bytes; a new retained topic beyond is
/// still delivered, just not kept (updates of kept ones always are).
pub const MAX_RETAINED: usize = 20_000;
pub const MAX_RETAINED_BYTES: usize = 32 * 1024 * 1024;
/// Persistent sessions kept while nobody is connected to them, and for
/// how long: each may hold up to a queue of QoS 1 messages. Beyond the
/// count, the one offline longest goes.
pub const MAX_OFFLINE_SESSIONS: usize = 32;
pub const OFFLINE_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

struct Owner {
    id: ConnectionId,
    /// Closes that connection (a takeover).
    kick: CancellationToken,
    will: Option<Publish>,
}

struct Session {
    outbound: Arc<Outbound>,
    clean: bool,
    /// The connection holding it now.
    owner: Option<Owner>,
    offline_since: Option<Instant>,
    filters: BTreeMap<String, QoS>,
}

#[derive(Default)]
struct State {
    sessions: HashMap<Arc<str>, Session>,
    /// Filters without wildcards: looked up by the topic itself.
    exact: HashMap<String, Vec<(Arc<str>, QoS)>>,
    /// Filters with wildcards: matched one by one.
    wild: Vec<(String, Arc<str>, QoS)>,
    retained: BTreeMap<String, Publish>,
    retained_bytes: usize,
    retained_full_reported: bool,
}

#[derive(Default)]
pub struct Router {
    state: Mutex<State>,
}

/// A message to hand to one session, at the QoS it gets.
pub struct Target {
    pub outbound: Arc<Outbound>,
    pub client: Arc<str>,
    pub qos: QoS,
}

/// What [`Router::connect`] hands the new connection.
pub struct Connected {
    pub outbound: Arc<Outbound>,
    /// Whether a persistent session was resumed (CONNACK's flag).
    pub session_present: bool,
    /// The Last Will of a connection this one took over: published by the
    /// new connection before its CONNACK, so that it cannot land after
    /// what the new connection publishes (an "offline" after "online").
    pub taken_over_will: Option<Publish>,
}

/// The subscriber left too many replies unread (it is disconnected).
#[derive(Debug)]
pub struct NotReading;

fn min_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) < (b as u8) { a } else { b }
}

fn retained_cost(p: &Publish) -> usize {
    p.topic.len() + p.payload.len() + 64
}

impl Router {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A CONNECT was accepted: the session to use. A connection holding
    /// the session already is closed (its kick token cancelled).
    pub fn connect(
        &self,
        client: &Arc<str>,
        clean: bool,
        id: ConnectionId,
        kick: CancellationToken,
        will: Option<Publish>,
    ) -> Connected {
        let mut st = self.lock();
        st.expire_offline(Instant::now());
        let mut session_present = false;
        let mut taken_over_will = None;
        if let Some(s) = st.sessions.get_mut(client) {
            if let Some(previous) = s.owner.take() {
                previous.kick.cancel();
                taken_over_will = previous.will;
            }
            if clean || s.clean {
                st.remove_session(client);
            } else {
                session_present = true;
            }
        }
        let s = st
            .sessions
            .entry(client.clone())
            .or_insert_with(|| Session {
                outbound: Arc::new(Outbound::default()),
                clean,
                owner: None,
                offline_since: None,
                filters: BTreeMap::new(),
            });
        s.clean = clean;
        s.owner = Some(Owner { id, kick, will });
        s.offline_since = None;
        s.outbound.set_owner(Some(id));
        Connected {
            outbound: s.outbound.clone(),
            session_present,
            taken_over_will,
        }
    }

    /// The connection `id` ended: a clean session goes, a persistent one
    /// stays (with its subscriptions and QoS 1 queue) for the next one.
    /// Returns its Last Will unless it said DISCONNECT (`graceful`) or
    /// was taken over (the new connection has the will then).
    pub fn disconnected(
        &self,
        client: &Arc<str>,
        id: ConnectionId,
        graceful: bool,
    ) -> Option<Publish> {
        let mut st = self.lock();
        let s = st.sessions.get_mut(client)?;
        if s.owner.as_ref().map(|o| o.id) != Some(id) {
            return None; // taken over meanwhile
        }
        let will = s.owner.take().and_then(|o| o.will);
        s.outbound.set_owner(None);
        if s.clean {
            st.remove_session(client);
        } else {
            s.offline_since = Some(Instant::now());
            st.expire_offline(Instant::now());
        }
        will.filter(|_| !graceful)
    }

    /// Adds the subscriptions of connection `id` and queues, in this
    /// order, the SUBACK and the retained messages the filters match (at
    /// the QoS each may be sent at). Both happen under the lock, so a
    /// live message routed after cannot arrive before a stale retained
    /// copy of its topic.
    pub fn subscribe(
        &self,
        client: &Arc<str>,
        id: ConnectionId,
        pkid: u16,
        filters: &[SubscribeFilter],
    ) -> Result<(), NotReading> {
        let mut st = self.lock();
        let Some(s) = st.sessions.get(client) else {
            return Ok(());
        };
        let outbound = s.outbound.clone();
        if s.owner.as_ref().map(|o| o.id) != Some(id) {
            return Ok(()); // taken over: this connection is being closed
        }
        let mut codes = Vec::with_capacity(filters.len());
        let mut granted_filters = Vec::with_capacity(filters.len());
        for f in filters {
            let Some(s) = st.sessions.get_mut(client) else {
                break;
            };
            let replaces = s.filters.contains_key(&f.path);
            if !topic::valid_filter(&f.path) || (!replaces && s.filters.len() >= MAX_FILTERS) {
                codes.push(SubscribeReasonCode::Failure);
                continue;
            }
            // We deliver at most QoS 1 (allowed: the broker grants less).
            let granted = min_qos(f.qos, QoS::AtLeastOnce);
            s.filters.insert(f.path.clone(), granted);
            if replaces {
                st.unindex(&f.path, client);
            }
            if topic::is_wildcard(&f.path) {
                st.wild.push((f.path.clone(), client.clone(), granted));
            } else {
                st.exact
                    .entry(f.path.clone())
                    .or_default()
                    .push((client.clone(), granted));
            }
            codes.push(SubscribeReasonCode::Success(granted));
            granted_filters.push((f.path.as_str(), granted));
        }
        if !outbound.reply(id, Packet::SubAck(SubAck::new(pkid, codes))) {
            return Err(NotReading);
        }
        // Retained messages are sent for every SUBSCRIBE, also a repeat.
        for (filter, granted) in granted_filters {
            // Home Assistant subscribes once per entity, to exact topics:
            // those are looked up, not matched against every retained one.
            let exact = (!topic::is_wildcard(filter))
                .then(|| st.retained.get(filter))
                .flatten();
            let wild = topic::is_wildcard(filter)
                .then(|| {
                    st.retained
                        .values()
                        .filter(|p| topic::matches(filter, &p.topic))
                })
                .into_iter()
                .flatten();
            for p in exact.into_iter().chain(wild) {
                let mut out = p.clone();
                out.qos = min_qos(p.qos, granted);
                out.retain = true;
                out.dup = false;
                outbound.queue_now(out);
            }
        }
        Ok(())
    }

    /// Removes filters of connection `id` (ignored once taken over).
    pub fn unsubscribe(&self, client: &Arc<str>, id: ConnectionId, filters: &[String]) {
        let mut st = self.lock();
        for f in filters {
            let removed = st.sessions.get_mut(client).is_some_and(|s| {
                s.owner.as_ref().map(|o| o.id) == Some(id) && s.filters.remove(f).is_some()
            });
            if removed {
                st.unindex(f, client);
            }
        }
    }

    /// Keeps or clears a retained message and returns the sessions that
    /// get it (one entry per session, at the highest QoS of its matching
    /// filters, never above the message's).
    pub fn route(&self, publish: &Publish) -> Vec<Target> {
        let mut st = self.lock();
        if publish.retain {
            st.retain(publish);
        }
        let mut targets: Vec<Target> = Vec::new();
        let st = &*st;
        let exact = st.exact.get(&publish.topic).into_iter().flatten();
        let wild = st
            .wild
            .iter()
            .filter(|(f, _, _)| topic::matches(f, &publish.topic))
            .map(|(_, c, q)| (c, q));
        for (client, granted) in exact.map(|(c, q)| (c, q)).chain(wild) {
            let qos = min_qos(publish.qos, *granted);
            if let Some(t) = targets.iter_mut().find(|t| *t.client == **client) {
                if (qos as u8) > (t.qos as u8) {
                    t.qos = qos;
                }
                continue;
            }
            let Some(s) = st.sessions.get(client) else {
                continue;
            };
            targets.push(Target {
                outbound: s.outbound.clone(),
                client: client.clone(),
                qos,
            });
        }
        targets
    }

    /// Retained messages kept.
    #[cfg(test)]
    pub fn retained_count(&self) -> usize {
        self.lock().retained.len()
    }

    /// Sessions kept, connected or not.
    #[cfg(test)]
    pub fn session_count(&self) -> usize {
        self.lock().sessions.len()
    }
}

impl State {
    fn retain(&mut self, publish: &Publish) {
        let old = self.retained.remove(&publish.topic);
        if let Some(old) = &old {
            self.retained_bytes -= retained_cost(old);
        }
        if publish.payload.is_empty() {
            return;
        }
        let cost = retained_cost(publish);
        let room = self.retained_bytes + cost <= MAX_RETAINED_BYTES
            && (old.is_some() || self.retained.len() < MAX_RETAINED);
        if !room {
            if !self.retained_full_reported {
                tracing::warn!(
                    topic = %publish.topic,
                    "embedded broker: the retained store is full, a retained message is delivered but not kept"
                );
                self.retained_full_reported = true;
            }
            return;
        }
        let mut kept = publish.clone();
        kept.pkid = 0;
        kept.dup = false;
        self.retained_bytes += cost;
        self.retained.insert(publish.topic.clone(), kept);
    }

    /// Drops persistent sessions offline past [`OFFLINE_EXPIRY`], then the
    /// longest offline ones beyond [`MAX_OFFLINE_SESSIONS`].
    fn expire_offline(&mut self, now: Instant) {
        let mut offline: Vec<(Instant, Arc<str>)> = self
            .sessions
            .iter()
            .filter_map(|(c, s)| s.offline_since.map(|t| (t, c.clone())))
            .collect();
        offline.sort();
        let excess = offline.len().saturating_sub(MAX_OFFLINE_SESSIONS);
        for (i, (since, client)) in offline.iter().enumerate() {
            if i < excess || now.duration_since(*since) >= OFFLINE_EXPIRY {
                tracing::debug!(client = %client, "embedded broker: offline session dropped");
                self.remove_session(client);
            }
        }
    }

    fn remove_session(&mut self, client: &Arc<str>) {
        if let Some(s) = self.sessions.remove(client) {
            s.outbound.set_owner(None);
            for f in s.filters.keys() {
                self.unindex(f, client);
            }
        }
    }

    fn unindex(&mut self, filter: &str, client: &Arc<str>) {
        if topic::is_wildcard(filter) {
            self.wild
                .retain(|(f, c, _)| !(f == filter && **c == **client));
        } else if let Some(list) = self.exact.get_mut(filter) {
            list.retain(|(c, _)| **c != **client);
            if list.is_empty() {
                self.exact.remove(filter);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn sub(path: &str, qos: QoS) -> SubscribeFilter {
        SubscribeFilter::new(path.to_owned(), qos)
    }

    fn connect(r: &Router, id: &str, clean: bool, conn: ConnectionId) -> (Arc<str>, Connected) {
        let client: Arc<str> = id.into();
        let c = r.connect(&client, clean, conn, CancellationToken::new(), None);
        (client, c)
    }

    /// What the session's writer would send now.
    fn sent(c: &Connected, conn: ConnectionId) -> Vec<Packet> {
        let mut buf = BytesMut::new();
        c.outbound.encode(conn, &mut buf);
        let mut out = Vec::new();
        while !buf.is_empty() {
            out.push(Packet::read(&mut buf, usize::MAX).expect("we encoded it"));
        }
        out
    }

    fn retained(topic: &str, payload: &str) -> Publish {
        let mut p = Publish::new(topic, QoS::AtLeastOnce, payload.to_owned());
        p.retain = true;
        p
    }

    #[test]
    fn each_session_gets_a_message_once_at_its_best_matching_qos() {
        let r = Router::default();
        let (a, ca) = connect(&r, "a", true, 1);
        let (b, _) = connect(&r, "b", true, 2);
        let filters = [
            sub("x/#", QoS::AtMostOnce),
            sub("x/y", QoS::ExactlyOnce),
            sub("x/#/z", QoS::AtMostOnce),
        ];
        r.subscribe(&a, 1, 7, &filters).expect("reading");
        let Packet::SubAck(ack) = &sent(&ca, 1)[0] else {
            panic!("a SUBACK first");
        };
        assert_eq!(ack.pkid, 7);
        assert_eq!(
            ack.return_codes,
            vec![
                SubscribeReasonCode::Success(QoS::AtMostOnce),
                SubscribeReasonCode::Success(QoS::AtLeastOnce),
                SubscribeReasonCode::Failure
            ]
        );
        r.subscribe(&b, 2, 1, &[sub("+/y", QoS::AtMostOnce)])
            .expect("reading");
        let targets = r.route(&Publish::new("x/y", QoS::AtLeastOnce, "p"));
        let got: Vec<(&str, QoS)> = targets.iter().map(|t| (&*t.client, t.qos)).collect();
        assert_eq!(got, vec![("a", QoS::AtLeastOnce), ("b", QoS::AtMostOnce)]);
        assert!(r.route(&Publish::new("q", QoS::AtMostOnce, "p")).is_empty());
        r.unsubscribe(&a, 1, &["x/y".into(), "x/#".into()]);
        let targets = r.route(&Publish::new("x/y", QoS::AtLeastOnce, "p"));
        assert_eq!(targets.len(), 1);
        assert_eq!(&*targets[0].client, "b");
    }

    #[test]
    fn retained_messages_are_kept_cleared_and_queued_after_the_suback() {
        let r = Router::default();
        r.route(&retained("h/a/config", "A"));
        r.route(&retained("h/b/config", "B"));
        r.route(&retained("h/b/config", ""));
        assert_eq!(r.retained_count(), 1);
        let (c, conn) = connect(&r, "c", true, 1);
        r.subscribe(&c, 1, 1, &[sub("h/+/config", QoS::AtMostOnce)])
            .expect("reading");
        let out = sent(&conn, 1);
        assert!(matches!(out[0], Packet::SubAck(_)), "{out:?}");
        let Packet::Publish(p) = &out[1] else {
            panic!("{out:?}");
        };
        assert_eq!(out.len(), 2);
        assert_eq!(p.topic, "h/a/config");
        assert!(p.retain);
        assert_eq!(p.qos, QoS::AtMostOnce);
    }

    #[test]
    fn the_retained_store_and_the_filters_of_a_session_are_capped() {
        let r = Router::default();
        for i in 0..MAX_RETAINED {
            r.route(&retained(&format!("r/{i}"), "x"));
        }
        r.route(&retained("r/one-more", "x"));
        assert_eq!(r.retained_count(), MAX_RETAINED, "a new topic is not kept");
        r.route(&retained("r/0", "updated"));
        r.route(&retained("r/1", ""));
        r.route(&retained("r/one-more", "x"));
        assert_eq!(r.retained_count(), MAX_RETAINED, "updates and clears are");
        let big = "x".repeat(MAX_RETAINED_BYTES);
        r.route(&retained("r/big", &big));
        assert_eq!(r.retained_count(), MAX_RETAINED, "nor beyond the bytes");
        let (c, conn) = connect(&r, "c", true, 1);
        r.subscribe(&c, 1, 1, &[sub("r/0", QoS::AtMostOnce)])
            .expect("reading");
        let out = sent(&conn, 1);
        assert!(matches!(&out[1], Packet::Publish(p) if &p.payload[..] == b"updated"));

        let r = Router::default();
        let (c, conn) = connect(&r, "c", true, 1);
        let filters: Vec<_> = (0..MAX_FILTERS + 1)
            .map(|i| sub(&format!("f/{i}"), QoS::AtMostOnce))
            .collect();
        r.subscribe(&c, 1, 1, &filters).expect("reading");
        let Packet::SubAck(ack) = &sent(&conn, 1)[0] else {
            panic!("a SUBACK");
        };
        assert_eq!(
            ack.return_codes[MAX_FILTERS - 1],
            SubscribeReasonCode::Success(QoS::AtMostOnce)
        );
        assert_eq!(ack.return_codes[MAX_FILTERS], SubscribeReasonCode::Failure);
        // Subscribing to a filter it has again still works at the cap.
        r.subscribe(&c, 1, 2, &[sub("f/0", QoS::AtLeastOnce)])
            .expect("reading");
        let Packet::SubAck(ack) = &sent(&conn, 1)[0] else {
            panic!("a SUBACK");
        };
        assert_eq!(
            ack.return_codes,
            vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );
    }

    #[test]
    fn persistent_sessions_survive_their_connection_and_clean_ones_do_not() {
        let r = Router::default();
        let (p, c) = connect(&r, "p", false, 1);
        assert!(!c.session_present);
        r.subscribe(&p, 1, 1, &[sub("cmd/#", QoS::AtLeastOnce)])
            .expect("reading");
        let (c, _) = connect(&r, "c", true, 2);
        r.subscribe(&c, 2, 1, &[sub("cmd/#", QoS::AtLeastOnce)])
            .expect("reading");
        r.disconnected(&p, 1, false);
        r.disconnected(&c, 2, true);
        let targets = r.route(&Publish::new("cmd/x", QoS::AtLeastOnce, "p"));
        assert_eq!(targets.len(), 1, "only the persistent session is left");
        assert_eq!(&*targets[0].client, "p");
        let (_, c) = connect(&r, "p", false, 3);
        assert!(c.session_present);
        // A late end of a connection that was taken over changes nothing.
        r.disconnected(&p, 1, false);
        assert_eq!(
            r.route(&Publish::new("cmd/x", QoS::AtLeastOnce, "p")).len(),
            1
        );
        // A clean connect throws the old session away.
        let (_, c) = connect(&r, "p", true, 4);
        assert!(!c.session_present);
        assert!(
            r.route(&Publish::new("cmd/x", QoS::AtLeastOnce, "p"))
                .is_empty()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn offline_sessions_expire_and_are_capped() {
        let r = Router::default();
        for i in 0..MAX_OFFLINE_SESSIONS + 3 {
            let (c, _) = connect(&r, &format!("p{i}"), false, i as u64);
            r.disconnected(&c, i as u64, true);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(r.session_count(), MAX_OFFLINE_SESSIONS);
        // The longest offline went: p0..p2; p3 is still there.
        let (_, c) = connect(&r, "p0", false, 100);
        assert!(!c.session_present);
        let (_, c) = connect(&r, "p3", false, 101);
        assert!(c.session_present);
        tokio::time::advance(OFFLINE_EXPIRY).await;
        connect(&r, "late", true, 102);
        assert_eq!(r.session_count(), 3, "only the connected ones are left");
    }

    #[test]
    fn a_takeover_closes_the_previous_connection_and_hands_over_its_will() {
        let r = Router::default();
        let client: Arc<str> = "dup".into();
        let first = CancellationToken::new();
        let will = retained("status", "offline");
        r.connect(&client, false, 1, first.clone(), Some(will.clone()));
        let c = r.connect(&client, false, 2, CancellationToken::new(), None);
        assert!(c.session_present);
        assert!(first.is_cancelled());
        assert_eq!(
            c.taken_over_will.map(|w| w.payload),
            Some(will.payload.clone())
        );
        // The first connection ends late: no will of its own, and its
        // subscribe is not taken.
        assert!(r.disconnected(&client, 1, false).is_none());
        r.subscribe(&client, 1, 1, &[sub("x", QoS::AtMostOnce)])
            .expect("ignored");
        assert!(r.route(&Publish::new("x", QoS::AtMostOnce, "p")).is_empty());
        // The will goes out on an abnormal end, not after DISCONNECT.
        let c = r.connect(&client, false, 3, CancellationToken::new(), Some(will));
        assert!(c.taken_over_will.is_none());
        assert!(r.disconnected(&client, 3, false).is_some());
        r.connect(
            &client,
            false,
            4,
            CancellationToken::new(),
            Some(retained("s", "w")),
        );
        assert!(r.disconnected(&client, 4, true).is_none());
    }
}
