//! kvs
