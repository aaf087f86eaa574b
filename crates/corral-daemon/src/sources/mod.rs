//! Where a run's bytes come from. Each source hands what it reads to the run's
//! logbook writer; the child-process pipes are the first one.

pub mod child;
