//! 3Dolphins client: bearer token (static, or from `POST /graph/auth` and renewed before
//! `expireAt` and after a 401), `GET /graph/contacts/all` paging, rate limit and retries.

use std::time::Duration;

use backon::Retryable;
use secrecy::{ExposeSecret, SecretString};
use serde_json::value::RawValue;
use tracing::{debug, warn};

use crate::config::{Secret, SourceAuth, SourceSettings};
use crate::net::{self, Bearer, Gate, Refusal, RetryPolicy};

/// Why a 3Dolphins call failed. `is_transient` says whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("3Dolphins unreachable: {0}")]
    Transport(String),
    #[error("3Dolphins answered HTTP {status}: {body}")]
    Status {
        status: u16,
        body: String,
        retry_after: Option<Duration>,
    },
    #[error("3Dolphins refused the credentials: {0}")]
    Auth(String),
    #[error("3Dolphins sent an unreadable response: {0}")]
    BadResponse(String),
    /// The page makes no sense as paging (a `nextIndex` out of range): asking again cannot help.
    #[error("3Dolphins sent an impossible page: {0}")]
    BadPaging(String),
    #[error("3Dolphins answer refused: {0}")]
    TooLarge(String),
}

impl SourceError {
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport(_) | Self::BadResponse(_) => true,
            Self::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
            Self::Auth(_) | Self::BadPaging(_) | Self::TooLarge(_) => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    fn transport(error: reqwest::Error) -> Self {
        Self::Transport(net::describe_reqwest(error))
    }

    fn body(error: net::BodyError) -> Self {
        match error {
            net::BodyError::Transport(e) => Self::transport(e),
            too_large => Self::TooLarge(too_large.to_string()),
        }
    }
}

/// One page of the contact list: the answer's text, kept whole, and where each record lies
/// in it, so each record can be hashed, parsed and quarantined on its own without a copy.
#[derive(Debug)]
pub struct Page {
    text: String,
    records: Vec<PageRecord>,
    pub has_more: bool,
    pub next_index: Option<u64>,
    pub total: Option<u64>,
}

#[derive(Debug, Clone)]
struct PageRecord {
    range: std::ops::Range<usize>,
    /// The record held bytes that are not UTF-8; its text has U+FFFD in their place.
    invalid_utf8: bool,
}

/// One record of a page, as the source sent it.
#[derive(Debug, Clone, Copy)]
pub struct SourceRecord<'a> {
    pub raw: &'a str,
    pub invalid_utf8: bool,
}

impl Page {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn records(&self) -> impl Iterator<Item = SourceRecord<'_>> {
        self.records.iter().map(|r| SourceRecord {
            raw: &self.text[r.range.clone()],
            invalid_utf8: r.invalid_utf8,
        })
    }
}

/// Used when `expireAt` is missing or unreadable: short enough that a wrong guess costs one
/// 401 and one renewal.
const FALLBACK_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// A login answer is a token and a date: anything longer is refused before it is parsed.
const LOGIN_MAX_BODY: usize = 64 << 10;

/// Offsets are stored as SQLite integers: a `nextIndex` above this would wrap negative.
const MAX_OFFSET: u64 = i64::MAX as u64;

pub struct DolphinsClient {
    http: reqwest::Client,
    base: String,
    /// A username and password are traded for a token at `POST /graph/auth`.
    token: Bearer<(String, Secret)>,
    gate: Gate,
    retry: RetryPolicy,
    max_body: usize,
}

/// A 3Dolphins answer: a success's body, read whole up to a limit, or enough of a refusal to
/// quote (a refusal's body is never read whole).
enum Reply {
    Success(Vec<u8>),
    Refused {
        status: u16,
        retry_after: Option<Duration>,
        text: String,
    },
}

impl Refusal for Reply {
    fn status(&self) -> u16 {
        match self {
            Self::Success(_) => 200,
            Self::Refused { status, .. } => *status,
        }
    }
}

impl Reply {
    /// The body of a success, or the classified error for anything else.
    fn success(self) -> Result<Vec<u8>, SourceError> {
        match self {
            Self::Success(body) => Ok(body),
            Self::Refused {
                status,
                retry_after,
                text,
            } => Err(SourceError::Status {
                status,
                body: net::snippet(&text),
                retry_after,
            }),
        }
    }
}

