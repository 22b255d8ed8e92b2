//! Host data collection from /proc (filled in by the collectors work).
