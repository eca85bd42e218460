//! The classic parameter-server example: a dense linear model `pred = x·W + b`
//! (`W ∈ R^{100×10}`, `b ∈ R^{10}`) trained by workers that pull the parameters by key range,
//! compute mean-squared-error gradients on their own shard of a generated data set, and push
//! them; the servers apply plain SGD (learning rate 0.01). Asynchronous by default;
//! bulk-synchronous or bounded-staleness through worker clocks.
//!
//! The model is one table `<model>.params` of dim 10: rows 0..100 are `W`'s rows (one per
//! input feature), row 100 is `b`. The data set is generated from a seed: true `W*`, `b*`
//! with entries uniform in [-1, 1], inputs N(0, 1), outputs `x·W* + b*` plus N(0, σ²) noise;
//! worker `k` of `n` uses the examples `i ≡ k (mod n)`.

use std::time::Instant;

use paramdb_client::{BlockingClient, KeyRange, TableSpec, UpdateRule};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

use crate::error::{Result, TrainError};

pub const FEATURES: usize = 100;
pub const OUTPUTS: usize = 10;
const ROWS: usize = FEATURES + 1;

/// How workers synchronize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Async,
    /// Bulk-synchronous: every step waits for all workers.
    Bsp,
    /// Bounded staleness: a worker runs at most this many steps ahead of the slowest.
    Ssp(u64),
}

impl Mode {
    fn staleness(self) -> Option<u64> {
        match self {
            Mode::Async => None,
            Mode::Bsp => Some(0),
            Mode::Ssp(s) => Some(s),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub model: String,
    pub workers: usize,
    pub steps: u64,
    pub batch: usize,
    pub lr: f32,
    pub mode: Mode,
    pub examples: usize,
    pub noise: f32,
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            model: "linreg".into(),
            workers: 2,
            steps: 1000,
            batch: 32,
            lr: 0.01,
            mode: Mode::Async,
            examples: 20_000,
            noise: 0.1,
            seed: 7,
        }
    }
}

pub fn table(model: &str) -> String {
    format!("{model}.params")
}

/// The true parameters: `W*` row after row, then `b*`.
pub fn truth(seed: u64) -> Vec<f32> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..ROWS * OUTPUTS)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect()
}

/// Example `i`: its input and its noisy output.
fn example(cfg: &Config, truth: &[f32], i: usize) -> ([f32; FEATURES], [f32; OUTPUTS]) {
    let mut rng =
        SmallRng::seed_from_u64(cfg.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut x = [0.0f32; FEATURES];
    for v in &mut x {
        *v = StandardNormal.sample(&mut rng);
    }
    let mut y = predict(truth, &x);
    for v in &mut y {
        let e: f32 = StandardNormal.sample(&mut rng);
        *v += cfg.noise * e;
    }
    (x, y)
}

fn predict(params: &[f32], x: &[f32; FEATURES]) -> [f32; OUTPUTS] {
    let mut y = [0.0f32; OUTPUTS];
    y.copy_from_slice(&params[FEATURES * OUTPUTS..]);
    for (f, &xf) in x.iter().enumerate() {
        for (o, yo) in y.iter_mut().enumerate() {
            *yo += xf * params[f * OUTPUTS + o];
        }
    }
    y
}

/// Creates the table (if no other worker did yet).
pub fn create(client: &BlockingClient, cfg: &Config) -> Result<()> {
    let spec =
        TableSpec::new(table(&cfg.model), OUTPUTS as u32).with_rule(UpdateRule::Sgd { lr: cfg.lr });
    match client.create_table(spec) {
        Err(e) if !e.is_already_exists() => Err(e.into()),
        _ => Ok(()),
    }
}

/// The current parameters (pulled by key range).
pub fn params(client: &BlockingClient, model: &str) -> Result<Vec<f32>> {
    let mut p = Vec::with_capacity(ROWS * OUTPUTS);
    for block in client.pull_range(&table(model), KeyRange::new(0, ROWS as u64)) {
        let block = block?;
        // Rows never pushed are not stored and read as their initial value, zero.
        for (k, row) in block.keys.iter().zip(block.values.chunks(OUTPUTS)) {
            p.resize(*k as usize * OUTPUTS, 0.0);
            p.extend_from_slice(row);
        }
    }
    p.resize(ROWS * OUTPUTS, 0.0);
    Ok(p)
}

/// Largest absolute difference between `params` and the truth.
pub fn max_error(params: &[f32], seed: u64) -> f32 {
    params
        .iter()
        .zip(truth(seed))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

/// One step's report.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub worker: usize,
    pub step: u64,
    /// Mean squared error of the batch before the update.
    pub loss: f32,
}

/// Runs worker `worker` of `cfg.workers` for `cfg.steps` steps. Returns steps per second.
pub fn run_worker(
    client: &BlockingClient,
    cfg: &Config,
    worker: usize,
    on_step: &(dyn Fn(&Step) + Sync),
) -> Result<f64> {
    if worker >= cfg.workers {
        return Err(TrainError::Invalid(format!(
            "worker {worker} of {}",
            cfg.workers
        )));
    }
    create(client, cfg)?;
    let truth = truth(cfg.seed);
    let mut clock = match cfg.mode.staleness() {
        Some(s) => Some(client.join_clock(&cfg.model, worker as u64, cfg.workers as u64, s)?),
        None => None,
    };
    let mine: Vec<usize> = (worker..cfg.examples).step_by(cfg.workers).collect();
    let mut rng = SmallRng::seed_from_u64(cfg.seed.wrapping_add(worker as u64 + 1));
    let t = table(&cfg.model);
    let started = Instant::now();
    for step in 0..cfg.steps {
        let p = params(client, &cfg.model)?;
        let mut grad = vec![0.0f32; ROWS * OUTPUTS];
        let mut loss = 0.0f32;
        for _ in 0..cfg.batch {
            let (x, y) = example(cfg, &truth, mine[rng.random_range(0..mine.len())]);
            let pred = predict(&p, &x);
            for o in 0..OUTPUTS {
                let err = pred[o] - y[o];
                loss += err * err;
                // d(mean of err²)/dW[f][o] = 2·err·x[f] / batch
                let g = 2.0 * err / cfg.batch as f32;
                for (f, &xf) in x.iter().enumerate() {
                    grad[f * OUTPUTS + o] += g * xf;
                }
                grad[FEATURES * OUTPUTS + o] += g;
            }
        }
        client.push_range(&t, 0, &grad)?;
        on_step(&Step {
            worker,
            step,
            loss: loss / (cfg.batch * OUTPUTS) as f32,
        });
        if let Some(c) = clock.as_mut() {
            c.advance()?;
        }
    }
    Ok(cfg.steps as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

/// Runs all `cfg.workers` workers as threads of this process, sharing `client`.
pub fn run_threads(
    client: &BlockingClient,
    cfg: &Config,
    on_step: &(dyn Fn(&Step) + Sync),
) -> Result<()> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..cfg.workers)
            .map(|w| s.spawn(move || run_worker(client, cfg, w, on_step)))
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(TrainError::Invalid("a worker thread panicked".into())))
                .map(|_| ())
        })
    })
}
