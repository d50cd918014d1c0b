//! RFC 5322 dates, for comparing the Date header with signingTime.

/// Now, as a Unix time (0 if the clock is before 1970).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Parses an RFC 5322 date (obsolete forms included) to a Unix time.
pub fn parse_date(value: &str) -> Option<i64> {
    let v = value.split('(').next()?.trim();
    let v = match v.split_once(',') {
        Some((_, rest)) => rest.trim(),
        None => v,
    };
    let mut it = v.split_whitespace();
    let day: i64 = it.next()?.parse().ok()?;
    let month = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ]
    .iter()
    .position(|m| {
        it.clone()
            .next()
            .is_some_and(|s| s.to_ascii_lowercase().starts_with(m))
    })? as i64
        + 1;
    it.next();
    let mut year: i64 = it.next()?.parse().ok()?;
    if year < 50 {
        year += 2000;
    } else if year < 1000 {
        year += 1900;
    }
    let mut hms = it.next()?.split(':');
    let h: i64 = hms.next()?.parse().ok()?;
    let m: i64 = hms.next()?.parse().ok()?;
    let s: i64 = hms.next().map(|s| s.parse().unwrap_or(0)).unwrap_or(0);
    let zone = it.next().unwrap_or("+0000");
    let offset = match zone.as_bytes().first() {
        Some(b'+') | Some(b'-') if zone.len() == 5 => {
            let n: i64 = zone[1..].parse().ok()?;
            let secs = (n / 100) * 3600 + (n % 100) * 60;
            if zone.starts_with('-') {
                -secs
            } else {
                secs
            }
        }
        _ => match zone.to_ascii_uppercase().as_str() {
            "EDT" => -4 * 3600,
            "EST" | "CDT" => -5 * 3600,
            "CST" | "MDT" => -6 * 3600,
            "MST" | "PDT" => -7 * 3600,
            "PST" => -8 * 3600,
            _ => 0,
        },
    };
    // Bounded, so the arithmetic below cannot overflow whatever a sender
    // writes.
    if !(1..=31).contains(&day)
        || !(1900..=9999).contains(&year)
        || !(0..=23).contains(&h)
        || !(0..=59).contains(&m)
        || !(0..=60).contains(&s)
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86400 + h * 3600 + m * 60 + s - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_dates_are_no_dates() {
        for d in [
            "Mon, 1 Jan 99999999999999999 00:00:00 +0000",
            "Mon, 1 Jan 9223372036854775807 00:00:00 +0000",
            "Mon, 1 Jan 2026 -1:00:00 +0000",
            "Mon, 1 Jan 1899 00:00:00 +0000",
        ] {
            assert_eq!(parse_date(d), None, "{d}");
        }
    }

    #[test]
    fn dates() {
        assert_eq!(parse_date("Thu, 01 Jan 1970 00:00:00 +0000"), Some(0));
        assert_eq!(
            parse_date("Mon, 26 Jan 2026 14:38:03 +0000"),
            Some(1769438283)
        );
        assert_eq!(
            parse_date("26 Jan 2026 15:38:03 +0100 (CET)"),
            Some(1769438283)
        );
        assert_eq!(
            parse_date("Mon, 26 Jan 2026 09:38:03 EST"),
            Some(1769438283)
        );
        assert_eq!(parse_date("garbage"), None);
        assert_eq!(parse_date("Mon, 45 Jan 2026 09:38:03 EST"), None);
    }
}
