//! `normalize`: one raw 3Dolphins record in, one canonical `Contact` (or a quarantine reason) out.
//! Total over every JSON value: bad members degrade to empty/None, only a missing id quarantines.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{ContactId, EmailAddress, PhoneNumber, Region};

/// Longest first or last name kept, in characters.
const MAX_NAME_CHARS: usize = 255;

/// The canonical contact (docs/contact.md#fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    pub id: ContactId,
    pub first_name: String,
    pub last_name: String,
    pub full_name: String,
    pub emails: Vec<EmailAddress>,
    pub phones: Vec<PhoneNumber>,
    pub vip: bool,
    pub fields: BTreeMap<String, serde_json::Value>,
    pub created_at: Option<i64>,
    pub modified_at: Option<i64>,
}

/// A normalized record plus what normalization dropped or rewrote, for counters.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    pub contact: Contact,
    pub dropped_emails: u32,
    pub dropped_phones: u32,
    /// Phones whose E.164 form differs from how the source spelled them.
    pub reformatted_phones: u32,
}

/// Why a record was quarantined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QuarantineReason(pub String);

/// The version of the rules in [`normalize`]. Raise it whenever they change what a record
/// becomes: it is part of [`raw_hash`], so unchanged records are normalized again once.
pub const NORMALIZER_VERSION: u32 = 1;

/// What an unchanged record is recognized by: XXH3-128 of its raw text, seeded with the
/// normalizer version. Every record of every pass is hashed, so it must be fast: BLAKE3 here
/// was a quarter of an unchanged pass (docs/performance.md). A hash only ever compares a
/// record with the one stored under its own id, or with its own page's shadow, so a
/// collision-resistant hash buys nothing; 128 bits make an accidental match negligible.
pub type RawHash = [u8; 16];

/// The [`RawHash`] of a record under this version of the rules.
pub fn raw_hash(raw: &str) -> RawHash {
    raw_hash_with(NORMALIZER_VERSION, raw)
}

/// [`raw_hash`] under another normalizer version (what an older binary stored).
pub fn raw_hash_with(version: u32, raw: &str) -> RawHash {
    xxhash_rust::xxh3::xxh3_128_with_seed(raw.as_bytes(), u64::from(version)).to_le_bytes()
}

/// The members of a source record [`normalize`] reads; [`parse_record`] skips the rest.
const USED_MEMBERS: [&str; 12] = [
    "id",
    "contactFirstName",
    "contactLastName",
    "username",
    "contactEmail",
    "contactEmailString",
    "phones",
    "phonesString",
    "vipStatus",
    "additionalFieldsObject",
    "createdDate",
    "modifiedDate",
];

/// Parse a raw record into what [`normalize`] reads: an object keeps only the members it
/// uses, the others are checked and skipped without being built (a record is about 2 KB, most
/// of it maps `normalize` never reads). A repeated member keeps its last value, as a full
/// parse would; anything but an object is parsed whole, for `normalize` to refuse.
pub fn parse_record(raw: &str) -> serde_json::Result<Value> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

    /// A member name: which used member it is, if any, without allocating.
    struct Name;
    impl<'de> DeserializeSeed<'de> for Name {
        type Value = Option<&'static str>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
    }
    impl Visitor<'_> for Name {
        type Value = Option<&'static str>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a member name")
        }
        fn visit_str<E>(self, name: &str) -> Result<Self::Value, E> {
            Ok(USED_MEMBERS.iter().find(|used| **used == name).copied())
        }
    }

    struct UsedMembers;
    impl<'de> Visitor<'de> for UsedMembers {
        type Value = Value;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a record")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut used = Map::new();
            while let Some(name) = map.next_key_seed(Name)? {
                match name {
                    Some(name) => {
                        used.insert(name.to_owned(), map.next_value()?);
                    }
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(Value::Object(used))
        }
    }

    if !raw.trim_start().starts_with('{') {
        return serde_json::from_str(raw);
    }
    let mut de = serde_json::Deserializer::from_str(raw);
    let value = de.deserialize_map(UsedMembers)?;
    de.end()?;
    Ok(value)
}

