use serde::{Deserialize, Serialize};

/// A 3Dolphins contact id: trimmed, 1–256 characters. Only built by parsing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContactId(String);

impl ContactId {
    /// Parse the `id` member of a raw record: a JSON string (trimmed, 1–256 chars) or a JSON
    /// integer (its decimal string). Anything else is an error saying why.
    pub fn from_json(
        _value: Option<&serde_json::Value>,
    ) -> Result<Self, crate::domain::QuarantineReason> {
        todo!()
    }
    pub fn parse(_s: &str) -> Result<Self, crate::domain::QuarantineReason> {
        todo!()
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ContactId {
    type Error = crate::domain::QuarantineReason;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}
impl From<ContactId> for String {
    fn from(id: ContactId) -> String {
        id.0
    }
}
