//! TEST ONLY: real past bugs, re-introduced on demand so that the simulator (crate
//! `holdfast-sim`) can show it finds them. Compiled in only with the `planted-bugs` feature
//! (which the simulator turns on); without it [`planted`] is a constant `false` and the
//! branches it guards vanish. With it, a bug is planted for the calling thread only — the
//! simulator runs all the nodes of one seed on one thread.

/// A past bug, and where it was fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// Fixed in b5aa5d6: a node catching up applies an older grant to a session after the
    /// session's newer queued Acquire registered its wait, and answers that Acquire with the
    /// older grant's token (`waiters::Wait::after` ignored the Acquire's own log index).
    StaleGrant,
    /// Found by the full-restart test: a restarted leader that restores its leadership serves
    /// linearizable reads from a read index built on the commit index it persisted, which a
    /// crash can roll back (`server::start_with`, `enable_leader_restore`).
    LeaderRestore,
}

impl Bug {
    pub const ALL: [Bug; 2] = [Bug::StaleGrant, Bug::LeaderRestore];

    pub fn name(self) -> &'static str {
        match self {
            Bug::StaleGrant => "stale-grant",
            Bug::LeaderRestore => "leader-restore",
        }
    }
}

#[cfg(feature = "planted-bugs")]
thread_local! {
    static PLANTED: std::cell::Cell<Option<Bug>> = const { std::cell::Cell::new(None) };
}

/// Plants `bug` on this thread (`None`: none).
#[cfg(feature = "planted-bugs")]
pub fn plant(bug: Option<Bug>) {
    PLANTED.set(bug);
}

/// Whether `bug` is planted on this thread.
#[inline(always)]
pub fn planted(bug: Bug) -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        PLANTED.get() == Some(bug)
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        let _ = bug;
        false
    }
}
