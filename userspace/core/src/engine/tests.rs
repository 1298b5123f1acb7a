//! Scenario tests of the engine on a virtual clock: no sockets, no sleeps.

use super::*;
use crate::auth::{build_authorization, parse_challenge, Algorithm};
use crate::group::IpGroup;

const T0: Millis = Millis(1_700_000_000_000);
const LOCAL: &str = "127.0.0.1:5060";
const PHONE: &str = "127.0.0.10:40000";
const PHONE2: &str = "127.0.0.11:40002";
const TRUNK: &str = "198.51.100.5:5060";

fn config(auth: bool) -> EngineConfig {
    EngineConfig {
        domain: "example.test".into(),
        aliases: vec!["127.0.0.1".into()],
        registrar: RegistrarConfig {
            min_expires: 60,
            max_expires: 7200,
            default_expires: 3600,
            max_contacts_per_aor: 3,
            expires_jitter_percent: 0,
        },
        auth: Some(AuthConfig {
            realm: "example.test".into(),
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
            nonce_ttl: 300,
        }),
        groups: GroupTable::new(vec![
            IpGroup {
                name: "phones".into(),
                kind: GroupKind::User,
                sources: vec!["127.0.0.0/8".parse().unwrap()],
                auth: if auth {
                    AuthMode::Local
                } else {
                    AuthMode::None
                },
                serving: None,
                weight: 1,
            },
            IpGroup {
                name: "trunks".into(),
                kind: GroupKind::Server,
                sources: vec!["198.51.100.0/24".parse().unwrap()],
                auth: AuthMode::None,
                serving: None,
                weight: 1,
            },
        ]),
        unclassified: Unclassified::Reject,
        server_name: "turnstile-test".into(),
    }
}

fn engine(auth: bool) -> Engine {
    let users = UserDb::parse(
        "alice:alice-pw\nbob:bob-pw\ncarol:carol-pw\n",
        "example.test",
    )
    .unwrap();
    Engine::new(Arc::new(Shared::new(config(auth), users, [7; 32])), 1)
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct Req {
    method: &'static str,
    ruri: String,
    user: &'static str,
    branch: String,
    call_id: String,
    cseq: u32,
    contacts: Vec<String>,
    expires: Option<String>,
    extra: Vec<String>,
}

impl Req {
    fn register(user: &'static str, branch: &str) -> Req {
        Req {
            method: "REGISTER",
            ruri: "sip:example.test".into(),
            user,
            branch: branch.into(),
            call_id: format!("cid-{user}"),
            cseq: 1,
            contacts: vec![format!("<sip:{user}@127.0.0.10:40000>")],
            expires: None,
            extra: vec![],
        }
    }
    fn bytes(&self) -> Vec<u8> {
        let mut s = format!(
            "{m} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.10:40000;branch=z9hG4bK{b};rport\r\nMax-Forwards: 70\r\n\
From: <sip:{u}@example.test>;tag=ft-{u}\r\nTo: <sip:{u}@example.test>\r\nCall-ID: {cid}\r\nCSeq: {c} {m}\r\n",
            m = self.method,
            ruri = self.ruri,
            b = self.branch,
            u = self.user,
            cid = self.call_id,
            c = self.cseq
        );
        for c in &self.contacts {
            s.push_str(&format!("Contact: {c}\r\n"));
        }
        if let Some(e) = &self.expires {
            s.push_str(&format!("Expires: {e}\r\n"));
        }
        for x in &self.extra {
            s.push_str(x);
            s.push_str("\r\n");
        }
        s.push_str("Content-Length: 0\r\n\r\n");
        s.into_bytes()
    }
}

/// Sends one datagram and returns everything the engine transmits.
fn exchange(e: &mut Engine, now: Millis, from: &str, data: &[u8]) -> Vec<Transmit> {
    e.handle_datagram(now, sa(from), sa(LOCAL), data);
    std::iter::from_fn(|| e.poll_transmit()).collect()
}

fn one(e: &mut Engine, now: Millis, from: &str, data: &[u8]) -> String {
    let mut out = exchange(e, now, from, data);
    assert_eq!(out.len(), 1, "expected exactly one datagram out");
    String::from_utf8(out.remove(0).payload).unwrap()
}

fn code(resp: &str) -> u16 {
    resp[8..11].parse().unwrap()
}

fn headers<'a>(resp: &'a str, name: &str) -> Vec<&'a str> {
    resp.split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

