//! kingress-balance
