//! The state of every pool and member as `GET /upstreams` shows it (the
//! shape is fixed by the operator contract). Reads atomics only; the admin
//! listener calls [`upstreams_json`] at request time.

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{json, Value};

use super::member::{now_ms, Member, MemberState};
use super::pool::Pool;

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `{ "pools": [ ... ] }` for `pools`, in order. `total` counts the members
/// in rotation; draining members are listed after them but not counted.
pub(crate) fn upstreams_json(pools: &[Arc<Pool>]) -> Value {
    let pools: Vec<Value> = pools.iter().map(|p| pool_json(p)).collect();
    json!({ "pools": pools })
}

fn pool_json(pool: &Pool) -> Value {
    let set = pool.members();
    let now = now_ms();
    let with_checks = pool.config.health.is_some();
    let members: Vec<Value> = set
        .active
        .iter()
        .chain(&set.draining)
        .map(|m| member_json(m, now, with_checks))
        .collect();
    let healthy = set
        .active
        .iter()
        .filter(|m| m.state_at(now) == MemberState::Up)
        .count();
    json!({
        "name": pool.name,
        "policy": pool.policy.as_str(),
        "healthy": healthy,
        "total": set.active.len(),
        "members": members,
    })
}

/// Consecutive successes and failures: of active checks when the pool has
/// them, of requests otherwise.
fn member_json(m: &Member, now: u64, with_checks: bool) -> Value {
    let (successes, failures) = if with_checks {
        m.check_streaks()
    } else {
        m.request_streaks()
    };
    let milli = m.effective_weight_milli(now);
    let effective: Value = if milli.is_multiple_of(1000) {
        json!(milli / 1000)
    } else {
        json!((milli as f64 / 10.0).round() / 100.0)
    };
    let last_check = m.last_check().map_or(
        Value::Null,
        |c| json!({ "ok": c.ok, "status": c.status, "error": c.error, "at": rfc3339(c.at) }),
    );
    json!({
        "addr": m.addr.to_string(),
        "state": m.state_at(now).as_str(),
        "since": rfc3339(m.since()),
        "weight": m.weight,
        "effective_weight": effective,
        "in_flight": m.in_flight(),
        "consecutive_successes": successes,
        "consecutive_failures": failures,
        "last_check": last_check,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::upstream::member::CheckResult;
    use std::path::Path;
    use std::time::Duration;

    fn pools(extra: &str) -> Vec<Arc<Pool>> {
        let text = format!(
            r#"
[[listener]]
name = "http"
listen = "127.0.0.1:0"

[[route]]
pool = "app"

[pool.app]
servers = [ {{ addr = "127.0.0.1:9001" }}, {{ addr = "127.0.0.1:9002", weight = 3 }} ]
{extra}
"#
        );
        let c =
            Config::parse(Path::new("t.toml"), &text, &crate::environment::System).expect("valid");
        c.pools.iter().map(|pc| Arc::new(Pool::new(pc))).collect()
    }

    #[test]
    fn shape_matches_the_contract() {
        let p = pools("[pool.app.health]\nrise = 1\nfall = 1\n");
        let members = p[0].members();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        members.active[0].record_check(
            CheckResult {
                ok: false,
                status: Some(500),
                error: Some("unexpected status 500".into()),
                at,
            },
            1,
            1,
        );
        let _busy = members.active[1].begin();
        let v = upstreams_json(&p);
        let pool = &v["pools"][0];
        assert_eq!(pool["name"], "app");
        assert_eq!(pool["policy"], "round_robin");
        assert_eq!(pool["healthy"], 1);
        assert_eq!(pool["total"], 2);
        let a = &pool["members"][0];
        assert_eq!(a["addr"], "127.0.0.1:9001");
        assert_eq!(a["state"], "down");
        assert_eq!(a["weight"], 1);
        assert_eq!(a["effective_weight"], 1);
        assert_eq!(a["in_flight"], 0);
        assert_eq!(a["consecutive_successes"], 0);
        assert_eq!(a["consecutive_failures"], 1);
        assert_eq!(
            a["last_check"],
            json!({ "ok": false, "status": 500, "error": "unexpected status 500", "at": "2023-11-14T22:13:20Z" })
        );
        let since = a["since"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(since).is_ok(), "{since}");
        assert!(since.ends_with('Z') && since.len() == 20, "{since}");
        let b = &pool["members"][1];
        assert_eq!(b["state"], "up");
        assert_eq!(b["weight"], 3);
        assert_eq!(b["in_flight"], 1);
        assert_eq!(b["last_check"], Value::Null);
        let keys: Vec<&String> = b.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 9, "{keys:?}");
    }

    #[test]
    fn ejected_members_are_reported_as_such() {
        let p = pools("");
        let m = &p[0].members().active[0];
        m.eject(now_ms(), Duration::from_secs(60), Duration::from_secs(60));
        let v = upstreams_json(&p);
        assert_eq!(v["pools"][0]["members"][0]["state"], "ejected");
        assert_eq!(v["pools"][0]["healthy"], 1);
    }
}
