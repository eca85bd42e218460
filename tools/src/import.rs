//! `paramdb import TABLE --format … --in FILE`: the export formats read back (and GloVe's
//! text, which has no header), streamed into a bulk import (`paramdb_client::Importer`): each
//! shard writes the rows as RocksDB table files and ingests them at the end, without the
//! gradient log. Memory stays bounded: rows are read and sent a block at a time.
//!
//! Rows are keyed as the file says: word2vec text and binary label rows with words, tsv with
//! its `<stem>.metadata.tsv` labels, npy and safetensors carry keys (`<stem>.keys.npy`, the
//! `keys` tensor; without them a row's key is its index). When the table belongs to a word2vec
//! model (`<model>.in` / `<model>.out`, or `--vocab MODEL`), labels are words, keyed the way
//! the trainer keys them, and words new to the model's vocabulary are added to it with their
//! rank as count (a file's first word counts most), so the model exports in the file's order
//! and `neighbours` and `eval` find its words. Otherwise a label must be a key.

mod read;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use paramdb_client::{BlockingClient, BlockingImporter, Initializer, TableSpec, UpdateRule};
use paramdb_trainer::{keys::word_key, vocab, word2vec};

use crate::export::Format;
use crate::target::Target;
use read::{Label, Reader};

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The table to import into (created with the file's dim if missing).
    pub table: String,
    #[arg(long, value_enum)]
    pub format: Format,
    /// The file to read (for npy and tsv, the keys and labels are read from the files beside
    /// it that `paramdb export` writes).
    #[arg(long = "in")]
    pub input: PathBuf,
    /// Key rows by this word2vec model's words and add new words to its vocabulary (default:
    /// the model the table's name names, if any).
    #[arg(long)]
    pub vocab: Option<String>,
    /// Initializer of a table this creates (e.g. `zeros`, `uniform(-0.1,0.1)`; default: a
    /// model's input table gets word2vec's, uniform in ±0.5/dim with the trainer's default
    /// seed, so words the file lacks start as a fresh run's; any other table zeros).
    #[arg(long)]
    pub init: Option<Initializer>,
    /// Update rule of a table this creates (e.g. `add`, `sgd(0.1)`, `adagrad(0.1,1e-8,0.1)`).
    #[arg(long, default_value = "add")]
    pub rule: UpdateRule,
    #[command(flatten)]
    pub target: Target,
}

/// What an import read and stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Imported {
    pub rows: u64,
    pub dim: usize,
    /// Words added to the model's vocabulary.
    pub new_words: u64,
    pub files: usize,
    pub bytes: u64,
}

pub fn run(args: ImportArgs) -> anyhow::Result<()> {
    let client = args.target.connect()?;
    let model = model_of(&args.table, args.vocab.as_deref());
    let i = import(
        &client,
        &args.table,
        args.format,
        &args.input,
        model.as_deref(),
        Creation {
            init: args.init,
            rule: args.rule,
        },
    )?;
    println!(
        "imported {} rows of dim {} into {} from {} ({} RocksDB table files, {} bytes{})",
        i.rows,
        i.dim,
        args.table,
        args.input.display(),
        i.files,
        i.bytes,
        match &model {
            Some(m) => format!("; {} new words in {}", i.new_words, vocab::table(m)),
            None => String::new(),
        }
    );
    Ok(())
}

/// The model whose words label `table`'s rows.
pub fn model_of(table: &str, vocab: Option<&str>) -> Option<String> {
    vocab.map(String::from).or_else(|| {
        ["in", "out"]
            .iter()
            .find_map(|s| table.strip_suffix(&format!(".{s}")).map(String::from))
    })
}

/// How an import creates its table when it does not exist.
#[derive(Debug, Clone, Default)]
pub struct Creation {
    /// `None`: word2vec's initializer for a model's input table, zeros for any other.
    pub init: Option<Initializer>,
    pub rule: UpdateRule,
}

impl Creation {
    fn spec(self, table: &str, dim: u32) -> TableSpec {
        let trainer_input = table
            .strip_suffix(".in")
            .map(|m| word2vec::input_spec(m, dim, word2vec::Config::default().seed));
        let spec = match (self.init, trainer_input) {
            (Some(init), _) => TableSpec::new(table, dim).with_init(init),
            (None, Some(spec)) => spec,
            (None, None) => TableSpec::new(table, dim).with_init(Initializer::Zeros),
        };
        spec.with_rule(self.rule)
    }
}

