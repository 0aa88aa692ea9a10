//! Properties of what the source sends: `normalize` over generated records (idempotence, phone
//! spellings, totality, the id rule) and page parsing over arbitrary and mutated answers (no
//! panic, bounded output). Case counts stay modest so `cargo test` is quick on a small machine.

use contact_sync::domain::{Contact, ContactId, PhoneNumber, Region, normalize};
use contact_sync::source::dolphins::parse_page;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Indonesian mobile prefixes (Telkomsel, Indosat, XL, Tri) after the trunk `0`.
const ID_MOBILE_PREFIXES: &[&str] = &["812", "813", "821", "852", "857", "878", "896"];

const BIDI_CONTROLS: &[char] = &[
    '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}',
    '\u{2069}', '\u{200E}', '\u{200F}',
];

/// A national significant number of an Indonesian mobile, e.g. `85782120717`.
fn id_mobile_nsn() -> impl Strategy<Value = String> {
    (prop::sample::select(ID_MOBILE_PREFIXES), "[0-9]{7,8}")
        .prop_map(|(prefix, rest)| format!("{prefix}{rest}"))
}

/// The three ways 3Dolphins data spells the same number.
fn spellings(nsn: &str) -> [String; 3] {
    let (head, tail) = nsn.split_at(3);
    let groups: Vec<&str> = tail
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).expect("ASCII digits"))
        .collect();
    [
        format!("62{nsn}"),
        format!("0{nsn}"),
        format!("+62 {head}-{}", groups.join("-")),
    ]
}

/// Any JSON value, nested a few levels.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[0-9+ ()-]{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Names with the characters the cleaning rules care about, sometimes longer than 255.
fn arb_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ \t\n\u{202E}\u{2066}\u{200F}a-zA-Zé ]{0,300}",
        any::<String>(),
        "[a-z]{250,260} [a-z ]{0,5}",
    ]
}

fn arb_email() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ ]?[A-Za-z0-9._%+-]{1,12}@[A-Za-z0-9]{1,8}\\.(com|co\\.id|ID)[ ]?",
        "[a-zé用]{1,6}@[a-z]{1,6}\\.[a-z]{2,3}",
        any::<String>(),
        "[a-z@. <>\"]{0,15}",
    ]
}

fn arb_phone() -> impl Strategy<Value = String> {
    prop_oneof![
        id_mobile_nsn().prop_flat_map(|nsn| prop::sample::select(spellings(&nsn).to_vec())),
        "[+]?[0-9 ().-]{0,18}",
        any::<String>(),
    ]
}

/// A plausible 3Dolphins record, with members that are sometimes missing or malformed.
fn arb_record() -> impl Strategy<Value = Value> {
    let id = prop_oneof![
        "[ ]?[a-zA-Z0-9-]{1,20}[ ]?".prop_map(Value::String),
        any::<i64>().prop_map(Value::from),
        arb_json(),
    ];
    let strings = |s: BoxedStrategy<String>| prop::collection::vec(s, 0..4);
    (
        id,
        (arb_name(), arb_name(), arb_name()),
        strings(arb_email().boxed()),
        strings(arb_phone().boxed()),
        prop_oneof![Just(json!("Yes")), Just(json!("No")), arb_json()],
        prop::collection::vec(("[a-z]{0,6}", arb_json()), 0..4),
        (arb_json(), any::<i64>()),
    )
        .prop_map(
            |(id, (first, last, user), emails, phones, vip, fields, (created, modified))| {
                let fields: Vec<Value> = fields
                    .into_iter()
                    .map(|(name, value)| json!({"name": name, "value": value}))
                    .collect();
                json!({
                    "id": id,
                    "contactFirstName": first,
                    "contactLastName": last,
                    "username": user,
                    "contactEmailString": emails.join(","),
                    "phones": phones,
                    "vipStatus": vip,
                    "additionalFieldsObject": fields,
                    "createdDate": created,
                    "modifiedDate": modified,
                })
            },
        )
}

/// The raw record a canonical contact would have come from, in 3Dolphins' own shape.
fn raw_from_contact(c: &Contact) -> Value {
    let fields: Vec<Value> = c
        .fields
        .iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect();
    json!({
        "id": c.id.as_str(),
        "contactFirstName": c.first_name,
        "contactLastName": c.last_name,
        "username": c.full_name,
        "contactEmail": c.emails.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
        "phones": c.phones.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        "vipStatus": if c.vip { "Yes" } else { "No" },
        "additionalFieldsObject": fields,
        "createdDate": c.created_at,
        "modifiedDate": c.modified_at,
    })
}

