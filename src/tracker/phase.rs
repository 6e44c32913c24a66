//! `PhaseCell`: where an actor's call stands, shared between the actor and the routing map.
//!
//! The actor stores its call's phase after every fold; the map's once-a-second scan reads it
//! without asking the actor (an actor with a full mailbox would hold up the gauges). An atomic
//! rather than a lock, since the scan visits every active call.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::merge::Phase;

/// An atomic holding a `Phase`.
#[derive(Debug)]
pub struct PhaseCell(AtomicU8);

impl PhaseCell {
    pub fn new(phase: Phase) -> Self {
        PhaseCell(AtomicU8::new(code(phase)))
    }

    pub fn load(&self) -> Phase {
        match self.0.load(Ordering::Relaxed) {
            0 => Phase::Ringing,
            1 => Phase::Answered,
            _ => Phase::Ended,
        }
    }

    /// Relaxed: the phase only feeds gauges, and no other memory is published through it.
    pub fn store(&self, phase: Phase) {
        self.0.store(code(phase), Ordering::Relaxed);
    }
}

fn code(phase: Phase) -> u8 {
    match phase {
        Phase::Ringing => 0,
        Phase::Answered => 1,
        Phase::Ended => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::PhaseCell;
    use crate::merge::Phase;

    #[test]
    fn a_cell_gives_back_the_phase_stored() {
        let cell = PhaseCell::new(Phase::Ringing);
        assert_eq!(cell.load(), Phase::Ringing);
        for phase in [Phase::Answered, Phase::Ended, Phase::Ringing] {
            cell.store(phase);
            assert_eq!(cell.load(), phase);
        }
    }
}