#[test]
fn register_without_auth_lists_bindings_with_date() {
    let mut e = engine(false);
    let r = one(&mut e, T0, PHONE, &Req::register("alice", "a1").bytes());
    assert_eq!(code(&r), 200, "{r}");
    assert_eq!(
        headers(&r, "Contact"),
        vec!["<sip:alice@127.0.0.10:40000>;expires=3600"]
    );
    assert_eq!(headers(&r, "Date").len(), 1);
    assert!(headers(&r, "Record-Route").is_empty());
    // RFC 3581: rport filled in, received added.
    assert!(r.contains(";received=127.0.0.10;rport=40000"), "{r}");
    assert!(headers(&r, "To")[0].contains(";tag="));
    assert_eq!(e.shared().registrar().binding_count(), 1);
    assert_eq!(e.stats().get(Counter::RegisterOk), 1);
}

#[test]
fn retransmission_answered_identically_without_second_update() {
    let mut e = engine(false);
    let req = Req::register("alice", "rt1").bytes();
    let first = exchange(&mut e, T0, PHONE, &req);
    // Someone else updates the AOR in between (new Call-ID): the retransmission must not
    // re-apply the first request.
    let mut other = Req::register("alice", "rt2");
    other.call_id = "other-cid".into();
    other.contacts = vec!["<sip:alice@127.0.0.99:5060>".into()];
    assert_eq!(
        code(&one(&mut e, T0.plus_ms(100), PHONE, &other.bytes())),
        200
    );
    let again = exchange(&mut e, T0.plus_ms(500), PHONE, &req);
    assert_eq!(first, again, "retransmission gets the same bytes");
    assert_eq!(e.stats().get(Counter::Retransmissions), 1);
    assert_eq!(e.shared().registrar().binding_count(), 2);
    // After Timer J the transaction is forgotten; the late copy is then a duplicate CSeq on
    // the same Call-ID for the registrar, which still answers 200 without changing state.
    e.handle_timeout(T0.plus_ms(40_000));
    let late = one(&mut e, T0.plus_ms(40_000), PHONE, &req);
    assert_eq!(code(&late), 200, "{late}");
    assert_eq!(e.shared().registrar().binding_count(), 2);
}

#[test]
fn a_reused_branch_on_another_request_is_not_a_retransmission() {
    let mut e = engine(false);
    assert_eq!(
        code(&one(
            &mut e,
            T0,
            PHONE,
            &Req::register("alice", "same").bytes()
        )),
        200
    );
    // Same branch, another user and Call-ID: a new request, not alice's 200 again.
    let resp = one(&mut e, T0, PHONE, &Req::register("bob", "same").bytes());
    assert!(resp.contains("sip:bob@"), "{resp}");
    // Same request from another source address: also new.
    let resp = one(&mut e, T0, PHONE2, &Req::register("alice", "same").bytes());
    assert_eq!(code(&resp), 200);
    assert_eq!(e.stats().get(Counter::Retransmissions), 0);
    assert_eq!(e.shared().registrar().binding_count(), 2);
}

