//! Layer 4 (in progress)
pub struct Process;
pub fn current_process() {}
