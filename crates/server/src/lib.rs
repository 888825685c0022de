//! Millrace server (work in progress).
