//! Loading the agent: the host configuration file, read and validated, and the clients
//! it names (Incus over its socket or HTTPS, the cluster lease). Nothing connects yet.

use std::path::Path;

use anyhow::{Context, Result};
use veza_host::incus::IncusClient;
use veza_model::config::HostConfig;
use veza_source::fetch::Forge;

use super::Agent;

impl Agent {
    /// Loads the configuration and connects nothing yet.
    pub fn load(config_path: &Path) -> Result<Agent> {
        let config = load_config(config_path)?;
        let incus = match (
            &config.incus.endpoint,
            &config.incus.client_cert,
            &config.incus.client_key,
            &config.incus.server_cert,
        ) {
            (Some(url), Some(cert), Some(key), Some(server)) => IncusClient::new(
                veza_host::incus::Transport::Https {
                    url: url.clone(),
                    client_cert: cert.into(),
                    client_key: key.into(),
                    server_cert: server.into(),
                },
                veza_host::incus::ClientOptions::default(),
            ),
            _ => IncusClient::unix(config.incus_socket()),
        };
        let cluster = crate::cluster::ClusterLease::new(&config);
        Ok(Agent {
            config,
            config_path: config_path.to_path_buf(),
            incus,
            forge: Forge::new(),
            warm: None,
            cluster,
        })
    }
}

/// Reads and validates the host configuration.
pub fn load_config(path: &Path) -> Result<HostConfig> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read configuration `{}`", path.display()))?;
    veza_model::config::parse_config(&bytes).map_err(|problems| {
        let text: Vec<String> = problems
            .iter()
            .map(|d| format!("{}:{}: error: {}", path.display(), d.pos, d.message))
            .collect();
        anyhow::anyhow!("invalid configuration:\n{}", text.join("\n"))
    })
}
