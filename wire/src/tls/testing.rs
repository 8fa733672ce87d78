//! Certificates made at test time with rcgen: a CA, node certificates it issues (valid,
//! expired), written as PEM files. For tests only (the `test-certs` feature, or this
//! crate's own tests).

use std::path::{Path, PathBuf};

use rcgen::{date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};

/// A certificate authority that exists for one test.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its private key, PEM encoded.
#[derive(Clone, Debug)]
pub struct TestCert {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM, PKCS#8).
    pub key_pem: String,
}

impl TestCa {
    /// A fresh self-signed CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("generate a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).expect("self-sign the CA");
        TestCa { cert, key }
    }

    /// The CA certificate (PEM), the trusted-CA file's content.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for both server and client use naming `names` (IP addresses become
    /// IP SANs, anything else DNS SANs), valid from 2020 to 4000.
    pub fn issue(&self, names: &[&str]) -> TestCert {
        self.issue_valid(names, 2020, 4000)
    }

    /// Like [`TestCa::issue`], but it expired in 2001.
    pub fn issue_expired(&self, names: &[&str]) -> TestCert {
        self.issue_valid(names, 2000, 2001)
    }

    /// Valid from January 1st of `from_year` to January 1st of `to_year`.
    pub fn issue_valid(&self, names: &[&str], from_year: i32, to_year: i32) -> TestCert {
        let key = KeyPair::generate().expect("generate a key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("certificate parameters");
        params.distinguished_name.push(DnType::CommonName, names.first().cloned().unwrap_or_default());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = date_time_ymd(from_year, 1, 1);
        params.not_after = date_time_ymd(to_year, 1, 1);
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign the certificate");
        TestCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    /// Writes the CA certificate to `dir/name` and returns the path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.pem()).expect("write the CA file");
        path
    }
}

impl TestCert {
    /// Writes `dir/{stem}.crt` and `dir/{stem}.key`; returns (certificate, key) paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("write the certificate file");
        std::fs::write(&key, &self.key_pem).expect("write the key file");
        (cert, key)
    }
}

/// The DER form of the first certificate in `pem`.
pub fn cert_der(pem: &str) -> rustls::pki_types::CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate")
}