impl DolphinsClient {
    pub fn new(
        settings: &SourceSettings,
        http: reqwest::Client,
        retry: RetryPolicy,
        max_body: usize,
    ) -> Self {
        Self {
            http,
            max_body,
            base: settings.base_url.as_str().trim_end_matches('/').to_owned(),
            token: match &settings.auth {
                SourceAuth::Token(token) => Bearer::Fixed(token.into()),
                SourceAuth::Login { username, password } => {
                    Bearer::obtained("3dolphins", (username.clone(), password.clone()))
                }
            },
            gate: Gate::source("3dolphins", settings.requests_per_second, max_body),
            retry,
        }
    }

    /// One page starting at `start`, retried on transient failures.
    pub async fn fetch_page(&self, start: u64, count: u32) -> Result<Page, SourceError> {
        (|| self.fetch_page_once(start, count))
            .retry(self.retry)
            .when(SourceError::is_transient)
            .adjust(|e, delay| delay.map(|d| e.retry_after().unwrap_or(d)))
            .notify(|e, delay| warn!(error = %crate::telemetry::mask_pii(&e.to_string()), retry_in = ?delay, start, "3Dolphins page failed, retrying"))
            .await
    }

    async fn fetch_page_once(&self, start: u64, count: u32) -> Result<Page, SourceError> {
        let url = format!("{}/graph/contacts/all", self.base);
        let query = [("start", start.to_string()), ("count", count.to_string())];
        let reply = self
            .token
            .send(
                |(username, password)| self.login(username, password),
                |token| {
                    let request = self
                        .http
                        .get(&url)
                        .query(&query)
                        .bearer_auth(token.expose_secret());
                    self.send(request, self.max_body)
                },
            )
            .await?;
        match reply {
            // A 401 even with a fresh login means the credentials themselves are refused.
            Reply::Refused {
                status: 401, text, ..
            } => Err(SourceError::Auth(format!(
                "HTTP 401: {}",
                net::snippet(&text)
            ))),
            reply => parse_page(reply.success()?),
        }
    }

    /// `POST /graph/auth`: a token and how long it lives.
    async fn login(
        &self,
        username: &str,
        password: &Secret,
    ) -> Result<(SecretString, Duration), SourceError> {
        let request = self
            .http
            .post(format!("{}/graph/auth", self.base))
            .json(&serde_json::json!({"username": username, "password": password.expose_secret()}));
        let reply = self
            .send(request, LOGIN_MAX_BODY.min(self.max_body))
            .await?;
        // Any refusal, whatever its shape, is about the credentials: retrying cannot help.
        if let Reply::Refused {
            status: status @ (400 | 401 | 403),
            text,
            ..
        } = &reply
        {
            return Err(SourceError::Auth(format!(
                "login answered HTTP {status}: {}",
                net::snippet(text)
            )));
        }
        let (token, lifetime) = parse_login(&reply.success()?)?;
        debug!(lifetime = ?lifetime, "logged in to 3Dolphins");
        Ok((token, lifetime))
    }

    /// Send through the gate: a success's body up to `max` bytes, a refusal's first few KiB.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        max: usize,
    ) -> Result<Reply, SourceError> {
        self.gate
            .send_with(request, |response| async move {
                if response.status().is_success() {
                    return Ok(Reply::Success(net::read_body(response, max).await?));
                }
                Ok(Reply::Refused {
                    status: response.status().as_u16(),
                    retry_after: net::parse_retry_after(response.headers()),
                    text: error_text(response).await,
                })
            })
            .await
            .map_err(SourceError::body)
    }
}

/// `expireAt` is a Java `ZonedDateTime`: RFC 3339 followed by a `[Region/City]` suffix.
fn parse_expire_at(text: &str) -> Option<time::OffsetDateTime> {
    let rfc3339 = text.split('[').next().unwrap_or(text).trim();
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339).ok()
}

/// The token and its lifetime from a login answer. A 200 without a usable token is a refusal
/// dressed as success: it is reported as one, not retried.
fn parse_login(body: &[u8]) -> Result<(SecretString, Duration), SourceError> {
    let wire: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| SourceError::BadResponse(format!("login response: {e}")))?;
    let token = wire
        .get("token")
        .and_then(serde_json::Value::as_str)
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| SourceError::Auth("login answered without a token".into()))?;
    let lifetime = wire
        .get("expireAt")
        .and_then(serde_json::Value::as_str)
        .and_then(parse_expire_at)
        .map(|expires| {
            let left = expires - time::OffsetDateTime::now_utc();
            Duration::try_from(left).unwrap_or_default()
        })
        .unwrap_or(FALLBACK_TOKEN_LIFETIME);
    Ok((SecretString::from(token.to_owned()), lifetime))
}

