//! Deterministic pushes with integer-valued gradients (exact in f32), so an oracle can say
//! bit for bit what a table must hold after any set of pushes was applied exactly once.

/// Row width of the crash-test table.
pub const DIM: usize = 8;
/// Keys shared by all pushes (where lost or doubled pushes change sums).
pub const SHARED_KEYS: u64 = 64;
/// Each push also adds 1.0 to its own witness row, which must end at exactly 1.0.
pub const WITNESS_BASE: u64 = 1 << 40;

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The witness key of push `(client, seq)`.
pub fn witness_key(client: u64, seq: u64) -> u64 {
    WITNESS_BASE + (client << 24) + seq
}

/// The keys and values of push `(client, seq)`: three distinct shared keys with small integer
/// values, then the witness key with all ones.
pub fn push_content(client: u64, seq: u64) -> (Vec<u64>, Vec<f32>) {
    let mut keys = Vec::with_capacity(4);
    let mut h = mix(client.wrapping_mul(1_000_003) ^ seq);
    while keys.len() < 3 {
        let k = h % SHARED_KEYS;
        if !keys.contains(&k) {
            keys.push(k);
        }
        h = mix(h);
    }
    let mut values = Vec::with_capacity(4 * DIM);
    for _ in 0..3 {
        for _ in 0..DIM {
            values.push((h % 3 + 1) as f32);
            h = mix(h);
        }
    }
    keys.push(witness_key(client, seq));
    values.extend(std::iter::repeat_n(1.0f32, DIM));
    (keys, values)
}

/// What the shared keys must hold once `pushes` were each applied exactly once, in f64
/// (every partial sum is an integer far below 2^24, so f32 addition is exact in any order).
pub fn expected_shared(pushes: impl IntoIterator<Item = (u64, u64)>) -> Vec<f64> {
    let mut sums = vec![0.0f64; SHARED_KEYS as usize * DIM];
    for (c, s) in pushes {
        let (keys, values) = push_content(c, s);
        for (i, &k) in keys[..3].iter().enumerate() {
            for d in 0..DIM {
                sums[k as usize * DIM + d] += values[i * DIM + d] as f64;
            }
        }
    }
    sums
}

/// Rows each client owns alone in the workload with deletes (`op`): only that client pushes
/// to them and deletes them, so the oracle knows their order.
pub const PRIVATE_KEYS: u64 = 16;
/// Where the private rows start: client `c`'s are `PRIVATE_BASE + (c << 20) + i`.
pub const PRIVATE_BASE: u64 = 1 << 50;

/// Private row `i` of `client`.
pub fn private_key(client: u64, i: u64) -> u64 {
    PRIVATE_BASE + (client << 20) + i
}

/// One write of the workload with deletes.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// `push_content`'s rows plus one private row.
    Push { keys: Vec<u64>, values: Vec<f32> },
    /// Two private rows.
    DeleteKeys(Vec<u64>),
    /// Private rows `[start, end)`.
    DeleteRange { start: u64, end: u64 },
}

/// Write `(client, seq)` of the workload with deletes: every 7th a range delete of some of
/// the client's private rows, every 5th a delete of two of them, the rest pushes.
pub fn op(client: u64, seq: u64) -> Op {
    let h = mix(client.wrapping_mul(7_000_003) ^ seq.rotate_left(17));
    if seq.is_multiple_of(7) {
        let a = h % PRIVATE_KEYS;
        let b = a + 1 + (h >> 8) % (PRIVATE_KEYS - a);
        return Op::DeleteRange {
            start: private_key(client, a),
            end: private_key(client, b),
        };
    }
    if seq.is_multiple_of(5) {
        let a = h % PRIVATE_KEYS;
        let b = (a + 1 + (h >> 8) % (PRIVATE_KEYS - 1)) % PRIVATE_KEYS;
        return Op::DeleteKeys(vec![private_key(client, a), private_key(client, b)]);
    }
    let (mut keys, mut values) = push_content(client, seq);
    keys.push(private_key(client, h % PRIVATE_KEYS));
    values.extend((0..DIM as u64).map(|d| ((h >> (d * 2)) % 3 + 1) as f32));
    Op::Push { keys, values }
}

/// What `client`'s private rows hold (`PRIVATE_KEYS × DIM`, zeros when deleted or never
/// pushed) after its writes `1..=last`, each applied once in order.
pub fn expected_private(client: u64, last: u64) -> Vec<f64> {
    let mut rows = vec![0.0f64; PRIVATE_KEYS as usize * DIM];
    let index = |k: u64| (k - private_key(client, 0)) as usize;
    for seq in 1..=last {
        match op(client, seq) {
            Op::Push { keys, values } => {
                let i = index(keys[4]);
                for d in 0..DIM {
                    rows[i * DIM + d] += values[4 * DIM + d] as f64;
                }
            }
            Op::DeleteKeys(keys) => {
                for k in keys {
                    rows[index(k) * DIM..(index(k) + 1) * DIM].fill(0.0);
                }
            }
            Op::DeleteRange { start, end } => {
                rows[index(start) * DIM..index(end) * DIM].fill(0.0);
            }
        }
    }
    rows
}
