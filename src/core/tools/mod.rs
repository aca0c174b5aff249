//! What stands a system up on one laptop and measures it: echo upstreams
//! (and the PROXY header reader they use), the mTLS client, the load
//! generator, the in-process lab, and a real `redis-server` for fleets.

pub mod bench;
pub mod client;
pub mod echo;
pub mod lab;
pub mod proxy_read;
pub mod redis;
