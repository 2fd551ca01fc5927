//! The server side of STARTTLS: the certificate and key that the dummy SMTP engine offers
//! to clients that are not allowlisted (postscreen hands those sessions to `tlsproxy(8)`).
//!
//! [`load_acceptor`] reads `tls_cert_file` and `tls_key_file` once at start; a file that
//! cannot be used stops the daemon with an error that names it and says what is wrong.
//! [`acceptor_from_pem`] does the same work on bytes already read, so it is tested without
//! files. TLS runs on rustls with the *ring* provider (TLS 1.2 and 1.3, no client
//! certificates): it builds with the C compiler alone.
//!
//! [`Summary`] describes an established session in the words tlsproxy logs:
//! `TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)`.

use std::{
    fmt,
    io::{self, Read as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    CipherSuite, ProtocolVersion, ServerConfig, ServerConnection,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
pub(crate) use tokio_rustls::TlsAcceptor;

/// The largest certificate or key file read. A certificate chain is a few kilobytes.
pub(crate) const MAX_PEM_FILE: u64 = 1 << 20;

/// The most certificates taken from the certificate file (the server's and its chain).
pub(crate) const MAX_CHAIN: usize = 16;

/// A certificate or key that cannot be used. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: larger than {MAX_PEM_FILE} bytes; is this a certificate or key file?")]
    TooLarge { path: PathBuf },
    #[error("{path}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file")]
    NoCertificate { path: PathBuf },
    #[error("{path}: certificate {number}: {why}")]
    BadCertificate {
        path: PathBuf,
        number: usize,
        why: String,
    },
    #[error("{path}: more than {MAX_CHAIN} certificates")]
    ChainTooLong { path: PathBuf },
    #[error(
        "{path}: no PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE \
         KEY) in the file"
    )]
    NoKey { path: PathBuf },
    #[error("{path}: private key: {why}")]
    BadKey { path: PathBuf, why: String },
    /// The TLS library refused its own settings (a build problem, not a file problem).
    #[error("TLS settings: {why}")]
    Settings { why: String },
    #[error("{key} does not fit {cert}: {why}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        why: String,
    },
}

/// Reads the PEM certificate chain (server certificate first) and private key and builds the
/// acceptor that every STARTTLS session shares. The key may be in the certificate file.
pub(crate) fn load_acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, TlsError> {
    let cert_pem = read_pem_file(cert_file)?;
    let key_pem = read_pem_file(key_file)?;
    acceptor_from_pem(&cert_pem, cert_file, &key_pem, key_file)
}

/// [`load_acceptor`] on the files' contents; the paths only name them in errors.
pub(crate) fn acceptor_from_pem(
    cert_pem: &[u8],
    cert_file: &Path,
    key_pem: &[u8],
    key_file: &Path,
) -> Result<TlsAcceptor, TlsError> {
    server_config(cert_pem, cert_file, key_pem, key_file)
        .map(|config| TlsAcceptor::from(Arc::new(config)))
}

fn server_config(
    cert_pem: &[u8],
    cert_file: &Path,
    key_pem: &[u8],
    key_file: &Path,
) -> Result<ServerConfig, TlsError> {
    let chain = parse_chain(cert_pem, cert_file)?;
    let key = parse_key(key_pem, key_file)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Settings { why: e.to_string() })?;
    builder
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
                cert: cert_file.to_path_buf(),
                key: key_file.to_path_buf(),
                why: "the private key is not the certificate's key".into(),
            },
            other => TlsError::BadKey {
                path: key_file.to_path_buf(),
                why: other.to_string(),
            },
        })
}

