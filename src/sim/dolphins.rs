//! filled in by the sim helper
