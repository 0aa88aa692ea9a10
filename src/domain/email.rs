use serde::{Deserialize, Serialize};

/// A syntactically valid, lower-cased e-mail address. Only built by parsing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(_s: &str) -> Option<Self> {
        todo!()
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
