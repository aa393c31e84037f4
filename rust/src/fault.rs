//! Named crash points for the fault-injection tests (the Python twin is `lmrs.faults`).
//!
//! `LMRS_FAULT_POINT=NAME` makes the process die the moment it reaches the point `NAME`:
//! `LMRS_FAULT_ACTION=kill` sends itself SIGKILL, anything else exits at once with status
//! [`EXIT_CODE`] without any cleanup (no destructors, no temporary files removed), as a
//! power cut or an OOM kill would. Unset, a point costs one environment lookup; points sit
//! around file commits, never in a hot loop.

/// The exit status of a process stopped at a fault point (the same as `lmrs.faults`).
pub const EXIT_CODE: i32 = 86;

/// Every Rust fault point, in the order a write reaches them. Each writer that commits a
/// file through [`crate::atomic`] names it `<what>.before_rename` / `<what>.after_rename`.
pub const POINTS: &[&str] = &[
    // Tokenizer::save
    "tokenizer.before_rename",
    "tokenizer.after_rename",
    // lmrs encode: a chunk of ids written to an open (temporary) token file,
    "token_file.chunk_written",
    // a token file (or shard) complete and synced, then renamed to its final name,
    "token_file.data.before_rename",
    "token_file.data.after_rename",
    // its document index,
    "token_file.index.before_rename",
    "token_file.index.after_rename",
    // its sidecar,
    "token_file.sidecar.before_rename",
    "token_file.sidecar.after_rename",
    // a shard directory's manifest,
    "token_file.manifest.before_rename",
    "token_file.manifest.after_rename",
    // and a whole shard directory swapped in for the previous one.
    "token_file.dir.before_rename",
    "token_file.dir.after_rename",
];

/// Dies here if `LMRS_FAULT_POINT` names this point (see the module docs).
pub fn point(name: &str) {
    debug_assert!(
        POINTS.contains(&name),
        "fault point {name:?} is not in POINTS"
    );
    if std::env::var_os("LMRS_FAULT_POINT").is_some_and(|target| target == name) {
        die();
    }
}

fn die() -> ! {
    #[cfg(unix)]
    {
        if std::env::var_os("LMRS_FAULT_ACTION").is_some_and(|action| action == "kill") {
            // SAFETY: getpid and kill take and return plain integers and touch no memory
            // of ours; SIGKILL cannot be caught, so the process ends here.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
        // SAFETY: _exit ends the process at once; it touches no Rust state, and skipping
        // destructors and atexit handlers is the point (a crash runs none of them).
        unsafe { libc::_exit(EXIT_CODE) }
    }
    #[cfg(not(unix))]
    std::process::exit(EXIT_CODE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_names_are_unique_and_well_formed() {
        let mut names = POINTS.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), POINTS.len());
        for name in POINTS {
            assert!(
                name.starts_with("tokenizer.") || name.starts_with("token_file."),
                "{name}"
            );
        }
    }

    #[test]
    fn an_unset_point_returns() {
        // The test process never sets LMRS_FAULT_POINT to a real point name.
        if std::env::var_os("LMRS_FAULT_POINT").is_none() {
            point("tokenizer.before_rename");
        }
    }
}
