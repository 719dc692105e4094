//! Timing the sides fairly, and printing the results.

use crate::raw::BoxResult;
use std::time::{Duration, Instant};

/// The implementations compared, in the order of [`Measurement`]'s times. Targets compare the
/// first with the second; the third shows what db4's choice of generated index columns costs.
pub const SIDES: [&str; 3] = ["db4", "raw, same schema", "raw, stored index columns"];

/// An operation on one side: takes an item and the running checksum, returns the new checksum.
pub type SideOp<'a, I> = &'a dyn Fn(&I, u64) -> BoxResult<u64>;

/// A goal for the comparison of db4 with raw rusqlite on the same schema.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// db4's median time is at most this multiple of raw's.
    MaxTimeRatio(f64),
    /// db4's throughput is at least this fraction of raw's.
    MinThroughputRatio(f64),
}

impl Target {
    fn label(self) -> String {
        match self {
            Target::MaxTimeRatio(r) => format!("time ≤ {r:.2}×"),
            Target::MinThroughputRatio(r) => format!("throughput ≥ {r:.2}×"),
        }
    }

    fn met(self, time_ratio: f64) -> bool {
        match self {
            Target::MaxTimeRatio(r) => time_ratio <= r,
            Target::MinThroughputRatio(r) => 1.0 / time_ratio >= r,
        }
    }
}

/// The timings of one operation on every side, one entry per timed repetition.
#[derive(Debug)]
pub struct Measurement {
    name: String,
    /// Operations per repetition.
    ops: usize,
    unit: &'static str,
    /// `times[side][rep]`.
    times: [Vec<Duration>; SIDES.len()],
    target: Option<Target>,
    /// The side the target compares db4 with (1 unless [`against`](Self::against) says).
    against: usize,
}

impl Measurement {
    /// An operation run `ops` times (counted in `unit`s) per repetition.
    pub fn new(name: impl Into<String>, ops: usize, unit: &'static str, target: Option<Target>) -> Self {
        Self { name: name.into(), ops, unit, times: Default::default(), target, against: 1 }
    }

    /// Compares db4 with side `side` for the target (the stored-columns store, say).
    pub fn against(mut self, side: usize) -> Self {
        self.against = side.clamp(1, SIDES.len() - 1);
        self
    }

    /// The operation's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Records one repetition: each side's time.
    pub fn push(&mut self, round: [Duration; SIDES.len()]) {
        for (times, t) in self.times.iter_mut().zip(round) {
            times.push(t);
        }
    }

    /// db4's median time over side `side`'s.
    fn ratio(&self, side: usize) -> f64 {
        median(&self.times[0]).as_secs_f64() / median(&self.times[side]).as_secs_f64()
    }
}

/// The median of `times`.
pub fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

/// Runs `op` over `items` in order, threading the checksum through, and times it.
fn time_chunk<I>(items: &[I], sum: u64, op: SideOp<'_, I>) -> BoxResult<(Duration, u64)> {
    let start = Instant::now();
    let sum = items.iter().try_fold(sum, |sum, item| op(item, sum))?;
    Ok((start.elapsed(), sum))
}

