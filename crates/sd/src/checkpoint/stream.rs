//! A safetensors file read as its bytes arrive, in any pieces: the header first, then each
//! tensor, put on the device the moment its last byte is in and its bytes freed. The page reads
//! weight files this way, so wasm memory never holds a whole file (SDXL's fp16 UNet alone is
//! 5.1 GB; wasm32 has 4 GiB).
//!
//! Tensors of up to [`PACK_BYTES`] share device buffers of about that size ("packs"), each a
//! view of its pack: one buffer per tensor costs more than the tensor where a buffer is host
//! memory (Chromium's SwiftShader keeps each above about 1 MiB on the GPU process's heap, in
//! 2 MiB steps out of 16 GiB of address space: one buffer per tensor turned SDXL's 12.9 GiB of
//! f32 weights into 14.6 GiB and crashed the process at the first edit).
//!
//! Matrices stay on the device only: the layers that need one on the host in the usual layout
//! (`linear`) take it transposed on the device instead. Tensors of other ranks up to
//! [`HOST_COPY_ELEMENTS`] values (biases, norms, small convolutions: what the fingerprint and
//! the CPU kernels read) and the text encoders' token tables (kept on the host by design) are
//! also kept on the host.

use std::collections::HashMap;

use burn::tensor::{DType, Device, Tensor};
use safetensors::Dtype as StDtype;
use serde::Deserialize;

use std::rc::Rc;

use crate::checkpoint::lora::{Lora, Merges};
use crate::checkpoint::single_file::{Layout as BlockLayout, Part};
use crate::checkpoint::weights::{decode, decode_into, upload};
use crate::device::backend::execution_error;
use crate::{Result, SdError};

/// Largest tensor (other than a matrix) also kept on the host.
pub const HOST_COPY_ELEMENTS: usize = 1 << 16;

/// The size a pack of device tensors is filled up to, in the device's dtype (its f32 values on
/// the host take up to twice that for f16 networks).
pub const PACK_BYTES: usize = 64 << 20;

/// Where tensors start and end in a pack, in bytes: WebGPU's largest
/// `minStorageBufferOffsetAlignment`, at which burn slices a buffer without copying it. A tensor
/// whose length is not a multiple of it gets a buffer of its own.
const PACK_ALIGN: usize = 256;

/// safetensors' own bound on a header.
const MAX_HEADER_BYTES: usize = 100_000_000;

/// One tensor of a streamed file: on the device (flat, in the model's dtype), and for some
/// (see the module documentation) on the host too.
pub struct StreamedTensor {
    pub shape: Vec<usize>,
    pub device: Tensor<1>,
    pub host: Option<Vec<f32>>,
}

/// The tensors of a streamed file, by (mapped) key.
pub struct StreamedFile {
    pub name: String,
    pub tensors: HashMap<String, StreamedTensor>,
}

/// Where the tensors lie in the file, once its header is in. File positions are `u64`: a
/// weight file may be over 4 GiB (SDXL's fp16 UNet) where `usize` is 32 bits (wasm32).
struct Layout {
    /// `(stored key, dtype, shape, absolute byte range)` in file order
    order: Vec<(String, StDtype, Vec<usize>, std::ops::Range<u64>)>,
    end: u64,
}

/// A header entry as safetensors writes it, with 64-bit offsets (the safetensors crate reads
/// them as `usize`).
#[derive(Deserialize)]
struct Entry {
    dtype: StDtype,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

/// The tensors of a header, in file order, checked as the safetensors crate checks them: the
/// data is contiguous from 0, each tensor as long as its shape and dtype say. `Err` is the reason.
fn parse_header(header: &[u8]) -> std::result::Result<Vec<(String, Entry)>, String> {
    let raw: HashMap<String, serde_json::Value> = serde_json::from_slice(header).map_err(|e| format!("bad header: {e}"))?;
    let mut entries = raw
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| serde_json::from_value::<Entry>(v).map(|e| (k.clone(), e)).map_err(|e| format!("bad header entry `{k}`: {e}")))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    entries.sort_by_key(|(_, e)| e.data_offsets);
    let mut end = 0u64;
    for (k, e) in &entries {
        let (a, b) = e.data_offsets;
        let bits = e.shape.iter().try_fold(e.dtype.bitsize() as u64, |n, &d| n.checked_mul(d as u64));
        if a != end || b < a || bits.is_none_or(|bits| bits.div_ceil(8) != b - a) {
            return Err(format!("tensor `{k}`: offsets {a}..{b} do not follow the previous tensor's end {end} or do not fit its shape {:?} in {:?}", e.shape, e.dtype));
        }
        end = b;
    }
    Ok(entries)
}

