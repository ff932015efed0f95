//! DNS discovery: servers written as `name:port` are resolved again every
//! `resolve_interval`. Each resolved address is a member with the server's
//! weight; an address that appears joins the pool, one that disappears is
//! taken out of rotation and `draining` until its in-flight requests have
//! finished, then dropped. A failed lookup keeps the server's members as
//! they were.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::member::{Member, MemberState};
use super::pool::{Pool, Wanted};
use crate::config::ServerAddr;

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
            let found = match &server.addr {
                ServerAddr::Ip(a) => Ok(vec![*a]),
                ServerAddr::Name { host, port } => {
                    match tokio::net::lookup_host((host.as_str(), *port)).await {
                        Ok(addrs) => {
                            let mut v: Vec<SocketAddr> = addrs.collect();
                            v.sort_unstable();
                            v.dedup();
                            Ok(v)
                        }
                        Err(e) => Err(e),
                    }
                }
            };
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
