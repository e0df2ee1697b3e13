//! Opening link ends and moving bytes over them: FIFOs, TCP (optionally TLS), unix sockets and
//! connections to a NATS broker, each plain end with its syscall family, a TLS end with
//! OpenSSL's SSL_write_ex/SSL_read_ex.

use super::nats::nats_hello;
use super::spec::{IoCall, Transport};
use anyhow::{anyhow, Context, Result};
use openssl::ssl::{
    ErrorCode, SslAcceptor, SslConnector, SslFiletype, SslMethod, SslOptions, SslStream,
    SslVerifyMode,
};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Most iovecs a vector call is split into.
pub const MAX_IOVECS: usize = 8;

/// One read or write syscall of the given family. `cuts` splits the buffer into iovecs for the
/// vector families (ascending offsets inside `0..=len`, fewer than `MAX_IOVECS`). Nothing is
/// allocated or freed around the syscall: components stamp their clocks right before and after
/// it, and on a CPU just back from the kernel even a free() shows in those stamps.
/// Components also read their thread's involuntary context-switch count on both sides of the
/// stamp and the syscall, and flag the record `preempted` when it changed.
// Not an `unsafe fn`: the phase crates call it as it is. Callers pass a buffer valid for `len`.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub fn syscall_io(
    fd: i32,
    buf: *mut u8,
    len: usize,
    write: bool,
    call: IoCall,
    cuts: &[usize],
) -> isize {
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut iov = [empty; MAX_IOVECS];
    let mut n = 0;
    let mut start = 0;
    for &end in cuts
        .iter()
        .take(MAX_IOVECS - 1)
        .chain(std::iter::once(&len))
    {
        // SAFETY: start <= end <= len, inside `buf`.
        iov[n] = libc::iovec {
            iov_base: unsafe { buf.add(start) }.cast(),
            iov_len: end - start,
        };
        n += 1;
        start = end;
    }
    // SAFETY: every pointer covers `buf`, valid for `len` bytes; the caller owns `fd`.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = n;
        match (call, write) {
            (IoCall::Plain, true) => libc::write(fd, buf.cast(), len),
            (IoCall::Plain, false) => libc::read(fd, buf.cast(), len),
            (IoCall::Vector, true) => libc::writev(fd, iov.as_ptr(), n as i32),
            (IoCall::Vector, false) => libc::readv(fd, iov.as_ptr(), n as i32),
            (IoCall::Socket, true) => {
                libc::sendto(fd, buf.cast(), len, libc::MSG_NOSIGNAL, std::ptr::null(), 0)
            }
            (IoCall::Socket, false) => libc::recvfrom(
                fd,
                buf.cast(),
                len,
                0,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            ),
            (IoCall::Message, true) => libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL),
            (IoCall::Message, false) => libc::recvmsg(fd, &mut msg, 0),
        }
    }
}

/// Iovec cuts the components use: thirds.
fn thirds(len: usize) -> [usize; 2] {
    [len / 3, 2 * len / 3]
}

/// An open end of a link: an fd moved by syscalls, or TLS over TCP.
pub(super) enum Conn {
    Plain(OwnedFd),
    Tls(SslStream<TcpStream>),
}

impl Conn {
    /// The socket (or pipe) fd: what a tracer attributes the bytes to.
    pub(super) fn fd(&self) -> i32 {
        match self {
            Conn::Plain(fd) => fd.as_raw_fd(),
            Conn::Tls(s) => s.get_ref().as_raw_fd(),
        }
    }

    /// One read or write of plaintext; 0 at the end of the stream. Plain: one syscall of
    /// `call`'s family. TLS: one SSL_write_ex or SSL_read_ex (what `ssl_write`/`ssl_read` of
    /// openssl 0.10.82 call on OpenSSL ≥ 1.1.1), the calls a tracer uprobes in libssl.so.3.
    pub(super) fn io(
        &mut self,
        buf: &mut [u8],
        write: bool,
        call: IoCall,
    ) -> std::io::Result<usize> {
        match self {
            Conn::Plain(fd) => {
                let len = buf.len();
                let n = syscall_io(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr(),
                    len,
                    write,
                    call,
                    &thirds(len),
                );
                usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
            }
            Conn::Tls(s) => {
                let done = if write {
                    s.ssl_write(buf)
                } else {
                    s.ssl_read(buf)
                };
                match done {
                    Err(e) if e.code() == ErrorCode::ZERO_RETURN => Ok(0),
                    other => other.map_err(|e| {
                        e.into_io_error()
                            .unwrap_or_else(|e| std::io::Error::other(e.to_string()))
                    }),
                }
            }
        }
    }

    /// A TLS writer says goodbye (close_notify), so the reader sees a clean end.
    pub(super) fn close(self) {
        if let Conn::Tls(mut s) = self {
            let _ = s.shutdown();
        }
    }
}