/// Any id the rule must accept verbatim: 1–256 chars, no whitespace at either end.
fn valid_id() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 1..=256).prop_map(|chars| {
        let last = chars.len() - 1;
        chars
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if (i == 0 || i == last) && c.is_whitespace() {
                    'x'
                } else {
                    c
                }
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn normalizing_a_normalized_contact_changes_nothing(raw in arb_record()) {
        let Ok(first) = normalize(&raw, Region::ID) else { return Ok(()) };
        let again = normalize(&raw_from_contact(&first.contact), Region::ID)
            .expect("a normalized contact always has an id");
        prop_assert_eq!(&again.contact, &first.contact);
        prop_assert_eq!(
            (again.dropped_emails, again.dropped_phones, again.reformatted_phones),
            (0, 0, 0)
        );
    }

    #[test]
    fn names_come_out_trimmed_short_and_free_of_control_characters(raw in arb_record()) {
        let Ok(n) = normalize(&raw, Region::ID) else { return Ok(()) };
        for name in [&n.contact.first_name, &n.contact.last_name] {
            prop_assert_eq!(name.trim(), name.as_str());
            prop_assert!(name.chars().count() <= 255);
            prop_assert!(!name.chars().any(|c| c.is_control() || BIDI_CONTROLS.contains(&c)));
        }
    }

    #[test]
    fn three_spellings_of_an_indonesian_mobile_give_one_e164_number(nsn in id_mobile_nsn()) {
        let expected = format!("+62{nsn}");
        for spelling in spellings(&nsn) {
            let parsed = PhoneNumber::parse(&spelling, Region::ID);
            prop_assert_eq!(parsed.as_ref().map(PhoneNumber::as_str), Some(expected.as_str()));
        }
        let raw = json!({"id": "1", "phones": spellings(&nsn)});
        let n = normalize(&raw, Region::ID).expect("has an id");
        prop_assert_eq!(n.contact.phones.len(), 1);
        prop_assert_eq!(n.reformatted_phones, 3);
    }

    #[test]
    fn id_of_1_to_256_unpadded_chars_round_trips(id in valid_id(), pad in "[ \t\n]{0,3}") {
        let parsed = ContactId::parse(&id).expect("valid id");
        prop_assert_eq!(parsed.as_str(), id.as_str());
        let raw = json!({"id": format!("{pad}{id}{pad}")});
        let n = normalize(&raw, Region::ID).expect("valid id");
        prop_assert_eq!(n.contact.id.as_str(), id.as_str());
    }

    #[test]
    fn ids_over_256_chars_are_quarantined(id in "[a-zé用]{257,300}") {
        prop_assert!(ContactId::parse(&id).is_err());
        let raw = json!({"id": id});
        prop_assert!(normalize(&raw, Region::ID).is_err());
    }

    #[test]
    fn plausible_records_never_panic(raw in arb_record()) {
        let _ = normalize(&raw, Region::ID);
        let _ = normalize(&raw, Region::US);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_json_never_panics(raw in arb_json()) {
        let _ = normalize(&raw, Region::ID);
    }

    #[test]
    fn arbitrary_values_under_known_keys_never_panic(
        values in prop::collection::vec(arb_json(), 12),
    ) {
        const KEYS: [&str; 12] = [
            "id", "contactFirstName", "contactLastName", "username", "contactEmail",
            "contactEmailString", "phones", "phonesString", "vipStatus",
            "additionalFieldsObject", "createdDate", "modifiedDate",
        ];
        let record: Map<String, Value> =
            KEYS.iter().map(|k| k.to_string()).zip(values).collect();
        let _ = normalize(&Value::Object(record), Region::ID);
    }
}

/// A well-formed page of generated records, as its fields (the order they are written in).
fn arb_page() -> impl Strategy<Value = Vec<(String, Value)>> {
    (
        prop::collection::vec(arb_record(), 0..6),
        any::<bool>(),
        0u64..1_000,
        0u64..1_000,
    )
        .prop_map(|(records, has_more, next, total)| {
            vec![
                ("status".into(), json!("success")),
                ("data".into(), Value::Array(records)),
                ("hasMore".into(), json!(has_more)),
                ("nextIndex".into(), json!(next)),
                ("prevIndex".into(), json!(0)),
                ("totalResults".into(), json!(total)),
            ]
        })
}

/// One structural change to a page's fields.
#[derive(Debug, Clone)]
enum Mutation {
    Drop(usize),
    Retype(usize, Value),
    Duplicate(usize, Value),
    Extra(String, Value),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0usize..6).prop_map(Mutation::Drop),
        (0usize..6, arb_json()).prop_map(|(i, v)| Mutation::Retype(i, v)),
        (0usize..6, arb_json()).prop_map(|(i, v)| Mutation::Duplicate(i, v)),
        ("[a-zA-Z]{1,12}", arb_json()).prop_map(|(k, v)| Mutation::Extra(k, v)),
    ]
}

