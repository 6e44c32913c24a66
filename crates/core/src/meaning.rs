//! The digest of what an event means to the fold: its typed content, trace id and whether its
//! timestamp was inferred, and nothing of how its body was spelled. It breaks ties between
//! events with equal timestamps, so that the choice between them depends on their meaning alone:
//! an event and its twin in the other wire format (or in another producer's key names) rank
//! the same, and a call folds to the same record whichever forms its producers used.
//!
//! The encoding is written out field by field, tagged and length-prefixed, rather than taken
//! from a `Debug` or serde rendering, so that it only changes when the meaning does.

use sha2::{Digest, Sha256};

use crate::event::{EventKind, Identity};

/// The first 8 bytes of the digest: the tie-break of `merge::Stamp`.
pub fn tie(trace_id: Option<&str>, timestamp_inferred: bool, kind: &EventKind) -> [u8; 8] {
    let mut c = Canonical(Sha256::new());
    c.text(trace_id);
    c.flag(timestamp_inferred);
    match kind {
        EventKind::Started(s) => {
            c.tag(1);
            c.text(s.from_uri.as_deref());
            c.text(s.to_uri.as_deref());
            c.text(s.caller_number.as_deref());
            c.text(s.callee_number.as_deref());
            c.number(s.server_rtp_port.map(i64::from));
            c.text(s.caller_rtp_addr.as_deref());
            c.identity(&s.dialplan_identity);
            c.flag(s.inbound);
        }
        EventKind::Answered => c.tag(2),
        EventKind::Identified(identity) => {
            c.tag(3);
            c.identity(identity);
        }
        EventKind::RecordingAvailable { uri } => {
            c.tag(4);
            c.text(uri.as_deref());
        }
        EventKind::Ended { reason } => {
            c.tag(5);
            c.text(reason.as_deref());
        }
        EventKind::TerminateRequested => c.tag(6),
        EventKind::DialogTurn(turn) => {
            c.tag(7);
            c.number(Some(i64::from(turn.turn_index)));
            c.text(turn.user_text.as_deref());
            c.text(turn.ai_text.as_deref());
            c.text(Some(&turn.rag_sources.to_string()));
            c.number(turn.stt_ms.map(i64::from));
            c.number(turn.llm_ms.map(i64::from));
            c.number(turn.tts_ms.map(i64::from));
        }
        EventKind::UsageReported(usage) => {
            c.tag(8);
            c.text(usage.usage_id.as_deref());
            c.text(usage.service.as_deref());
            c.text(Some(&usage.resource_type));
            c.text(Some(&usage.quantity.normalize().to_string()));
        }
        EventKind::Other => c.tag(9),
    }
    let digest = c.0.finalize();
    let mut tie = [0u8; 8];
    tie.copy_from_slice(&digest[..8]);
    tie
}

/// Writes values into the hasher so that no two sequences of values give the same bytes.
struct Canonical(Sha256);

impl Canonical {
    fn tag(&mut self, tag: u8) {
        self.0.update([tag]);
    }

    fn flag(&mut self, value: bool) {
        self.0.update([u8::from(value)]);
    }

    fn text(&mut self, value: Option<&str>) {
        match value {
            None => self.0.update([0]),
            Some(s) => {
                self.0.update([1]);
                self.0.update((s.len() as u64).to_be_bytes());
                self.0.update(s.as_bytes());
            }
        }
    }

    fn number(&mut self, value: Option<i64>) {
        match value {
            None => self.0.update([0]),
            Some(n) => {
                self.0.update([1]);
                self.0.update(n.to_be_bytes());
            }
        }
    }

    fn identity(&mut self, identity: &Identity) {
        match identity.user_id {
            None => self.0.update([0]),
            Some(user) => {
                self.0.update([1]);
                self.0.update(user.as_bytes());
            }
        }
        self.number(identity.contact_id.map(i64::from));
        self.text(identity.tenant_id.as_deref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tie_follows_the_meaning_not_the_spelling() {
        let ended = |reason: &str| EventKind::Ended {
            reason: Some(reason.to_owned()),
        };
        assert_eq!(
            tie(Some("t"), false, &ended("busy")),
            tie(Some("t"), false, &ended("busy"))
        );
        assert_ne!(
            tie(Some("t"), false, &ended("busy")),
            tie(Some("t"), false, &ended("failure"))
        );
        assert_ne!(
            tie(Some("t"), false, &ended("busy")),
            tie(None, false, &ended("busy"))
        );
        assert_ne!(
            tie(Some("t"), false, &ended("busy")),
            tie(Some("t"), true, &ended("busy"))
        );
        // Length prefixes keep adjacent fields apart.
        let a = EventKind::RecordingAvailable {
            uri: Some("ab".into()),
        };
        assert_ne!(
            tie(Some("x"), false, &a),
            tie(
                Some("xa"),
                false,
                &EventKind::RecordingAvailable {
                    uri: Some("b".into())
                }
            )
        );
    }
}
