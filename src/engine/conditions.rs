//! Condition types and reasons, and the one place a condition is set. Conditions follow the
//! metav1 / kstatus conventions: a condition's `lastTransitionTime` only moves when its status
//! does, and the list keeps a fixed order so statuses compare and diff stably.

use crate::api::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The condition types of the managed kinds, in the order a status lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionType {
    Ready,
    Rendered,
    /// Every relay pod runs the namespace's current configuration.
    Applied,
    Tested,
    Compliant,
    Conflict,
    /// kstatus: a permanent error that waiting will not fix (Flux fails fast on it).
    Stalled,
    /// Present only while something deserves a look though it is valid.
    Warning,
}

impl ConditionType {
    const ALL: [ConditionType; 8] = [
        ConditionType::Ready,
        ConditionType::Rendered,
        ConditionType::Applied,
        ConditionType::Tested,
        ConditionType::Compliant,
        ConditionType::Conflict,
        ConditionType::Stalled,
        ConditionType::Warning,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ConditionType::Ready => "Ready",
            ConditionType::Rendered => "Rendered",
            ConditionType::Applied => "Applied",
            ConditionType::Tested => "Tested",
            ConditionType::Compliant => "Compliant",
            ConditionType::Conflict => "Conflict",
            ConditionType::Stalled => "Stalled",
            ConditionType::Warning => "Warning",
        }
    }

    fn order(type_: &str) -> usize {
        Self::ALL
            .iter()
            .position(|c| c.as_str() == type_)
            .unwrap_or(usize::MAX)
    }
}

macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Every condition reason the engine writes (CamelCase, as the API conventions ask).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason {
            $($(#[$doc])* $name,)*
        }

        impl Reason {
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$name => stringify!($name),)*
                }
            }
        }
    };
}

reasons! {
    /// An AddressList whose every entry is valid.
    Valid,
    /// Some entries of an AddressList were rejected; the rest are in use.
    InvalidEntries,
    /// A field of this generation cannot be used.
    InvalidSpec,
    /// A referenced AddressList does not exist.
    MissingReference,
    /// This generation is in the relay configuration.
    Rendered,
    /// Monitor mode: nothing mandatory is rendered.
    MonitorOnly,
    NoConflict,
    /// Another resource claims the same subject.
    Conflict,
    /// A conflict went to an older resource.
    ConflictLost,
    /// A gateway no mail is routed to.
    NotInUse,
    /// An inbound-only policy: there is nothing to connect to and test.
    InboundOnly,
    TestsDisabled,
    NotTestedYet,
    Tested,
    NothingToTest,
    PassedWithWarnings,
    AllPassed,
    /// Monitor mode: destinations that would fail once enforced.
    WouldFail,
    NotCompliant,
    /// The relay configuration could not be stored.
    RelayConfigNotWritten,
    /// Every relay pod runs the current configuration.
    Applied,
    /// Some relay pods do not run the current configuration yet.
    Propagating,
    /// A relay pod refused the current configuration and keeps its last good one.
    Refused,
    /// No relay pod reports to the controller (or the backend has no relays).
    NoRelays,
    /// Nothing needs a change of the resource or of the relay.
    NotStalled,
    OutboundOnlyOptions,
}

/// A condition's status: `True`, `False` or `Unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

impl From<bool> for Status {
    fn from(ok: bool) -> Status {
        if ok { Status::True } else { Status::False }
    }
}

/// Sets conditions of one resource's status for one generation at one time.
pub struct Conditions<'a> {
    list: &'a mut Vec<Condition>,
    generation: i64,
    now: &'a Time,
}

impl<'a> Conditions<'a> {
    pub fn new(list: &'a mut Vec<Condition>, generation: i64, now: &'a Time) -> Self {
        Conditions {
            list,
            generation,
            now,
        }
    }

    /// Set (or replace) a condition, keeping its transition time when the status is
    /// unchanged.
    pub fn set(
        &mut self,
        type_: ConditionType,
        status: impl Into<Status>,
        reason: Reason,
        message: impl Into<String>,
    ) -> &mut Self {
        let (type_, status) = (type_.as_str(), status.into().as_str());
        let last_transition_time = self
            .list
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or_else(|| self.now.clone(), |c| c.last_transition_time.clone());
        self.list.retain(|c| c.type_ != type_);
        self.list.push(Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.as_str().to_string(),
            message: message.into(),
            observed_generation: Some(self.generation),
            last_transition_time,
        });
        self.list.sort_by(|a, b| {
            ConditionType::order(&a.type_)
                .cmp(&ConditionType::order(&b.type_))
                .then(a.type_.cmp(&b.type_))
        });
        self
    }

    /// Drop a condition of this type, if present.
    pub fn remove(&mut self, type_: ConditionType) -> &mut Self {
        self.list.retain(|c| c.type_ != type_.as_str());
        self
    }

    /// Whether a condition of this type is present.
    pub fn has(&self, type_: ConditionType) -> bool {
        self.get(type_).is_some()
    }

    /// The condition of this type, if present.
    pub fn get(&self, type_: ConditionType) -> Option<&Condition> {
        find(self.list, type_)
    }
}

/// The condition of one type, if present.
pub fn find(list: &[Condition], type_: ConditionType) -> Option<&Condition> {
    list.iter().find(|c| c.type_ == type_.as_str())
}

/// Whether a condition has this status and reason.
pub fn is(c: &Condition, status: Status, reason: Reason) -> bool {
    c.status == status.as_str() && c.reason == reason.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Time {
        Time(s.parse().expect("timestamp"))
    }

    #[test]
    fn transition_time_moves_only_with_the_status_and_order_is_fixed() {
        let mut list = Vec::new();
        let t0 = at("2026-01-01T00:00:00Z");
        Conditions::new(&mut list, 1, &t0)
            .set(ConditionType::Conflict, false, Reason::NoConflict, "")
            .set(ConditionType::Ready, true, Reason::Rendered, "a");
        let t1 = at("2026-01-02T00:00:00Z");
        Conditions::new(&mut list, 2, &t1).set(ConditionType::Ready, true, Reason::Rendered, "b");
        let types: Vec<&str> = list.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Ready", "Conflict"]);
        assert_eq!(list[0].last_transition_time, t0);
        assert_eq!(list[0].observed_generation, Some(2));
        assert_eq!(list[0].message, "b");
        Conditions::new(&mut list, 3, &t1).set(
            ConditionType::Ready,
            Status::Unknown,
            Reason::NotTestedYet,
            "",
        );
        assert_eq!(list[0].last_transition_time, t1);
        assert!(is(&list[0], Status::Unknown, Reason::NotTestedYet));
        assert_eq!(
            Reason::RelayConfigNotWritten.as_str(),
            "RelayConfigNotWritten"
        );
    }
}
