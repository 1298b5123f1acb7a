//! Fuzz target `digest`: RFC 7616 / RFC 8760 digest authentication on arbitrary bytes.
//!
//! The first byte picks a mode:
//! - 0: the rest is an `Authorization` value, verified as is (unknown schemes, broken quoting,
//!   duplicate parameters, huge nc values, ...).
//! - 1: a *valid* Authorization (answer to a fresh challenge) is mutated by splicing the
//!   input in at an input-chosen offset, so the MAC-protected nonce survives and the checks
//!   behind it (uri, response, nc, qop, algorithm, cnonce) are reached.
//! - 2: the unmodified valid answer must authenticate (oracle), then its replay must not.
//! - otherwise: challenge parsing, algorithm tokens and users-file parsing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use turnstile_core::auth::{
    build_authorization, parse_algorithm_token, parse_challenge, Algorithm, AuthConfig,
    AuthOutcome, DigestAuth, UserDb,
};
use turnstile_core::Millis;

const REALM: &str = "example.test";
const URI: &str = "sip:example.test";
const T0: Millis = Millis(1_700_000_000_000);

struct Fixture {
    auth: DigestAuth,
    users: UserDb,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture {
        auth: DigestAuth::new(
            AuthConfig {
                realm: REALM.into(),
                algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
                nonce_ttl: 300,
            },
            [7; 32],
        ),
        users: UserDb::parse("alice:wonderland\nbob:md5:00112233445566778899aabbccddeeff:sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n", REALM)
            .unwrap_or_else(|_| {
                let mut db = UserDb::new();
                db.insert_password("alice", REALM, "wonderland");
                db
            }),
    })
}

/// Virtual clock: 1 ms per execution. A frozen clock would be unrealistic: after
/// `REPLAY_CAPACITY` nonces issued in the same millisecond the replay store's eviction floor
/// reaches that millisecond and every fresh nonce reads as "forgotten" (stale) — by design.
fn tick() -> Millis {
    static CLOCK: AtomicU64 = AtomicU64::new(T0.0);
    Millis(CLOCK.fetch_add(1, Ordering::Relaxed))
}

/// A correct answer to a fresh challenge (algorithm picked by `pick`) issued at `now`.
fn valid_authorization(f: &Fixture, now: Millis, pick: u8) -> String {
    let mut out = Vec::new();
    f.auth.challenge(now, false, &mut out);
    let text = String::from_utf8(out).expect("challenges are ASCII");
    let values: Vec<&str> = text
        .split_terminator("\r\n")
        .filter_map(|l| l.strip_prefix("WWW-Authenticate: "))
        .collect();
    let v = values[pick as usize % values.len()];
    let ch = parse_challenge(v).expect("our own challenge parses");
    build_authorization(&ch, "alice", "wonderland", "REGISTER", URI, 1, "0a4f113b")
        .expect("we answer our own algorithms")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let t = tick();
    match mode {
        0 => {
            let _ = f.auth.verify(t, "REGISTER", URI, [rest], &f.users);
        }
        1 => {
            if rest.len() < 2 {
                return;
            }
            let valid = valid_authorization(f, t, rest[0]);
            let mut v = valid.into_bytes();
            let at = rest[1] as usize % (v.len() + 1);
            let patch = &rest[2..];
            let end = (at + patch.len()).min(v.len());
            v.splice(at..end, patch.iter().copied());
            let now = t.plus_ms(u64::from(rest[0]) * 1000);
            let _ = f.auth.verify(now, "REGISTER", URI, [&v[..]], &f.users);
        }
        2 => {
            let valid = valid_authorization(f, t, rest.first().copied().unwrap_or(0));
            let first = f
                .auth
                .verify(t, "REGISTER", URI, [valid.as_bytes()], &f.users);
            assert!(
                matches!(first, AuthOutcome::Authenticated { username: "alice" }),
                "a correct answer must authenticate: {first:?}\n{valid}"
            );
            let again = f
                .auth
                .verify(t, "REGISTER", URI, [valid.as_bytes()], &f.users);
            assert!(
                !matches!(again, AuthOutcome::Authenticated { .. }),
                "a replayed nc must not authenticate again"
            );
            // Wrong method or URI must not authenticate either.
            let other = f
                .auth
                .verify(t, "INVITE", URI, [valid.as_bytes()], &f.users);
            assert!(!matches!(other, AuthOutcome::Authenticated { .. }));
        }
        _ => {
            let s = String::from_utf8_lossy(rest);
            if let Some(ch) = parse_challenge(&s) {
                let _ = ch.offers_qop_auth();
                let _ = build_authorization(&ch, "u", "p", "REGISTER", URI, 1, "c");
            }
            let _ = parse_algorithm_token(rest);
            let _ = Algorithm::from_name(&s);
            let _ = UserDb::parse(&s, REALM);
        }
    }
});
