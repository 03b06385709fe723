//! kingress-proxy
