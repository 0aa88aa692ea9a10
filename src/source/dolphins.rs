//! 3Dolphins client: bearer token (static, or from `POST /graph/auth` and renewed before
//! `expireAt` and after a 401), `GET /graph/contacts/all` paging, rate limit and retries.

use std::time::Duration;

use backon::Retryable;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::value::RawValue;
use tracing::{debug, warn};

use crate::config::{SourceAuth, SourceSettings};
use crate::net::{self, Limiter, RetryPolicy, TokenCache};

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
}

impl SourceError {
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport(_) | Self::BadResponse(_) => true,
            Self::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
            Self::Auth(_) => false,
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
}

/// One page of the contact list, records kept as raw JSON so each can be hashed, parsed and
/// quarantined on its own.
#[derive(Debug)]
pub struct Page {
    pub records: Vec<Box<RawValue>>,
    pub has_more: bool,
    pub next_index: Option<u64>,
    pub total: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePage {
    status: Option<String>,
    data: Option<Vec<Box<RawValue>>>,
    has_more: Option<bool>,
    next_index: Option<u64>,
    total_results: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireToken {
    token: String,
    expire_at: Option<String>,
}

/// Used when `expireAt` is missing or unreadable: short enough that a wrong guess costs one
/// 401 and one renewal.
const FALLBACK_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

pub struct DolphinsClient {
    http: reqwest::Client,
    base: String,
    auth: SourceAuth,
    token: TokenCache,
    limiter: Limiter,
    retry: RetryPolicy,
}

impl DolphinsClient {
    pub fn new(settings: &SourceSettings, http: reqwest::Client, retry: RetryPolicy) -> Self {
        Self {
            http,
            base: settings.base_url.as_str().trim_end_matches('/').to_owned(),
            auth: settings.auth.clone(),
            token: TokenCache::new("3dolphins"),
            limiter: net::limiter(settings.requests_per_second),
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
        let mut renewed = false;
        loop {
            let token = self.bearer().await?;
            self.limiter.until_ready().await;
            let response = self
                .http
                .get(&url)
                .query(&query)
                .bearer_auth(token.expose_secret())
                .send()
                .await
                .map_err(SourceError::transport)?;
            if response.status() == reqwest::StatusCode::UNAUTHORIZED {
                let body = response.text().await.unwrap_or_default();
                // A 401 with a fresh login means the credentials themselves are refused.
                if renewed || matches!(self.auth, SourceAuth::Token(_)) {
                    return Err(SourceError::Auth(format!(
                        "HTTP 401: {}",
                        net::snippet(&body)
                    )));
                }
                debug!("3Dolphins answered 401, renewing the token");
                self.token.forget(&token).await;
                renewed = true;
                continue;
            }
            let body = read_success(response).await?;
            return parse_page(&body);
        }
    }

    /// The token to send: the static one, or a logged-in one renewed ahead of its expiry.
    async fn bearer(&self) -> Result<SecretString, SourceError> {
        let (username, password) = match &self.auth {
            SourceAuth::Token(token) => return Ok(token.clone()),
            SourceAuth::Login { username, password } => (username, password),
        };
        self.token.get(|| self.login(username, password)).await
    }

    /// `POST /graph/auth`: a token and how long it lives.
    async fn login(
        &self,
        username: &str,
        password: &SecretString,
    ) -> Result<(SecretString, Duration), SourceError> {
        self.limiter.until_ready().await;
        let response = self
            .http
            .post(format!("{}/graph/auth", self.base))
            .json(&serde_json::json!({"username": username, "password": password.expose_secret()}))
            .send()
            .await
            .map_err(SourceError::transport)?;
        if matches!(response.status().as_u16(), 401 | 403) {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            return Err(SourceError::Auth(format!(
                "login answered HTTP {status}: {}",
                net::snippet(&body)
            )));
        }
        let body = read_success(response).await?;
        let wire: WireToken = serde_json::from_slice(&body)
            .map_err(|e| SourceError::BadResponse(format!("login response: {e}")))?;
        if wire.token.trim().is_empty() {
            return Err(SourceError::BadResponse(
                "login response has an empty token".into(),
            ));
        }
        let lifetime = wire
            .expire_at
            .as_deref()
            .and_then(parse_expire_at)
            .map(|expires| {
                let left = expires - time::OffsetDateTime::now_utc();
                Duration::try_from(left).unwrap_or_default()
            })
            .unwrap_or(FALLBACK_TOKEN_LIFETIME);
        debug!(lifetime = ?lifetime, "logged in to 3Dolphins");
        Ok((SecretString::from(wire.token), lifetime))
    }
}

/// `expireAt` is a Java `ZonedDateTime`: RFC 3339 followed by a `[Region/City]` suffix.
fn parse_expire_at(text: &str) -> Option<time::OffsetDateTime> {
    let rfc3339 = text.split('[').next().unwrap_or(text).trim();
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339).ok()
}

/// The body of a 2xx answer, or the classified error for anything else.
async fn read_success(response: reqwest::Response) -> Result<bytes::Bytes, SourceError> {
    let status = response.status();
    if status.is_success() {
        return response.bytes().await.map_err(SourceError::transport);
    }
    let retry_after = net::parse_retry_after(response.headers());
    let body = response.text().await.unwrap_or_default();
    Err(SourceError::Status {
        status: status.as_u16(),
        body: net::snippet(&body),
        retry_after,
    })
}

fn parse_page(body: &[u8]) -> Result<Page, SourceError> {
    let wire: WirePage = serde_json::from_slice(body)
        .map_err(|e| SourceError::BadResponse(format!("contact list: {e}")))?;
    if let Some(status) = wire.status.as_deref().filter(|s| *s != "success") {
        return Err(SourceError::BadResponse(format!(
            "contact list status {:?}",
            net::snippet(status)
        )));
    }
    let records = wire
        .data
        .ok_or_else(|| SourceError::BadResponse("contact list has no data array".into()))?;
    // Without hasMore, keep paging until a page comes back empty.
    let has_more = wire.has_more.unwrap_or(!records.is_empty());
    Ok(Page {
        records,
        has_more,
        next_index: wire.next_index,
        total: wire.total_results,
    })
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
        let page = parse_page(br#"{"status":"success","data":[{"id":"a"}]}"#).unwrap();
        assert!(page.has_more);
        let page = parse_page(br#"{"status":"success","data":[]}"#).unwrap();
        assert!(!page.has_more);
    }

    #[test]
    fn unreadable_pages_are_classified() {
        for body in [
            &b"<html>"[..],
            br#"{"status":"error","data":[]}"#,
            br#"{"status":"success"}"#,
        ] {
            let err = parse_page(body).unwrap_err();
            assert!(matches!(err, SourceError::BadResponse(_)), "{err}");
        }
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