/// The fields as a JSON object's text, duplicates kept (a `Map` would merge them).
fn page_text(fields: &[(String, Value)]) -> Vec<u8> {
    let members: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", Value::String(k.clone())))
        .collect();
    format!("{{{}}}", members.join(",")).into_bytes()
}

/// Fields whose value the pass needs: changing them may fail the page, nothing else may.
const NEEDED: [&str; 3] = ["status", "data", "nextIndex"];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic_a_page(body in prop::collection::vec(any::<u8>(), 0..2048)) {
        let len = body.len();
        if let Ok(page) = parse_page(body) {
            prop_assert!(page.len() <= len);
        }
    }

    #[test]
    fn mutated_pages_fail_only_on_fields_the_pass_needs(
        fields in arb_page(),
        mutations in prop::collection::vec(arb_mutation(), 1..4),
    ) {
        let records = fields[1].1.as_array().map_or(0, Vec::len);
        let mut fields = fields;
        let mut needed_touched = false;
        for mutation in mutations {
            let name = |i: usize, fields: &[(String, Value)]| fields.get(i).map(|f| f.0.clone());
            match mutation {
                Mutation::Drop(i) => {
                    needed_touched |= name(i, &fields).is_some_and(|n| NEEDED.contains(&n.as_str()));
                    if i < fields.len() {
                        fields.remove(i);
                    }
                }
                Mutation::Retype(i, value) => {
                    if let Some(field) = fields.get_mut(i) {
                        needed_touched |= NEEDED.contains(&field.0.as_str());
                        field.1 = value;
                    }
                }
                Mutation::Duplicate(i, value) => {
                    if let Some(n) = name(i, &fields) {
                        needed_touched |= NEEDED.contains(&n.as_str());
                        fields.push((n, value));
                    }
                }
                Mutation::Extra(key, value) => {
                    needed_touched |= NEEDED.contains(&key.as_str());
                    fields.push((key, value));
                }
            }
        }
        let body = page_text(&fields);
        let len = body.len();
        match parse_page(body) {
            Ok(page) => {
                prop_assert!(page.len() <= len);
                if !needed_touched {
                    prop_assert_eq!(page.len(), records);
                }
            }
            Err(e) => prop_assert!(needed_touched, "{e}"),
        }
    }

    #[test]
    fn an_invalid_byte_marks_at_most_the_record_it_lies_in(
        fields in arb_page(),
        at in any::<prop::sample::Index>(),
        byte in 0x80u8..=0xFF,
    ) {
        let mut body = page_text(&fields);
        let records = fields[1].1.as_array().map_or(0, Vec::len);
        let at = at.index(body.len());
        // Inside a string the byte is data; elsewhere it breaks the JSON itself.
        body.insert(at, byte);
        if let Ok(page) = parse_page(body) {
            prop_assert!(page.len() <= records);
            prop_assert!(page.records().filter(|r| r.invalid_utf8).count() <= 1);
        }
    }
}

/// The properties above that start with `let Ok(..) = normalize(..) else { return }` hold
/// vacuously for a record that fails: most generated records must pass, or they test nothing.
#[test]
fn most_generated_records_normalize() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let records = arb_record();
    let normalized = (0..200)
        .filter(|_| {
            let record = records.new_tree(&mut runner).unwrap().current();
            normalize(&record, Region::ID).is_ok()
        })
        .count();
    assert!(normalized >= 100, "{normalized} of 200 generated records");
}
