//! Date and time conversion between legacy patterns, epoch numbers and RFC 3339, in a fixed UTC
//! offset or an IANA time zone (with its daylight-saving rules, from the tz database bundled by
//! `jiff`). Civil-date arithmetic is Howard Hinnant's `days_from_civil`.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DateFormat {
    Rfc3339,
    EpochSeconds,
    EpochMillis,
    Pattern(Vec<Token>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    Year4,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    Millis,
    Lit(char),
}

/// Offset from UTC in seconds.
pub fn parse_offset(s: &str) -> Result<i64, String> {
    if s.eq_ignore_ascii_case("utc") || s == "Z" {
        return Ok(0);
    }
    let bad = || format!("`{s}` is not `UTC` or an offset such as `+01:00`");
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').ok_or_else(bad)?;
    let h: i64 = h.parse().map_err(|_| bad())?;
    let m: i64 = m.parse().map_err(|_| bad())?;
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(sign * (h * 3600 + m * 60))
}

/// The zone of legacy times that carry none: a fixed offset, or an IANA zone whose offset
/// depends on the date (daylight saving).
#[derive(Debug, Clone, PartialEq)]
pub enum Zone {
    Fixed(i64),
    Named(jiff::tz::TimeZone),
}

impl Default for Zone {
    fn default() -> Self {
        Zone::Fixed(0)
    }
}

/// `UTC`, `+01:00`, or an IANA name such as `Europe/Paris`.
pub fn parse_zone(s: &str) -> Result<Zone, String> {
    if let Ok(offset) = parse_offset(s) {
        return Ok(Zone::Fixed(offset));
    }
    jiff::tz::TimeZone::get(s).map(Zone::Named).map_err(|_| {
        format!("`{s}` is not `UTC`, an offset such as `+01:00`, or an IANA zone such as `Europe/Paris`")
    })
}

impl Zone {
    /// The offset in force at an instant.
    fn offset_at(&self, ms: i64) -> i64 {
        match self {
            Zone::Fixed(o) => *o,
            Zone::Named(tz) => jiff::Timestamp::from_millisecond(ms)
                .map(|ts| i64::from(tz.to_offset(ts).seconds()))
                .unwrap_or(0),
        }
    }

    /// The offset of a local (wall-clock) time. In a gap or a fold (daylight-saving changes)
    /// the earlier offset is taken, as java.time and jiff's `compatible` do.
    fn offset_of_local(&self, c: &Civil) -> Result<i64, String> {
        match self {
            Zone::Fixed(o) => Ok(*o),
            Zone::Named(tz) => {
                let narrow =
                    |v: i64| i8::try_from(v).map_err(|_| "not a valid calendar date or time".to_string());
                let dt = jiff::civil::DateTime::new(
                    i16::try_from(c.y).map_err(|_| "year out of range".to_string())?,
                    narrow(c.mo)?,
                    narrow(c.d)?,
                    narrow(c.h)?,
                    narrow(c.mi)?,
                    narrow(c.s.min(59))?,
                    0,
                )
                .map_err(|_| "not a valid calendar date or time".to_string())?;
                let ts = tz
                    .to_ambiguous_timestamp(dt)
                    .compatible()
                    .map_err(|e| e.to_string())?;
                Ok(i64::from(tz.to_offset(ts).seconds()))
            }
        }
    }
}

