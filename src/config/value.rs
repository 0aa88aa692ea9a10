//! Value parsers the sections deserialize with (`deserialize_with`): URLs, rates, ranges,
//! durations, sizes, regions, listen addresses, tag lists. Each error becomes a key error.

use std::net::SocketAddr;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};
use url::Url;

use super::ConfigError;
use crate::domain::Region;

/// An `http://` or `https://` base URL without query or fragment (a query could carry a key
/// into logs).
pub fn url<'de, D: Deserializer<'de>>(d: D) -> Result<Url, D::Error> {
    parse_url(&String::deserialize(d)?).map_err(D::Error::custom)
}

pub fn optional_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Url>, D::Error> {
    url(d).map(Some)
}

fn parse_url(value: &str) -> Result<Url, String> {
    let url = Url::parse(value.trim()).map_err(|e| format!("{value:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http:// or https:// URL".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".to_owned());
    }
    Ok(url)
}

/// `serde(default)` for keys that are on unless written otherwise (`enabled`).
pub fn yes() -> bool {
    true
}

/// A destination's default base URL, checked like one written in the file.
pub fn default_url(key: &str, value: &str) -> Result<Url, ConfigError> {
    parse_url(value).map_err(|message| ConfigError::key(key, message))
}

/// Requests per second: above 0 and at most 100,000.
pub fn rate<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(d)?;
    if value.is_finite() && value > 0.0 && value <= 100_000.0 {
        Ok(value)
    } else {
        Err(D::Error::custom(format!(
            "must be a rate above 0 and at most 100000, not {value}"
        )))
    }
}

/// A count between `MIN` and `MAX`.
pub fn range<'de, D: Deserializer<'de>, const MIN: u32, const MAX: u32>(
    d: D,
) -> Result<u32, D::Error> {
    let value = u32::deserialize(d)?;
    if (MIN..=MAX).contains(&value) {
        Ok(value)
    } else {
        Err(D::Error::custom(format!(
            "must be between {MIN} and {MAX}, not {value}"
        )))
    }
}

/// A humantime duration (`"60s"`, `"5m"`) longer than zero.
pub fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let value: Duration = humantime_serde::deserialize(d)?;
    if value.is_zero() {
        Err(D::Error::custom("must be longer than zero"))
    } else {
        Ok(value)
    }
}

/// A byte size between 1 KiB and 1 GiB: `"16MiB"`, `"512KiB"`, or a number of bytes (TOML
/// integer or string). Below, no page of contacts fits; above, the cap no longer protects a
/// 192 MiB container.
pub fn size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Bytes(u64),
        Text(String),
    }
    const UNITS: [(&str, u64); 7] = [
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("KB", 1_000),
        ("B", 1),
    ];
    let bytes = match Written::deserialize(d)? {
        Written::Bytes(n) => n,
        Written::Text(text) => {
            let text = text.trim();
            let (number, unit) = UNITS
                .iter()
                .find_map(|(suffix, unit)| text.strip_suffix(suffix).map(|n| (n.trim(), *unit)))
                .unwrap_or((text, 1));
            number
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(unit))
                .ok_or_else(|| {
                    D::Error::custom(format!(
                        "{text:?} is not a size (like \"16MiB\", \"512KiB\" or bytes)"
                    ))
                })?
        }
    };
    if !(1 << 10..=1 << 30).contains(&bytes) {
        return Err(D::Error::custom("must be between 1KiB and 1GiB"));
    }
    Ok(bytes as usize)
}

/// An ISO 3166 region code, any case.
pub fn region<'de, D: Deserializer<'de>>(d: D) -> Result<Region, D::Error> {
    let value = String::deserialize(d)?;
    value
        .trim()
        .to_ascii_uppercase()
        .parse::<Region>()
        .map_err(|_| {
            D::Error::custom(format!(
                "{value:?} is not an ISO 3166 region code such as \"ID\""
            ))
        })
}

pub fn serialize_region<S: Serializer>(region: &Region, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(region.as_ref())
}

/// A socket address, or `""` for none.
pub fn listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let value = String::deserialize(d)?;
    if value.trim().is_empty() {
        return Ok(None);
    }
    value.trim().parse().map(Some).map_err(|_| {
        D::Error::custom(format!(
            "{value:?} is not an address such as \"127.0.0.1:9464\" (or \"\" to disable)"
        ))
    })
}

pub fn serialize_listen<S: Serializer>(
    listen: &Option<SocketAddr>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match listen {
        Some(addr) => s.collect_str(addr),
        None => s.serialize_str(""),
    }
}

/// A TOML list, or (from the environment, where every value is a string) one string split on
/// commas: `CONTACT_SYNC__OMI__TAGS=a,b`.
pub fn list_or_comma_separated<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrText {
        List(Vec<String>),
        Text(String),
    }
    Ok(match ListOrText::deserialize(d)? {
        ListOrText::List(list) => list,
        ListOrText::Text(text) if text.trim().is_empty() => Vec::new(),
        ListOrText::Text(text) => text.split(',').map(|t| t.trim().to_owned()).collect(),
    })
}
