//! Deterministic, realistic 3Dolphins contact records, shaped like the example in the vendor's
//! document (`seeds/000_…`), with the irregularities real data has and the sync must survive.
//!
//! Variety among well-formed records (rates are approximate, decided per record by the seed):
//! phones as `6285782120717` (most), `085782120717` or `+62 857-8212-0717`; no email (12 %),
//! two emails (10 %), no phone (10 %), two phones (12 %), the same number twice in two
//! spellings (2 %), only the `contactEmailString`/`phonesString` forms (7 %), an upper-case
//! email (3 %), an invalid email (2 %) or phone (2 %), no last name (10 %), empty names with a
//! username (3 %), names padded with spaces (1 %) or carrying a bidi override (0.2 %), no
//! `vipStatus` (3 %), no `additionalFieldsObject` (5 %), an integer id (0.1 %) or an id padded
//! with spaces (0.1 %). Ids, emails and phone numbers are unique across records.

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use time::macros::{format_description, offset};

const FIRST_NAMES: [&str; 30] = [
    "Budi", "Siti", "Agus", "Dewi", "Putri", "Rizky", "Andi", "Sri", "Joko", "Ayu", "Rina",
    "Hendra", "Wahyu", "Fitri", "Bayu", "Indah", "Eko", "Nur", "Dian", "Yusuf", "Kartika", "Fajar",
    "Intan", "Bambang", "Ratna", "Hadi", "Maya", "Arief", "Lina", "Teguh",
];

const LAST_NAMES: [&str; 20] = [
    "Santoso",
    "Wijaya",
    "Saputra",
    "Lestari",
    "Nugroho",
    "Hidayat",
    "Kurniawan",
    "Setiawan",
    "Pratama",
    "Wibowo",
    "Susanto",
    "Rahmawati",
    "Siregar",
    "Nasution",
    "Halim",
    "Gunawan",
    "Permana",
    "Utami",
    "Hakim",
    "Purnomo",
];

const EMAIL_DOMAINS: [&str; 7] = [
    "gmail.com",
    "gmail.com",
    "gmail.com",
    "yahoo.co.id",
    "yahoo.com",
    "outlook.com",
    "ptmaju.co.id",
];

/// Indonesian mobile prefixes after the trunk `0` (Telkomsel, Indosat, XL, Tri, Smartfren, Axis).
const MOBILE_PREFIXES: [&str; 30] = [
    "811", "812", "813", "821", "822", "823", "851", "852", "853", "814", "815", "816", "855",
    "856", "857", "858", "817", "818", "819", "859", "877", "878", "895", "896", "897", "898",
    "899", "881", "882", "838",
];

const INVALID_PHONES: [&str; 4] = ["12345", "0857-82", "6285", "000000000000"];

const CITIES: [&str; 6] = [
    "Jakarta", "Surabaya", "Bandung", "Medan", "Semarang", "Makassar",
];

const SEGMENTS: [&str; 3] = ["Gold", "Silver", "Bronze"];

/// The system user that creates contacts arriving through channels (value from the document).
const SYSTEM_USER: &str = "82ab0fd5cfd1e80d1ff97c0cfc9aa9e2";

/// 2021-01-01T00:00:00Z: generated contacts were created over the following years.
const EPOCH_MS: i64 = 1_609_459_200_000;
const DAY_MS: i64 = 86_400_000;

/// Index space of the records under malformed ones, so their emails and phones collide with no
/// well-formed contact.
const MALFORMED_BASE: usize = 90_000_000;

/// Second phone numbers are drawn from this offset, to stay distinct from every first one.
const SECOND_PHONE_OFFSET: u64 = 50_000_000;

