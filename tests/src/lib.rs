//! Helpers for end-to-end tests: start the real `turnstile` binary, talk UDP to it.
pub mod daemon;
pub mod netns;
pub mod rfc4475;
