//! `EmailAddress`: a bare, lower-cased addr-spec (RFC 5322, UTF-8 per RFC 6531).
//! Destinations match contacts by e-mail, so one spelling per address matters more than fidelity.

use email_address::Options;
use serde::{Deserialize, Serialize};

/// Only a bare addr-spec: `Bob <bob@x.com>` is a display form a destination would store verbatim.
const STRICT: Options = Options {
    minimum_sub_domains: 0,
    allow_domain_literal: true,
    allow_display_text: false,
};

/// A syntactically valid, lower-cased e-mail address. Only built by parsing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(s: &str) -> Option<Self> {
        // Lower-case before validating: lower-casing some non-ASCII letters changes the string,
        // and what we keep must be what was checked.
        let candidate = s.trim().to_lowercase();
        email_address::EmailAddress::parse_with_options(&candidate, STRICT).ok()?;
        Some(Self(candidate))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> Option<String> {
        EmailAddress::parse(s).map(|e| e.as_str().to_owned())
    }

    #[test]
    fn addresses_are_trimmed_and_lower_cased() {
        assert_eq!(
            parsed("  Bob.Smith@Example.COM \t").as_deref(),
            Some("bob.smith@example.com")
        );
    }

    #[test]
    fn utf8_local_part_and_domain_are_accepted() {
        assert_eq!(
            parsed("Ünsal@Bücher.de").as_deref(),
            Some("ünsal@bücher.de")
        );
        assert_eq!(parsed("用户@例子.广告").as_deref(), Some("用户@例子.广告"));
    }

    #[test]
    fn common_valid_forms_are_accepted() {
        for ok in [
            "a+tag@x.co.id",
            "first.last@sub.domain.com",
            "x@localhost",
            "\"john doe\"@x.com",
        ] {
            assert!(parsed(ok).is_some(), "{ok} should be valid");
        }
    }

    #[test]
    fn invalid_addresses_are_rejected() {
        for bad in [
            "",
            "   ",
            "plainaddress",
            "@x.com",
            "bob@",
            "bob@@x.com",
            "bob smith@x.com",
            "bob..smith@x.com",
            ".bob@x.com",
            "bob@x..com",
            "bob@-x.com",
            "bob@x.com.",
        ] {
            assert_eq!(parsed(bad), None, "{bad:?} should be invalid");
        }
    }

    #[test]
    fn display_name_forms_are_rejected() {
        assert_eq!(parsed("Bob <bob@x.com>"), None);
        assert_eq!(parsed("<bob@x.com>"), None);
        assert_eq!(parsed("\"Bob\" <bob@x.com>"), None);
    }

    #[test]
    fn parsing_is_idempotent() {
        let once = parsed(" MiXeD@Example.Com").unwrap();
        assert_eq!(parsed(&once).as_deref(), Some(once.as_str()));
    }
}
