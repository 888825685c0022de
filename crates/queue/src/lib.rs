//! Millrace queue (work in progress).
