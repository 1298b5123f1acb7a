//! `null-responder`: answers every SIP request with 200 OK, statelessly (the generator's ceiling).

use clap::Parser;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:5060")]
    listen: SocketAddr,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Exit after this many seconds (0 = until SIGINT/SIGTERM).
    #[arg(long, default_value_t = 0)]
    seconds: u64,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: i32) {
    STOP.store(true, Relaxed);
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    anyhow::ensure!(
        a.listen.ip().is_loopback(),
        "null-responder listens on loopback only"
    );
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as usize);
        libc::signal(libc::SIGTERM, on_signal as *const () as usize);
    }
    let r = turnstile_benches::NullResponder::spawn(a.listen, a.threads)?;
    eprintln!("null-responder on {} ({} threads)", r.addr, a.threads);
    let t0 = Instant::now();
    while !STOP.load(Relaxed) && (a.seconds == 0 || t0.elapsed() < Duration::from_secs(a.seconds)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("null-responder: answered {}", r.answered());
    r.stop();
    Ok(())
}