impl DateFormat {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "rfc3339" => return Ok(Self::Rfc3339),
            "epoch_seconds" => return Ok(Self::EpochSeconds),
            "epoch_millis" => return Ok(Self::EpochMillis),
            _ => {}
        }
        let mut tokens = Vec::new();
        let b: Vec<char> = s.chars().collect();
        let mut i = 0;
        let mut quoted = false;
        while i < b.len() {
            let c = b[i];
            if c == '\'' {
                quoted = !quoted;
                i += 1;
                continue;
            }
            if quoted || !c.is_ascii_alphabetic() {
                tokens.push(Token::Lit(c));
                i += 1;
                continue;
            }
            let run = b[i..].iter().take_while(|x| **x == c).count();
            let t = match (c, run) {
                ('y', 4) => Token::Year4,
                ('M', 2) => Token::Month,
                ('d', 2) => Token::Day,
                ('H', 2) => Token::Hour,
                ('m', 2) => Token::Minute,
                ('s', 2) => Token::Second,
                ('S', 3) => Token::Millis,
                _ => {
                    return Err(format!(
                        "`{s}`: use yyyy MM dd HH mm ss SSS (or rfc3339, epoch_seconds, epoch_millis)"
                    ))
                }
            };
            tokens.push(t);
            i += run;
        }
        if !tokens.contains(&Token::Year4) || !tokens.contains(&Token::Month) || !tokens.contains(&Token::Day)
        {
            return Err(format!("`{s}` needs yyyy, MM and dd"));
        }
        Ok(Self::Pattern(tokens))
    }

    /// Reads a value into epoch milliseconds. Zone-less patterns are read at `offset`.
    /// Instants outside the years 0000 to 9999 are refused: a backend's epoch number can be
    /// anything, and the arithmetic that writes it back must not overflow.
    pub fn read(&self, v: &Value, zone: &Zone) -> Result<i64, String> {
        let ms = match self {
            Self::EpochSeconds => num(v)?
                .checked_mul(1000)
                .ok_or_else(|| format!("{v} is out of range"))?,
            Self::EpochMillis => num(v)?,
            Self::Rfc3339 => read_rfc3339(str_of(v)?)?,
            Self::Pattern(tokens) => read_pattern(tokens, str_of(v)?, zone)?,
        };
        if !(MIN_MS..=MAX_MS).contains(&ms) {
            return Err(format!("{v} is outside the years 0000 to 9999"));
        }
        Ok(ms)
    }

    pub fn write(&self, ms: i64, zone: &Zone) -> Value {
        let offset = zone.offset_at(ms);
        match self {
            Self::EpochSeconds => Value::from(ms.div_euclid(1000)),
            Self::EpochMillis => Value::from(ms),
            Self::Rfc3339 => Value::from(write_rfc3339(ms, offset)),
            Self::Pattern(tokens) => Value::from(write_pattern(tokens, ms, offset)),
        }
    }
}

/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z.
const MIN_MS: i64 = -62_167_219_200_000;
const MAX_MS: i64 = 253_402_300_799_999;

fn str_of(v: &Value) -> Result<&str, String> {
    v.as_str()
        .ok_or_else(|| format!("expected a date string, got {v}"))
}

fn num(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => n.as_i64().ok_or_else(|| format!("{n} is not an integer")),
        Value::String(s) => s.trim().parse().map_err(|_| format!("`{s}` is not an integer")),
        other => Err(format!("expected an epoch number, got {other}")),
    }
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

struct Civil {
    y: i64,
    mo: i64,
    d: i64,
    h: i64,
    mi: i64,
    s: i64,
    ms: i64,
}

impl Civil {
    fn to_millis(&self, offset: i64) -> Result<i64, String> {
        if !(1..=12).contains(&self.mo)
            || self.d < 1
            || self.d > days_in_month(self.y, self.mo)
            || self.h > 23
            || self.mi > 59
            || self.s > 60
        {
            return Err("not a valid calendar date or time".into());
        }
        let days = days_from_civil(self.y, self.mo, self.d);
        let secs = days * 86_400 + self.h * 3600 + self.mi * 60 + self.s - offset;
        Ok(secs * 1000 + self.ms)
    }

    fn from_millis(ms: i64, offset: i64) -> Self {
        // `read` keeps instants in range; saturating keeps `write` panic-free for any caller.
        let local = ms.saturating_add(offset.saturating_mul(1000));
        let days = local.div_euclid(86_400_000);
        let rem = local.rem_euclid(86_400_000);
        let (y, mo, d) = civil_from_days(days);
        Self {
            y,
            mo,
            d,
            h: rem / 3_600_000,
            mi: rem / 60_000 % 60,
            s: rem / 1000 % 60,
            ms: rem % 1000,
        }
    }
}

fn digits(s: &[u8], at: &mut usize, n: usize) -> Result<i64, String> {
    let part = s
        .get(*at..*at + n)
        .ok_or("the value is too short for the pattern")?;
    if !part.iter().all(u8::is_ascii_digit) {
        return Err(format!("expected {n} digits at position {}", *at));
    }
    *at += n;
    Ok(part.iter().fold(0, |acc, b| acc * 10 + i64::from(b - b'0')))
}