/// Enough of an error answer to quote: a refusal's body is never read whole.
async fn error_text(response: reqwest::Response) -> String {
    const ERROR_BODY: usize = 4 << 10;
    match net::read_body(response, ERROR_BODY).await {
        Ok(body) => String::from_utf8_lossy(&body).into_owned(),
        Err(e) => e.describe(),
    }
}

/// Parse a page. Invalid UTF-8 marks only the records it lies in; fields the pass does not
/// need never fail a page; numbers sent as strings or integral floats are read as numbers.
pub fn parse_page(body: Vec<u8>) -> Result<Page, SourceError> {
    let (text, invalid_at) = decode_lossy(body);
    // One reading of the text gives the envelope's fields and where each record lies.
    let seed = EnvelopeSeed(RecordRanges {
        base: text.as_ptr() as usize,
        invalid_at: &invalid_at,
    });
    let mut reader = serde_json::Deserializer::from_str(&text);
    let envelope = serde::de::DeserializeSeed::deserialize(seed, &mut reader)
        .and_then(|envelope| reader.end().map(|()| envelope))
        .map_err(|e| SourceError::BadResponse(format!("contact list: {e}")))?;
    if let Some(status) = envelope
        .status
        .and_then(|s| serde_json::from_str::<&str>(s.get()).ok())
        .filter(|s| !s.eq_ignore_ascii_case("success"))
    {
        return Err(SourceError::BadResponse(format!(
            "contact list status {:?}",
            net::snippet(status)
        )));
    }
    let records = match envelope.data {
        Some(Data::Records(records)) => records,
        Some(Data::TooMany) => {
            return Err(SourceError::TooLarge(format!(
                "contact list: more than {MAX_PAGE_RECORDS} records in one page"
            )));
        }
        Some(Data::NotArray) | None => {
            return Err(SourceError::BadResponse(
                "contact list has no data array".into(),
            ));
        }
    };
    let next_index = match envelope.next_index.map(lenient_u64) {
        None | Some(Lenient::Null) => None,
        Some(Lenient::Number(n)) if n <= MAX_OFFSET => Some(n),
        Some(Lenient::Number(_) | Lenient::Unreadable) => {
            let raw = envelope.next_index.map(RawValue::get).unwrap_or_default();
            return Err(SourceError::BadPaging(format!(
                "nextIndex {} is not an offset from 0 to {MAX_OFFSET}",
                net::snippet(raw)
            )));
        }
    };
    let total = match envelope.total_results.map(lenient_u64) {
        Some(Lenient::Number(n)) => Some(n),
        _ => None,
    };
    // Without a readable hasMore, keep paging until a page comes back empty.
    let has_more = envelope
        .has_more
        .and_then(lenient_bool)
        .unwrap_or(!records.is_empty());
    Ok(Page {
        text,
        records,
        has_more,
        next_index,
        total,
    })
}

/// Most records one page may hold. A realistic contact takes hundreds of bytes, so a page
/// under `http.max_body` holds far fewer; millions of tiny elements would cost more in
/// bookkeeping than the body itself.
const MAX_PAGE_RECORDS: usize = 100_000;

/// Where each element of the `data` array lies in the page text, and whether invalid UTF-8
/// was replaced inside it; refused past [`MAX_PAGE_RECORDS`].
#[derive(Clone, Copy)]
struct RecordRanges<'a> {
    base: usize,
    /// Sorted positions of U+FFFD that stand for invalid bytes.
    invalid_at: &'a [usize],
}

/// What the envelope's `data` member held.
enum Data {
    Records(Vec<PageRecord>),
    /// An array of more than [`MAX_PAGE_RECORDS`] elements.
    TooMany,
    /// Anything but an array.
    NotArray,
}

