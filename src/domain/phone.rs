//! `PhoneNumber`: a valid number in E.164 form, parsed with libphonenumber rules.
//! Bare digits that are not valid in the default region get a second try as `+digits`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;

use phonenumber::metadata::{DATABASE, Database, Descriptor, Descriptors, Metadata};
use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

pub use phonenumber::country::Id as Region;

/// libphonenumber's own input limit (`MAX_INPUT_STRING_LENGTH`); the Rust port lacks it, and
/// without it a megabyte of digits costs a fifth of a second of regex work.
const MAX_INPUT_CHARS: usize = 250;

/// A valid phone number in E.164 form (`+6285782120717`). Only built by parsing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    pub fn parse(s: &str, region: Region) -> Option<Self> {
        let s = s.trim();
        if s.chars().nth(MAX_INPUT_CHARS).is_some() {
            return None;
        }
        parse_valid(s, region).or_else(|| {
            // 3Dolphins writes numbers as country code + number without the plus. The library
            // strips the default region's own code from such digits, but not a foreign one.
            is_bare_digits(s)
                .then(|| parse_valid(&format!("+{s}"), region))
                .flatten()
        })
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn parse_valid(s: &str, region: Region) -> Option<PhoneNumber> {
    let number = phonenumber::parse(Some(region), s).ok()?;
    if !is_valid(&number) {
        return None;
    }
    // E.164 is `+`, the country code and the national number, which is what the library's
    // E.164 formatter writes for a number whose country has metadata (every valid one). Its
    // formatter also matches the national format patterns first, unused in this mode: about
    // 1.2 of the 8.3 µs a number took.
    let mut e164 = String::with_capacity(16);
    write!(e164, "+{}{}", number.country().code(), number.national()).ok()?;
    Some(PhoneNumber(e164))
}

/// What `phonenumber::is_valid` answers (tested equal below), from the same metadata: the
/// number's region, then whether its national number matches the general pattern and the
/// pattern of at least one type (fixed line, mobile, toll free, ...). The library matches
/// each pattern through a regex cache that looks the pattern up by its text under a global
/// lock, and searches unanchored, so its lazy DFAs kept building states for every new number:
/// about half of the time a number took (docs/performance.md, "Round 4"). Here each pattern is
/// compiled once, anchored at the start: the library's match counts only when it starts at
/// the first digit, which is what an anchored search finds.
fn is_valid(number: &phonenumber::PhoneNumber) -> bool {
    let national = number.national().to_string();
    metadata_for(number.country().code(), &national).is_some_and(|meta| has_type(meta, &national))
}

/// The metadata that decides a number of country code `code` (the library's
/// `validator::source_for`): the code's one region, or of the regions sharing it the first
/// whose leading digits start the number (or, without leading digits, that has a type for it).
fn metadata_for(code: u16, national: &str) -> Option<&'static Metadata> {
    let database: &'static Database = &DATABASE;
    let regions = database.region(&code)?;
    let by_region = |region: &str| database.by_id(region.parse::<Region>().ok()?.as_ref());
    match regions[..] {
        ["001"] => database.by_code(&code)?.into_iter().next(),
        [region] => by_region(region),
        _ => regions
            .into_iter()
            .find(|region| {
                database
                    .by_id(*region)
                    .is_some_and(|meta| match meta.leading_digits() {
                        Some(leading) => matches_at_start(leading.as_str(), national),
                        None => has_type(meta, national),
                    })
            })
            .and_then(by_region),
    }
}

/// Whether the library's `number_type` is not `Unknown`: the general pattern matches, and so
/// does the pattern of some type.
fn has_type(meta: &'static Metadata, national: &str) -> bool {
    let d = meta.descriptors();
    matches(d.general(), national)
        && types(d)
            .into_iter()
            .flatten()
            .any(|descriptor| matches(descriptor, national))
}

/// The descriptor of each type a number can have (`None` where the region has none), in the
/// order the library's `number_type` tries them.
fn types(d: &'static Descriptors) -> [Option<&'static Descriptor>; 10] {
    [
        d.premium_rate(),
        d.toll_free(),
        d.shared_cost(),
        d.voip(),
        d.personal_number(),
        d.pager(),
        d.uan(),
        d.voicemail(),
        d.fixed_line(),
        d.mobile(),
    ]
}

