//! The cluster CA and node key pairs.
//!
//! The CA's distinguished name is derived from the cluster id, so any member that holds the CA
//! key can rebuild the issuer and sign certificates that chain to the same root.

use crate::CertError;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SignatureAlgorithm,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

/// The DNS name every node certificate carries, and the name clients ask for: node-to-node TLS
/// checks membership of the cluster (the CA), not a host name. Which node it is comes from the
/// second SAN, the node id.
pub const CLUSTER_SERVER_NAME: &str = "cluster.noodle";

/// How long a node certificate is valid unless the issuing voter is told otherwise
/// (`noodle up --cert-ttl`); a node renews its certificate once half of it has passed.
pub const NODE_CERT_TTL: std::time::Duration = std::time::Duration::from_secs(14 * 24 * 3600);

/// Node keys and the CA key are ECDSA P-256.
static KEY_ALG: &SignatureAlgorithm = &rcgen::PKCS_ECDSA_P256_SHA256;

/// SHA-256 of a certificate's DER bytes: what a join token pins.
pub fn fingerprint(cert_der: &[u8]) -> [u8; 32] {
    Sha256::digest(cert_der).into()
}

/// A node id from a host name: the host name reduced to a DNS label, a dash and a random UUID,
/// so that it is unique, stable once stored, and valid as a certificate name.
pub fn node_id_for_host(host: &str) -> String {
    let mut label: String = host
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(24)
        .collect();
    label = label.trim_matches('-').to_string();
    if label.is_empty() {
        label = "node".into();
    }
    format!("{label}-{}", uuid::Uuid::new_v4().simple())
}

/// The node id a node certificate names (its DNS name other than [`CLUSTER_SERVER_NAME`]).
/// Only meaningful for a certificate that already verified against the cluster CA.
pub fn node_id_of_cert(cert_der: &[u8]) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::DNSName(dns) if *dns != CLUSTER_SERVER_NAME => Some(dns.to_string()),
        _ => None,
    })
}

/// Checks that `cert_der` is a node certificate of the CA `ca_der`, valid now, for the key
/// whose raw public key is `public_key_raw`: what a node checks before it takes a renewed
/// certificate.
pub fn check_node_cert(
    ca_der: &[u8],
    cert_der: &[u8],
    public_key_raw: &[u8],
) -> Result<(), String> {
    verify_chain(
        &CertificateDer::from(ca_der),
        &CertificateDer::from(cert_der),
    )?;
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| e.to_string())?;
    if cert.public_key().subject_public_key.data.as_ref() != public_key_raw {
        return Err("the certificate is for another key".into());
    }
    Ok(())
}

/// How far before its issue a certificate's validity starts, for clocks a little behind.
const CERT_BACKDATE_SECS: i64 = 3600;

/// Whether the certificate `cert_der` has less than half its life left at `now_unix` (or does
/// not parse): time to ask for a new one.
pub fn renewal_due(cert_der: &[u8], now_unix: i64) -> bool {
    cert_validity(cert_der).is_none_or(|(from, until)| {
        let lifetime = until - from - CERT_BACKDATE_SECS;
        until - now_unix <= lifetime / 2
    })
}

/// When a certificate starts and stops being valid (Unix seconds), if it parses.
pub fn cert_validity(cert_der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// A node's (or the CA's) private key.
pub struct NodeKey {
    key: KeyPair,
}

impl NodeKey {
    pub fn generate() -> Result<NodeKey, CertError> {
        Ok(NodeKey {
            key: KeyPair::generate_for(KEY_ALG)?,
        })
    }

    pub fn from_pem(pem: &str) -> Result<NodeKey, CertError> {
        let key = KeyPair::from_pem(pem).map_err(|e| CertError::Invalid(e.to_string()))?;
        if !key.is_compatible(KEY_ALG) {
            return Err(CertError::Invalid("key is not ECDSA P-256".into()));
        }
        Ok(NodeKey { key })
    }

    pub fn to_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The raw public key (uncompressed EC point), what a joiner sends to be certified.
    pub fn public_key_raw(&self) -> Vec<u8> {
        self.key.public_key_raw().to_vec()
    }

    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    /// A self-signed certificate for this key: only useful to show that such a peer is refused.
    pub fn self_signed_cert(&self, name: &str) -> Result<CertificateDer<'static>, CertError> {
        let params = CertificateParams::new(vec![name.to_string()])?;
        Ok(params.self_signed(&self.key)?.der().clone())
    }
}

/// A public key received from a joiner.
struct RawPublicKey(Vec<u8>);

impl PublicKeyData for RawPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        KEY_ALG
    }
}

/// The cluster certificate authority: its certificate and key.
pub struct ClusterCa {
    cluster_id: String,
    key: NodeKey,
    cert_der: CertificateDer<'static>,
}

impl ClusterCa {
    /// Creates the CA of a new cluster.
    pub fn generate(cluster_id: &str) -> Result<ClusterCa, CertError> {
        let key = NodeKey::generate()?;
        let cert_der = ca_params(cluster_id).self_signed(&key.key)?.der().clone();
        Ok(ClusterCa {
            cluster_id: cluster_id.to_string(),
            key,
            cert_der,
        })
    }

