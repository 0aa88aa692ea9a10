//! contact-sync: keeps 3Dolphins contacts flowing into OMI CRM and EngageLab MA.
//! The binary is a thin shell over this library so tests can drive every part directly.

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod doctor;
pub mod domain;
pub mod failpoint;
pub mod lock;
pub mod metrics;
pub mod net;
pub mod progress;
pub mod sink;
pub mod source;
pub mod store;
pub mod sync;
pub mod systemd;
pub mod telemetry;
