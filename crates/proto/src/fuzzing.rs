//! Entry points for the cargo-fuzz targets; each checks invariants, not only
//! "no panic".