pub fn normalize(raw: &serde_json::Value, region: Region) -> Result<Normalized, QuarantineReason> {
    let record = raw
        .as_object()
        .ok_or_else(|| QuarantineReason("record is not an object".to_owned()))?;
    let id = ContactId::from_json(record.get("id"))?;

    let first_name = clean_text(str_member(record, "contactFirstName"));
    let last_name = clean_text(str_member(record, "contactLastName"));
    let full_name = full_name(&first_name, &last_name, str_member(record, "username"));
    let emails = normalize_emails(&list_member(record, "contactEmail", "contactEmailString"));
    let phones = normalize_phones(&list_member(record, "phones", "phonesString"), region);

    let contact = Contact {
        id,
        first_name,
        last_name,
        full_name,
        emails: emails.kept,
        phones: phones.kept,
        vip: record.get("vipStatus").and_then(Value::as_str) == Some("Yes"),
        fields: additional_fields(record.get("additionalFieldsObject")),
        created_at: epoch_millis(record.get("createdDate")),
        modified_at: epoch_millis(record.get("modifiedDate")),
    };
    Ok(Normalized {
        contact,
        dropped_emails: emails.dropped,
        dropped_phones: phones.dropped,
        reformatted_phones: phones.reformatted,
    })
}

/// A string member, or "" when it is missing or not a string.
fn str_member<'a>(record: &'a Map<String, Value>, key: &str) -> &'a str {
    record.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Trimmed, without control or bidi-control characters, at most `MAX_NAME_CHARS`.
/// Trimming again after the cut keeps the result a fixed point of this function.
fn clean_text(raw: &str) -> String {
    let kept: String = raw.chars().filter(|&c| !is_unwanted_char(c)).collect();
    let trimmed = kept.trim();
    let cut = match trimmed.char_indices().nth(MAX_NAME_CHARS) {
        Some((end, _)) => &trimmed[..end],
        None => trimmed,
    };
    cut.trim_end().to_owned()
}

/// Control characters and the invisible bidi controls that can make a name display as
/// something else (Trojan-Source style spoofing).
fn is_unwanted_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

fn full_name(first: &str, last: &str, username: &str) -> String {
    let joined = match (first.is_empty(), last.is_empty()) {
        (false, false) => format!("{first} {last}"),
        _ => format!("{first}{last}"),
    };
    if joined.is_empty() {
        clean_text(username)
    } else {
        joined
    }
}

/// The string items of the array member `array_key` if it has any, else the comma-separated
/// parts of the string member `string_key` (3Dolphins sends either or both).
fn list_member<'a>(
    record: &'a Map<String, Value>,
    array_key: &str,
    string_key: &str,
) -> Vec<&'a str> {
    let from_array: Vec<&str> = record
        .get(array_key)
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !from_array.is_empty() {
        return from_array;
    }
    str_member(record, string_key).split(',').collect()
}

/// Outcome of cleaning one list: what was kept, in source order without duplicates,
/// and the counters the sync reports.
struct Cleaned<T> {
    kept: Vec<T>,
    dropped: u32,
    reformatted: u32,
}

impl<T> Default for Cleaned<T> {
    fn default() -> Self {
        Self {
            kept: Vec::new(),
            dropped: 0,
            reformatted: 0,
        }
    }
}

fn normalize_emails(raw: &[&str]) -> Cleaned<EmailAddress> {
    let mut out = Cleaned::default();
    let mut seen = HashSet::new();
    for item in raw.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        match EmailAddress::parse(item) {
            Some(email) => {
                if seen.insert(email.clone()) {
                    out.kept.push(email);
                }
            }
            None => out.dropped += 1,
        }
    }
    out
}

fn normalize_phones(raw: &[&str], region: Region) -> Cleaned<PhoneNumber> {
    let mut out = Cleaned::default();
    let mut seen = HashSet::new();
    for item in raw.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        match PhoneNumber::parse(item, region) {
            Some(phone) => {
                // Counted per source spelling, duplicates included: it measures how the
                // source writes numbers, not how many distinct numbers we rewrote.
                if phone.as_str() != item {
                    out.reformatted += 1;
                }
                if seen.insert(phone.clone()) {
                    out.kept.push(phone);
                }
            }
            None => out.dropped += 1,
        }
    }
    out
}

/// `additionalFieldsObject: [{name, value}]` as a map. Malformed items and null values carry
/// nothing worth syncing, so they are skipped; on a repeated name the first one wins.
fn additional_fields(value: Option<&Value>) -> BTreeMap<String, Value> {
    let mut fields = BTreeMap::new();
    let Some(items) = value.and_then(Value::as_array) else {
        return fields;
    };
    for item in items.iter().filter_map(Value::as_object) {
        let (Some(name), Some(value)) =
            (item.get("name").and_then(Value::as_str), item.get("value"))
        else {
            continue;
        };
        if !value.is_null() {
            fields
                .entry(name.to_owned())
                .or_insert_with(|| value.clone());
        }
    }
    fields
}