/// A safetensors file being received ([`WeightStream::push`] its bytes in order, then
/// [`WeightStream::finish`]).
pub struct WeightStream {
    name: String,
    /// The stored key → the key a network asks for (as the whole-file loaders map them).
    map: fn(&str) -> String,
    /// Bytes received and not yet consumed; `buf[0]` is the file's byte `at`.
    buf: Vec<u8>,
    at: u64,
    layout: Option<Layout>,
    /// The first tensor of `layout.order` not yet complete.
    next: usize,
    tensors: HashMap<String, StreamedTensor>,
    /// LoRAs to merge, found in the header once it is in ([`Merges::resolve`]).
    loras: Option<(Vec<Rc<Lora>>, Part, BlockLayout)>,
    merges: Merges,
    pack: Pack,
}

/// The pack being filled for a device and dtype: its values, and its tensors (key, shape, host
/// copy, range in it).
struct Pack {
    device: Device,
    dtype: DType,
    values: Vec<f32>,
    members: Vec<(String, Vec<usize>, Option<Vec<f32>>, std::ops::Range<usize>)>,
    limit_bytes: usize,
}

impl WeightStream {
    pub fn new(name: impl Into<String>, device: &Device, dtype: DType, map: fn(&str) -> String) -> Self {
        Self {
            name: name.into(),
            map,
            buf: Vec::new(),
            at: 0,
            layout: None,
            next: 0,
            tensors: HashMap::new(),
            loras: None,
            merges: Merges::default(),
            pack: Pack { device: device.clone(), dtype, values: Vec::new(), members: Vec::new(), limit_bytes: PACK_BYTES },
        }
    }

    /// Merges `loras`' layers of `part` into the tensors as they arrive; the header decides
    /// whether every layer is there (an error naming the first that is not).
    pub fn with_loras(mut self, loras: Vec<Rc<Lora>>, part: Part, layout: BlockLayout) -> Self {
        self.loras = Some((loras, part, layout));
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn bad(&self, reason: impl Into<String>) -> SdError {
        SdError::Safetensors { path: self.name.clone(), reason: reason.into() }
    }

    /// The file's next bytes: every tensor they complete goes to the device, and its bytes are
    /// dropped.
    pub fn push(&mut self, bytes: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(bytes);
        if self.layout.is_none() && !self.read_header()? {
            return Ok(());
        }
        let layout = self.layout.as_ref().expect("read above");
        let received = self.at + self.buf.len() as u64;
        if received > layout.end {
            return Err(self.bad(format!("longer than its header says ({} bytes)", layout.end)));
        }
        let mut done = self.at;
        while let Some((key, dtype, shape, range)) = layout.order.get(self.next) {
            if range.end > received {
                break;
            }
            // within `buf`, whose length is a usize
            let raw = &self.buf[(range.start - self.at) as usize..(range.end - self.at) as usize];
            let bad_dtype = || SdError::Dtype { file: self.name.clone(), key: key.clone(), dtype: format!("{dtype:?}") };
            let mapped = (self.map)(key);
            let n = shape.iter().product::<usize>();
            let keep = (shape.len() != 2 && n <= HOST_COPY_ELEMENTS) || mapped.ends_with("token_embedding.weight");
            if self.pack.takes(n) {
                // decoded straight into the pack: no buffer of the tensor's size comes and goes
                let at = self.pack.room(n, &mut self.tensors);
                if !decode_into(*dtype, raw, &mut self.pack.values) {
                    return Err(bad_dtype());
                }
                let values = &mut self.pack.values[at..];
                self.merges.apply(&mapped, values);
                let host = keep.then(|| values.to_vec());
                self.pack.members.push((mapped, shape.clone(), host, at..at + n));
            } else {
                let mut values = decode(*dtype, raw).ok_or_else(bad_dtype)?;
                self.merges.apply(&mapped, &mut values);
                let host = keep.then(|| values.clone());
                let device = upload(values, [n], &self.pack.device, self.pack.dtype);
                self.tensors.insert(mapped, StreamedTensor { shape: shape.clone(), device, host });
            }
            done = range.end;
            self.next += 1;
        }
        self.buf.drain(..(done - self.at) as usize);
        self.at = done;
        // the uploads' bytes stay on the host until cubecl runs its queued work: without this,
        // about 20 queued packs held 1.2 GiB of wasm memory
        self.pack.device.flush().map_err(execution_error)
    }

    /// Parses the header once its bytes are in; false while they are not.
    fn read_header(&mut self) -> Result<bool> {
        let Some(n) = self.buf.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))) else {
            return Ok(false);
        };
        if n > MAX_HEADER_BYTES as u64 {
            return Err(self.bad(format!("a header of {n} bytes (not a safetensors file?)")));
        }
        let n = n as usize;
        let Some(header) = self.buf.get(8..8 + n) else {
            return Ok(false);
        };
        let entries = parse_header(header).map_err(|reason| self.bad(reason))?;
        if let Some((loras, part, layout)) = &self.loras {
            let shapes = entries.iter().map(|(k, e)| ((self.map)(k), e.shape.clone())).collect();
            self.merges = Merges::resolve(loras, *part, *layout, &shapes)?;
        }
        let start = 8 + n as u64;
        let end = start + entries.last().map_or(0, |(_, e)| e.data_offsets.1);
        let order = entries.into_iter().map(|(k, e)| (k, e.dtype, e.shape, start + e.data_offsets.0..start + e.data_offsets.1)).collect();
        self.layout = Some(Layout { order, end });
        self.buf.drain(..8 + n);
        self.at = start;
        Ok(true)
    }

    /// The file's tensors; an error when it ended before all of them arrived.
    pub fn finish(mut self) -> Result<StreamedFile> {
        let total = self.layout.as_ref().map(|l| l.order.len());
        if total != Some(self.next) {
            let got = self.at + self.buf.len() as u64;
            return Err(self.bad(match total {
                None => format!("the file ended in its header ({got} bytes)"),
                Some(t) => format!("the file ended after {got} bytes, {} of its {t} tensors", self.next),
            }));
        }
        self.pack.upload(&mut self.tensors);
        self.pack.device.flush().map_err(execution_error)?;
        Ok(StreamedFile { name: self.name, tensors: self.tensors })
    }
}

