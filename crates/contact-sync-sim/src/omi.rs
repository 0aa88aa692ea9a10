//! OMI CRM stand-in on a [`SimServer`], faithful to OMI as docs/apis/omi.md describes it: token
//! exchange, the status-code envelope, atomic `addMany`, `update` by refId and the phone/email
//! owner rule.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::server::{ServerOptions, SimServer};

/// `payload.error` codes this stand-in answers. Only `PHONE_OR_EMAIL_TAKEN` is named by the
/// OMI documents; the others are our choice for cases the documents leave open.
pub mod error_code {
    /// Wrong or missing API key, or a missing, unknown or expired bearer token (HTTP 401).
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// The body is not the JSON shape the endpoint takes (OMI's partner API uses this name).
    pub const REQUEST_INVALID: &str = "request_invalid";
    /// A record breaks a field rule (refId, phones, emails), or was rejected by a test hook.
    pub const VALIDATION_ERROR: &str = "validation_error";
    /// An `addMany` batch is larger than `OmiOptions::max_batch`.
    pub const BATCH_SIZE_EXCEEDED: &str = "batch_size_exceeded";
    /// A phone or email is already attached to another contact (documented by OMI).
    pub const PHONE_OR_EMAIL_TAKEN: &str = "phone_or_email_assigned_on_other_contact";
    /// `update` or `get` addressed a contact that does not exist. OMI does not document this
    /// case beyond "a -9999 failure"; the sync only relies on it being a failure it can name.
    pub const CONTACT_NOT_FOUND: &str = "contact_not_found";
}

const STATUS_OK: i64 = 9999;
const STATUS_FAIL: i64 = -9999;
const TYPES: [&str; 3] = ["home", "personal", "office"];
const VALUE_TYPES: [&str; 3] = ["Nhà", "Cá nhân", "Công ty"];
/// Fields of `update` that add to a name list instead of replacing it, with their removers.
const NAME_LISTS: [(&str, &str); 3] = [
    ("tags", "tagRemoves"),
    ("business", "businessRemoves"),
    ("categories", "categoriesRemoves"),
];

/// How to start an [`OmiSim`].
#[derive(Clone, Debug)]
pub struct OmiOptions {
    /// The key `GET /api/auth?apiKey=` accepts.
    pub api_key: String,
    /// A bearer token accepted without an exchange and never expiring (for benchmarks).
    pub static_token: Option<String>,
    /// Lifetime of exchanged tokens; OMI documents 24 hours.
    pub token_ttl: Duration,
    /// Largest `addMany` batch accepted; OMI documents no limit, so this one is ours.
    pub max_batch: usize,
    /// A refused `addMany` keeps the records before the bad one, as a non-atomic API would
    /// (OMI does not document which): a client that assumes a refusal created nothing adds
    /// them twice.
    pub partial_batches: bool,
    /// Server-side rate limit in requests per second.
    pub rate_limit: Option<f64>,
    pub bind: SocketAddr,
    /// Keep a log of requests; turn off for long benchmarks.
    pub record_requests: bool,
    /// How `/api/auth` refuses a wrong key. OMI documents none; real deployments have been
    /// seen to answer each of these.
    pub key_refusal: KeyRefusal,
}

/// The shapes of "wrong API key" an auth endpoint answers with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyRefusal {
    /// HTTP 401 with a -9999 envelope.
    #[default]
    Unauthorized,
    /// HTTP 400 with a -9999 envelope.
    BadRequest,
    /// HTTP 403 with a -9999 envelope.
    Forbidden,
    /// HTTP 200 with a -9999 envelope.
    FailEnvelope,
    /// HTTP 200, status 9999, and a payload without `access_token`.
    NoToken,
    /// HTTP 200 with an HTML page.
    Garbage,
}

impl Default for OmiOptions {
    fn default() -> Self {
        Self {
            api_key: "omi-api-key".to_owned(),
            static_token: None,
            token_ttl: Duration::from_secs(24 * 60 * 60),
            max_batch: 100,
            partial_batches: false,
            rate_limit: None,
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            record_requests: true,
            key_refusal: KeyRefusal::default(),
        }
    }
}

