//! kingress-test-support
