//! DNS discovery: servers written as `name:port` or `srv = "..."` are
//! resolved again every `resolve_interval`. Each resolved address is a
//! member with the server's weight; an address that appears joins the pool,
//! one that disappears is taken out of rotation and `draining` until its
//! in-flight requests have finished, then dropped. A failed lookup keeps the
//! server's members as they were, so a DNS outage never empties a pool.
//!
//! Names go to the system resolver (getaddrinfo: `/etc/hosts`, then
//! `/etc/resolv.conf`) unless `[resolver] nameservers` names DNS servers;
//! SRV records, which getaddrinfo cannot ask for, always go through
//! hickory's resolver.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use hickory_resolver::config::{
    NameServerConfig, NameServerConfigGroup, ResolveHosts, ResolverConfig as DnsConfig,
    ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;

use super::member::{Member, MemberState};
use super::pool::{Pool, Wanted};
use crate::config::{ResolverConfig, ServerAddr};

/// The addresses `addr` stands for now, sorted and without duplicates. An
/// empty answer is an error, like a failed lookup.
pub(crate) async fn lookup(
    resolver: &ResolverConfig,
    addr: &ServerAddr,
) -> io::Result<Vec<SocketAddr>> {
    let found = match addr {
        ServerAddr::Ip(a) => return Ok(vec![*a]),
        ServerAddr::Name { host, port } if resolver.nameservers.is_empty() => {
            tokio::net::lookup_host((host.as_str(), *port))
                .await?
                .collect()
        }
        ServerAddr::Name { host, port } => {
            let dns = hickory(resolver)?;
            ips(&dns, host, *port).await?
        }
        ServerAddr::Srv { name } => srv(&hickory(resolver)?, name).await?,
    };
    tidy(found)
}

/// Sorted, without duplicates, and an error when empty.
fn tidy(mut found: Vec<SocketAddr>) -> io::Result<Vec<SocketAddr>> {
    found.sort_unstable();
    found.dedup();
    if found.is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no address"));
    }
    Ok(found)
}

/// [`lookup`] for code outside a runtime, or inside one that must not be
/// re-entered (config validation runs in both). getaddrinfo is called
/// directly; hickory's lookups run on a thread of their own.
pub(crate) fn lookup_blocking(
    resolver: &ResolverConfig,
    addr: &ServerAddr,
) -> io::Result<Vec<SocketAddr>> {
    match addr {
        ServerAddr::Ip(a) => return Ok(vec![*a]),
        ServerAddr::Name { host, port } if resolver.nameservers.is_empty() => {
            use std::net::ToSocketAddrs;
            return tidy((host.as_str(), *port).to_socket_addrs()?.collect());
        }
        _ => {}
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(lookup(resolver, addr))
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("DNS lookup thread panicked")))
    })
}

