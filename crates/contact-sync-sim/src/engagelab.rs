//! EngageLab MA stand-in on a [`SimServer`], faithful to EngageLab as docs/apis/engagelab.md
//! describes it: Basic auth, `register` (identity → EUID) and `contact` (contact info per EUID)
//! with their codes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Map, Value, json};

use crate::server::{ServerOptions, SimServer};

/// The `code` values of EngageLab answers, as documented.
pub mod code {
    pub const SUCCESS: i64 = 0;
    pub const INTERNAL_ERROR: i64 = -1;
    pub const EUID_EMPTY: i64 = 40007;
    pub const AUTH_FAILED: i64 = 40050;
    pub const INVALID_PROJECT: i64 = 50031;
    pub const PROJECT_NOT_FOUND: i64 = 50034;
    pub const DATA_SOURCE_NOT_FOUND: i64 = 50074;
    pub const INVALID_PARAMETER: i64 = 55004;
    /// Seen in one copy of the documents only.
    pub const CONTACT_EXISTS: i64 = 55014;
    pub const TOO_MANY_IDENTITIES: i64 = 55101;
    pub const INVALID_ATTRIBUTE_NAME: i64 = 55102;
    pub const EMPTY_ATTRIBUTE_VALUE: i64 = 55103;
    pub const IDENTITY_TOO_LONG: i64 = 55105;
    pub const UNSUPPORTED_IDENTITY_NAME: i64 = 55106;
    pub const EMPTY_IDENTITY_VALUE: i64 = 55107;
    pub const INVALID_EUID: i64 = 55108;
}

/// The EUID of the documents' example; ours count up from it.
const FIRST_EUID: u64 = 10_362_473;
const MAX_IDENTITY_VALUES: usize = 100;
const MAX_IDENTITY_CHARS: usize = 256;
const CONTACT_ATTRIBUTES: [&str; 2] = ["mobile_phone", "email"];

/// How to start an [`EngagelabSim`].
#[derive(Clone, Debug)]
pub struct EngagelabOptions {
    pub api_key: String,
    pub api_secret: String,
    /// Server-side rate limit in requests per second.
    pub rate_limit: Option<f64>,
    pub bind: SocketAddr,
    /// Keep a log of requests; turn off for long benchmarks.
    pub record_requests: bool,
}

impl Default for EngagelabOptions {
    fn default() -> Self {
        Self {
            api_key: "el-key".to_owned(),
            api_secret: "el-secret".to_owned(),
            rate_limit: None,
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            record_requests: true,
        }
    }
}

/// A running EngageLab MA stand-in. Dropping it stops the server.
pub struct EngagelabSim {
    server: SimServer,
    shared: Arc<Shared>,
}

impl EngagelabSim {
    pub async fn start(opts: EngagelabOptions) -> io::Result<EngagelabSim> {
        let credentials = format!("{}:{}", opts.api_key, opts.api_secret);
        let shared = Arc::new(Shared {
            basic_credentials: base64(credentials.as_bytes()),
            users: Mutex::new(Users::default()),
        });
        let server_opts = ServerOptions {
            bind: opts.bind,
            rate_limit: opts.rate_limit,
            name: "engagelab",
            record_requests: opts.record_requests,
            ..ServerOptions::default()
        };
        let server = SimServer::start(router(Arc::clone(&shared)), server_opts).await?;
        Ok(EngagelabSim { server, shared })
    }

