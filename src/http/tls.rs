//! TLS with rustls, from Gunicorn's settings (`certfile`, `keyfile`,
//! `ca_certs`, `cert_reqs`, `ciphers`). The connection is driven by hand:
//! ciphertext moves through the shard's own socket reads and writes, and one
//! `Session` per connection holds the rustls state. It sits behind a mutex
//! because a streamed WSGI body is read on the app's thread.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, SupportedCipherSuite};

/// The server side of TLS, made once at start-up and shared by every shard.
pub struct Tls {
    pub config: Arc<ServerConfig>,
    /// The server's certificate in PEM, for the ASGI `tls` extension.
    pub server_cert_pem: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

/// Gunicorn's TLS settings.
pub struct Settings<'a> {
    pub certfile: &'a Path,
    pub keyfile: Option<&'a Path>,
    pub ca_certs: Option<&'a Path>,
    /// Python's ssl.CERT_NONE (0), CERT_OPTIONAL (1) or CERT_REQUIRED (2).
    pub cert_reqs: u8,
    pub ciphers: Option<&'a str>,
}

/// The suites rustls offers with ring, with their OpenSSL names.
const SUITES: &[(&str, SupportedCipherSuite)] = &[
    (
        "TLS_AES_256_GCM_SHA384",
        ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
    ),
    (
        "TLS_AES_128_GCM_SHA256",
        ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
    ),
    (
        "TLS_CHACHA20_POLY1305_SHA256",
        ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ),
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// The suites an OpenSSL cipher string selects, in its order. As with
/// OpenSSL, it never turns TLS 1.3 suites off, unknown names are skipped, and
/// selecting no TLS 1.2 suite at all is an error. Keywords (`DEFAULT`,
/// `HIGH`, `ECDHE`...) select every suite rustls has; exclusions (`!x`, `-x`)
/// and modifiers (`@SECLEVEL`) are ignored.
fn select_suites(ciphers: &str) -> Result<Vec<SupportedCipherSuite>, String> {
    let tls13 = || SUITES[..3].iter().map(|(_, s)| *s);
    let mut chosen: Vec<SupportedCipherSuite> = tls13().collect();
    for name in ciphers.split([':', ',', ' ']).filter(|n| !n.is_empty()) {
        if name.starts_with(['!', '-', '+', '@']) {
            continue;
        }
        let all_keyword = matches!(
            name,
            "DEFAULT" | "ALL" | "HIGH" | "ECDHE" | "EECDH" | "AESGCM" | "CHACHA20" | "kECDHE"
        );
        for (openssl, suite) in &SUITES[3..] {
            let iana = suite.suite().as_str().unwrap_or_default();
            if (all_keyword || name == *openssl || name == iana) && !chosen.contains(suite) {
                chosen.push(*suite);
            }
        }
    }
    if chosen.len() == 3 {
        return Err(format!(
            "ciphers '{ciphers}' selects no TLS 1.2 cipher turbo supports (supported: {})",
            SUITES[3..]
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(chosen)
}

impl Tls {
    pub fn load(settings: &Settings<'_>) -> Result<Tls, String> {
        let certfile = settings.certfile;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certfile)
            .and_then(|certs| certs.collect())
            .map_err(|e| format!("cannot read the certificate {}: {e}", certfile.display()))?;
        let Some(leaf) = certs.first() else {
            return Err(format!("no certificate in {}", certfile.display()));
        };
        let server_cert_pem = pem(leaf);
        // Without a keyfile the key is read from the certificate file, as
        // Python's load_cert_chain does.
        let keyfile = settings.keyfile.unwrap_or(certfile);
        let key = PrivateKeyDer::from_pem_file(keyfile).map_err(|e| {
            format!(
                "cannot read a private key from {} ({e}); encrypted keys are not supported",
                keyfile.display()
            )
        })?;
        let suites = match settings.ciphers {
            Some(ciphers) => select_suites(ciphers)?,
            None => SUITES.iter().map(|(_, s)| *s).collect(),
        };
        let provider = Arc::new(CryptoProvider {
            cipher_suites: suites,
            ..ring::default_provider()
        });
        let verifier = match settings.cert_reqs {
            0 => WebPkiClientVerifier::no_client_auth(),
            1 | 2 => {
                let Some(ca) = settings.ca_certs else {
                    return Err(
                        "cert_reqs above 0 needs ca_certs, the CAs that sign client \
                                certificates"
                            .into(),
                    );
                };
                let mut roots = RootCertStore::empty();
                let cas = CertificateDer::pem_file_iter(ca)
                    .map_err(|e| format!("cannot read ca_certs {}: {e}", ca.display()))?;
                roots.add_parsable_certificates(cas.flatten());
                let builder =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                let builder = if settings.cert_reqs == 1 {
                    builder.allow_unauthenticated()
                } else {
                    builder
                };
                builder
                    .build()
                    .map_err(|e| format!("cannot use ca_certs {}: {e}", ca.display()))?
            }
            n => return Err(format!("invalid cert_reqs {n} (expected 0, 1 or 2)")),
        };
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| format!("TLS: {} and its key: {e}", certfile.display()))?;
        // Python's server contexts prefer the server's cipher order.
        config.ignore_client_order = true;
        Ok(Tls {
            config: Arc::new(config),
            server_cert_pem,
        })
    }
}

/// A certificate as PEM, the way Python's ssl.DER_cert_to_PEM_cert writes it.
fn pem(der: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// One connection's TLS state.
pub struct Session {
    conn: ServerConnection,
    /// Decrypted bytes not yet read.
    plain: Vec<u8>,
    /// The client sent close_notify.
    closed: bool,
}

pub type SharedSession = Arc<Mutex<Session>>;

/// The session, for a moment. A panic while holding it aborts the process
/// (panic = "abort"), so a poisoned lock cannot be seen in practice.
pub fn lock(session: &SharedSession) -> std::sync::MutexGuard<'_, Session> {
    session
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the ASGI `tls` extension reports about a connection.
pub struct Facts {
    pub version: Option<u16>,
    pub cipher_suite: Option<u16>,
    pub client_chain: Vec<String>,
    /// The client certificate's subject, as RFC 4514 writes it.
    pub client_name: Option<String>,
}

impl Session {
    pub fn new(tls: &Tls) -> Result<Session, rustls::Error> {
        Ok(Session {
            conn: ServerConnection::new(tls.config.clone())?,
            plain: Vec::new(),
            closed: false,
        })
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Takes ciphertext read from the socket; what it decrypts to waits in
    /// the session for `take`.
    pub fn feed(&mut self, mut cipher: &[u8]) -> Result<(), rustls::Error> {
        while !cipher.is_empty() {
            match self.conn.read_tls(&mut cipher) {
                Ok(0) => {
                    // After close_notify nothing more is read.
                    self.closed = true;
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) => return Err(rustls::Error::General(e.to_string())),
            }
            let state = self.conn.process_new_packets()?;
            let ready = state.plaintext_bytes_to_read();
            if ready > 0 {
                let at = self.plain.len();
                self.plain.resize(at + ready, 0);
                let read = self.conn.reader().read(&mut self.plain[at..]).unwrap_or(0);
                self.plain.truncate(at + read);
            }
            if state.peer_has_closed() {
                self.closed = true;
            }
        }
        Ok(())
    }

    /// Whether decrypted bytes are waiting.
    pub fn has_plain(&self) -> bool {
        !self.plain.is_empty()
    }

    /// Whether the client said it is done (close_notify).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Moves decrypted bytes into `dst`, as many as fit; returns how many.
    pub fn take_into(&mut self, dst: &mut [std::mem::MaybeUninit<u8>]) -> usize {
        let n = dst.len().min(self.plain.len());
        for (d, b) in dst.iter_mut().zip(self.plain.drain(..n)) {
            d.write(b);
        }
        n
    }

    /// Moves every decrypted byte out.
    pub fn take_all(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.plain)
    }

    /// Appends the records waiting to be sent to `out`.
    pub fn pending_output(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            if self.conn.write_tls(out).is_err() {
                break;
            }
        }
    }

    /// Encrypts `data` into records appended to `out`.
    pub fn encrypt(&mut self, mut data: &[u8], out: &mut Vec<u8>) {
        while !data.is_empty() {
            let n = self.conn.writer().write(data).unwrap_or(0);
            data = &data[n..];
            self.pending_output(out);
            if n == 0 {
                break;
            }
        }
        self.pending_output(out);
    }

    /// Queues close_notify and appends it to `out`.
    pub fn close_notify(&mut self, out: &mut Vec<u8>) {
        self.conn.send_close_notify();
        self.pending_output(out);
    }

    pub fn facts(&self) -> Facts {
        Facts {
            version: self.conn.protocol_version().map(u16::from),
            cipher_suite: self
                .conn
                .negotiated_cipher_suite()
                .map(|s| u16::from(s.suite())),
            client_chain: self
                .conn
                .peer_certificates()
                .map(|chain| chain.iter().map(pem).collect())
                .unwrap_or_default(),
            client_name: self
                .conn
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| subject_name(leaf.as_ref())),
        }
    }
}

/// One DER element at the start of `der`: its tag, its contents and what
/// follows it.
fn tlv(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |len, &b| len << 8 | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// A certificate's subject as RFC 4514 writes it (`CN=alice,O=Acme,C=US`),
/// for the ASGI extension's `client_cert_name`.
fn subject_name(cert: &[u8]) -> Option<String> {
    let (_, certificate, _) = tlv(cert)?;
    let (_, mut tbs, _) = tlv(certificate)?;
    if tbs.first() == Some(&0xa0) {
        tbs = tlv(tbs)?.2; // the explicit version
    }
    // serialNumber, signature, issuer and validity come before the subject.
    for _ in 0..4 {
        tbs = tlv(tbs)?.2;
    }
    let (_, mut name, _) = tlv(tbs)?;
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (_, mut set, rest) = tlv(name)?;
        name = rest;
        let mut avas = Vec::new();
        while !set.is_empty() {
            let (_, ava, rest) = tlv(set)?;
            set = rest;
            let (_, oid, rest) = tlv(ava)?;
            let (tag, value, _) = tlv(rest)?;
            avas.push(format!("{}={}", attribute(oid), escape(&text(tag, value))));
        }
        rdns.push(avas.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

fn attribute(oid: &[u8]) -> String {
    const DC: &[u8] = &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19];
    const UID: &[u8] = &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01];
    let short = match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x09] => "STREET",
        [0x55, 0x04, 0x0a] => "O",
        [0x55, 0x04, 0x0b] => "OU",
        DC => "DC",
        UID => "UID",
        _ => "",
    };
    if !short.is_empty() {
        return short.to_string();
    }
    // Dotted decimal: the first byte holds two arcs, then base-128 numbers.
    let mut arcs = Vec::new();
    let mut value = 0u64;
    for &b in oid {
        value = value << 7 | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                arcs.push((value.min(80) / 40).to_string());
                arcs.push((value - value.min(80) / 40 * 40).to_string());
            } else {
                arcs.push(value.to_string());
            }
            value = 0;
        }
    }
    arcs.join(".")
}

