//! One network per execution environment, as Firecracker's network-for-clones guide lays out:
//! every environment gets a network namespace of its own holding a tap device of the same name
//! ([`TAP`]) and the same guest address ([`GUEST_ADDRESS`]), so a snapshot restores into any
//! environment unchanged. A veth pair links the namespace to the host with a /30 of its own from
//! the service's range; the namespace translates the guest's address to the environment's
//! unique one, and the host forwards and masquerades it outbound. No environment reaches
//! another's addresses, or any address of the host but its own link's: such traffic is refused
//! with a reset (TCP) or an ICMP error rather than dropped, so a guest fails fast instead of
//! waiting out a timeout (this is also what ends, at once, a connection a restored copy
//! inherited from the snapshot).
//!
//! The namespace, links, addresses, tap and route are made with netlink messages (the
//! `rtnetlink` crate) from one thread, which binds the new namespace at `/run/netns/<name>` as
//! `ip netns add` does; the nftables rules go in one `nft -f -` batch for the host and one for
//! the namespace. Every object
//! is named `lvm-<slot>` (namespace, host-side veth, host nft table), where the slot is the
//! environment's /30: its network address over 4, so services with different ranges never
//! pick the same names, and ones with overlapping ranges never the same link. A slot is claimed by creating `<run dir>/<slot>`, exclusively,
//! before anything is made, which also makes slots unique between services on one host; the
//! claim names its owner (pid and start time). An [`EnvNetwork`] removes everything when it
//! is dropped; [`Networks::sweep`] removes what a service that died left behind.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use proc_info::Identity;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

/// The tap device inside every environment's namespace, the VM's network backend.
pub const TAP: &str = "tap0";
/// The guest's network identity, the same in every environment, which init sets up.
pub use proto::guest::net::{
    ADDRESS as GUEST_ADDRESS, GATEWAY as GATEWAY_ADDRESS, GATEWAY_MAC, MAC as GUEST_MAC,
};
/// The prefix length of the guest's link and of each environment's host link.
const LINK_PREFIX_LEN: u8 = proto::guest::net::PREFIX_LEN;
/// What the service's objects are named with; nothing else on the host may use it.
pub const NAME_PREFIX: &str = "lvm-";
/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";
/// The veth end inside each namespace.
const INNER_VETH: &str = "veth0";
/// Where the slot claims live: one place for every service on the host, since the names they
/// guard are host-wide.
const RUN_DIR: &str = "/run/lambda-vm/net";
/// The default range: the first /16 of the shared address space (RFC 6598), which a host's own
/// networks seldom use. 16384 environments.
pub const DEFAULT_RANGE: &str = "100.64.0.0/16";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{0}")]
    Unavailable(String),
    #[error("running {program}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("{what} failed ({status}): {stderr}")]
    Command {
        what: String,
        status: String,
        stderr: String,
    },
    #[error("claiming a network slot in {}", dir.display())]
    Claim {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("every /30 of {0} is in use")]
    Exhausted(Subnet),
    #[error("{what}")]
    Netlink {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("entering the namespace {}", path.display())]
    Enter {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An IPv4 range `a.b.c.d/len` the environments' /30s are cut from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    base: Ipv4Addr,
    prefix_len: u8,
}

impl FromStr for Subnet {
    type Err = String;

    fn from_str(s: &str) -> Result<Subnet, String> {
        let (address, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected an IPv4 range such as {DEFAULT_RANGE}"))?;
        let base: Ipv4Addr = address
            .parse()
            .map_err(|e| format!("{address:?} is not an IPv4 address: {e}"))?;
        let prefix_len: u8 = len
            .parse()
            .ok()
            .filter(|len| (8..=LINK_PREFIX_LEN).contains(len))
            .ok_or_else(|| format!("{len:?}: the prefix length must be 8 to {LINK_PREFIX_LEN}"))?;
        let host_bits = u32::MAX >> prefix_len;
        if u32::from(base) & host_bits != 0 {
            return Err(format!("{s}: the address has bits set past /{prefix_len}"));
        }
        Ok(Subnet { base, prefix_len })
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix_len)
    }
}

impl Subnet {
    /// Its /30s, as slots (a /30's network address over 4).
    fn slots(&self) -> std::ops::Range<u32> {
        let first = u32::from(self.base) >> 2;
        first..first + (1 << (LINK_PREFIX_LEN - self.prefix_len))
    }
}

/// The host's and the environment's address on the link of `slot`.
fn link(slot: u32) -> (Ipv4Addr, Ipv4Addr) {
    let network = slot << 2;
    (Ipv4Addr::from(network + 1), Ipv4Addr::from(network + 2))
}

