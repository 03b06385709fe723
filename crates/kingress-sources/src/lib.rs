//! kingress-sources