#[test]
fn expiry_precedence_423_and_shortening() {
    let mut e = engine(false);
    let mut r = Req::register("alice", "x1");
    r.contacts = vec![
        "<sip:alice@127.0.0.10:1>;expires=120".into(),
        "<sip:alice@127.0.0.10:2>".into(),
    ];
    r.expires = Some("300".into());
    let resp = one(&mut e, T0, PHONE, &r.bytes());
    let mut c = headers(&resp, "Contact");
    c.sort();
    assert_eq!(
        c,
        vec![
            "<sip:alice@127.0.0.10:1>;expires=120",
            "<sip:alice@127.0.0.10:2>;expires=300"
        ]
    );

    let mut r = Req::register("bob", "x2");
    r.expires = Some("30".into());
    let resp = one(&mut e, T0, PHONE, &r.bytes());
    assert_eq!(code(&resp), 423);
    assert_eq!(headers(&resp, "Min-Expires"), vec!["60"]);
    assert_eq!(e.stats().get(Counter::RegisterFailed), 1);

    let mut r = Req::register("bob", "x3");
    r.expires = Some("999999".into());
    let resp = one(&mut e, T0, PHONE, &r.bytes());
    assert_eq!(
        headers(&resp, "Contact"),
        vec!["<sip:bob@127.0.0.10:40000>;expires=7200"]
    );
}

#[test]
fn star_and_cseq_rules() {
    let mut e = engine(false);
    let mut r = Req::register("alice", "s1");
    r.cseq = 5;
    assert_eq!(code(&one(&mut e, T0, PHONE, &r.bytes())), 200);
    // Same Call-ID, lower CSeq: the update fails and nothing changes.
    let mut old = Req::register("alice", "s2");
    old.cseq = 4;
    old.expires = Some("0".into());
    assert_eq!(code(&one(&mut e, T0, PHONE, &old.bytes())), 500);
    assert_eq!(e.shared().registrar().binding_count(), 1);
    // '*' needs Expires: 0 ...
    let mut star = Req::register("alice", "s3");
    star.cseq = 6;
    star.contacts = vec!["*".into()];
    assert_eq!(code(&one(&mut e, T0, PHONE, &star.bytes())), 400);
    // ... and then removes everything.
    star.branch = "s4".into();
    star.expires = Some("0".into());
    let resp = one(&mut e, T0, PHONE, &star.bytes());
    assert_eq!(code(&resp), 200);
    assert!(headers(&resp, "Contact").is_empty());
    assert_eq!(e.shared().registrar().binding_count(), 0);
}

#[test]
fn query_and_max_contacts_and_q_echo() {
    let mut e = engine(false);
    let mut r = Req::register("alice", "m1");
    r.contacts = vec![
        "<sip:alice@127.0.0.10:1>;q=0.5".into(),
        "<sip:alice@127.0.0.10:2>;q=1.0".into(),
        "<sip:alice@127.0.0.10:3>;q=0.25".into(),
    ];
    let resp = one(&mut e, T0, PHONE, &r.bytes());
    assert_eq!(
        headers(&resp, "Contact"),
        vec![
            "<sip:alice@127.0.0.10:2>;expires=3600;q=1",
            "<sip:alice@127.0.0.10:1>;expires=3600;q=0.5",
            "<sip:alice@127.0.0.10:3>;expires=3600;q=0.25"
        ]
    );
    let mut more = Req::register("alice", "m2");
    more.cseq = 2;
    more.contacts = vec!["<sip:alice@127.0.0.10:4>".into()];
    assert_eq!(code(&one(&mut e, T0, PHONE, &more.bytes())), 503);
    let mut query = Req::register("alice", "m3");
    query.cseq = 3;
    query.contacts.clear();
    let resp = one(&mut e, T0.plus_secs(100), PHONE, &query.bytes());
    assert_eq!(headers(&resp, "Contact").len(), 3);
    assert!(resp.contains(";expires=3500"), "{resp}");
    let mut badq = Req::register("bob", "m4");
    badq.contacts = vec!["<sip:bob@127.0.0.10:4>;q=2".into()];
    assert_eq!(code(&one(&mut e, T0, PHONE, &badq.bytes())), 400);
}

