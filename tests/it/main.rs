//! The one integration-test binary: every suite is a module here, so the crate is linked
//! once, and the shared setup in `helpers` is compiled once and fully used.

mod cli;
mod crash;
mod deletion;
mod deliver;
mod exactly_once;
mod helpers;
mod hostile_source;
mod hostile_surface;
mod monitoring;
mod normalization_props;
mod operate;
mod page_shadow;
mod preflight;
mod progress;
mod pull;
mod sim_dolphins;
mod sim_engagelab;
mod sim_omi;
mod upgrade;