/// The service's environment networks: the range, who claims slots, a few networks made ahead
/// ([`Networks::keep_ready`]) and the removal of used ones, both on a thread of their own so
/// that neither is on an environment's way in or out.
#[derive(Debug)]
pub struct Networks {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    range: Subnet,
    run_dir: PathBuf,
    owner: Owner,
    work: Mutex<Work>,
    changed: Condvar,
}

/// What the networks' thread has to do.
#[derive(Debug, Default)]
struct Work {
    ready: Vec<EnvNetwork>,
    /// How many to keep ready.
    target: usize,
    /// Networks to remove: their names and claims.
    removals: VecDeque<(String, PathBuf)>,
    /// A removal is under way.
    removing: bool,
    /// The thread runs.
    started: bool,
    /// No more networks are made ahead; the thread ends once its removals are done.
    closed: bool,
}

impl Networks {
    /// Checks that this host can give environments networks (the `nft` program, and the right
    /// to change the network: CAP_NET_ADMIN), turns on IPv4 forwarding, and sweeps what
    /// services that are gone left behind. The error says what is missing.
    pub fn open(range: Subnet) -> Result<Networks, NetworkError> {
        let run_dir = PathBuf::from(RUN_DIR);
        // Listing tables needs CAP_NET_ADMIN: the cheapest check of the right itself.
        run(Command::new("nft").args(["list", "tables"]), None)
            .map_err(|e| missing("nft", "nftables", e))?;
        std::fs::create_dir_all(&run_dir).map_err(|source| NetworkError::Claim {
            dir: run_dir.clone(),
            source,
        })?;
        enable_forwarding()?;
        let networks = Networks {
            shared: Arc::new(Shared {
                range,
                run_dir,
                owner: Owner::of_this_process()?,
                work: Mutex::new(Work::default()),
                changed: Condvar::new(),
            }),
        };
        let swept = networks.sweep();
        if swept > 0 {
            log::info!("removed {swept} environment networks left by services that are gone");
        }
        Ok(networks)
    }

    pub fn range(&self) -> Subnet {
        self.shared.range
    }

    /// Keeps `count` networks made ahead from now on, and removes used ones in the
    /// background, on a thread of their own; [`Networks::close`] ends it.
    pub fn keep_ready(&self, count: usize) {
        let start = {
            let mut work = self.shared.lock();
            work.target = count;
            !std::mem::replace(&mut work.started, true) && !work.closed
        };
        self.shared.changed.notify_all();
        if start {
            let shared = Arc::clone(&self.shared);
            let started = std::thread::Builder::new()
                .name("networks".into())
                .spawn(move || shared.work());
            if let Err(e) = started {
                log::error!("cannot start the networks' thread: {e}");
                self.shared.lock().started = false;
            }
        }
    }

    /// A network for a new environment: the oldest of those made ahead if one is ready (the
    /// lowest slot, as without them), else a new one.
    pub fn create(&self) -> Result<EnvNetwork, NetworkError> {
        let ready = {
            let mut work = self.shared.lock();
            (!work.ready.is_empty()).then(|| work.ready.remove(0))
        };
        self.shared.changed.notify_all();
        match ready {
            Some(network) => Ok(network),
            None => self.shared.make(),
        }
    }