/// The library's `Descriptor::is_match`: a possible length (when the descriptor lists any),
/// and the national number pattern matching from the first digit.
fn matches(descriptor: &'static Descriptor, national: &str) -> bool {
    let lengths = descriptor.possible_length();
    let length = u16::try_from(national.len()).unwrap_or(u16::MAX);
    (lengths.is_empty() || lengths.contains(&length))
        && matches_at_start(descriptor.national_number().as_str(), national)
}

/// Whether `pattern` (of the static metadata) matches `text` from its start. Each thread
/// compiles a pattern once, keyed by where its text lives; in the daemon that is the normalize
/// thread (`sync::normalizer`). A pattern that does not compile matches nothing (the library
/// would panic).
fn matches_at_start(pattern: &'static str, text: &str) -> bool {
    thread_local! {
        static ANCHORED: RefCell<HashMap<(usize, usize), Option<Regex>>> =
            RefCell::new(HashMap::new());
    }
    ANCHORED.with_borrow_mut(|compiled| {
        compiled
            .entry((pattern.as_ptr() as usize, pattern.len()))
            .or_insert_with(|| {
                // As the library builds them: the metadata's patterns are laid out with spaces.
                RegexBuilder::new(&format!("^(?:{pattern})"))
                    .ignore_whitespace(true)
                    .build()
                    .ok()
            })
            .as_ref()
            .is_some_and(|regex| regex.is_match(text))
    })
}

