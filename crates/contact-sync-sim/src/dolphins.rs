//! The 3Dolphins stand-in (docs/apis/3dolphins.md): token login, the paged contact list with a page
//! cap, seeded and malformed records, live mutation, and hostile pages and logins on demand.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::{format_description, offset};

use crate::server::{Faults, ServerOptions, SimServer};

mod generate;

pub use generate::{MALFORMED_KINDS, MalformedKind, generate_contact, malformed_record};

/// Path prefix of the API, as in production (`http://[server]/dolphin/apiv1`).
pub const BASE_PATH: &str = "/dolphin/apiv1";

/// Longest token lifetime honoured: "never expires" for any test.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(100 * 365 * 86_400);

/// `count` when the client sends none.
const DEFAULT_COUNT: usize = 10;

/// Which credentials the stand-in accepts.
#[derive(Clone, Debug)]
pub enum DolphinsAuth {
    /// A fixed bearer token that never expires; `/graph/auth` refuses every login.
    Static(String),
    /// Tokens are obtained from `/graph/auth` with these credentials.
    Login { username: String, password: String },
    /// Both of the above.
    Both {
        token: String,
        username: String,
        password: String,
    },
}

impl DolphinsAuth {
    fn static_token(&self) -> Option<&str> {
        match self {
            Self::Static(token) | Self::Both { token, .. } => Some(token),
            Self::Login { .. } => None,
        }
    }

    fn accepts_login(&self, user: &str, pass: &str) -> bool {
        match self {
            Self::Login { username, password }
            | Self::Both {
                username, password, ..
            } => user == username && pass == password,
            Self::Static(_) => false,
        }
    }
}

/// A way the contact list can misbehave, as real sources and proxies do. Several can be set
/// at once with [`DolphinsSim::set_page_faults`].
#[derive(Clone, Debug, PartialEq)]
pub enum PageFault {
    /// `hasMore: true` on every page, so past the end: empty pages with `nextIndex` moving on.
    EndlessEmptyPages,
    /// Past the end, the last page again and again, `hasMore: true`, `nextIndex` moving on.
    EndlessRepeatedPages,
    /// `nextIndex` equal to the page's start.
    NeverAdvance,
    /// `nextIndex` this far before the page's start (0 at the least).
    Regress(usize),
    /// `totalResults` as a string: `"254"`.
    TotalAsString,
    /// `totalResults` as a float: `254.0`.
    TotalAsFloat,
    /// `nextIndex` as a string: `"50"`.
    NextIndexAsString,
    /// `nextIndex` as a float: `50.0`.
    NextIndexAsFloat,
    /// `nextIndex` written as this JSON text, e.g. `9223372036854775808`.
    NextIndexLiteral(String),
    /// These paging fields (`hasMore`, `nextIndex`, `prevIndex`, `totalResults`, `status`,
    /// or new ones) replaced by the given JSON values; `null` removes the field.
    Fields(Vec<(String, Value)>),
    /// Every page holds this many records (fewer at the end), whatever `count` and the page
    /// cap say. Streamed without `Content-Length`, rendered record by record.
    IgnoreCount(usize),
    /// The record at this list position gets a 0xFF byte inside its first string value.
    InvalidUtf8At(usize),
    /// A JSON answer of this many bytes, with or without `Content-Length` (chunked).
    HugeBody { bytes: usize, announce_length: bool },
    /// An HTML error page with status 200.
    NotJson,
    /// The JSON answer cut off halfway.
    Truncated,
}

/// A way `POST /graph/auth` can misbehave, set with [`DolphinsSim::set_login_fault`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginFault {
    /// 200 with no `token` field.
    NoToken,
    /// 200 with `"token": ""`.
    EmptyToken,
    /// 200 with `"token": 12345`.
    TokenNotString,
    /// A valid token whose `expireAt` is unreadable text.
    ExpireAtGarbage,
    /// A valid token whose `expireAt` is a number.
    ExpireAtNumber,
    /// This status with a JSON error body.
    Status(u16),
    /// 200 with a JSON body of this many bytes.
    HugeBody(usize),
    /// 200 with an HTML page.
    NotJson,
}

