//! Upstream side of the proxy: pools of members, how a member is chosen,
//! how a request is sent to it, and how members' health is tracked (active
//! checks, passive ejection, DNS re-resolution, retry budgets).

pub mod balance;
pub mod connect;
pub mod dns;
pub mod health;
pub mod member;
pub mod outlier;
pub mod pool;
pub mod retry;
pub mod status;