impl Pack {
    /// Whether a tensor of `n` values goes into a pack: not empty (an empty view of a pack is
    /// no saving, and an empty tensor keeps the upload it always had), not larger than a pack,
    /// and of a length that keeps the next tensor aligned.
    fn takes(&self, n: usize) -> bool {
        let bytes = n * self.dtype.size();
        n > 0 && bytes <= self.limit_bytes && bytes.is_multiple_of(PACK_ALIGN)
    }

    /// Room for `n` more values (the pack uploaded first when they would not fit): where they
    /// start.
    fn room(&mut self, n: usize, tensors: &mut HashMap<String, StreamedTensor>) -> usize {
        if (self.values.len() + n) * self.dtype.size() > self.limit_bytes {
            self.upload(tensors);
        }
        if self.values.capacity() == 0 {
            // the whole pack at once: a Vec doubling its way up would leave wasm memory (which
            // never shrinks) fragmented by chunks of every size on the way
            self.values.reserve_exact(self.limit_bytes / self.dtype.size());
        }
        self.values.len()
    }

    /// Uploads the pack and gives each of its tensors its view of it.
    fn upload(&mut self, tensors: &mut HashMap<String, StreamedTensor>) {
        if self.members.is_empty() {
            return;
        }
        let n = self.values.len();
        let pack = upload(std::mem::take(&mut self.values), [n], &self.device, self.dtype);
        for (key, shape, host, range) in self.members.drain(..) {
            tensors.insert(key, StreamedTensor { shape, device: pack.clone().slice(range), host });
        }
    }
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;