    /// Waits until every network given back so far is removed.
    pub fn settle(&self) {
        let mut work = self.shared.lock();
        while !work.removals.is_empty() || work.removing {
            work = self
                .shared
                .changed
                .wait(work)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Removes the networks made ahead and waits for every removal: nothing of the service's
    /// networks is left afterwards (but those of environments still running).
    pub fn close(&self) {
        let ready = {
            let mut work = self.shared.lock();
            work.closed = true;
            std::mem::take(&mut work.ready)
        };
        self.shared.changed.notify_all();
        drop(ready);
        self.settle();
    }

    /// Removes every `lvm-<slot>` namespace, veth and nft table, and claim, whose owner is not
    /// running any more (or that has no claim). Returns how many slots were cleaned.
    pub fn sweep(&self) -> usize {
        self.shared.sweep()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Work> {
        self.work.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The networks' thread: removals first, then networks made ahead, until closed.
    fn work(self: Arc<Self>) {
        let mut work = self.lock();
        loop {
            if let Some((name, claim)) = work.removals.pop_front() {
                work.removing = true;
                drop(work);
                remove_objects(&name);
                let _ = std::fs::remove_file(&claim);
                work = self.lock();
                work.removing = false;
                self.changed.notify_all();
                continue;
            }
            if work.closed {
                work.started = false;
                return;
            }
            if work.ready.len() < work.target {
                drop(work);
                let made = self.make();
                work = self.lock();
                match made {
                    Ok(network) if !work.closed => work.ready.push(network),
                    Ok(network) => {
                        drop(work);
                        drop(network);
                        work = self.lock();
                    }
                    Err(e) => {
                        log::warn!(
                            "making an environment network ahead: {}",
                            logging::Chain(&e)
                        );
                        work = self
                            .changed
                            .wait_timeout(work, Duration::from_secs(1))
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                }
                continue;
            }
            work = self.changed.wait(work).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// A new environment network: claims a free slot, then makes the namespace, tap, veth pair
    /// and rules. On failure whatever was made is removed again.
    fn make(self: &Arc<Self>) -> Result<EnvNetwork, NetworkError> {
        let (slot, claim) = self.claim()?;
        let (host_address, env_address) = link(slot);
        let network = EnvNetwork {
            name: format!("{NAME_PREFIX}{slot}"),
            host_address,
            env_address,
            range: self.range,
            claim,
            remover: Arc::downgrade(self),
        };
        network.build()?;
        Ok(network)
    }

    /// Takes a used network for the thread to remove; `false` when the thread is not running
    /// (the caller removes it itself).
    fn remove_later(&self, name: &str, claim: &Path) -> bool {
        let mut work = self.lock();
        if !work.started {
            return false;
        }
        work.removals.push_back((name.to_owned(), claim.to_owned()));
        drop(work);
        self.changed.notify_all();
        true
    }

    /// Claims the lowest free slot: `<run dir>/<slot>`, created exclusively, holding the owner.
    fn claim(&self) -> Result<(u32, PathBuf), NetworkError> {
        let claim_error = |source| NetworkError::Claim {
            dir: self.run_dir.clone(),
            source,
        };
        // The claim appears whole, owner written, or not at all: it is written under a private
        // name and linked to the slot's (which fails if the slot is taken). A sweep never sees
        // an empty claim, which it would take for an abandoned one.
        static CLAIMS: AtomicU64 = AtomicU64::new(0);
        let n = CLAIMS.fetch_add(1, Ordering::Relaxed);
        let draft = self
            .run_dir
            .join(format!(".draft-{}-{n}", std::process::id()));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&draft)
            .and_then(|mut file| file.write_all(self.owner.to_string().as_bytes()))
            .map_err(claim_error)?;
        let mut claimed = Err(NetworkError::Exhausted(self.range));
        for slot in self.range.slots() {
            let path = self.run_dir.join(slot.to_string());
            match std::fs::hard_link(&draft, &path) {
                Ok(()) => {
                    claimed = Ok((slot, path));
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    claimed = Err(claim_error(e));
                    break;
                }
            }
        }
        let _ = std::fs::remove_file(&draft);
        claimed
    }

    /// Removes every `lvm-<slot>` namespace, veth and nft table, and claim, whose owner is not
    /// running any more (or that has no claim). Returns how many slots were cleaned.
    fn sweep(&self) -> usize {
        let mut slots = std::collections::BTreeSet::new();
        // The objects are listed before their claims are read: an object is made only after
        // its claim, so one whose claim is missing after the listing is truly left over.
        let objects = existing_objects();
        slots.extend(objects.iter().filter_map(|name| slot_of(name)));
        if let Ok(entries) = std::fs::read_dir(&self.run_dir) {
            let claims = entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok());
            for name in claims {
                if let Ok(slot) = name.parse::<u32>() {
                    slots.insert(slot);
                } else if draft_owner_gone(&name) {
                    let _ = std::fs::remove_file(self.run_dir.join(&name));
                }
            }
        }
        let mut swept = 0;
        for slot in slots {
            let claim = self.run_dir.join(slot.to_string());
            let owner = std::fs::read_to_string(&claim).ok();
            if owner
                .as_deref()
                .and_then(Owner::parse)
                .is_some_and(|o| o.is_running())
            {
                continue;
            }
            let name = format!("{NAME_PREFIX}{slot}");
            log::info!("removing the environment network {name}, left by a service that is gone");
            remove_objects(&name);
            let _ = std::fs::remove_file(&claim);
            swept += 1;
        }
        swept
    }
}

/// Why the host cannot run `program` (from the `package` package), for the service's log.
fn missing(program: &str, package: &str, error: NetworkError) -> NetworkError {
    match error {
        NetworkError::Spawn { source, .. } if source.kind() == io::ErrorKind::NotFound => {
            NetworkError::Unavailable(format!(
                "no `{program}` program on this host (install {package})"
            ))
        }
        other => NetworkError::Unavailable(format!(
            "cannot use `{program}` (root or CAP_NET_ADMIN is needed): {}",
            logging::Chain(&other)
        )),
    }
}

/// Whether `name` is a claim's draft (`.draft-<pid>-<n>`) whose writer has exited.
fn draft_owner_gone(name: &str) -> bool {
    let pid = name
        .strip_prefix(".draft-")
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok());
    pid.is_some_and(|pid| proc_info::Stat::read(pid).is_none())
}

/// One environment's network; removed when dropped.
#[derive(Debug)]
pub struct EnvNetwork {
    /// `lvm-<slot>`: the namespace, the host-side veth and the host nft table.
    name: String,
    host_address: Ipv4Addr,
    env_address: Ipv4Addr,
    range: Subnet,
    claim: PathBuf,
    /// Removes it in the background, while the service's networks live.
    remover: Weak<Shared>,
}

/// The VM's network device, on the environment's tap: the same in every environment.
pub fn guest_interface() -> vmm::config::NetworkInterface {
    vmm::config::NetworkInterface {
        iface_id: "eth0".into(),
        host_dev_name: TAP.into(),
        guest_mac: Some(vmm::devices::virtio::net::MacAddr(GUEST_MAC)),
    }
}

impl EnvNetwork {
    /// The namespace file the environment's `vmm` joins.
    pub fn netns(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's address on the environment's link: the one host address the guest reaches.
    pub fn host_address(&self) -> Ipv4Addr {
        self.host_address
    }

    /// The address the guest's traffic leaves the namespace with, unique to the environment.
    pub fn env_address(&self) -> Ipv4Addr {
        self.env_address
    }

    /// Makes the namespace, the veth pair, addresses, the tap and the route with netlink
    /// messages, from one thread that opens a netlink socket on the host, then makes the new
    /// namespace its own and opens another there; the nftables rules are one batch for the
    /// host and one for the namespace (`nft -f -`, once each).
    fn build(&self) -> Result<(), NetworkError> {
        run(
            Command::new("nft").args(["-f", "-"]),
            Some(&self.host_rules()),
        )?;
        let netns = self.netns();
        let rules = self.namespace_rules();
        on_own_thread(|| {
            let runtime = netlink_runtime()?;
            runtime.block_on(async {
                // Opened before the thread leaves the host's namespace: it stays there.
                let host = netlink_connection()?;
                let namespace = enter_new_namespace(&netns)?;
                let inside = netlink_connection()?;
                make_tap()?;
                self.link_host_side(&host, &namespace).await?;
                self.configure_inside(&inside).await
            })?;
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|source| {
                NetworkError::Enter {
                    path: "/proc/sys/net/ipv4/ip_forward".into(),
                    source,
                }
            })?;
            run(Command::new("nft").args(["-f", "-"]), Some(&rules))
        })
    }

    /// The veth pair, its inner end moved into the namespace as it is made; the host's address
    /// on the outer end, which goes up.
    async fn link_host_side(
        &self,
        host: &rtnetlink::Handle,
        namespace: &File,
    ) -> Result<(), NetworkError> {
        use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
        use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth};
        let peer = LinkUnspec::new_with_name(INNER_VETH)
            .setns_by_fd(std::os::fd::AsRawFd::as_raw_fd(namespace))
            .build();
        let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(self.name.clone())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        let what = |step: &str| format!("{step} {}", self.name);
        host.link()
            .add(veth)
            .execute()
            .await
            .map_err(|e| netlink_error(&what("making the veth pair"), e))?;
        let index = link_index(host, &self.name).await?;
        host.address()
            .add(index, self.host_address.into(), LINK_PREFIX_LEN)
            .execute()
            .await
            .map_err(|e| netlink_error(&what("addressing"), e))?;
        host.link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| netlink_error(&what("bringing up"), e))
    }

    /// In the namespace: loopback up; the environment's address on the inner veth; the tap
    /// with the gateway's MAC and address; the default route through the host's side.
    async fn configure_inside(&self, inside: &rtnetlink::Handle) -> Result<(), NetworkError> {
        use rtnetlink::{LinkUnspec, RouteMessageBuilder};
        let gateway_mac = parse_mac(GATEWAY_MAC)?;
        let lo = link_index(inside, "lo").await?;
        let veth = link_index(inside, INNER_VETH).await?;
        let tap = link_index(inside, TAP).await?;
        let fail = |step: &'static str| move |e| netlink_error(step, e);
        let links = inside.link();
        links
            .set(LinkUnspec::new_with_index(lo).up().build())
            .execute()
            .await
            .map_err(fail("bringing up lo"))?;
        let addresses = inside.address();
        addresses
            .add(veth, self.env_address.into(), LINK_PREFIX_LEN)
            .execute()
            .await
            .map_err(fail("addressing the inner veth"))?;
        links
            .set(LinkUnspec::new_with_index(veth).up().build())
            .execute()
            .await
            .map_err(fail("bringing up the inner veth"))?;
        links
            .set(LinkUnspec::new_with_index(tap).address(gateway_mac).build())
            .execute()
            .await
            .map_err(fail("setting the tap's MAC"))?;
        addresses
            .add(tap, GATEWAY_ADDRESS.into(), LINK_PREFIX_LEN)
            .execute()
            .await
            .map_err(fail("addressing the tap"))?;
        links
            .set(LinkUnspec::new_with_index(tap).up().build())
            .execute()
            .await
            .map_err(fail("bringing up the tap"))?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(self.host_address)
            .build();
        inside
            .route()
            .add(route)
            .execute()
            .await
            .map_err(fail("adding the default route"))
    }

    /// Inside the namespace: the guest's address becomes the environment's on the way out;
    /// only the guest's own connections are forwarded, and nothing from outside starts one
    /// with it.
    fn namespace_rules(&self) -> String {
        format!(
            "table ip lambda-vm {{\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\toifname \"{INNER_VETH}\" ip saddr {GUEST_ADDRESS} snat to {env}\n\
             \t}}\n\
             \tchain forward {{\n\
             \t\ttype filter hook forward priority filter; policy drop;\n\
             \t\tiifname \"{TAP}\" oifname \"{INNER_VETH}\" ip saddr {GUEST_ADDRESS} accept\n\
             \t\tiifname \"{INNER_VETH}\" oifname \"{TAP}\" ct state established,related accept\n\
             \t}}\n\
             }}\n",
            env = self.env_address
        )
    }

    /// On the host, in a table of the environment's own: it reaches its own link's host
    /// address and whatever lies beyond the host (masqueraded), nothing else: no other
    /// environment, no other address of the host. Refused, not dropped, so it fails fast; the
    /// refusal runs before any environment's `forward` chain (whose order between tables is
    /// not defined), or the other environment's drop of unsolicited traffic would win.
    fn host_rules(&self) -> String {
        format!(
            "table ip {name} {{\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\tiifname \"{name}\" ip daddr != {host} meta l4proto tcp reject with tcp reset\n\
             \t\tiifname \"{name}\" ip daddr != {host} reject with icmp type admin-prohibited\n\
             \t}}\n\
             \tchain isolate {{\n\
             \t\ttype filter hook forward priority filter - 10; policy accept;\n\
             \t\tiifname \"{name}\" ip daddr {range} meta l4proto tcp reject with tcp reset\n\
             \t\tiifname \"{name}\" ip daddr {range} reject with icmp type admin-prohibited\n\
             \t}}\n\
             \tchain forward {{\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\toifname \"{name}\" ct state established,related accept\n\
             \t\toifname \"{name}\" drop\n\
             \t}}\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tiifname \"{name}\" oifname != \"{name}\" masquerade\n\
             \t}}\n\
             }}\n",
            name = self.name,
            host = self.host_address,
            range = self.range,
        )
    }
}

impl Drop for EnvNetwork {
    fn drop(&mut self) {
        let later = self
            .remover
            .upgrade()
            .is_some_and(|shared| shared.remove_later(&self.name, &self.claim));
        if !later {
            remove_objects(&self.name);
            let _ = std::fs::remove_file(&self.claim);
        }
    }
}

/// Removes what is named `name`, each part whatever became of the others: the host-side veth
/// (its peer goes with it; a netlink message), the host table (`nft`), and the namespace (its
/// tap goes with it once the last process in it, the `vmm`, is gone).
fn remove_objects(name: &str) {
    // A caller may be inside the service's runtime (the sweep at start), where a runtime of
    // our own cannot block.
    let deleted = on_own_thread(|| {
        netlink_runtime()?.block_on(async {
            let host = netlink_connection()?;
            let link = rtnetlink::LinkUnspec::new_with_name(name).build();
            host.link()
                .del_with_message(link)
                .execute()
                .await
                .map_err(|e| netlink_error("removing the veth pair", e))
        })
    });
    if let Err(e) = deleted {
        log::debug!("{name}: {}", logging::Chain(&e));
    }
    let _ = run(
        Command::new("nft").args(["delete", "table", "ip", name]),
        None,
    );
    remove_namespace(&Path::new(NETNS_DIR).join(name));
}

/// A current-thread runtime for one batch of netlink requests.
fn netlink_runtime() -> Result<tokio::runtime::Runtime, NetworkError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|source| NetworkError::Netlink {
            what: "starting a runtime for netlink".into(),
            source: Box::new(source),
        })
}