/// Times a read workload on every side: `reps` repetitions over the same `items` in the same
/// order (see [`interleaved_round`]).
pub fn interleaved<I>(
    reps: usize,
    m: &mut Measurement,
    items: &[I],
    chunk: usize,
    expected: u64,
    sides: [SideOp<'_, I>; SIDES.len()],
) -> BoxResult<()> {
    for round in 0..reps {
        interleaved_round(round, m, items, chunk, expected, sides)?;
    }
    Ok(())
}

/// Times one repetition of a workload on every side: each side runs all of `items` in order,
/// but the sides take turns in chunks of `chunk` items, the side going first rotating (and
/// starting from `round`), so load from other processes on the machine hits all of them alike.
/// Each side's checksum must come out as `expected`.
pub fn interleaved_round<I>(
    round: usize,
    m: &mut Measurement,
    items: &[I],
    chunk: usize,
    expected: u64,
    sides: [SideOp<'_, I>; SIDES.len()],
) -> BoxResult<()> {
    let mut time = [Duration::ZERO; SIDES.len()];
    let mut sum = [0; SIDES.len()];
    for (k, part) in items.chunks(chunk.max(1)).enumerate() {
        for turn in 0..SIDES.len() {
            let side = (round + k + turn) % SIDES.len();
            let (t, s) = time_chunk(part, sum[side], sides[side])?;
            time[side] += t;
            sum[side] = s;
        }
    }
    if let Some(side) = (0..SIDES.len()).find(|&side| sum[side] != expected) {
        return Err(format!(
            "{}: {} returned different results (checksum {:#x}, expected {expected:#x})",
            m.name, SIDES[side], sum[side]
        )
        .into());
    }
    m.push(time);
    Ok(())
}

/// Times a write workload on every side: one untimed warm-up round, then `reps` timed ones,
/// each interleaved as in [`interleaved_round`]. `next_round` gives each round's items (a
/// round's writes differ from the previous round's) and the checksum every side must reach.
pub fn write_rounds<I>(
    reps: usize,
    m: &mut Measurement,
    chunk: usize,
    mut next_round: impl FnMut() -> (Vec<I>, u64),
    sides: [SideOp<'_, I>; SIDES.len()],
) -> BoxResult<()> {
    for round in 0..=reps {
        let (items, expected) = next_round();
        if round == 0 {
            let mut warm_up = Measurement::new(format!("{} (warm-up)", m.name), m.ops, m.unit, None);
            interleaved_round(round, &mut warm_up, &items, chunk, expected, sides)?;
        } else {
            interleaved_round(round, m, &items, chunk, expected, sides)?;
        }
    }
    Ok(())
}

/// `d` in s, ms or µs.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.2} µs", s * 1e6)
    }
}

fn format_rate(ops: usize, d: Duration, unit: &str) -> String {
    let rate = ops as f64 / d.as_secs_f64();
    if rate >= 1e6 {
        format!("{:.2} M {unit}/s", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:.1} k {unit}/s", rate / 1e3)
    } else {
        format!("{rate:.0} {unit}/s")
    }
}

/// Prints the results as a Markdown table, then every repetition's times.
pub fn report(measurements: &[Measurement]) {
    println!(
        "| operation | ops per rep | {} | {} | db4 / raw time | target | met | {} | db4 / stored time |",
        SIDES[0], SIDES[1], SIDES[2]
    );
    println!("| --- | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: |");
    for m in measurements {
        let cell = |side: usize| {
            let t = median(&m.times[side]);
            format!("{} ({})", format_duration(t), format_rate(m.ops, t, m.unit))
        };
        let ratio = m.ratio(1);
        let (target, met) = match m.target {
            Some(t) => {
                let label = if m.against == 1 { t.label() } else { format!("{} vs {}", t.label(), SIDES[m.against]) };
                (label, if t.met(m.ratio(m.against)) { "yes" } else { "**no**" })
            }
            None => ("—".to_owned(), "—"),
        };
        println!(
            "| {} | {} | {} | {} | {ratio:.3}× | {target} | {met} | {} | {:.3}× |",
            m.name,
            m.ops,
            cell(0),
            cell(1),
            cell(2),
            m.ratio(2)
        );
    }
    println!();
    println!("per repetition (median time per operation in parentheses):");
    for m in measurements {
        println!("  {}", m.name);
        for (side, times) in m.times.iter().enumerate() {
            let list = times.iter().map(|&t| format_duration(t)).collect::<Vec<_>>().join(", ");
            let per_op = format_duration(median(times).div_f64(m.ops as f64));
            println!("    {:<26} {list} ({per_op})", format!("{}:", SIDES[side]));
        }
        for (name, times) in SIDES.iter().zip(&m.times).skip(1) {
            let mut ratios: Vec<f64> =
                m.times[0].iter().zip(times).map(|(d, r)| d.as_secs_f64() / r.as_secs_f64()).collect();
            let shown = ratios.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>().join(", ");
            ratios.sort_by(f64::total_cmp);
            println!("    db4 / {name}: {shown} (median {:.3})", ratios[ratios.len() / 2]);
        }
    }
}