/// The SplitMix64 finalizer: a bijection on `u64`, so distinct inputs give distinct outputs.
pub(crate) fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn record_hash(seed: u64, index: usize) -> u64 {
    mix64((index as u64).wrapping_add(mix64(seed)))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum IdKind {
    Hex,
    Integer,
    Padded,
}

fn id_kind(hash: u64) -> IdKind {
    match mix64(hash ^ 0x1d) % 1000 {
        0 => IdKind::Integer,
        1 => IdKind::Padded,
        _ => IdKind::Hex,
    }
}

fn hex_id(hash: u64) -> String {
    format!("{hash:016x}{:016x}", mix64(hash ^ 0xfeed))
}

/// The normalized id of generated contact `index`, without rendering the record.
pub(crate) fn contact_id(seed: u64, index: usize) -> String {
    let hash = record_hash(seed, index);
    match id_kind(hash) {
        IdKind::Integer => integer_id(index).to_string(),
        IdKind::Hex | IdKind::Padded => hex_id(hash),
    }
}

fn integer_id(index: usize) -> u64 {
    7_000_000_000 + index as u64
}

/// Generated contact `index` for `seed`; the same arguments always give the same record.
pub fn generate_contact(seed: u64, index: usize) -> Value {
    with_contact(seed, index, |contact| serde_json::to_value(contact))
        .expect("a contact always serializes")
}

/// Appends the JSON of generated contact `index` to `out` (the serving fast path).
pub(crate) fn write_contact(seed: u64, index: usize, out: &mut Vec<u8>) {
    with_contact(seed, index, |contact| serde_json::to_writer(out, contact))
        .expect("writing to a Vec cannot fail");
}

/// The ways a list element can fail to yield an id, used in turn by [`malformed_record`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MalformedKind {
    /// A contact without an `id` field.
    MissingId,
    /// `"id": null`.
    NullId,
    /// `"id": {"$oid": "…"}`.
    ObjectId,
    /// `"id": 1.5`.
    FloatId,
    /// `"id": "   "`.
    BlankId,
    /// A 300-character string id (the limit is 256).
    OverlongId,
    /// A bare string where a contact object belongs.
    StringElement,
    /// A bare number where a contact object belongs.
    NumberElement,
}

pub const MALFORMED_KINDS: [MalformedKind; 8] = [
    MalformedKind::MissingId,
    MalformedKind::NullId,
    MalformedKind::ObjectId,
    MalformedKind::FloatId,
    MalformedKind::BlankId,
    MalformedKind::OverlongId,
    MalformedKind::StringElement,
    MalformedKind::NumberElement,
];

impl MalformedKind {
    /// The kind of the `k`-th malformed record: the kinds take turns.
    pub fn of(k: usize) -> Self {
        MALFORMED_KINDS[k % MALFORMED_KINDS.len()]
    }
}

/// The `k`-th malformed list element for `seed` (its kind is [`MalformedKind::of`]`(k)`).
pub fn malformed_record(seed: u64, k: usize) -> Value {
    let mut record = generate_contact(seed, MALFORMED_BASE + k);
    let id = match MalformedKind::of(k) {
        MalformedKind::MissingId => {
            record.as_object_mut().map(|o| o.remove("id"));
            return record;
        }
        MalformedKind::NullId => Value::Null,
        MalformedKind::ObjectId => serde_json::json!({ "$oid": hex_id(mix64(k as u64)) }),
        MalformedKind::FloatId => serde_json::json!(1.5),
        MalformedKind::BlankId => Value::from("   "),
        MalformedKind::OverlongId => Value::from("a".repeat(300)),
        MalformedKind::StringElement => return Value::from(format!("corrupt contact #{k}")),
        MalformedKind::NumberElement => return Value::from(k),
    };
    record["id"] = id;
    record
}

#[derive(Serialize)]
#[serde(untagged)]
enum IdValue {
    Text(String),
    Number(u64),
}

impl IdValue {
    /// The id as the sync normalizes it.
    fn normalized(&self) -> String {
        match self {
            IdValue::Text(text) => text.trim().to_owned(),
            IdValue::Number(n) => n.to_string(),
        }
    }
}

#[derive(Serialize)]
struct Field {
    name: &'static str,
    value: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Touchpoint<'a> {
    id: &'a str,
    display_name: &'a str,
    screen_name: &'a str,
    profile_picture: Option<&'a str>,
    channel_type: &'static str,
    channel_type_icon: &'static str,
    contact_id: &'a str,
}

