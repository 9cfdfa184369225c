//! Date and time conversion between legacy patterns, epoch numbers and RFC 3339, in a fixed UTC
//! offset or an IANA time zone (with its daylight-saving rules, from the tz database bundled by
//! `jiff`). The calendar, RFC 3339 and the zone rules are jiff's; this module only reads and writes
//! the legacy pattern letters.

use jiff::civil::DateTime;
use jiff::fmt::temporal::{DateTimePrinter, Pieces, PiecesOffset};
use jiff::tz::{Offset, TimeZone};
use jiff::{SignedDuration, Timestamp};
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
    Named(TimeZone),
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
    TimeZone::get(s).map(Zone::Named).map_err(|_| {
        format!("`{s}` is not `UTC`, an offset such as `+01:00`, or an IANA zone such as `Europe/Paris`")
    })
}

impl Zone {
    /// The offset in force at an instant.
    fn offset_at(&self, ms: i64) -> i64 {
        match self {
            Zone::Fixed(o) => *o,
            Zone::Named(tz) => {
                // jiff's instants stop a day short of the civil calendar's ends; the offset there
                // is the one at the nearest instant jiff has.
                let ms = ms.clamp(Timestamp::MIN.as_millisecond(), Timestamp::MAX.as_millisecond());
                Timestamp::from_millisecond(ms)
                    .map(|ts| i64::from(tz.to_offset(ts).seconds()))
                    .unwrap_or(0)
            }
        }
    }

