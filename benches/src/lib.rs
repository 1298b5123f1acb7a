//! Load-generation library shared by the storm benchmark (`cargo xtask bench`) and the
//! end-to-end tests: a REGISTER storm generator ([`storm`]), a stateless 200-OK responder
//! ([`responder`]), digest client helpers ([`digest`]), minimal SIP framing ([`sip`]) and
//! /proc accounting of server CPU and memory ([`procstat`]).

pub mod digest;
pub mod procstat;
pub mod responder;
pub mod sip;
pub mod storm;

pub use digest::Algorithm;
pub use responder::NullResponder;
pub use storm::{run as run_storm, Latency, MeasureHook, Plan, StormConfig, StormReport};
