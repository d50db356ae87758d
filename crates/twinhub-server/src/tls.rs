//! TLS with rustls: server configurations from PEM files, and a
//! self-signed CA plus server certificate for a quick secure setup
//! (`twinhub cert`, the demo, tests).
//!
//! May call: nothing of twinhub (a leaf).

use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("tls: {0}")]
    Config(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn pem_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut read(path)?.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::File {
            path: path.display().to_string(),
            reason: format!("not a PEM certificate chain: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::File {
            path: path.display().to_string(),
            reason: "holds no certificate".into(),
        });
    }
    Ok(certs)
}

/// A server configuration from a PEM certificate chain and private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config_with_clients(cert, key, None)
}

/// As `server_config`; with `client_ca`, clients may also present a
/// certificate signed by that CA (devices: CN = device id). Clients without
/// one still connect and log in with a password.
pub fn server_config_with_clients(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = pem_certs(cert)?;
    let key = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .map_err(|e| TlsError::File {
            path: key.display().to_string(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| TlsError::File {
            path: key.display().to_string(),
            reason: "holds no private key".into(),
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in pem_certs(ca)? {
                roots.add(c).map_err(|e| TlsError::File {
                    path: ca.display().to_string(),
                    reason: e.to_string(),
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(cfg))
}

/// One DER element: (tag, contents, what follows).
fn der_next(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &x| (a << 8) | x as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The subject common name of a DER certificate (already verified by the
/// TLS layer; this only reads it).
pub fn subject_cn(der: &[u8]) -> Option<String> {
    let (_, cert, _) = der_next(der).filter(|(t, _, _)| *t == 0x30)?;
    let (_, tbs, _) = der_next(cert).filter(|(t, _, _)| *t == 0x30)?;
    let mut rest = tbs;
    let mut fields = Vec::with_capacity(6);
    while let Some((tag, content, r)) = der_next(rest) {
        if tag != 0xA0 {
            fields.push(content);
        }
        rest = r;
        if fields.len() == 5 {
            break;
        }
    }
    // serial, signature algorithm, issuer, validity, subject
    let mut rdns = *fields.get(4)?;
    while let Some((_, set, r)) = der_next(rdns) {
        rdns = r;
        let mut attrs = set;
        while let Some((_, attr, r2)) = der_next(attrs) {
            attrs = r2;
            let (oid_tag, oid, value) = der_next(attr)?;
            if oid_tag == 0x06 && oid == [0x55, 0x04, 0x03] {
                let (_, text, _) = der_next(value)?;
                return String::from_utf8(text.to_vec()).ok();
            }
        }
    }
    None
}

/// PEM texts of a generated CA and a server certificate it signed.
pub struct Generated {
    pub ca_cert: String,
    pub ca_key: String,
    pub cert: String,
    pub key: String,
}

/// A CA and a server certificate for `hosts` (DNS names or IP addresses).
pub fn generate(hosts: &[String]) -> Result<Generated, TlsError> {
    use rcgen::{CertificateParams, DnType, KeyPair};
    let err = |e: rcgen::Error| TlsError::Config(e.to_string());
    let ca_key = KeyPair::generate().map_err(err)?;
    let ca_cert = ca_params()?.self_signed(&ca_key).map_err(err)?;
    let mut server = CertificateParams::new(hosts.to_vec()).map_err(err)?;
    server.distinguished_name.push(
        DnType::CommonName,
        hosts.first().map(String::as_str).unwrap_or("twinhub"),
    );
    let key = KeyPair::generate().map_err(err)?;
    let cert = server.signed_by(&key, &ca_cert, &ca_key).map_err(err)?;
    Ok(Generated {
        ca_cert: ca_cert.pem(),
        ca_key: ca_key.serialize_pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn ca_params() -> Result<rcgen::CertificateParams, TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
    let mut ca = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "twinhub local CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(ca)
}

/// A client certificate for a device (CN = device id) signed by the local
/// CA whose private key is `ca_key_pem`: (certificate PEM, key PEM).
pub fn issue_client(ca_key_pem: &str, device_id: &str) -> Result<(String, String), TlsError> {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
    let err = |e: rcgen::Error| TlsError::Config(e.to_string());
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(err)?;
    // The issuer is identified by its name and key, which this rebuilds.
    let issuer = ca_params()?.self_signed(&ca_key).map_err(err)?;
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    p.distinguished_name.push(DnType::CommonName, device_id);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().map_err(err)?;
    let cert = p.signed_by(&key, &issuer, &ca_key).map_err(err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes a generated set into `dir` (keys mode 0600): ca.pem, ca-key.pem,
/// server.pem, server-key.pem.
pub fn write_generated(dir: &Path, g: &Generated) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    for (name, text, private) in [
        ("ca.pem", &g.ca_cert, false),
        ("ca-key.pem", &g.ca_key, true),
        ("server.pem", &g.cert, false),
        ("server-key.pem", &g.key, true),
    ] {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(if private { 0o600 } else { 0o644 })
            .open(dir.join(name))?;
        f.write_all(text.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_certificates_carry_the_device_id() {
        let g = generate(&["localhost".into()]).unwrap();
        let (cert, _) = issue_client(&g.ca_key, "pump-7").unwrap();
        let der = rustls_pemfile::certs(&mut cert.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(subject_cn(der.as_ref()).as_deref(), Some("pump-7"));
        assert_eq!(subject_cn(&[0x30, 0x03, 0x02]), None, "truncated");
        assert_eq!(subject_cn(b""), None);
    }

    #[test]
    fn generated_certificates_load() {
        let dir = tempfile::tempdir().unwrap();
        let g = generate(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        write_generated(dir.path(), &g).unwrap();
        server_config(
            &dir.path().join("server.pem"),
            &dir.path().join("server-key.pem"),
        )
        .unwrap();
        let e = server_config(
            &dir.path().join("ca-key.pem"),
            &dir.path().join("server-key.pem"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("ca-key.pem"), "{e}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(dir.path().join("server-key.pem"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }
}

/// An HTTPS listener for `axum::serve`: TCP accepts feed handshakes that
/// run concurrently (a slow client never holds up the next), and finished
/// TLS streams are handed to the HTTP server in order of completion.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )>,
    addr: std::net::SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(
        listener: tokio::net::TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
        handshake_timeout: std::time::Duration,
    ) -> std::io::Result<TlsListener> {
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let accept_task = tokio::spawn(async move {
            loop {
                let (sock, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "HTTPS accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    break;
                }
                let _ = sock.set_nodelay(true);
                let (a, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(handshake_timeout, a.accept(sock)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            rx,
            addr,
            accept_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// The peer address of an HTTP request over plain TCP or TLS (axum's
/// `ConnectInfo<SocketAddr>` only knows its own listener).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// A plain HTTP listener whose connections send small writes at once
/// (`TCP_NODELAY`). Without it an event stream's first event, written
/// after its headers, waited for the client's delayed ACK: 40 ms on
/// Linux (`twinhub bench rules`, the first alarm of every phase).
pub struct PlainListener(tokio::net::TcpListener);

pub fn plain(l: tokio::net::TcpListener) -> PlainListener {
    PlainListener(l)
}

impl axum::serve::Listener for PlainListener {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = axum::serve::Listener::accept(&mut self.0).await;
        let _ = io.set_nodelay(true);
        (io, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, PlainListener>>
    for PeerAddr
{
    fn connect_info(s: axum::serve::IncomingStream<'_, PlainListener>) -> Self {
        PeerAddr(*s.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for PeerAddr
{
    fn connect_info(s: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        PeerAddr(*s.remote_addr())
    }
}
