//! End-to-end tests: start the real binary and talk TCP to it.
