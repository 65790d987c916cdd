//! Who gets a message: the sessions, their subscriptions and the retained
//! messages. Every method takes the lock briefly and never awaits under
//! it; the waiting for room happens afterwards, in the publisher's task.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use rumqttc::{Publish, QoS, SubscribeFilter, SubscribeReasonCode};
use tokio_util::sync::CancellationToken;

use super::outbound::Outbound;
use super::topic;

/// A connection of a session, so that a connection that was taken over
/// cannot end the session of the one that took it.
pub type ConnectionId = u64;

struct Session {
    outbound: Arc<Outbound>,
    clean: bool,
    /// The connection holding it now and how to close that one.
    owner: Option<(ConnectionId, CancellationToken)>,
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

fn min_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) < (b as u8) { a } else { b }
}

impl Router {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A CONNECT was accepted: the session to use, whether it existed, and
    /// the token of a connection it was taken from (to close it).
    pub fn connect(
        &self,
        client: &Arc<str>,
        clean: bool,
        id: ConnectionId,
        kick: CancellationToken,
    ) -> (Arc<Outbound>, bool, Option<CancellationToken>) {
        let mut st = self.lock();
        let mut previous = None;
        let mut present = false;
        if let Some(s) = st.sessions.get_mut(client) {
            previous = s.owner.take().map(|(_, token)| token);
            if clean || s.clean {
                st.remove_session(client);
            } else {
                present = true;
            }
        }
        let s = st
            .sessions
            .entry(client.clone())
            .or_insert_with(|| Session {
                outbound: Arc::new(Outbound::default()),
                clean,
                owner: None,
                filters: BTreeMap::new(),
            });
        s.clean = clean;
        s.owner = Some((id, kick));
        s.outbound.set_owner(Some(id));
        (s.outbound.clone(), present, previous)
    }

    /// The connection `id` ended: a clean session goes, a persistent one
    /// stays (with its subscriptions and QoS 1 queue) for the next one.
    pub fn disconnected(&self, client: &Arc<str>, id: ConnectionId) {
        let mut st = self.lock();
        let Some(s) = st.sessions.get_mut(client) else {
            return;
        };
        if s.owner.as_ref().map(|(o, _)| *o) != Some(id) {
            return; // taken over meanwhile
        }
        s.owner = None;
        s.outbound.set_owner(None);
        if s.clean {
            st.remove_session(client);
        }
    }