    /// Loads a CA from its certificate (DER) and key (PEM) and checks that they belong together.
    pub fn load(
        cluster_id: &str,
        cert_der: CertificateDer<'static>,
        key_pem: &str,
    ) -> Result<ClusterCa, CertError> {
        let key = NodeKey::from_pem(key_pem)?;
        let ca = ClusterCa {
            cluster_id: cluster_id.to_string(),
            key,
            cert_der,
        };
        // Sign a throwaway certificate and check it against the stored root: this catches a key
        // or certificate that was swapped or corrupted on disk.
        let probe = NodeKey::generate()?;
        let cert = ca.issue_node_cert(
            "probe",
            &probe.public_key_raw(),
            std::time::Duration::from_secs(60),
        )?;
        verify_chain(&ca.cert_der, &cert)
            .map_err(|e| CertError::Invalid(format!("CA key does not match certificate: {e}")))?;
        Ok(ca)
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn key_pem(&self) -> String {
        self.key.to_pem()
    }

    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.cert_der)
    }

    /// Issues the certificate of node `node_id` for the raw P-256 public key `public_key_raw`,
    /// valid for `ttl` from now.
    pub fn issue_node_cert(
        &self,
        node_id: &str,
        public_key_raw: &[u8],
        ttl: std::time::Duration,
    ) -> Result<CertificateDer<'static>, CertError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, node_id.to_string());
        params.subject_alt_names = vec![
            SanType::DnsName(CLUSTER_SERVER_NAME.try_into()?),
            SanType::DnsName(node_id.to_string().try_into()?),
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::seconds(CERT_BACKDATE_SECS);
        params.not_after = now + time::Duration::seconds(ttl.as_secs().min(i64::MAX as u64) as i64);
        let issuer = Issuer::new(ca_params(&self.cluster_id), &self.key.key);
        let cert = params.signed_by(&RawPublicKey(public_key_raw.to_vec()), &issuer)?;
        Ok(cert.der().clone())
    }
}

fn ca_params(cluster_id: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("noodle cluster {cluster_id}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2125, 1, 1);
    params
}

/// Checks that `leaf` is a node certificate issued by `ca` (for [`CLUSTER_SERVER_NAME`]).
pub(crate) fn verify_chain(
    ca: &CertificateDer<'_>,
    leaf: &CertificateDer<'_>,
) -> Result<(), String> {
    let anchor = webpki::anchor_from_trusted_cert(ca).map_err(|e| e.to_string())?;
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| e.to_string())?;
    let now = rustls_pki_types::UnixTime::now();
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        now,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

    #[test]
    fn issued_cert_chains_to_ca_and_names_node() {
        let ca = ClusterCa::generate("c1").unwrap();
        let node = NodeKey::generate().unwrap();
        let cert = ca
            .issue_node_cert("host-abc", &node.public_key_raw(), DAY)
            .unwrap();
        verify_chain(ca.cert_der(), &cert).unwrap();
        let (_, expiry) = cert_validity(&cert).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!((now + 86_400 - 5..=now + 86_400 + 5).contains(&expiry));
        assert_eq!(cert_validity(b"not a certificate"), None);
        // Half its life: time to renew, not before.
        assert!(!renewal_due(&cert, now));
        assert!(!renewal_due(&cert, now + 43_000));
        assert!(renewal_due(&cert, now + 43_300));
        assert!(renewal_due(b"not a certificate", now));
        check_node_cert(ca.cert_der(), &cert, &node.public_key_raw()).unwrap();
        let other = NodeKey::generate().unwrap();
        assert!(check_node_cert(ca.cert_der(), &cert, &other.public_key_raw()).is_err());
        let foreign = ClusterCa::generate("c1").unwrap();
        assert!(check_node_cert(foreign.cert_der(), &cert, &node.public_key_raw()).is_err());
        assert_eq!(node_id_of_cert(&cert).as_deref(), Some("host-abc"));
        assert_eq!(node_id_of_cert(b"not a certificate"), None);
        let ee = webpki::EndEntityCert::try_from(&cert).unwrap();
        let name = rustls_pki_types::ServerName::try_from("host-abc").unwrap();
        ee.verify_is_valid_for_subject_name(&name).unwrap();
        let other = ClusterCa::generate("c1").unwrap();
        assert!(verify_chain(other.cert_der(), &cert).is_err());
    }

    #[test]
    fn reloaded_ca_issues_certs_for_the_same_root() {
        let ca = ClusterCa::generate("c2").unwrap();
        let again = ClusterCa::load("c2", ca.cert_der().clone(), &ca.key_pem()).unwrap();
        let node = NodeKey::generate().unwrap();
        let cert = again
            .issue_node_cert("n", &node.public_key_raw(), DAY)
            .unwrap();
        verify_chain(ca.cert_der(), &cert).unwrap();
        // A key from another CA is detected.
        let foreign = ClusterCa::generate("c2").unwrap();
        assert!(ClusterCa::load("c2", ca.cert_der().clone(), &foreign.key_pem()).is_err());
    }

    #[test]
    fn node_ids_are_dns_labels() {
        for host in ["My.Host_Name", "", "---", "a".repeat(80).as_str()] {
            let id = node_id_for_host(host);
            assert!(id.len() <= 63, "{id}");
            assert!(
                rustls_pki_types::ServerName::try_from(id.as_str()).is_ok(),
                "{id}"
            );
        }
    }
}
