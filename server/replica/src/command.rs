//! The writes a replica group orders: what the leader proposes (`Command`), and what applying
//! one did (`Outcome`). Every replica applies the same commands in the same order to its
//! engine, so they all reach the same rows, exactly-once windows and LSNs.

use paramdb_engine::{Classify, ClientId, Initializer, Lifecycle, Store, TableSpec, UpdateRule};
use paramdb_types::Code;
use serde::{Deserialize, Serialize};

/// One write, as the leader proposes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// The leader's clock when it proposed the write (whole seconds since the Unix epoch). The
    /// engine stamps the record with it (never going back), so expiry is decided alike on every
    /// replica.
    pub time: u32,
    pub op: Op,
}

/// Who wrote: the client, its sequence number (kept across retries and failovers, so a retry
/// on a new leader is applied once), and the write's fan-out across shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub client: u64,
    pub seq: u64,
    pub parts: u16,
}

impl Origin {
    pub const ANONYMOUS: Origin = Origin {
        client: 0,
        seq: 0,
        parts: 0,
    };
}

/// The rows of a push: a key list, or the block from `start` with as many rows as the values
/// hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Keys {
    List(Vec<u64>),
    Block { start: u64 },
}

/// The rows of a delete: a key list, or every key in `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Deletion {
    Keys(Vec<u64>),
    Range { start: u64, end: u64 },
}

/// A table definition in its text forms (the engine's types are not serde).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    pub name: String,
    pub dim: u32,
    pub init: String,
    pub rule: String,
    pub seed: u64,
    pub lifecycle: Policies,
}

/// A table's lifecycle policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policies {
    pub ttl_secs: Option<u64>,
    pub admit_after: u32,
    pub max_rows: Option<u64>,
}

impl From<Lifecycle> for Policies {
    fn from(l: Lifecycle) -> Policies {
        Policies {
            ttl_secs: l.ttl_secs,
            admit_after: l.admit_after,
            max_rows: l.max_rows,
        }
    }
}

impl From<Policies> for Lifecycle {
    fn from(p: Policies) -> Lifecycle {
        Lifecycle {
            ttl_secs: p.ttl_secs,
            admit_after: p.admit_after,
            max_rows: p.max_rows,
        }
    }
}

impl From<&TableSpec> for Spec {
    fn from(s: &TableSpec) -> Spec {
        Spec {
            name: s.name.clone(),
            dim: s.dim,
            init: s.init.to_string(),
            rule: s.rule.to_string(),
            seed: s.seed,
            lifecycle: s.lifecycle.into(),
        }
    }
}

impl Spec {
    /// The engine's definition; `Err` says which text form does not parse.
    pub fn to_table_spec(&self) -> Result<TableSpec, String> {
        let init: Initializer = self.init.parse().map_err(|e| format!("init: {e}"))?;
        let rule: UpdateRule = self.rule.parse().map_err(|e| format!("rule: {e}"))?;
        let mut spec = TableSpec::new(self.name.clone(), self.dim)
            .with_init(init)
            .with_lifecycle(self.lifecycle.into());
        spec.rule = rule;
        spec.seed = self.seed;
        Ok(spec)
    }
}

/// What a command does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    Push {
        table: String,
        origin: Origin,
        keys: Keys,
        values: Vec<f32>,
    },
    Delete {
        table: String,
        origin: Origin,
        rows: Deletion,
    },
    CreateTable(Spec),
    DropTable {
        name: String,
    },
    SetLifecycle {
        table: String,
        policies: Policies,
    },
}

impl Op {
    /// A short name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Push { .. } => "push",
            Op::Delete { .. } => "delete",
            Op::CreateTable(_) => "create table",
            Op::DropTable { .. } => "drop table",
            Op::SetLifecycle { .. } => "set lifecycle",
        }
    }
}

/// What applying a command did, on the replica that answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The LSN of the record the entry became (the entry's index + 1).
    pub lsn: u64,
    /// A retry of a write applied before: acknowledged, not applied again.
    pub duplicate: bool,
    /// The engine refused the command (bad input, an unknown table, a sequence number too
    /// old). Every replica refuses it alike.
    pub refused: Option<Refusal>,
}

/// Why a command was refused: gRPC's canonical code and the engine's message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub code: i32,
    pub message: String,
}

impl Refusal {
    pub fn code(&self) -> Code {
        Code::from_i32(self.code)
    }
}

/// A failure of the engine itself (not the command's fault): the replica cannot go on.
#[derive(Debug)]
pub(crate) struct Broken(pub(crate) String);

/// Applies `op` to `store`. `Ok(Err(_))` is a refusal, the same on every replica; `Err` means
/// the store failed.
pub(crate) fn execute(store: &Store, op: &Op) -> Result<Result<(u64, bool), Refusal>, Broken> {
    fn judge<E: Classify + std::error::Error + 'static>(
        r: Result<(u64, bool), E>,
    ) -> Result<Result<(u64, bool), Refusal>, Broken> {
        match r {
            Ok(v) => Ok(Ok(v)),
            Err(e) if e.is_bad_input() => Ok(Err(Refusal {
                code: e.code() as i32,
                message: paramdb_engine::chain(&e),
            })),
            Err(e) => Err(Broken(paramdb_engine::chain(&e))),
        }
    }
    let last = || store.last_lsn();
    match op {
        Op::Push {
            table,
            origin,
            keys,
            values,
        } => {
            let c = ClientId(origin.client);
            let parts = origin.parts;
            let r = match keys {
                Keys::List(k) => store.push_part(table, c, origin.seq, parts, k, values),
                Keys::Block { start } => {
                    store.push_range_part(table, c, origin.seq, parts, *start, values)
                }
            };
            judge(r.map(|a| (a.lsn, a.duplicate)))
        }
        Op::Delete {
            table,
            origin,
            rows,
        } => {
            let c = ClientId(origin.client);
            let parts = origin.parts;
            let r = match rows {
                Deletion::Keys(k) => store.delete_part(table, c, origin.seq, parts, k),
                Deletion::Range { start, end } => store.delete_range_part(
                    table,
                    c,
                    origin.seq,
                    parts,
                    paramdb_types::KeyRange::new(*start, *end),
                ),
            };
            judge(r.map(|a| (a.lsn, a.duplicate)))
        }
        Op::CreateTable(spec) => match spec.to_table_spec() {
            Ok(s) => judge(store.create_table(s).map(|_| (last(), false))),
            Err(message) => Ok(Err(Refusal {
                code: Code::InvalidArgument as i32,
                message,
            })),
        },
        Op::DropTable { name } => judge(store.drop_table(name).map(|()| (last(), false))),
        Op::SetLifecycle { table, policies } => judge(
            store
                .set_lifecycle(table, (*policies).into())
                .map(|_| (last(), false)),
        ),
    }
}
