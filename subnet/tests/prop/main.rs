//! Property tests of weft-subnet's parsers of outside data: lease values and keys from
//! etcd, net-conf.json, and Node objects from the Kubernetes API. For any input each
//! returns `Ok` or `Err` and never panics (a panic would stop weftd on one malformed
//! peer); where cheap, values also survive a round trip. Inputs come from
//! `weft_testkit`; every test is named `prop_*` (see docs/testing.md).

mod config;
mod kube;
mod lease;
