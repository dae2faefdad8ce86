//! Weight loading: safetensors files (memory-mapped natively, in-memory bytes in the browser)
//! indexed by diffusers key, handed out to module constructors through a candle-style
//! [`VarBuilder`] that checks every shape and names the file and key in every error.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

use burn::tensor::{DType, Device, Tensor, TensorCreationOptions, TensorData};
use safetensors::{Dtype as StDtype, SafeTensors};

use crate::checkpoint::lora::Merges;
use crate::checkpoint::stream::{StreamedFile, StreamedTensor};
use crate::{Result, SdError};

/// The bytes of one safetensors file: a read-only memory map, or owned bytes (wasm, tests).
pub enum Bytes {
    #[cfg(not(target_arch = "wasm32"))]
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    /// Tells the OS that `range` has been read: a memory map's pages there stop counting in the
    /// process's memory (they stay in the page cache and are read back if touched again), so a
    /// model read tensor by tensor never holds its files' pages and its tensors at once.
    fn release(&self, range: std::ops::Range<usize>) {
        #[cfg(unix)]
        if let Bytes::Mmap(m) = self {
            // SAFETY: the map is read-only and file-backed: dropped pages read back from the file.
            // An error only means the pages stay counted.
            let _ = unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, range.start, range.len()) };
        }
        #[cfg(not(unix))]
        let _ = range;
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            Bytes::Mmap(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// One parsed safetensors file.
pub struct WeightFile {
    name: String,
    bytes: Bytes,
    /// key -> (dtype, shape, absolute byte range)
    tensors: HashMap<String, (StDtype, Vec<usize>, std::ops::Range<usize>)>,
}

impl WeightFile {
    /// Parses the header; every offset is validated by the safetensors crate against the length.
    pub fn from_bytes(name: impl Into<String>, bytes: Bytes) -> Result<Self> {
        let name = name.into();
        let (header_len, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| {
            SdError::Safetensors {
                path: name.clone(),
                reason: e.to_string(),
            }
        })?;
        let base = 8 + header_len;
        let tensors = meta
            .tensors()
            .into_iter()
            .map(|(k, info)| {
                let (a, b) = info.data_offsets;
                (k, (info.dtype, info.shape.clone(), base + a..base + b))
            })
            .collect();
        Ok(Self {
            name,
            bytes,
            tensors,
        })
    }

    /// Memory-maps a file so a 4 GB checkpoint costs page cache, not twice its size in RAM.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &std::path::Path) -> Result<Self> {
        check_not_pickle(path)?;
        let io = |source| SdError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; a file truncated underneath us is the one hazard of any
        // mmap, and users do not edit checkpoints while they load.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::from_bytes(path.display().to_string(), Bytes::Mmap(map))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

}

/// The bytes of `path`, or `None` when there is no such file (optional model files).
#[cfg(not(target_arch = "wasm32"))]
pub fn read_optional(path: &std::path::Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SdError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// True when a file name says pickle (`.ckpt`, `.bin`, `.pt`, `.pth`, `.pkl`): such files can run
/// code when loaded and are never read.
pub fn is_pickle_name(path: &str) -> bool {
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    matches!(ext.as_deref(), Some("ckpt" | "bin" | "pt" | "pth" | "pkl"))
}

/// Refuses pickle-based checkpoints by extension.
#[cfg(not(target_arch = "wasm32"))]
pub fn check_not_pickle(path: &std::path::Path) -> Result<()> {
    if is_pickle_name(&path.display().to_string()) {
        return Err(SdError::Pickle {
            path: path.display().to_string(),
        });
    }
    Ok(())
}

/// True when the bytes start like a zip archive (torch.save) or a raw pickle.
pub fn looks_like_pickle(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || (bytes.len() > 1 && bytes[0] == 0x80 && bytes[1] <= 5)
}

/// Where a diffusers key really lives: which file, under which stored key.
struct Entry {
    file: usize,
    stored_key: String,
}

struct Store {
    files: Vec<Rc<WeightFile>>,
    index: HashMap<String, Entry>,
    used: RefCell<BTreeSet<String>>,
    device: Device,
    dtype: DType,
    /// `Some(seed)`: no files; every key gets seeded random values of the shape asked for.
    random: Option<u64>,
    /// A file received piece by piece, its tensors already on the device, and its name.
    streamed: HashMap<String, StreamedTensor>,
    streamed_name: String,
    /// LoRA changes added to weights as they are read (a stream adds its own as they arrive).
    merges: Merges,
}

impl Store {
    fn empty(device: &Device, dtype: DType) -> Self {
        Self {
            files: Vec::new(),
            index: HashMap::new(),
            used: RefCell::new(BTreeSet::new()),
            device: device.clone(),
            dtype,
            random: None,
            streamed: HashMap::new(),
            streamed_name: String::new(),
            merges: Merges::default(),
        }
    }
}

/// `stored` without the trailing 1s beyond `rank` dimensions: a linear layer stored as a 1×1
/// convolution (`[C, C, 1, 1]`, single-file VAE attention) lays its values out as `[C, C]`.
fn trim_ones(stored: &[usize], rank: usize) -> &[usize] {
    let mut s = stored;
    while s.len() > rank && s.last() == Some(&1) {
        s = &s[..s.len() - 1];
    }
    s
}

/// Little-endian f32, f16 or bf16 values as f32; `None` for other dtypes.
pub(crate) fn decode(dtype: StDtype, raw: &[u8]) -> Option<Vec<f32>> {
    let mut values = Vec::new();
    decode_into(dtype, raw, &mut values).then_some(values)
}

/// [`decode`], appending to `values`; false (and nothing appended) for other dtypes.
pub(crate) fn decode_into(dtype: StDtype, raw: &[u8], values: &mut Vec<f32>) -> bool {
    match dtype {
        StDtype::F32 => values.extend(raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        StDtype::F16 => values.extend(raw.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())),
        StDtype::BF16 => values.extend(raw.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        _ => return false,
    }
    true
}

/// Host values as a device tensor in `dtype`.
pub(crate) fn upload<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device, dtype: DType) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), TensorCreationOptions::new(device.clone()).with_dtype(dtype))
}