/// How to start a [`DolphinsSim`].
#[derive(Clone, Debug)]
pub struct DolphinsOptions {
    /// Well-formed generated contacts.
    pub contacts: usize,
    /// Seed of the generated records (and of the random faults).
    pub seed: u64,
    /// Most records one page returns, whatever `count` asks for.
    pub page_cap: usize,
    pub auth: DolphinsAuth,
    /// Lifetime of tokens issued by `/graph/auth`.
    pub token_ttl: Duration,
    /// How long past its `expireAt` a token is still honoured (servers allow for clock skew):
    /// a test can let the announced lifetime run out without racing the real expiry.
    pub token_grace: Duration,
    /// Records that cannot yield an id, spread evenly through the list (see [`MalformedKind`]).
    pub malformed: usize,
    pub bind: SocketAddr,
    /// Server-side requests/second limit (429 past it).
    pub rate_limit: Option<f64>,
    /// Memory for keeping generated records' JSON after first serving them (default 256 MiB,
    /// about 130,000 records): later passes then cost a copy instead of a render.
    pub render_cache_bytes: usize,
}

impl Default for DolphinsOptions {
    fn default() -> Self {
        Self {
            contacts: 100,
            seed: 1,
            page_cap: 50,
            auth: DolphinsAuth::Login {
                username: "sync".into(),
                password: "secret".into(),
            },
            token_ttl: Duration::from_secs(3600),
            token_grace: Duration::ZERO,
            malformed: 0,
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            rate_limit: None,
            render_cache_bytes: 256 << 20,
        }
    }
}

/// A running 3Dolphins stand-in. Dropping it stops the server.
pub struct DolphinsSim {
    server: SimServer,
    state: Arc<DolphinsState>,
}

impl DolphinsSim {
    pub async fn start(opts: DolphinsOptions) -> io::Result<DolphinsSim> {
        let state = Arc::new(DolphinsState::new(&opts));
        let server_opts = ServerOptions {
            bind: opts.bind,
            rate_limit: opts.rate_limit,
            name: "3dolphins",
            fault_seed: opts.seed,
            ..ServerOptions::default()
        };
        let server = SimServer::start(router(Arc::clone(&state)), server_opts).await?;
        Ok(DolphinsSim { server, state })
    }

    /// `http://127.0.0.1:PORT/dolphin/apiv1`: what the client is configured with.
    pub fn base_url(&self) -> String {
        format!("{}{BASE_PATH}", self.server.base_url())
    }

    /// The underlying server: request log, request count, address.
    pub fn server(&self) -> &SimServer {
        &self.server
    }

    pub fn faults(&self) -> &Arc<Faults> {
        self.server.faults()
    }

    /// Invalidates every token issued so far (the static token stays valid).
    pub fn expire_tokens(&self) {
        self.state.tokens().clear();
    }

    /// Successful logins so far.
    pub fn login_count(&self) -> u64 {
        self.state.logins.load(Ordering::Relaxed)
    }

    /// Adds a record at the head of the list: every later offset shifts by one.
    pub fn insert_front(&self, record: Value) {
        self.state.store().slots.push_front(Slot::stored(&record));
    }

    /// Appends a record at the end of the list.
    pub fn push(&self, record: Value) {
        self.state.store().slots.push_back(Slot::stored(&record));
    }

    /// Removes the first record whose id (after [`record_id`] normalization) is `id`.
    pub fn remove(&self, id: &str) -> bool {
        let mut store = self.state.store();
        let Some(pos) = store.position(self.state.seed, id) else {
            return false;
        };
        store.slots.remove(pos);
        true
    }

    /// Edits the record with this id in place; `false` when there is none.
    pub fn update(&self, id: &str, edit: impl FnOnce(&mut Value)) -> bool {
        let mut store = self.state.store();
        let Some(pos) = store.position(self.state.seed, id) else {
            return false;
        };
        let mut record = store.slots[pos].to_value(self.state.seed);
        edit(&mut record);
        store.slots[pos] = Slot::stored(&record);
        true
    }

