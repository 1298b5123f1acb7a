//! Fuzz target `uri`: RFC 3261 §19.1 URI parsing, §19.1.4 comparison keys, %-unescaping.
//!
//! Checks: no panic; equality is reflexive; a URI equals itself re-parsed from its own bytes
//! with the scheme and host upper-cased (both compare case-insensitively, §19.1.4).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use turnstile_core::msg::uri::{split_hostport, unescape_into, Uri};

fuzz_target!(|data: &[u8]| {
    let mut s = String::new();
    unescape_into(data, &mut s);
    let _ = split_hostport(data);

    let Ok(u) = Uri::parse(data) else {
        return;
    };
    let _ = u.is_sip();
    let _ = u.params().count();
    let _ = u.param("transport");
    let _ = u.param("lr");
    let _ = u.host_bare();
    let aor = u.aor();
    let key = u.key();
    if skip_known_dup_params() && has_duplicate_param(&u) {
        return;
    }
    assert!(
        u.equals(&u),
        "not reflexive: {:?}",
        String::from_utf8_lossy(data)
    );

    if u.is_sip() {
        // Upper-case the scheme and host: still the same URI.
        let mut upper = data.to_vec();
        let scheme_len = data.iter().position(|&b| b == b':').unwrap_or(0);
        upper[..scheme_len].make_ascii_uppercase();
        if let Some(off) = sub_offset(data, u.host) {
            upper[off..off + u.host.len()].make_ascii_uppercase();
        }
        if let Ok(v) = Uri::parse(&upper) {
            assert!(
                u.equals(&v) && v.equals(&u),
                "case of scheme/host changed equality: {:?} vs {:?}",
                String::from_utf8_lossy(data),
                String::from_utf8_lossy(&upper)
            );
            assert_eq!(v.aor(), aor, "AOR must not depend on scheme/host case");
            assert_eq!(v.key(), key, "key must not depend on scheme/host case");
        } else {
            panic!(
                "upper-cased scheme/host no longer parses: {:?}",
                String::from_utf8_lossy(&upper)
            );
        }
    }
});

/// Known finding (reported 2026-11-21): a URI with a repeated parameter name
/// (`sip:h;x=1;x=2`) is not equal to itself, because `equals` looks each parameter up by name in
/// the other URI and finds the first one. Set `FUZZ_SKIP_KNOWN=1` to explore past it.
fn skip_known_dup_params() -> bool {
    static SKIP: OnceLock<bool> = OnceLock::new();
    *SKIP.get_or_init(|| std::env::var_os("FUZZ_SKIP_KNOWN").is_some_and(|v| v == "1"))
}

fn has_duplicate_param(u: &Uri<'_>) -> bool {
    let names: Vec<Vec<u8>> = u.params().map(|(n, _)| n.to_ascii_lowercase()).collect();
    names
        .iter()
        .enumerate()
        .any(|(i, n)| names[..i].contains(n))
}

/// Offset of `part` inside `whole` when `part` borrows from it.
fn sub_offset(whole: &[u8], part: &[u8]) -> Option<usize> {
    let start = part.as_ptr() as usize;
    let base = whole.as_ptr() as usize;
    (start >= base && start + part.len() <= base + whole.len()).then(|| start - base)
}
