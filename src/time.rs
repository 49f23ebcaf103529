//! Unix times as calendar dates (UTC, proleptic Gregorian): RFC 3339 formatting and parsing for GitHub,
//! a readable form for the CLI. The one home of calendar arithmetic. Pure functions; no clock reads but
//! [`now_rfc3339`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A UTC calendar time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: i64,
    pub day: i64,
    pub hour: u64,
    pub minute: u64,
    pub second: u64,
}

/// The calendar time of `secs` seconds since the epoch (Howard Hinnant's days-to-civil algorithm).
pub fn civil(secs: u64) -> Civil {
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil { year, month, day, hour: rem / 3600, minute: rem / 60 % 60, second: rem % 60 }
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(secs: u64) -> String {
    let c = civil(secs);
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", c.year, c.month, c.day, c.hour, c.minute, c.second)
}

/// The current time as [`rfc3339`].
pub fn now_rfc3339() -> String {
    rfc3339(crate::store::now_secs())
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
pub fn readable(secs: u64) -> String {
    let c = civil(secs);
    format!("{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC", c.year, c.month, c.day, c.hour, c.minute, c.second)
}

/// `t` as RFC 3339 UTC with whole seconds.
pub fn format_rfc3339(t: SystemTime) -> String {
    rfc3339(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// Parses an RFC 3339 time (`2016-07-11T22:14:10Z`, fractions and `±hh:mm` offsets allowed).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| {
        s.get(r).filter(|t| t.bytes().all(|c| c.is_ascii_digit()))?.parse::<i64>().ok()
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && rest.as_bytes()[3] == b':' =>
        {
            let h = rest.get(1..3)?.parse::<u8>().ok().map(i64::from)?;
            let m = rest.get(4..6)?.parse::<u8>().ok().map(i64::from)?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    u64::try_from(secs).ok().map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn calendar_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_468_275_250), "2016-07-11T22:14:10Z");
        assert_eq!(readable(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn rfc3339_formatting_round_trips() {
        for s in [0u64, 951_782_400, 1_468_275_250, 4_107_542_399, 1_795_000_000] {
            let t = UNIX_EPOCH + Duration::from_secs(s);
            let text = format_rfc3339(t);
            assert_eq!(parse_rfc3339(&text).map(secs), Some(s), "{text}");
        }
        assert_eq!(format_rfc3339(UNIX_EPOCH + Duration::from_secs(1_468_275_250)), "2016-07-11T22:14:10Z");
        assert_eq!(format_rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn rfc3339_parsing() {
        assert_eq!(secs(parse_rfc3339("2016-07-11T22:14:10Z").unwrap()), 1_468_275_250);
        assert_eq!(secs(parse_rfc3339("1970-01-01T00:00:00Z").unwrap()), 0);
        assert_eq!(secs(parse_rfc3339("2016-07-11T22:14:10.123Z").unwrap()), 1_468_275_250);
        assert_eq!(secs(parse_rfc3339("2017-07-08T16:18:44-04:00").unwrap()), 1_499_545_124);
        assert_eq!(secs(parse_rfc3339("2000-02-29T00:00:00+00:00").unwrap()), 951_782_400);
        for bad in [
            "",
            "2016-07-11",
            "2016-13-11T22:14:10Z",
            "2016-07-11T22:14:10",
            "x016-07-11T22:14:10Z",
            "2016-07-11T22:14:10+0\u{e9}00",
            "2016-07-11T22:14:10+\u{e9}:00",
            "2016-07-11T22:14:10+-1:00",
        ] {
            assert!(parse_rfc3339(bad).is_none(), "{bad}");
        }
    }
}
