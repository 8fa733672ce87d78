//! The segmented write-ahead log of a shard and the snapshot store, on io_uring.
