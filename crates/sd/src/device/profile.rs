//! Where a forward pass spends its time, by kind of work (`edict bench`'s breakdown).
//!
//! While [`record`] runs, each instrumented step waits for the device before and after it
//! (`Device::sync`) and its wall time is charged to its [`Kind`]; only the outermost step counts,
//! so the matmuls inside attention are attention. The syncs are the price of an honest
//! attribution on an asynchronous device: a recorded call is slower than an unrecorded one, and
//! the bench reports both. Outside `record` a step costs one thread-local check.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use burn::tensor::Device;

use crate::device::backend::execution_error;
use crate::Result;

/// What an instrumented step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Convolutions (with their bias).
    Conv,
    /// `softmax(q kᵀ / √d) v`: the scores, the softmax and the weighted sum.
    Attention,
    /// Linear layers: attention projections, the feed-forward (with its GEGLU).
    Matmul,
    /// GroupNorm (with the SiLU after it) and LayerNorm.
    Norm,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Conv => "conv",
            Self::Attention => "attention",
            Self::Matmul => "matmul",
            Self::Norm => "norm",
        }
    }
}

/// Seconds per kind over one recorded call, and the call's own wall time (the rest is
/// element-wise work, reshapes and copies between the steps).
#[derive(Clone, Debug, Default)]
pub struct Breakdown {
    pub kinds: BTreeMap<Kind, f64>,
    pub total: f64,
}

impl Breakdown {
    /// The time outside every instrumented step.
    pub fn other(&self) -> f64 {
        (self.total - self.kinds.values().sum::<f64>()).max(0.0)
    }
}

#[derive(Default)]
struct Recording {
    depth: usize,
    spent: BTreeMap<Kind, Duration>,
    failed: Option<burn_std::ExecutionError>,
}

thread_local! {
    static RECORDING: RefCell<Option<Recording>> = const { RefCell::new(None) };
}

/// Runs `f` and, during [`record`], charges its time to `kind`.
pub fn step<O>(kind: Kind, device: &Device, f: impl FnOnce() -> O) -> O {
    let outermost = RECORDING.with_borrow_mut(|r| {
        r.as_mut().is_some_and(|r| {
            r.depth += 1;
            r.depth == 1
        })
    });
    let start = outermost.then(|| {
        sync(device);
        Instant::now()
    });
    let out = f();
    if let Some(start) = start {
        sync(device);
        let spent = start.elapsed();
        RECORDING.with_borrow_mut(|r| *r.as_mut().expect("recording").spent.entry(kind).or_default() += spent);
    }
    RECORDING.with_borrow_mut(|r| {
        if let Some(r) = r.as_mut() {
            r.depth -= 1;
        }
    });
    out
}

fn sync(device: &Device) {
    if let Err(e) = device.sync() {
        RECORDING.with_borrow_mut(|r| {
            if let Some(r) = r.as_mut() {
                r.failed.get_or_insert(e);
            }
        });
    }
}

/// Runs `f` on `device` with its steps timed by kind; the device is idle before and after.
pub fn record<O>(device: &Device, f: impl FnOnce() -> O) -> Result<(O, Breakdown)> {
    device.sync().map_err(execution_error)?;
    RECORDING.with_borrow_mut(|r| *r = Some(Recording::default()));
    let start = Instant::now();
    let out = f();
    let synced = device.sync();
    let total = start.elapsed().as_secs_f64();
    let recording = RECORDING.with_borrow_mut(Option::take).expect("recording");
    synced.map_err(execution_error)?;
    if let Some(e) = recording.failed {
        return Err(execution_error(e));
    }
    let kinds = recording.spent.into_iter().map(|(k, d)| (k, d.as_secs_f64())).collect();
    Ok((out, Breakdown { kinds, total }))
}
