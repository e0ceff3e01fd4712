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
//! The plumbing is done with the `ip` (iproute2) and `nft` (nftables) programs. Every object
//! is named `lvm-<slot>` (namespace, host-side veth, host nft table), where the slot is the
//! environment's /30: its network address over 4, so services with different ranges never
//! pick the same names, and ones with overlapping ranges never the same link. A slot is claimed by creating `<run dir>/<slot>`, exclusively,
//! before anything is made, which also makes slots unique between services on one host; the
//! claim names its owner (pid and start time). An [`EnvNetwork`] removes everything when it
//! is dropped; [`Networks::sweep`] removes what a service that died left behind.

use proc_info::Identity;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// The service's environment networks: the range, and who claims slots.
#[derive(Debug)]
pub struct Networks {
    range: Subnet,
    run_dir: PathBuf,
    owner: Owner,
}

impl Networks {
    /// Checks that this host can give environments networks (the `ip` and `nft` programs, and
    /// the right to change the network: CAP_NET_ADMIN), turns on IPv4 forwarding, and sweeps
    /// what services that are gone left behind. The error says what is missing.
    pub fn open(range: Subnet) -> Result<Networks, NetworkError> {
        let run_dir = PathBuf::from(RUN_DIR);
        run(Command::new("ip").arg("-V"), None).map_err(|e| missing("ip", "iproute2", e))?;
        // Listing tables needs CAP_NET_ADMIN: the cheapest check of the right itself.
        run(Command::new("nft").args(["list", "tables"]), None)
            .map_err(|e| missing("nft", "nftables", e))?;
        std::fs::create_dir_all(&run_dir).map_err(|source| NetworkError::Claim {
            dir: run_dir.clone(),
            source,
        })?;
        enable_forwarding()?;
        let networks = Networks {
            range,
            run_dir,
            owner: Owner::of_this_process()?,
        };
        let swept = networks.sweep();
        if swept > 0 {
            log::info!("removed {swept} environment networks left by services that are gone");
        }
        Ok(networks)
    }

    pub fn range(&self) -> Subnet {
        self.range
    }

    /// A new environment network: claims a free slot, then makes the namespace, tap, veth pair
    /// and rules. On failure whatever was made is removed again.
    pub fn create(&self) -> Result<EnvNetwork, NetworkError> {
        let (slot, claim) = self.claim()?;
        let (host_address, env_address) = link(slot);
        let network = EnvNetwork {
            name: format!("{NAME_PREFIX}{slot}"),
            host_address,
            env_address,
            range: self.range,
            claim,
        };
        network.build()?;
        Ok(network)
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
    pub fn sweep(&self) -> usize {
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

    fn build(&self) -> Result<(), NetworkError> {
        let name = &self.name;
        let host = format!("{}/{LINK_PREFIX_LEN}", self.host_address);
        let env = format!("{}/{LINK_PREFIX_LEN}", self.env_address);
        run(Command::new("ip").args(["netns", "add", name]), None)?;
        let host_side = format!(
            "link add {name} type veth peer name {INNER_VETH} netns {name}\n\
             addr add {host} dev {name}\n\
             link set {name} up\n"
        );
        run(Command::new("ip").args(["-batch", "-"]), Some(&host_side))?;
        run(
            Command::new("nft").args(["-f", "-"]),
            Some(&self.host_rules()),
        )?;
        let gateway = format!("{GATEWAY_ADDRESS}/{LINK_PREFIX_LEN}");
        let inside = format!(
            "link set lo up\n\
             addr add {env} dev {INNER_VETH}\n\
             link set {INNER_VETH} up\n\
             tuntap add dev {TAP} mode tap\n\
             link set {TAP} address {GATEWAY_MAC}\n\
             addr add {gateway} dev {TAP}\n\
             link set {TAP} up\n\
             route add default via {}\n",
            self.host_address
        );
        let rules = self.namespace_rules();
        in_namespace(&self.netns(), || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|source| {
                NetworkError::Enter {
                    path: "/proc/sys/net/ipv4/ip_forward".into(),
                    source,
                }
            })?;
            run(Command::new("ip").args(["-batch", "-"]), Some(&inside))?;
            run(Command::new("nft").args(["-f", "-"]), Some(&rules))
        })
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
        remove_objects(&self.name);
        let _ = std::fs::remove_file(&self.claim);
    }
}

/// Removes what is named `name`, each part whatever became of the others: the host-side veth
/// (its peer goes with it), the host table, and the namespace (its tap goes with it once the
/// last process in it, the `vmm`, is gone).
fn remove_objects(name: &str) {
    let _ = run(Command::new("ip").args(["link", "del", name]), None);
    let _ = run(
        Command::new("nft").args(["delete", "table", "ip", name]),
        None,
    );
    let _ = run(Command::new("ip").args(["netns", "del", name]), None);
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
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|errno| enter_error(errno.into()))?;
            work()
        });
        thread.join().unwrap_or_else(|_| {
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
        assert_eq!(slot_of("lvm-0"), Some(0));
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