    /// `http://127.0.0.1:PORT`, in place of `https://ma-api.engagelab.com`.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// The underlying server: faults, rate limit, request log.
    pub fn server(&self) -> &SimServer {
        &self.server
    }

    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }

    /// Makes the current EUID of this identity value (under any identity name) answer 55108;
    /// registering the value again issues a new EUID. Returns whether there was one.
    pub fn invalidate_euid(&self, identity_value: &str) -> bool {
        let mut users = self.shared.users();
        let mut found = false;
        for name in IdentityName::ALL {
            let identity = Identity::new(name, identity_value);
            if let Some(euid) = users.euids.remove(&identity) {
                users.profiles.remove(&euid);
                found = true;
            }
        }
        found
    }

    /// Makes `register` refuse any batch holding this identity value with 55105, as
    /// EngageLab does for a value it finds too long (it may count bytes, not characters).
    pub fn refuse_identity(&self, identity_value: &str) {
        self.shared
            .users()
            .refused
            .insert(identity_value.to_owned());
    }

    /// Makes `register` answer success but leave this identity value out of `data`.
    pub fn omit_euid(&self, identity_value: &str) {
        self.shared
            .users()
            .omitted
            .insert(identity_value.to_owned());
    }

    /// Queues a business answer for the next `/v1/user/contact` call, which is then not
    /// applied: e.g. `-1` (internal error), `55014` (contact exists), `50031` (invalid project).
    pub fn push_code(&self, code: i64) {
        self.shared.users().scripted.push_back(code);
    }

    /// Drops the business answers queued by [`Self::push_code`] that were not used yet.
    pub fn clear_codes(&self) {
        self.shared.users().scripted.clear();
    }

    /// The contact info stored for this identity value's current EUID.
    pub fn contact_info(&self, identity_value: &str) -> Option<Value> {
        let users = self.shared.users();
        let euid = users.current_euid(identity_value)?;
        let contacts = &users.profiles.get(&euid)?.contacts;
        (!contacts.is_empty()).then(|| Value::Object(contacts.clone()))
    }

    /// The identity values whose contact info was written since the last call (the first
    /// starts the log) and now mentions, in any of its values, the text `wanted` gives.
    pub fn written_mentioning<'w>(&self, wanted: impl Fn(&str) -> Option<&'w str>) -> Vec<String> {
        let mut users = self.shared.users();
        let written = users.written.take();
        crate::written_mentioning(written, wanted, |value| {
            Some(&users.profiles.get(&users.current_euid(value)?)?.contacts)
        })
    }

    /// Identity values that hold contact info now: the contacts delivered here.
    pub fn held(&self) -> usize {
        let users = self.shared.users();
        users
            .profiles
            .values()
            .filter(|profile| !profile.contacts.is_empty())
            .count()
    }

    /// The current EUID of this identity value.
    pub fn euid(&self, identity_value: &str) -> Option<u64> {
        self.shared.users().current_euid(identity_value)
    }

    /// Authenticated `/v1/user/register` calls so far, valid or not.
    pub fn register_calls(&self) -> usize {
        self.shared.users().register_calls
    }

    /// Successful contact writes for this identity value, over all its EUIDs.
    pub fn contact_writes(&self, identity_value: &str) -> usize {
        let users = self.shared.users();
        users.writes.get(identity_value).copied().unwrap_or(0)
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/user/register", post(register))
        .route("/v1/user/contact", post(set_contact))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            require_basic_auth,
        ))
        .with_state(shared)
}

struct Shared {
    /// `base64(api_key:api_secret)`. Comparing encoded forms equals decoding the header,
    /// since clients send the canonical padded encoding.
    basic_credentials: String,
    users: Mutex<Users>,
}

impl Shared {
    fn users(&self) -> MutexGuard<'_, Users> {
        // A panicking test thread must not take every later request down with it.
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum IdentityName {
    User,
    Anonymous,
    Registration,
}

impl IdentityName {
    const ALL: [IdentityName; 3] = [Self::User, Self::Anonymous, Self::Registration];

    fn parse(name: &str) -> Option<Self> {
        match name {
            "user_id" => Some(Self::User),
            "anonymous_id" => Some(Self::Anonymous),
            "registration_id" => Some(Self::Registration),
            _ => None,
        }
    }
}

/// A user as the client names it; the same value under two names is two users.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Identity {
    name: IdentityName,
    value: String,
}

impl Identity {
    fn new(name: IdentityName, value: &str) -> Self {
        Self {
            name,
            value: value.to_owned(),
        }
    }
}

struct Profile {
    identity_value: String,
    contacts: Map<String, Value>,
}

struct Users {
    next_euid: u64,
    /// Current EUID of each identity; an invalidated identity is absent.
    euids: HashMap<Identity, u64>,
    /// Valid EUIDs only.
    profiles: HashMap<u64, Profile>,
    scripted: VecDeque<i64>,
    /// Identity values `register` refuses (55105) or leaves out of its answer.
    refused: HashSet<String>,
    omitted: HashSet<String>,
    register_calls: usize,
    /// Identity value → successful contact writes.
    writes: HashMap<String, usize>,
    /// Identity values whose contact info was written, for the change watcher.
    written: crate::WriteLog,
}

