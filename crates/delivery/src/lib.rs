//! Millrace delivery (work in progress).
