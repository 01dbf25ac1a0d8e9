//! UDP sockets for QUIC endpoints, with buffers sized for bulk transfer.
//!
//! Linux gives a UDP socket about 208 KiB of receive buffer by default. A QUIC
//! sender with a large congestion window overruns that in well under a
//! millisecond whenever the receiving process is descheduled, and every
//! overrun is a burst of losses the congestion controller answers by halving
//! its rate. Both ends therefore ask for [`SOCKET_BUFFER`] bytes each way; the
//! kernel caps the request at `net.core.{r,w}mem_max` (4 MiB here), and a
//! refused request only costs speed, never correctness.
//!
//! A process with `CAP_NET_ADMIN` (an agent or hub running as root, as on
//! most appliances) gets the whole [`SOCKET_BUFFER`] past that cap
//! (`SO_RCVBUFFORCE`, as quic-go does): at the cap, a 1 GiB loopback fetch
//! still overran the agent's receive buffer about 15 times, each a congestion
//! event on the hub; at 8 MiB none did (docs/benchmarks.md).

use std::net::{SocketAddr, UdpSocket};

/// Largest UDP payload an endpoint accepts (IPv6 jumbo-free maximum).
pub const MAX_UDP_PAYLOAD: u16 = 65527;

/// Receive and send buffer each endpoint asks the kernel for.
pub const SOCKET_BUFFER: usize = 8 << 20;

/// A UDP socket bound to `addr` with [`SOCKET_BUFFER`]-sized buffers (as far
/// as the kernel allows).
///
/// # Errors
///
/// Creating or binding the socket failed.
pub fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = if addr.is_ipv6() {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        // Dual-stack where the platform allows, like std's default.
        let _ = socket.set_only_v6(false);
    }
    for (what, r) in [
        ("receive", socket.set_recv_buffer_size(SOCKET_BUFFER)),
        ("send", socket.set_send_buffer_size(SOCKET_BUFFER)),
    ] {
        if let Err(e) = r {
            tracing::debug!(error = %e, "could not size the UDP {what} buffer");
        }
    }
    force_buffers(&socket);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Raises the buffers past `net.core.{r,w}mem_max` where the process may
/// (`CAP_NET_ADMIN`); Linux reports twice the size asked for, so a reported
/// size below that means the cap applied.
#[cfg(target_os = "linux")]
fn force_buffers(socket: &socket2::Socket) {
    use rustix::net::sockopt;
    if socket
        .recv_buffer_size()
        .is_ok_and(|n| n < 2 * SOCKET_BUFFER)
    {
        if let Err(e) = sockopt::set_socket_recv_buffer_size_force(socket, SOCKET_BUFFER) {
            tracing::debug!(error = %e, "UDP receive buffer stays at net.core.rmem_max");
        }
    }
    if socket
        .send_buffer_size()
        .is_ok_and(|n| n < 2 * SOCKET_BUFFER)
    {
        if let Err(e) = sockopt::set_socket_send_buffer_size_force(socket, SOCKET_BUFFER) {
            tracing::debug!(error = %e, "UDP send buffer stays at net.core.wmem_max");
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn force_buffers(_socket: &socket2::Socket) {}

/// A quinn endpoint on a socket from [`bind`]: a server when `server` is
/// given, else a client-only endpoint. Needs a tokio runtime.
///
/// # Errors
///
/// The socket could not be created or bound, or no tokio runtime is running.
pub fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    let socket = bind(addr)?;
    let runtime =
        quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime found"))?;
    let mut config = quinn::EndpointConfig::default();
    // Accept datagrams as large as the path allows (loopback, jumbo frames);
    // what each side sends is still bounded by path-MTU discovery.
    config
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    quinn::Endpoint::new(config, server, socket, runtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_raised_above_the_default() {
        let s = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let s = socket2::SockRef::from(&s);
        // Linux reports twice what it granted; the default is ~208 KiB.
        assert!(s.recv_buffer_size().unwrap() > 256 * 1024);
        assert!(s.send_buffer_size().unwrap() > 256 * 1024);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn buffers_pass_the_sysctl_cap_where_the_process_may() {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let may =
            rustix::net::sockopt::set_socket_recv_buffer_size_force(&probe, SOCKET_BUFFER).is_ok();
        let s = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let s = socket2::SockRef::from(&s);
        if may {
            assert!(s.recv_buffer_size().unwrap() >= 2 * SOCKET_BUFFER);
            assert!(s.send_buffer_size().unwrap() >= 2 * SOCKET_BUFFER);
        } else {
            eprintln!("no CAP_NET_ADMIN here: buffers stay at net.core.{{r,w}}mem_max");
        }
    }

    #[tokio::test]
    async fn a_client_endpoint_binds_an_ephemeral_port() {
        let e = endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
        assert_ne!(e.local_addr().unwrap().port(), 0);
    }
}
