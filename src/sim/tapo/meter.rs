//! Load and energy model.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Load, TIME_DIFF_MIN};
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Totals {
    pub(super) wh: f64,
    pub(super) on_s: f64,
}

#[derive(Debug, Clone, Copy)]
struct Day {
    /// Days since 1970-01-01 in plug-local time.
    day: i64,
    totals: Totals,
}

#[derive(Debug, Default)]
pub(super) struct Summary {
    pub(super) today: Totals,
    pub(super) past7: Totals,
    pub(super) past30: Totals,
    pub(super) month: Totals,
}

/// Days of history kept: enough for "past30" and a full calendar month.
const KEEP_DAYS: usize = 62;

#[derive(Debug)]
pub(super) struct Meter {
    pub(super) on: bool,
    /// The appliance itself is off: the relay may be on, nothing draws.
    pub(super) idle: bool,
    pub(super) on_since: SystemTime,
    /// Up to when the counters have been integrated.
    last: SystemTime,
    /// Energy since the simulator started: `get_emeter_data.energy_wh`
    /// counts since the plug's last restart.
    pub(super) since_boot_wh: f64,
    days: VecDeque<Day>,
}

impl Meter {
    pub(super) fn new(now: SystemTime) -> Self {
        Self {
            on: true,
            idle: false,
            on_since: now,
            last: now,
            since_boot_wh: 0.0,
            days: VecDeque::new(),
        }
    }

    pub(super) fn power(&self, load: Load, now: SystemTime) -> f64 {
        if !self.on || self.idle {
            return 0.0;
        }
        let since_on = now
            .duration_since(self.on_since)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        draw(load, since_on, unix_f64(now))
    }

    /// Integrates the power from `last` to `now`. Steps of at most a second
    /// follow the fridge's cycles; very long gaps use coarser steps so a
    /// simulator left idle for weeks costs bounded work.
    pub(super) fn advance(&mut self, load: Load, now: SystemTime) {
        let Ok(gap) = now.duration_since(self.last) else {
            // The wall clock went back: count nothing rather than twice.
            self.last = now;
            return;
        };
        if self.on {
            let total = gap.as_secs_f64();
            let step = (total / 20_000.0).max(1.0);
            let start = unix_f64(self.last);
            let since_on = self
                .last
                .duration_since(self.on_since)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            let mut t = 0.0;
            while t < total {
                let dt = step.min(total - t);
                let mid = t + dt / 2.0;
                let w = if self.idle {
                    0.0
                } else {
                    draw(load, since_on + mid, start + mid)
                };
                let wh = w * dt / 3600.0;
                self.add(local_day(start + mid), wh, dt);
                self.since_boot_wh += wh;
                t += dt;
            }
        }
        self.last = now;
    }

    fn add(&mut self, day: i64, wh: f64, on_s: f64) {
        match self.days.back_mut() {
            Some(d) if d.day >= day => {
                d.totals.wh += wh;
                d.totals.on_s += on_s;
            }
            _ => self.days.push_back(Day {
                day,
                totals: Totals { wh, on_s },
            }),
        }
        while self.days.len() > KEEP_DAYS {
            self.days.pop_front();
        }
    }

    pub(super) fn totals(&self, now: SystemTime) -> Summary {
        let today = local_day(unix_f64(now));
        let this_month = year_month(today);
        let mut s = Summary::default();
        for d in &self.days {
            let age = today - d.day;
            let add = |t: &mut Totals| {
                t.wh += d.totals.wh;
                t.on_s += d.totals.on_s;
            };
            if age == 0 {
                add(&mut s.today);
            }
            if (0..7).contains(&age) {
                add(&mut s.past7);
            }
            if (0..30).contains(&age) {
                add(&mut s.past30);
            }
            if age >= 0 && year_month(d.day) == this_month {
                add(&mut s.month);
            }
        }
        s
    }
}

/// Instantaneous draw in W of a load that has been powered for `since_on`
/// seconds. The noise changes once a second so that two reads in the same
/// second agree.
pub(super) fn draw(load: Load, since_on: f64, unix: f64) -> f64 {
    let sec = unix.floor() as u64;
    let w = match load {
        Load::Constant { watts } => watts,
        Load::Boiler { watts } => watts * (1.0 + 0.004 * noise(sec ^ 0xB011)),
        Load::Heater { watts } => watts * (1.0 + 0.015 * noise(sec ^ 0x4EA7)),
        Load::Fridge { watts, on_s, off_s } => {
            let period = on_s + off_s;
            let running = if period.is_finite() && period > 0.0 {
                since_on.rem_euclid(period) < on_s
            } else {
                true
            };
            if running {
                watts * (1.0 + 0.02 * noise(sec ^ 0xF1D6))
            } else {
                0.0
            }
        }
    };
    if w.is_finite() { w.max(0.0) } else { 0.0 }
}

/// Deterministic noise in [-1, 1] (splitmix64).
pub(super) fn noise(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

fn unix_f64(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub(super) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn local_day(unix: f64) -> i64 {
    ((unix + TIME_DIFF_MIN as f64 * 60.0) / 86_400.0).floor() as i64
}

fn year_month(day: i64) -> (i32, u8) {
    time::OffsetDateTime::from_unix_timestamp(day.saturating_mul(86_400))
        .map(|t| (t.year(), u8::from(t.month())))
        .unwrap_or((1970, 1))
}

pub(super) fn local_time(now: SystemTime) -> String {
    let secs = unix_secs(now) as i64 + TIME_DIFF_MIN * 60;
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| "1970-01-01 00:00:00".to_owned())
}
