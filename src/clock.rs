//! The one place that asks the system for the time of day: the wall clock
//! as a [`Timestamp`] and the local civil time of the system's time zone
//! (`TZ`, else `/etc/localtime`, else UTC), for the pure schedules in
//! `crate::core::timers`.

use chrono::{DateTime, Datelike, Local, TimeZone, Timelike};

use crate::core::balancer::Timestamp;
use crate::core::timers::LocalTime;

/// The wall clock now.
pub fn now() -> Timestamp {
    Timestamp::from_system_time(std::time::SystemTime::now())
}

/// The wall clock now as UTC civil time (RFC 3339 stamps, `last_seen`).
pub fn now_utc() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// `t` in the system's time zone. Taking the instant from the caller keeps
/// the timestamp and the local time of one tick consistent.
pub fn local_at(t: Timestamp) -> LocalTime {
    let ms = i64::try_from(t.0).unwrap_or(i64::MAX);
    let local = match Local.timestamp_millis_opt(ms).earliest() {
        Some(l) => l,
        // Beyond chrono's range (year 262143): not a clock anyone runs.
        None => DateTime::<chrono::Utc>::UNIX_EPOCH.with_timezone(&Local),
    };
    to_local_time(&local)
}

fn to_local_time<Tz: TimeZone>(t: &DateTime<Tz>) -> LocalTime {
    // chrono only yields real dates, so the fallback is never taken.
    LocalTime::new(t.year(), t.month(), t.day(), t.hour(), t.minute()).unwrap_or(LocalTime::EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{FixedOffset, Utc};

    #[test]
    fn civil_fields_carry_over() {
        let t = Utc.with_ymd_and_hms(2026, 3, 29, 7, 45, 10).single();
        let l = to_local_time(&t.expect("valid date"));
        assert_eq!(Some(l), LocalTime::new(2026, 3, 29, 7, 45));
        assert_eq!(l.weekday(), crate::config::schedule::Weekday::Sun);
    }

    #[test]
    fn offset_shifts_the_civil_day() {
        let kyiv = FixedOffset::east_opt(3 * 3600).expect("offset");
        let t = Utc
            .with_ymd_and_hms(2026, 6, 30, 22, 30, 0)
            .single()
            .expect("valid date");
        let l = to_local_time(&t.with_timezone(&kyiv));
        assert_eq!(Some(l), LocalTime::new(2026, 7, 1, 1, 30));
    }

    #[test]
    fn local_time_follows_the_timestamp() {
        let a = local_at(Timestamp(1_780_000_000_000));
        let b = local_at(Timestamp(1_780_000_000_000 + 86_400_000));
        // A day later is the next civil day, DST or not (±1 h moves the
        // minute, not the day, away from midnight).
        assert!((b.local_minute() - a.local_minute() - 1440).abs() <= 60);
    }
}
