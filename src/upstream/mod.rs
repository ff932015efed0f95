//! Upstream side of the proxy: pools of members, how a member is chosen,
//! how a request is sent to it, and how members' health is tracked (active
//! checks, passive ejection, DNS re-resolution, retry budgets).

pub(crate) mod balance;
pub(crate) mod client;
pub(crate) mod connect;
pub(crate) mod dns;
pub(crate) mod h1;
pub(crate) mod health;
pub(crate) mod member;
pub(crate) mod outlier;
pub(crate) mod pool;
pub(crate) mod retry;
pub(crate) mod status;
pub(crate) mod tls;
