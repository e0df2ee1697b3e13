//! Mutual TLS between agents and the collector: the collector presents its certificate and
//! takes only agents whose certificate its CA signed; an agent checks the collector's against
//! its own CA. Both are read from PEM files once, at start, so a wrong file is one clear error
//! then rather than a handshake that fails later for reasons nobody sees.

use anyhow::{anyhow, bail, ensure, Result};
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use std::fmt;
use std::path::Path;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

/// The collector's side: its identity, and client certificates required and verified.
#[derive(Clone, Debug)]
pub struct ServerTls {
    config: ServerTlsConfig,
}

impl ServerTls {
    /// `cert`/`key`: the collector's certificate (chain) and key; `client_ca`: the CA every
    /// agent's certificate must be signed by. An agent without one is refused in the handshake.
    pub fn from_files(cert: &Path, key: &Path, client_ca: &Path) -> Result<Self> {
        let config = ServerTlsConfig::new()
            .identity(identity(cert, key)?)
            .client_ca_root(certificate(client_ca)?);
        // What rustls refuses beyond the checks above (a key type ring cannot sign with).
        Server::builder()
            .tls_config(config.clone())
            .map_err(|e| anyhow!("{}: {:#}", cert.display(), anyhow::Error::from(e)))?;
        Ok(Self { config })
    }
}

impl From<ServerTls> for ServerTlsConfig {
    fn from(tls: ServerTls) -> Self {
        tls.config
    }
}

/// An agent's side: the CA the collector's certificate must be signed by, the name it must
/// carry, and the agent's own certificate.
#[derive(Clone)]
pub struct ClientTls {
    config: ClientTlsConfig,
}

impl ClientTls {
    /// `server_name`: the DNS name or IP address the collector's certificate must carry.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path, server_name: &str) -> Result<Self> {
        let config = ClientTlsConfig::new()
            .ca_certificate(certificate(ca)?)
            .identity(identity(cert, key)?)
            .domain_name(server_name);
        // What rustls refuses beyond the checks above (a server name that is neither).
        Endpoint::from_static("https://localhost")
            .tls_config(config.clone())
            .map_err(|e| anyhow!("TLS to {server_name:?}: {:#}", anyhow::Error::from(e)))?;
        Ok(Self { config })
    }
}

/// Any tonic configuration, as is: one presenting no client certificate, say.
impl From<ClientTlsConfig> for ClientTls {
    fn from(config: ClientTlsConfig) -> Self {
        Self { config }
    }
}

impl From<ClientTls> for ClientTlsConfig {
    fn from(tls: ClientTls) -> Self {
        tls.config
    }
}

/// Not tonic's (derived) one, which prints the private key.
impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// The first certificate in a PEM file (a chain's leaf).
fn first_certificate(path: &Path, pem: &[u8]) -> Result<X509> {
    match X509::stack_from_pem(pem).map(|certs| certs.into_iter().next()) {
        Ok(Some(cert)) => Ok(cert),
        _ => bail!("{}: not a PEM certificate", path.display()),
    }
}

fn certificate(path: &Path) -> Result<Certificate> {
    let pem = read(path)?;
    first_certificate(path, &pem)?;
    Ok(Certificate::from_pem(pem))
}

fn identity(cert: &Path, key: &Path) -> Result<Identity> {
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    let leaf = first_certificate(cert, &cert_pem)?;
    // With no callback OpenSSL would ask for an encrypted key's passphrase on the terminal.
    let private: PKey<Private> = PKey::private_key_from_pem_callback(&key_pem, |_| Ok(0))
        .map_err(|_| anyhow!("{}: not an unencrypted PEM private key", key.display()))?;
    ensure!(
        leaf.public_key()?.public_eq(&private),
        "{}: key does not match the certificate in {}",
        key.display(),
        cert.display()
    );
    Ok(Identity::from_pem(cert_pem, key_pem))
}
