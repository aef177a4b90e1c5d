//! Benchmark metrics, each computed as its official scorer computes it.
