//! Canonical contact and the parse-don't-validate newtypes it is made of (docs/contact.md). Pure
//! code: no I/O, no clock, no logging.

mod contact;
mod contact_id;
mod destination;
mod email;
mod phone;

pub use contact::{
    Contact, NORMALIZER_VERSION, Normalized, QuarantineReason, RawHash, normalize, parse_record,
    raw_hash, raw_hash_with,
};
pub use contact_id::ContactId;
pub use destination::Destination;
pub use email::EmailAddress;
pub use phone::{PhoneNumber, Region};
