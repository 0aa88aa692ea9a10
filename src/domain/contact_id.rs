//! `ContactId`: the 3Dolphins record id, the key every store and destination uses.
//! A record without a usable id cannot be tracked, so failing here quarantines it.

use serde::{Deserialize, Serialize};

use crate::domain::QuarantineReason;

/// Longest id we accept, in characters (EngageLab identity values stop at 256).
const MAX_ID_CHARS: usize = 256;

/// A 3Dolphins contact id: trimmed, 1–256 characters. Only built by parsing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContactId(String);

impl ContactId {
    /// Parse the `id` member of a raw record: a JSON string (trimmed, 1–256 chars) or a JSON
    /// integer (its decimal string). Anything else is an error saying why.
    pub fn from_json(value: Option<&serde_json::Value>) -> Result<Self, QuarantineReason> {
        use serde_json::Value;
        match value {
            None | Some(Value::Null) => Err(reason("missing id")),
            Some(Value::String(s)) => Self::parse(s),
            // An integer's decimal form is already trimmed, non-empty and at most 20 chars.
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Self(n.to_string())),
            Some(other) => Err(reason(format!(
                "id is not a string or integer (got {})",
                json_kind(other)
            ))),
        }
    }

    pub fn parse(s: &str) -> Result<Self, QuarantineReason> {
        let trimmed = s.trim();
        if trimmed.is_empty() {
            return Err(reason("id is empty"));
        }
        // Only walk up to one past the limit: a huge id should not cost a full count.
        if trimmed.chars().nth(MAX_ID_CHARS).is_some() {
            return Err(reason(format!("id longer than {MAX_ID_CHARS} characters")));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ContactId {
    type Error = QuarantineReason;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}
impl From<ContactId> for String {
    fn from(id: ContactId) -> String {
        id.0
    }
}

fn reason(text: impl Into<String>) -> QuarantineReason {
    QuarantineReason(text.into())
}

/// The JSON type name used in quarantine reasons, so an operator sees what arrived.
fn json_kind(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "non-integer number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn from_json(value: serde_json::Value) -> Result<ContactId, QuarantineReason> {
        ContactId::from_json(Some(&value))
    }

    #[test]
    fn string_id_is_trimmed() {
        assert_eq!(from_json(json!("  abc-1 \t")).unwrap().as_str(), "abc-1");
    }

    #[test]
    fn integer_ids_become_their_decimal_string() {
        assert_eq!(from_json(json!(42)).unwrap().as_str(), "42");
        assert_eq!(from_json(json!(-7)).unwrap().as_str(), "-7");
        assert_eq!(
            from_json(json!(u64::MAX)).unwrap().as_str(),
            "18446744073709551615"
        );
    }

    #[test]
    fn missing_and_null_ids_are_rejected() {
        assert_eq!(ContactId::from_json(None).unwrap_err().0, "missing id");
        assert_eq!(from_json(json!(null)).unwrap_err().0, "missing id");
    }

    #[test]
    fn non_string_non_integer_ids_name_the_type_they_got() {
        let cases = [
            (json!(1.5), "non-integer number"),
            (json!(2.0), "non-integer number"),
            (json!(true), "boolean"),
            (json!({"a": 1}), "object"),
            (json!([1]), "array"),
        ];
        for (value, kind) in cases {
            let err = from_json(value).unwrap_err();
            assert_eq!(err.0, format!("id is not a string or integer (got {kind})"));
        }
    }

    #[test]
    fn empty_or_blank_ids_are_rejected() {
        assert_eq!(from_json(json!("")).unwrap_err().0, "id is empty");
        assert_eq!(from_json(json!(" \n\t ")).unwrap_err().0, "id is empty");
    }

    #[test]
    fn id_length_is_counted_in_characters_not_bytes() {
        // 'é' is two bytes: 256 of them are 512 bytes but still a valid id.
        let at_limit = "é".repeat(MAX_ID_CHARS);
        assert_eq!(ContactId::parse(&at_limit).unwrap().as_str(), at_limit);
        let over = "a".repeat(MAX_ID_CHARS + 1);
        assert_eq!(
            ContactId::parse(&over).unwrap_err().0,
            "id longer than 256 characters"
        );
    }

    #[test]
    fn surrounding_whitespace_does_not_count_towards_the_limit() {
        let padded = format!("  {}  ", "x".repeat(MAX_ID_CHARS));
        assert_eq!(
            ContactId::parse(&padded).unwrap().as_str().len(),
            MAX_ID_CHARS
        );
    }

    #[test]
    fn deserializing_validates_like_parse() {
        assert!(serde_json::from_str::<ContactId>("\"\"").is_err());
        let id: ContactId = serde_json::from_str("\" x \"").unwrap();
        assert_eq!(id.as_str(), "x");
    }
}