/// A route netlink connection in this thread's network namespace, driven by the current
/// runtime.
fn netlink_connection() -> Result<rtnetlink::Handle, NetworkError> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|source| NetworkError::Netlink {
            what: "opening a netlink socket".into(),
            source: Box::new(source),
        })?;
    tokio::spawn(connection);
    Ok(handle)
}

fn netlink_error(what: &str, error: rtnetlink::Error) -> NetworkError {
    NetworkError::Netlink {
        what: what.to_owned(),
        source: Box::new(error),
    }
}

/// The index of the link `name` in the namespace of `handle`.
async fn link_index(handle: &rtnetlink::Handle, name: &str) -> Result<u32, NetworkError> {
    use futures_util::TryStreamExt;
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(link.header.index),
        Ok(None) => Err(NetworkError::Unavailable(format!("no link {name}"))),
        Err(e) => Err(netlink_error(&format!("looking up {name}"), e)),
    }
}

fn parse_mac(text: &str) -> Result<Vec<u8>, NetworkError> {
    text.split(':')
        .map(|byte| u8::from_str_radix(byte, 16))
        .collect::<Result<Vec<u8>, _>>()
        .ok()
        .filter(|mac| mac.len() == 6)
        .ok_or_else(|| NetworkError::Unavailable(format!("{text:?} is not a MAC address")))
}

