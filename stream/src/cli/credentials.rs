//! How client commands reach a server that asks for TLS or a token.

use std::path::PathBuf;

use avlm_stream::client::Target;

#[derive(Debug, Clone, clap::Args)]
pub struct Credentials {
    /// CA certificate (PEM) the server's TLS certificate must chain to
    /// (implies https:// for a host:port server); without it https:// servers
    /// are checked against the system's roots.
    #[arg(long, env = "AVLM_CA")]
    pub ca: Option<PathBuf>,
    /// Bearer token sent with every call (`authorization: Bearer TOKEN`).
    #[arg(long, env = "AVLM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Client certificate (PEM) for a server that asks for one (with --client-key).
    #[arg(long, env = "AVLM_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "AVLM_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

impl Credentials {
    /// `url` reached with these credentials.
    pub fn target(&self, url: &str) -> Target {
        Target {
            url: url.to_string(),
            ca: self.ca.clone(),
            token: self.token.clone(),
            identity: self.client_cert.clone().zip(self.client_key.clone()),
        }
    }
}
