//! The benchmark's XDP flood generator (`turnstile_flood` in the embedded object): offers
//! a template SIP frame at millions of packets per second by running the program with
//! `BPF_PROG_RUN` in live-frames mode (Linux 5.18+), each repetition with fresh counters,
//! redirected out of an interface. Used by `storm-veth --xdp-flood` for the isolation case
//! ("a group flooded at 10× capacity"), which a socket sender on the same cores cannot
//! reach. Not part of the data plane: the daemon never loads it.

use aya::{
    maps::Array,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    Ebpf,
};
use turnstile_common::{
    FloodConfig, FLOOD_CTR_DIGITS, FLOOD_MAX_MARKS, FLOOD_OFF_MASK, FLOOD_PROG_NAME,
    FLOOD_USER_DIGITS, MAP_FLOOD,
};

use super::error::{classify, classify_attach, XdpError};
use super::loader::load_object_with;

/// Frames the kernel builds per batch inside one `BPF_PROG_RUN` (its page pool size).
const LIVE_BATCH: u32 = 64;

pub struct XdpFlood {
    ebpf: Ebpf,
    frame: Vec<u8>,
}

impl XdpFlood {
    /// Loads the generator for `frame` (a whole Ethernet frame, UDP checksum 0), leaving by
    /// `iface`; `ctr_marks` / `user_marks` are the frame offsets of the 16-digit counter and
    /// 4-digit user fields to rewrite per frame; `salt` keeps runs from repeating counters.
    pub fn open(
        iface: &str,
        frame: Vec<u8>,
        ctr_marks: &[u16],
        user_marks: &[u16],
        salt: u64,
    ) -> Result<Self, XdpError> {
        let mut cfg = FloodConfig {
            ifindex: ifindex(iface)?,
            salt,
            ..FloodConfig::default()
        };
        for (marks, digits, slots) in [
            (ctr_marks, FLOOD_CTR_DIGITS, &mut cfg.ctr_marks),
            (user_marks, FLOOD_USER_DIGITS, &mut cfg.user_marks),
        ] {
            if marks.len() > FLOOD_MAX_MARKS {
                return Err(XdpError::InvalidParam(format!(
                    "at most {FLOOD_MAX_MARKS} fields of each kind"
                )));
            }
            for (slot, &m) in slots.iter_mut().zip(marks) {
                if m == 0 || m > FLOOD_OFF_MASK || m as usize + digits > frame.len() {
                    return Err(XdpError::InvalidParam(format!(
                        "field at offset {m} ({digits} digits) outside the {}-byte frame",
                        frame.len()
                    )));
                }
                *slot = m;
            }
        }
        let mut ebpf = load_object_with(FLOOD_PROG_NAME, "load the flood program (verifier)")?;
        let mut map: Array<_, FloodConfig> =
            Array::try_from(ebpf.map_mut(MAP_FLOOD).ok_or_else(|| XdpError::Other {
                op: "load".into(),
                msg: format!("map {MAP_FLOOD} missing from the XDP object"),
            })?)
            .map_err(|e| classify("open the flood map", &e))?;
        map.set(0, cfg, 0)
            .map_err(|e| classify("write the flood config", &e))?;
        Ok(XdpFlood { ebpf, frame })
    }

    /// Attaches the program (skb mode) to `iface`, an idle device (e.g. a veth end left down), until this
    /// value is dropped. Without it every `BPF_PROG_RUN` adds the program to the kernel's XDP
    /// dispatcher and removes it again, each change waiting for an RCU grace period (~25 ms a
    /// call on a 2-core VM: the flood comes in bursts with gaps); attached, it stays there.
    /// The program passes anything that really arrives on `iface`.
    pub fn hold_on(&mut self, iface: &str) -> Result<(), XdpError> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(FLOOD_PROG_NAME)
            .expect("loaded in open")
            .try_into()
            .map_err(|e| classify("flood", &e))?;
        prog.attach(iface, XdpMode::Skb)
            .map_err(|e| classify_attach(iface, &e))?;
        Ok(())
    }

    /// Sends `count` frames; returns once the kernel has run (and transmitted) them all.
    pub fn send(&mut self, count: u32) -> Result<(), XdpError> {
        if count == 0 {
            return Ok(());
        }
        let prog: &Xdp = self
            .ebpf
            .program(FLOOD_PROG_NAME)
            .expect("loaded in open")
            .try_into()
            .map_err(|e| classify("flood", &e))?;
        let opts = TestRunOptions {
            data_in: Some(&self.frame),
            repeat: count,
            attrs: TestRunAttrs::new().xdp_live_frames(LIVE_BATCH),
            ..TestRunOptions::default()
        };
        prog.test_run(opts)
            .map_err(|e| classify("BPF_PROG_RUN (live frames)", &e))?;
        Ok(())
    }
}

fn ifindex(iface: &str) -> Result<u32, XdpError> {
    let name =
        std::ffi::CString::new(iface).map_err(|_| XdpError::NoSuchInterface(iface.into()))?;
    // SAFETY: valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if i == 0 {
        return Err(XdpError::NoSuchInterface(iface.into()));
    }
    Ok(i)
}