/// Makes `/run/netns` a mount point shared with other mount namespaces, as `ip netns` does, so
/// that the namespaces bound there are seen by tools in any of them (once per process).
fn share_netns_dir() -> Result<(), NetworkError> {
    static SHARED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let shared = SHARED.get_or_init(|| {
        let dir = Path::new(NETNS_DIR);
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {NETNS_DIR}: {e}"))?;
        let share = || {
            mount(
                None::<&str>,
                dir,
                None::<&str>,
                MsFlags::MS_SHARED | MsFlags::MS_REC,
                None::<&str>,
            )
        };
        if share() == Err(nix::errno::Errno::EINVAL) {
            // Not a mount point yet: bind it onto itself first.
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| format!("binding {NETNS_DIR} onto itself: {e}"))?;
            share().map_err(|e| format!("sharing {NETNS_DIR}: {e}"))?;
        }
        Ok(())
    });
    shared.clone().map_err(NetworkError::Unavailable)
}

/// Moves this thread into a new network namespace and binds it at `path` (as `ip netns add`
/// does), so that it outlives the thread; returns the namespace, opened.
fn enter_new_namespace(path: &Path) -> Result<File, NetworkError> {
    share_netns_dir()?;
    let enter_error = |source: io::Error| NetworkError::Enter {
        path: path.to_owned(),
        source,
    };
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(path)
        .map_err(enter_error)?;
    let bound = unshare(CloneFlags::CLONE_NEWNET).and_then(|()| {
        mount(
            Some("/proc/thread-self/ns/net"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    });
    if let Err(errno) = bound {
        let _ = std::fs::remove_file(path);
        return Err(enter_error(errno.into()));
    }
    File::open(path).map_err(enter_error)
}

/// Unbinds and removes the namespace file at `path`; the namespace itself goes once no process
/// is left in it.
fn remove_namespace(path: &Path) {
    let _ = umount2(path, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(path);
}

/// Makes the persistent tap [`TAP`] in this thread's namespace (`ip tuntap add`), with
/// virtio-net headers, for the VM to attach to later.
fn make_tap() -> Result<(), NetworkError> {
    let tap = vmm::devices::virtio::net::tap::Tap::open(
        TAP,
        vmm::devices::virtio::net::frame::VNET_HDR_LEN,
    )
    .map_err(|e| NetworkError::Unavailable(logging::Chain(&e).to_string()))?;
    tap.persist()
        .map_err(|e| NetworkError::Unavailable(format!("making {TAP} persistent: {e}")))
}

/// The names of the service's namespaces, links and host tables that exist now.
fn existing_objects() -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(entries) = std::fs::read_dir(NETNS_DIR) {
        names.extend(
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok()),
        );
    }
    if let Ok(entries) = std::fs::read_dir("/sys/class/net") {
        names.extend(
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok()),
        );
    }
    if let Ok(tables) = output(Command::new("nft").args(["list", "tables", "ip"])) {
        // One line each: `table ip NAME`.
        names.extend(
            tables
                .lines()
                .filter_map(|l| l.split_whitespace().nth(2).map(str::to_owned)),
        );
    }
    names.retain(|name| slot_of(name).is_some());
    names
}