    /// Edits every record whose id is in `ids`, in one scan of the list (a bench changes
    /// thousands of a million records at once); returns how many were edited.
    pub fn update_many(
        &self,
        ids: &HashSet<String>,
        mut edit: impl FnMut(&str, &mut Value),
    ) -> usize {
        let mut store = self.state.store();
        let mut edited = 0;
        for slot in store.slots.iter_mut() {
            let Some(id) = slot.id(self.state.seed).filter(|id| ids.contains(id)) else {
                continue;
            };
            let mut record = slot.to_value(self.state.seed);
            edit(&id, &mut record);
            *slot = Slot::stored(&record);
            edited += 1;
        }
        edited
    }

    /// The record with this id, as served.
    pub fn get(&self, id: &str) -> Option<Value> {
        let store = self.state.store();
        let pos = store.position(self.state.seed, id)?;
        Some(store.slots[pos].to_value(self.state.seed))
    }

    /// Replaces the first record that cannot yield an id (fixing it at the source); `false`
    /// when there is none.
    pub fn replace_malformed(&self, record: Value) -> bool {
        let mut store = self.state.store();
        let seed = self.state.seed;
        let Some(pos) = store.slots.iter().position(|slot| slot.id(seed).is_none()) else {
            return false;
        };
        store.slots[pos] = Slot::stored(&record);
        true
    }