#[test]
fn require_domain_and_group_checks() {
    let mut e = engine(false);
    let mut r = Req::register("alice", "q1");
    r.extra = vec!["Require: gruu, path".into()];
    let resp = one(&mut e, T0, PHONE, &r.bytes());
    assert_eq!(code(&resp), 420);
    assert_eq!(headers(&resp, "Unsupported"), vec!["gruu"]);

    let mut r = Req::register("alice", "q2");
    r.ruri = "sip:other.test".into();
    assert_eq!(code(&one(&mut e, T0, PHONE, &r.bytes())), 403);

    let mut r = Req::register("alice", "q3");
    r.ruri = "tel:+15551234".into();
    assert_eq!(code(&one(&mut e, T0, PHONE, &r.bytes())), 416);

    // A REGISTER from a server-type group: a clear 403, nothing stored.
    let resp = one(&mut e, T0, TRUNK, &Req::register("alice", "q4").bytes());
    assert_eq!(code(&resp), 403);
    assert!(resp.contains("Server IP Group"), "{resp}");
    // Unclassified: 403 by default config here.
    assert_eq!(
        code(&one(
            &mut e,
            T0,
            "192.0.2.1:5060",
            &Req::register("alice", "q5").bytes()
        )),
        403
    );
    assert_eq!(e.shared().registrar().binding_count(), 0);
}

#[test]
fn unclassified_drop_policy_is_silent() {
    let mut cfg = config(false);
    cfg.unclassified = Unclassified::Drop;
    let mut e = Engine::new(Arc::new(Shared::new(cfg, UserDb::new(), [0; 32])), 1);
    assert!(exchange(
        &mut e,
        T0,
        "192.0.2.1:5060",
        &Req::register("alice", "d1").bytes()
    )
    .is_empty());
    assert_eq!(e.stats().get(Counter::DropUnclassified), 1);
}

/// Full digest exchange: 401 with one challenge per algorithm (SHA-256 first), then 200.
fn auth_register(
    e: &mut Engine,
    now: Millis,
    user: &'static str,
    pw: &str,
    alg_index: usize,
) -> String {
    let r = Req::register(user, &format!("au-{user}-{}", now.0));
    let resp = one(e, now, PHONE, &r.bytes());
    assert_eq!(code(&resp), 401, "{resp}");
    let ch = headers(&resp, "WWW-Authenticate");
    assert_eq!(ch.len(), 2);
    assert!(
        ch[0].contains("algorithm=SHA-256") && ch[1].contains("algorithm=MD5"),
        "{ch:?}"
    );
    let chal = parse_challenge(ch[alg_index]).unwrap();
    let authz =
        build_authorization(&chal, user, pw, "REGISTER", "sip:example.test", 1, "cn0001").unwrap();
    let mut r2 = Req::register(user, &format!("au2-{user}-{}", now.0));
    r2.cseq = 2;
    r2.extra = vec![format!("Authorization: {authz}")];
    one(e, now, PHONE, &r2.bytes())
}

#[test]
fn digest_sha256_and_md5_succeed() {
    let mut e = engine(true);
    assert_eq!(
        code(&auth_register(&mut e, T0, "alice", "alice-pw", 0)),
        200
    );
    assert_eq!(code(&auth_register(&mut e, T0, "bob", "bob-pw", 1)), 200);
    assert_eq!(e.shared().registrar().binding_count(), 2);
}

#[test]
fn digest_wrong_password_is_rechallenged_and_nothing_stored() {
    let mut e = engine(true);
    assert_eq!(code(&auth_register(&mut e, T0, "alice", "wrong", 0)), 401);
    assert_eq!(e.shared().registrar().binding_count(), 0);
    assert_eq!(e.stats().get(Counter::AuthFailures), 1);
    assert_eq!(
        e.poll_event(),
        Some(Event::AuthFailed {
            src: sa(PHONE).ip()
        })
    );
    assert_eq!(
        e.poll_event(),
        None,
        "the first, credential-less attempt is no failure"
    );
}

#[test]
fn digest_user_may_not_register_someone_elses_aor() {
    let mut e = engine(true);
    let resp = one(&mut e, T0, PHONE, &Req::register("alice", "o1").bytes());
    let chal = parse_challenge(headers(&resp, "WWW-Authenticate")[0]).unwrap();
    let authz = build_authorization(
        &chal,
        "bob",
        "bob-pw",
        "REGISTER",
        "sip:example.test",
        1,
        "c",
    )
    .unwrap();
    let mut r = Req::register("alice", "o2");
    r.cseq = 2;
    r.extra = vec![format!("Authorization: {authz}")];
    assert_eq!(code(&one(&mut e, T0, PHONE, &r.bytes())), 403);
}