/// A running OMI CRM stand-in. Dropping it stops the server.
pub struct OmiSim {
    server: SimServer,
    shared: Arc<Shared>,
}

impl OmiSim {
    pub async fn start(opts: OmiOptions) -> io::Result<OmiSim> {
        let shared = Arc::new(Shared {
            api_key: opts.api_key,
            static_token: opts.static_token,
            token_ttl: opts.token_ttl,
            max_batch: opts.max_batch,
            partial_batches: opts.partial_batches,
            key_refusal: opts.key_refusal,
            tokens: Mutex::default(),
            crm: Mutex::default(),
        });
        let server_opts = ServerOptions {
            bind: opts.bind,
            rate_limit: opts.rate_limit,
            name: "omi",
            record_requests: opts.record_requests,
            ..ServerOptions::default()
        };
        let server = SimServer::start(router(Arc::clone(&shared)), server_opts).await?;
        Ok(OmiSim { server, shared })
    }

    /// `http://127.0.0.1:PORT`, the `[URL]` of the OMI documents.
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

    /// Makes every exchanged token expired now (the static token stays valid).
    pub fn expire_tokens(&self) {
        let now = Instant::now();
        for expiry in self.shared.tokens().live.values_mut() {
            *expiry = now;
        }
    }

    /// Tokens issued by `/api/auth` so far.
    pub fn token_count(&self) -> usize {
        self.shared.tokens().issued
    }

    /// Makes records with these refIds fail validation, in `add`, `addMany` and `update`.
    pub fn reject_ref_ids<I, S>(&self, ref_ids: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut crm = self.shared.crm();
        crm.rejected.extend(ref_ids.into_iter().map(Into::into));
    }

    /// Accept every refId again.
    pub fn clear_rejections(&self) {
        self.shared.crm().rejected.clear();
    }

    /// Creates a contact outside the sync (it may lack a refId), e.g. to own a phone number.
    /// Returns its `_id`. Panics if `contact` is not a JSON object.
    pub fn seed_contact(&self, contact: Value) -> String {
        let Value::Object(record) = contact else {
            panic!("seed_contact takes a JSON object, got {contact}");
        };
        // A seeded contact is taken as given; unparsable phones or emails just own nothing.
        let handles = handles_of(&record, "seeded contact").unwrap_or_default();
        let mut crm = self.shared.crm();
        let index = crm.insert(record, &handles);
        crm.id_of(index).to_owned()
    }

    /// The latest contact created with this refId.
    pub fn contact(&self, ref_id: &str) -> Option<Value> {
        let crm = self.shared.crm();
        let index = *crm.by_ref.get(ref_id)?.last()?;
        Some(Value::Object(crm.contacts[index].clone()))
    }

    /// The refIds added or updated since the last call (the first starts the log) whose
    /// latest contact now mentions, in any of its values, the text `wanted` gives for them.
    pub fn written_mentioning<'w>(&self, wanted: impl Fn(&str) -> Option<&'w str>) -> Vec<String> {
        let mut crm = self.shared.crm();
        let written = crm.written.take();
        crate::written_mentioning(written, wanted, |ref_id| {
            let &index = crm.by_ref.get(ref_id)?.last()?;
            Some(&crm.contacts[index])
        })
    }

    /// Every contact, in creation order.
    pub fn contacts(&self) -> Vec<Value> {
        let crm = self.shared.crm();
        crm.contacts.iter().cloned().map(Value::Object).collect()
    }

    pub fn len(&self) -> usize {
        self.shared.crm().contacts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Contacts created with this refId through `add`/`addMany` (seeded ones not counted).
    pub fn add_count(&self, ref_id: &str) -> usize {
        self.shared.crm().adds.get(ref_id).copied().unwrap_or(0)
    }

    /// Successful `update` calls that addressed a contact with this refId.
    pub fn update_count(&self, ref_id: &str) -> usize {
        self.shared.crm().updates.get(ref_id).copied().unwrap_or(0)
    }

    /// RefIds held by more than one contact, sorted: the duplicates the sync must never make.
    pub fn duplicates(&self) -> Vec<String> {
        let crm = self.shared.crm();
        let mut refs: Vec<String> = crm
            .by_ref
            .iter()
            .filter(|(_, indexes)| indexes.len() > 1)
            .map(|(ref_id, _)| ref_id.clone())
            .collect();
        refs.sort_unstable();
        refs
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let contact = Router::new()
        .route("/add", post(add))
        .route("/addMany", post(add_many))
        .route("/update", post(update))
        .route("/get/{id}", get(get_contact))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            require_token,
        ));
    Router::new()
        .route("/api/auth", get(auth))
        .nest("/api/v2/contact", contact)
        .with_state(shared)
}

