//! Fault injection for tests: makes creating a WAL file fail as if the disk were full.
//!
//! Hidden switches, for tests only: [`set_no_space`] on the calling thread (unit tests), or,
//! process-wide, the environment variable `TOPICS_FAULT_NO_SPACE_FILE` naming a file whose
//! existence means "no space" (so a black-box test can turn it on and off from outside).

use std::cell::Cell;

thread_local! {
    static NO_SPACE: Cell<bool> = const { Cell::new(false) };
}

/// Turns the injected lack of space on or off for WAL files made on this thread.
pub fn set_no_space(on: bool) {
    NO_SPACE.with(|c| c.set(on));
}

pub(crate) fn no_space() -> bool {
    NO_SPACE.with(|c| c.get())
        || std::env::var_os("TOPICS_FAULT_NO_SPACE_FILE")
            .is_some_and(|p| std::path::Path::new(&p).exists())
}
