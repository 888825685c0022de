//! Millrace spool (work in progress).
