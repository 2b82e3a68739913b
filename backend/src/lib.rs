//! weft-backend: the kernel side of weft (interface discovery now; datapath backends next).
//! It knows nothing about etcd or Kubernetes.

pub mod kernel;
