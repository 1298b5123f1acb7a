//! Loads the XDP program (aya), owns its maps, attaches it to an interface and detaches on
//! drop. The API takes plain structs, independent of the daemon's config types, so the config
//! layer maps onto it (`[dataplane]`, `[[ip_group]]`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    os::fd::AsRawFd,
    time::Duration,
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray, XskMap},
    programs::{TestRun, TestRunOptions, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use ipnet::IpNet;
use turnstile_common::{
    AddrKey, Counters, DenyValue, GroupValue, Verdict, XdpConfig, CFG_F_NO_META,
    CFG_F_REDIRECT_FAIL_DROP, CFG_F_UNCLASSIFIED_PASS, GROUP_F_DROP, MAP_CONFIG, MAP_COUNTERS,
    MAP_DENY, MAP_GROUP_COUNTERS, MAP_LPM_V4, MAP_LPM_V6, MAP_XSKS, MAX_CLASSES, MAX_GROUPS,
    MAX_QUEUES, MAX_RATE_PPS, MAX_SIP_PORTS, PROG_NAME, VERDICT_COUNT,
};

use super::error::{classify, classify_attach, XdpError};
use super::XDP_OBJECT;

/// How the program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native XDP in the driver (fast path; veth supports it).
    Driver,
    /// Generic XDP in the kernel stack (works everywhere, slower).
    Skb,
}

/// What to do with SIP packets from sources in no IP Group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UnclassifiedPolicy {
    #[default]
    Drop,
    Pass,
}

/// What to do when no AF_XDP socket is bound for (rx queue, class).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RedirectFallback {
    /// Hand the packet to the kernel (a socket-mode listener still gets it). Default.
    #[default]
    Pass,
    Drop,
}

/// Program-wide parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpParams {
    /// UDP destination ports treated as SIP (at most `MAX_SIP_PORTS`, host byte order).
    pub sip_ports: Vec<u16>,
    pub unclassified: UnclassifiedPolicy,
    pub redirect_fallback: RedirectFallback,
    /// Write `XdpMeta` before each redirected packet (turn off for drivers without metadata).
    pub write_metadata: bool,
}

impl Default for XdpParams {
    fn default() -> Self {
        XdpParams {
            sip_ports: vec![5060],
            unclassified: UnclassifiedPolicy::Drop,
            redirect_fallback: RedirectFallback::Pass,
            write_metadata: true,
        }
    }
}

/// What a classified source maps to (one IP Group as seen by XDP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GroupSpec {
    /// IP Group id, `< MAX_GROUPS`.
    pub group_id: u16,
    /// Queue class (AF_XDP socket index on the rx queue), `< MAX_CLASSES`.
    pub class: u8,
    /// Per-source packets per second; 0 = unlimited.
    pub rate_pps: u32,
    /// Per-source burst in packets (0 → 1 when rate_pps is set).
    pub burst: u32,
    /// Drop the whole group at the NIC.
    pub drop: bool,
}

impl GroupSpec {
    fn value(&self) -> Result<GroupValue, XdpError> {
        if u32::from(self.group_id) >= MAX_GROUPS {
            return Err(XdpError::InvalidParam(format!(
                "group id {} >= {MAX_GROUPS}",
                self.group_id
            )));
        }
        if u32::from(self.class) >= MAX_CLASSES {
            return Err(XdpError::InvalidParam(format!(
                "class {} >= {MAX_CLASSES}",
                self.class
            )));
        }
        if self.rate_pps > MAX_RATE_PPS {
            return Err(XdpError::InvalidParam(format!(
                "rate {} pps > {MAX_RATE_PPS}",
                self.rate_pps
            )));
        }
        Ok(GroupValue {
            group_id: self.group_id,
            class: self.class,
            flags: if self.drop { GROUP_F_DROP } else { 0 },
            rate_pps: self.rate_pps,
            burst: self.burst,
            _reserved: 0,
        })
    }
}

/// One classification rule: a source prefix and its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupPrefix {
    pub prefix: IpNet,
    pub group: GroupSpec,
}

/// Counters merged over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Indexed by `Verdict as usize`.
    pub global: [u64; VERDICT_COUNT],
    /// Per configured group id.
    pub groups: BTreeMap<u16, [u64; VERDICT_COUNT]>,
}