struct Shared {
    api_key: String,
    static_token: Option<String>,
    token_ttl: Duration,
    max_batch: usize,
    partial_batches: bool,
    key_refusal: KeyRefusal,
    tokens: Mutex<Tokens>,
    crm: Mutex<Crm>,
}

impl Shared {
    fn tokens(&self) -> MutexGuard<'_, Tokens> {
        // A panicking test thread must not take every later request down with it.
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn crm(&self) -> MutexGuard<'_, Crm> {
        self.crm.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn issue_token(&self) -> String {
        let mut tokens = self.tokens();
        tokens.issued += 1;
        let token = format!("omi-sim.{}.{:016x}", tokens.issued, fastrand::u64(..));
        let expiry = Instant::now() + self.token_ttl;
        tokens.live.insert(token.clone(), expiry);
        token
    }

    /// `Err` carries the reason a bearer token is refused.
    fn check_token(&self, token: &str) -> Result<(), &'static str> {
        if self.static_token.as_deref() == Some(token) {
            return Ok(());
        }
        match self.tokens().live.get(token) {
            None => Err("unknown access token"),
            Some(expiry) if Instant::now() >= *expiry => Err("access token expired"),
            Some(_) => Ok(()),
        }
    }
}

#[derive(Default)]
struct Tokens {
    /// Token → expiry. Expired tokens stay so a refusal can say "expired".
    live: HashMap<String, Instant>,
    issued: usize,
}

/// The CRM's contacts and the indexes that keep every request O(its own size).
#[derive(Default)]
struct Crm {
    /// Creation order; a contact's index never changes.
    contacts: Vec<Map<String, Value>>,
    by_id: HashMap<String, usize>,
    /// RefId → indexes of the contacts holding it, oldest first (more than one = duplicates).
    by_ref: HashMap<String, Vec<usize>>,
    owners: HashMap<Handle, Owner>,
    adds: HashMap<String, usize>,
    updates: HashMap<String, usize>,
    rejected: HashSet<String>,
    /// RefIds added or updated, for the change watcher.
    written: crate::WriteLog,
}

/// A phone or an email, normalized so that trivially different spellings collide.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Handle {
    Phone(String),
    Email(String),
}

/// Who a phone or email belongs to. Ownership is per refId, not per contact: a second add of
/// the same record then shows up as a duplicate contact, which tests look for, instead of
/// being masked as a conflict with its own first copy.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Owner {
    Ref(String),
    /// A seeded contact without a refId, by `_id`.
    Id(String),
}

/// How error messages name a contact.
impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Ref(ref_id) => write!(f, "refId {ref_id}"),
            Owner::Id(id) => write!(f, "_id {id}"),
        }
    }
}

/// A record that passed validation, ready to be stored.
struct Checked {
    record: Map<String, Value>,
    ref_id: String,
    handles: Vec<Handle>,
}