impl Default for Users {
    fn default() -> Self {
        Self {
            next_euid: FIRST_EUID,
            euids: HashMap::new(),
            profiles: HashMap::new(),
            scripted: VecDeque::new(),
            refused: HashSet::new(),
            omitted: HashSet::new(),
            register_calls: 0,
            writes: HashMap::new(),
            written: crate::WriteLog::default(),
        }
    }
}

impl Users {
    /// The EUID of this identity, issued on first sight: registration is idempotent.
    fn register(&mut self, identity: Identity) -> u64 {
        if let Some(euid) = self.euids.get(&identity) {
            return *euid;
        }
        let euid = self.next_euid;
        self.next_euid += 1;
        let profile = Profile {
            identity_value: identity.value.clone(),
            contacts: Map::new(),
        };
        self.profiles.insert(euid, profile);
        self.euids.insert(identity, euid);
        euid
    }

    /// Tries the identity names in a fixed order; the sync uses only one of them.
    fn current_euid(&self, identity_value: &str) -> Option<u64> {
        IdentityName::ALL.into_iter().find_map(|name| {
            self.euids
                .get(&Identity::new(name, identity_value))
                .copied()
        })
    }

    /// Replaces the given attributes of the EUID's contact info, keeping the others.
    fn write_contacts(&mut self, euid: u64, contacts: Map<String, Value>) -> Result<(), Code> {
        let profile = self
            .profiles
            .get_mut(&euid)
            .ok_or(Code(code::INVALID_EUID))?;
        profile.contacts.extend(contacts);
        self.written.note(&profile.identity_value);
        *self
            .writes
            .entry(profile.identity_value.clone())
            .or_default() += 1;
        Ok(())
    }
}

// ---- handlers ----------------------------------------------------------------------------

async fn require_basic_auth(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    if basic_credentials(request.headers()) == Some(shared.basic_credentials.as_str()) {
        next.run(request).await
    } else {
        let body = json!({ "code": code::AUTH_FAILED, "message": "auth failed" });
        (StatusCode::UNAUTHORIZED, Json(body)).into_response()
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("basic")
        .then(|| credentials.trim())
}

/// `POST /v1/user/register`: all values are checked before any EUID is issued.
async fn register(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<Json<Value>, Code> {
    shared.users().register_calls += 1;
    let (name, values) = parse_register(&body)?;
    let mut users = shared.users();
    if values.iter().any(|v| users.refused.contains(v)) {
        return Err(Code(code::IDENTITY_TOO_LONG));
    }
    let answered: Vec<String> = values
        .into_iter()
        .filter(|value| !users.omitted.contains(value))
        .collect();
    let data: Vec<Value> = answered
        .into_iter()
        .map(|value| {
            let euid = users.register(Identity::new(name, &value));
            json!({ "identity_value": value, "euid": euid })
        })
        .collect();
    Ok(Json(
        json!({ "code": code::SUCCESS, "message": message(code::SUCCESS), "data": data }),
    ))
}

fn parse_register(body: &[u8]) -> Result<(IdentityName, Vec<String>), Code> {
    let request = parse_object(body)?;
    let name = request
        .get("identity_name")
        .and_then(Value::as_str)
        .and_then(IdentityName::parse)
        .ok_or(Code(code::UNSUPPORTED_IDENTITY_NAME))?;
    let values = match request.get("identity_values") {
        Some(Value::Array(values)) => values,
        None | Some(Value::Null) => return Err(Code(code::EMPTY_IDENTITY_VALUE)),
        Some(_) => return Err(Code(code::INVALID_PARAMETER)),
    };
    if values.is_empty() {
        return Err(Code(code::EMPTY_IDENTITY_VALUE));
    }
    if values.len() > MAX_IDENTITY_VALUES {
        return Err(Code(code::TOO_MANY_IDENTITIES));
    }
    let values = values
        .iter()
        .map(identity_value)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name, values))
}

fn identity_value(value: &Value) -> Result<String, Code> {
    match value {
        Value::Null => Err(Code(code::EMPTY_IDENTITY_VALUE)),
        Value::String(s) if s.trim().is_empty() => Err(Code(code::EMPTY_IDENTITY_VALUE)),
        Value::String(s) if s.chars().count() > MAX_IDENTITY_CHARS => {
            Err(Code(code::IDENTITY_TOO_LONG))
        }
        Value::String(s) => Ok(s.clone()),
        _ => Err(Code(code::INVALID_PARAMETER)),
    }
}

