//! contact-sync: keeps 3Dolphins contacts flowing into OMI CRM and EngageLab MA.
//! The binary is a thin shell over this library so tests can drive every part directly.

pub mod domain;
pub mod sim;