/// Epoch milliseconds from an integral JSON number or a numeric string; anything else is None.
fn epoch_millis(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().and_then(integral_f64_to_i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn integral_f64_to_i64(f: f64) -> Option<i64> {
    // i64::MAX as f64 rounds up to 2^63, which itself does not fit: hence the strict `<`.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    (f.fract() == 0.0 && (-LIMIT..LIMIT).contains(&f)).then_some(f as i64)
}

#[cfg(test)]
mod tests {
    use proptest::strategy::Strategy as _;
    use serde_json::json;

    use super::*;

    fn norm(raw: Value) -> Normalized {
        normalize(&raw, Region::ID).expect("record should normalize")
    }

    fn emails(n: &Normalized) -> Vec<&str> {
        n.contact.emails.iter().map(EmailAddress::as_str).collect()
    }

    fn phones(n: &Normalized) -> Vec<&str> {
        n.contact.phones.iter().map(PhoneNumber::as_str).collect()
    }

    #[test]
    fn a_typical_record_normalizes_every_field() {
        let n = norm(json!({
            "id": "c-1",
            "createdDate": 1_600_000_000_000_i64,
            "modifiedDate": 1_600_000_500_000_i64,
            "contactFirstName": " Budi ",
            "contactLastName": "Santoso",
            "contactEmail": ["Budi@Example.com"],
            "phones": ["6285782120717"],
            "username": "budi",
            "vipStatus": "Yes",
            "additionalFieldsObject": [{"name": "city", "value": "Jakarta"}],
        }));
        let c = &n.contact;
        assert_eq!(c.id.as_str(), "c-1");
        assert_eq!(
            (c.first_name.as_str(), c.last_name.as_str()),
            ("Budi", "Santoso")
        );
        assert_eq!(c.full_name, "Budi Santoso");
        assert_eq!(emails(&n), ["budi@example.com"]);
        assert_eq!(phones(&n), ["+6285782120717"]);
        assert!(c.vip);
        assert_eq!(
            c.fields,
            BTreeMap::from([("city".to_owned(), json!("Jakarta"))])
        );
        assert_eq!(c.created_at, Some(1_600_000_000_000));
        assert_eq!(c.modified_at, Some(1_600_000_500_000));
        assert_eq!(
            (n.dropped_emails, n.dropped_phones, n.reformatted_phones),
            (0, 0, 1)
        );
    }

    #[test]
    fn records_that_are_not_objects_are_quarantined() {
        for raw in [json!(null), json!([]), json!("x"), json!(1)] {
            assert_eq!(
                normalize(&raw, Region::ID).unwrap_err().0,
                "record is not an object"
            );
        }
    }

    #[test]
    fn id_problems_quarantine_with_the_id_reason() {
        let err = normalize(&json!({"contactFirstName": "A"}), Region::ID).unwrap_err();
        assert_eq!(err.0, "missing id");
        let err = normalize(&json!({"id": {"x": 1}}), Region::ID).unwrap_err();
        assert_eq!(err.0, "id is not a string or integer (got object)");
    }

    #[test]
    fn a_record_with_only_an_id_gets_empty_defaults() {
        let n = norm(json!({"id": 7}));
        let c = &n.contact;
        assert_eq!(c.id.as_str(), "7");
        assert!(c.first_name.is_empty() && c.last_name.is_empty() && c.full_name.is_empty());
        assert!(c.emails.is_empty() && c.phones.is_empty() && c.fields.is_empty());
        assert!(!c.vip);
        assert_eq!((c.created_at, c.modified_at), (None, None));
    }

    #[test]
    fn names_lose_control_and_bidi_characters() {
        let n = norm(json!({
            "id": "1",
            "contactFirstName": "\u{202E}Ev\u{0000}il\u{2066}\n",
            "contactLastName": "\tMa\u{200F}llory\u{0007}",
        }));
        assert_eq!(n.contact.first_name, "Evil");
        assert_eq!(n.contact.last_name, "Mallory");
    }

    #[test]
    fn whitespace_exposed_by_removal_is_trimmed() {
        assert_eq!(clean_text("\u{202A} Ann \u{202C}"), "Ann");
    }

    #[test]
    fn names_are_cut_to_255_characters_on_a_char_boundary() {
        let long = "é".repeat(300);
        let cut = clean_text(&long);
        assert_eq!(cut.chars().count(), MAX_NAME_CHARS);
        assert_eq!(cut, "é".repeat(MAX_NAME_CHARS));
    }

    #[test]
    fn a_cut_ending_in_a_space_is_trimmed_so_cleaning_is_idempotent() {
        let raw = format!("{} tail", "a".repeat(MAX_NAME_CHARS - 1));
        let once = clean_text(&raw);
        assert_eq!(once, "a".repeat(MAX_NAME_CHARS - 1));
        assert_eq!(clean_text(&once), once);
    }

    #[test]
    fn non_string_names_become_empty() {
        let n = norm(json!({"id": "1", "contactFirstName": 5, "contactLastName": ["x"]}));
        assert_eq!(n.contact.first_name, "");
        assert_eq!(n.contact.last_name, "");
    }

    #[test]
    fn full_name_uses_one_space_only_between_two_parts() {
        assert_eq!(full_name("Ann", "Lee", "u"), "Ann Lee");
        assert_eq!(full_name("Ann", "", "u"), "Ann");
        assert_eq!(full_name("", "Lee", "u"), "Lee");
    }

    #[test]
    fn full_name_falls_back_to_the_cleaned_username() {
        let n = norm(json!({"id": "1", "contactFirstName": " ", "username": " \u{202E}budi99 "}));
        assert_eq!(n.contact.full_name, "budi99");
        let n = norm(json!({"id": "1", "username": 99}));
        assert_eq!(n.contact.full_name, "");
    }

    #[test]
    fn emails_are_lower_cased_deduplicated_and_invalid_ones_counted() {
        let n = norm(json!({
            "id": "1",
            "contactEmail": ["B@X.com", "a@x.com", "b@x.com", "not-an-email", "  ", 5, null, "Bob <c@x.com>"],
        }));
        assert_eq!(emails(&n), ["b@x.com", "a@x.com"]);
        assert_eq!(n.dropped_emails, 2);
    }

    #[test]
    fn email_string_is_split_on_commas_when_no_array() {
        let n = norm(json!({"id": "1", "contactEmailString": "A@x.com, b@y.id,,bad@ ,a@X.COM"}));
        assert_eq!(emails(&n), ["a@x.com", "b@y.id"]);
        assert_eq!(n.dropped_emails, 1);
    }

    #[test]
    fn email_array_wins_over_the_string() {
        let n = norm(json!({
            "id": "1",
            "contactEmail": ["a@x.com"],
            "contactEmailString": "other@x.com",
        }));
        assert_eq!(emails(&n), ["a@x.com"]);
    }

    #[test]
    fn an_array_without_strings_falls_back_to_the_string() {
        for array in [json!([]), json!([null, 3]), json!("not an array")] {
            let n =
                norm(json!({"id": "1", "contactEmail": array, "contactEmailString": "a@x.com"}));
            assert_eq!(emails(&n), ["a@x.com"]);
        }
    }

    #[test]
    fn utf8_local_parts_are_kept() {
        let n = norm(json!({"id": "1", "contactEmail": ["Dédé@Exemple.fr"]}));
        assert_eq!(emails(&n), ["dédé@exemple.fr"]);
    }

    #[test]
    fn phone_spellings_collapse_to_one_e164_number() {
        let n = norm(json!({
            "id": "1",
            "phones": ["6285782120717", "085782120717", "+62 857-8212-0717", "+6285782120717", "123", "x"],
        }));
        assert_eq!(phones(&n), ["+6285782120717"]);
        assert_eq!(n.dropped_phones, 2);
        assert_eq!(n.reformatted_phones, 3);
    }

    #[test]
    fn phone_string_is_split_on_commas_when_no_array() {
        let n = norm(json!({"id": "1", "phonesString": "6285782120717, +1 650 253 0000,"}));
        assert_eq!(phones(&n), ["+6285782120717", "+16502530000"]);
        assert_eq!(n.dropped_phones, 0);
    }

    #[test]
    fn vip_only_for_exact_yes() {
        for (value, vip) in [
            (json!("Yes"), true),
            (json!("yes"), false),
            (json!("No"), false),
            (json!(true), false),
        ] {
            assert_eq!(
                norm(json!({"id": "1", "vipStatus": value})).contact.vip,
                vip
            );
        }
    }

    #[test]
    fn additional_fields_skip_nulls_and_malformed_items() {
        let n = norm(json!({
            "id": "1",
            "additionalFieldsObject": [
                {"name": "a", "value": 1},
                {"name": "b", "value": null},
                {"name": "c"},
                {"value": 2},
                {"name": 3, "value": 3},
                "junk",
                {"name": "d", "value": {"nested": [true]}},
                {"name": "a", "value": "second"},
            ],
        }));
        let expected = BTreeMap::from([
            ("a".to_owned(), json!(1)),
            ("d".to_owned(), json!({"nested": [true]})),
        ]);
        assert_eq!(n.contact.fields, expected);
    }

    #[test]
    fn dates_accept_integral_numbers_and_numeric_strings_only() {
        let cases = [
            (json!(1_600_000_000_000_i64), Some(1_600_000_000_000)),
            (json!(1_600_000_000_000.0), Some(1_600_000_000_000)),
            (json!(" 1600000000000 "), Some(1_600_000_000_000)),
            (json!(-5), Some(-5)),
            (json!(1.5), None),
            (json!(1e300), None),
            (json!(u64::MAX), None),
            (json!("soon"), None),
            (json!(""), None),
            (json!(true), None),
            (json!(null), None),
            (json!([1]), None),
        ];
        for (value, expected) in cases {
            let n = norm(json!({"id": "1", "createdDate": value.clone(), "modifiedDate": value}));
            assert_eq!(n.contact.created_at, expected);
            assert_eq!(n.contact.modified_at, expected);
        }
    }

    /// `normalize` of a [`parse_record`] is `normalize` of a full parse.
    fn same_as_full_parse(raw: &str) -> Result<(), String> {
        let full = serde_json::from_str::<Value>(raw).map(|v| normalize(&v, Region::ID));
        let used = parse_record(raw).map(|v| normalize(&v, Region::ID));
        match (full, used) {
            (Ok(full), Ok(used)) if full == used => Ok(()),
            (Err(_), Err(_)) => Ok(()),
            (full, used) => Err(format!("{raw}\nfull: {full:?}\nused: {used:?}")),
        }
    }

    #[test]
    fn parsing_only_the_used_members_normalizes_the_stand_in_records_alike() {
        for index in 0..3_000 {
            let record = contact_sync_sim::dolphins::generate_contact(7, index).to_string();
            same_as_full_parse(&record).unwrap();
        }
        for index in 0..contact_sync_sim::dolphins::MALFORMED_KINDS.len() {
            let record = contact_sync_sim::dolphins::malformed_record(7, index).to_string();
            same_as_full_parse(&record).unwrap();
        }
        for raw in [
            r#"{"id":"1","contactFirstName":"A","contactFirstName":"B"}"#,
            r#"{"\u0069d":"2","contactLastName":"Escaped name"}"#,
            r#"  {"id":3,"other":{"id":"nested"},"phones":["085782120717"]} "#,
            r#"["id", "1"]"#,
            r#""id""#,
            "null",
        ] {
            same_as_full_parse(raw).unwrap();
        }
        // The one difference: a lone surrogate escape (grammatical JSON, RFC 8259 section 8.2,
        // but no string) in a member normalization never reads does not quarantine the record.
        let lone = r#"{"id":"4","skipped":[1,{"a":"\ud800"}],"phonesString":"085782120717"}"#;
        assert!(serde_json::from_str::<Value>(lone).is_err());
        let n = normalize(&parse_record(lone).unwrap(), Region::ID).unwrap();
        assert_eq!(phones(&n), ["+6285782120717"]);
    }

    proptest::proptest! {
        #[test]
        fn parsing_only_the_used_members_normalizes_any_object_alike(
            members in proptest::collection::vec(
                (
                    proptest::sample::select(
                        [&USED_MEMBERS[..], &["other", "contactEmailStrings", ""]].concat()
                    ),
                    proptest::prop_oneof![
                        proptest::strategy::Just(json!(null)),
                        proptest::arbitrary::any::<i64>().prop_map(Value::from),
                        "[0-9 +@a-z.,-]{0,16}".prop_map(Value::from),
                        proptest::collection::vec("[0-9+@a-z.-]{0,14}", 0..3).prop_map(Value::from),
                        proptest::collection::btree_map("[a-z]{1,4}", "[a-z]{0,4}", 0..3)
                            .prop_map(|m| json!(m)),
                    ],
                ),
                0..12,
            )
        ) {
            // Written by hand so a member may appear twice.
            let body: Vec<String> = members
                .iter()
                .map(|(name, value)| format!("{}:{value}", Value::from(*name)))
                .collect();
            let raw = format!("{{{}}}", body.join(","));
            same_as_full_parse(&raw).map_err(proptest::test_runner::TestCaseError::fail)?;
        }
    }
}
