//! The CNI plugin (in progress).

fn main() {}