/// One record in the vendor's field order. It borrows everything it can from [`Person`] and
/// the strings derived from it: allocation dominated the cost of serving generated pages.
/// Optional fields are left out, not nulled, as the real API omits data.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Contact<'a> {
    id: &'a IdValue,
    spell: [&'a str; 3],
    owner: &'a str,
    created_date: i64,
    created_by: &'static str,
    modified_date: i64,
    modified_by: &'static str,
    age_max: u8,
    age_min: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    contact_email: Option<&'a [String]>,
    contact_email_string: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    contact_first_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    contact_last_name: Option<&'a str>,
    max_follower: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    phone_types: Option<&'static [&'static str]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    phones: Option<&'a [String]>,
    phones_string: &'a str,
    social_id_webchat: &'a [String],
    social_name_webchat: [&'a str; 1],
    social_screen_name_webchat: &'a [String],
    socials_string: &'a str,
    username: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    additional_fields_object: Option<&'a [Field]>,
    influencer_category: &'static str,
    map_masked_phone_number: SameKeyValue<'a>,
    masking_mode: bool,
    first_formatted_phone: &'a str,
    masked_phones: &'a [String],
    pretty_created_date: &'a str,
    rating: u8,
    contact_account_ids: Chained<'a>,
    contact_touchpoints: &'a [Touchpoint<'a>],
    phone_list: &'a str,
    additional_field_value_as_map: FieldsByName<'a>,
    available_touchpoints: &'static [&'static str],
    contact_phone_formatted: &'a str,
    have_any_social_accounts: bool,
    live_chat_account: bool,
    contact_email_formated: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    vip_status: Option<&'static str>,
    masked_social_whatsapp_id: [(); 0],
}

/// `{"6285…": "6285…"}`, the vendor's unmasked phone map.
struct SameKeyValue<'a>(&'a [String]);

impl Serialize for SameKeyValue<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|v| (v, v)))
    }
}

/// Two lists serialized as one array.
struct Chained<'a>(&'a [String], &'a [String]);

impl Serialize for Chained<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().chain(self.1))
    }
}

/// `additionalFieldValueAsMap`: each field under its own name.
struct FieldsByName<'a>(&'a [Field]);

impl Serialize for FieldsByName<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|field| (field.name, field)))
    }
}

struct Person {
    first: String,
    last: Option<String>,
    username: String,
    emails: Vec<String>,
    phones: Vec<String>,
}

impl Person {
    fn generate(rng: &mut fastrand::Rng, index: usize) -> Self {
        let first_base = FIRST_NAMES[rng.usize(..FIRST_NAMES.len())];
        let last_base = LAST_NAMES[rng.usize(..LAST_NAMES.len())];
        let emails = emails(rng, index, first_base, last_base);
        let phones = phones(rng, index);
        let (mut first, mut last) = (first_base.to_owned(), Some(last_base.to_owned()));
        let mut username = format!("{first_base} {last_base}");
        match rng.u32(..1000) {
            0..100 => {
                last = None;
                username = first_base.to_owned();
            }
            100..130 => {
                (first, last) = (String::new(), Some(String::new()));
                username = format!("{}_{}{index}", first_base.to_lowercase(), &last_base[..1]);
            }
            130..140 => first = format!("  {first_base} "),
            140..142 => first = format!("{first_base}\u{202e}"),
            _ => {}
        }
        Person {
            first,
            last,
            username,
            emails,
            phones,
        }
    }
}

fn emails(rng: &mut fastrand::Rng, index: usize, first: &str, last: &str) -> Vec<String> {
    let count = match rng.u32(..100) {
        0..12 => 0,
        12..22 => 2,
        _ => 1,
    };
    let local = format!("{}.{}{index}", first.to_lowercase(), last.to_lowercase());
    let mut emails: Vec<String> = (0..count)
        .map(|n| {
            let domain = EMAIL_DOMAINS[rng.usize(..EMAIL_DOMAINS.len())];
            let suffix = if n == 0 { "" } else { ".alt" };
            format!("{local}{suffix}@{domain}")
        })
        .collect();
    let quirk = rng.u32(..100);
    if let Some(first) = emails.first_mut() {
        match quirk {
            0..3 => *first = first.to_uppercase(),
            3..5 => *first = invalid_email(rng, &local),
            _ => {}
        }
    }
    emails
}

