use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ContactId, EmailAddress, PhoneNumber, Region};

/// The canonical contact (spec §4).
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

pub fn normalize(
    _raw: &serde_json::Value,
    _region: Region,
) -> Result<Normalized, QuarantineReason> {
    todo!()
}
