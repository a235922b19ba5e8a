//! TLS certificates of the `tls:` block: PEM pairs loaded and checked at
//! configuration load (start, `-t` and SIGHUP alike), and the choice of one by
//! the client's SNI name.
//!
//! A [`CertStore`] is part of the validated configuration: a certificate file
//! that does not parse, a key that does not match its certificate, or a
//! certificate that names no host refuses the whole configuration (file named),
//! so a reload with a broken file keeps the running certificates serving.
//! Names come from the certificate itself (its DNS subject alternative names,
//! else its subject common name); `*.example.com` matches one label, as in
//! RFC 6125 §6.4.3.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// One `{cert, key}` pair as read from disk.
pub struct PemPair<'a> {
    /// Path of the certificate chain (leaf first), for messages.
    pub cert_path: &'a str,
    /// Its contents.
    pub cert_pem: &'a [u8],
    /// Path of the private key, for messages.
    pub key_path: &'a str,
    /// Its contents.
    pub key_pem: &'a [u8],
}

/// A loaded certificate: the key rustls serves and the names it answers for.
struct Loaded {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
    /// The leaf certificate and the files, to tell whether a reload changed anything.
    identity: (String, String, Vec<u8>),
}

/// Every configured certificate, indexed by name.
#[derive(Clone)]
pub struct CertStore {
    inner: Arc<Inner>,
}

struct Inner {
    loaded: Vec<Loaded>,
    /// Exact names (lowercase) → index into `loaded`; the first pair naming a host wins.
    exact: HashMap<String, usize>,
    /// `*.example.com` stored as `example.com` → index.
    wildcard: HashMap<String, usize>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.inner.loaded.iter().map(|l| (&l.identity.0, &l.names)))
            .finish()
    }
}

impl PartialEq for CertStore {
    fn eq(&self, other: &Self) -> bool {
        self.inner.loaded.len() == other.inner.loaded.len()
            && self
                .inner
                .loaded
                .iter()
                .zip(&other.inner.loaded)
                .all(|(a, b)| a.identity == b.identity)
    }
}

/// Parses one PEM pair; the error says which file is wrong and why.
fn load_pair(pair: &PemPair<'_>) -> Result<Loaded, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pair.cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", pair.cert_path))?;
    let Some(leaf) = chain.first().cloned() else {
        return Err(format!("{}: no PEM certificate in it", pair.cert_path));
    };
    let key = PrivateKeyDer::from_pem_slice(pair.key_pem)
        .map_err(|e| format!("{}: no usable PEM private key: {e}", pair.key_path))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
        format!(
            "{} with {}: the key does not fit the certificate: {e}",
            pair.key_path, pair.cert_path
        )
    })?;
    let names = names_of(&leaf).map_err(|e| format!("{}: {e}", pair.cert_path))?;
    if names.is_empty() {
        return Err(format!(
            "{}: the certificate names no host (no DNS subject alternative name or common name)",
            pair.cert_path
        ));
    }
    Ok(Loaded {
        key: Arc::new(certified),
        names,
        identity: (
            pair.cert_path.to_owned(),
            pair.key_path.to_owned(),
            leaf.to_vec(),
        ),
    })
}

/// The host names a leaf certificate is for, lowercase (DNS subject
/// alternative names, else the subject common name).
pub(crate) fn names_of(leaf: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    Ok(names)
}

impl CertStore {
    /// Loads every pair; `Err` lists `(index, message)` for each bad one.
    pub fn load(pairs: &[PemPair<'_>]) -> Result<CertStore, Vec<(usize, String)>> {
        let mut loaded = Vec::with_capacity(pairs.len());
        let mut errors = Vec::new();
        for (i, p) in pairs.iter().enumerate() {
            match load_pair(p) {
                Ok(l) => loaded.push(l),
                Err(e) => errors.push((i, e)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, l) in loaded.iter().enumerate() {
            for name in &l.names {
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_owned()).or_insert(i),
                    None => exact.entry(name.clone()).or_insert(i),
                };
            }
        }
        Ok(CertStore {
            inner: Arc::new(Inner {
                loaded,
                exact,
                wildcard,
            }),
        })
    }

    /// The certificate for `sni`: an exact name, else a wildcard one label up.
    pub fn find(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let inner = &*self.inner;
        let name = sni?.trim_end_matches('.');
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        let found = inner.exact.get(name).copied().or_else(|| {
            let (_, parent) = name.split_once('.')?;
            inner.wildcard.get(parent).copied()
        })?;
        Some(inner.loaded[found].key.clone())
    }

    /// The first pair: what clients without SNI or with an unknown name get.
    pub fn fallback(&self) -> Option<Arc<CertifiedKey>> {
        self.inner.loaded.first().map(|l| l.key.clone())
    }

    /// The names of each pair, in configuration order (for `GET /config` and logs).
    pub fn names(&self) -> Vec<Vec<String>> {
        self.inner.loaded.iter().map(|l| l.names.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused_naming_the_file() {
        let pair = PemPair {
            cert_path: "/x/site.pem",
            cert_pem: b"not a certificate",
            key_path: "/x/site.key",
            key_pem: b"",
        };
        let errs = CertStore::load(&[pair]).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].0, 0);
        assert!(errs[0].1.starts_with("/x/site.pem"), "{}", errs[0].1);
    }
}
