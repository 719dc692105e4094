//! Benchmark placeholder, replaced by the comparison benchmark.
fn main() {}