fn read_pattern(tokens: &[Token], s: &str, zone: &Zone) -> Result<i64, String> {
    let b = s.trim().as_bytes();
    let mut at = 0;
    let mut c = Civil {
        y: 0,
        mo: 0,
        d: 0,
        h: 0,
        mi: 0,
        s: 0,
        ms: 0,
    };
    for t in tokens {
        match t {
            Token::Year4 => c.y = digits(b, &mut at, 4)?,
            Token::Month => c.mo = digits(b, &mut at, 2)?,
            Token::Day => c.d = digits(b, &mut at, 2)?,
            Token::Hour => c.h = digits(b, &mut at, 2)?,
            Token::Minute => c.mi = digits(b, &mut at, 2)?,
            Token::Second => c.s = digits(b, &mut at, 2)?,
            Token::Millis => c.ms = digits(b, &mut at, 3)?,
            Token::Lit(ch) => {
                let mut buf = [0u8; 4];
                let lit = ch.encode_utf8(&mut buf).as_bytes();
                if b.get(at..at + lit.len()) != Some(lit) {
                    return Err(format!("expected `{ch}` at position {at}"));
                }
                at += lit.len();
            }
        }
    }
    if at != b.len() {
        return Err(format!("`{s}` has trailing characters"));
    }
    let offset = zone.offset_of_local(&c).map_err(|e| format!("`{s}`: {e}"))?;
    c.to_millis(offset).map_err(|e| format!("`{s}`: {e}"))
}

fn write_pattern(tokens: &[Token], ms: i64, offset: i64) -> String {
    let c = Civil::from_millis(ms, offset);
    let mut out = String::new();
    for t in tokens {
        match t {
            Token::Year4 => out.push_str(&format!("{:04}", c.y)),
            Token::Month => out.push_str(&format!("{:02}", c.mo)),
            Token::Day => out.push_str(&format!("{:02}", c.d)),
            Token::Hour => out.push_str(&format!("{:02}", c.h)),
            Token::Minute => out.push_str(&format!("{:02}", c.mi)),
            Token::Second => out.push_str(&format!("{:02}", c.s)),
            Token::Millis => out.push_str(&format!("{:03}", c.ms)),
            Token::Lit(ch) => out.push(*ch),
        }
    }
    out
}

fn read_rfc3339(s: &str) -> Result<i64, String> {
    let bad = || format!("`{s}` is not an RFC 3339 date-time");
    let b = s.as_bytes();
    let mut at = 0;
    let num = |n: usize, at: &mut usize| digits(b, at, n).map_err(|_| bad());
    let y = num(4, &mut at)?;
    let sep = |at: &mut usize, c: &[u8]| -> Result<(), String> {
        match b.get(*at) {
            Some(x) if c.contains(x) => {
                *at += 1;
                Ok(())
            }
            _ => Err(bad()),
        }
    };
    sep(&mut at, b"-")?;
    let mo = num(2, &mut at)?;
    sep(&mut at, b"-")?;
    let d = num(2, &mut at)?;
    sep(&mut at, b"Tt ")?;
    let h = num(2, &mut at)?;
    sep(&mut at, b":")?;
    let mi = num(2, &mut at)?;
    sep(&mut at, b":")?;
    let sec = num(2, &mut at)?;
    let mut ms = 0;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        let frac = &s[start..at];
        if frac.is_empty() {
            return Err(bad());
        }
        let padded = format!("{:0<3}", &frac[..frac.len().min(3)]);
        ms = padded.parse().map_err(|_| bad())?;
    }
    let offset = parse_offset(&s[at..]).map_err(|_| bad())?;
    Civil {
        y,
        mo,
        d,
        h,
        mi,
        s: sec,
        ms,
    }
    .to_millis(offset)
    .map_err(|e| format!("`{s}`: {e}"))
}