impl<'de> serde::de::DeserializeSeed<'de> for RecordRanges<'_> {
    type Value = Data;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for RecordRanges<'_> {
    type Value = Data;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of records")
    }

    // Any other JSON value is read (the page must still be valid JSON) and reported as no
    // array, which the caller refuses after looking at `status`.
    fn visit_bool<E>(self, _: bool) -> Result<Data, E> {
        Ok(Data::NotArray)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Data, E> {
        Ok(Data::NotArray)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Data, E> {
        Ok(Data::NotArray)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Data, E> {
        Ok(Data::NotArray)
    }

    fn visit_str<E>(self, _: &str) -> Result<Data, E> {
        Ok(Data::NotArray)
    }

    fn visit_unit<E>(self) -> Result<Data, E> {
        Ok(Data::NotArray)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Data, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(Data::NotArray)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut records = Vec::new();
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            if records.len() == MAX_PAGE_RECORDS {
                // Read to the end (the page must be valid JSON) without keeping anything.
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                return Ok(Data::TooMany);
            }
            let start = raw.get().as_ptr() as usize - self.base;
            let range = start..start + raw.get().len();
            // The first replacement at or after the record's start says whether one lies
            // inside it, in log time however many there are.
            let first = self.invalid_at.partition_point(|at| *at < range.start);
            let invalid_utf8 = self.invalid_at.get(first).is_some_and(|at| *at < range.end);
            records.push(PageRecord {
                range,
                invalid_utf8,
            });
        }
        Ok(Data::Records(records))
    }
}

/// The page envelope, each field kept raw to be read leniently, and the records of `data`.
/// Later duplicates win, as in most JSON readers; unknown fields are skipped.
#[derive(Default)]
struct Envelope<'a> {
    status: Option<&'a RawValue>,
    data: Option<Data>,
    has_more: Option<&'a RawValue>,
    next_index: Option<&'a RawValue>,
    total_results: Option<&'a RawValue>,
}

/// Reads an [`Envelope`], its records located by the [`RecordRanges`] it carries.
struct EnvelopeSeed<'a>(RecordRanges<'a>);

impl<'de> serde::de::DeserializeSeed<'de> for EnvelopeSeed<'_> {
    type Value = Envelope<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        struct Visit<'a>(RecordRanges<'a>);
        impl<'de> serde::de::Visitor<'de> for Visit<'_> {
            type Value = Envelope<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Envelope<'de>, A::Error> {
                let mut envelope = Envelope::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == "data" {
                        envelope.data = Some(map.next_value_seed(self.0)?);
                        continue;
                    }
                    let value: &'de RawValue = map.next_value()?;
                    let slot = match key.as_ref() {
                        "status" => &mut envelope.status,
                        "hasMore" => &mut envelope.has_more,
                        "nextIndex" => &mut envelope.next_index,
                        "totalResults" => &mut envelope.total_results,
                        _ => continue,
                    };
                    *slot = Some(value);
                }
                Ok(envelope)
            }
        }
        deserializer.deserialize_map(Visit(self.0))
    }
}

enum Lenient {
    Null,
    Number(u64),
    Unreadable,
}

/// A count or offset: an integer, an integral float, or either as a string ("254", "254.0").
fn lenient_u64(raw: &RawValue) -> Lenient {
    let number = match serde_json::from_str::<serde_json::Value>(raw.get()) {
        Ok(serde_json::Value::Null) => return Lenient::Null,
        Ok(serde_json::Value::Number(n)) => n,
        Ok(serde_json::Value::String(text)) => match text.trim().parse::<serde_json::Number>() {
            Ok(n) => n,
            Err(_) => return Lenient::Unreadable,
        },
        _ => return Lenient::Unreadable,
    };
    if let Some(n) = number.as_u64() {
        return Lenient::Number(n);
    }
    match number.as_f64() {
        // 2^64 as a float is past u64; `as` would saturate, so compare first.
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 18_446_744_073_709_551_616.0 => {
            Lenient::Number(f as u64)
        }
        Some(f) if f.fract() == 0.0 && f > 0.0 => Lenient::Number(u64::MAX),
        _ => Lenient::Unreadable,
    }
}

/// `true`/`false`, also as strings or 0/1; anything else is unknown.
fn lenient_bool(raw: &RawValue) -> Option<bool> {
    match serde_json::from_str::<serde_json::Value>(raw.get()).ok()? {
        serde_json::Value::Bool(b) => Some(b),
        serde_json::Value::String(text) => text.trim().to_ascii_lowercase().parse().ok(),
        serde_json::Value::Number(n) => match n.as_u64()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        },
        _ => None,
    }
}

