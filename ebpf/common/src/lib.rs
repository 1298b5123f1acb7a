//! Types shared byte-for-byte by the XDP program and userspace.
//! Every `#[repr(C)]` type here has its size pinned by a `const` assert.
#![no_std]