fn text(tag: u8, value: &[u8]) -> String {
    match tag {
        // T61String, read as latin-1.
        0x14 => value.iter().map(|&b| char::from(b)).collect(),
        // BMPString: UTF-16, big-endian.
        0x1e => {
            let units: Vec<u16> = value
                .chunks_exact(2)
                .map(|p| u16::from_be_bytes([p[0], p[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        _ => String::from_utf8_lossy(value).into_owned(),
    }
}

/// RFC 4514 section 2.4 escaping.
fn escape(value: &str) -> String {
    let last = value.chars().count().saturating_sub(1);
    let mut out = String::new();
    for (i, c) in value.chars().enumerate() {
        match c {
            '\\' | '"' | '+' | ',' | ';' | '<' | '>' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

/// Whether `first`, a connection's first byte, can open a TLS handshake.
pub fn looks_like_tls(first: u8) -> bool {
    first == 0x16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cipher_strings() {
        let names = |s: &str| {
            select_suites(s).map(|v| v.iter().map(|s| u16::from(s.suite())).collect::<Vec<_>>())
        };
        assert_eq!(
            names("ECDHE-RSA-AES128-GCM-SHA256").unwrap(),
            vec![0x1302, 0x1301, 0x1303, 0xc02f]
        );
        assert_eq!(
            names("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384:FOO").unwrap(),
            vec![0x1302, 0x1301, 0x1303, 0xc030]
        );
        assert_eq!(names("HIGH:!aNULL").unwrap().len(), SUITES.len());
        assert!(names("AES128-SHA").is_err());
    }

    #[test]
    fn subject_names() {
        assert_eq!(escape(" a,b+c "), "\\ a\\,b\\+c\\ ");
        assert_eq!(escape("#x"), "\\#x");
        assert_eq!(attribute(&[0x55, 0x04, 0x03]), "CN");
        // 1.2.840.113549.1.9.1 (emailAddress)
        assert_eq!(
            attribute(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01]),
            "1.2.840.113549.1.9.1"
        );
        assert_eq!(
            tlv(&[0x30, 0x01, 0x05, 0xff]),
            Some((0x30, &[5u8][..], &[0xffu8][..]))
        );
        assert_eq!(tlv(&[0x30, 0x05, 0x05]), None);
    }

    #[test]
    fn missing_files_are_clear_errors() {
        let err = Tls::load(&Settings {
            certfile: Path::new("/nonexistent/turbo/nope.pem"),
            keyfile: None,
            ca_certs: None,
            cert_reqs: 0,
            ciphers: None,
        })
        .err()
        .unwrap_or_default();
        assert!(err.contains("nope.pem"), "{err}");
    }
}