    /// Records in the list, malformed ones included (what `totalResults` reports).
    pub fn len(&self) -> usize {
        self.state.store().slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Normalized ids of the records that have one, in list order: what a full sync must deliver.
    pub fn ids(&self) -> Vec<String> {
        let store = self.state.store();
        store
            .slots
            .iter()
            .filter_map(|slot| slot.id(self.state.seed))
            .collect()
    }

    /// Records in the list that cannot yield an id (what the sync must quarantine).
    pub fn malformed_count(&self) -> usize {
        let store = self.state.store();
        store
            .slots
            .iter()
            .filter(|slot| slot.id(self.state.seed).is_none())
            .count()
    }

    /// Misbehave on every list request from now on (an empty list behaves again).
    pub fn set_page_faults(&self, faults: Vec<PageFault>) {
        *lock(&self.state.page_faults) = faults;
    }

    /// Misbehave on every login from now on (`None` behaves again).
    pub fn set_login_fault(&self, fault: Option<LoginFault>) {
        *lock(&self.state.login_fault) = fault;
    }

    pub fn set_page_cap(&self, page_cap: usize) {
        self.state.store().page_cap = page_cap.max(1);
    }

    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

/// The id the sync should derive from a record (docs/contact.md#id): a string trimmed to 1–256
/// characters, or an integer as its decimal string; `None` for anything else.
pub fn record_id(record: &Value) -> Option<String> {
    match record.get("id")? {
        Value::String(text) => {
            let trimmed = text.trim();
            (1..=256)
                .contains(&trimmed.chars().count())
                .then(|| trimmed.to_owned())
        }
        Value::Number(number) if number.is_i64() || number.is_u64() => Some(number.to_string()),
        _ => None,
    }
}

struct DolphinsState {
    seed: u64,
    auth: DolphinsAuth,
    token_ttl: Duration,
    token_grace: Duration,
    store: Mutex<Store>,
    rendered: RenderCache,
    tokens: Mutex<HashMap<String, Instant>>,
    logins: AtomicU64,
    page_faults: Mutex<Vec<PageFault>>,
    login_fault: Mutex<Option<LoginFault>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The contact list. Generated records are kept as their index and rendered on demand, so a
/// million contacts cost 16 bytes each; records added or edited by tests keep their JSON.
struct Store {
    slots: VecDeque<Slot>,
    page_cap: usize,
}

#[derive(Clone)]
enum Slot {
    Generated(u32),
    Stored(Arc<StoredRecord>),
}

struct StoredRecord {
    id: Option<String>,
    json: Bytes,
}

impl DolphinsState {
    fn new(opts: &DolphinsOptions) -> Self {
        Self {
            seed: opts.seed,
            auth: opts.auth.clone(),
            // Clamped so that expiry arithmetic on instants and dates cannot overflow.
            token_ttl: opts.token_ttl.min(MAX_TOKEN_TTL),
            token_grace: opts.token_grace.min(MAX_TOKEN_TTL),
            store: Mutex::new(Store::generate(opts)),
            rendered: RenderCache::new(opts.contacts, opts.render_cache_bytes),
            tokens: Mutex::new(HashMap::new()),
            logins: AtomicU64::new(0),
            page_faults: Mutex::new(Vec::new()),
            login_fault: Mutex::new(None),
        }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn tokens(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        self.tokens
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn issue_token(&self) -> (String, Instant) {
        let n = self.logins.fetch_add(1, Ordering::Relaxed) + 1;
        let token = format!(
            "{:016x}{:016x}",
            generate::mix64(self.seed ^ n),
            generate::mix64(n)
        );
        let expires = Instant::now() + self.token_ttl;
        self.tokens()
            .insert(token.clone(), expires + self.token_grace);
        (token, expires)
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = bearer_token(headers) else {
            return false;
        };
        if self.auth.static_token() == Some(token) {
            return true;
        }
        self.tokens()
            .get(token)
            .is_some_and(|expires| Instant::now() < *expires)
    }
}

impl Store {
    /// Contacts in index order with the malformed records spread evenly between them.
    fn generate(opts: &DolphinsOptions) -> Self {
        let total = opts.contacts + opts.malformed;
        let malformed_at = |k: usize| (2 * k + 1) * total / (2 * opts.malformed.max(1));
        let mut slots = VecDeque::with_capacity(total);
        let (mut next_contact, mut next_malformed) = (0u32, 0usize);
        for pos in 0..total {
            if next_malformed < opts.malformed && malformed_at(next_malformed) == pos {
                slots.push_back(Slot::stored(&malformed_record(opts.seed, next_malformed)));
                next_malformed += 1;
            } else {
                slots.push_back(Slot::Generated(next_contact));
                next_contact += 1;
            }
        }
        Self {
            slots,
            page_cap: opts.page_cap.max(1),
        }
    }

    fn position(&self, seed: u64, id: &str) -> Option<usize> {
        self.slots
            .iter()
            .position(|slot| slot.id(seed).as_deref() == Some(id))
    }
}

impl Slot {
    fn stored(record: &Value) -> Self {
        let json = serde_json::to_vec(record).expect("a JSON value always serializes");
        Slot::Stored(Arc::new(StoredRecord {
            id: record_id(record),
            json: Bytes::from(json),
        }))
    }

    fn id(&self, seed: u64) -> Option<String> {
        match self {
            Slot::Generated(index) => Some(generate::contact_id(seed, *index as usize)),
            Slot::Stored(record) => record.id.clone(),
        }
    }

    fn to_value(&self, seed: u64) -> Value {
        match self {
            Slot::Generated(index) => generate_contact(seed, *index as usize),
            Slot::Stored(record) => serde_json::from_slice(&record.json).unwrap_or(Value::Null),
        }
    }

    fn write_json(&self, state: &DolphinsState, out: &mut Vec<u8>) {
        match self {
            Slot::Generated(index) => state.rendered.write(state.seed, *index as usize, out),
            Slot::Stored(record) => out.extend_from_slice(&record.json),
        }
    }
}

/// Generated records' JSON, kept after first use up to a byte budget. Rendering costs a few
/// microseconds per record, copying almost nothing; the budget bounds memory for huge lists.
struct RenderCache {
    by_index: Box<[OnceLock<Bytes>]>,
    budget: usize,
    used: AtomicUsize,
}

impl RenderCache {
    fn new(contacts: usize, budget: usize) -> Self {
        let len = if budget == 0 { 0 } else { contacts };
        let by_index = (0..len).map(|_| OnceLock::new()).collect();
        Self {
            by_index,
            budget,
            used: AtomicUsize::new(0),
        }
    }

    fn write(&self, seed: u64, index: usize, out: &mut Vec<u8>) {
        let cell = self.by_index.get(index);
        if let Some(json) = cell.and_then(OnceLock::get) {
            out.extend_from_slice(json);
            return;
        }
        let start = out.len();
        generate::write_contact(seed, index, out);
        let len = out.len() - start;
        if let Some(cell) = cell
            && self.used.fetch_add(len, Ordering::Relaxed) + len <= self.budget
        {
            // Losing a race to another page render is harmless: both rendered the same bytes.
            let _ = cell.set(Bytes::copy_from_slice(&out[start..]));
        }
    }
}

fn router(state: Arc<DolphinsState>) -> Router {
    let api = Router::new()
        .route("/graph/auth", post(login))
        .route("/graph/contacts/all", get(list_contacts))
        .route("/graph/contacts/contactById", get(contact_by_id))
        .with_state(state);
    Router::new().nest(BASE_PATH, api)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenResponse {
    token: String,
    expire_at: String,
}

async fn login(State(state): State<Arc<DolphinsState>>, body: Bytes) -> Response {
    let Ok(credentials) = serde_json::from_slice::<Value>(&body) else {
        return failure(StatusCode::BAD_REQUEST, "request body is not JSON");
    };
    let field = |name| {
        credentials
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    if !state
        .auth
        .accepts_login(field("username"), field("password"))
    {
        return failure(StatusCode::UNAUTHORIZED, "invalid username or password");
    }
    let fault = lock(&state.login_fault).clone();
    let (token, expires) = state.issue_token();
    let expire_at = java_zoned_date_time(expires);
    match fault {
        None => Json(TokenResponse { token, expire_at }).into_response(),
        Some(LoginFault::NoToken) => Json(json!({ "expireAt": expire_at })).into_response(),
        Some(LoginFault::EmptyToken) => {
            Json(json!({ "token": "", "expireAt": expire_at })).into_response()
        }
        Some(LoginFault::TokenNotString) => {
            Json(json!({ "token": 12345, "expireAt": expire_at })).into_response()
        }
        Some(LoginFault::ExpireAtGarbage) => {
            Json(json!({ "token": token, "expireAt": "next tuesday" })).into_response()
        }
        Some(LoginFault::ExpireAtNumber) => {
            Json(json!({ "token": token, "expireAt": 1_603_363_255 })).into_response()
        }
        Some(LoginFault::Status(code)) => failure(
            StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
            "login refused",
        ),
        Some(LoginFault::HugeBody(bytes)) => huge_body(bytes, true),
        Some(LoginFault::NotJson) => html_page(),
    }
}

async fn list_contacts(
    State(state): State<Arc<DolphinsState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if !state.authorized(&headers) {
        return unauthorized();
    }
    let (start, count) = match page_params(query.as_deref()) {
        Ok(params) => params,
        Err(message) => return failure(StatusCode::BAD_REQUEST, &message),
    };
    let faults = lock(&state.page_faults).clone();
    for fault in &faults {
        match fault {
            PageFault::NotJson => return html_page(),
            PageFault::HugeBody {
                bytes,
                announce_length,
            } => return huge_body(*bytes, *announce_length),
            _ => {}
        }
    }
    if faults
        .iter()
        .any(|f| matches!(f, PageFault::IgnoreCount(_)))
    {
        return stream_page(state, start, count, faults);
    }
    let mut body = render_page(&state, start, count, &faults);
    if faults.contains(&PageFault::Truncated) {
        body.truncate(body.len() / 2);
    }
    json_bytes(body)
}

async fn contact_by_id(
    State(state): State<Arc<DolphinsState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if !state.authorized(&headers) {
        return unauthorized();
    }
    let id = query_pairs(query.as_deref())
        .find(|(k, _)| k == "contactId")
        .map(|(_, v)| v);
    let store = state.store();
    let Some(pos) = id.and_then(|id| store.position(state.seed, &id)) else {
        return failure(StatusCode::NOT_FOUND, "contact not found");
    };
    // The seed document shows this endpoint answering with the bare contact, no envelope.
    let mut body = Vec::new();
    store.slots[pos].write_json(&state, &mut body);
    json_bytes(body)
}

/// Which records a page holds and the paging fields that follow them, faults applied.
struct PagePlan {
    slots: Vec<(usize, Slot)>,
    /// `],"hasMore":…}`: everything after the records.
    tail: Vec<u8>,
}

fn plan_page(state: &DolphinsState, start: usize, count: usize, faults: &[PageFault]) -> PagePlan {
    let (slots, total, step) = {
        let store = state.store();
        let total = store.slots.len();
        let step = faults
            .iter()
            .find_map(|f| match f {
                PageFault::IgnoreCount(n) => Some(*n),
                _ => None,
            })
            .unwrap_or(count.min(store.page_cap));
        let endless = faults.contains(&PageFault::EndlessRepeatedPages) && start >= total;
        let (from, end) = if endless {
            (total.saturating_sub(step), total)
        } else {
            let end = start.saturating_add(step).min(total);
            (start.min(end), end)
        };
        let slots: Vec<(usize, Slot)> = (from..end)
            .map(|pos| (pos, store.slots[pos].clone()))
            .collect();
        (slots, total, step)
    };
    let mut next = start.saturating_add(slots.len());
    let mut has_more = next < total;
    let mut fields = serde_json::Map::new();
    for fault in faults {
        match fault {
            PageFault::EndlessEmptyPages | PageFault::EndlessRepeatedPages => {
                has_more = true;
                next = next.max(start.saturating_add(step));
            }
            PageFault::NeverAdvance => next = start,
            PageFault::Regress(back) => next = start.saturating_sub(*back),
            _ => {}
        }
    }
    fields.insert("hasMore".into(), json!(has_more));
    fields.insert("nextIndex".into(), json!(next));
    fields.insert("prevIndex".into(), json!(start.saturating_sub(step)));
    fields.insert("totalResults".into(), json!(total));
    let mut literal_next = None;
    for fault in faults {
        match fault {
            PageFault::TotalAsString => {
                fields.insert("totalResults".into(), json!(total.to_string()));
            }
            PageFault::TotalAsFloat => {
                fields.insert("totalResults".into(), json!(total as f64));
            }
            PageFault::NextIndexAsString => {
                fields.insert("nextIndex".into(), json!(next.to_string()));
            }
            PageFault::NextIndexAsFloat => {
                fields.insert("nextIndex".into(), json!(next as f64));
            }
            PageFault::NextIndexLiteral(text) => {
                fields.remove("nextIndex");
                literal_next = Some(text.clone());
            }
            PageFault::Fields(edits) => {
                for (name, value) in edits {
                    if value.is_null() {
                        fields.remove(name);
                    } else {
                        fields.insert(name.clone(), value.clone());
                    }
                }
            }
            _ => {}
        }
    }
    let mut tail = b"]".to_vec();
    for (name, value) in &fields {
        tail.push(b',');
        tail.extend_from_slice(Value::String(name.clone()).to_string().as_bytes());
        tail.push(b':');
        tail.extend_from_slice(value.to_string().as_bytes());
    }
    if let Some(text) = literal_next {
        tail.extend_from_slice(format!(r#","nextIndex":{text}"#).as_bytes());
    }
    tail.push(b'}');
    PagePlan { slots, tail }
}

/// `{"status":"success","data":[`, or without the status when a fault removes it.
fn page_head(faults: &[PageFault]) -> &'static [u8] {
    let status_edited = faults.iter().any(|f| match f {
        PageFault::Fields(edits) => edits.iter().any(|(name, _)| name == "status"),
        _ => false,
    });
    if status_edited {
        br#"{"data":["#
    } else {
        br#"{"status":"success","data":["#
    }
}

/// One record's JSON, with a 0xFF byte inside its first string value when a fault says so.
fn write_record(
    state: &DolphinsState,
    pos: usize,
    slot: &Slot,
    faults: &[PageFault],
    out: &mut Vec<u8>,
) {
    let start = out.len();
    slot.write_json(state, out);
    if faults.contains(&PageFault::InvalidUtf8At(pos))
        && let Some(at) = out[start..].windows(3).position(|w| w == br#"":""#)
    {
        out.insert(start + at + 3, 0xFF);
    }
}

/// Builds the list body by concatenating each record's JSON, so a page costs O(page) no matter
/// how long the list is.
fn render_page(state: &DolphinsState, start: usize, count: usize, faults: &[PageFault]) -> Vec<u8> {
    let plan = plan_page(state, start, count, faults);
    let mut body = Vec::with_capacity(128 + plan.slots.len() * 1600);
    body.extend_from_slice(page_head(faults));
    for (i, (pos, slot)) in plan.slots.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        write_record(state, *pos, slot, faults, &mut body);
    }
    body.extend_from_slice(&plan.tail);
    body
}

/// A page rendered a few records at a time into a chunked answer, so a page of any size costs
/// the stand-in little memory.
fn stream_page(
    state: Arc<DolphinsState>,
    start: usize,
    count: usize,
    faults: Vec<PageFault>,
) -> Response {
    const RECORDS_PER_CHUNK: usize = 256;
    let plan = plan_page(&state, start, count, &faults);
    let head = Bytes::from_static(page_head(&faults));
    let tail = Bytes::from(plan.tail);
    let slots = Arc::new(plan.slots);
    let chunks = (0..slots.len().div_ceil(RECORDS_PER_CHUNK)).map(move |chunk| {
        let mut out = Vec::new();
        let from = chunk * RECORDS_PER_CHUNK;
        for (i, (pos, slot)) in slots.iter().enumerate().skip(from).take(RECORDS_PER_CHUNK) {
            if i > 0 {
                out.push(b',');
            }
            write_record(&state, *pos, slot, &faults, &mut out);
        }
        Bytes::from(out)
    });
    let body = std::iter::once(head)
        .chain(chunks)
        .chain(std::iter::once(tail));
    json_body(Body::from_stream(futures_util::stream::iter(
        body.map(Ok::<_, std::convert::Infallible>),
    )))
}

/// A valid JSON answer of `bytes` bytes (at least a few dozen): an empty page padded out.
fn huge_body(bytes: usize, announce_length: bool) -> Response {
    const CHUNK: usize = 64 << 10;
    let head: &[u8] = br#"{"status":"success","data":[],"pad":""#;
    let tail: &[u8] = br#""}"#;
    let pad = bytes.saturating_sub(head.len() + tail.len());
    if announce_length {
        let mut body = Vec::with_capacity(bytes);
        body.extend_from_slice(head);
        body.resize(head.len() + pad, b'x');
        body.extend_from_slice(tail);
        return json_bytes(body);
    }
    let pads =
        (0..pad.div_ceil(CHUNK)).map(move |i| Bytes::from(vec![b'x'; CHUNK.min(pad - i * CHUNK)]));
    let body = std::iter::once(Bytes::from_static(head))
        .chain(pads)
        .chain(std::iter::once(Bytes::from_static(tail)));
    json_body(Body::from_stream(futures_util::stream::iter(
        body.map(Ok::<_, std::convert::Infallible>),
    )))
}

fn html_page() -> Response {
    let mut response = Response::new(Body::from("<html><body>502 Bad Gateway</body></html>"));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    response
}

/// `start` and `count` from the query string; absent means 0 and [`DEFAULT_COUNT`].
fn page_params(query: Option<&str>) -> Result<(usize, usize), String> {
    let (mut start, mut count) = (0, DEFAULT_COUNT);
    for (key, value) in query_pairs(query) {
        let parse = |name: &str| {
            value
                .trim()
                .parse::<usize>()
                .map_err(|_| format!("{name} must be a non-negative integer"))
        };
        match key.as_ref() {
            "start" => start = parse("start")?,
            "count" => count = parse("count")?,
            _ => {}
        }
    }
    if count == 0 {
        return Err("count must be at least 1".into());
    }
    Ok((start, count))
}

fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (String, String)> + '_ {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Java `ZonedDateTime.toString()` in Jakarta time, e.g.
/// `2020-10-22T17:40:55.372+07:00[Asia/Jakarta]`.
fn java_zoned_date_time(at: Instant) -> String {
    let remaining = at.saturating_duration_since(Instant::now());
    let when = (OffsetDateTime::now_utc() + remaining).to_offset(offset!(+7));
    let format = format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3][offset_hour sign:mandatory]:[offset_minute]"
    );
    let text = when
        .format(&format)
        .expect("the format only uses fields a date-time has");
    format!("{text}[Asia/Jakarta]")
}

fn json_bytes(body: Vec<u8>) -> Response {
    json_body(Body::from(body))
}

fn json_body(body: Body) -> Response {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn unauthorized() -> Response {
    failure(StatusCode::UNAUTHORIZED, "invalid or expired token")
}

fn failure(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({ "status": "failed", "message": message })),
    )
        .into_response()
}