fn read_pem_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        return Err(TlsError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

fn parse_chain(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut chain = Vec::new();
    for (i, item) in CertificateDer::pem_slice_iter(pem).enumerate() {
        if i == MAX_CHAIN {
            return Err(TlsError::ChainTooLong {
                path: path.to_path_buf(),
            });
        }
        let cert = item.map_err(|e| TlsError::BadCertificate {
            path: path.to_path_buf(),
            number: i + 1,
            why: e.to_string(),
        })?;
        // Catch a damaged certificate here, with its file, rather than at the first client.
        rustls::server::ParsedCertificate::try_from(&cert).map_err(|e| {
            TlsError::BadCertificate {
                path: path.to_path_buf(),
                number: i + 1,
                why: e.to_string(),
            }
        })?;
        chain.push(cert);
    }
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

fn parse_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_path_buf(),
        },
        other => TlsError::BadKey {
            path: path.to_path_buf(),
            why: other.to_string(),
        },
    })
}

/// An established TLS session as tlsproxy describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Summary {
    /// `TLSv1.3` or `TLSv1.2`.
    pub(crate) protocol: &'static str,
    /// The cipher's OpenSSL name, as Postfix logs it (`TLS_AES_256_GCM_SHA384`,
    /// `ECDHE-RSA-AES256-GCM-SHA384`).
    pub(crate) cipher: &'static str,
    /// The cipher's key size.
    pub(crate) bits: u16,
}

impl Summary {
    /// The session's protocol and cipher, once the handshake is done.
    pub(crate) fn of(connection: &ServerConnection) -> Self {
        let protocol = match connection.protocol_version() {
            Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
            Some(other) => other.as_str().unwrap_or("TLS"),
            None => "TLS",
        };
        let (cipher, bits) = match connection.negotiated_cipher_suite() {
            Some(suite) => cipher_name(suite.suite()),
            None => ("unknown", 0),
        };
        Self {
            protocol,
            cipher,
            bits,
        }
    }
}

/// `TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)`
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} with cipher {} ({}/{} bits)",
            self.protocol, self.cipher, self.bits, self.bits
        )
    }
}