impl CounterSnapshot {
    pub fn get(&self, v: Verdict) -> u64 {
        self.global[v as usize]
    }
    pub fn group(&self, group_id: u16, v: Verdict) -> u64 {
        self.groups.get(&group_id).map_or(0, |c| c[v as usize])
    }
    /// (metric name, value) of every global verdict, for `show stats` / metrics export.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Verdict::ALL
            .iter()
            .map(|v| (v.name(), self.global[*v as usize]))
    }
}

/// Result of one `BPF_PROG_TEST_RUN` of the program.
#[derive(Clone, Debug)]
pub struct TestRunOutput {
    /// XDP action (`XDP_ABORTED`=0, `XDP_DROP`=1, `XDP_PASS`=2, `XDP_TX`=3, `XDP_REDIRECT`=4).
    pub action: u32,
    /// Metadata bytes the program put before the packet (empty if none).
    pub meta: Vec<u8>,
    /// The packet after the program ran.
    pub packet: Vec<u8>,
}

/// The loaded XDP program and its maps. Dropping it detaches the program.
pub struct XdpDataplane {
    // Field order matters for Drop: maps first, then the Ebpf that owns the program/link.
    config: Array<MapData, XdpConfig>,
    lpm_v4: LpmTrie<MapData, [u8; 4], GroupValue>,
    lpm_v6: LpmTrie<MapData, [u8; 16], GroupValue>,
    deny: HashMap<MapData, AddrKey, DenyValue>,
    counters: PerCpuArray<MapData, Counters>,
    group_counters: PerCpuArray<MapData, Counters>,
    xsks: XskMap<MapData>,
    installed: BTreeMap<IpNet, GroupValue>,
    attached: Option<(String, AttachMode)>,
    ebpf: Ebpf,
}

/// The embedded object with its maps created and program `prog` loaded (verified); `what`
/// names the step in the error.
pub(crate) fn load_object_with(prog: &str, what: &str) -> Result<Ebpf, XdpError> {
    if XDP_OBJECT.is_empty() {
        return Err(XdpError::NotBuilt);
    }
    let mut ebpf = EbpfLoader::new()
        .load(XDP_OBJECT)
        .map_err(|e| classify("load the XDP object (create maps)", &e))?;
    let p: &mut Xdp = ebpf
        .program_mut(prog)
        .ok_or_else(|| XdpError::Other {
            op: "load".into(),
            msg: format!("program {prog} missing from the XDP object"),
        })?
        .try_into()
        .map_err(|e| classify("load", &e))?;
    p.load().map_err(|e| classify(what, &e))?;
    Ok(ebpf)
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T, XdpError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| XdpError::Other {
        op: "load".into(),
        msg: format!("map {name} missing from the XDP object (stale build?)"),
    })?;
    T::try_from(map).map_err(|e| classify(&format!("open map {name}"), &e))
}

