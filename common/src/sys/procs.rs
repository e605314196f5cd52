//! Processes and ports, read from /proc: who listens on a port, whether a pid
//! is still the process we started, signals, and bounded waits for an event.
//!
//! The host may have no lsof, ss or curl (the book's scripts need lsof), so
//! the listener is found the way `ss` finds it: the kernel lists its LISTEN
//! sockets over NETLINK_SOCK_DIAG (or, where netlink is not allowed, they are
//! read from /proc/net/tcp{,6}), then the process whose fd table holds that
//! socket inode is looked up in /proc.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr};

/// What listens on one port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listening {
    /// Socket inodes in LISTEN state bound to the port (any address).
    pub inodes: Vec<u64>,
    /// Processes holding one of those sockets that this user can see.
    pub pids: Vec<i32>,
}

impl Listening {
    pub fn is_free(&self) -> bool {
        self.inodes.is_empty()
    }

    /// Who holds the port, for a message: "pid 12 (java -jar ...), ...".
    pub fn holders(&self) -> String {
        if self.pids.is_empty() {
            return "a process this user cannot see".to_string();
        }
        self.pids
            .iter()
            .map(|&p| format!("pid {p} ({})", cmdline(p)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Who listens on `port`, over IPv4 and IPv6.
pub fn listening(port: u16) -> io::Result<Listening> {
    let mut inodes = match sock_diag::listen_inodes(port) {
        Ok(inodes) => inodes,
        Err(_) => listen_inodes_from_proc(port)?,
    };
    inodes.sort_unstable();
    inodes.dedup();
    let pids = if inodes.is_empty() {
        Vec::new()
    } else {
        pids_holding(&inodes.iter().copied().collect())
    };
    Ok(Listening { inodes, pids })
}

/// How many established TCP connections to local `port` belong to `pids`
/// (their fd tables hold the sockets): an app's own clients in flight,
/// whatever else uses the port. With no pid given (none can be seen) every
/// established connection on the port counts.
pub fn established_by(port: u16, pids: &[i32]) -> io::Result<usize> {
    let inodes = match sock_diag::established_inodes(port) {
        Ok(inodes) => inodes,
        Err(_) => {
            let mut inodes = Vec::new();
            for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
                match fs::read_to_string(table) {
                    Ok(text) => inodes.extend(inodes_in_state(&text, port, "01")),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io::Error::new(e.kind(), format!("{table}: {e}"))),
                }
            }
            inodes
        }
    };
    if pids.is_empty() {
        return Ok(inodes.len());
    }
    let held = socket_inodes_of(pids);
    Ok(inodes.iter().filter(|i| held.contains(i)).count())
}

/// The socket inodes in the fd tables of `pids`.
fn socket_inodes_of(pids: &[i32]) -> HashSet<u64> {
    let mut held = HashSet::new();
    for pid in pids {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        held.extend(fds.flatten().filter_map(|fd| {
            fs::read_link(fd.path())
                .ok()
                .and_then(|target| socket_inode(&target.to_string_lossy()))
        }));
    }
    held
}

fn inodes_in_state(table: &str, port: u16, state: &str) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|l| l.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            (local_port == Some(port) && fields.get(3) == Some(&state))
                .then(|| fields.get(9)?.parse::<u64>().ok())
                .flatten()
        })
        .collect()
}

/// The LISTEN sockets on `port` from /proc/net/tcp{,6}. Slow on a busy
/// server: the tables list every socket, TIME_WAIT included (tens of
/// thousands of lines under load, 50-150 ms for the kernel to print), so this
/// is only the fallback for where netlink is not allowed.
fn listen_inodes_from_proc(port: u16) -> io::Result<Vec<u64>> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match fs::read_to_string(table) {
            Ok(text) => inodes.extend(listen_inodes(&text, port)),
            // A kernel without IPv6 has no tcp6 table.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("{table}: {e}"))),
        }
    }
    Ok(inodes)
}

