//! kingress
