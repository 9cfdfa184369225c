//! Value types that several config sections share: byte sizes and status patterns.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum StatusPattern {
    Code(u16),
    Class(String),
}

impl StatusPattern {
    pub fn matches(&self, status: u16) -> bool {
        match self {
            Self::Code(c) => *c == status,
            Self::Class(c) => {
                c.len() == 3
                    && c.ends_with("xx")
                    && c.as_bytes()[0].is_ascii_digit()
                    && u16::from(c.as_bytes()[0] - b'0') == status / 100
            }
        }
    }

    pub fn valid(&self) -> bool {
        match self {
            Self::Code(c) => (100..=599).contains(c),
            Self::Class(c) => matches!(c.as_str(), "1xx" | "2xx" | "3xx" | "4xx" | "5xx"),
        }
    }
}

/// A byte count written as a number or with a unit: `16384`, `64KiB`, `10MiB`, `1GiB`, `10MB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a byte size such as 16384, 64KiB or 10MiB")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a byte size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_byte_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

pub fn parse_byte_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a byte size (try 16384, 64KiB, 10MiB)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit `{other}` (use B, KB, MB, GB, KiB, MiB or GiB)"
            ))
        }
    };
    n.checked_mul(mult).ok_or_else(|| format!("`{s}` is too large"))
}

/// A percentage written as a number (`5`, `2.5`) or with its sign (`5%`); the range is checked
/// when the config is compiled, with the key's line.
pub fn percent<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = f64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a percentage such as 5% or 2.5")
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
            parse_percent(v).map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

pub fn parse_percent(s: &str) -> Result<f64, String> {
    let t = s.trim();
    t.strip_suffix('%')
        .unwrap_or(t)
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|p| p.is_finite())
        .ok_or_else(|| format!("`{s}` is not a percentage (write 5% or 2.5%)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_read_with_or_without_their_sign() {
        assert_eq!(parse_percent("5%"), Ok(5.0));
        assert_eq!(parse_percent(" 2.5 % "), Ok(2.5));
        assert_eq!(parse_percent("100"), Ok(100.0));
        assert!(
            parse_percent("five").is_err() && parse_percent("%").is_err() && parse_percent("NaN%").is_err()
        );
    }
}
