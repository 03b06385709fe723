//! benches support