#[test]
fn stale_nonce_on_virtual_clock() {
    let mut e = engine(true);
    let resp = one(&mut e, T0, PHONE, &Req::register("alice", "n1").bytes());
    let chal = parse_challenge(headers(&resp, "WWW-Authenticate")[0]).unwrap();
    let authz = build_authorization(
        &chal,
        "alice",
        "alice-pw",
        "REGISTER",
        "sip:example.test",
        1,
        "c",
    )
    .unwrap();
    let mut r = Req::register("alice", "n2");
    r.cseq = 2;
    r.extra = vec![format!("Authorization: {authz}")];
    let later = T0.plus_secs(301);
    let resp = one(&mut e, later, PHONE, &r.bytes());
    assert_eq!(code(&resp), 401);
    assert!(
        headers(&resp, "WWW-Authenticate")
            .iter()
            .all(|h| h.contains("stale=true")),
        "{resp}"
    );
    assert_eq!(e.stats().get(Counter::AuthStale), 1);
}

#[test]
fn unknown_authorization_scheme_means_challenge() {
    let mut e = engine(true);
    let mut r = Req::register("alice", "u1");
    r.extra = vec!["Authorization: NoOneKnowsThisScheme opaque-data=here".into()];
    assert_eq!(code(&one(&mut e, T0, PHONE, &r.bytes())), 401);
}

#[test]
fn bindings_expire_on_time_and_location_routing() {
    let mut e = engine(false);
    let mut r = Req::register("alice", "l1");
    r.expires = Some("60".into());
    assert_eq!(code(&one(&mut e, T0, PHONE, &r.bytes())), 200);
    let invite = |branch: &str, user: &str| {
        format!(
            "INVITE sip:{user}@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.11:40002;branch=z9hG4bK{branch};rport\r\n\
Max-Forwards: 10\r\nFrom: <sip:bob@example.test>;tag=b1\r\nTo: <sip:{user}@example.test>\r\nCall-ID: call-{branch}\r\n\
CSeq: 1 INVITE\r\nContact: <sip:bob@127.0.0.11:40002>\r\nContent-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n"
        )
        .into_bytes()
    };
    // Just before expiry: proxied to the binding's source address.
    let out = exchange(&mut e, T0.plus_ms(59_999), PHONE2, &invite("i1", "alice"));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dst, sa(PHONE));
    let fwd = String::from_utf8(out[0].payload.clone()).unwrap();
    assert!(
        fwd.starts_with("INVITE sip:alice@127.0.0.10:40000 SIP/2.0\r\n"),
        "{fwd}"
    );
    assert!(fwd.contains("Max-Forwards: 9\r\n"));
    let vias = headers(&fwd, "Via");
    assert!(
        vias[0].starts_with("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKts"),
        "{vias:?}"
    );
    assert!(
        vias[1].contains("received=127.0.0.11;rport=40002"),
        "{vias:?}"
    );
    assert!(fwd.ends_with("\r\n\r\nv=0\n"));

    // The callee answers; the response goes back to the caller without our Via.
    let our_branch = vias[0].split("branch=").nth(1).unwrap();
    let answer = format!(
        "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch={our_branch}\r\nVia: {}\r\n\
From: <sip:bob@example.test>;tag=b1\r\nTo: <sip:alice@example.test>;tag=a9\r\nCall-ID: call-i1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        vias[1]
    );
    let out = exchange(&mut e, T0.plus_ms(60_000 - 1), PHONE, answer.as_bytes());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dst, sa(PHONE2));
    let relayed = String::from_utf8(out[0].payload.clone()).unwrap();
    assert_eq!(headers(&relayed, "Via").len(), 1, "{relayed}");
    assert!(relayed.starts_with("SIP/2.0 180 Ringing\r\n"));

    // At expiry the binding is gone: alice is a known user with no binding → 480.
    let resp = one(&mut e, T0.plus_secs(60), PHONE2, &invite("i2", "alice"));
    assert_eq!(code(&resp), 480, "{resp}");
    // An unknown user → 404; Max-Forwards 0 → 483 (checked before the lookup).
    assert_eq!(code(&one(&mut e, T0, PHONE2, &invite("i3", "nobody"))), 404);
    let mut zero = invite("i4", "alice");
    let s = String::from_utf8(zero.clone())
        .unwrap()
        .replace("Max-Forwards: 10", "Max-Forwards: 0");
    zero = s.into_bytes();
    assert_eq!(code(&one(&mut e, T0, PHONE2, &zero)), 483);
    // A stray response (not ours) is dropped.
    let stray = answer.replace(our_branch, "z9hG4bKnotours");
    assert!(exchange(&mut e, T0, PHONE, stray.as_bytes()).is_empty());
    // And the shared sweep removes the expired binding.
    assert_eq!(
        e.shared().registrar().binding_count(),
        1,
        "still stored until the sweep"
    );
    assert_eq!(e.shared().handle_timeout(T0.plus_secs(60)), 1);
    assert_eq!(e.shared().registrar().binding_count(), 0);
}