/// Imports `input` into `table`, creating it as `create` says (its dim taken from the file) if
/// it does not exist.
pub fn import(
    client: &BlockingClient,
    table: &str,
    format: Format,
    input: &Path,
    model: Option<&str>,
    create: Creation,
) -> anyhow::Result<Imported> {
    let mut reader = Reader::open(format, input)?;
    let dim = reader.dim();
    match client.describe_table(table) {
        Ok(t) if t.dim as usize != dim => bail!(
            "{} has rows of dim {dim}; table {} has dim {}",
            input.display(),
            paramdb_types::quote(table),
            t.dim
        ),
        Ok(_) => {}
        Err(_) => client
            .create_table(create.spec(table, dim as u32))
            .with_context(|| format!("creating table {}", paramdb_types::quote(table)))?,
    }
    let mut rows = client.import(table)?;
    let mut words = match model {
        Some(m) => Some(NewWords::new(client, m, reader.rows_hint())?),
        None => None,
    };
    let mut n = 0u64;
    while let Some((label, values)) = reader.next_row()? {
        let key = match (&label, words.as_mut()) {
            (Label::Word(w), Some(words)) => words.add(w)?,
            (Label::Word(w), None) => w.parse::<u64>().map_err(|_| {
                anyhow::anyhow!(
                    "{}: row {} is labelled {}, which is not a key: table {} belongs to no word2vec model (name it MODEL.in, or pass --vocab MODEL, to import words)",
                    input.display(),
                    n + 1,
                    paramdb_types::quote(w),
                    paramdb_types::quote(table)
                )
            })?,
            (Label::Key(k), _) => *k,
        };
        rows.add(key, values)
            .with_context(|| format!("{}: row {}", input.display(), n + 1))?;
        n += 1;
    }
    reader.check_count(n)?;
    let new_words = match words {
        Some(w) => w.finish()?,
        None => 0,
    };
    let r = rows.finish()?;
    Ok(Imported {
        rows: r.rows,
        dim,
        new_words,
        files: r.files,
        bytes: r.bytes,
    })
}

/// Words of an import that the model's vocabulary does not have yet, checked a chunk at a
/// time and imported with their rank as count.
struct NewWords<'c> {
    client: &'c BlockingClient,
    table: String,
    importer: Option<BlockingImporter>,
    pending: Vec<(u64, String, u64)>,
    next_count: u64,
    added: u64,
}

/// Words checked against the vocabulary per pull.
const WORD_CHUNK: usize = 16_384;

impl<'c> NewWords<'c> {
    fn new(client: &'c BlockingClient, model: &str, rows: Option<u64>) -> anyhow::Result<Self> {
        let table = vocab::table(model);
        if client.describe_table(&table).is_err() {
            client.create_table(
                TableSpec::new(&table, vocab::VOCAB_DIM).with_rule(UpdateRule::Add),
            )?;
        }
        Ok(NewWords {
            client,
            table,
            importer: None,
            pending: Vec::new(),
            // Descending from the row count (or a large number when the file does not say),
            // so the file's order is the model's frequency order.
            next_count: rows.unwrap_or(1 << 40),
            added: 0,
        })
    }

    fn add(&mut self, word: &str) -> anyhow::Result<u64> {
        if !vocab::acceptable(word) {
            bail!(
                "the word {} cannot be in a vocabulary (empty, or over {} bytes)",
                paramdb_types::quote(word),
                vocab::MAX_WORD_BYTES
            );
        }
        let key = word_key(word);
        self.pending
            .push((key, word.to_string(), self.next_count.max(1)));
        self.next_count = self.next_count.saturating_sub(1);
        if self.pending.len() >= WORD_CHUNK {
            self.flush()?;
        }
        Ok(key)
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let keys: Vec<u64> = self.pending.iter().map(|p| p.0).collect();
        let stored = self.client.pull(&self.table, &keys)?;
        let dim = vocab::VOCAB_DIM as usize;
        for ((key, word, count), row) in self.pending.drain(..).zip(stored.chunks(dim)) {
            if vocab::decode_count(row).unwrap_or(0) > 0 {
                continue; // the model knows the word: its count stays
            }
            if self.importer.is_none() {
                self.importer = Some(self.client.import(&self.table)?);
            }
            let imp = self.importer.as_mut().expect("started above");
            imp.add(key, &vocab::encode(&word, count))?;
            self.added += 1;
        }
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<u64> {
        self.flush()?;
        if let Some(imp) = self.importer.take() {
            imp.finish()?;
        }
        Ok(self.added)
    }
}
