//! EngageLab MA: EUIDs from `POST /v1/user/register`, then `POST /v1/user/contact` keyed by
//! EUID; HTTP Basic auth.

mod client;
mod payload;

pub use client::{EngagelabClient, REGISTER_BATCH};
pub use payload::contact_payload;
