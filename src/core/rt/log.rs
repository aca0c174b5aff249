//! Log-line hygiene every layer shares: text taken from the network is
//! escaped before it is logged, and a repeated event is logged at most once
//! per interval, the next line saying how many it stands for.
//!
//! Promises: [`escaped`] borrows plain text (no allocation unless a control
//! character is present); [`Throttle`] holds its lock for a comparison and
//! two stores only.

use std::borrow::Cow;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `s` for a text log line: control characters (newline, ESC, ...) are
/// written as escapes (`\n`, `\u{1b}`), so a name taken from a certificate
/// or a ClientHello cannot forge or hide log lines. Plain text is borrowed.
pub fn escaped(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// At most one log line per `every` for a repeated event; the others are
/// counted, so the next line can say how many it stands for.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub const fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(n)` when a line may be written at `now` (`n` events were
    /// suppressed since the last line); `None` when this one is counted only.
    pub fn allow(&self, now: Instant) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match st.0 {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                st.1 = st.1.saturating_add(1);
                None
            }
            _ => {
                let suppressed = st.1;
                *st = (Some(now), 0);
                Some(suppressed)
            }
        }
    }

    /// Events suppressed since the last line, if any and if a line may be
    /// written at `now` (for a periodic summary).
    pub fn flush(&self, now: Instant) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match st.0 {
            Some(last) if st.1 > 0 && now.saturating_duration_since(last) >= self.every => {
                let n = st.1;
                *st = (Some(now), 0);
                Some(n)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(super::escaped("client1"), "client1");
        assert_eq!(
            super::escaped("evil\nINFO access identity=admin\u{1b}[2K"),
            "evil\\nINFO access identity=admin\\u{1b}[2K"
        );
    }

    #[test]
    fn throttle_writes_one_line_per_interval_and_counts_the_rest() {
        use std::time::{Duration, Instant};
        let t = super::Throttle::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(t.allow(t0), Some(0));
        for ms in [10, 200, 999] {
            assert_eq!(t.allow(t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(t.flush(t0 + Duration::from_millis(999)), None, "not yet a second");
        assert_eq!(t.allow(t0 + Duration::from_millis(1000)), Some(3));
        assert_eq!(t.allow(t0 + Duration::from_millis(1500)), None);
        assert_eq!(t.flush(t0 + Duration::from_millis(2100)), Some(1));
        assert_eq!(t.flush(t0 + Duration::from_millis(4000)), None, "nothing suppressed");
    }
}
