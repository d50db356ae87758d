//! The alarm lifecycle operators know (as ThingsBoard names it):
//! `ACTIVE_UNACK → ACTIVE_ACK → CLEARED_ACK`, or `ACTIVE_UNACK →
//! CLEARED_UNACK → CLEARED_ACK`. Acknowledging and clearing are each done
//! once; a cleared and acknowledged alarm is closed for good.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    ActiveUnack,
    ActiveAck,
    ClearedUnack,
    ClearedAck,
}

/// Why a lifecycle step was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the alarm is already acknowledged")]
    AlreadyAcknowledged,
    #[error("the alarm is already cleared")]
    AlreadyCleared,
}

impl Status {
    /// Open alarms are the active ones: at most one per (tenant,
    /// originator, type) may exist.
    pub fn is_active(self) -> bool {
        matches!(self, Status::ActiveUnack | Status::ActiveAck)
    }

    pub fn is_acknowledged(self) -> bool {
        matches!(self, Status::ActiveAck | Status::ClearedAck)
    }

    pub fn ack(self) -> Result<Status, Refused> {
        match self {
            Status::ActiveUnack => Ok(Status::ActiveAck),
            Status::ClearedUnack => Ok(Status::ClearedAck),
            Status::ActiveAck | Status::ClearedAck => Err(Refused::AlreadyAcknowledged),
        }
    }

    pub fn clear(self) -> Result<Status, Refused> {
        match self {
            Status::ActiveUnack => Ok(Status::ClearedUnack),
            Status::ActiveAck => Ok(Status::ClearedAck),
            Status::ClearedUnack | Status::ClearedAck => Err(Refused::AlreadyCleared),
        }
    }
}

/// Ordered: a repeat of an open alarm may escalate it, never lower it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Indeterminate,
    Warning,
    Minor,
    Major,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Indeterminate,
        Severity::Warning,
        Severity::Minor,
        Severity::Major,
        Severity::Critical,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn step(s: Status, ack: bool) -> Result<Status, Refused> {
        if ack {
            s.ack()
        } else {
            s.clear()
        }
    }

    proptest! {
        /// Whatever operators and recoveries do, in any order: an alarm is
        /// acknowledged at most once and cleared at most once, never
        /// becomes active again, and ends CLEARED_ACK once both happened.
        #[test]
        fn lifecycle_steps_are_one_way(steps in proptest::collection::vec(any::<bool>(), 0..8)) {
            let mut s = Status::ActiveUnack;
            let (mut acks, mut clears) = (0, 0);
            for ack in steps {
                let was_active = s.is_active();
                match step(s, ack) {
                    Ok(n) => {
                        if ack { acks += 1 } else { clears += 1 }
                        prop_assert!(was_active || !n.is_active());
                        s = n;
                    }
                    Err(Refused::AlreadyAcknowledged) => prop_assert!(ack && s.is_acknowledged()),
                    Err(Refused::AlreadyCleared) => prop_assert!(!ack && !s.is_active()),
                }
            }
            prop_assert!(acks <= 1 && clears <= 1);
            prop_assert_eq!(s == Status::ClearedAck, acks == 1 && clears == 1);
        }
    }

    #[test]
    fn status_and_severity_names_follow_the_contract() {
        assert_eq!(
            serde_json::to_value(Status::ClearedUnack).unwrap(),
            "CLEARED_UNACK"
        );
        assert_eq!(
            serde_json::to_value(Severity::Critical).unwrap(),
            "critical"
        );
        assert!(
            Severity::Critical > Severity::Major && Severity::Warning > Severity::Indeterminate
        );
    }
}
