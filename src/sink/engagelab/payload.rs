//! The contact information EngageLab receives (docs/apis/engagelab.md#payload).

use serde_json::{Map, Value};

use crate::domain::Contact;

/// `{"mobile_phone": first phone, "email": first e-mail}` with absent values left out;
/// `None` when there is neither, so the contact is skipped. A name change does not touch it.
pub fn contact_payload(contact: &Contact) -> Option<Value> {
    let mut contacts = Map::new();
    if let Some(phone) = contact.phones.first() {
        contacts.insert("mobile_phone".into(), phone.as_str().into());
    }
    if let Some(email) = contact.emails.first() {
        contacts.insert("email".into(), email.as_str().into());
    }
    (!contacts.is_empty()).then_some(Value::Object(contacts))
}
