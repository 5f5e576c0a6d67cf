//! Durations in the configuration and on the command line.

use std::time::Duration;

use anyhow::{Context as _, bail};

/// Parses `250ms`, `10s`, `1.5s`, `2m`, `1h`.
///
/// Hand-written (a dozen lines) rather than a dependency for one config format.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .with_context(|| format!("'{s}' is not a duration like 10s or 200ms"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "" => bail!("'{s}' needs a unit: ms, s, m or h"),
        other => bail!("unknown unit '{other}' in '{s}' (use ms, s, m or h)"),
    };
    Duration::try_from_secs_f64(value * scale).with_context(|| format!("'{s}' is out of range"))
}

/// The longest duration a setting takes: one year. Longer is a typo, and the node's timers
/// could not hold it: a node instant is microseconds in a `u64` (a duration past about
/// 584,000 years wraps to a short one), and pmesh OTA doubles its re-want backoff
/// (`Duration * 2` past `Duration::MAX` panics).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration setting: [`parse_duration`], at most [`MAX_DURATION`].
pub fn parse_setting(s: &str) -> anyhow::Result<Duration> {
    let d = parse_duration(s)?;
    if d > MAX_DURATION {
        bail!(
            "'{}' is longer than a year, the longest a setting takes",
            s.trim()
        );
    }
    Ok(d)
}

/// Sets `slot` from a `[timers]`, `[limits]` or `[retry]` value, if given.
pub(crate) fn set_duration(
    slot: &mut Duration,
    value: &Option<String>,
    key: &str,
) -> anyhow::Result<()> {
    if let Some(v) = value {
        *slot = parse_setting(v).with_context(|| format!("[timers/limits/retry] {key}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn settings_are_at_most_a_year() {
        assert_eq!(parse_setting("8760h").unwrap(), MAX_DURATION);
        assert!(parse_setting("8760.001h").is_err());
        // Past u64 microseconds: the node's clock would wrap it to a short interval.
        let e = parse_setting("5124095576.1h").unwrap_err();
        assert!(e.to_string().contains("longer than a year"), "{e}");
        assert!(
            parse_duration("5124095576.1h").is_ok(),
            "other commands keep their range"
        );
    }
}
