//! Calendar formatting and parsing without a clock: callers pass the instant in.

/// Formats seconds since the Unix epoch as RFC 3339 UTC with milliseconds,
/// e.g. `2026-11-23T03:51:33.120Z`.
pub fn rfc3339_utc(unix_secs: f64) -> String {
    let total_ms = (unix_secs * 1000.0).round() as i64;
    let ms = total_ms.rem_euclid(1000);
    let secs = total_ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// Parses an RFC 3339 timestamp (`2026-12-07T22:41:23.123456789Z`, or with an offset such
/// as `+02:00`; the fraction is optional and may have up to nine digits) into
/// microseconds since the Unix epoch, and whether it had a fraction (a timestamp with
/// whole seconds only says less than the clock of whoever reads it). `None` when the text
/// is not such a timestamp or is before the epoch.
pub fn parse_rfc3339_micros(s: &str) -> Option<(u64, bool)> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        part.iter().try_fold(0i64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    let sep = |i: usize, c: &[u8]| b.get(i).is_some_and(|x| c.contains(x));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (h, mi, sec) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut micros = 0i64;
    let mut fraction = false;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        let frac = num(i, digits)?;
        micros = match digits {
            0..=6 => frac * 10i64.pow(6 - digits as u32),
            _ => frac / 10i64.pow(digits as u32 - 6),
        };
        fraction = true;
        i += digits;
    }
    let offset = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        c @ (b'+' | b'-') if i + 6 == b.len() && sep(i + 3, b":") => {
            let o = num(i + 1, 2)? * 3600 + num(i + 4, 2)? * 60;
            if *c == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo as u32, d as u32) * 86_400 + h * 3600 + mi * 60 + sec - offset;
    let total = secs.checked_mul(1_000_000)?.checked_add(micros)?;
    u64::try_from(total).ok().map(|t| (t, fraction))
}

/// (year, month, day) in the proleptic Gregorian calendar to days since 1970-01-01
/// (the inverse of [`civil_from_days`]).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's civil-from-days algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_utc(0.0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(1_704_067_200.123), "2024-01-01T00:00:00.123Z");
        assert_eq!(rfc3339_utc(951_782_400.0), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_utc(1_795_405_893.5), "2026-11-23T03:51:33.500Z");
    }

    #[test]
    fn parses_the_timestamps_container_engines_print() {
        for (text, want) in [
            ("1970-01-01T00:00:00Z", Some((0, false))),
            // Docker: nanoseconds, UTC.
            (
                "2026-11-23T03:51:33.500123456Z",
                Some((1_795_405_893_500_123, true)),
            ),
            // Podman: whole seconds.
            ("2026-11-23T03:51:33Z", Some((1_795_405_893_000_000, false))),
            ("2000-02-29T00:00:00.1Z", Some((951_782_400_100_000, true))),
            (
                "2026-11-23T05:51:33.5+02:00",
                Some((1_795_405_893_500_000, true)),
            ),
            (
                "2026-11-22T23:51:33-04:00",
                Some((1_795_405_893_000_000, false)),
            ),
            ("2026-11-23T03:51:33", None),
            ("2026-13-23T03:51:33Z", None),
            ("2026-11-23T03:51:33.Z", None),
            ("2026-11-23T03:51:33.1234567890Z", None),
            ("1969-12-31T23:59:59Z", None),
            ("out 1", None),
            ("", None),
        ] {
            assert_eq!(parse_rfc3339_micros(text), want, "{text}");
        }
        // Round trip with the formatter.
        for secs in [0.0, 1_704_067_200.123, 951_782_400.0, 4_102_444_800.999] {
            let (us, _) = parse_rfc3339_micros(&rfc3339_utc(secs)).unwrap();
            assert_eq!(us, (secs * 1000.0f64).round() as u64 * 1000);
        }
    }
}
