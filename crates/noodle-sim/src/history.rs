//! The history of the compare-and-set registers and its linearizability check (stateright's
//! [`LinearizabilityTester`]).
//!
//! Clients record each operation when they invoke it and when its answer comes back, in the
//! order the simulation executed them (one thread runs the whole simulation, so that order is
//! a real-time order). Operations end in one of three ways:
//!
//! - *returned*: the client got an answer; the operation must appear in the linearization
//!   with exactly that answer;
//! - *not applied*: the system said it certainly did nothing (no leader, the request never
//!   left); the operation is left out, like a read that failed;
//! - *unknown*: a timeout or a broken connection; the write may take effect at any point after
//!   its invocation, even after the client moved on, or never. It is given to the tester as an
//!   invocation without a return, on a thread of its own (stateright lets such an operation
//!   take effect or not, and a thread with one in flight may invoke nothing more).
//!
//! Values written are unique, which keeps the search small: a wrong interleaving fails at the
//! next operation that observes a value.

use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// An operation on one register. Values are `u64`s stored big-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RegisterOp {
    Read,
    Cas {
        expected: Option<u64>,
        new: Option<u64>,
    },
    /// A compare-and-set whose outcome the client never learnt. Only ever given to the tester
    /// as an invocation without a return; see [`CasRegister`] for why it is a variant of its
    /// own.
    CasUnknown {
        expected: Option<u64>,
        new: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RegisterRet {
    Value(Option<u64>),
    CasOk,
    CasFailed { current: Option<u64> },
}

/// The sequential specification: one register holding an optional value.
///
/// An unknown compare-and-set that stateright places where it would fail changes nothing, so
/// that placement is the same as leaving it out, which stateright also tries; left alone, every
/// unknown operation would multiply the search by the number of places it could go. Such a
/// placement poisons the register instead, and every later completed operation fails against a
/// poisoned register, so the search drops the branch at once and loses no linearization.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CasRegister {
    value: Option<u64>,
    poisoned: bool,
}

impl SequentialSpec for CasRegister {
    type Op = RegisterOp;
    type Ret = RegisterRet;

    fn invoke(&mut self, op: &RegisterOp) -> RegisterRet {
        match *op {
            RegisterOp::Read => RegisterRet::Value(self.value),
            RegisterOp::Cas { expected, new } => {
                if self.value == expected {
                    self.value = new;
                    RegisterRet::CasOk
                } else {
                    RegisterRet::CasFailed {
                        current: self.value,
                    }
                }
            }
            RegisterOp::CasUnknown { expected, new } => {
                if self.value == expected {
                    self.value = new;
                } else {
                    self.poisoned = true;
                }
                RegisterRet::CasOk
            }
        }
    }

    fn is_valid_step(&mut self, op: &RegisterOp, ret: &RegisterRet) -> bool {
        !self.poisoned && self.invoke(op) == *ret
    }
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Still waiting for its answer.
    Pending,
    Returned {
        at: u64,
        ret: RegisterRet,
    },
    NotApplied,
    Unknown,
}

#[derive(Debug, Clone)]
pub(crate) struct OpRecord {
    /// Which client (a "thread" of the history).
    pub(crate) client: usize,
    pub(crate) register: usize,
    pub(crate) op: RegisterOp,
    pub(crate) invoked: u64,
    pub(crate) outcome: Outcome,
}

/// Every register operation of one run, in execution order.
#[derive(Debug, Default)]
pub(crate) struct History {
    ops: Vec<OpRecord>,
    clock: u64,
}

/// An operation's index in the [`History`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpId(usize);

/// Unknown operations get a thread each, numbered after every client's.
const UNKNOWN_THREADS_FROM: u64 = 1 << 32;

impl History {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    pub(crate) fn invoke(&mut self, client: usize, register: usize, op: RegisterOp) -> OpId {
        let invoked = self.tick();
        self.ops.push(OpRecord {
            client,
            register,
            op,
            invoked,
            outcome: Outcome::Pending,
        });
        OpId(self.ops.len() - 1)
    }

    pub(crate) fn returned(&mut self, id: OpId, ret: RegisterRet) {
        let at = self.tick();
        self.ops[id.0].outcome = Outcome::Returned { at, ret };
    }

    pub(crate) fn not_applied(&mut self, id: OpId) {
        self.ops[id.0].outcome = Outcome::NotApplied;
    }

    pub(crate) fn unknown(&mut self, id: OpId) {
        self.ops[id.0].outcome = Outcome::Unknown;
    }

    pub(crate) fn ops(&self) -> &[OpRecord] {
        &self.ops
    }