/// `POST /v1/user/contact`: a scripted code, if any, answers instead of the normal handling.
async fn set_contact(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<Json<Value>, Code> {
    if let Some(scripted) = shared.users().scripted.pop_front() {
        return Err(Code(scripted));
    }
    let (euid, contacts) = parse_contact(&body)?;
    shared.users().write_contacts(euid, contacts)?;
    Ok(Json(
        json!({ "code": code::SUCCESS, "message": message(code::SUCCESS) }),
    ))
}

/// The request is checked for shape (40007, 55102, 55103) before the EUID is looked up (55108).
fn parse_contact(body: &[u8]) -> Result<(u64, Map<String, Value>), Code> {
    let mut request = parse_object(body)?;
    let euid = match request.get("euid") {
        None | Some(Value::Null) => return Err(Code(code::EUID_EMPTY)),
        Some(Value::String(s)) if s.is_empty() => return Err(Code(code::EUID_EMPTY)),
        Some(euid) => euid.as_u64().ok_or(Code(code::INVALID_EUID))?,
    };
    let contacts = match request.remove("contacts") {
        Some(Value::Object(contacts)) => contacts,
        None | Some(Value::Null) => return Err(Code(code::EMPTY_ATTRIBUTE_VALUE)),
        Some(_) => return Err(Code(code::INVALID_PARAMETER)),
    };
    if contacts.is_empty() {
        return Err(Code(code::EMPTY_ATTRIBUTE_VALUE));
    }
    for (name, value) in &contacts {
        if !CONTACT_ATTRIBUTES.contains(&name.as_str()) {
            return Err(Code(code::INVALID_ATTRIBUTE_NAME));
        }
        match value {
            Value::String(s) if !s.trim().is_empty() => {}
            Value::String(_) | Value::Null => return Err(Code(code::EMPTY_ATTRIBUTE_VALUE)),
            _ => return Err(Code(code::INVALID_PARAMETER)),
        }
    }
    Ok((euid, contacts))
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, Code> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(object)) => Ok(object),
        _ => Err(Code(code::INVALID_PARAMETER)),
    }
}

/// A business answer `{"code":N,"message":…}`, always HTTP 200: EngageLab signals failures in
/// `code` (only auth failure gets 401 here).
#[derive(Debug)]
struct Code(i64);

impl IntoResponse for Code {
    fn into_response(self) -> Response {
        Json(json!({ "code": self.0, "message": message(self.0) })).into_response()
    }
}

fn message(code: i64) -> &'static str {
    match code {
        code::SUCCESS => "success",
        code::INTERNAL_ERROR => "internal server error",
        code::EUID_EMPTY => "euid is empty",
        code::AUTH_FAILED => "auth failed",
        code::INVALID_PROJECT => "invalid project id",
        code::PROJECT_NOT_FOUND => "project does not exist",
        code::DATA_SOURCE_NOT_FOUND => "api data source does not exist",
        code::INVALID_PARAMETER => "invalid business parameter",
        code::CONTACT_EXISTS => "contact exists",
        code::TOO_MANY_IDENTITIES => "too many identity values",
        code::INVALID_ATTRIBUTE_NAME => "invalid attribute name",
        code::EMPTY_ATTRIBUTE_VALUE => "attribute value cannot be empty",
        code::IDENTITY_TOO_LONG => "identity value longer than 256 characters",
        code::UNSUPPORTED_IDENTITY_NAME => "unsupported identity name",
        code::EMPTY_IDENTITY_VALUE => "identity value is empty",
        code::INVALID_EUID => "invalid euid",
        _ => "error",
    }
}

/// Standard padded base64, enough to build the expected `Basic` credentials.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let bits = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(bits >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(
            base64(b"Aladdin:open sesame"),
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }

    #[test]
    fn register_checks_every_value_before_issuing() {
        let too_long = "x".repeat(MAX_IDENTITY_CHARS + 1);
        let body = json!({"identity_name": "user_id", "identity_values": ["a", too_long]});
        let err = parse_register(body.to_string().as_bytes()).unwrap_err();
        assert_eq!(err.0, code::IDENTITY_TOO_LONG);
    }
}