/// Parses a /proc/net/tcp table: the inodes of LISTEN (state 0A) sockets on `port`.
fn listen_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let state = fields.get(3)?;
            let inode = fields.get(9)?.parse::<u64>().ok()?;
            let (_, hex_port) = local.rsplit_once(':')?;
            let local_port = u16::from_str_radix(hex_port, 16).ok()?;
            (*state == "0A" && local_port == port && inode != 0).then_some(inode)
        })
        .collect()
}

/// The kernel's socket diagnostics (what `ss` uses): a dump of TCP sockets
/// in LISTEN state only, filtered by the kernel, so its cost does not grow
/// with the connections a loaded server has open.
mod sock_diag {
    use std::io;
    use std::net::{IpAddr, SocketAddr};
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{
        recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
        SockType,
    };

    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const NLM_F_REQUEST: u16 = 0x1;
    const NLM_F_DUMP: u16 = 0x300;
    const IPPROTO_TCP: u8 = 6;
    const TCP_ESTABLISHED: u8 = 1;
    const TCP_LISTEN: u8 = 10;
    const AF_INET: u8 = 2;
    const AF_INET6: u8 = 10;
    const HEADER: usize = 16;
    /// struct inet_diag_msg: family, state, timer, retrans, a 48-byte
    /// socket id (source port first, big-endian), expires, rqueue, wqueue,
    /// uid, inode.
    const MSG_LEN: usize = 72;
    const INODE_AT: usize = 68;

    /// A request for every TCP socket of `family` in one of `states` (a bit
    /// mask of TCP states): struct nlmsghdr, then struct inet_diag_req_v2
    /// with a zero socket id.
    fn request(family: u8, states: u32, seq: u32) -> Vec<u8> {
        let len = HEADER + 56;
        let mut req = Vec::with_capacity(len);
        req.extend_from_slice(&(len as u32).to_ne_bytes());
        req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req.extend_from_slice(&seq.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        req.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
        req.extend_from_slice(&states.to_ne_bytes());
        req.resize(len, 0);
        req
    }

    fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
    }

    fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
        Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
    }

    fn malformed() -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, "malformed sock_diag answer")
    }

    pub(super) fn listen_inodes(port: u16) -> io::Result<Vec<u64>> {
        Ok(dump(TCP_LISTEN, port)?
            .into_iter()
            .filter(|&i| i != 0)
            .collect())
    }

    /// How many connections to local `port` are established.
    #[cfg(test)]
    pub(super) fn established(port: u16) -> io::Result<usize> {
        Ok(dump(TCP_ESTABLISHED, port)?.len())
    }

    /// The inodes of the established connections to local `port`.
    pub(super) fn established_inodes(port: u16) -> io::Result<Vec<u64>> {
        dump(TCP_ESTABLISHED, port)
    }

    /// The inodes of TCP sockets in `state` whose local port is `port`.
    fn dump(state: u8, port: u16) -> io::Result<Vec<u64>> {
        Ok(dump_sockets(1 << state, port)?
            .into_iter()
            .filter(|s| s.state == state)
            .map(|s| s.inode)
            .collect())
    }

    /// Every TCP socket whose local port is `port`, in any state.
    pub(super) fn all(port: u16) -> io::Result<Vec<super::TcpSocket>> {
        dump_sockets(!0, port)
    }

    /// An address of `family` from the 16 bytes of a socket id.
    fn address(family: u8, raw: &[u8]) -> Option<IpAddr> {
        match family {
            AF_INET => Some(IpAddr::from(<[u8; 4]>::try_from(raw.get(..4)?).ok()?)),
            _ => Some(IpAddr::from(<[u8; 16]>::try_from(raw.get(..16)?).ok()?)),
        }
    }

    /// The TCP sockets in one of `states` (a bit mask) whose local port is `port`.
    fn dump_sockets(states: u32, port: u16) -> io::Result<Vec<super::TcpSocket>> {
        let sock = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )?;
        let fd = sock.as_raw_fd();
        let mut found = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        for (seq, family) in [(1, AF_INET), (2, AF_INET6)] {
            sendto(
                fd,
                &request(family, states, seq),
                &NetlinkAddr::new(0, 0),
                MsgFlags::empty(),
            )?;
            'dump: loop {
                let n = recv(fd, &mut buf, MsgFlags::empty())?;
                let mut off = 0;
                while off + HEADER <= n {
                    let len = u32_at(&buf, off).ok_or_else(malformed)? as usize;
                    let kind = u16_at(&buf, off + 4).ok_or_else(malformed)?;
                    if len < HEADER || off + len > n {
                        return Err(malformed());
                    }
                    let body = &buf[off + HEADER..off + len];
                    match kind {
                        NLMSG_DONE => break 'dump,
                        NLMSG_ERROR => {
                            let errno = u32_at(body, 0).ok_or_else(malformed)? as i32;
                            // A kernel without IPv6 says so for AF_INET6 only.
                            if errno == 0 || family == AF_INET6 {
                                break 'dump;
                            }
                            return Err(io::Error::from_raw_os_error(-errno));
                        }
                        SOCK_DIAG_BY_FAMILY if body.len() >= MSG_LEN => {
                            let sport = u16::from_be_bytes([body[4], body[5]]);
                            let dport = u16::from_be_bytes([body[6], body[7]]);
                            let local = address(body[0], &body[8..24]);
                            let remote = address(body[0], &body[24..40]);
                            if let (true, Some(local), Some(remote)) =
                                (sport == port, local, remote)
                            {
                                found.push(super::TcpSocket {
                                    local: SocketAddr::new(local, sport),
                                    remote: SocketAddr::new(remote, dport),
                                    state: body[1],
                                    inode: u64::from(u32_at(body, INODE_AT).unwrap_or(0)),
                                });
                            }
                        }
                        _ => {}
                    }
                    // Messages are 4-byte aligned.
                    off += (len + 3) & !3;
                }
                if n == 0 {
                    break;
                }
            }
        }
        Ok(found)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn finds_a_listener_like_proc_does() {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let from_netlink = listen_inodes(port).unwrap();
            let from_proc = super::super::listen_inodes_from_proc(port).unwrap();
            assert_eq!(from_netlink.len(), 1, "{from_netlink:?}");
            assert_eq!(from_netlink, from_proc);
            drop(listener);
            assert_eq!(listen_inodes(port).unwrap(), Vec::<u64>::new());
            // IPv6 too, where the machine has it.
            if let Ok(v6) = std::net::TcpListener::bind("[::1]:0") {
                let port = v6.local_addr().unwrap().port();
                assert_eq!(listen_inodes(port).unwrap().len(), 1);
            }
        }

        #[test]
        fn an_established_connection_is_not_a_listener() {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (server, _) = listener.accept().unwrap();
            drop(listener);
            assert_eq!(listen_inodes(port).unwrap(), Vec::<u64>::new());
            assert_eq!(established(port).unwrap(), 1);
            drop(server);
            assert_eq!(established(port).unwrap(), 0);
        }
    }
}

fn pids_holding(inodes: &HashSet<u64>) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        // Another user's process is unreadable; that is expected, not an error.
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            fs::read_link(fd.path())
                .ok()
                .and_then(|target| socket_inode(&target.to_string_lossy()))
                .is_some_and(|inode| inodes.contains(&inode))
        });
        if holds {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// One TCP socket bound to a local port: a listener, or a connection that
/// uses the port as its source port (which keeps an app from binding it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TcpSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The kernel's TCP state number (1 ESTABLISHED ... 10 LISTEN).
    pub state: u8,
    pub inode: u64,
}

