//! Shard slicing and tensor ranges: the packer cuts a graph's weights into external-data
//! shards ([`shard_weights`]); the loader hands each tensor back straight out of its shards
//! ([`consume_external`]).

use std::collections::BTreeMap;

use super::manifest::{CONTINUED_KEY, MAX_SHARD_BYTES};
use super::Blob;
use crate::onnx::ModelProto;
use crate::{Error, Result};

/// Split the initializers of `model` into external-data shards of at most `shard_bytes` (at
/// most [`MAX_SHARD_BYTES`]). A tensor bigger than a shard fills the rest of the current one
/// and continues at the start of fresh ones ([`CONTINUED_KEY`]); its last part ends its shard,
/// so at load every shard it spans is released once the tensor is built. Returns the graph
/// (weights now external) and the shards' `(name, bytes)`.
pub fn shard_weights(mut model: ModelProto, shard_bytes: u64, stem: &str) -> Result<(ModelProto, Vec<(String, Vec<u8>)>)> {
    use tract_onnx::pb::{tensor_proto::DataLocation, StringStringEntryProto};
    if !(1..=MAX_SHARD_BYTES).contains(&shard_bytes) {
        return Err(Error::InvalidOption { option: "shard_bytes", reason: format!("{shard_bytes} is not in 1..={MAX_SHARD_BYTES}") });
    }
    let graph = model.graph.as_mut().ok_or_else(|| Error::InvalidModel("ONNX file has no graph".into()))?;
    let mut shards: Vec<(String, Vec<u8>)> = Vec::new();
    // The last shard takes no more tensors (a split tensor ended it).
    let mut closed = false;
    for t in graph.initializer.iter_mut() {
        // Small tensors (shape constants, norms) stay inline: they cost nothing to fetch twice.
        if t.raw_data.len() < 1024 {
            continue;
        }
        let data = std::mem::take(&mut t.raw_data);
        let len = data.len() as u64;
        let split = len > shard_bytes;
        let mut parts = Vec::new();
        let mut rest = &data[..];
        while !rest.is_empty() {
            let room = |b: &Vec<u8>| shard_bytes - b.len() as u64;
            if closed || shards.last().is_none_or(|(_, b)| if split { room(b) == 0 } else { room(b) < len }) {
                shards.push((format!("{stem}.data.{:03}", shards.len()), Vec::new()));
                closed = false;
            }
            let (name, buf) = shards.last_mut().expect("pushed above");
            let n = rest.len().min(room(buf) as usize);
            parts.push((name.clone(), buf.len(), n));
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        closed = split;
        let entry = |k: &str, v: &str| StringStringEntryProto { key: k.into(), value: v.into() };
        let (location, offset, n) = &parts[0];
        t.external_data = vec![entry("location", location), entry("offset", &offset.to_string()), entry("length", &n.to_string())];
        if parts.len() > 1 {
            let rest: Vec<String> = parts[1..].iter().map(|(l, o, n)| format!("{l}:{o}:{n}")).collect();
            t.external_data.push(entry(CONTINUED_KEY, &rest.join(";")));
        }
        t.data_location = Some(DataLocation::External as i32);
    }
    Ok((model, shards))
}

/// Whether `graph` has a tensor that spans shards (format 2, see [`CONTINUED_KEY`]).
pub fn spans_shards(graph: &tract_onnx::pb::GraphProto) -> bool {
    graph.initializer.iter().any(|t| t.external_data.iter().any(|e| e.key == CONTINUED_KEY))
}

/// One piece of an external tensor: `length` bytes at `offset` of shard `location`.
struct Part {
    location: String,
    offset: u64,
    length: usize,
}

/// The parts of external initializer `t`, in order (one unless it spans shards).
fn parts_of(t: &tract_onnx::pb::TensorProto) -> Result<Vec<Part>> {
    let bad = |why: &str| Error::InvalidModel(format!("tensor `{}`: {why}", t.name));
    let get = |k: &str| t.external_data.iter().find(|e| e.key == k).map(|e| e.value.as_str());
    let location = get("location").ok_or_else(|| bad("external data without location"))?;
    let num = |k: &str| get(k).unwrap_or("0").parse::<u64>().map_err(|_| bad(&format!("bad external {k}")));
    let length = usize::try_from(num("length")?).map_err(|_| bad("bad external length"))?;
    let mut parts = vec![Part { location: location.into(), offset: num("offset")?, length }];
    for p in get(CONTINUED_KEY).into_iter().flat_map(|v| v.split(';')) {
        let mut f = p.rsplitn(3, ':');
        let (length, offset, location) = (f.next(), f.next(), f.next());
        let (Some(Ok(length)), Some(Ok(offset)), Some(location)) = (length.map(str::parse::<usize>), offset.map(str::parse::<u64>), location) else {
            return Err(bad(&format!("bad continued part `{p}`")));
        };
        // Asked for in name order, each shard once: a tensor goes on into later shards only.
        if parts.last().is_some_and(|l: &Part| location <= l.location.as_str()) {
            return Err(bad(&format!("continued part `{p}` is not in a later shard")));
        }
        parts.push(Part { location: location.into(), offset, length });
    }
    Ok(parts)
}

/// Copy `dst.len()` bytes from byte `at` of the tensor made of `parts` (their shards beside
/// them) into `dst`: a range may cross from one part into the next.
fn read_parts<B: Blob>(parts: &[(&B, u64, usize)], mut at: usize, mut dst: &mut [u8]) {
    for &(blob, offset, length) in parts {
        if dst.is_empty() {
            return;
        }
        if at >= length {
            at -= length;
            continue;
        }
        let n = dst.len().min(length - at);
        let (now, later) = std::mem::take(&mut dst).split_at_mut(n);
        blob.copy_range(offset + at as u64, now);
        dst = later;
        at = 0;
    }
}

/// Hand every external initializer of `graph` to `take` as `(initializer index, length,
/// read)`, where `read(at, dst)` copies its bytes from `at` straight out of its shard(s)
/// ([`Blob::copy_range`]). Shards are asked of `shard` once each, in name order (a tensor that
/// spans shards asks for the later ones when it is reached), and dropped once their tensors
/// are taken. A shard held outside Rust memory (a JS `Uint8Array`) is never copied in whole,
/// so Rust memory holds the weights once, as tensors; one in Rust memory is cut from its end,
/// the last tensor first, and shrunk after each ([`Blob::release_from`]), so the weights are
/// held about once plus one tensor. Offsets and lengths are checked against the shards;
/// tensors must not overlap.
pub(crate) fn consume_external<B: Blob>(
    graph: &tract_onnx::pb::GraphProto,
    shard: impl FnMut(&str) -> Result<B>,
    take: impl FnMut(usize, usize, &dyn Fn(usize, &mut [u8])) -> Result<()>,
) -> Result<()> {
    super::at_once(consume_external_from(graph, &mut super::ShardFn(shard), take))
}

/// [`consume_external`] with shards that may still be on their way ([`super::Package::streaming`]):
/// each is awaited when its tensors are reached.
pub(crate) async fn consume_external_from<B: Blob>(
    graph: &tract_onnx::pb::GraphProto,
    source: &mut impl super::ShardSource<B>,
    mut take: impl FnMut(usize, usize, &dyn Fn(usize, &mut [u8])) -> Result<()>,
) -> Result<()> {
    let mut tensors = Vec::new();
    // location -> (offset, length, tensor, part), in ascending offset
    let mut refs: BTreeMap<String, Vec<(u64, usize, usize, usize)>> = BTreeMap::new();
    for (i, t) in graph.initializer.iter().enumerate() {
        if t.external_data.is_empty() {
            continue;
        }
        let parts = parts_of(t)?;
        for (p, part) in parts.iter().enumerate() {
            refs.entry(part.location.clone()).or_default().push((part.offset, part.length, tensors.len(), p));
        }
        tensors.push((i, parts));
    }
    for (loc, list) in refs.iter_mut() {
        list.sort();
        for w in list.windows(2) {
            if w[0].0.saturating_add(w[0].1 as u64) > w[1].0 {
                let name = &graph.initializer[tensors[w[0].2].0].name;
                return Err(Error::InvalidModel(format!("tensor `{name}` overlaps another in shard `{loc}`")));
            }
        }
    }
    // Shards asked for so far, with how much of each is still to be taken (the parts below
    // `next` in its list, which is taken from the end).
    struct Held<B> {
        blob: B,
        next: usize,
    }
    let mut held: BTreeMap<String, Held<B>> = BTreeMap::new();
    let mut done = vec![false; tensors.len()];
    // Ask `source` for shard `loc` unless it is held already.
    macro_rules! fetch {
        ($loc:expr) => {{
            let loc: &str = $loc;
            if !held.contains_key(loc) {
                let blob = source.shard(loc).await?;
                let list = &refs[loc];
                if let Some(&(offset, length, t, _)) = list.last().filter(|(o, l, ..)| o.checked_add(*l as u64).is_none_or(|end| end > blob.len())) {
                    let name = &graph.initializer[tensors[t].0].name;
                    return Err(Error::InvalidModel(format!("tensor `{name}` reaches past the end of shard `{loc}` ({offset} + {length} bytes)")));
                }
                held.insert(loc.to_string(), Held { blob, next: list.len() });
            }
        }};
    }
    for loc in refs.keys() {
        fetch!(loc);
        loop {
            let h = &held[loc];
            let Some(&(_, _, t, part)) = h.next.checked_sub(1).map(|n| &refs[loc][n]) else { break };
            if !done[t] {
                // Only a first part can be pending here: later parts lie in later shards.
                debug_assert_eq!(part, 0);
                let (i, parts) = &tensors[t];
                for p in &parts[1..] {
                    fetch!(&p.location);
                }
                let located: Vec<(&B, u64, usize)> = parts.iter().map(|p| (&held[&p.location].blob, p.offset, p.length)).collect();
                let length = parts.iter().map(|p| p.length).sum();
                take(*i, length, &|at: usize, dst: &mut [u8]| read_parts(&located, at, dst))?;
                done[t] = true;
            }
            // Release every part now taken from the end of its shard (the later shards of a
            // split tensor too, which hold nothing else when `pack` made them).
            for p in &tensors[t].1 {
                let list = &refs[&p.location];
                let h = held.get_mut(&p.location).expect("fetched above");
                while let Some(&(offset, _, t2, _)) = h.next.checked_sub(1).map(|n| &list[n]) {
                    if !done[t2] {
                        break;
                    }
                    h.blob.release_from(offset);
                    h.next -= 1;
                }
            }
        }
        if let Some(h) = held.remove(loc) {
            h.blob.release();
        }
    }
    Ok(())
}

/// [`consume_external`] over shards in memory, copying every tensor out: the fuzz target's way
/// in (fuzz/fuzz_targets/consume_external.rs). Returns the bytes taken.
#[doc(hidden)]
pub fn consume_external_in_memory(graph: &tract_onnx::pb::GraphProto, shards: &BTreeMap<String, Vec<u8>>) -> Result<u64> {
    let mut total = 0;
    let shard = |loc: &str| shards.get(loc).cloned().ok_or_else(|| Error::InvalidModel(format!("no shard `{loc}`")));
    consume_external(graph, shard, |_, length, read| {
        let mut dst = vec![0; length];
        read(0, &mut dst);
        total += length as u64;
        Ok(())
    })?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::{GraphProto, StringStringEntryProto, TensorProto};

    /// A blob that, like a JS `Uint8Array`, keeps its bytes when told to release them.
    struct Held(Vec<u8>);
    impl Blob for Held {
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
        fn into_vec(self) -> Vec<u8> {
            self.0
        }
        fn copy_range(&self, offset: u64, dst: &mut [u8]) {
            dst.copy_from_slice(&self.0[offset as usize..offset as usize + dst.len()]);
        }
    }

    fn external(name: &str, offset: u64, length: u64) -> TensorProto {
        let e = |k: &str, v: String| StringStringEntryProto { key: k.into(), value: v };
        TensorProto {
            name: name.into(),
            external_data: vec![e("location", "s".into()), e("offset", offset.to_string()), e("length", length.to_string())],
            ..Default::default()
        }
    }

    fn consume(ranges: &[(u64, u64)]) -> Result<Vec<usize>> {
        let graph = GraphProto { initializer: ranges.iter().enumerate().map(|(i, &(o, l))| external(&format!("t{i}"), o, l)).collect(), ..Default::default() };
        let mut taken = Vec::new();
        consume_external(&graph, |_| Ok(Held(vec![0; 16])), |i, _, _| {
            taken.push(i);
            Ok(())
        })?;
        Ok(taken)
    }

    /// Overlapping tensor ranges (and ranges past the shard's end) are refused whatever the blob
    /// does with `release_from`.
    #[test]
    fn overlapping_tensors_are_refused_in_a_blob_that_keeps_its_bytes() {
        assert_eq!(consume(&[(0, 8), (8, 8), (8, 0)]).unwrap().len(), 3);
        for ranges in [&[(0, 8), (4, 8)][..], &[(0, 16), (4, 4)], &[(2, 4), (2, 8)], &[(0, 17)], &[(u64::MAX, 2)]] {
            let e = consume(ranges).unwrap_err();
            assert!(matches!(&e, Error::InvalidModel(m) if m.contains("overlaps") || m.contains("past the end")), "{ranges:?}: {e}");
        }
    }
}