impl Crm {
    /// Validates a whole batch, then stores it: either every record is added or none is;
    /// with `partial`, the records before the first bad one are stored all the same.
    fn add_all(&mut self, records: Vec<Value>, partial: bool) -> Result<(), Failure> {
        if partial {
            for record in records {
                self.add_all(vec![record], false)?;
            }
            return Ok(());
        }
        let mut checked = Vec::with_capacity(records.len());
        let mut in_batch: HashMap<Handle, String> = HashMap::new();
        for (position, record) in records.into_iter().enumerate() {
            let record = self.check_new(record, position)?;
            for handle in &record.handles {
                match in_batch.entry(handle.clone()) {
                    Entry::Vacant(slot) => {
                        slot.insert(record.ref_id.clone());
                    }
                    Entry::Occupied(slot) if *slot.get() != record.ref_id => {
                        let label = format!("refId {}", record.ref_id);
                        return Err(Failure::taken(handle, &label));
                    }
                    Entry::Occupied(_) => {}
                }
            }
            checked.push(record);
        }
        for record in checked {
            *self.adds.entry(record.ref_id.clone()).or_default() += 1;
            self.insert(record.record, &record.handles);
        }
        Ok(())
    }

    fn check_new(&self, record: Value, position: usize) -> Result<Checked, Failure> {
        let Value::Object(record) = record else {
            return Err(Failure::invalid(format!(
                "record {position} is not an object"
            )));
        };
        let ref_id = ref_id_of(&record)
            .ok_or_else(|| Failure::invalid(format!("record {position}: refId is required")))?
            .to_owned();
        self.check_not_rejected(&ref_id)?;
        let owner = Owner::Ref(ref_id.clone());
        let label = owner.to_string();
        let handles = handles_of(&record, &label)?;
        self.check_owners(&handles, &owner, &label)?;
        Ok(Checked {
            record,
            ref_id,
            handles,
        })
    }

    fn check_not_rejected(&self, ref_id: &str) -> Result<(), Failure> {
        if self.rejected.contains(ref_id) {
            return Err(Failure::invalid(format!("refId {ref_id}: record rejected")));
        }
        Ok(())
    }

    fn check_owners(&self, handles: &[Handle], owner: &Owner, label: &str) -> Result<(), Failure> {
        match handles
            .iter()
            .find(|h| self.owners.get(*h).is_some_and(|o| o != owner))
        {
            Some(handle) => Err(Failure::taken(handle, label)),
            None => Ok(()),
        }
    }

    /// Stores a contact under a fresh `_id`, claims its phones and emails, returns its index.
    fn insert(&mut self, mut record: Map<String, Value>, handles: &[Handle]) -> usize {
        let index = self.contacts.len();
        let id = self.next_id();
        record.insert("_id".to_owned(), Value::String(id.clone()));
        if let Some(ref_id) = ref_id_of(&record) {
            self.written.note(ref_id);
            self.by_ref
                .entry(ref_id.to_owned())
                .or_default()
                .push(index);
        }
        self.by_id.insert(id, index);
        self.contacts.push(record);
        let owner = self.owner_of(index);
        for handle in handles {
            self.owners.insert(handle.clone(), owner.clone());
        }
        index
    }

    /// The `_id` the next stored contact gets, shaped like OMI's (a Mongo object id).
    fn next_id(&self) -> String {
        format!("66a0{:020x}", self.contacts.len())
    }

    fn id_of(&self, index: usize) -> &str {
        self.contacts[index]["_id"].as_str().unwrap_or_default()
    }

    fn owner_of(&self, index: usize) -> Owner {
        match ref_id_of(&self.contacts[index]) {
            Some(ref_id) => Owner::Ref(ref_id.to_owned()),
            None => Owner::Id(self.id_of(index).to_owned()),
        }
    }

