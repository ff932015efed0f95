//! Request routing: owns the compiled route table and the rule that picks a
//! route for a request's host and path.
//!
//! Routes are tried in file order and the first match wins. A route matches
//! when its host list matches (an exact name matches only itself,
//! `*.example.com` matches any name strictly below `example.com` but not
//! `example.com` itself, an empty list matches any host) and the request path
//! starts with its `path_prefix`, compared byte for byte. `lookup` does not
//! allocate.

use crate::config::RouteConfig;

/// One compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    /// Position in the config's route list (metric handles are kept by it).
    pub index: usize,
    /// Index into the snapshot's pool list; `None` on a redirect route.
    pub pool: Option<usize>,
    hosts: Box<[HostPattern]>,
    prefix: Box<str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// Matches only this name.
    Exact(Box<str>),
    /// Holds the suffix including its leading dot (`.example.com` for
    /// `*.example.com`); matches names ending in it with at least one more
    /// byte in front.
    Below(Box<str>),
}

impl HostPattern {
    fn parse(pattern: &str) -> HostPattern {
        let pattern = pattern.to_ascii_lowercase();
        match pattern.strip_prefix('*') {
            Some(suffix) if suffix.starts_with('.') => HostPattern::Below(suffix.into()),
            _ => HostPattern::Exact(pattern.into()),
        }
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host == &**name,
            HostPattern::Below(suffix) => host.len() > suffix.len() && host.ends_with(&**suffix),
        }
    }
}

impl Route {
    /// The literal path prefix this route matches.
    #[cfg(test)]
    pub(crate) fn path_prefix(&self) -> &str {
        &self.prefix
    }

    fn matches(&self, host: &str, path: &str) -> bool {
        path.as_bytes().starts_with(self.prefix.as_bytes())
            && (self.hosts.is_empty() || self.hosts.iter().any(|p| p.matches(host)))
    }
}

/// The route table of one configuration snapshot.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Box<[Route]>,
}

impl Router {
    /// `pool_index` maps a pool name to its index; routes whose pool is
    /// unknown are skipped (config validation already rejects them). A
    /// redirect route has no pool.
    pub fn new(routes: &[RouteConfig], pool_index: impl Fn(&str) -> Option<usize>) -> Router {
        let routes = routes
            .iter()
            .enumerate()
            .filter_map(|(index, r)| {
                let pool = match &r.pool {
                    Some(name) => Some(pool_index(name)?),
                    None => None,
                };
                Some(Route {
                    name: r.name.clone(),
                    index,
                    pool,
                    hosts: r.hosts.iter().map(|h| HostPattern::parse(h)).collect(),
                    prefix: r.path_prefix.as_str().into(),
                })
            })
            .collect();
        Router { routes }
    }