    /// Adds the subscriptions; returns the SUBACK codes and the retained
    /// messages the new filters match (with the QoS each may be sent at).
    pub fn subscribe(
        &self,
        client: &Arc<str>,
        filters: &[SubscribeFilter],
    ) -> (Vec<SubscribeReasonCode>, Vec<Publish>) {
        let mut st = self.lock();
        let mut codes = Vec::with_capacity(filters.len());
        let mut retained = Vec::new();
        for f in filters {
            if !topic::valid_filter(&f.path) {
                codes.push(SubscribeReasonCode::Failure);
                continue;
            }
            // We deliver at most QoS 1 (allowed: the broker grants less).
            let granted = min_qos(f.qos, QoS::AtLeastOnce);
            let Some(s) = st.sessions.get_mut(client) else {
                codes.push(SubscribeReasonCode::Failure);
                continue;
            };
            if s.filters.insert(f.path.clone(), granted).is_some() {
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
            // Retained messages are sent for every SUBSCRIBE, also a repeat.
            let matching = st
                .retained
                .values()
                .filter(|p| topic::matches(&f.path, &p.topic));
            for p in matching {
                let mut out = p.clone();
                out.qos = min_qos(p.qos, granted);
                out.retain = true;
                out.dup = false;
                retained.push(out);
            }
        }
        (codes, retained)
    }

    pub fn unsubscribe(&self, client: &Arc<str>, filters: &[String]) {
        let mut st = self.lock();
        for f in filters {
            let removed = st
                .sessions
                .get_mut(client)
                .is_some_and(|s| s.filters.remove(f).is_some());
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
            if publish.payload.is_empty() {
                st.retained.remove(&publish.topic);
            } else {
                let mut kept = publish.clone();
                kept.pkid = 0;
                kept.dup = false;
                st.retained.insert(publish.topic.clone(), kept);
            }
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
}

impl State {
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

    fn sub(path: &str, qos: QoS) -> SubscribeFilter {
        SubscribeFilter::new(path.to_owned(), qos)
    }

    fn connect(r: &Router, id: &str, clean: bool, conn: ConnectionId) -> (Arc<str>, bool) {
        let client: Arc<str> = id.into();
        let (_, present, _) = r.connect(&client, clean, conn, CancellationToken::new());
        (client, present)
    }

    #[test]
    fn each_session_gets_a_message_once_at_its_best_matching_qos() {
        let r = Router::default();
        let (a, _) = connect(&r, "a", true, 1);
        let (b, _) = connect(&r, "b", true, 2);
        let (codes, _) = r.subscribe(
            &a,
            &[
                sub("x/#", QoS::AtMostOnce),
                sub("x/y", QoS::ExactlyOnce),
                sub("x/#/z", QoS::AtMostOnce),
            ],
        );
        assert_eq!(
            codes,
            vec![
                SubscribeReasonCode::Success(QoS::AtMostOnce),
                SubscribeReasonCode::Success(QoS::AtLeastOnce),
                SubscribeReasonCode::Failure
            ]
        );
        r.subscribe(&b, &[sub("+/y", QoS::AtMostOnce)]);
        let targets = r.route(&Publish::new("x/y", QoS::AtLeastOnce, "p"));
        let got: Vec<(&str, QoS)> = targets.iter().map(|t| (&*t.client, t.qos)).collect();
        assert_eq!(got, vec![("a", QoS::AtLeastOnce), ("b", QoS::AtMostOnce)]);
        assert!(r.route(&Publish::new("q", QoS::AtMostOnce, "p")).is_empty());
        r.unsubscribe(&a, &["x/y".into(), "x/#".into()]);
        let targets = r.route(&Publish::new("x/y", QoS::AtLeastOnce, "p"));
        assert_eq!(targets.len(), 1);
        assert_eq!(&*targets[0].client, "b");
    }

    #[test]
    fn retained_messages_are_kept_cleared_and_sent_to_new_subscriptions() {
        let r = Router::default();
        let mut kept = Publish::new("h/a/config", QoS::AtLeastOnce, "A");
        kept.retain = true;
        r.route(&kept);
        kept.topic = "h/b/config".into();
        r.route(&kept);
        let mut cleared = Publish::new("h/b/config", QoS::AtMostOnce, "");
        cleared.retain = true;
        r.route(&cleared);
        assert_eq!(r.retained_count(), 1);
        let (c, _) = connect(&r, "c", true, 1);
        let (_, retained) = r.subscribe(&c, &[sub("h/+/config", QoS::AtMostOnce)]);
        assert_eq!(retained.len(), 1);
        assert_eq!(retained[0].topic, "h/a/config");
        assert!(retained[0].retain);
        assert_eq!(retained[0].qos, QoS::AtMostOnce);
    }

    #[test]
    fn persistent_sessions_survive_their_connection_and_clean_ones_do_not() {
        let r = Router::default();
        let (p, present) = connect(&r, "p", false, 1);
        assert!(!present);
        r.subscribe(&p, &[sub("cmd/#", QoS::AtLeastOnce)]);
        let (c, _) = connect(&r, "c", true, 2);
        r.subscribe(&c, &[sub("cmd/#", QoS::AtLeastOnce)]);
        r.disconnected(&p, 1);
        r.disconnected(&c, 2);
        let targets = r.route(&Publish::new("cmd/x", QoS::AtLeastOnce, "p"));
        assert_eq!(targets.len(), 1, "only the persistent session is left");
        assert_eq!(&*targets[0].client, "p");
        let (_, present) = connect(&r, "p", false, 3);
        assert!(present);
        // A late end of a connection that was taken over changes nothing.
        r.disconnected(&p, 1);
        assert_eq!(
            r.route(&Publish::new("cmd/x", QoS::AtLeastOnce, "p")).len(),
            1
        );
        // A clean connect throws the old session away.
        let (_, present) = connect(&r, "p", true, 4);
        assert!(!present);
        assert!(
            r.route(&Publish::new("cmd/x", QoS::AtLeastOnce, "p"))
                .is_empty()
        );
    }

    #[test]
    fn a_takeover_hands_back_the_previous_connection_to_close() {
        let r = Router::default();
        let client: Arc<str> = "dup".into();
        let first = CancellationToken::new();
        r.connect(&client, false, 1, first.clone());
        let (_, present, previous) = r.connect(&client, false, 2, CancellationToken::new());
        assert!(present);
        previous.expect("the first connection's token").cancel();
        assert!(first.is_cancelled());
    }
}
