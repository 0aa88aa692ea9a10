//! OMI CRM: `addMany` for contacts it has never acknowledged, `update` by `refId` for the
//! rest, bearer token (static or from `GET /api/auth?apiKey=`).

mod client;
mod payload;

pub use client::OmiClient;
pub use payload::payload;