/// A resolver for one round of lookups. Nothing is cached between rounds:
/// each round asks again, so answers are never older than the interval.
fn hickory(resolver: &ResolverConfig) -> io::Result<TokioResolver> {
    let provider = TokioConnectionProvider::default();
    let mut builder = if resolver.nameservers.is_empty() {
        TokioResolver::builder(provider).map_err(io::Error::other)?
    } else {
        let mut group = NameServerConfigGroup::new();
        for &ns in &resolver.nameservers {
            group.push(NameServerConfig::new(ns, Protocol::Udp));
            group.push(NameServerConfig::new(ns, Protocol::Tcp));
        }
        let mut b = TokioResolver::builder_with_config(
            DnsConfig::from_parts(None, Vec::new(), group),
            provider,
        );
        b.options_mut().use_hosts_file = ResolveHosts::Never;
        b
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    opts.cache_size = 32;
    Ok(builder.build())
}

/// A name's A and AAAA records, each with `port`.
async fn ips(dns: &TokioResolver, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    // A trailing dot: the name is complete, no search domains apply.
    let found = dns
        .lookup_ip(format!("{host}."))
        .await
        .map_err(io::Error::other)?;
    Ok(found.iter().map(|ip| SocketAddr::new(ip, port)).collect())
}

/// The targets of an SRV record with the best (lowest) priority, each
/// resolved, with the record's port. Records of other priorities are
/// backups in RFC 2782; sluice uses them only when no better one resolves.
/// The records' own weights are ignored: members take the server's weight.
async fn srv(dns: &TokioResolver, name: &str) -> io::Result<Vec<SocketAddr>> {
    let records = dns
        .srv_lookup(format!("{name}."))
        .await
        .map_err(io::Error::other)?;
    let mut records: Vec<_> = records.iter().cloned().collect();
    records.sort_by_key(|r| r.priority());
    let mut out = Vec::new();
    let mut last_error = None;
    let mut priority = None;
    for r in records {
        if priority.is_some_and(|p| p != r.priority()) && !out.is_empty() {
            break;
        }
        priority = Some(r.priority());
        // "." means the service is decidedly not available (RFC 2782).
        if r.target().is_root() {
            continue;
        }
        match ips(dns, r.target().to_ascii().trim_end_matches('.'), r.port()).await {
            Ok(found) => out.extend(found),
            Err(e) => last_error = Some(e),
        }
    }
    match last_error {
        Some(e) if out.is_empty() => Err(e),
        _ => Ok(out),
    }
}

/// Members in rotation, and members draining.
pub(crate) type Reconciled = (Vec<Arc<Member>>, Vec<Arc<Member>>);

/// The new (active, draining) member lists after resolving to `wanted`, or
/// `None` when nothing changed. Members keep their identity (and health)
/// while their address stays; a draining member whose address is back
/// returns to rotation; draining members with nothing in flight are gone.
pub(crate) fn reconcile(
    active: &[Arc<Member>],
    draining: &[Arc<Member>],
    wanted: &[Wanted],
    make: impl Fn(&Wanted) -> Arc<Member>,
) -> Option<Reconciled> {
    let mut next = Vec::with_capacity(wanted.len());
    let mut seen = HashSet::new();
    for w in wanted {
        if !seen.insert(w.addr) {
            continue;
        }
        let same = |m: &&Arc<Member>| {
            m.addr == w.addr && m.weight == w.weight && m.max_connections == w.max_connections
        };
        let member = if let Some(m) = active.iter().find(same) {
            m.clone()
        } else if let Some(m) = draining.iter().find(same) {
            m.set_draining(false);
            tracing::info!(pool = %m.pool, member = %m.addr, from = %MemberState::Draining, to = %m.state(), "upstream member state changed");
            m.clone()
        } else {
            let m = make(w);
            tracing::info!(pool = %m.pool, member = %m.addr, server = %m.server, "upstream member added");
            m
        };
        next.push(member);
    }
    let mut still_draining = Vec::new();
    for m in active.iter().chain(draining) {
        if next.iter().any(|n| Arc::ptr_eq(n, m)) {
            continue;
        }
        if active.iter().any(|a| Arc::ptr_eq(a, m)) {
            m.set_draining(true);
            tracing::info!(pool = %m.pool, member = %m.addr, from = %MemberState::Up, to = %MemberState::Draining, in_flight = m.in_flight(), "upstream member state changed");
        }
        if m.in_flight() > 0 {
            still_draining.push(m.clone());
        } else {
            tracing::info!(pool = %m.pool, member = %m.addr, "upstream member removed");
        }
    }
    let same_active =
        next.len() == active.len() && next.iter().zip(active).all(|(a, b)| Arc::ptr_eq(a, b));
    let same_draining = still_draining.len() == draining.len()
        && still_draining
            .iter()
            .zip(draining)
            .all(|(a, b)| Arc::ptr_eq(a, b));
    if same_active && same_draining {
        None
    } else {
        Some((next, still_draining))
    }
}

/// Re-resolves the names of `pool` until it is dropped.
pub(crate) async fn run(pool: Weak<Pool>) {
    loop {
        let interval = match pool.upgrade() {
            Some(p) => {
                // Draining members are looked at every second, so they go
                // soon after their last request.
                if p.members().draining.is_empty() {
                    p.config.resolve_interval
                } else {
                    p.config.resolve_interval.min(Duration::from_secs(1))
                }
            }
            None => return,
        };
        tokio::time::sleep(interval).await;
        let Some(p) = pool.upgrade() else { return };
        let current = p.members();
        let mut wanted = Vec::new();
        for server in &p.config.servers {
            let found = lookup(&p.config.resolver, &server.addr).await;
            let label = server.addr.to_string();
            match found {
                Ok(addrs) => wanted.extend(addrs.into_iter().map(|a| Wanted::of(server, a))),
                Err(e) => {
                    tracing::warn!(pool = %p.name, server = %label, error = %e, "cannot resolve server; keeping its members");
                    wanted.extend(
                        current
                            .active
                            .iter()
                            .filter(|m| *m.server == *label)
                            .map(|m| Wanted::of(server, m.addr)),
                    );
                }
            }
        }
        if let Some((active, draining)) =
            reconcile(&current.active, &current.draining, &wanted, |w| {
                p.member_for(w)
            })
        {
            p.set_members(active, draining);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    fn wanted(ports: &[u16]) -> Vec<Wanted> {
        ports
            .iter()
            .map(|&p| Wanted {
                addr: addr(p),
                weight: 2,
                max_connections: 0,
                server: Arc::from("app.internal:80"),
            })
            .collect()
    }

    fn make(w: &Wanted) -> Arc<Member> {
        Arc::new(Member::new(w.addr, w.weight))
    }

    #[test]
    fn unchanged_resolution_changes_nothing() {
        let (active, _) = reconcile(&[], &[], &wanted(&[1, 2]), make).expect("added");
        assert_eq!(active.len(), 2);
        assert!(reconcile(&active, &[], &wanted(&[1, 2]), make).is_none());
    }

    #[test]
    fn new_addresses_join_and_old_members_keep_their_identity() {
        let (active, _) = reconcile(&[], &[], &wanted(&[1, 2]), make).unwrap();
        let (next, draining) = reconcile(&active, &[], &wanted(&[1, 2, 3]), make).unwrap();
        assert!(draining.is_empty());
        assert_eq!(next.len(), 3);
        assert!(Arc::ptr_eq(&next[0], &active[0]));
        assert!(Arc::ptr_eq(&next[1], &active[1]));
        assert_eq!(next[2].addr, addr(3));
        assert_eq!(next[2].weight, 2, "the server's weight");
    }

    #[test]
    fn vanished_members_drain_until_idle_then_go() {
        let (active, _) = reconcile(&[], &[], &wanted(&[1, 2]), make).unwrap();
        let busy = active[1].begin();
        let (next, draining) = reconcile(&active, &[], &wanted(&[1]), make).unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(draining.len(), 1);
        assert_eq!(draining[0].state(), MemberState::Draining);
        // Still busy: stays draining, nothing changes.
        assert!(reconcile(&next, &draining, &wanted(&[1]), make).is_none());
        drop(busy);
        let (next2, draining2) = reconcile(&next, &draining, &wanted(&[1]), make).unwrap();
        assert_eq!(next2.len(), 1);
        assert!(draining2.is_empty(), "idle: removed");
    }

    #[test]
    fn an_idle_vanished_member_goes_at_once() {
        let (active, _) = reconcile(&[], &[], &wanted(&[1, 2]), make).unwrap();
        let (next, draining) = reconcile(&active, &[], &wanted(&[2]), make).unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].addr, addr(2));
        assert!(draining.is_empty());
        assert_eq!(active[0].state(), MemberState::Draining);
    }

    #[test]
    fn a_draining_member_whose_address_returns_is_back_in_rotation() {
        let (active, _) = reconcile(&[], &[], &wanted(&[1, 2]), make).unwrap();
        let _busy = active[0].begin();
        let (next, draining) = reconcile(&active, &[], &wanted(&[2]), make).unwrap();
        assert_eq!(draining.len(), 1);
        let (back, draining) = reconcile(&next, &draining, &wanted(&[1, 2]), make).unwrap();
        assert!(draining.is_empty());
        assert!(Arc::ptr_eq(&back[0], &active[0]));
        assert_eq!(back[0].state(), MemberState::Up);
    }
}
