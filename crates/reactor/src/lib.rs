//! Millrace reactor (work in progress).
