//! TLS for the agent protocol, so the token and the replies do not cross the node network in
//! clear text.
//!
//! The agent presents a server certificate and may require client certificates; the
//! coordinator trusts one CA and checks every agent's certificate against the agent's host
//! (or one name for all agents, which lets a DaemonSet share one certificate). [`generate`]
//! makes a small private CA with one agent and one coordinator certificate, which is what
//! `live tls-init` writes.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let bundle = live::tls::generate(&["autothrottle-agent".into()], 30).unwrap();
//! let files = bundle.write(dir.path()).unwrap();
//! let _acceptor = live::tls::server(&files.agent_cert, &files.agent_key, Some(&files.ca)).unwrap();
//! let _connector = live::tls::client(
//!     &files.ca,
//!     Some((&files.coordinator_cert, &files.coordinator_key)),
//!     Some("autothrottle-agent"),
//! )
//! .unwrap();
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::LiveError;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_error(what: &str, path: &Path, e: impl std::fmt::Display) -> LiveError {
    LiveError::Config(format!("{what} {}: {e}", path.display()))
}

/// Every certificate in a PEM file; an error if there is none.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, LiveError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| config_error("cannot read certificates from", path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error("cannot read certificates from", path, e))?;
    if certs.is_empty() {
        return Err(config_error(
            "no certificate in",
            path,
            "expected -----BEGIN CERTIFICATE-----",
        ));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, LiveError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| config_error("cannot read a private key from", path, e))
}

fn roots(ca: &Path) -> Result<rustls::RootCertStore, LiveError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(ca)? {
        roots
            .add(cert)
            .map_err(|e| config_error("not a usable CA certificate in", ca, e))?;
    }
    Ok(roots)
}

/// The agent's side: its certificate chain and key, and, when `client_ca` is given, only
/// clients with a certificate that CA signed are accepted.
pub fn server(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<TlsAcceptor, LiveError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| LiveError::Internal(format!("TLS set-up: {e}")))?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                provider(),
            )
            .build()
            .map_err(|e| config_error("cannot verify clients with", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certificates(cert)?, private_key(key)?)
        .map_err(|e| {
            LiveError::Config(format!(
                "{} and {} do not make a server identity: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The coordinator's side of the agent protocol over TLS.
#[derive(Clone)]
pub struct AgentTls {
    connector: TlsConnector,
    /// The name every agent's certificate must carry; `None`: each agent's own host.
    name: Option<ServerName<'static>>,
}

/// Trust agents whose certificate `ca` signed, show `identity` (certificate, key) when the
/// agents ask for a client certificate, and check every agent against `name` (else against
/// the host of the address it is reached at).
pub fn client(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    name: Option<&str>,
) -> Result<AgentTls, LiveError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| LiveError::Internal(format!("TLS set-up: {e}")))?
        .with_root_certificates(roots(ca)?);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(certificates(cert)?, private_key(key)?)
            .map_err(|e| {
                LiveError::Config(format!(
                    "{} and {} do not make a client identity: {e}",
                    cert.display(),
                    key.display()
                ))
            })?,
        None => builder.with_no_client_auth(),
    };
    let name = name
        .map(|n| {
            ServerName::try_from(n.to_string())
                .map_err(|e| LiveError::Config(format!("'{n}' is not a server name: {e}")))
        })
        .transpose()?;
    Ok(AgentTls {
        connector: TlsConnector::from(Arc::new(config)),
        name,
    })
}

/// The host part of `host:port`, `[v6]:port` or `v6` alone.
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((host, _)) if !host.contains(':') => host,
        _ => addr,
    }
}

impl std::fmt::Debug for AgentTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentTls")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl AgentTls {
    /// The TLS session over `tcp` to the agent at `addr`, its certificate checked.
    pub async fn connect(
        &self,
        addr: &str,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let name = match &self.name {
            Some(n) => n.clone(),
            None => ServerName::try_from(host_of(addr).to_string())
                .map_err(|e| format!("cannot check a certificate for '{addr}': {e}"))?,
        };
        self.connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))
    }
}