/// The slot of an object named `lvm-<slot>`.
fn slot_of(name: &str) -> Option<u32> {
    let digits = name.strip_prefix(NAME_PREFIX)?;
    // Only the canonical spelling: `lvm-01` is not ours to remove.
    digits
        .parse::<u32>()
        .ok()
        .filter(|slot| slot.to_string() == digits)
}

/// Who claims a slot: the service's [`Identity`] (so a reused pid is not mistaken for the
/// owner), written `<pid> <start ticks>` and a newline in the claim file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner(Identity);

impl Owner {
    fn of_this_process() -> Result<Owner, NetworkError> {
        Identity::of_this_process()
            .map(Owner)
            .map_err(|e| NetworkError::Unavailable(format!("cannot read /proc/self/stat: {e}")))
    }

    fn parse(claim: &str) -> Option<Owner> {
        let (pid, start) = claim.trim().split_once(' ')?;
        Some(Owner(Identity {
            pid: pid.parse().ok()?,
            start_ticks: start.parse().ok()?,
        }))
    }

    fn is_running(&self) -> bool {
        self.0.is_running()
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} {}", self.0.pid, self.0.start_ticks)
    }
}

/// Turns on IPv4 forwarding on the host, which the environments' outbound traffic needs.
fn enable_forwarding() -> Result<(), NetworkError> {
    let path = "/proc/sys/net/ipv4/ip_forward";
    let on = std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1");
    if !on {
        std::fs::write(path, "1").map_err(|e| {
            NetworkError::Unavailable(format!("cannot turn on IPv4 forwarding ({path}): {e}"))
        })?;
        log::info!("turned on IPv4 forwarding ({path}) for the environments' networks");
    }
    Ok(())
}