    /// The offset of a local (wall-clock) time. In a gap or a fold (daylight-saving changes)
    /// the earlier offset is taken, as java.time and jiff's `compatible` do.
    fn offset_of_local(&self, dt: DateTime) -> Result<i64, String> {
        match self {
            Zone::Fixed(o) => Ok(*o),
            Zone::Named(tz) => {
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

/// Instants are counted from here in civil (not `Timestamp`) arithmetic: jiff's `Timestamp`
/// ends on 9999-12-30, a day before the last date a legacy pattern can hold.
const EPOCH: DateTime = DateTime::constant(1970, 1, 1, 0, 0, 0, 0);

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

/// Epoch milliseconds of a wall-clock time at `offset` seconds east of UTC.
fn to_millis(dt: DateTime, offset: i64) -> i64 {
    // Both ends of jiff's civil range are within ±2^49 ms, so neither conversion can fail.
    let local = i64::try_from(dt.duration_since(EPOCH).as_millis()).unwrap_or(i64::MAX);
    local.saturating_sub(offset.saturating_mul(1000))
}

/// The wall-clock time of an instant at `offset` seconds east of UTC. `read` keeps instants in
/// range; beyond jiff's calendar this saturates, so that `write` never panics for any caller.
fn from_millis(ms: i64, offset: i64) -> DateTime {
    let local = ms.saturating_add(offset.saturating_mul(1000));
    EPOCH
        .checked_add(SignedDuration::from_millis(local))
        .unwrap_or(if local < 0 { DateTime::MIN } else { DateTime::MAX })
}

fn millis_of(dt: DateTime) -> i32 {
    dt.subsec_nanosecond() / 1_000_000
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
    // Year, month, day, hour, minute, second, millisecond.
    let mut f = [0i64; 7];
    for t in tokens {
        match t {
            Token::Year4 => f[0] = digits(b, &mut at, 4)?,
            Token::Month => f[1] = digits(b, &mut at, 2)?,
            Token::Day => f[2] = digits(b, &mut at, 2)?,
            Token::Hour => f[3] = digits(b, &mut at, 2)?,
            Token::Minute => f[4] = digits(b, &mut at, 2)?,
            Token::Second => f[5] = digits(b, &mut at, 2)?,
            Token::Millis => f[6] = digits(b, &mut at, 3)?,
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
    let invalid = || format!("`{s}`: not a valid calendar date or time");
    // Every field has at most four digits, so none overflows its jiff type.
    let narrow = |v: i64| i8::try_from(v).map_err(|_| invalid());
    // A leap second is read as the second before it, as jiff reads one in RFC 3339.
    let second = if f[5] == 60 { 59 } else { f[5] };
    let dt = DateTime::new(
        i16::try_from(f[0]).map_err(|_| invalid())?,
        narrow(f[1])?,
        narrow(f[2])?,
        narrow(f[3])?,
        narrow(f[4])?,
        narrow(second)?,
        i32::try_from(f[6] * 1_000_000).map_err(|_| invalid())?,
    )
    .map_err(|_| invalid())?;
    let offset = zone.offset_of_local(dt).map_err(|e| format!("`{s}`: {e}"))?;
    Ok(to_millis(dt, offset))
}

fn write_pattern(tokens: &[Token], ms: i64, offset: i64) -> String {
    let dt = from_millis(ms, offset);
    let mut out = String::new();
    for t in tokens {
        match t {
            Token::Year4 => out.push_str(&format!("{:04}", dt.year())),
            Token::Month => out.push_str(&format!("{:02}", dt.month())),
            Token::Day => out.push_str(&format!("{:02}", dt.day())),
            Token::Hour => out.push_str(&format!("{:02}", dt.hour())),
            Token::Minute => out.push_str(&format!("{:02}", dt.minute())),
            Token::Second => out.push_str(&format!("{:02}", dt.second())),
            Token::Millis => out.push_str(&format!("{:03}", millis_of(dt))),
            Token::Lit(ch) => out.push(*ch),
        }
    }
    out
}

/// A date-time with a time and an offset (`Z` or numeric), read by jiff; the fraction is cut to
/// milliseconds. jiff reads what RFC 3339 allows and a little more of ISO 8601 (`+0100`, a
/// trailing `[zone]` annotation), which a legacy backend may well send.
fn read_rfc3339(s: &str) -> Result<i64, String> {
    let bad = || format!("`{s}` is not an RFC 3339 date-time");
    let pieces = Pieces::parse(s).map_err(|_| bad())?;
    let time = pieces.time().ok_or_else(bad)?;
    let offset = pieces.to_numeric_offset().ok_or_else(bad)?;
    let dt = pieces.date().to_datetime(time);
    let dt = dt
        .with()
        .subsec_nanosecond(millis_of(dt) * 1_000_000)
        .build()
        .map_err(|_| bad())?;
    Ok(to_millis(dt, i64::from(offset.seconds())))
}

fn write_rfc3339(ms: i64, offset: i64) -> String {
    // RFC 3339 offsets are whole minutes, and historic zones are not (Paris was +00:09:21
    // until 1911): the local time is written for the offset as printed, so the text still
    // reads back to the same instant.
    let offset = offset - offset % 60;
    let dt = from_millis(ms, offset);
    let zone = match i32::try_from(offset)
        .ok()
        .and_then(|o| Offset::from_seconds(o).ok())
    {
        Some(o) if o != Offset::UTC => PiecesOffset::from(o),
        _ => PiecesOffset::Zulu,
    };
    let precision = if millis_of(dt) == 0 { None } else { Some(3) };
    let mut out = String::new();
    // Writing into a `String` cannot fail.
    let _ = DateTimePrinter::new()
        .precision(precision)
        .print_pieces(&Pieces::from(dt).with_offset(zone), &mut out);
    out
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
    fn an_offset_with_seconds_is_written_in_whole_minutes_and_reads_back_to_the_instant() {
        let paris_lmt = Zone::Fixed(561); // +00:09:21
        let ms = -1_855_958_961_001;
        let v = DateFormat::Rfc3339.write(ms, &paris_lmt);
        assert_eq!(v, json!("1911-03-10T23:59:38.999+00:09"));
        assert_eq!(DateFormat::Rfc3339.read(&v, &paris_lmt), Ok(ms));
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
    fn leap_days_exist_only_in_leap_years() {
        let f = "dd/MM/yyyy";
        for ok in ["29/02/2024", "29/02/2000", "29/02/0000"] {
            assert!(convert(json!(ok), f, "yyyy-MM-dd", 0).is_ok(), "{ok}");
        }
        for bad in [
            "29/02/2023",
            "29/02/1900",
            "29/02/2100",
            "31/04/2024",
            "00/01/2024",
            "01/13/2024",
        ] {
            assert!(convert(json!(bad), f, "yyyy-MM-dd", 0).is_err(), "{bad}");
        }
        assert!(DateFormat::Rfc3339
            .read(&json!("2023-02-29T00:00:00Z"), &Zone::Fixed(0))
            .is_err());
    }

    #[test]
    fn offsets_move_the_instant_and_the_written_wall_clock() {
        let utc = Zone::Fixed(0);
        let read = |s: &str| DateFormat::Rfc3339.read(&json!(s), &utc).unwrap();
        // One instant in three spellings, across a day and a year boundary.
        let ms = read("2024-01-01T00:30:00Z");
        assert_eq!(read("2024-01-01T02:00:00+01:30"), ms);
        assert_eq!(read("2023-12-31T19:30:00-05:00"), ms);
        assert_eq!(
            DateFormat::Rfc3339.write(ms, &Zone::Fixed(-5 * 3600)),
            json!("2023-12-31T19:30:00-05:00")
        );
        assert_eq!(
            convert(json!(ms), "epoch_millis", "yyyy-MM-dd HH:mm", 14 * 3600).unwrap(),
            json!("2024-01-01 14:30")
        );
        // Milliseconds are kept; finer digits are cut, before 1970 as after.
        assert_eq!(read("1969-12-31T23:59:59.5007Z"), -500);
        assert_eq!(
            DateFormat::Rfc3339.write(-500, &utc),
            json!("1969-12-31T23:59:59.500Z")
        );
        assert!(DateFormat::Rfc3339
            .read(&json!("2024-01-01T00:30:00"), &utc)
            .is_err());
        assert!(DateFormat::Rfc3339.read(&json!("2024-01-01Z"), &utc).is_err());
    }

    #[test]
    fn a_leap_second_reads_as_the_second_before_it() {
        let utc = Zone::Fixed(0);
        let before = DateFormat::Rfc3339.read(&json!("2016-12-31T23:59:59Z"), &utc);
        assert_eq!(
            DateFormat::Rfc3339.read(&json!("2016-12-31T23:59:60Z"), &utc),
            before
        );
        let f = DateFormat::parse("yyyyMMddHHmmss").unwrap();
        assert_eq!(f.read(&json!("20161231235960"), &utc), before);
        assert!(f.read(&json!("20161231235961"), &utc).is_err());
    }

    #[test]
    fn bad_patterns_and_offsets_are_refused() {
        assert!(DateFormat::parse("yy-MM-dd").is_err());
        assert!(DateFormat::parse("HH:mm").is_err());
        assert!(parse_offset("Europe/Paris").is_err());
        assert!(parse_zone("Europe/Paris").is_ok());
    }
}
