//! TLS of the client and admin listeners, built once per node from `--cert-file`,
//! `--key-file`, `--trusted-ca-file` and `--client-cert-auth`, and shared by every shard:
//! the client listener asks for client certificates only with `--client-cert-auth`; the
//! admin listener, which can change the cluster, always does once a trusted CA is given.
//! Both follow their files (re-read on SIGHUP and when they change on disk, see
//! `conclave_wire::tls::reload`). The metrics and probes listener stays plain HTTP.
use std::sync::Arc;

use conclave_wire::tls::{reload_on_sighup, ClientAuth, Reload, ReloadableServerConfig, ServerTlsSettings};

use crate::config::EdgeTlsFiles;
use crate::grpc::ListenerTls;

/// The ALPN protocol of gRPC.
const ALPN_H2: &[u8] = b"h2";

/// The TLS of both listeners.
#[derive(Clone, Debug)]
pub struct EdgeTls {
    pub client: ListenerTls,
    pub admin: ListenerTls,
}

impl EdgeTls {
    /// Reads the files (an error names the file and the problem) and starts reloading both
    /// configurations on SIGHUP.
    pub fn start(files: &EdgeTlsFiles) -> Result<EdgeTls, String> {
        let settings = |client_auth| ServerTlsSettings {
            cert: files.cert_file.clone(),
            key: files.key_file.clone(),
            trusted_ca: files.trusted_ca_file.clone(),
            client_auth,
            alpn: vec![ALPN_H2.to_vec()],
        };
        let client_auth = if files.client_cert_auth { ClientAuth::Required } else { ClientAuth::Off };
        let admin_auth = if files.trusted_ca_file.is_some() { ClientAuth::Required } else { ClientAuth::Off };
        let client = ReloadableServerConfig::server("client listener", settings(client_auth)).map_err(|e| format!("client TLS: {e}"))?;
        let admin = ReloadableServerConfig::server("admin listener", settings(admin_auth)).map_err(|e| format!("admin TLS: {e}"))?;
        let holders: Vec<Arc<dyn Reload>> = vec![Arc::new(client.clone()), Arc::new(admin.clone())];
        reload_on_sighup(holders).map_err(|e| format!("cannot reload the TLS certificates on SIGHUP: {e}"))?;
        Ok(EdgeTls {
            client: ListenerTls { listener: "client listener", config: client },
            admin: ListenerTls { listener: "admin listener", config: admin },
        })
    }

    /// How the listeners' TLS is described at start-up.
    pub fn describe(files: &EdgeTlsFiles) -> &'static str {
        match (files.client_cert_auth, files.trusted_ca_file.is_some()) {
            (true, _) => "TLS with client certificates on both listeners",
            (false, true) => "TLS; client certificates on the admin listener",
            (false, false) => "TLS",
        }
    }
}