fn write_rfc3339(ms: i64, offset: i64) -> String {
    let c = Civil::from_millis(ms, offset);
    let frac = if c.ms == 0 {
        String::new()
    } else {
        format!(".{:03}", c.ms)
    };
    let zone = if offset == 0 {
        "Z".to_string()
    } else {
        let sign = if offset < 0 { '-' } else { '+' };
        let a = offset.abs();
        format!("{sign}{:02}:{:02}", a / 3600, a / 60 % 60)
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{frac}{zone}",
        c.y, c.mo, c.d, c.h, c.mi, c.s
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn convert(v: Value, from: &str, to: &str, tz: i64) -> Result<Value, String> {
        let zone = Zone::Fixed(tz);
        let ms = DateFormat::parse(from)?.read(&v, &zone)?;
        Ok(DateFormat::parse(to)?.write(ms, &zone))
    }

    #[test]
    fn iana_zones_follow_daylight_saving() {
        let paris = parse_zone("Europe/Paris").unwrap();
        let f = DateFormat::parse("dd/MM/yyyy HH:mm").unwrap();
        let rfc = DateFormat::Rfc3339;
        // Winter: +01:00; summer: +02:00.
        let ms = f.read(&json!("15/01/2024 10:00"), &paris).unwrap();
        assert_eq!(rfc.write(ms, &Zone::Fixed(0)), json!("2024-01-15T09:00:00Z"));
        assert_eq!(rfc.write(ms, &paris), json!("2024-01-15T10:00:00+01:00"));
        let ms = f.read(&json!("15/07/2024 10:00"), &paris).unwrap();
        assert_eq!(rfc.write(ms, &Zone::Fixed(0)), json!("2024-07-15T08:00:00Z"));
        assert_eq!(rfc.write(ms, &paris), json!("2024-07-15T10:00:00+02:00"));
        assert!(parse_zone("Mars/Olympus").is_err());
        assert_eq!(parse_zone("+01:00").unwrap(), Zone::Fixed(3600));
    }

    #[test]
    fn legacy_day_month_year_becomes_iso_date() {
        assert_eq!(
            convert(json!("31/12/2023"), "dd/MM/yyyy", "yyyy-MM-dd", 0).unwrap(),
            json!("2023-12-31")
        );
        assert!(convert(json!("31/02/2023"), "dd/MM/yyyy", "yyyy-MM-dd", 0).is_err());
        assert!(convert(json!("2023-12-31"), "dd/MM/yyyy", "yyyy-MM-dd", 0).is_err());
    }

    #[test]
    fn compact_timestamps_with_offsets_become_rfc3339_and_back() {
        let paris = parse_offset("+01:00").unwrap();
        let v = convert(json!("20240229143000"), "yyyyMMddHHmmss", "rfc3339", paris).unwrap();
        assert_eq!(v, json!("2024-02-29T14:30:00+01:00"));
        let ms = DateFormat::Rfc3339.read(&v, &Zone::Fixed(0)).unwrap();
        assert_eq!(
            DateFormat::Rfc3339.write(ms, &Zone::Fixed(0)),
            json!("2024-02-29T13:30:00Z")
        );
        let back = convert(v, "rfc3339", "yyyyMMddHHmmss", paris).unwrap();
        assert_eq!(back, json!("20240229143000"));
    }

    #[test]
    fn epoch_seconds_and_millis_convert() {
        assert_eq!(
            convert(json!(0), "epoch_seconds", "rfc3339", 0).unwrap(),
            json!("1970-01-01T00:00:00Z")
        );
        assert_eq!(
            convert(json!("2001-09-09T01:46:40.5Z"), "rfc3339", "epoch_millis", 0).unwrap(),
            json!(1_000_000_000_500i64)
        );
        assert_eq!(
            convert(
                json!(1_700_000_000),
                "epoch_seconds",
                "dd/MM/yyyy HH:mm",
                parse_offset("-05:00").unwrap()
            )
            .unwrap(),
            json!("14/11/2023 17:13")
        );
    }

    #[test]
    fn epochs_beyond_year_9999_are_errors_not_overflows() {
        let utc = Zone::Fixed(0);
        assert!(DateFormat::EpochSeconds.read(&json!(i64::MAX), &utc).is_err());
        assert!(DateFormat::EpochSeconds
            .read(&json!("-9223372036854775"), &utc)
            .is_err());
        assert!(DateFormat::EpochMillis.read(&json!(i64::MIN), &utc).is_err());
        assert_eq!(
            DateFormat::Rfc3339.read(&json!("0000-01-01T00:00:00Z"), &utc),
            Ok(MIN_MS)
        );
        assert_eq!(
            DateFormat::Rfc3339.read(&json!("9999-12-31T23:59:59.999Z"), &utc),
            Ok(MAX_MS)
        );
        assert!(DateFormat::Rfc3339
            .read(&json!("9999-12-31T23:59:59.999-01:00"), &utc)
            .is_err());
        // Written back from anything, even what `read` would refuse, without overflowing.
        let _ = DateFormat::Rfc3339.write(i64::MAX, &Zone::Fixed(50_400));
        let _ = DateFormat::parse("yyyy-MM-dd")
            .unwrap()
            .write(i64::MIN, &Zone::Fixed(-43_200));
    }

    #[test]
    fn bad_patterns_and_offsets_are_refused() {
        assert!(DateFormat::parse("yy-MM-dd").is_err());
        assert!(DateFormat::parse("HH:mm").is_err());
        assert!(parse_offset("Europe/Paris").is_err());
        assert!(parse_zone("Europe/Paris").is_ok());
    }
}