/// Gives the tap of the namespace at `netns` to `uid`/`gid`, so a jailed `vmm` running as that
/// user can attach to it.
pub fn give_tap(netns: &Path, uid: u32, gid: u32) -> Result<(), NetworkError> {
    in_namespace(netns, || {
        let tap = vmm::devices::virtio::net::tap::Tap::open(
            TAP,
            vmm::devices::virtio::net::frame::VNET_HDR_LEN,
        )
        .map_err(|e| NetworkError::Unavailable(logging::Chain(&e).to_string()))?;
        tap.give_to(uid, gid).map_err(|source| NetworkError::Enter {
            path: netns.to_owned(),
            source,
        })
    })
}

/// Runs `work` on a thread of its own that has joined the network namespace at `netns`, so
/// that what it opens and the programs it starts act in that namespace. The rest of the
/// service stays where it is.
fn in_namespace<T: Send>(
    netns: &Path,
    work: impl FnOnce() -> Result<T, NetworkError> + Send,
) -> Result<T, NetworkError> {
    let enter_error = |source| NetworkError::Enter {
        path: netns.to_owned(),
        source,
    };
    let file = File::open(netns).map_err(enter_error)?;
    on_own_thread(|| {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|errno| enter_error(errno.into()))?;
        work()
    })
}

/// Runs `work` on a thread of its own and waits for it: a thread may change its network
/// namespace and run a runtime of its own, whatever its caller's thread is in.
fn on_own_thread<T: Send>(
    work: impl FnOnce() -> Result<T, NetworkError> + Send,
) -> Result<T, NetworkError> {
    std::thread::scope(|scope| {
        scope.spawn(work).join().unwrap_or_else(|_| {
            Err(NetworkError::Unavailable(
                "a network thread panicked".into(),
            ))
        })
    })
}

/// Runs a command to completion, `input` on its stdin; its stderr is the error.
fn run(command: &mut Command, input: Option<&str>) -> Result<(), NetworkError> {
    finish(command, input).map(|_| ())
}

/// Runs a command to completion and returns its stdout.
fn output(command: &mut Command) -> Result<String, NetworkError> {
    finish(command, None)
}

