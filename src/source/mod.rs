//! The source side: the 3Dolphins contact API.

pub mod dolphins;