    /// Applies an `update` body to the contact it addresses.
    fn update(&mut self, fields: Map<String, Value>) -> Result<(), Failure> {
        let index = self.locate(&fields)?;
        let owner = self.owner_of(index);
        let label = owner.to_string();
        if let Owner::Ref(ref_id) = &owner {
            self.check_not_rejected(ref_id)?;
        }
        let current = &self.contacts[index];
        let old_handles = handles_of(current, &label).unwrap_or_default();
        let next = merged(current, fields);
        let new_handles = handles_of(&next, &label)?;
        self.check_owners(&new_handles, &owner, &label)?;

        for handle in old_handles.iter().filter(|h| !new_handles.contains(h)) {
            if self.owners.get(handle) == Some(&owner) {
                self.owners.remove(handle);
            }
        }
        for handle in new_handles {
            self.owners.insert(handle, owner.clone());
        }
        self.contacts[index] = next;
        if let Owner::Ref(ref_id) = owner {
            self.written.note(&ref_id);
            *self.updates.entry(ref_id).or_default() += 1;
        }
        Ok(())
    }

    /// `_id` wins when both are given; by refId, the latest contact holding it is meant (OMI
    /// does not say which of several duplicates it updates).
    fn locate(&self, fields: &Map<String, Value>) -> Result<usize, Failure> {
        let found = if let Some(id) = fields.get("_id").and_then(Value::as_str) {
            self.by_id.get(id).copied()
        } else if let Some(ref_id) = ref_id_of(fields) {
            self.by_ref.get(ref_id).and_then(|i| i.last()).copied()
        } else {
            return Err(Failure::request("refId or _id is required"));
        };
        found.ok_or_else(|| {
            let address = fields.get("_id").or_else(|| fields.get("refId"));
            Failure::business(
                error_code::CONTACT_NOT_FOUND,
                format!("contact {} not found", address.unwrap_or(&Value::Null)),
            )
        })
    }
}

/// The contact after an `update`: given fields replace stored ones, except that `tags`,
/// `business` and `categories` add names and their `*Removes` remove names, as the OMI
/// document describes. The address (`_id`, `refId`) never changes.
fn merged(current: &Map<String, Value>, mut fields: Map<String, Value>) -> Map<String, Value> {
    let mut next = current.clone();
    let removals: Vec<(&str, Value)> = NAME_LISTS
        .iter()
        .filter_map(|(list, removes)| Some((*list, fields.remove(*removes)?)))
        .collect();
    for (key, value) in fields {
        if key == "_id" || key == "refId" {
            continue;
        }
        if NAME_LISTS.iter().any(|(list, _)| *list == key) {
            edit_names(&mut next, &key, &value, true);
        } else {
            next.insert(key, value);
        }
    }
    // Removals go last so that a name both added and removed ends up removed.
    for (list, names) in removals {
        edit_names(&mut next, list, &names, false);
    }
    next
}

fn edit_names(contact: &mut Map<String, Value>, list: &str, names: &Value, add: bool) {
    let names = names.as_array().map(Vec::as_slice).unwrap_or_default();
    let entry = contact
        .entry(list.to_owned())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !entry.is_array() {
        *entry = Value::Array(Vec::new());
    }
    let Value::Array(stored) = entry else {
        unreachable!("made an array just above");
    };
    for name in names {
        if add && !stored.contains(name) {
            stored.push(name.clone());
        } else if !add {
            stored.retain(|kept| kept != name);
        }
    }
}

fn ref_id_of(record: &Map<String, Value>) -> Option<&str> {
    record
        .get("refId")
        .and_then(Value::as_str)
        .filter(|r| !r.trim().is_empty())
}

/// The phones and emails of a record, validated; `label` names the record in errors.
fn handles_of(record: &Map<String, Value>, label: &str) -> Result<Vec<Handle>, Failure> {
    let mut handles = entries(record, "phones", label, phone_handle)?;
    handles.extend(entries(record, "emails", label, email_handle)?);
    Ok(handles)
}