impl TcpSocket {
    /// The state as `ss` names it.
    pub(crate) fn state_name(&self) -> &'static str {
        const NAMES: [&str; 13] = [
            "?",
            "ESTABLISHED",
            "SYN-SENT",
            "SYN-RECV",
            "FIN-WAIT-1",
            "FIN-WAIT-2",
            "TIME-WAIT",
            "CLOSE",
            "CLOSE-WAIT",
            "LAST-ACK",
            "LISTEN",
            "CLOSING",
            "NEW-SYN-RECV",
        ];
        NAMES.get(usize::from(self.state)).copied().unwrap_or("?")
    }
}

/// Every TCP socket (any state, IPv4 and IPv6) whose local port is `port`.
pub(crate) fn tcp_sockets(port: u16) -> io::Result<Vec<TcpSocket>> {
    match sock_diag::all(port) {
        Ok(found) => Ok(found),
        Err(_) => {
            let mut found = Vec::new();
            for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
                match fs::read_to_string(table) {
                    Ok(text) => found.extend(sockets_in(&text, port)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io::Error::new(e.kind(), format!("{table}: {e}"))),
                }
            }
            Ok(found)
        }
    }
}

/// Parses a /proc/net/tcp{,6} table: the sockets whose local port is `port`.
fn sockets_in(table: &str, port: u16) -> Vec<TcpSocket> {
    let addr = |text: &str| -> Option<SocketAddr> {
        let (hex_ip, hex_port) = text.rsplit_once(':')?;
        let port = u16::from_str_radix(hex_port, 16).ok()?;
        // The kernel prints each 32-bit word of the address in host order.
        let mut bytes = Vec::new();
        for i in (0..hex_ip.len()).step_by(8) {
            let word = u32::from_str_radix(hex_ip.get(i..i + 8)?, 16).ok()?;
            bytes.extend_from_slice(&word.to_ne_bytes());
        }
        let ip = match bytes.len() {
            4 => IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
            16 => IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
            _ => return None,
        };
        Some(SocketAddr::new(ip, port))
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = addr(fields.get(1)?)?;
            let remote = addr(fields.get(2)?)?;
            let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
            let inode = fields.get(9)?.parse::<u64>().ok()?;
            (local.port() == port).then_some(TcpSocket {
                local,
                remote,
                state,
                inode,
            })
        })
        .collect()
}

/// The processes (this user can see) holding a socket inode, for messages.
pub(crate) fn pids_holding_inode(inode: u64) -> Vec<i32> {
    pids_holding(&HashSet::from([inode]))
}

/// The live children of a process.
pub fn children(parent: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut kids: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            stat_fields(pid).is_some_and(|f| {
                f.get(1).and_then(|p| p.parse::<i32>().ok()) == Some(parent)
                    && !matches!(f.first().map(String::as_str), Some("Z" | "X"))
            })
        })
        .collect();
    kids.sort_unstable();
    kids
}

/// The fields of /proc/PID/stat after the command name, which may itself
/// contain spaces and parentheses.
pub(crate) fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The process's start time in clock ticks since boot: with the pid, it
/// names one process for good (a pid alone may be reused).
pub fn start_time(pid: i32) -> Option<u64> {
    // Field 22 of stat; index 19 once pid and comm are cut off.
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// When the process started, in ms since the Unix epoch: its start time
/// in ticks since boot plus the boot's time (`btime` of /proc/stat).
pub fn started_unix_ms(pid: i32) -> Option<u64> {
    let ticks = start_time(pid)?;
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let btime: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|h| u64::try_from(h).ok())
        .filter(|h| *h > 0)?;
    Some(btime * 1000 + ticks * 1000 / hz)
}

/// True while the process exists and has not exited (a zombie has exited).
pub fn is_alive(pid: i32) -> bool {
    match stat_fields(pid) {
        Some(fields) => !matches!(fields.first().map(String::as_str), Some("Z" | "X")),
        None => false,
    }
}

/// True while `pid` is alive and is the same process that had `start` as its
/// start time (when known).
pub fn is_same_alive(pid: i32, start: Option<u64>) -> bool {
    is_alive(pid) && (start.is_none() || start_time(pid) == start)
}