    /// A safetensors file of f32 tensors.
    fn file(tensors: &[(&str, Vec<f32>, Vec<usize>)]) -> Vec<u8> {
        let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, v, _)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
        let views = tensors
            .iter()
            .zip(&bytes)
            .map(|((k, _, s), b)| (*k, safetensors::tensor::TensorView::new(StDtype::F32, s.clone(), b).unwrap()));
        safetensors::serialize(views, None).unwrap()
    }

    /// Any split of the bytes gives the same tensors; matrices stay on the device only; a
    /// truncated or overlong file is an error naming it.
    #[test]
    fn pieces_of_any_size_give_the_whole_file() {
        let bytes = file(&[
            ("a.bias", vec![1.0, 2.0, 3.0], vec![3]),
            ("b.weight", (0..6).map(|v| v as f32).collect(), vec![2, 3]),
            ("c.weight", vec![0.5; 8], vec![2, 1, 2, 2]),
        ]);
        let device = Device::flex();
        for piece in [1, 7, 64, bytes.len()] {
            let mut s = WeightStream::new("f", &device, DType::F32, |k| k.to_string());
            for p in bytes.chunks(piece) {
                s.push(p).unwrap();
            }
            let f = s.finish().unwrap();
            assert_eq!(f.tensors["a.bias"].host.as_deref(), Some(&[1.0, 2.0, 3.0][..]));
            assert!(f.tensors["b.weight"].host.is_none(), "a matrix stays on the device");
            let b: Vec<f32> = f.tensors["b.weight"].device.clone().into_data().iter::<f32>().collect();
            assert_eq!(b, (0..6).map(|v| v as f32).collect::<Vec<_>>());
            assert_eq!(f.tensors["c.weight"].shape, [2, 1, 2, 2]);
        }
        let mut s = WeightStream::new("f", &device, DType::F32, |k| k.to_string());
        s.push(&bytes[..bytes.len() - 1]).unwrap();
        let e = s.finish().err().unwrap().to_string();
        assert!(e.starts_with("f: ") && e.contains("2 of its 3 tensors"), "{e}");
        let mut s = WeightStream::new("f", &device, DType::F32, |k| k.to_string());
        let e = s.push(&[bytes.clone(), vec![0]].concat()).err().unwrap().to_string();
        assert!(e.contains("longer than its header says"), "{e}");
        let mut s = WeightStream::new("f", &device, DType::F32, |k| k.to_string());
        let e = s.push(&[9, 0, 0, 0, 0, 0, 0, 0, b'{', b'x', 0, 0, 0, 0, 0, 0, 0]).err().unwrap().to_string();
        assert!(e.contains("bad header"), "{e}");
    }

    /// Tensors in packs (several per pack, a new pack when one is full), alone (larger than a
    /// pack, or of a length off the pack's alignment), in f32 and f16: each reads back as stored.
    #[test]
    fn packed_tensors_read_back_as_stored() {
        // small multiples of 1/8: exact in f16 too
        let values = |n: usize, k: usize| (0..n).map(|i| ((i * 7 + k) % 97) as f32 / 8.0).collect::<Vec<f32>>();
        let sizes = [64, 128, 3, 64, 512, 64, 300, 256, 64];
        let tensors: Vec<(String, Vec<f32>, Vec<usize>)> = sizes.iter().enumerate().map(|(k, &n)| (format!("t{k}.weight"), values(n, k), vec![n])).collect();
        let refs: Vec<(&str, Vec<f32>, Vec<usize>)> = tensors.iter().map(|(k, v, s)| (k.as_str(), v.clone(), s.clone())).collect();
        let bytes = file(&refs);
        let device = Device::flex();
        for dtype in [DType::F32, DType::F16] {
            let mut s = WeightStream::new("f", &device, dtype, |k| k.to_string());
            // 1 KiB packs: 256 f32 values or 512 f16 ones
            s.pack.limit_bytes = 1024;
            for p in bytes.chunks(100) {
                s.push(p).unwrap();
            }
            let f = s.finish().unwrap();
            for (k, v, _) in &tensors {
                let got: Vec<f32> = f.tensors[k].device.clone().into_data().convert::<f32>().iter::<f32>().collect();
                assert_eq!(&got, v, "{k} in {dtype:?}");
            }
        }
    }

    /// The header of a file with `entries` (JSON objects by key), as bytes.
    fn header(entries: &str) -> Vec<u8> {
        let json = format!("{{{entries}}}");
        [(json.len() as u64).to_le_bytes().to_vec(), json.into_bytes()].concat()
    }

    /// Offsets past 4 GiB (an SDXL fp16 UNet) are positions, not sizes in memory; offsets that
    /// leave gaps or disagree with the shape are errors.
    #[test]
    fn headers_of_files_over_4_gib_and_bad_offsets() {
        let device = Device::flex();
        let big = 5_000_000_000u64;
        let mut s = WeightStream::new("unet", &device, DType::F32, |k| k.to_string());
        s.push(&header(&format!(r#""__metadata__": {{"format": "pt"}}, "w": {{"dtype": "F16", "shape": [{}], "data_offsets": [0, {big}]}}"#, big / 2))).unwrap();
        s.push(&[0; 1000]).unwrap();
        let e = s.finish().err().unwrap().to_string();
        assert!(e.contains("ended after") && e.contains("0 of its 1 tensors"), "{e}");
        for (entries, says) in [
            (r#""w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}"#, "do not follow"),
            (r#""w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}"#, "do not follow"),
            (r#""w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "v": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}"#, "`v`"),
            (r#""w": {"dtype": "F32", "shape": [1]}"#, "bad header entry `w`"),
        ] {
            let mut s = WeightStream::new("f", &device, DType::F32, |k| k.to_string());
            let e = s.push(&header(entries)).err().unwrap().to_string();
            assert!(e.contains(says), "{entries}: {e}");
        }
    }
}
