//! `PhoneNumber`: a valid number in E.164 form, parsed with libphonenumber rules.
//! Bare digits that are not valid in the default region get a second try as `+digits`.

use std::fmt::Write as _;

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
    if !phonenumber::is_valid(&number) {
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

    #[test]
    fn bare_digit_detection() {
        assert!(is_bare_digits("62 (857) 8212-0717."));
        assert!(!is_bare_digits("+6285782120717"));
        assert!(!is_bare_digits("tel:6285782120717"));
        assert!(!is_bare_digits(" - "));
    }
}