/// The OpenSSL name and key size of each suite the ring provider offers; others by their
/// IANA name.
fn cipher_name(suite: CipherSuite) -> (&'static str, u16) {
    match suite {
        CipherSuite::TLS13_AES_256_GCM_SHA384 => ("TLS_AES_256_GCM_SHA384", 256),
        CipherSuite::TLS13_AES_128_GCM_SHA256 => ("TLS_AES_128_GCM_SHA256", 128),
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => ("TLS_CHACHA20_POLY1305_SHA256", 256),
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => {
            ("ECDHE-ECDSA-AES256-GCM-SHA384", 256)
        }
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => {
            ("ECDHE-ECDSA-AES128-GCM-SHA256", 128)
        }
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => {
            ("ECDHE-ECDSA-CHACHA20-POLY1305", 256)
        }
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => ("ECDHE-RSA-AES256-GCM-SHA384", 256),
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => ("ECDHE-RSA-AES128-GCM-SHA256", 128),
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => {
            ("ECDHE-RSA-CHACHA20-POLY1305", 256)
        }
        other => (other.as_str().unwrap_or("unknown"), 0),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A certificate authority and a server certificate for `name` that it signed, as PEM:
    /// (CA certificate, server certificate, server key).
    pub(crate) fn test_pki(name: &str) -> (String, String, String) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "smtp-screen test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (ca.pem(), cert.pem(), key.serialize_pem())
    }

    /// The error text of a refused certificate or key.
    fn refused(result: Result<TlsAcceptor, TlsError>) -> String {
        match result {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    fn build(cert: &str, key: &str) -> Result<TlsAcceptor, TlsError> {
        acceptor_from_pem(
            cert.as_bytes(),
            Path::new("/etc/smtp-screen/cert.pem"),
            key.as_bytes(),
            Path::new("/etc/smtp-screen/key.pem"),
        )
    }

    #[test]
    fn a_certificate_and_its_key_make_an_acceptor() {
        let (ca, cert, key) = test_pki("mx.example.test");
        build(&cert, &key).unwrap();
        // With its chain, and with the key in the same file.
        let chained = format!("{cert}{ca}");
        build(&chained, &key).unwrap();
        let both = format!("{cert}{key}");
        build(&both, &both).unwrap();
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let (ca, cert, key) = test_pki("mx.example.test");
        let (_, _, other_key) = test_pki("other.example.test");
        let cases: [(String, String, &str); 8] = [
            (
                String::new(),
                key.clone(),
                "/etc/smtp-screen/cert.pem: no PEM certificate",
            ),
            (
                key.clone(),
                key.clone(),
                "/etc/smtp-screen/cert.pem: no PEM certificate",
            ),
            (
                cert.clone(),
                String::new(),
                "/etc/smtp-screen/key.pem: no PEM private key",
            ),
            (
                cert.clone(),
                cert.clone(),
                "/etc/smtp-screen/key.pem: no PEM private key",
            ),
            (
                cert.clone(),
                other_key,
                "/etc/smtp-screen/key.pem does not fit /etc/smtp-screen/cert.pem: the private \
                 key is not the certificate's key",
            ),
            (
                // The CA's certificate first: the key is not its key.
                format!("{ca}{cert}"),
                key.clone(),
                "does not fit",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".into(),
                key.clone(),
                "/etc/smtp-screen/cert.pem: certificate 1:",
            ),
            (
                "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n".into(),
                key.clone(),
                "/etc/smtp-screen/cert.pem: certificate 1:",
            ),
        ];
        for (cert_pem, key_pem, expected) in cases {
            let err = refused(build(&cert_pem, &key_pem));
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        }
        // A truncated certificate.
        let cut = &cert[..cert.len() / 2];
        let err = refused(build(cut, &key));
        assert!(err.starts_with("/etc/smtp-screen/cert.pem"), "{err}");
        // A key block whose contents are not a key.
        let garbage_key = "-----BEGIN PRIVATE KEY-----\naGVsbG8=\n-----END PRIVATE KEY-----\n";
        let err = refused(build(&cert, garbage_key));
        assert!(
            err.starts_with("/etc/smtp-screen/key.pem: private key:"),
            "{err}"
        );
    }

    #[test]
    fn a_long_chain_is_refused() {
        let (_, cert, key) = test_pki("mx.example.test");
        let chain = cert.repeat(MAX_CHAIN + 1);
        let err = refused(build(&chain, &key));
        assert!(err.contains("more than 16 certificates"), "{err}");
        build(&cert.repeat(MAX_CHAIN), &key).unwrap();
    }

    #[test]
    fn files_are_read_and_errors_name_them() {
        let dir = std::env::temp_dir().join(format!("smtp-screen-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (_, cert, key) = test_pki("mx.example.test");
        let cert_file = dir.join("cert.pem");
        let key_file = dir.join("key.pem");
        std::fs::write(&cert_file, &cert).unwrap();
        std::fs::write(&key_file, &key).unwrap();
        load_acceptor(&cert_file, &key_file).unwrap();

        let missing = dir.join("missing.pem");
        let err = refused(load_acceptor(&missing, &key_file));
        assert!(
            err.starts_with(&format!("{}: cannot read:", missing.display())),
            "{err}"
        );
        let huge = dir.join("huge.pem");
        std::fs::write(&huge, vec![b'A'; MAX_PEM_FILE as usize + 1]).unwrap();
        let err = refused(load_acceptor(&cert_file, &huge));
        assert!(
            err.starts_with(&format!("{}: larger than", huge.display())),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn summaries_read_like_tlsproxy() {
        let summary = Summary {
            protocol: "TLSv1.3",
            cipher: "TLS_AES_256_GCM_SHA384",
            bits: 256,
        };
        assert_eq!(
            summary.to_string(),
            "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"
        );
        assert_eq!(
            cipher_name(CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
            ("ECDHE-RSA-AES128-GCM-SHA256", 128)
        );
        assert_eq!(
            cipher_name(CipherSuite::TLS13_CHACHA20_POLY1305_SHA256),
            ("TLS_CHACHA20_POLY1305_SHA256", 256)
        );
        // Every suite the provider offers has an OpenSSL name and a size.
        for suite in rustls::crypto::ring::default_provider().cipher_suites {
            let (name, bits) = cipher_name(suite.suite());
            assert!(bits > 0 && !name.starts_with("TLS13_"), "{suite:?}");
        }
    }
}
