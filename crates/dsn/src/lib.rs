//! Millrace dsn (work in progress).
