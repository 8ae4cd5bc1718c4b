//! The farm's certificate authority and the servers' certificates (rcgen). The CA signs a
//! certificate for the single server, the hub and each region's leaf node; clients check the
//! server against `ca.pem` and nothing else, so a server with a certificate from another CA is
//! refused. Private keys are written readable by their owner only.

use std::path::Path;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use suanli_shared::access::write_secret;

/// The CA, loaded or new: enough to sign server certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
}

fn ca_params(common_name: &str, valid_days: u32) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Suanli");
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(valid_days.into());
    p
}

impl Ca {
    /// A new CA named `common_name`, written as `ca.pem` and `ca-key.pem` (private) in `dir`.
    pub fn create(dir: &Path, common_name: &str, valid_days: u32) -> anyhow::Result<Self> {
        let key = KeyPair::generate().context("cannot generate the CA key")?;
        let params = ca_params(common_name, valid_days);
        let cert = params
            .self_signed(&key)
            .context("cannot sign the CA certificate")?;
        write_secret(&dir.join("ca-key.pem"), key.serialize_pem().as_bytes())
            .context("cannot write ca-key.pem")?;
        std::fs::write(dir.join("ca.pem"), cert.pem()).context("cannot write ca.pem")?;
        Ok(Ca {
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA of an existing farm folder, to sign certificates for regions added later.
    pub fn load(dir: &Path, common_name: &str) -> anyhow::Result<Self> {
        let pem = std::fs::read_to_string(dir.join("ca-key.pem")).with_context(|| {
            format!(
                "cannot read {}: adding a region needs the CA key",
                dir.join("ca-key.pem").display()
            )
        })?;
        let key = KeyPair::from_pem(&pem).context("ca-key.pem is not a private key")?;
        // The issuer needs only the CA's name and key: its certificate stays as written.
        Ok(Ca {
            issuer: Issuer::new(ca_params(common_name, 1), key),
        })
    }

    /// Writes `<stem>.pem` and `<stem>-key.pem` (private): a server certificate for `names`
    /// (DNS names or IP addresses), valid `valid_days`. Replaces an older pair of the same
    /// stem (renewal).
    pub fn issue_server(
        &self,
        dir: &Path,
        stem: &str,
        names: &[String],
        valid_days: u32,
    ) -> anyhow::Result<()> {
        let now = time::OffsetDateTime::now_utc();
        self.issue_server_until(
            dir,
            stem,
            names,
            now + time::Duration::days(valid_days.into()),
        )
    }

    /// [`Ca::issue_server`], valid until `not_after`.
    pub fn issue_server_until(
        &self,
        dir: &Path,
        stem: &str,
        names: &[String],
        not_after: time::OffsetDateTime,
    ) -> anyhow::Result<()> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Suanli");
        dn.push(DnType::CommonName, stem);
        p.distinguished_name = dn;
        p.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .with_context(|| format!("'{n}' is not a host name or IP address")),
            })
            .collect::<anyhow::Result<_>>()?;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        // Servers also dial out as leaf nodes with these certificates' CA.
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.not_before = not_after.min(time::OffsetDateTime::now_utc()) - time::Duration::hours(1);
        p.not_after = not_after;
        let key = KeyPair::generate().context("cannot generate a server key")?;
        let cert = p
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("cannot sign the certificate of {stem}"))?;
        let key_path = dir.join(format!("{stem}-key.pem"));
        let _ = std::fs::remove_file(&key_path);
        write_secret(&key_path, key.serialize_pem().as_bytes())
            .with_context(|| format!("cannot write {}", key_path.display()))?;
        std::fs::write(dir.join(format!("{stem}.pem")), cert.pem())
            .with_context(|| format!("cannot write {stem}.pem"))?;
        Ok(())
    }
}