/// Digits, possibly grouped by spaces, dashes, dots or parentheses, and nothing else.
fn is_bare_digits(s: &str) -> bool {
    let mut any_digit = false;
    for c in s.chars() {
        match c {
            '0'..='9' => any_digit = true,
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => return false,
        }
    }
    any_digit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e164(s: &str) -> Option<String> {
        PhoneNumber::parse(s, Region::ID).map(|p| p.as_str().to_owned())
    }

    #[test]
    fn the_three_indonesian_spellings_give_one_number() {
        for spelling in ["6285782120717", "085782120717", "+62 857-8212-0717"] {
            assert_eq!(
                e164(spelling).as_deref(),
                Some("+6285782120717"),
                "{spelling}"
            );
        }
    }

    #[test]
    fn grouped_digits_without_plus_also_get_the_second_try() {
        assert_eq!(
            e164(" 62 857-8212-0717 ").as_deref(),
            Some("+6285782120717")
        );
        assert_eq!(e164("(0857) 8212.0717").as_deref(), Some("+6285782120717"));
    }

    #[test]
    fn foreign_numbers_written_without_plus_get_their_country() {
        // The library alone only strips the default region's own code from bare digits.
        assert_eq!(e164("16502530000").as_deref(), Some("+16502530000"));
        assert_eq!(e164("44 20 7031 3000").as_deref(), Some("+442070313000"));
    }

    #[test]
    fn foreign_numbers_with_plus_keep_their_country() {
        assert_eq!(e164("+1 650-253-0000").as_deref(), Some("+16502530000"));
        assert_eq!(e164("+44 20 7031 3000").as_deref(), Some("+442070313000"));
    }

    #[test]
    fn the_region_decides_national_numbers() {
        let us = PhoneNumber::parse("(650) 253-0000", Region::US).unwrap();
        assert_eq!(us.as_str(), "+16502530000");
    }

    #[test]
    fn invalid_numbers_are_rejected() {
        for bad in [
            "",
            "   ",
            "abc",
            "12",
            "0857",
            "+62 000 0000",
            "+999 1234567",
            "-",
            "()",
        ] {
            assert_eq!(e164(bad), None, "{bad:?} should be invalid");
        }
    }

    #[test]
    fn input_longer_than_libphonenumber_accepts_is_rejected() {
        // Trailing non-digits are ignored by the parser, so only the limit rejects this one.
        let padded = |n| format!("+62 857-8212-0717{}", " .".repeat(n));
        assert_eq!(e164(&padded(10)).as_deref(), Some("+6285782120717"));
        assert_eq!(e164(&padded(MAX_INPUT_CHARS)), None);
        assert_eq!(e164(&"6".repeat(1_000_000)), None);
    }

    #[test]
    fn e164_output_parses_to_itself() {
        let once = e164("085782120717").unwrap();
        assert_eq!(e164(&once).as_deref(), Some(once.as_str()));
    }

    #[test]
    fn e164_is_what_the_library_formats() {
        let mut inputs: Vec<(String, Region)> = [
            ("+39 06 1234 5678", Region::IT),
            ("+39 333 123 4567", Region::IT),
            ("+44 20 7031 3000", Region::GB),
            ("(650) 253-0000", Region::US),
            ("+7 495 123-45-67", Region::RU),
            ("+225 27 22 44 55 66", Region::CI),
            ("021 2345 6789", Region::ID),
        ]
        .map(|(s, r)| (s.to_owned(), r))
        .into();
        for i in 0..2_000 {
            let record = contact_sync_sim::dolphins::generate_contact(11, i);
            let phones = record["phones"].as_array().into_iter().flatten();
            inputs.extend(phones.filter_map(|p| Some((p.as_str()?.to_owned(), Region::ID))));
        }
        let mut valid = 0;
        for (input, region) in &inputs {
            let Ok(number) = phonenumber::parse(Some(*region), input) else {
                continue;
            };
            if !phonenumber::is_valid(&number) {
                continue;
            }
            valid += 1;
            let library = number.format().mode(phonenumber::Mode::E164).to_string();
            let ours = parse_valid(input, *region).map(|p| p.0);
            assert_eq!(ours.as_deref(), Some(library.as_str()), "{input}");
        }
        assert!(
            valid > 1_500,
            "{valid} of {} inputs were valid",
            inputs.len()
        );
    }

    /// Our validity against the library's on `input`, when the library parses it.
    fn same_validity(input: &str, region: Region) -> bool {
        let Ok(number) = phonenumber::parse(Some(region), input) else {
            return true;
        };
        is_valid(&number) == phonenumber::is_valid(&number)
    }

    #[test]
    fn validity_is_the_librarys_for_every_example_number_and_its_neighbours() {
        // Every type's example number of every region in the metadata, and variants one digit
        // longer, shorter or different: valid and invalid numbers of all regions, including
        // those that share a country code (+1, +7, +44, ...).
        let (mut checked, mut valid) = (0, 0);
        for meta in DATABASE.iter() {
            let region: Region = match meta.id().parse() {
                Ok(region) => region,
                Err(_) => Region::ID,
            };
            let d = meta.descriptors();
            let examples = std::iter::once(d.general())
                .chain(types(d).into_iter().flatten())
                .filter_map(Descriptor::example);
            for example in examples {
                let code = meta.country_code();
                let last = example
                    .chars()
                    .last()
                    .map_or('0', |c| if c == '9' { '0' } else { '9' });
                let changed = format!("{}{last}", &example[..example.len().saturating_sub(1)]);
                let variants = [
                    example.to_owned(),
                    format!("{example}5"),
                    example[..example.len().saturating_sub(1)].to_owned(),
                    changed,
                ];
                for national in &variants {
                    for input in [format!("+{code}{national}"), national.clone()] {
                        assert!(same_validity(&input, region), "{input} in {}", meta.id());
                        checked += 1;
                    }
                }
                if phonenumber::parse(None, format!("+{code}{example}"))
                    .is_ok_and(|n| phonenumber::is_valid(&n))
                {
                    valid += 1;
                }
            }
        }
        assert!(
            checked > 7_000 && valid > 900,
            "{checked} checked, {valid} valid"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3_000))]
        #[test]
        fn validity_is_the_librarys_for_any_digits(
            region in proptest::sample::select(vec![
                Region::ID, Region::US, Region::CA, Region::GB, Region::RU, Region::KZ,
                Region::IT, Region::VA, Region::AU, Region::SG, Region::MY, Region::IN,
                Region::JE, Region::NO, Region::GP,
            ]),
            code in proptest::sample::select(vec![1u16, 7, 44, 39, 61, 62, 65, 60, 91, 47, 590, 800, 979, 882]),
            digits in "[0-9]{3,14}",
            plus in proptest::bool::ANY,
        ) {
            let input = if plus { format!("+{code}{digits}") } else { digits };
            proptest::prop_assert!(same_validity(&input, region), "{} in {:?}", input, region);
        }
    }

    #[test]
    fn bare_digit_detection() {
        assert!(is_bare_digits("62 (857) 8212-0717."));
        assert!(!is_bare_digits("+6285782120717"));
        assert!(!is_bare_digits("tel:6285782120717"));
        assert!(!is_bare_digits(" - "));
    }
}