/// Hands out tensors under a key prefix, like diffusers' state-dict paths.
#[derive(Clone)]
pub struct VarBuilder {
    store: Rc<Store>,
    prefix: String,
}

impl VarBuilder {
    /// Builds from files whose keys already are diffusers/transformers keys.
    pub fn from_files(
        files: impl IntoIterator<Item = impl Into<Rc<WeightFile>>>,
        device: &Device,
        dtype: DType,
    ) -> Self {
        Self::from_files_mapped(files, device, dtype, |k| Some(k.to_string()))
    }

    /// Builds from files whose keys `map` renames to diffusers keys (`None` drops a key);
    /// this is how single-file checkpoints are read without copying them (one shared file
    /// serves the three networks).
    pub fn from_files_mapped(
        files: impl IntoIterator<Item = impl Into<Rc<WeightFile>>>,
        device: &Device,
        dtype: DType,
        map: impl Fn(&str) -> Option<String>,
    ) -> Self {
        let files: Vec<Rc<WeightFile>> = files.into_iter().map(Into::into).collect();
        let mut index = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            for k in f.keys() {
                if let Some(mapped) = map(k) {
                    index.insert(
                        mapped,
                        Entry {
                            file: i,
                            stored_key: k.to_string(),
                        },
                    );
                }
            }
        }
        Self { store: Rc::new(Store { files, index, ..Store::empty(device, dtype) }), prefix: String::new() }
    }

    /// Seeded random weights of whatever shape each module asks for, so an architecture runs
    /// without a download (benchmarks). Values depend only on the seed and the key.
    pub fn random(seed: u64, device: &Device, dtype: DType) -> Self {
        Self { store: Rc::new(Store { random: Some(seed), ..Store::empty(device, dtype) }), prefix: String::new() }
    }

    /// The tensors of a file received piece by piece ([`crate::checkpoint::stream`]), already on
    /// `device` in `dtype`.
    pub fn from_stream(file: StreamedFile, device: &Device, dtype: DType) -> Self {
        let store = Store { streamed: file.tensors, streamed_name: file.name, ..Store::empty(device, dtype) };
        Self { store: Rc::new(store), prefix: String::new() }
    }

    /// The same weights with LoRA `merges` added as they are read; `Err` once tensors were
    /// handed out (the merges would not reach them).
    pub fn with_merges(mut self, merges: Merges) -> Result<Self> {
        let store = Rc::get_mut(&mut self.store).ok_or_else(|| SdError::Invalid("LoRA merges must be set before any weight is read".into()))?;
        store.merges = merges;
        Ok(self)
    }

    /// The LoRA merges applied as weights are read.
    pub fn merges(&self) -> &Merges {
        &self.store.merges
    }

    /// Every key the files hold (as the networks ask for it) with its stored shape.
    pub fn shapes(&self) -> HashMap<String, Vec<usize>> {
        let files = self.store.index.iter().map(|(k, e)| (k.clone(), self.store.files[e.file].tensors[&e.stored_key].1.clone()));
        let streamed = self.store.streamed.iter().map(|(k, t)| (k.clone(), t.shape.clone()));
        files.chain(streamed).collect()
    }

    /// A builder one level down: `vb.pp("down_blocks").pp(0)`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Self {
            store: self.store.clone(),
            prefix,
        }
    }

    pub fn device(&self) -> &Device {
        &self.store.device
    }

    /// The dtype tensors are created in.
    pub fn dtype(&self) -> DType {
        self.store.dtype
    }

    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Whether the files hold `name` (always, for random weights).
    pub fn contains(&self, name: &str) -> bool {
        let key = self.key(name);
        self.store.random.is_some() || self.store.index.contains_key(&key) || self.store.streamed.contains_key(&key)
    }

    /// Reads `name` as f32 on the host, checking the shape. A stored shape that only adds
    /// trailing 1s (`[C, C, 1, 1]` for a linear layer, as in single-file VAE attention) is
    /// accepted, since the values are laid out identically.
    pub fn host_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let key = self.key(name);
        if let Some(seed) = self.store.random {
            return Ok(random_values(seed, &key, shape));
        }
        if let Some(t) = self.streamed(name, shape)? {
            // the layers take matrices from the device (`on_device_only`); nothing else is left there
            return t.host.clone().ok_or_else(|| SdError::Invalid(format!("{}: `{key}` is on the device only", self.store.streamed_name)));
        }
        let files = &self.store.files;
        let entry = self.store.index.get(&key).ok_or_else(|| SdError::MissingKey {
            file: files
                .iter()
                .map(|f| f.name())
                .chain((!self.store.streamed_name.is_empty()).then_some(self.store.streamed_name.as_str()))
                .collect::<Vec<_>>()
                .join(", "),
            key: key.clone(),
        })?;
        let file = &files[entry.file];
        let (dtype, stored, range) = &file.tensors[&entry.stored_key];
        if trim_ones(stored, shape.len()) != shape {
            return Err(SdError::Shape {
                file: file.name.clone(),
                key: entry.stored_key.clone(),
                expected: shape.to_vec(),
                found: stored.clone(),
            });
        }
        let mut values = decode(*dtype, &file.bytes[range.clone()]).ok_or_else(|| SdError::Dtype {
            file: file.name.clone(),
            key: entry.stored_key.clone(),
            dtype: format!("{dtype:?}"),
        })?;
        file.bytes.release(range.clone());
        self.store.merges.apply(&key, &mut values);
        self.store.used.borrow_mut().insert(key);
        Ok(values)
    }

    /// A device tensor of the model's dtype.
    pub fn get<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        if let Some(t) = self.streamed(name, &shape)? {
            return Ok(t.device.clone().reshape(shape));
        }
        let values = self.host_f32(name, &shape)?;
        Ok(self.tensor(values, shape))
    }

    /// Uploads host values in the model's dtype.
    pub fn tensor<const D: usize>(&self, values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
        upload(values, shape, &self.store.device, self.store.dtype)
    }

    /// Whether `name` came streamed and is on the device only ([`crate::checkpoint::stream`]):
    /// a layer then takes it from the device.
    pub fn on_device_only(&self, name: &str) -> bool {
        self.store.streamed.get(&self.key(name)).is_some_and(|t| t.host.is_none())
    }

    /// The streamed tensor `name`, shape checked as [`Self::host_f32`] checks; `None` when the
    /// weights were not streamed.
    fn streamed(&self, name: &str, shape: &[usize]) -> Result<Option<&StreamedTensor>> {
        let key = self.key(name);
        let Some(t) = self.store.streamed.get(&key) else {
            return Ok(None);
        };
        if trim_ones(&t.shape, shape.len()) != shape {
            return Err(SdError::Shape {
                file: self.store.streamed_name.clone(),
                key,
                expected: shape.to_vec(),
                found: t.shape.clone(),
            });
        }
        self.store.used.borrow_mut().insert(key);
        Ok(Some(t))
    }

    /// Keys present in the files (after mapping) that no module asked for, for a warning.
    pub fn unused_keys(&self) -> Vec<String> {
        let used = self.store.used.borrow();
        let keys = self.store.index.keys().chain(self.store.streamed.keys());
        let mut v: Vec<String> = keys.filter(|k| !used.contains(*k)).cloned().collect();
        v.sort();
        v
    }
}

/// Uniform values with a trained model's scales: norm weights `1 ± 0.17`, other vectors (biases,
/// norm shifts) `± 0.09`, matrices and kernels of variance `1/fan_in`, so activations stay O(1).
fn random_values(seed: u64, key: &str, shape: &[usize]) -> Vec<f32> {
    // FNV-1a of the key, so a tensor's values do not depend on the order modules are built in
    let mut state = key.bytes().fold(0xcbf2_9ce4_8422_2325u64 ^ seed, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    let mut uniform = move || {
        // SplitMix64 → [-√3, √3): unit variance
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * 3f32.sqrt()
    };
    let n = shape.iter().product();
    let norm_weight = shape.len() == 1
        && key.ends_with(".weight")
        && key.rsplit('.').nth(1).is_some_and(|m| m.contains("norm"));
    let (center, scale) = match shape {
        [_] if norm_weight => (1.0, 0.1),
        [_, rest @ ..] if !rest.is_empty() => (0.0, 1.0 / (rest.iter().product::<usize>() as f32).sqrt()),
        _ => (0.0, 0.05),
    };
    (0..n).map(|_| center + scale * uniform()).collect()
}
