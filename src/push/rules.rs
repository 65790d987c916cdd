//! Which channels take a notification: each channel's rules (level, quiet
//! hours, de-duplication, rate limit: [`notify::admit`]) with its memory.
//! Pure: time comes in as arguments.

use crate::config::Config;
use crate::config::push::QuietHours;
use crate::core::alerts::Level;

use super::memory::{self, Memory};
use super::notify::{self, ChannelState, Notification, Policy, Verdict};

/// One notification and the channels that admitted it.
pub struct Job {
    pub n: Notification,
    pub webpush: bool,
    /// Indexes into `[[push.ntfy]]`.
    pub ntfy: Vec<usize>,
    /// Indexes into `[[push.telegram]]`.
    pub telegram: Vec<usize>,
}

impl Job {
    /// Whether any channel takes it.
    pub fn any(&self) -> bool {
        self.webpush || !self.ntfy.is_empty() || !self.telegram.is_empty()
    }
}

/// One channel's rules: its name (the key of its memory), least level
/// and state.
struct Channel {
    name: String,
    min_level: Level,
    state: ChannelState,
}

/// The channel rules' memory, owned by the MQTT loop, saved (by
/// [`super::memory::keep_saved`]) whenever it changed so that a restart keeps it.
pub struct Rules {
    quiet: Option<QuietHours>,
    webpush: Channel,
    ntfy: Vec<Channel>,
    telegram: Vec<Channel>,
}

impl Rules {
    pub fn new(config: &Config, mut memory: Memory) -> Self {
        let push = &config.push;
        let mut channel = |name: String, min_level| Channel {
            state: memory.take(&name),
            name,
            min_level,
        };
        Self {
            // Validated with the configuration already.
            quiet: push
                .quiet_hours
                .as_deref()
                .and_then(|q| QuietHours::parse(q).ok()),
            webpush: channel(memory::WEBPUSH.into(), push.min_level),
            ntfy: push
                .ntfy
                .iter()
                .map(|c| channel(memory::ntfy_name(c), c.min_level))
                .collect(),
            telegram: push
                .telegram
                .iter()
                .map(|c| channel(memory::telegram_name(c), c.min_level))
                .collect(),
        }
    }

    /// What to save.
    pub fn memory(&self) -> Memory {
        let mut m = Memory::default();
        for c in std::iter::once(&self.webpush)
            .chain(&self.ntfy)
            .chain(&self.telegram)
        {
            m.put(c.name.clone(), c.state.clone());
        }
        m
    }

    /// The channels that take `n` at `now_unix` (local time
    /// `minute_of_day`, for the quiet hours), and whether the memory
    /// changed.
    pub fn decide(&mut self, n: Notification, now_unix: i64, minute_of_day: u16) -> (Job, bool) {
        let (now, minute) = (now_unix, minute_of_day);
        let quiet = self.quiet;
        let mut changed = false;
        let mut admit = |c: &mut Channel| {
            let policy = Policy {
                min_level: c.min_level,
                quiet,
            };
            let verdict = notify::admit(&n, &policy, &mut c.state, now, minute);
            if verdict == Verdict::Send {
                changed = true;
            } else {
                tracing::debug!(tag = %n.tag, channel = %c.name, ?verdict, "not sent on a channel");
            }
            verdict == Verdict::Send
        };
        let webpush = admit(&mut self.webpush);
        let ntfy = self
            .ntfy
            .iter_mut()
            .enumerate()
            .filter_map(|(i, c)| admit(c).then_some(i))
            .collect();
        let telegram = self
            .telegram
            .iter_mut()
            .enumerate()
            .filter_map(|(i, c)| admit(c).then_some(i))
            .collect();
        let job = Job {
            n,
            webpush,
            ntfy,
            telegram,
        };
        (job, changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::notify::Kind;

    fn note(kind: Kind, level: Level) -> Notification {
        Notification {
            kind,
            title: "Error: Battery 1".into(),
            body: "cell delta".into(),
            level,
            tag: "cell_delta_error-battery1".into(),
            time: "2026-12-01T18:00:00Z".into(),
            link: None,
            repeat: false,
        }
    }

    fn config(toml: &str) -> Config {
        crate::config::load_from(&crate::config::Sources {
            base_toml: Some(toml.into()),
            file: None,
            file_required: false,
            env: Vec::new(),
        })
        .expect("config")
    }

    #[test]
    fn each_channel_by_its_level_and_the_clear_only_where_the_raise_went() {
        let c = config(
            r#"
[push]
min_level = "warning"
[[push.ntfy]]
url = "https://ntfy.sh"
topic = "a"
min_level = "critical"
[[push.telegram]]
bot_token = "1:a"
chat_ids = [1]
min_level = "error"
"#,
        );
        let mut r = Rules::new(&c, Memory::default());
        let (job, changed) = r.decide(note(Kind::Raise, Level::Error), 1000, 600);
        assert!(changed);
        assert_eq!(
            (job.webpush, job.ntfy.clone(), job.telegram.clone()),
            (true, vec![], vec![0])
        );
        // The same raise again: nobody.
        let (job, changed) = r.decide(note(Kind::Raise, Level::Error), 1001, 600);
        assert!(!job.any() && !changed);
        // Its clear: where the raise went.
        let (job, _) = r.decide(note(Kind::Clear, Level::Error), 1002, 600);
        assert_eq!(
            (job.webpush, job.ntfy, job.telegram),
            (true, vec![], vec![0])
        );
    }

    #[test]
    fn the_memory_carries_an_episode_across_a_restart() {
        let c = config("[[push.ntfy]]\nurl = \"https://ntfy.sh\"\ntopic = \"a\"\n");
        let mut before = Rules::new(&c, Memory::default());
        let (job, _) = before.decide(note(Kind::Raise, Level::Error), 1000, 600);
        assert!(job.webpush && job.ntfy == [0]);
        let saved = before.memory();
        assert!(
            saved.0["ntfy https://ntfy.sh/a"]
                .active
                .contains("cell_delta_error-battery1")
        );

        let mut after = Rules::new(&c, saved);
        let (job, _) = after.decide(note(Kind::Clear, Level::Error), 2000, 600);
        assert!(
            job.webpush && job.ntfy == [0],
            "the clear passes after a restart"
        );
        let mut forgetful = Rules::new(&c, Memory::default());
        let (job, _) = forgetful.decide(note(Kind::Clear, Level::Error), 2000, 600);
        assert!(!job.any(), "without the memory there is nothing to clear");
    }
}
