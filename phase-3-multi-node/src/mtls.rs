//! Mutual TLS between agents and the collector: the collector presents its certificate and
//! takes only agents whose certificate its CA signed; an agent checks the collector's against
//! its own CA. Both are read from PEM files once, at start, so a wrong file is one clear error
//! then rather than a handshake that fails later for reasons nobody sees.

use anyhow::{anyhow, bail, ensure, Result};
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use std::fmt;
use std::path::{Path, PathBuf};
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

/// PEM files of a throwaway PKI, for tests: see [`write_test_pki`].
#[derive(Clone, Debug)]
pub struct TestPki {
    pub ca: PathBuf,
    /// For "localhost" and 127.0.0.1, signed by `ca`.
    pub collector_cert: PathBuf,
    pub collector_key: PathBuf,
    /// For node [`TEST_AGENT_NODE`] (its DNS subjectAltName), signed by `ca`.
    pub agent_cert: PathBuf,
    pub agent_key: PathBuf,
    /// A CA the collector does not trust, and an agent certificate it signed.
    pub other_ca: PathBuf,
    pub other_agent_cert: PathBuf,
    pub other_agent_key: PathBuf,
}

/// The node the test PKI's agent certificate names.
pub const TEST_AGENT_NODE: &str = "node-a";

/// Writes a CA, a collector and an agent certificate it signed, and an unrelated CA with an
/// agent certificate of its own into `dir` (valid for two days).
pub fn write_test_pki(dir: &Path) -> Result<TestPki> {
    let file = |name: &str, pem: Vec<u8>| -> Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, pem).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(path)
    };
    let leaf = |name: &str, role: Role, issuer: (&X509, &PKey<Private>)| {
        let key = new_key()?;
        let cert = sign(name, &key, role, Some(issuer))?;
        Ok::<_, anyhow::Error>((
            file(&format!("{name}.crt"), cert.to_pem()?)?,
            file(&format!("{name}.key"), key.private_key_to_pem_pkcs8()?)?,
        ))
    };
    let (ca_key, other_ca_key) = (new_key()?, new_key()?);
    let ca = sign("test-ca", &ca_key, Role::Ca, None)?;
    let other_ca = sign("other-ca", &other_ca_key, Role::Ca, None)?;
    let (collector_cert, collector_key) = leaf("collector", Role::Server, (&ca, &ca_key))?;
    let (agent_cert, agent_key) = leaf(TEST_AGENT_NODE, Role::Client, (&ca, &ca_key))?;
    let (other_agent_cert, other_agent_key) =
        leaf("other-agent", Role::Client, (&other_ca, &other_ca_key))?;
    Ok(TestPki {
        ca: file("ca.crt", ca.to_pem()?)?,
        collector_cert,
        collector_key,
        agent_cert,
        agent_key,
        other_ca: file("other-ca.crt", other_ca.to_pem()?)?,
        other_agent_cert,
        other_agent_key,
    })
}

#[derive(Clone, Copy)]
enum Role {
    Ca,
    Server,
    Client,
}

fn new_key() -> Result<PKey<Private>> {
    use openssl::{ec, nid::Nid};
    let group = ec::EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    Ok(PKey::from_ec_key(ec::EcKey::generate(&group)?)?)
}

/// A v3 certificate for `cn`, self-signed without an issuer. webpki (rustls) wants the
/// extensions: CA constraints on the CA, a SAN on the server (it ignores the CN), and the
/// extended key usage of each leaf. A client's SAN is `cn` too: the node it is (admission.rs).
fn sign(
    cn: &str,
    key: &PKey<Private>,
    role: Role,
    issuer: Option<(&X509, &PKey<Private>)>,
) -> Result<X509> {
    use openssl::asn1::Asn1Time;
    use openssl::bn::{BigNum, MsbOption};
    use openssl::hash::MessageDigest;
    use openssl::x509::extension::{
        BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    };
    let mut name = openssl::x509::X509NameBuilder::new()?;
    name.append_entry_by_text("CN", cn)?;
    let name = name.build();
    let mut serial = BigNum::new()?;
    serial.rand(64, MsbOption::MAYBE_ZERO, false)?;
    let serial = serial.to_asn1_integer()?;
    let (not_before, not_after) = (Asn1Time::days_from_now(0)?, Asn1Time::days_from_now(2)?);
    let mut b = X509::builder()?;
    b.set_version(2)?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(issuer.map_or(&name, |(ca, _)| ca.subject_name()))?;
    b.set_pubkey(key)?;
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;
    match role {
        Role::Ca => {
            b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
            b.append_extension(KeyUsage::new().critical().key_cert_sign().build()?)?;
        }
        Role::Server => {
            let san = SubjectAlternativeName::new()
                .dns("localhost")
                .ip("127.0.0.1")
                .build(&b.x509v3_context(issuer.map(|(ca, _)| &**ca), None))?;
            b.append_extension(san)?;
            b.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
        }
        Role::Client => {
            let san = SubjectAlternativeName::new()
                .dns(cn)
                .build(&b.x509v3_context(issuer.map(|(ca, _)| &**ca), None))?;
            b.append_extension(san)?;
            b.append_extension(ExtendedKeyUsage::new().client_auth().build()?)?;
        }
    }
    b.sign(issuer.map_or(key, |(_, k)| k), MessageDigest::sha256())?;
    Ok(b.build())
}
