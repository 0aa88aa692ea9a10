//! The contact as OMI receives it (docs/apis/omi.md#payload).

use serde_json::{Value, json};

use crate::domain::Contact;

/// `refId` is the 3Dolphins id, so `update` can address the contact without OMI's own id.
pub fn payload(contact: &Contact, tags: &[String]) -> Value {
    let entry = |data: &str| json!({"data": data, "type": "personal", "valueType": "Cá nhân"});
    json!({
        "refId": contact.id.as_str(),
        "refType": "3dolphins",
        "fullName": contact.full_name,
        "phones": contact.phones.iter().map(|p| entry(p.as_str())).collect::<Vec<_>>(),
        "emails": contact.emails.iter().map(|e| entry(e.as_str())).collect::<Vec<_>>(),
        "tags": tags,
    })
}
