//! Dates and times in PostgreSQL's ISO text output (`DateStyle = ISO`), turned into numbers
//! that order like PostgreSQL orders them: days or microseconds since 2000-01-01 (the binary
//! format's epoch), with `-infinity` and `infinity` at the ends. The text itself does not
//! order correctly (BC years, years past 9999, time-zone offsets), so it must be decoded.

/// Days from 2000-01-01 to the proleptic Gregorian date `y-m-d` (astronomical year: 1 BC = 0).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    // Howard Hinnant's algorithm, shifted from the Unix epoch to 2000-01-01.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468 - 10_957
}

fn number(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `YYYY-MM-DD` with the BC flag → days since 2000-01-01.
fn date_part(s: &str, bc: bool) -> Option<i64> {
    let mut it = s.splitn(3, '-');
    let y = number(it.next()?)?;
    let m = number(it.next()?)?;
    let d = number(it.next()?)?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y == 0 {
        return None;
    }
    let y = if bc { 1 - y } else { y };
    Some(days_from_civil(y, m, d))
}

/// `HH:MM:SS[.ffffff]` → microseconds.
fn time_part(s: &str) -> Option<i64> {
    let mut it = s.splitn(3, ':');
    let h = number(it.next()?)?;
    let m = number(it.next()?)?;
    let sec = it.next()?;
    let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let whole = number(whole)?;
    let micros = if frac.is_empty() {
        0
    } else {
        if frac.len() > 6 {
            return None;
        }
        number(frac)? * 10i64.pow(6 - frac.len() as u32)
    };
    if h > 24 || m > 59 || whole > 60 {
        return None;
    }
    Some(((h * 60 + m) * 60 + whole) * 1_000_000 + micros)
}

/// `+HH[:MM[:SS]]` / `-…` → seconds east of UTC.
fn offset_part(s: &str) -> Option<i64> {
    let (sign, rest) = match s.split_at_checked(1)? {
        ("+", r) => (1, r),
        ("-", r) => (-1, r),
        _ => return None,
    };
    let mut secs = 0;
    let mut scale = 3600;
    for part in rest.split(':') {
        if scale == 0 || part.len() != 2 {
            return None;
        }
        secs += number(part)? * scale;
        scale /= 60;
    }
    Some(sign * secs)
}

fn strip_bc(s: &str) -> (&str, bool) {
    match s.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (s, false),
    }
}

/// A `date` in ISO text → days since 2000-01-01 (`±infinity` → `i64::MIN/MAX`).
pub(crate) fn parse_date(s: &str) -> Option<i64> {
    match s {
        "infinity" => return Some(i64::MAX),
        "-infinity" => return Some(i64::MIN),
        _ => {}
    }
    let (s, bc) = strip_bc(s);
    date_part(s, bc)
}

/// A `time` in text → microseconds since midnight.
pub(crate) fn parse_time(s: &str) -> Option<i64> {
    time_part(s)
}

/// A `timestamp` (`with_zone = false`) or `timestamptz` in ISO text → microseconds since
/// 2000-01-01 00:00 (UTC for timestamptz); `±infinity` → `i128::MIN/MAX`.
pub(crate) fn parse_timestamp(s: &str, with_zone: bool) -> Option<i128> {
    match s {
        "infinity" => return Some(i128::MAX),
        "-infinity" => return Some(i128::MIN),
        _ => {}
    }
    let (s, bc) = strip_bc(s);
    let (date, time) = s.split_once(' ')?;
    let days = date_part(date, bc)?;
    let (time, offset) = if with_zone {
        let at = time.find(['+', '-'])?;
        (&time[..at], offset_part(&time[at..])?)
    } else {
        (time, 0)
    };
    let micros = time_part(time)?;
    Some(i128::from(days) * 86_400_000_000 + i128::from(micros) - i128::from(offset) * 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_match_postgresql_epoch() {
        assert_eq!(parse_date("2000-01-01"), Some(0));
        assert_eq!(parse_date("2000-03-01"), Some(60));
        assert_eq!(parse_date("1999-12-31"), Some(-1));
        assert_eq!(parse_date("1970-01-01"), Some(-10_957));
        // 0001-01-01 BC is astronomical year 0, a leap year, 366 days before 0001-01-01.
        assert_eq!(
            parse_date("0001-01-01").unwrap() - parse_date("0001-01-01 BC").unwrap(),
            366
        );
        assert_eq!(parse_date("infinity"), Some(i64::MAX));
        assert_eq!(parse_date("-infinity"), Some(i64::MIN));
    }

    #[test]
    fn dates_order_where_text_does_not() {
        let sorted = [
            "-infinity",
            "4713-01-01 BC",
            "0044-03-15 BC",
            "0001-12-31 BC",
            "0001-01-01",
            "1999-12-31",
            "2024-02-29",
            "9999-12-31",
            "10000-01-01",
            "infinity",
        ];
        let days: Vec<i64> = sorted.iter().map(|s| parse_date(s).unwrap()).collect();
        assert!(days.windows(2).all(|w| w[0] < w[1]), "{days:?}");
    }

    #[test]
    fn timestamps_with_zones_and_fractions() {
        let t = |s: &str| parse_timestamp(s, true).unwrap();
        assert_eq!(t("2000-01-01 00:00:00+00"), 0);
        assert_eq!(t("2000-01-01 01:00:00+01"), 0);
        assert_eq!(t("1999-12-31 19:00:00-05"), 0);
        assert_eq!(t("2000-01-01 05:30:00+05:30"), 0);
        assert_eq!(t("2000-01-01 00:00:00.5+00"), 500_000);
        assert_eq!(t("2000-01-01 00:00:00.000001+00"), 1);
        assert!(t("0001-01-01 00:00:00+00 BC") < t("0001-01-01 00:00:00+00"));
        assert!(t("2000-01-01 00:00:00+00:53:28") < 0);
        assert_eq!(t("infinity"), i128::MAX);
        let plain = |s: &str| parse_timestamp(s, false).unwrap();
        assert_eq!(plain("2000-01-02 00:00:01"), 86_401_000_000);
        assert!(plain("10000-01-01 00:00:00") > plain("9999-12-31 23:59:59.999999"));
    }

    #[test]
    fn other_date_styles_are_refused() {
        assert_eq!(parse_date("01/02/2024"), None);
        assert_eq!(parse_date("02.01.2024"), None);
        assert_eq!(parse_timestamp("Tue Jan 02 00:00:00 2024 PST", true), None);
        assert_eq!(parse_timestamp("2024-01-02 00:00:00", true), None);
        assert_eq!(parse_time("12:00"), None);
        assert_eq!(parse_time("12:30:15.25"), Some(45_015_250_000));
    }
}