fn entries(
    record: &Map<String, Value>,
    field: &str,
    label: &str,
    handle: fn(&str) -> Option<Handle>,
) -> Result<Vec<Handle>, Failure> {
    let items = match record.get(field) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(Failure::invalid(format!(
                "{label}: {field} must be an array"
            )));
        }
    };
    let mut handles = Vec::with_capacity(items.len());
    for item in items {
        let problem = || Failure::invalid(format!("{label}: invalid {field} entry {item}"));
        let data = item
            .get("data")
            .and_then(Value::as_str)
            .ok_or_else(problem)?;
        let in_set = |key: &str, set: &[&str]| {
            item.get(key)
                .and_then(Value::as_str)
                .is_some_and(|v| set.contains(&v))
        };
        if !in_set("type", &TYPES) || !in_set("valueType", &VALUE_TYPES) {
            return Err(problem());
        }
        let handle = handle(data).ok_or_else(problem)?;
        if !handles.contains(&handle) {
            handles.push(handle);
        }
    }
    Ok(handles)
}

/// E.164 (`+6285782120717`) or plain digits (`0989123456`).
fn phone_handle(data: &str) -> Option<Handle> {
    let digits = data.strip_prefix('+').unwrap_or(data);
    let valid = (5..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
    valid.then(|| Handle::Phone(digits.to_owned()))
}

fn email_handle(data: &str) -> Option<Handle> {
    let data = data.trim();
    let (local, domain) = data.split_once('@')?;
    let valid = !local.is_empty() && !domain.is_empty();
    valid.then(|| Handle::Email(data.to_lowercase()))
}

// ---- handlers ----------------------------------------------------------------------------

#[derive(Deserialize)]
struct AuthQuery {
    #[serde(rename = "apiKey")]
    api_key: Option<String>,
}

/// `GET /api/auth?apiKey=`: the payload mirrors OMI's (`access_token`, `access_type`,
/// `token_type`); like OMI it carries no lifetime, which is documented as 24 hours.
async fn auth(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<AuthQuery>,
) -> Result<Response, Failure> {
    if query.api_key.as_deref() != Some(shared.api_key.as_str()) {
        let refusal = Failure::unauthorized("invalid api key");
        let with_status = |http| {
            Err(Failure {
                http,
                ..refusal.clone()
            })
        };
        return match shared.key_refusal {
            KeyRefusal::Unauthorized => Err(refusal),
            KeyRefusal::BadRequest => with_status(StatusCode::BAD_REQUEST),
            KeyRefusal::Forbidden => with_status(StatusCode::FORBIDDEN),
            KeyRefusal::FailEnvelope => with_status(StatusCode::OK),
            KeyRefusal::NoToken => Ok(success(json!({"access_type": "normal"}))),
            KeyRefusal::Garbage => Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/html")],
                "<html><body>Login</body></html>",
            )
                .into_response()),
        };
    }
    let token = shared.issue_token();
    Ok(success(json!({
        "access_token": token,
        "access_type": "normal",
        "token_type": "Bearer",
    })))
}

