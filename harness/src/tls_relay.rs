//! A TLS relay on rustls (ring), the encrypted hop of the scenarios whose TLS stack is rustls
//! (Rust services, linkerd-style sidecars). The component binary becomes it when started with
//! [`RUSTLS_RELAY_ENV`] set, with the same command line as the Go and Java relays
//! (harness/relays):
//!
//! ```text
//! relay PEM SERVICE...
//! ```
//!
//! where PEM holds the server's key and certificate and each SERVICE is IN>OUT, both tls:PORT
//! or tcp:PORT on 127.0.0.1: it accepts on IN and, per connection, connects to OUT (TCP_NODELAY)
//! and copies what it reads on to it, one read and one write per chunk (so that every byte
//! passes a read and a write syscall, as plaintext or inside a TLS record). A service
//! IN>OUT1+OUT2... fans out, as a broker delivers a topic to several subscriptions: per
//! connection it connects to every OUT and writes each chunk it reads to each of them, in that
//! order, one write per chunk and output (only this relay does; the Go and Java ones take one
//! OUT). Its client side accepts any certificate.

use anyhow::{anyhow, bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, ServerConfig, SignatureScheme,
};
use rustls::{ServerConnection, StreamOwned};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;

/// Set (to anything) on a process of the component binary that should be the rustls relay.
pub const RUSTLS_RELAY_ENV: &str = "HX_RUSTLS_RELAY";

/// Runs the relay when [`RUSTLS_RELAY_ENV`] is set, and exits; returns when it is not.
pub fn run_if_rustls_relay() {
    if std::env::var_os(RUSTLS_RELAY_ENV).is_none() {
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("rustls relay: {e:#}");
        std::process::exit(2);
    }
    std::process::exit(0);
}

/// One side of a service: 127.0.0.1:port, TLS or plain.
#[derive(Clone, Copy)]
struct Side {
    tls: bool,
    port: u16,
}

fn side(s: &str) -> Result<Side> {
    let (mode, port) = s
        .split_once(':')
        .with_context(|| format!("bad end {s:?}: want tls:PORT or tcp:PORT"))?;
    let tls = match mode {
        "tls" => true,
        "tcp" => false,
        _ => bail!("bad end {s:?}: want tls:PORT or tcp:PORT"),
    };
    Ok(Side {
        tls,
        port: port.parse().with_context(|| format!("bad port in {s:?}"))?,
    })
}

const USAGE: &str = "usage: relay PEM IN>OUT[+OUT...]...";

fn run(args: &[String]) -> Result<()> {
    let [pem, services @ ..] = args else {
        bail!(USAGE);
    };
    if services.is_empty() {
        bail!(USAGE);
    }
    // Not ours: named as itself, not as the binary it runs from.
    // SAFETY: PR_SET_NAME reads a NUL-terminated string; threads started later inherit it.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"rustls-relay".as_ptr()) };
    let provider = Arc::new(ring::default_provider());
    let certs = CertificateDer::pem_file_iter(pem)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow!("certificates in {pem}: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(pem).map_err(|e| anyhow!("key in {pem}: {e}"))?;
    let server = Arc::new(
        ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?,
    );
    let client = Arc::new(
        ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth(),
    );
    let mut threads = Vec::new();
    for s in services {
        let (from, to) = s
            .split_once('>')
            .with_context(|| format!("bad service {s:?}: want IN>OUT[+OUT...]"))?;
        let from = side(from)?;
        let to = to.split('+').map(side).collect::<Result<Vec<_>>>()?;
        let listener = TcpListener::bind(("127.0.0.1", from.port))
            .with_context(|| format!("listening on port {}", from.port))?;
        let (server, client) = (server.clone(), client.clone());
        threads.push(std::thread::spawn(move || -> Result<()> {
            loop {
                let (tcp, _) = listener.accept()?;
                let (server, client, to) = (server.clone(), client.clone(), to.clone());
                std::thread::spawn(move || {
                    if let Err(e) = relay(tcp, from, &to, server, client) {
                        eprintln!("rustls relay: {e:#}");
                    }
                });
            }
        }));
    }
    for t in threads {
        t.join()
            .map_err(|_| anyhow!("a service's thread panicked"))??;
    }
    Ok(())
}

/// A connection's end: TLS over TCP, or the TCP stream itself.
enum Conn {
    Plain(TcpStream),
    Server(Box<StreamOwned<ServerConnection, TcpStream>>),
    Client(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Conn {
    fn stream(&mut self) -> &mut dyn ReadWrite {
        match self {
            Conn::Plain(s) => s,
            Conn::Server(s) => s.as_mut(),
            Conn::Client(s) => s.as_mut(),
        }
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Server(s) => &s.sock,
            Conn::Client(s) => &s.sock,
        }
    }

    /// Says goodbye (close_notify on TLS, then FIN) and reads until the peer closes: closing
    /// with unread bytes (TLS 1.3 session tickets) would reset the connection under the peer's
    /// last reads.
    fn finish(mut self) {
        match &mut self {
            Conn::Plain(_) => {}
            Conn::Server(s) => s.conn.send_close_notify(),
            Conn::Client(s) => s.conn.send_close_notify(),
        }
        let _ = self.stream().flush();
        let _ = self.tcp().shutdown(Shutdown::Write);
        let mut buf = [0; 4096];
        while matches!(self.stream().read(&mut buf), Ok(n) if n > 0) {}
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Copies one accepted connection to a new one to each of `to`, one read per chunk and one
/// write per chunk and output.
fn relay(
    tcp: TcpStream,
    from: Side,
    to: &[Side],
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> Result<()> {
    tcp.set_nodelay(true)?;
    let mut input = if from.tls {
        Conn::Server(Box::new(StreamOwned::new(
            ServerConnection::new(server)?,
            tcp,
        )))
    } else {
        Conn::Plain(tcp)
    };
    let mut outputs = to
        .iter()
        .map(|&to| connect(to, &client))
        .collect::<Result<Vec<_>>>()?;
    let mut buf = vec![0; 16 * 1024];
    loop {
        // A peer gone without close_notify is an end too.
        let n = input.stream().read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        for output in &mut outputs {
            output.stream().write_all(&buf[..n])?;
        }
    }
    for output in outputs {
        output.finish();
    }
    Ok(())
}

/// A new connection to `to`.
fn connect(to: Side, client: &Arc<ClientConfig>) -> Result<Conn> {
    let tcp = TcpStream::connect(("127.0.0.1", to.port))
        .with_context(|| format!("connecting to port {}", to.port))?;
    tcp.set_nodelay(true)?;
    Ok(if to.tls {
        let name = ServerName::try_from("localhost")?;
        Conn::Client(Box::new(StreamOwned::new(
            ClientConnection::new(client.clone(), name)?,
            tcp,
        )))
    } else {
        Conn::Plain(tcp)
    })
}

/// The client side's verifier: any certificate will do (as for the harness's other TLS
/// clients); handshake signatures are still checked with the provider's algorithms.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
