//! Throwaway certificates for tests, made with rcgen (EC P-256): a PKI for mutual TLS between
//! agents and the collector. webpki (rustls) wants the extensions real ones carry: CA
//! constraints on a CA, a subjectAltName on the server (it ignores the CN), and the extended
//! key usage of each leaf. An agent's SAN is the node it is (the collector's admission checks
//! it against the node the agent claims).

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// PEM files of a throwaway PKI: see [`write_test_pki`].
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

#[derive(Clone, Copy)]
enum Role {
    Ca,
    Server,
    Client,
}

/// Writes a CA, a collector and an agent certificate it signed, and an unrelated CA with an
/// agent certificate of its own into `dir`.
pub fn write_test_pki(dir: &Path) -> Result<TestPki> {
    let file = |name: &str, pem: String| -> Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    let new_ca = |name: &str| -> Result<(String, Issuer<'static, KeyPair>)> {
        let key = KeyPair::generate()?;
        let params = params(name, Role::Ca)?;
        let cert = params.self_signed(&key)?;
        Ok((cert.pem(), Issuer::new(params, key)))
    };
    let leaf = |name: &str, role: Role, issuer: &Issuer<KeyPair>| -> Result<(PathBuf, PathBuf)> {
        let key = KeyPair::generate()?;
        let cert = params(name, role)?.signed_by(&key, issuer)?;
        Ok((
            file(&format!("{name}.crt"), cert.pem())?,
            file(&format!("{name}.key"), key.serialize_pem())?,
        ))
    };
    let (ca_pem, ca) = new_ca("test-ca")?;
    let (other_ca_pem, other_ca) = new_ca("other-ca")?;
    let (collector_cert, collector_key) = leaf("collector", Role::Server, &ca)?;
    let (agent_cert, agent_key) = leaf(TEST_AGENT_NODE, Role::Client, &ca)?;
    let (other_agent_cert, other_agent_key) = leaf("other-agent", Role::Client, &other_ca)?;
    Ok(TestPki {
        ca: file("ca.crt", ca_pem)?,
        collector_cert,
        collector_key,
        agent_cert,
        agent_key,
        other_ca: file("other-ca.crt", other_ca_pem)?,
        other_agent_cert,
        other_agent_key,
    })
}

/// A certificate for `cn` in its role.
fn params(cn: &str, role: Role) -> Result<CertificateParams> {
    let sans = match role {
        Role::Ca => vec![],
        Role::Server => vec!["localhost".into(), "127.0.0.1".into()],
        Role::Client => vec![cn.into()],
    };
    let mut params = CertificateParams::new(sans)?;
    params.distinguished_name.push(DnType::CommonName, cn);
    match role {
        Role::Ca => {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        }
        Role::Server => params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth],
        Role::Client => params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth],
    }
    Ok(params)
}

/// Writes a fresh key and self-signed certificate for `localhost` to `pem` (the key first), for
/// one run's TLS links: the harness's TLS servers and stunnel serve it, its TLS clients accept
/// anything.
pub fn write_test_certificate(pem: &Path) -> Result<()> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".into()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.self_signed(&key)?;
    std::fs::write(pem, key.serialize_pem() + &cert.pem())
        .with_context(|| format!("writing {}", pem.display()))
}