fn invalid_email(rng: &mut fastrand::Rng, local: &str) -> String {
    match rng.u32(..4) {
        0 => format!("{local}@"),
        1 => format!("{} @gmail.com", local.replace('.', " ")),
        2 => format!("{local}.gmail.com"),
        _ => format!("{local}@@gmail.com"),
    }
}

fn phones(rng: &mut fastrand::Rng, index: usize) -> Vec<String> {
    let count = match rng.u32(..100) {
        0..10 => 0,
        10..22 => 2,
        _ => 1,
    };
    let mut phones: Vec<String> = (0..count)
        .map(|n| {
            let slot = index as u64 + if n == 0 { 0 } else { SECOND_PHONE_OFFSET };
            let prefix = MOBILE_PREFIXES[rng.usize(..MOBILE_PREFIXES.len())];
            spell_phone(rng, prefix, subscriber(slot))
        })
        .collect();
    match rng.u32(..100) {
        // The same number again, spelled differently: the sync must deduplicate it.
        0..2 if count == 1 => phones.push(respell(&phones[0])),
        2..4 if count > 0 => phones[0] = INVALID_PHONES[rng.usize(..INVALID_PHONES.len())].into(),
        _ => {}
    }
    phones
}

/// Eight subscriber digits, distinct for every `slot` below 10^8: multiplying by a number
/// coprime with 10 permutes the residues modulo 10^8.
fn subscriber(slot: u64) -> u64 {
    (slot.wrapping_mul(7_919_113) + 31_415_926) % 100_000_000
}

fn spell_phone(rng: &mut fastrand::Rng, prefix: &str, digits: u64) -> String {
    match rng.u32(..10) {
        0..7 => format!("62{prefix}{digits:08}"),
        7..9 => format!("0{prefix}{digits:08}"),
        _ => format!("+62 {prefix}-{:04}-{:04}", digits / 10_000, digits % 10_000),
    }
}

/// `62…` or `+62 …` becomes `0…`; `0…` becomes `62…`.
fn respell(phone: &str) -> String {
    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
    match digits.strip_prefix("62") {
        Some(national) => format!("0{national}"),
        None => format!("62{}", &digits[1..]),
    }
}

fn additional_fields(rng: &mut fastrand::Rng) -> Vec<Field> {
    let pick = |rng: &mut fastrand::Rng, options: &[&str]| {
        let i = rng.usize(..=options.len());
        options.get(i).map(|s| (*s).to_owned())
    };
    let npwp = (rng.u32(..4) == 0)
        .then(|| format!("09.254.{:03}.{}-407.000", rng.u32(..1000), rng.u32(..10)));
    vec![
        Field {
            name: "NPWP",
            value: npwp,
        },
        Field {
            name: "kota",
            value: pick(rng, &CITIES),
        },
        Field {
            name: "segment",
            value: pick(rng, &SEGMENTS),
        },
    ]
}

fn pretty_date(epoch_ms: i64) -> String {
    let format = format_description!("[day] [month repr:short] [year] [hour]:[minute]");
    OffsetDateTime::from_unix_timestamp(epoch_ms / 1000)
        .map(|t| t.to_offset(offset!(+7)))
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

const MOBILE: [&str; 3] = ["Mobile"; 3];

fn available_touchpoints(email: bool, phone: bool) -> &'static [&'static str] {
    const EMAIL: &str = "images/channel/ic_email.png";
    const WEBCHAT: &str = "images/channel/ic_webchat.png";
    match (email, phone) {
        (true, true) => &[EMAIL, WEBCHAT],
        (true, false) => &[EMAIL],
        (false, true) => &[WEBCHAT],
        (false, false) => &[],
    }
}

/// Everything about a record that is drawn rather than derived.
struct Draws {
    id: IdValue,
    person: Person,
    created_date: i64,
    modified_date: i64,
    string_only: bool,
    vip_status: Option<&'static str>,
    fields: Option<Vec<Field>>,
}

