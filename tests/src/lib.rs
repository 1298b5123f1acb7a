//! Helpers for end-to-end tests: start the real `turnstile` binary, talk UDP to it.
pub mod rfc4475;
pub mod netns;
