//! Upstream side of the proxy: pools of members, how a member is chosen,
//! and how a request is sent to it.

pub mod balance;
pub mod connect;
pub mod member;
pub mod pool;
