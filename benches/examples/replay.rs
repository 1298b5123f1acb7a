//! Replays fuzz artifacts through the engine and prints what comes out (debugging aid):
//! `cargo run -p turnstile-benches --example replay -- FILE...`
use std::sync::Arc;
use turnstile_core::auth::UserDb;
use turnstile_core::engine::{Engine, EngineConfig, Shared};
use turnstile_core::group::{AuthMode, GroupKind, GroupTable, IpGroup, Unclassified};

fn main() {
    for f in std::env::args().skip(1) {
        let data = std::fs::read(&f).unwrap();
        let cfg = EngineConfig {
            domain: "example.com".into(),
            aliases: vec!["127.0.0.1".into()],
            registrar: Default::default(),
            auth: None,
            groups: GroupTable::new(vec![IpGroup {
                name: "phones".into(),
                kind: GroupKind::User,
                sources: vec!["0.0.0.0/0".parse().unwrap()],
                auth: AuthMode::None,
                serving: None,
                weight: 1,
            }]),
            unclassified: Unclassified::Reject,
            server_name: "replay".into(),
        };
        let mut e = Engine::new(Arc::new(Shared::new(cfg, UserDb::new(), [7; 32])), 1);
        e.handle_datagram(
            turnstile_core::Millis(1),
            "192.0.2.1:5060".parse().unwrap(),
            "127.0.0.1:5060".parse().unwrap(),
            &data,
        );
        while let Some(t) = e.poll_transmit() {
            let mut s = Vec::new();
            let ok = turnstile_core::msg::parse(&t.payload, &mut s).is_ok();
            println!(
                "{f}: -> {} parses={ok}\n{}",
                t.dst,
                String::from_utf8_lossy(&t.payload)
            );
        }
    }
}
