use serde::{Deserialize, Serialize};

pub use phonenumber::country::Id as Region;

/// A valid phone number in E.164 form (`+6285782120717`). Only built by parsing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    pub fn parse(_s: &str, _region: Region) -> Option<Self> {
        todo!()
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
