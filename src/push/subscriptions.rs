//! The browsers subscribed to Web Push, kept in `[storage] dir`
//! (`push-subscriptions.json`, written atomically by crate::storage).

use crate::storage::{Store, StoreError};

use super::webpush::{Subscription, SubscriptionError};

pub const STORE_NAME: &str = "push-subscriptions";

/// At most this many browsers; a bound on what an API caller can make us
/// store and push to.
pub const MAX_SUBSCRIPTIONS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SubscriptionsError {
    #[error(transparent)]
    Invalid(#[from] SubscriptionError),
    #[error("already {MAX_SUBSCRIPTIONS} subscriptions: remove one first")]
    Full,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug)]
pub struct Subscriptions {
    store: Store,
    list: Vec<Subscription>,
}

impl Subscriptions {
    /// The saved list (empty when there is none yet).
    pub fn load(store: Store) -> Result<Self, StoreError> {
        let list = store
            .load::<Vec<Subscription>>(STORE_NAME)?
            .unwrap_or_default();
        Ok(Self { store, list })
    }

    pub fn list(&self) -> &[Subscription] {
        &self.list
    }

    /// Adds or replaces (same endpoint: the browser renewed its keys).
    /// `true` when something changed.
    pub fn add(&mut self, sub: Subscription) -> Result<bool, SubscriptionsError> {
        sub.target()?;
        if let Some(old) = self.list.iter_mut().find(|s| s.endpoint == sub.endpoint) {
            if *old == sub {
                return Ok(false);
            }
            *old = sub;
        } else {
            if self.list.len() >= MAX_SUBSCRIPTIONS {
                return Err(SubscriptionsError::Full);
            }
            self.list.push(sub);
        }
        self.store.save(STORE_NAME, &self.list)?;
        Ok(true)
    }

    /// Removes the endpoint (unsubscribed, or the push service said
    /// 404/410). `true` when it was there.
    pub fn remove(&mut self, endpoint: &str) -> Result<bool, StoreError> {
        let before = self.list.len();
        self.list.retain(|s| s.endpoint != endpoint);
        if self.list.len() == before {
            return Ok(false);
        }
        self.store.save(STORE_NAME, &self.list)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::webpush::Keys;

    fn sub(endpoint: &str, auth: &str) -> Subscription {
        Subscription {
            endpoint: endpoint.into(),
            keys: Keys {
                p256dh: "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4".into(),
                auth: auth.into(),
            },
        }
    }

    #[test]
    fn add_replace_remove_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Subscriptions::load(Store::new(dir.path())).unwrap();
        assert!(s.list().is_empty());
        let a = sub("https://push.example/a", "BTBZMqHH6r4Tts7J_aSIgg");
        assert!(s.add(a.clone()).unwrap());
        assert!(!s.add(a.clone()).unwrap());
        let a2 = sub("https://push.example/a", "AAAAAAAAAAAAAAAAAAAAAA");
        assert!(s.add(a2.clone()).unwrap());
        assert!(
            s.add(sub("http://127.0.0.1:9/b", "BTBZMqHH6r4Tts7J_aSIgg"))
                .unwrap()
        );
        assert!(matches!(
            s.add(sub("http://push.example/c", "BTBZMqHH6r4Tts7J_aSIgg")),
            Err(SubscriptionsError::Invalid(SubscriptionError::Insecure(_)))
        ));
        let again = Subscriptions::load(Store::new(dir.path())).unwrap();
        assert_eq!(again.list().len(), 2);
        assert_eq!(again.list()[0], a2);
        assert!(s.remove("http://127.0.0.1:9/b").unwrap());
        assert!(!s.remove("http://127.0.0.1:9/b").unwrap());
        let again = Subscriptions::load(Store::new(dir.path())).unwrap();
        assert_eq!(again.list(), &[a2]);
    }

    #[test]
    fn the_list_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Subscriptions::load(Store::new(dir.path())).unwrap();
        for i in 0..MAX_SUBSCRIPTIONS {
            s.add(sub(
                &format!("https://p.example/{i}"),
                "BTBZMqHH6r4Tts7J_aSIgg",
            ))
            .unwrap();
        }
        assert!(matches!(
            s.add(sub("https://p.example/x", "BTBZMqHH6r4Tts7J_aSIgg")),
            Err(SubscriptionsError::Full)
        ));
    }
}