impl Draws {
    fn new(seed: u64, index: usize) -> Self {
        let hash = record_hash(seed, index);
        let mut rng = fastrand::Rng::with_seed(hash);
        let person = Person::generate(&mut rng, index);
        let id = match id_kind(hash) {
            IdKind::Hex => IdValue::Text(hex_id(hash)),
            IdKind::Integer => IdValue::Number(integer_id(index)),
            IdKind::Padded => IdValue::Text(format!("  {} ", hex_id(hash))),
        };
        let created_date = EPOCH_MS + rng.i64(0..1_300 * DAY_MS);
        let modified_date = match rng.u32(..10) {
            0..4 => created_date,
            _ => created_date + rng.i64(0..200 * DAY_MS),
        };
        let string_only = rng.u32(..100) < 7;
        let vip_status = match rng.u32(..100) {
            0..8 => Some("Yes"),
            8..11 => None,
            _ => Some("No"),
        };
        let fields = (rng.u32(..100) >= 5).then(|| additional_fields(&mut rng));
        Draws {
            id,
            person,
            created_date,
            modified_date,
            string_only,
            vip_status,
            fields,
        }
    }
}

/// Builds generated contact `index` and hands it to `use_contact`; the contact borrows the
/// strings derived here, which is why it cannot be returned.
fn with_contact<R>(seed: u64, index: usize, use_contact: impl FnOnce(&Contact<'_>) -> R) -> R {
    let d = Draws::new(seed, index);
    let p = &d.person;
    let id_text = d.id.normalized();
    let owner = hex_id(mix64(seed));
    let emails_string = p.emails.join(",");
    let phones_string = p.phones.join(",");
    let socials_string = [emails_string.as_str(), phones_string.as_str()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(",");
    let webchat_ids: Vec<String> = p
        .phones
        .iter()
        .map(|phone| format!("{phone}-{}", p.username))
        .collect();
    let pretty_created = pretty_date(d.created_date);
    let spell_name = p.username.to_lowercase();
    let first_email = p.emails.first().map_or("", String::as_str);
    let first_phone = p.phones.first().map_or("", String::as_str);
    let touchpoint = Touchpoint {
        id: first_email,
        display_name: &p.username,
        screen_name: first_email,
        profile_picture: None,
        channel_type: "javamail",
        channel_type_icon: "images/channel/ic_email.png",
        contact_id: &id_text,
    };
    let touchpoints = if p.emails.is_empty() {
        &[][..]
    } else {
        std::slice::from_ref(&touchpoint)
    };
    let fields = d.fields.as_deref();
    let contact = Contact {
        id: &d.id,
        spell: [&spell_name, first_email, first_phone],
        owner: &owner,
        created_date: d.created_date,
        created_by: SYSTEM_USER,
        modified_date: d.modified_date,
        modified_by: SYSTEM_USER,
        age_max: 0,
        age_min: 0,
        contact_email: (!d.string_only).then_some(&p.emails[..]),
        contact_email_string: &emails_string,
        contact_first_name: Some(&p.first),
        contact_last_name: p.last.as_deref(),
        max_follower: 0,
        phone_types: (!d.string_only).then_some(&MOBILE[..p.phones.len()]),
        phones: (!d.string_only).then_some(&p.phones[..]),
        phones_string: &phones_string,
        social_id_webchat: &webchat_ids,
        social_name_webchat: [&p.username],
        social_screen_name_webchat: &p.emails[..p.emails.len().min(1)],
        socials_string: &socials_string,
        username: &p.username,
        additional_fields_object: fields,
        influencer_category: "",
        map_masked_phone_number: SameKeyValue(&p.phones),
        masking_mode: false,
        first_formatted_phone: first_phone,
        masked_phones: &p.phones,
        pretty_created_date: &pretty_created,
        rating: 0,
        contact_account_ids: Chained(&p.emails, &p.phones),
        contact_touchpoints: touchpoints,
        phone_list: &phones_string,
        additional_field_value_as_map: FieldsByName(fields.unwrap_or_default()),
        available_touchpoints: available_touchpoints(!p.emails.is_empty(), !p.phones.is_empty()),
        contact_phone_formatted: &phones_string,
        have_any_social_accounts: false,
        live_chat_account: false,
        contact_email_formated: &emails_string,
        vip_status: d.vip_status,
        masked_social_whatsapp_id: [],
    };
    use_contact(&contact)
}