fn config_value(p: &XdpParams) -> Result<XdpConfig, XdpError> {
    if p.sip_ports.len() > MAX_SIP_PORTS {
        return Err(XdpError::InvalidParam(format!(
            "{} SIP ports, at most {MAX_SIP_PORTS}",
            p.sip_ports.len()
        )));
    }
    let mut cfg = XdpConfig::default();
    for (i, port) in p.sip_ports.iter().enumerate() {
        if *port == 0 {
            return Err(XdpError::InvalidParam("SIP port 0".into()));
        }
        cfg.sip_ports_be[i] = port.to_be();
    }
    if p.unclassified == UnclassifiedPolicy::Pass {
        cfg.flags |= CFG_F_UNCLASSIFIED_PASS;
    }
    if p.redirect_fallback == RedirectFallback::Drop {
        cfg.flags |= CFG_F_REDIRECT_FAIL_DROP;
    }
    if !p.write_metadata {
        cfg.flags |= CFG_F_NO_META;
    }
    Ok(cfg)
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn addr_key(addr: IpAddr) -> AddrKey {
    match addr {
        IpAddr::V4(a) => AddrKey::v4(a.octets()),
        IpAddr::V6(a) => AddrKey::v6(a.octets()),
    }
}

impl XdpDataplane {
    /// Load, configure and attach in one go.
    pub fn load(
        iface: &str,
        mode: AttachMode,
        params: &XdpParams,
        groups: &[GroupPrefix],
    ) -> Result<Self, XdpError> {
        let mut dp = Self::open(params, groups)?;
        dp.attach(iface, mode)?;
        Ok(dp)
    }

    /// Load the program into the kernel and fill its maps, without attaching it anywhere
    /// (used by `BPF_PROG_TEST_RUN` tests, and to register AF_XDP sockets before attaching).
    pub fn open(params: &XdpParams, groups: &[GroupPrefix]) -> Result<Self, XdpError> {
        if XDP_OBJECT.is_empty() {
            return Err(XdpError::NotBuilt);
        }
        let cfg = config_value(params)?;
        let mut ebpf = load_object_with(PROG_NAME, "load the XDP program (verifier)")?;
        let mut dp = XdpDataplane {
            config: take(&mut ebpf, MAP_CONFIG)?,
            lpm_v4: take(&mut ebpf, MAP_LPM_V4)?,
            lpm_v6: take(&mut ebpf, MAP_LPM_V6)?,
            deny: take(&mut ebpf, MAP_DENY)?,
            counters: take(&mut ebpf, MAP_COUNTERS)?,
            group_counters: take(&mut ebpf, MAP_GROUP_COUNTERS)?,
            xsks: take(&mut ebpf, MAP_XSKS)?,
            installed: BTreeMap::new(),
            attached: None,
            ebpf,
        };
        dp.config
            .set(0, cfg, 0)
            .map_err(|e| classify("write config", &e))?;
        dp.update_groups(groups)?;
        Ok(dp)
    }

    /// Attach to `iface`. Fails if already attached.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<(), XdpError> {
        if let Some((cur, _)) = &self.attached {
            return Err(XdpError::InvalidParam(format!("already attached to {cur}")));
        }
        let cname =
            std::ffi::CString::new(iface).map_err(|_| XdpError::NoSuchInterface(iface.into()))?;
        // SAFETY: valid C string.
        if unsafe { libc::if_nametoindex(cname.as_ptr()) } == 0 {
            return Err(XdpError::NoSuchInterface(iface.into()));
        }
        let prog = self.program_mut()?;
        let m = match mode {
            AttachMode::Driver => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        };
        prog.attach(iface, m)
            .map_err(|e| classify_attach(iface, &e))?;
        self.attached = Some((iface.to_string(), mode));
        Ok(())
    }

    /// Interface and mode the program is attached to.
    pub fn attached(&self) -> Option<(&str, AttachMode)> {
        self.attached.as_ref().map(|(i, m)| (i.as_str(), *m))
    }

    fn program_mut(&mut self) -> Result<&mut Xdp, XdpError> {
        self.ebpf
            .program_mut(PROG_NAME)
            .ok_or_else(|| XdpError::Other {
                op: "attach".into(),
                msg: "program missing".into(),
            })?
            .try_into()
            .map_err(|e| classify("program", &e))
    }

    fn program(&self) -> Result<&Xdp, XdpError> {
        self.ebpf
            .program(PROG_NAME)
            .ok_or_else(|| XdpError::Other {
                op: "test_run".into(),
                msg: "program missing".into(),
            })?
            .try_into()
            .map_err(|e| classify("program", &e))
    }

    /// Replace the program parameters (SIP ports, policies) atomically (one map write).
    pub fn set_params(&mut self, params: &XdpParams) -> Result<(), XdpError> {
        let cfg = config_value(params)?;
        self.config
            .set(0, cfg, 0)
            .map_err(|e| classify("write config", &e))
    }

    /// Make the LPM tries hold exactly `groups`. New and changed prefixes are written before
    /// stale ones are removed, so a source that stays classified never sees a gap during a
    /// reload. Per-source buckets are left alone (they refill by themselves).
    pub fn update_groups(&mut self, groups: &[GroupPrefix]) -> Result<(), XdpError> {
        let mut want: BTreeMap<IpNet, GroupValue> = BTreeMap::new();
        for g in groups {
            // Normalise (198.18.0.1/15 → 198.18.0.0/15): the trie ignores host bits anyway,
            // but the bookkeeping must not see two names for one key.
            want.insert(g.prefix.trunc(), g.group.value()?);
        }
        for (net, val) in &want {
            if self.installed.get(net) == Some(val) {
                continue;
            }
            let r = match net {
                IpNet::V4(n) => self.lpm_v4.insert(
                    &Key::new(u32::from(n.prefix_len()), n.addr().octets()),
                    *val,
                    0,
                ),
                IpNet::V6(n) => self.lpm_v6.insert(
                    &Key::new(u32::from(n.prefix_len()), n.addr().octets()),
                    *val,
                    0,
                ),
            };
            r.map_err(|e| classify(&format!("insert prefix {net}"), &e))?;
            self.installed.insert(*net, *val);
        }
        let stale: Vec<IpNet> = self
            .installed
            .keys()
            .filter(|n| !want.contains_key(n))
            .copied()
            .collect();
        for net in stale {
            let r = match net {
                IpNet::V4(n) => self
                    .lpm_v4
                    .remove(&Key::new(u32::from(n.prefix_len()), n.addr().octets())),
                IpNet::V6(n) => self
                    .lpm_v6
                    .remove(&Key::new(u32::from(n.prefix_len()), n.addr().octets())),
            };
            r.map_err(|e| classify(&format!("remove prefix {net}"), &e))?;
            self.installed.remove(&net);
        }
        Ok(())
    }

    /// Put `addr` on the deny list for `duration` (None = until `allow`).
    pub fn deny(&mut self, addr: IpAddr, duration: Option<Duration>) -> Result<(), XdpError> {
        let until_ns = match duration {
            None => 0,
            // max(1): 0 means forever.
            Some(d) => (monotonic_ns() + d.as_nanos().min(u64::MAX as u128 / 2) as u64).max(1),
        };
        self.deny
            .insert(addr_key(addr), DenyValue { until_ns }, 0)
            .map_err(|e| classify(&format!("deny {addr}"), &e))
    }

    /// Remove `addr` from the deny list (no error if absent).
    pub fn allow(&mut self, addr: IpAddr) -> Result<(), XdpError> {
        match self.deny.remove(&addr_key(addr)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(classify(&format!("allow {addr}"), &e)),
        }
    }

    /// Remove expired deny entries (the program also forgets them when they are hit).
    pub fn expire_denies(&mut self) -> Result<usize, XdpError> {
        let now = monotonic_ns();
        let expired: Vec<AddrKey> = self
            .deny
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(_, v)| v.until_ns != 0 && v.until_ns <= now)
            .map(|(k, _)| k)
            .collect();
        for k in &expired {
            let _ = self.deny.remove(k);
        }
        Ok(expired.len())
    }

    /// Bind an AF_XDP socket at (rx queue, class): the program redirects there.
    pub fn register_xsk(
        &mut self,
        queue: u32,
        class: u8,
        fd: impl AsRawFd,
    ) -> Result<(), XdpError> {
        let idx = xsk_index(queue, class)?;
        self.xsks
            .set(idx, fd, 0)
            .map_err(|e| classify(&format!("register AF_XDP socket q{queue}/c{class}"), &e))
    }

    pub fn unregister_xsk(&mut self, queue: u32, class: u8) -> Result<(), XdpError> {
        let idx = xsk_index(queue, class)?;
        match self.xsks.unset(idx) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(classify("unregister AF_XDP socket", &e)),
        }
    }

    /// Per-CPU counters summed. Groups reported: those currently installed in the tries.
    pub fn read_counters(&self) -> Result<CounterSnapshot, XdpError> {
        let mut snap = CounterSnapshot::default();
        let per_cpu = self
            .counters
            .get(&0, 0)
            .map_err(|e| classify("read counters", &e))?;
        for c in per_cpu.iter() {
            for (i, v) in c.v.iter().enumerate() {
                snap.global[i] = snap.global[i].wrapping_add(*v);
            }
        }
        let ids: BTreeSet<u16> = self.installed.values().map(|g| g.group_id).collect();
        for id in ids {
            let per_cpu = self
                .group_counters
                .get(&u32::from(id), 0)
                .map_err(|e| classify("read group counters", &e))?;
            let mut sum = [0u64; VERDICT_COUNT];
            for c in per_cpu.iter() {
                for (i, v) in c.v.iter().enumerate() {
                    sum[i] = sum[i].wrapping_add(*v);
                }
            }
            snap.groups.insert(id, sum);
        }
        Ok(snap)
    }

    /// Run the program `repeat` times on `frame` in the kernel (`BPF_PROG_TEST_RUN` with
    /// `repeat`); returns the last action and the kernel-measured average time per run.
    pub fn test_run_repeat(
        &self,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, std::time::Duration), XdpError> {
        let prog = self.program()?;
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat: repeat.max(1),
            ..TestRunOptions::default()
        };
        let r = prog
            .test_run(opts)
            .map_err(|e| classify("BPF_PROG_TEST_RUN", &e))?;
        Ok((r.return_value, r.duration))
    }

    /// Run the program once on `frame` with `BPF_PROG_TEST_RUN` (rx queue 0). Maps are the
    /// live ones: counters, buckets and deny entries are affected exactly as for real traffic.
    pub fn test_run(&self, frame: &[u8]) -> Result<TestRunOutput, XdpError> {
        let prog = self.program()?;
        // Room for metadata growth; the kernel writes data_meta..data_end.
        let mut out = vec![0u8; frame.len() + 256];
        // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex }: after the run `data` is the metadata length.
        let ctx_in = [0u8; 24];
        let mut ctx_out = [0u8; 24];
        let mut ctx_in_v = ctx_in;
        ctx_in_v[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx_in_v),
            ctx_out: Some(&mut ctx_out),
            ..TestRunOptions::default()
        };
        let r = prog
            .test_run(opts)
            .map_err(|e| classify("BPF_PROG_TEST_RUN", &e))?;
        out.truncate(r.data_size_out as usize);
        let meta_len = u32::from_ne_bytes(ctx_out[0..4].try_into().expect("4 bytes")) as usize;
        let meta_len = meta_len.min(out.len());
        let packet = out.split_off(meta_len);
        Ok(TestRunOutput {
            action: r.return_value,
            meta: out,
            packet,
        })
    }
}