async fn require_token(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let verdict = match bearer_token(request.headers()) {
        Some(token) => shared.check_token(token),
        None => Err("missing bearer token"),
    };
    match verdict {
        Ok(()) => next.run(request).await,
        Err(reason) => Failure::unauthorized(reason).into_response(),
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// `POST /api/v2/contact/add`: one record, the rules of `addMany`; OMI answers `payload: true`.
async fn add(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<Response, Failure> {
    let record = parse_json(&body)?;
    shared.crm().add_all(vec![record], false)?;
    Ok(success(Value::Bool(true)))
}

/// `POST /api/v2/contact/addMany` `{"data":[…]}`: atomic, answers `payload: {"success":true}`.
async fn add_many(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<Response, Failure> {
    let Value::Object(mut batch) = parse_json(&body)? else {
        return Err(Failure::request("body must be {\"data\": [contact, ...]}"));
    };
    let Some(Value::Array(records)) = batch.remove("data") else {
        return Err(Failure::request("data must be an array of contacts"));
    };
    if records.is_empty() {
        return Err(Failure::request("data is empty"));
    }
    if records.len() > shared.max_batch {
        return Err(Failure::business(
            error_code::BATCH_SIZE_EXCEEDED,
            format!("{} contacts, at most {}", records.len(), shared.max_batch),
        ));
    }
    shared.crm().add_all(records, shared.partial_batches)?;
    Ok(success(json!({ "success": true })))
}

/// `POST /api/v2/contact/update`: OMI answers `payload: true`.
async fn update(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<Response, Failure> {
    let Value::Object(fields) = parse_json(&body)? else {
        return Err(Failure::request("body must be a contact object"));
    };
    shared.crm().update(fields)?;
    Ok(success(Value::Bool(true)))
}

/// `GET /api/v2/contact/get/:id`, by OMI `_id`. The real answer is a richer layout; the stored
/// record is enough for the sync, which never reads it.
async fn get_contact(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let crm = shared.crm();
    let index = crm.by_id.get(&id).copied().ok_or_else(|| {
        Failure::business(
            error_code::CONTACT_NOT_FOUND,
            format!("contact {id} not found"),
        )
    })?;
    Ok(success(Value::Object(crm.contacts[index].clone())))
}

fn parse_json(body: &[u8]) -> Result<Value, Failure> {
    serde_json::from_slice(body).map_err(|e| Failure::request(format!("invalid JSON body: {e}")))
}

// ---- envelope ----------------------------------------------------------------------------

fn envelope(status_code: i64, payload: Value) -> Json<Value> {
    Json(json!({
        "status_code": status_code,
        "instance_id": "sim",
        "instance_name": "sim",
        "payload": payload,
        "key_enabled": false,
    }))
}

fn success(payload: Value) -> Response {
    envelope(STATUS_OK, payload).into_response()
}

/// A `-9999` answer. Business failures come with HTTP 200, as OMI does: clients must judge by
/// `status_code`. Only auth failures use an HTTP error status (401).
#[derive(Debug, Clone)]
struct Failure {
    http: StatusCode,
    code: &'static str,
    message: String,
}

impl Failure {
    fn business(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            http: StatusCode::OK,
            code,
            message: message.into(),
        }
    }

    fn request(message: impl Into<String>) -> Self {
        Self::business(error_code::REQUEST_INVALID, message)
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::business(error_code::VALIDATION_ERROR, message)
    }

    fn taken(handle: &Handle, label: &str) -> Self {
        let (kind, value) = match handle {
            Handle::Phone(phone) => ("phone", phone),
            Handle::Email(email) => ("email", email),
        };
        Self::business(
            error_code::PHONE_OR_EMAIL_TAKEN,
            format!("{label}: {kind} {value} is assigned to another contact"),
        )
    }

    fn unauthorized(message: &str) -> Self {
        Self {
            http: StatusCode::UNAUTHORIZED,
            code: error_code::UNAUTHORIZED,
            message: message.to_owned(),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let payload = json!({ "status": "fail", "error": self.code, "message": self.message });
        (self.http, envelope(STATUS_FAIL, payload)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_are_e164_or_digits() {
        assert_eq!(
            phone_handle("+6285782120717"),
            Some(Handle::Phone("6285782120717".into()))
        );
        assert!(phone_handle("0989123456").is_some());
        assert!(phone_handle("+62 857").is_none());
        assert!(phone_handle("12ab5678").is_none());
        assert!(phone_handle("").is_none());
    }

    #[test]
    fn emails_need_an_at_and_compare_without_case() {
        assert_eq!(
            email_handle("A@Example.com"),
            Some(Handle::Email("a@example.com".into()))
        );
        assert!(email_handle("nobody").is_none());
        assert!(email_handle("@example.com").is_none());
    }

    #[test]
    fn update_adds_and_removes_names_and_replaces_the_rest() {
        let current = json!({"refId": "r", "fullName": "A", "tags": ["x", "y"]});
        let fields = json!({"refId": "other", "fullName": "B", "tags": ["z"], "tagRemoves": ["x"]});
        let (Value::Object(current), Value::Object(fields)) = (current, fields) else {
            unreachable!()
        };
        let next = Value::Object(merged(&current, fields));
        assert_eq!(
            next,
            json!({"refId": "r", "fullName": "B", "tags": ["y", "z"]})
        );
    }
}
