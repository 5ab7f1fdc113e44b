//! TLS (rustls via tonic): one port serves clients and peers, so the server asks every caller
//! for a certificate signed by the cluster CA but does not require one (client mTLS is
//! optional); peer calls require one whose common name is `node-<id>` of the calling node (see
//! `api::peer`). Nodes dial each other over TLS presenting their own certificate.
//! `holdfast certs` generates a CA and node and client certificates for trying it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A node's certificate, key and the cluster CA (PEM files).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// The PEM contents of [`TlsFiles`], read once at start.
#[derive(Clone)]
pub struct TlsPem {
    identity: Identity,
    ca: Certificate,
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the TLS {what} {}", path.display()))
}

impl TlsPem {
    pub fn load(files: &TlsFiles) -> anyhow::Result<TlsPem> {
        Ok(TlsPem {
            identity: Identity::from_pem(
                read(&files.cert, "certificate")?,
                read(&files.key, "key")?,
            ),
            ca: Certificate::from_pem(read(&files.ca, "CA certificate")?),
        })
    }

    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .client_auth_optional(true)
    }

    /// For this node's calls to its peers.
    pub fn peer_client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
    }
}

/// Longest a TLS handshake on the HTTP listener may take.
pub const HTTPS_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;

/// TLS for the node's HTTP listener (`/metrics`, the console) when the node runs TLS: the same
/// certificate, and client certificates verified against the cluster CA but not required, as on
/// the gRPC port (a listed one authenticates its caller; see `api::auth`).
pub fn https_acceptor(files: &TlsFiles) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certificates = |path: &Path, what: &str| -> anyhow::Result<Vec<CertificateDer<'static>>> {
        let pem = read(path, what)?;
        CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("the TLS {what} {}", path.display()))
    };
    let chain = certificates(&files.cert, "certificate")?;
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key, "key")?)
        .with_context(|| format!("the TLS key {}", files.key.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in certificates(&files.ca, "CA certificate")? {
        roots.add(ca).context("the TLS CA certificate")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::clone(&provider),
    )
    .allow_unauthenticated()
    .build()
    .context("client certificate verifier")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("the node's TLS certificate and key")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The common name of the subject of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = certificate
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(name)
}

/// The common name of the verified client certificate of a call (http-level extensions, as
/// a tower layer sees them), if it presented one.
pub fn peer_common_name(extensions: &tonic::codegen::http::Extensions) -> Option<String> {
    let info = extensions
        .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>(
        )?;
    let certificates = info.peer_certs()?;
    common_name(certificates.first()?.as_ref())
}

/// Common name of node `id`'s certificate.
pub fn node_common_name(id: u64) -> String {
    format!("node-{id}")
}

/// What `holdfast certs` makes.
pub struct CertsRequest {
    pub out: PathBuf,
    /// (node id, host name or IP address it is reached at).
    pub nodes: Vec<(u64, String)>,
    /// Common names (principals) of client certificates.
    pub clients: Vec<String>,
    /// Valid until this many days from today (negative: already expired, for tests).
    pub valid_days: i64,
    /// Client certificates that expired yesterday (to check that nodes refuse them).
    pub expired_clients: Vec<String>,
}

/// Days since 1970-01-01 → (year, month, day) (the civil calendar; Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month, day)
}

/// The civil date `days_from_now` days from today.
fn date(days_from_now: i64) -> (i32, u8, u8) {
    let today = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    civil_from_days(today + days_from_now)
}

/// Writes `ca.pem`, `ca.key`, `node-<id>.pem`/`.key` and `client-<name>.pem`/`.key` into
/// `request.out`; returns the files written.
pub fn generate(request: &CertsRequest) -> anyhow::Result<Vec<PathBuf>> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    std::fs::create_dir_all(&request.out)
        .with_context(|| format!("creating {}", request.out.display()))?;
    let mut written = Vec::new();
    let mut write = |name: String, text: String| -> anyhow::Result<()> {
        let path = request.out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    let valid_for = |params: &mut CertificateParams, days: i64| {
        let (year, month, day) = date(days.min(0) - 1);
        params.not_before = rcgen::date_time_ymd(year, month, day);
        let (year, month, day) = date(days);
        params.not_after = rcgen::date_time_ymd(year, month, day);
    };
    let valid = |params: &mut CertificateParams| valid_for(params, request.valid_days);

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Holdfast cluster CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    valid(&mut ca_params);
    write("ca.key".into(), ca_key.serialize_pem())?;
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;
    write("ca.pem".into(), ca.pem())?;

    for (id, host) in &request.nodes {
        let key = KeyPair::generate()?;
        let mut names = vec![host.clone(), "localhost".to_owned(), "127.0.0.1".to_owned()];
        names.dedup();
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, node_common_name(*id));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        valid(&mut params);
        let cert = params.signed_by(&key, &ca)?;
        write(format!("node-{id}.pem"), cert.pem())?;
        write(format!("node-{id}.key"), key.serialize_pem())?;
    }
    let clients = request.clients.iter().map(|name| (name, false));
    let expired = request.expired_clients.iter().map(|name| (name, true));
    for (name, expired) in clients.chain(expired) {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, name.clone());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            valid_for(&mut params, -1);
        } else {
            valid(&mut params);
        }
        let cert = params.signed_by(&key, &ca)?;
        write(format!("client-{name}.pem"), cert.pem())?;
        write(format!("client-{name}.key"), key.serialize_pem())?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_819), (2027, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn generated_certificates_carry_their_common_names() {
        let dir = tempfile::tempdir().unwrap();
        let written = generate(&CertsRequest {
            out: dir.path().to_path_buf(),
            nodes: vec![(1, "127.0.0.1".into()), (2, "db2.example".into())],
            clients: vec!["alice".into()],
            valid_days: 30,
            expired_clients: Vec::new(),
        })
        .unwrap();
        assert_eq!(written.len(), 8);
        let pem = std::fs::read_to_string(dir.path().join("node-2.pem")).unwrap();
        let der = pem_to_der(&pem);
        assert_eq!(common_name(&der).as_deref(), Some("node-2"));
        let pem = std::fs::read_to_string(dir.path().join("client-alice.pem")).unwrap();
        assert_eq!(common_name(&pem_to_der(&pem)).as_deref(), Some("alice"));
        let files = TlsFiles {
            cert: dir.path().join("node-1.pem"),
            key: dir.path().join("node-1.key"),
            ca: dir.path().join("ca.pem"),
        };
        TlsPem::load(&files).unwrap();
    }

    fn pem_to_der(pem: &str) -> Vec<u8> {
        let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        parsed.contents
    }
}