#[test]
fn next_hop_is_the_contact_unless_the_phone_is_behind_nat() {
    let src = sa("203.0.113.9:61000");
    assert_eq!(
        next_hop("sip:a@198.51.100.7:5070", src),
        sa("198.51.100.7:5070")
    );
    assert_eq!(next_hop("sip:a@198.51.100.7", src), sa("198.51.100.7:5060"));
    assert_eq!(
        next_hop("sips:a@[2001:db8::1]", src),
        sa("[2001:db8::1]:5061")
    );
    // Private / CGNAT / link-local contact from another address: NAT, use the flow.
    for c in [
        "sip:a@192.168.1.20:5060",
        "sip:a@10.1.2.3",
        "sip:a@100.64.0.5",
        "sip:a@169.254.1.1",
        "sip:a@[fd00::1]",
    ] {
        assert_eq!(next_hop(c, src), src, "{c}");
    }
    // A private contact that is the source itself is reachable as is.
    assert_eq!(
        next_hop("sip:a@10.0.0.5:5062", sa("10.0.0.5:5062")),
        sa("10.0.0.5:5062")
    );
    // Host names are not resolved here.
    assert_eq!(next_hop("sip:a@phone.example.test", src), src);
}

#[test]
fn call_goes_to_the_registered_contact_not_the_registering_socket() {
    let mut e = engine(false);
    let mut r = Req::register("alice", "c1");
    r.contacts = vec!["<sip:alice@127.0.0.20:5099>".into()];
    assert_eq!(code(&one(&mut e, T0, PHONE, &r.bytes())), 200);
    let inv = b"INVITE sip:alice@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.11:40002;branch=z9hG4bKc2;rport\r\n\
From: <sip:bob@example.test>;tag=b\r\nTo: <sip:alice@example.test>\r\nCall-ID: c2\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    let out = exchange(&mut e, T0, PHONE2, inv);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dst, sa("127.0.0.20:5099"));

    // Registered through an edge proxy that added Path: calls go via that proxy.
    let mut r = Req::register("bob", "c3");
    r.extra = vec!["Path: <sip:edge.example.net@127.0.0.30:5080;lr>".into()];
    let resp = one(&mut e, T0, PHONE, &r.bytes());
    assert!(
        resp.contains("Path: <sip:edge.example.net@127.0.0.30:5080;lr>"),
        "Path echoed: {resp}"
    );
    let inv_bob = String::from_utf8_lossy(inv)
        .replace("alice@example.test", "bob@example.test")
        .replace("z9hG4bKc2", "z9hG4bKc4");
    let out = exchange(&mut e, T0, PHONE2, inv_bob.as_bytes());
    assert_eq!(out[0].dst, sa("127.0.0.30:5080"));
    let fwd = String::from_utf8_lossy(&out[0].payload);
    assert!(
        fwd.contains("Route: <sip:edge.example.net@127.0.0.30:5080;lr>\r\n"),
        "{fwd}"
    );
}