/// The body as text without a copy when it is UTF-8; otherwise with U+FFFD for each invalid
/// sequence, and where (in the text) each replacement lies.
fn decode_lossy(body: Vec<u8>) -> (String, Vec<usize>) {
    match String::from_utf8(body) {
        Ok(text) => (text, Vec::new()),
        Err(e) => {
            let body = e.into_bytes();
            let mut text = String::with_capacity(body.len() + 16);
            let mut invalid_at = Vec::new();
            for chunk in body.utf8_chunks() {
                text.push_str(chunk.valid());
                if !chunk.invalid().is_empty() {
                    invalid_at.push(text.len());
                    text.push(char::REPLACEMENT_CHARACTER);
                }
            }
            (text, invalid_at)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expire_at_zone_suffix_is_stripped() {
        let t = parse_expire_at("2020-10-22T17:40:55.372+07:00[Asia/Jakarta]").unwrap();
        assert_eq!(t.unix_timestamp(), 1_603_363_255);
        assert!(parse_expire_at("2020-10-22T10:40:55Z").is_some());
        assert!(parse_expire_at("tomorrow").is_none());
    }

    #[test]
    fn page_without_has_more_continues_until_empty() {
        let page = parse_page(br#"{"status":"success","data":[{"id":"a"}]}"#.to_vec()).unwrap();
        assert!(page.has_more);
        let page = parse_page(br#"{"status":"success","data":[]}"#.to_vec()).unwrap();
        assert!(!page.has_more);
    }

    #[test]
    fn unreadable_pages_are_classified() {
        for body in [
            &b"<html>"[..],
            br#"{"status":"error","data":[]}"#,
            br#"{"status":"success"}"#,
        ] {
            let err = parse_page(body.to_vec()).unwrap_err();
            assert!(matches!(err, SourceError::BadResponse(_)), "{err}");
        }
    }

    #[test]
    fn one_reading_finds_the_records_and_refuses_what_is_not_an_array() {
        let page = parse_page(
            br#"{"data":{"x":[1]},"status":"success","data":[{"id":"a"}, {"id":"b"}],"hasMore":false}"#
                .to_vec(),
        )
        .unwrap();
        let raws: Vec<&str> = page.records().map(|r| r.raw).collect();
        assert_eq!(
            raws,
            [r#"{"id":"a"}"#, r#"{"id":"b"}"#],
            "the later data wins"
        );
        assert!(!page.has_more);
        for data in ["null", "{\"a\":[1]}", "\"[]\"", "3", "true"] {
            let body = format!(r#"{{"status":"success","data":{data}}}"#);
            let err = parse_page(body.into_bytes()).unwrap_err();
            assert!(err.to_string().contains("no data array"), "{data}: {err}");
        }
        let err = parse_page(br#"{"status":"error","data":7}"#.to_vec()).unwrap_err();
        assert!(
            err.to_string().contains("status"),
            "status is judged first: {err}"
        );
        let err = parse_page(br#"{"status":"success","data":[]} x"#.to_vec()).unwrap_err();
        assert!(matches!(err, SourceError::BadResponse(_)), "{err}");
    }

    #[test]
    fn a_page_past_the_record_limit_is_too_large_after_being_read_whole() {
        let data = vec!["1"; MAX_PAGE_RECORDS + 1].join(",");
        let body = format!(r#"{{"status":"success","data":[{data}]}}"#);
        let err = parse_page(body.into_bytes()).unwrap_err();
        assert!(matches!(err, SourceError::TooLarge(_)), "{err}");
        let broken = format!(r#"{{"status":"success","data":[{data},}}"#);
        let err = parse_page(broken.into_bytes()).unwrap_err();
        assert!(matches!(err, SourceError::BadResponse(_)), "{err}");
    }

    #[test]
    fn transient_classification() {
        let status = |status| SourceError::Status {
            status,
            body: String::new(),
            retry_after: None,
        };
        assert!(
            status(429).is_transient() && status(503).is_transient() && status(408).is_transient()
        );
        assert!(!status(400).is_transient() && !status(404).is_transient());
        assert!(!SourceError::Auth("x".into()).is_transient());
    }
}