    /// Checks one register's history; the error describes it.
    pub(crate) fn check(&self, register: usize) -> Result<(), String> {
        let ops: Vec<&OpRecord> = self.ops.iter().filter(|o| o.register == register).collect();
        // Values some completed operation depends on: read, found by a failed CAS, or replaced
        // by a successful one.
        let mut observed: BTreeSet<Option<u64>> = BTreeSet::new();
        for o in &ops {
            if let Outcome::Returned { ret, .. } = o.outcome {
                match (o.op, ret) {
                    (_, RegisterRet::Value(v)) | (_, RegisterRet::CasFailed { current: v }) => {
                        observed.insert(v);
                    }
                    (RegisterOp::Cas { expected, .. }, RegisterRet::CasOk) => {
                        observed.insert(expected);
                    }
                    _ => {}
                }
            }
        }
        // An unknown write that is kept may have replaced a value: that value counts as seen
        // too, until nothing changes.
        loop {
            let before = observed.len();
            for o in &ops {
                if let (Outcome::Unknown | Outcome::Pending, RegisterOp::Cas { expected, new }) =
                    (o.outcome, o.op)
                    && (new.is_none() || observed.contains(&new))
                {
                    observed.insert(expected);
                }
            }
            if observed.len() == before {
                break;
            }
        }
        // (time, thread, op, return): invocations have no return.
        let mut events: Vec<(u64, u64, RegisterOp, Option<RegisterRet>)> = Vec::new();
        for (n, o) in ops.iter().enumerate() {
            let thread = o.client as u64;
            match o.outcome {
                Outcome::Returned { at, ret } => {
                    events.push((o.invoked, thread, o.op, None));
                    events.push((at, thread, o.op, Some(ret)));
                }
                Outcome::Unknown | Outcome::Pending => {
                    let RegisterOp::Cas { expected, new } = o.op else {
                        continue; // a read that never answered changed nothing
                    };
                    // A write whose value nobody saw and nobody replaced can only have taken
                    // effect after every operation that depends on the register's value, where
                    // it changes nothing seen: leaving it out loses no linearization.
                    if new.is_some() && !observed.contains(&new) {
                        continue;
                    }
                    let op = RegisterOp::CasUnknown { expected, new };
                    events.push((o.invoked, UNKNOWN_THREADS_FROM + n as u64, op, None));
                }
                Outcome::NotApplied => {}
            }
        }
        events.sort_by_key(|e| e.0);
        let mut tester = LinearizabilityTester::<u64, CasRegister>::new(CasRegister::default());
        for (_, thread, op, ret) in &events {
            let fed = match ret {
                None => tester.on_invoke(*thread, *op).map(|_| ()),
                Some(ret) => tester.on_return(*thread, *ret).map(|_| ()),
            };
            fed.map_err(|e| format!("the recorded history is malformed: {e}"))?;
        }
        if tester.serialized_history().is_some() {
            return Ok(());
        }
        Err(describe(&ops))
    }
}

/// The history of one register, one operation a line, for a failure message.
fn describe(ops: &[&OpRecord]) -> String {
    const LINES_MAX: usize = 400;
    let mut out = String::new();
    for o in ops.iter().take(LINES_MAX) {
        let op = match o.op {
            RegisterOp::Read => "read".to_string(),
            RegisterOp::Cas { expected, new } | RegisterOp::CasUnknown { expected, new } => {
                format!("cas({} -> {})", show(expected), show(new))
            }
        };
        let outcome = match o.outcome {
            Outcome::Returned { at, ret } => {
                let ret = match ret {
                    RegisterRet::Value(v) => show(v),
                    RegisterRet::CasOk => "ok".into(),
                    RegisterRet::CasFailed { current } => {
                        format!("failed, current {}", show(current))
                    }
                };
                format!("returned at {at}: {ret}")
            }
            Outcome::NotApplied => "not applied".into(),
            Outcome::Unknown | Outcome::Pending => "unknown".into(),
        };
        let _ = writeln!(out, "  [{}] client {}: {op} {outcome}", o.invoked, o.client);
    }
    if ops.len() > LINES_MAX {
        let _ = writeln!(out, "  ... {} more", ops.len() - LINES_MAX);
    }
    out
}

fn show(v: Option<u64>) -> String {
    v.map_or_else(|| "none".into(), |v| v.to_string())
}

/// A register value as stored: 8 bytes, big-endian.
pub(crate) fn encode(v: Option<u64>) -> Option<Vec<u8>> {
    v.map(|v| v.to_be_bytes().to_vec())
}

/// A register value as read back; bytes that are not a value of ours read as `u64::MAX`, which
/// no client writes, so the check fails on them.
pub(crate) fn decode(v: Option<Vec<u8>>) -> Option<u64> {
    v.map(|b| <[u8; 8]>::try_from(b.as_slice()).map_or(u64::MAX, u64::from_be_bytes))
}