fn xsk_index(queue: u32, class: u8) -> Result<u32, XdpError> {
    if queue >= MAX_QUEUES || u32::from(class) >= MAX_CLASSES {
        return Err(XdpError::InvalidParam(format!(
            "AF_XDP slot q{queue}/c{class} outside {MAX_QUEUES} queues x {MAX_CLASSES} classes"
        )));
    }
    Ok(queue * MAX_CLASSES + u32::from(class))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_encodes_ports_and_flags() {
        let p = XdpParams {
            sip_ports: vec![5060, 5080],
            unclassified: UnclassifiedPolicy::Pass,
            redirect_fallback: RedirectFallback::Drop,
            write_metadata: false,
        };
        let c = config_value(&p).unwrap();
        assert_eq!(c.sip_ports_be[0], 5060u16.to_be());
        assert_eq!(c.sip_ports_be[1], 5080u16.to_be());
        assert_eq!(c.sip_ports_be[2], 0);
        assert_eq!(
            c.flags,
            CFG_F_UNCLASSIFIED_PASS | CFG_F_REDIRECT_FAIL_DROP | CFG_F_NO_META
        );
        let too_many = XdpParams {
            sip_ports: (5060..5070).collect(),
            ..XdpParams::default()
        };
        assert!(config_value(&too_many).is_err());
    }

    #[test]
    fn group_spec_validation() {
        let ok = GroupSpec {
            group_id: 3,
            class: 1,
            rate_pps: 10,
            burst: 5,
            drop: true,
        };
        let v = ok.value().unwrap();
        assert_eq!((v.group_id, v.class, v.flags), (3, 1, GROUP_F_DROP));
        assert!(GroupSpec {
            group_id: MAX_GROUPS as u16,
            ..ok
        }
        .value()
        .is_err());
        assert!(GroupSpec {
            class: MAX_CLASSES as u8,
            ..ok
        }
        .value()
        .is_err());
        assert!(GroupSpec {
            rate_pps: MAX_RATE_PPS + 1,
            ..ok
        }
        .value()
        .is_err());
    }

    #[test]
    fn xsk_slots() {
        assert_eq!(xsk_index(2, 3).unwrap(), 2 * MAX_CLASSES + 3);
        assert!(xsk_index(MAX_QUEUES, 0).is_err());
    }
}