    /// `host` is already normalised by the caller: lower-case, no port.
    /// First matching route in file order wins.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(host, path))
    }

    /// The compiled routes, in file order.
    #[cfg(test)]
    pub(crate) fn routes(&self) -> &[Route] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rc(name: &str, hosts: &[&str], prefix: &str, pool: &str) -> RouteConfig {
        RouteConfig {
            name: name.to_string(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            path_prefix: prefix.to_string(),
            pool: Some(pool.to_string()),
            rate_limit: None,
            cache: None,
            compress: false,
            strip_request_headers: Vec::new().into(),
            rules: None,
        }
    }

    fn pools(name: &str) -> Option<usize> {
        match name {
            "a" => Some(0),
            "b" => Some(1),
            "c" => Some(2),
            _ => None,
        }
    }

    fn name<'r>(router: &'r Router, host: &str, path: &str) -> Option<&'r str> {
        router.lookup(host, path).map(|r| r.name.as_str())
    }

    #[test]
    fn exact_host_matches_only_itself() {
        let r = Router::new(&[rc("r", &["example.com"], "/", "a")], pools);
        assert_eq!(name(&r, "example.com", "/"), Some("r"));
        assert_eq!(name(&r, "www.example.com", "/"), None);
        assert_eq!(name(&r, "example.co", "/"), None);
        assert_eq!(name(&r, "xexample.com", "/"), None);
        assert_eq!(name(&r, "example.com.evil", "/"), None);
    }

    #[test]
    fn wildcard_matches_names_below_but_not_the_bare_suffix() {
        let r = Router::new(&[rc("w", &["*.example.com"], "/", "a")], pools);
        assert_eq!(name(&r, "a.example.com", "/"), Some("w"));
        assert_eq!(name(&r, "a.b.example.com", "/"), Some("w"));
        assert_eq!(name(&r, "example.com", "/"), None);
        assert_eq!(name(&r, ".example.com", "/"), None);
        assert_eq!(name(&r, "badexample.com", "/"), None);
        assert_eq!(name(&r, "a.example.org", "/"), None);
    }

    #[test]
    fn empty_host_list_matches_any_host() {
        let r = Router::new(&[rc("any", &[], "/", "b")], pools);
        assert_eq!(name(&r, "example.com", "/x"), Some("any"));
        assert_eq!(name(&r, "", "/"), Some("any"));
        assert_eq!(r.lookup("whatever", "/").map(|r| r.pool), Some(Some(1)));
    }

    #[test]
    fn path_prefix_is_a_literal_byte_prefix() {
        let r = Router::new(&[rc("api", &[], "/api/", "a")], pools);
        assert_eq!(name(&r, "h", "/api/"), Some("api"));
        assert_eq!(name(&r, "h", "/api/v1/users?x=1"), Some("api"));
        assert_eq!(name(&r, "h", "/api"), None);
        assert_eq!(name(&r, "h", "/apix/"), None);
        assert_eq!(name(&r, "h", "/API/"), None);
        assert_eq!(name(&r, "h", "/%61pi/"), None);
        assert_eq!(name(&r, "h", ""), None);
    }

    #[test]
    fn first_match_in_file_order_wins() {
        let r = Router::new(
            &[
                rc("api", &["example.com"], "/api/", "a"),
                rc("site", &["example.com", "*.example.com"], "/", "b"),
                rc("api-late", &[], "/api/", "c"),
                rc("fallback", &[], "/", "c"),
            ],
            pools,
        );
        assert_eq!(name(&r, "example.com", "/api/x"), Some("api"));
        assert_eq!(name(&r, "example.com", "/index.html"), Some("site"));
        assert_eq!(name(&r, "www.example.com", "/api/x"), Some("site"));
        assert_eq!(name(&r, "other.org", "/api/x"), Some("api-late"));
        assert_eq!(name(&r, "other.org", "/"), Some("fallback"));
        // A broad route before a narrow one shadows it.
        let r = Router::new(
            &[rc("all", &[], "/", "a"), rc("api", &[], "/api/", "b")],
            pools,
        );
        assert_eq!(name(&r, "h", "/api/x"), Some("all"));
    }

    #[test]
    fn no_route_matches() {
        let r = Router::new(&[rc("api", &["example.com"], "/api/", "a")], pools);
        assert!(r.lookup("example.com", "/").is_none());
        assert!(r.lookup("other.com", "/api/").is_none());
        assert!(Router::new(&[], pools).lookup("h", "/").is_none());
    }

    #[test]
    fn routes_with_unknown_pools_are_skipped() {
        let r = Router::new(
            &[rc("ghost", &[], "/", "nope"), rc("real", &[], "/", "c")],
            pools,
        );
        assert_eq!(r.routes().len(), 1);
        let hit = r.lookup("h", "/").map(|r| (r.name.as_str(), r.pool));
        assert_eq!(hit, Some(("real", Some(2))));
    }

    #[test]
    fn patterns_are_compared_lower_case() {
        let r = Router::new(&[rc("r", &["Example.COM", "*.Foo.Org"], "/", "a")], pools);
        assert_eq!(name(&r, "example.com", "/"), Some("r"));
        assert_eq!(name(&r, "x.foo.org", "/"), Some("r"));
        assert_eq!(
            r.lookup("example.com", "/").map(Route::path_prefix),
            Some("/")
        );
    }
}