/// Peers may close without close_notify (stunnel passing on a plain EOF): that is an end too.
const TLS_OPTIONS: SslOptions = SslOptions::IGNORE_UNEXPECTED_EOF;

/// A TLS client on `tcp` that accepts the test certificate.
pub fn tls_connect(tcp: TcpStream) -> Result<SslStream<TcpStream>> {
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    b.set_verify(SslVerifyMode::NONE);
    b.set_options(TLS_OPTIONS);
    b.build()
        .configure()?
        .verify_hostname(false)
        .connect("localhost", tcp)
        .map_err(|e| anyhow!("TLS handshake: {e}"))
}

/// A TLS server with the key and certificate in `pem` (`pki::write_test_certificate`).
pub fn tls_acceptor(pem: &Path) -> Result<SslAcceptor> {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    b.set_private_key_file(pem, SslFiletype::PEM)?;
    b.set_certificate_chain_file(pem)?;
    b.set_options(TLS_OPTIONS);
    Ok(b.build())
}

/// A reading end set up before the component is ready: a listening socket, a FIFO to open, or
/// a subscription already made.
pub(super) enum Listening {
    Fifo(PathBuf),
    Tcp(std::net::TcpListener, Option<SslAcceptor>),
    Unix(std::os::unix::net::UnixListener),
    Subscribed(Conn),
}

pub(super) fn listen(t: &Transport) -> Result<Listening> {
    Ok(match t {
        Transport::Fifo(p) => Listening::Fifo(p.clone()),
        Transport::Tcp {
            ip, port_file, tls, ..
        } => {
            let acceptor = tls.as_deref().map(tls_acceptor).transpose()?;
            let l = std::net::TcpListener::bind((*ip, 0))
                .with_context(|| format!("listening on {ip}"))?;
            std::fs::write(port_file, l.local_addr()?.port().to_string())?;
            Listening::Tcp(l, acceptor)
        }
        Transport::Unix(p) => Listening::Unix(
            std::os::unix::net::UnixListener::bind(p)
                .with_context(|| format!("binding {}", p.display()))?,
        ),
        Transport::Nats { port_file } => {
            let mut s = retry(|| tcp_connect(Ipv4Addr::LOCALHOST.into(), port_file))?;
            nats_hello(&mut s, true)?;
            Listening::Subscribed(Conn::Plain(s.into()))
        }
    })
}

pub(super) fn accept(l: Listening) -> Result<Conn> {
    Ok(match l {
        Listening::Fifo(p) => Conn::Plain(
            std::fs::File::open(&p)
                .with_context(|| format!("opening {}", p.display()))?
                .into(),
        ),
        Listening::Tcp(l, None) => Conn::Plain(l.accept()?.0.into()),
        Listening::Tcp(l, Some(tls)) => Conn::Tls(
            tls.accept(l.accept()?.0)
                .map_err(|e| anyhow!("TLS handshake: {e}"))?,
        ),
        Listening::Unix(l) => Conn::Plain(l.accept()?.0.into()),
        Listening::Subscribed(conn) => conn,
    })
}

/// Retries for 20 s: the peer may not be listening yet.
fn retry<T>(mut attempt: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match attempt() {
            Ok(t) => return Ok(t),
            Err(e) if std::time::Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Connects to the port on `ip` named in `port_file` (which may not exist yet).
fn tcp_connect(ip: IpAddr, port_file: &Path) -> std::io::Result<TcpStream> {
    let port = std::fs::read_to_string(port_file)?
        .trim()
        .parse::<u16>()
        .map_err(std::io::Error::other)?;
    let s = TcpStream::connect(SocketAddr::new(ip, port))?;
    s.set_nodelay(true)?;
    Ok(s)
}

pub(super) fn connect(t: &Transport) -> Result<Conn> {
    Ok(match t {
        Transport::Fifo(p) => Conn::Plain(std::fs::OpenOptions::new().write(true).open(p)?.into()),
        Transport::Tcp {
            ip,
            port_file,
            tls,
            service,
        } => {
            let s = match service {
                // Until the runner has written the Service's rules, its address is unroutable.
                Some(at) => retry(|| {
                    std::fs::metadata(port_file)?;
                    let s = TcpStream::connect(at)?;
                    s.set_nodelay(true)?;
                    Ok(s)
                })?,
                None => retry(|| tcp_connect(*ip, port_file))?,
            };
            match tls {
                None => Conn::Plain(s.into()),
                Some(_) => Conn::Tls(tls_connect(s)?),
            }
        }
        Transport::Unix(p) => {
            Conn::Plain(retry(|| std::os::unix::net::UnixStream::connect(p))?.into())
        }
        Transport::Nats { port_file } => {
            let mut s = retry(|| tcp_connect(Ipv4Addr::LOCALHOST.into(), port_file))?;
            nats_hello(&mut s, false)?;
            Conn::Plain(s.into())
        }
    })
}

/// Creates a FIFO.
pub fn mkfifo(path: &Path) -> Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mkfifo {}", path.display()));
    }
    Ok(())
}
