//! MQTT topic names and filters (MQTT 3.1.1 §4.7): what is valid, and
//! which filter matches which name. Pure.

/// A topic a client may publish to: not empty, no wildcards, no NUL.
pub fn valid_name(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// A filter a client may subscribe to: `+` only as a whole level, `#` only
/// as the whole last level.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !last) {
            return false;
        }
        if level.contains('+') && level != "+" {
            return false;
        }
    }
    true
}

/// Whether the filter has a wildcard (and so cannot be looked up exactly).
pub fn is_wildcard(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

/// Whether a valid `filter` matches the topic `name`. Topics starting
/// with `$` are not matched by a filter starting with a wildcard.
pub fn matches(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut n = name.split('/');
    loop {
        match (f.next(), n.next()) {
            // `a/#` matches `a` as well as everything below it.
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_as_the_specification_says() {
        let table = [
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
                true,
            ),
            ("sport/#", "sport", true),
            ("#", "sport/tennis", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("#", "$SYS/broker", false),
            ("+/broker", "$SYS/broker", false),
            ("$SYS/#", "$SYS/broker", true),
            (
                "homeassistant/+/+/+/config",
                "homeassistant/sensor/x/y/config",
                true,
            ),
        ];
        for (filter, name, want) in table {
            assert_eq!(matches(filter, name), want, "{filter} vs {name}");
        }
    }

    #[test]
    fn invalid_filters_and_names_are_refused() {
        for f in ["a/#", "#", "+", "a/+/b", "+/+", "/", "a//b"] {
            assert!(valid_filter(f), "{f}");
        }
        for f in ["", "a/#/b", "a#", "a/b#", "a+", "a/+b", "a\0"] {
            assert!(!valid_filter(f), "{f:?}");
        }
        for n in ["a", "a/b", "/", "$SYS/x"] {
            assert!(valid_name(n), "{n}");
        }
        for n in ["", "a/+", "a/#", "a\0b"] {
            assert!(!valid_name(n), "{n:?}");
        }
    }
}