#[test]
fn options_to_server_and_malformed_requests() {
    let mut e = engine(false);
    let opts = b"OPTIONS sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.10:40000;branch=z9hG4bKo1\r\n\
From: <sip:ping@example.test>;tag=p\r\nTo: <sip:example.test>\r\nCall-ID: o1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    let resp = one(&mut e, T0, PHONE, opts);
    assert_eq!(code(&resp), 200);
    assert!(headers(&resp, "Allow")[0].contains("REGISTER"));
    // No rport: the answer goes to the sent-by port at the source address.
    let opts2 = String::from_utf8_lossy(opts).replace("z9hG4bKo1", "z9hG4bKo2");
    let out = exchange(&mut e, T0, "127.0.0.10:5999", opts2.as_bytes());
    assert_eq!(out[0].dst, sa("127.0.0.10:40000"));

    let bad = b"REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.10:40000;branch=z9hG4bKbad\r\n\
CSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n";
    let resp = one(&mut e, T0, PHONE, bad);
    assert_eq!(code(&resp), 400);
    assert!(resp.contains("Missing"), "{resp}");
    // Garbage is a counted drop, never an answer.
    assert!(exchange(&mut e, T0, PHONE, b"\x16\x03\x01 not sip at all").is_empty());
    assert_eq!(e.stats().get(Counter::DropMalformed), 2);
    // Keep-alive CRLFs are silently ignored.
    assert!(exchange(&mut e, T0, PHONE, b"\r\n\r\n").is_empty());
}

#[test]
fn every_rfc4475_message_is_handled_without_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/rfc4475");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        eprintln!("SKIPPED: no RFC 4475 messages at {}", dir.display());
        return;
    };
    let mut e = engine(false);
    let mut n = 0;
    for f in rd.flatten() {
        if f.path().extension().is_some_and(|x| x == "dat") {
            let data = std::fs::read(f.path()).unwrap();
            let _ = exchange(&mut e, T0, PHONE, &data);
            n += 1;
        }
    }
    assert_eq!(n, 49);
    // Still serving afterwards.
    assert_eq!(
        code(&one(
            &mut e,
            T0,
            PHONE,
            &Req::register("alice", "after").bytes()
        )),
        200
    );
}

#[test]
fn txn_cache_reuses_slots_and_forgets_the_oldest() {
    let mut c = TxnCache::new(1);
    let dst: SocketAddr = "192.0.2.1:5060".parse().unwrap();
    let resp = |i: u64| format!("SIP/2.0 200 OK {i}").into_bytes();
    for i in 0..MAX_TXNS as u64 + 10 {
        c.insert(T0, 1000 + i, dst, &resp(i));
    }
    // The ten oldest are forgotten; the rest answer with their own bytes from reused slots.
    assert!(c.get(1000).is_none() && c.get(1009).is_none());
    assert_eq!(c.get(1010).map(|(_, b)| b.to_vec()), Some(resp(10)));
    let last = MAX_TXNS as u64 + 9;
    assert_eq!(c.get(1000 + last), Some((dst, &resp(last)[..])));
    assert_eq!(c.slots.len(), MAX_TXNS);
    // A key stored twice answers with the later response, even after its first slot is
    // reused by others.
    c.insert(T0, 7, dst, b"first");
    c.insert(T0, 7, dst, b"second");
    for i in 0..10 {
        c.insert(T0, 5_000_000 + i, dst, b"other");
    }
    assert_eq!(c.get(7).map(|(_, b)| b.to_vec()), Some(b"second".to_vec()));
    // Timer J: everything expires and the buffers are released.
    c.expire(T0.plus_ms(TIMER_J_MS));
    assert!(c.get(7).is_none() && c.map.is_empty());
    // (All but the superseded first copy of key 7, which no entry points to any more.)
    let kept = c.slots.iter().filter(|(_, b)| b.capacity() > 0).count();
    assert_eq!(kept, 1);
}
