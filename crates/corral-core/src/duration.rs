//! Human durations on the command line and in config: `250ms`, `5s`, `2m`, `1h`.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad duration `{input}`: {why}; write a number with a unit, e.g. 250ms, 5s, 2m, 1h")]
pub struct DurationError {
    pub input: String,
    pub why: &'static str,
}

/// Parses `<number><unit>` with unit `ms`, `s`, `m` or `h`. A bare `0` is allowed.
/// The number may have a fraction (`1.5s`).
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |why| DurationError {
        input: input.to_string(),
        why,
    };
    let s = input.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| err("it has no unit"))?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(err("it does not start with a number"));
    }
    let value: f64 = num.parse().map_err(|_| err("the number is not valid"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(err("the unit is not one of ms, s, m, h")),
    };
    if !secs.is_finite() || secs > 10.0 * 365.0 * 86400.0 {
        return Err(err("it is too large"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a duration the way [`parse_duration`] reads it back, choosing the largest
/// exact unit (`1500ms`, `2s`, `3m`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".into()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        let cases = [
            ("250ms", 250),
            ("5s", 5000),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("1.5s", 1500),
            ("0", 0),
            (" 3s ", 3000),
        ];
        for (input, ms) in cases {
            assert_eq!(
                parse_duration(input).unwrap(),
                Duration::from_millis(ms),
                "{input}"
            );
        }
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        for (input, why) in [
            ("5", "it has no unit"),
            ("s", "it does not start with a number"),
            ("5x", "the unit is not one of ms, s, m, h"),
            ("1.2.3s", "the number is not valid"),
            ("", "it has no unit"),
            ("-1s", "it does not start with a number"),
            ("99999999999h", "it is too large"),
        ] {
            let e = parse_duration(input).unwrap_err();
            assert_eq!(e.why, why, "{input}");
            assert!(e.to_string().contains("e.g. 250ms"));
        }
    }

    #[test]
    fn formats_round_trip() {
        for ms in [0u64, 1, 250, 1000, 1500, 60_000, 90_000, 3_600_000] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }
}
