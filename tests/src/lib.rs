//! The lab every integration test and `cargo xtask demo` stands on:
//! namespaces as guards, a multi-host topology builder, agents as child
//! processes, and traffic checks (`traffic`: ping, a byte-checked TCP transfer).
pub mod bpf_run;
pub mod churn;
pub mod cni;
pub mod docker_lab;
pub mod dockerd;
pub mod etcd;
pub mod frames;
pub mod fuzz;
pub mod lab;
pub mod netns;
pub mod probe;
pub mod saved_state;
pub mod tc_filters;
pub mod traffic;
