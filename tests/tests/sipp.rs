//! sipp (the standard SIP load and conformance client) registering a few thousand users with
//! digest authentication against the real binary over UDP, then unregistering them.
//!
//! sipp 3.6 answers only MD5 challenges and takes the first one it sees, so this config
//! offers MD5 alone (a legitimate operator setting); SHA-256 is exercised by our own client
//! in the engine tests and the storm generator.

use std::path::Path;
use std::process::{Command, Stdio};
use turnstile_e2e::daemon::{free_udp_port, require_tool, Daemon, Setup};

const USERS: usize = 2000;

fn sipp(d: &Daemon, csv: &Path, port: u16, expires: u32, calls: usize) -> std::process::ExitStatus {
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("sipp/register_auth.xml");
    Command::new("sipp")
        .args(["-sf", scenario.to_str().unwrap()])
        .args(["-inf", csv.to_str().unwrap()])
        .args([
            "-s",
            "example.test",
            "-key",
            "expires",
            &expires.to_string(),
        ])
        // sipp's digest `uri` defaults to the remote address; ours must match the
        // Request-URI (RFC 7616 §3.4), which is sip:example.test.
        .args(["-auth_uri", "example.test"])
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-m", &calls.to_string(), "-r", "1000", "-l", "200"])
        .args([
            "-timeout",
            "60s",
            "-timeout_error",
            "-max_retrans",
            "5",
            "-nostdin",
        ])
        .arg(d.addr().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .expect("run sipp")
}

#[test]
fn sipp_registers_and_unregisters_thousands_of_users_with_digest() {
    if !require_tool("sipp") {
        return;
    }
    let users: String = (0..USERS)
        .map(|i| format!("user{i:05}:pw-{i:05}\n"))
        .collect();
    let d = Daemon::start(Setup {
        auth: Some(vec!["MD5"]),
        users,
        ..Setup::default()
    });
    let csv = d.dir.path().join("users.csv");
    let mut text = String::from("SEQUENTIAL\n");
    for i in 0..USERS {
        text.push_str(&format!(
            "user{i:05};[authentication username=user{i:05} password=pw-{i:05}]\n"
        ));
    }
    std::fs::write(&csv, text).unwrap();

    // The same local port both times: the Contact URIs of the unregistration must be the
    // ones that were registered (a different port is a different binding, RFC 3261 §10.3).
    let port = free_udp_port();
    let st = sipp(&d, &csv, port, 600, USERS);
    assert!(st.success(), "sipp reported failed registrations: {st}");
    assert_eq!(
        d.bindings(),
        USERS as u64,
        "every user has exactly one binding"
    );
    let stats = d.show(&["stats"]);
    assert_eq!(stats["engine"]["register_ok"].as_u64(), Some(USERS as u64));
    assert_eq!(
        stats["engine"]["auth_challenges"].as_u64(),
        Some(USERS as u64)
    );

    // Expires: 0 with fresh credentials removes every binding.
    let st = sipp(&d, &csv, port, 0, USERS);
    assert!(st.success(), "sipp reported failed unregistrations: {st}");
    assert_eq!(d.bindings(), 0);
    assert!(d.stop(), "clean exit on SIGTERM");
}

#[test]
fn sipp_with_a_wrong_password_never_registers() {
    if !require_tool("sipp") {
        return;
    }
    let d = Daemon::start(Setup {
        auth: Some(vec!["MD5"]),
        ..Setup::default()
    });
    let csv = d.dir.path().join("users.csv");
    std::fs::write(
        &csv,
        "SEQUENTIAL\nalice;[authentication username=alice password=nope]\n",
    )
    .unwrap();
    // The second REGISTER gets another 401 instead of the 200 the scenario wants.
    let st = sipp(&d, &csv, free_udp_port(), 600, 1);
    assert!(!st.success(), "sipp must fail when the password is wrong");
    assert_eq!(d.bindings(), 0);
    assert_eq!(
        d.show(&["stats"])["engine"]["auth_failures"].as_u64(),
        Some(1)
    );
}