/// Whether every address in `addrs` is on this machine's loopback, where plain TCP crosses
/// no network (an address that does not parse is not).
pub fn all_loopback<'a>(addrs: impl IntoIterator<Item = &'a str>) -> bool {
    addrs.into_iter().all(|a| {
        let host = host_of(a);
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

/// A private CA and the certificates signed with it, as PEM text.
pub struct Bundle {
    pub ca: String,
    pub ca_key: String,
    pub agent_cert: String,
    pub agent_key: String,
    pub coordinator_cert: String,
    pub coordinator_key: String,
}

/// Where [`Bundle::write`] put each part.
#[derive(Debug, Clone)]
pub struct BundleFiles {
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub agent_cert: PathBuf,
    pub agent_key: PathBuf,
    pub coordinator_cert: PathBuf,
    pub coordinator_key: PathBuf,
}

/// A CA valid for `days`, an agent certificate for `agent_names` (DNS names or IP addresses)
/// and a coordinator client certificate, each with its own fresh ECDSA P-256 key.
pub fn generate(agent_names: &[String], days: u32) -> Result<Bundle, LiveError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    if agent_names.is_empty() {
        return Err(LiveError::Config(
            "the agent certificate needs at least one name".into(),
        ));
    }
    if !(1..=3650).contains(&days) {
        return Err(LiveError::Config(format!(
            "certificates are valid 1..3650 days, not {days}"
        )));
    }
    let fail = |e: rcgen::Error| LiveError::Config(format!("certificate generation: {e}"));
    let now = time::OffsetDateTime::now_utc();
    // A day of slack for clocks behind this one.
    let not_before = now - time::Duration::days(1);
    let not_after = now + time::Duration::days(i64::from(days));

    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "autothrottle CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (ca.not_before, ca.not_after) = (not_before, not_after);
    let ca_key = KeyPair::generate().map_err(fail)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(fail)?;
    let ca_pem = ca_cert.pem();
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca, ca_key);

    let leaf = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
        let mut p = CertificateParams::new(names).map_err(fail)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![usage];
        p.use_authority_key_identifier_extension = true;
        (p.not_before, p.not_after) = (not_before, not_after);
        let key = KeyPair::generate().map_err(fail)?;
        let cert = p.signed_by(&key, &issuer).map_err(fail)?;
        Ok::<_, LiveError>((cert.pem(), key.serialize_pem()))
    };
    let (agent_cert, agent_key) = leaf(
        agent_names.to_vec(),
        "autothrottle agent",
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (coordinator_cert, coordinator_key) = leaf(
        Vec::new(),
        "autothrottle coordinator",
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    Ok(Bundle {
        ca: ca_pem,
        ca_key: ca_key_pem,
        agent_cert,
        agent_key,
        coordinator_cert,
        coordinator_key,
    })
}

impl Bundle {
    /// Writes `ca.pem`, `ca-key.pem`, `agent.pem`, `agent-key.pem`, `coordinator.pem` and
    /// `coordinator-key.pem` into `dir` (created if missing), keys readable by the owner only.
    /// Refuses to overwrite any of them: a CA key that existed may have signed certificates in
    /// use.
    pub fn write(&self, dir: &Path) -> Result<BundleFiles, LiveError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(dir).map_err(|e| config_error("cannot create", dir, e))?;
        let files = BundleFiles {
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca-key.pem"),
            agent_cert: dir.join("agent.pem"),
            agent_key: dir.join("agent-key.pem"),
            coordinator_cert: dir.join("coordinator.pem"),
            coordinator_key: dir.join("coordinator-key.pem"),
        };
        let parts = [
            (&files.ca, &self.ca, 0o644),
            (&files.ca_key, &self.ca_key, 0o600),
            (&files.agent_cert, &self.agent_cert, 0o644),
            (&files.agent_key, &self.agent_key, 0o600),
            (&files.coordinator_cert, &self.coordinator_cert, 0o644),
            (&files.coordinator_key, &self.coordinator_key, 0o600),
        ];
        if let Some((p, _, _)) = parts.iter().find(|(p, _, _)| p.exists()) {
            return Err(config_error("will not overwrite", p, "it exists already"));
        }
        for (path, text, mode) in parts {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(path)
                .map_err(|e| config_error("cannot create", path, e))?;
            f.write_all(text.as_bytes())
                .map_err(|e| config_error("cannot write", path, e))?;
        }
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_come_out_of_every_address_form() {
        assert_eq!(host_of("10.0.0.5:7070"), "10.0.0.5");
        assert_eq!(host_of("node-1.example:7070"), "node-1.example");
        assert_eq!(host_of("[::1]:7070"), "::1");
        assert_eq!(host_of("::1"), "::1");
        assert!(all_loopback(["127.0.0.1:7070", "localhost:1", "[::1]:2"]));
        assert!(!all_loopback(["127.0.0.1:7070", "10.0.0.5:7070"]));
        assert!(!all_loopback(["not an address"]));
    }

    #[test]
    fn bad_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        let e = server(&empty, &empty, None).err().unwrap().to_string();
        assert!(
            e.contains("empty.pem") && e.contains("no certificate"),
            "{e}"
        );
        let missing = dir.path().join("missing.pem");
        let e = client(&missing, None, None).err().unwrap().to_string();
        assert!(e.contains("missing.pem"), "{e}");
        let bundle = generate(&["a".into()], 1).unwrap();
        let files = bundle.write(dir.path()).unwrap();
        // A key that does not belong to the certificate.
        let e = server(&files.agent_cert, &files.coordinator_key, None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("do not make a server identity"), "{e}");
        // Never overwrites a CA.
        let e = bundle.write(dir.path()).err().unwrap().to_string();
        assert!(e.contains("will not overwrite"), "{e}");
        assert!(generate(&[], 1).is_err());
        assert!(generate(&["a".into()], 0).is_err());
    }

    #[test]
    fn keys_are_private_to_the_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let files = generate(&["a".into()], 1)
            .unwrap()
            .write(dir.path())
            .unwrap();
        for key in [&files.ca_key, &files.agent_key, &files.coordinator_key] {
            let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
    }
}
