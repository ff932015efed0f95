//! The real [`Environment`] that config validation checks against:
//! certificate pairs are loaded from disk by [`crate::tls`], server names
//! resolved by [`crate::upstream::dns`], the access log's file checked by
//! [`crate::access_log`]. `config` imports neither (its own
//! tests pass a fake); everything that loads the config file for real
//! (`--check`, start, reload) goes through [`load_config`].

use std::io;
use std::net::SocketAddr;
use std::path::Path;

use crate::config::{
    CertPair, Config, ConfigErrors, Environment, PairError, ResolverConfig, ServerAddr,
};

/// The filesystem for certificate pairs and DNS (or `[resolver]`'s
/// servers) for server names.
#[derive(Debug, Clone, Copy, Default)]
pub struct System;

impl Environment for System {
    fn load_pair(&self, pair: &CertPair) -> Result<(), PairError> {
        crate::tls::load_pair(pair)
            .map(drop)
            .map_err(PairError::from)
    }

    fn load_ca(&self, path: &Path) -> Result<(), String> {
        crate::upstream::tls::load_ca(path)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn resolve(&self, resolver: &ResolverConfig, addr: &ServerAddr) -> io::Result<Vec<SocketAddr>> {
        crate::upstream::dns::lookup_blocking(resolver, addr)
    }

    fn log_file(&self, path: &Path) -> io::Result<()> {
        crate::access_log::check_path(path)
    }

    fn cache_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)?;
        tempfile::tempfile_in(path).map(drop)
    }
}

/// Reads and validates the config file at `path`. TLS certificate and key
/// files are loaded, server names resolved and the access log's directory
/// checked too, so a config that passes here will start.
pub fn load_config(path: &Path) -> Result<Config, ConfigErrors> {
    Config::load(path, &System)
}

/// The resolved addresses of every pool's servers (names that do not
/// resolve are left out). The demo starts its origins on them.
pub fn upstream_addrs(config: &Config) -> Vec<SocketAddr> {
    config
        .pools
        .iter()
        .flat_map(|p| p.servers.iter().map(move |s| (p, s)))
        .flat_map(|(p, s)| System.resolve(&p.resolver, &s.addr).unwrap_or_default())
        .collect()
}