/// The parent of a process, if it can be read.
pub fn parent(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// The arguments a process was started with (empty when unreadable).
pub fn argv(pid: i32) -> Vec<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut args: Vec<String> = raw
        .split(|&b| b == 0)
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect();
    // cmdline ends with a NUL, which leaves one empty piece at the end.
    if args.last().is_some_and(String::is_empty) {
        args.pop();
    }
    args
}

/// The command line of a process for messages, at most 160 characters.
pub fn cmdline(pid: i32) -> String {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let text: String = raw
        .split(|&b| b == 0)
        .filter(|part| !part.is_empty())
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    if text.chars().count() > 160 {
        format!("{}...", text.chars().take(160).collect::<String>())
    } else if text.is_empty() {
        "?".to_string()
    } else {
        text
    }
}

// Signals are sent through `tree::Proc::signal` and `tree::Group::signal`
// only: both re-check the process's start time first (pid reuse).

/// This boot's id: a lock or lease from another boot is stale for certain.
pub(crate) fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F92 0100007F:D3A4 01 00000000:00000000 00:00000000 00000000     0        0 5555 1 0000000000000000 20 4 30 10 -1
   2: 00000000:1F92 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 7777 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn only_listen_sockets_on_the_port_count() {
        assert_eq!(listen_inodes(TABLE, 8081), vec![4242]);
        // 5555 is an established connection to 8082, not a listener.
        assert_eq!(listen_inodes(TABLE, 8082), vec![7777]);
        assert!(listen_inodes(TABLE, 80).is_empty());
    }

    #[test]
    fn connections_are_read_from_the_proc_table_too() {
        let found = sockets_in(TABLE, 8082);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].local.to_string(), "127.0.0.1:8082");
        assert_eq!(found[0].remote.to_string(), "127.0.0.1:54180");
        assert_eq!(found[0].state_name(), "ESTABLISHED");
        assert_eq!(found[1].state_name(), "LISTEN");
    }

    #[test]
    fn finds_its_own_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = listening(port).unwrap();
        assert_eq!(seen.pids, vec![std::process::id() as i32]);
        drop(listener);
        assert!(listening(port).unwrap().is_free());
    }

    #[test]
    fn established_connections_are_counted_for_their_holder_only() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = std::process::id() as i32;
        assert_eq!(established_by(port, &[me]).unwrap(), 0);
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert_eq!(established_by(port, &[me]).unwrap(), 1);
        assert_eq!(established_by(port, &[]).unwrap(), 1);
        // pid 1 holds none of them.
        assert_eq!(established_by(port, &[1]).unwrap(), 0);
        assert_eq!(inodes_in_state(TABLE, 8082, "01"), vec![5555]);
        drop((client, server));
    }

    #[test]
    fn own_process_started_a_moment_ago() {
        let started = started_unix_ms(std::process::id() as i32).unwrap();
        let now = crate::sys::time::now_unix_ms();
        // Within the test run (clock ticks are 10 ms; btime is whole seconds).
        assert!(
            started <= now + 1000 && now - started < 600_000,
            "{started} {now}"
        );
    }

    #[test]
    fn own_process_is_alive_with_a_start_time() {
        let me = std::process::id() as i32;
        assert!(is_alive(me));
        let start = start_time(me);
        assert!(start.is_some());
        assert!(is_same_alive(me, start));
        assert!(!is_same_alive(me, start.map(|s| s + 1)));
        assert!(cmdline(me).contains("nonstop_common"));
    }

    #[test]
    fn children_are_seen_until_they_exit() {
        let me = std::process::id() as i32;
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(children(me).contains(&pid));
        // spawn() returns once the child exists, maybe before its exec(): its
        // command line is ours until then (the test failed so in CI once).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !cmdline(pid).starts_with("sleep 5") && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(cmdline(pid).starts_with("sleep 5"), "{:?}", cmdline(pid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!children(me).contains(&pid));
    }
}