fn finish(command: &mut Command, input: Option<&str>) -> Result<String, NetworkError> {
    let what = format!("{command:?}").replace('"', "");
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetworkError::Spawn { program, source })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // A write error shows up as the program's own failure below.
        let _ = stdin.write_all(input.as_bytes());
    }
    let done = child
        .wait_with_output()
        .map_err(|source| NetworkError::Spawn {
            program: what.clone(),
            source,
        })?;
    if !done.status.success() {
        return Err(NetworkError::Command {
            what,
            status: done.status.to_string(),
            stderr: String::from_utf8_lossy(&done.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&done.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use integration_tests::ok_or_skip;

    #[test]
    fn ranges_parse_and_cut_into_links() {
        let range: Subnet = "100.64.0.0/16".parse().unwrap();
        let slots = range.slots();
        assert_eq!(slots.len(), 16384);
        let first = (Ipv4Addr::new(100, 64, 0, 1), Ipv4Addr::new(100, 64, 0, 2));
        assert_eq!(link(slots.start), first);
        let last = (
            Ipv4Addr::new(100, 64, 255, 253),
            Ipv4Addr::new(100, 64, 255, 254),
        );
        assert_eq!(link(slots.end - 1), last);
        // The longest name fits an interface name (15 bytes).
        assert!(format!("{NAME_PREFIX}{}", u32::MAX >> 2).len() <= 15);
        assert_eq!(range.to_string(), "100.64.0.0/16");
        let one: Subnet = "10.200.0.4/30".parse().unwrap();
        assert_eq!(one.slots().len(), 1);
        assert_eq!(link(one.slots().start).0, Ipv4Addr::new(10, 200, 0, 5));
        for bad in [
            "100.64.0.0",
            "100.64.0.1/16",
            "100.64.0.0/31",
            "100.64.0.0/7",
            "x/16",
        ] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn only_canonical_names_are_ours() {
        assert_eq!(slot_of("lvm-0"), Some(0u32));
        assert_eq!(slot_of("lvm-123"), Some(123));
        for other in ["lvm-", "lvm-01", "lvm-+1", "lvm-1a", "eth0", "xlvm-1"] {
            assert_eq!(slot_of(other), None, "{other}");
        }
    }

    #[test]
    fn owners_are_recognised_by_pid_and_start_time() {
        let me = Owner::of_this_process().unwrap();
        assert!(me.is_running());
        assert_eq!(Owner::parse(&me.to_string()), Some(me));
        let restarted = Owner(Identity {
            start_ticks: me.0.start_ticks + 1,
            ..me.0
        });
        assert!(!restarted.is_running());
        assert_eq!(Owner::parse("garbage"), None);
    }

    /// The real thing, on this host: needs root and nftables (the test skips without them,
    /// and fails under CI).
    fn networks() -> Result<Networks, String> {
        Networks::open(DEFAULT_RANGE.parse().unwrap())
            .map_err(|e| format!("no environment networks here: {e}"))
    }

    fn exists(name: &str) -> [bool; 3] {
        let tables = output(Command::new("nft").args(["list", "tables", "ip"])).unwrap();
        [
            Path::new(NETNS_DIR).join(name).exists(),
            Path::new("/sys/class/net").join(name).exists(),
            tables
                .lines()
                .any(|l| l.split_whitespace().nth(2) == Some(name)),
        ]
    }

    /// Connects from inside `network`'s namespace (as its environment's address) to `to`.
    fn connect_from(network: &EnvNetwork, to: std::net::SocketAddr) -> io::Result<()> {
        let timeout = std::time::Duration::from_secs(5);
        in_namespace(&network.netns(), || {
            Ok(std::net::TcpStream::connect_timeout(&to, timeout).map(drop))
        })
        .unwrap()
    }

    #[test]
    fn environments_get_isolated_networks_that_go_when_dropped_or_swept() {
        let networks = ok_or_skip!(networks());
        let started = std::time::Instant::now();
        let a = networks.create().unwrap();
        let made = started.elapsed();
        let b = networks.create().unwrap();
        assert_ne!(a.name(), b.name());
        assert_ne!(a.host_address(), b.host_address());
        for network in [&a, &b] {
            assert_eq!(exists(network.name()), [true; 3], "{}", network.name());
        }
        // The tap the VM opens is in the namespace, named the same in each.
        let tap = in_namespace(&a.netns(), || {
            output(Command::new("ip").args(["link", "show", TAP]))
        });
        let tap = tap.unwrap();
        assert!(tap.contains(TAP) && tap.contains(GATEWAY_MAC), "{tap}");

        // Each environment reaches a server on its own host address, and is refused at once
        // (not left to time out) by the other's and by the other environment itself.
        let server_a = std::net::TcpListener::bind((a.host_address(), 0)).unwrap();
        let server_b = std::net::TcpListener::bind((b.host_address(), 0)).unwrap();
        let (to_a, to_b) = (
            server_a.local_addr().unwrap(),
            server_b.local_addr().unwrap(),
        );
        connect_from(&a, to_a).unwrap();
        connect_from(&b, to_b).unwrap();
        for (from, to) in [(&a, to_b), (&b, to_a)] {
            let refused = connect_from(from, to).unwrap_err();
            assert_eq!(
                refused.kind(),
                io::ErrorKind::ConnectionRefused,
                "{refused}"
            );
        }
        let other_env = std::net::SocketAddr::from((b.env_address(), 80));
        let refused = connect_from(&a, other_env).unwrap_err();
        assert_eq!(
            refused.kind(),
            io::ErrorKind::ConnectionRefused,
            "{refused}"
        );

        let (a_name, b_name) = (a.name().to_owned(), b.name().to_owned());
        let started = std::time::Instant::now();
        drop(a);
        // For BENCHMARKS.md, not a limit.
        println!(
            "network: made in {made:?}, removed in {:?}",
            started.elapsed()
        );
        assert_eq!(exists(&a_name), [false; 3]);
        assert!(!Path::new(RUN_DIR)
            .join(slot_of(&a_name).unwrap().to_string())
            .exists());

        // A service that died leaves its networks; the next one's sweep removes them.
        let claim = b.claim.clone();
        std::mem::forget(b);
        assert_eq!(exists(&b_name), [true; 3]);
        // (Counts are not checked: another service on this host may die meanwhile.)
        networks.sweep();
        assert_eq!(
            exists(&b_name),
            [true; 3],
            "a running owner's network was swept"
        );
        let gone = Owner(Identity {
            pid: std::process::id(),
            start_ticks: 0,
        });
        std::fs::write(&claim, gone.to_string()).unwrap();
        assert!(networks.sweep() >= 1);
        assert_eq!(exists(&b_name), [false; 3]);
        assert!(!claim.exists());
    }
}
