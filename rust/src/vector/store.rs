//! Save and load an index directory.
//!
//! A directory holds one generation of two files plus a pointer:
//! - `vectors-<gen>.f32`: live float32 vectors, row-major little-endian (mmap'd on load);
//! - `index-<gen>.bin`: parameters, ids, graph links, metadata, SQ4 bounds and codes,
//!   with a CRC32 trailer;
//! - `CURRENT`: the generation to load.
//!
//! Crash safety: the new generation's files are written to `*.tmp`, fsynced and renamed;
//! then `CURRENT` is replaced the same way and the directory is fsynced. A crash at any
//! point leaves `CURRENT` naming a complete generation. Older generations are removed
//! only after the switch. Only live items are written, so save + load compacts deletes.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::distance::Kernels;
use super::filter::{Interner, Meta, Value};
use super::hnsw::{AlignedU8, Core, Index, Params, Vectors, NONE};
use super::quant::{Sq4, Sq8};
use super::{Metric, Result, VectorError};

const MAGIC: &[u8; 8] = b"SYMBIVX1";
const VERSION: u32 = 1;

struct W {
    buf: Vec<u8>,
}
impl W {
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn f32s(&mut self, v: &[f32]) {
        for x in v {
            self.buf.extend_from_slice(&x.to_le_bytes());
        }
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u64(v.len() as u64);
        self.buf.extend_from_slice(v);
    }
}

struct R<'a> {
    b: &'a [u8],
    pos: usize,
    path: &'a Path,
}
impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.b.len() - self.pos < n {
            return Err(corrupt(self.path, "file is truncated"));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn len(&mut self, max: usize) -> Result<usize> {
        let n = self.u64()? as usize;
        if n > max {
            return Err(corrupt(self.path, "length field out of range"));
        }
        Ok(n)
    }
    fn f32s(&mut self, n: usize) -> Result<Vec<f32>> {
        let b = self.take(
            n.checked_mul(4)
                .ok_or_else(|| corrupt(self.path, "size overflow"))?,
        )?;
        Ok(b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
            .collect())
    }
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.len(self.b.len())?;
        self.take(n)
    }
}

fn corrupt(path: &Path, message: &str) -> VectorError {
    VectorError::Corrupt {
        path: path.display().to_string(),
        message: message.to_owned(),
    }
}

fn write_durable(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<&File>) -> std::io::Result<()>,
) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let f = File::create(&tmp).map_err(|e| VectorError::io(&tmp, e))?;
    {
        let mut w = BufWriter::with_capacity(1 << 20, &f);
        write(&mut w)
            .and_then(|_| w.flush())
            .map_err(|e| VectorError::io(&tmp, e))?;
    }
    f.sync_all().map_err(|e| VectorError::io(&tmp, e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| VectorError::io(path, e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    let d = OpenOptions::new()
        .read(true)
        .open(dir)
        .map_err(|e| VectorError::io(dir, e))?;
    d.sync_all().map_err(|e| VectorError::io(dir, e))
}

fn read_current(dir: &Path) -> Result<Option<u64>> {
    let p = dir.join("CURRENT");
    match fs::read_to_string(&p) {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| corrupt(dir, "CURRENT does not hold a generation number")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(VectorError::io(&p, e)),
    }
}

fn names(gen: u64) -> (String, String) {
    (format!("vectors-{gen}.f32"), format!("index-{gen}.bin"))
}

/// Write the live items of `core` as a new generation in `dir` (created if missing).
pub fn save(core: &Core, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| VectorError::io(dir, e))?;
    let gen = read_current(dir).unwrap_or(None).unwrap_or(0) + 1;
    let (vname, iname) = names(gen);

    // Compaction map: old slot -> new slot for live items.
    let n = core.graph.len();
    let mut remap = vec![NONE; n];
    let live: Vec<usize> = (0..n).filter(|&i| !core.deleted[i]).collect();
    for (new, &old) in live.iter().enumerate() {
        remap[old] = new as u32;
    }

    write_durable(&dir.join(&vname), |w| {
        for &i in &live {
            for x in core.vecs.row(i) {
                w.write_all(&x.to_le_bytes())?;
            }
        }
        Ok(())
    })?;

    let p = &core.p;
    let mut w = W {
        buf: Vec::with_capacity(live.len() * (p.m * 8 + 16)),
    };
    w.buf.extend_from_slice(MAGIC);
    w.u32(VERSION);
    w.u64(p.dim as u64);
    w.u8(p.metric.code());
    // Compression: 0 none, 1 SQ4, 2 SQ8.
    w.u8(if p.sq8 { 2 } else { p.sq4 as u8 });
    w.u64(p.m as u64);
    w.u64(p.ef_construction as u64);
    w.u64(p.ef_search as u64);
    w.u64(p.seed);
    w.u64(core.rng);
    w.u64(live.len() as u64);
    let (ep, lvl) = *core.entry.read();
    let ep = if ep == NONE { NONE } else { remap[ep as usize] };
    w.u32(ep);
    w.u8(if ep == NONE { 0 } else { lvl });
    for &i in &live {
        w.u64(core.ids[i]);
        let g = &core.graph;
        let level = g.level(i as u32);
        w.u8(level as u8);
        let mut buf = vec![0u32; g.max_links()];
        for layer in 0..=level {
            let cnt = g.read(i as u32, layer, &mut buf);
            let kept: Vec<u32> = buf[..cnt]
                .iter()
                .map(|&x| remap[x as usize])
                .filter(|&x| x != NONE)
                .collect();
            w.u32(kept.len() as u32);
            for x in kept {
                w.u32(x);
            }
        }
        match &core.meta[i] {
            None => w.u32(NONE),
            Some(m) => {
                w.u32(m.len() as u32);
                for (f, v) in m.iter() {
                    w.u32(*f);
                    match *v {
                        Value::Str(s) => {
                            w.u8(0);
                            w.u64(s as u64)
                        }
                        Value::Int(x) => {
                            w.u8(1);
                            w.u64(x as u64)
                        }
                        Value::Float(x) => {
                            w.u8(2);
                            w.u64(x.to_bits())
                        }
                        Value::Bool(b) => {
                            w.u8(3);
                            w.u64(b as u64)
                        }
                    }
                }
            }
        }
    }
    let strs = core.interner.strings();
    w.u64(strs.len() as u64);
    for s in strs {
        w.bytes(s.as_bytes());
    }
    match &core.sq {
        Some(sq) if p.sq4 => {
            w.u8(1);
            w.u64(core.fitted_at as u64);
            w.f32s(&sq.low);
            w.f32s(&sq.step);
            let cb = core.code_bytes;
            for &i in &live {
                w.buf.extend_from_slice(&core.codes[i * cb..(i + 1) * cb]);
            }
        }
        _ => match &core.sq8 {
            Some(sq) if p.sq8 => {
                w.u8(2);
                w.u64(core.fitted_at as u64);
                w.f32s(&sq.low);
                w.f32s(&sq.step);
                let cb = core.code_bytes;
                for &i in &live {
                    w.buf.extend_from_slice(&core.codes[i * cb..(i + 1) * cb]);
                }
            }
            _ => w.u8(0),
        },
    }
    let crc = crc32fast::hash(&w.buf);
    w.u32(crc);
    write_durable(&dir.join(&iname), |f| f.write_all(&w.buf))?;
    sync_dir(dir)?;
    write_durable(&dir.join("CURRENT"), |f| writeln!(f, "{gen}"))?;
    sync_dir(dir)?;

    // The switch is durable: drop older generations (best effort).
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let old = (name.starts_with("vectors-") || name.starts_with("index-"))
                && name != vname
                && name != iname;
            if old || name.ends_with(".tmp") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// Load the current generation of `dir`; with `mmap` the vectors file is memory-mapped.
pub fn load(dir: &Path, mmap: bool) -> Result<Index> {
    if cfg!(target_endian = "big") {
        return Err(corrupt(
            dir,
            "index files are little-endian; this platform is big-endian",
        ));
    }
    let gen = read_current(dir)?.ok_or_else(|| VectorError::Io {
        path: dir.display().to_string(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no saved index here (CURRENT is missing)",
        ),
    })?;
    let (vname, iname) = names(gen);
    let ipath: PathBuf = dir.join(iname);
    let bytes = fs::read(&ipath).map_err(|e| VectorError::io(&ipath, e))?;
    if bytes.len() < MAGIC.len() + 8 || &bytes[..8] != MAGIC {
        return Err(corrupt(&ipath, "not a symbi vector index file"));
    }
    let (body, trailer) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(trailer.try_into().expect("4")) {
        return Err(corrupt(&ipath, "checksum mismatch"));
    }
    let mut r = R {
        b: body,
        pos: 8,
        path: &ipath,
    };
    if r.u32()? != VERSION {
        return Err(corrupt(&ipath, "unsupported format version"));
    }
    let dim = r.len(65_536)?;
    let metric = Metric::from_code(r.u8()?).ok_or_else(|| corrupt(&ipath, "unknown metric"))?;
    let mode = r.u8()?;
    if mode > 2 {
        return Err(corrupt(&ipath, "unknown compression"));
    }
    let (sq4, sq8) = (mode == 1, mode == 2);
    let p = Params {
        dim,
        metric,
        sq4,
        sq8,
        m: r.len(256)?,
        ef_construction: r.len(100_000)?,
        ef_search: r.len(100_000)?,
        seed: r.u64()?,
    };
    p.validate().map_err(|e| corrupt(&ipath, &e.to_string()))?;
    let rng = r.u64()?;
    let n = r.len(NONE as usize - 1)?;
    let ep = r.u32()?;
    let ep_level = r.u8()?;
    if ep != NONE && ep as usize >= n {
        return Err(corrupt(&ipath, "entry point out of range"));
    }
    let mut core = Core::new(p.clone())?;
    core.rng = rng;
    let mut raw_meta: Vec<Option<Vec<(u32, u8, u64)>>> = Vec::with_capacity(n);
    core.graph.reserve(n);
    for slot in 0..n {
        let id = r.u64()?;
        let level = r.u8()? as usize;
        if level > 16 {
            return Err(corrupt(&ipath, "node level out of range"));
        }
        core.graph.push(level);
        for layer in 0..=level {
            let cnt = r.u32()? as usize;
            if cnt > core.graph.cap(layer) {
                return Err(corrupt(&ipath, "neighbour list too long"));
            }
            let mut v = Vec::with_capacity(cnt);
            for _ in 0..cnt {
                let x = r.u32()?;
                if x as usize >= n {
                    return Err(corrupt(&ipath, "link out of range"));
                }
                v.push(x);
            }
            core.graph.set_mut(slot as u32, layer, &v);
        }
        core.ids.push(id);
        if core.slot_of.insert(id, slot as u32).is_some() {
            return Err(corrupt(&ipath, "duplicate id"));
        }
        core.deleted.push(false);
        let mc = r.u32()?;
        if mc == NONE {
            raw_meta.push(None);
        } else {
            let mut m = Vec::with_capacity(mc as usize);
            for _ in 0..mc {
                m.push((r.u32()?, r.u8()?, r.u64()?));
            }
            raw_meta.push(Some(m));
        }
    }
    let ns = r.len(body.len())?;
    let mut strs = Vec::with_capacity(ns);
    for _ in 0..ns {
        let b = r.bytes()?;
        strs.push(String::from_utf8(b.to_vec()).map_err(|_| corrupt(&ipath, "bad UTF-8 string"))?);
    }
    for m in raw_meta {
        let meta = match m {
            None => None,
            Some(items) => {
                let mut out: Vec<(u32, Value)> = Vec::with_capacity(items.len());
                for (f, tag, x) in items {
                    if f as usize >= ns {
                        return Err(corrupt(&ipath, "metadata field out of range"));
                    }
                    let v = match tag {
                        0 if (x as usize) < ns => Value::Str(x as u32),
                        1 => Value::Int(x as i64),
                        2 => Value::Float(f64::from_bits(x)),
                        3 => Value::Bool(x != 0),
                        _ => return Err(corrupt(&ipath, "bad metadata value")),
                    };
                    out.push((f, v));
                }
                Some(out.into_boxed_slice() as Meta)
            }
        };
        core.meta.push(meta);
    }
    core.interner = Interner::from_strings(strs);
    let section = r.u8()?;
    if section != mode && !(section == 0 && n == 0) {
        return Err(corrupt(
            &ipath,
            "compression codes do not match the parameters",
        ));
    }
    if section == 2 {
        core.fitted_at = r.len(usize::MAX)?;
        let padded = Sq8::code_bytes(dim);
        let low = r.f32s(padded)?;
        let step = r.f32s(padded)?;
        let sq = Sq8 {
            dim,
            padded,
            low,
            step,
        };
        core.codes = AlignedU8::from_slice(r.take(n * core.code_bytes)?);
        let cb = core.code_bytes;
        core.norms = core.codes.chunks_exact(cb).map(|c| sq.norm(c)).collect();
        core.sq8 = Some(sq);
    } else if section == 1 {
        core.fitted_at = r.len(usize::MAX)?;
        let padded = dim.div_ceil(16) * 16;
        let low = r.f32s(padded)?;
        let step = r.f32s(padded)?;
        core.sq = Some(Sq4 {
            dim,
            padded,
            low,
            step,
        });
        core.codes = AlignedU8::from_slice(r.take(n * core.code_bytes)?);
    }
    if r.pos != body.len() {
        return Err(corrupt(&ipath, "trailing bytes"));
    }
    *core.entry.get_mut() = (ep, ep_level);

    let vpath = dir.join(vname);
    let f = File::open(&vpath).map_err(|e| VectorError::io(&vpath, e))?;
    let expect = (n * dim * 4) as u64;
    let got = f.metadata().map_err(|e| VectorError::io(&vpath, e))?.len();
    if got != expect {
        return Err(corrupt(
            &vpath,
            &format!("vectors file has {got} bytes, expected {expect}"),
        ));
    }
    let mut vecs = Vectors::new(dim);
    if mmap && n > 0 {
        // SAFETY: the file is ours and never modified after the rename that published it
        // (a new save writes a new generation); mapped read-only.
        let m = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| VectorError::io(&vpath, e))?;
        vecs.base = Some(m);
        vecs.base_rows = n;
        core.mmap_path = Some(vpath.display().to_string());
    } else {
        let b = fs::read(&vpath).map_err(|e| VectorError::io(&vpath, e))?;
        vecs.tail = b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
            .collect();
    }
    core.vecs = vecs;
    core.k = Kernels::detect();
    Ok(Index::from_core(core))
}

#[cfg(test)]
mod tests {
    use super::super::filter::Lit;
    use super::super::hnsw::tests::{clustered, params};
    use super::super::hnsw::Index;
    use super::*;

    #[test]
    fn save_load_roundtrip_and_compacts() {
        let dir = std::env::temp_dir().join(format!("symbi-vec-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let dim = 24;
        let n = 600;
        let data = clustered(n, dim, 6, 5);
        for sq4 in [false, true] {
            let idx = Index::new(params(dim, Metric::L2, sq4)).unwrap();
            let ids: Vec<u64> = (0..n as u64).map(|i| i * 10).collect();
            let metas = (0..n)
                .map(|i| Some(vec![("k".to_string(), Lit::Str(format!("v{}", i % 3)))]))
                .collect();
            idx.add(&ids, &data, metas, false, None).unwrap();
            idx.delete(&[0, 10], false).unwrap();
            let before = idx
                .search(&data[dim * 5..dim * 6], 5, None, None, None)
                .unwrap();
            save(&idx.core.read(), &dir).unwrap();
            save(&idx.core.read(), &dir).unwrap(); // second generation replaces the first
            for mmap in [true, false] {
                let back = load(&dir, mmap).unwrap();
                assert_eq!(back.len(), n - 2);
                assert!(!back.contains(0) && back.contains(20));
                let after = back
                    .search(&data[dim * 5..dim * 6], 5, None, None, None)
                    .unwrap();
                assert_eq!(before.ids, after.ids);
                let (v, m) = back.get(50).unwrap();
                assert_eq!(v, data[dim * 5..dim * 6].to_vec());
                assert_eq!(m.unwrap(), vec![("k".to_string(), Lit::Str("v2".into()))]);
                // The loaded index accepts new items after its mmap'd base.
                back.add(&[1], &data[..dim], vec![], false, None).unwrap();
                assert!(back.contains(1));
            }
        }
        let files: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(files.len(), 3, "{files:?}");
        // Corruption is detected.
        let gen = read_current(&dir).unwrap().unwrap();
        let ip = dir.join(format!("index-{gen}.bin"));
        let mut b = fs::read(&ip).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0xff;
        fs::write(&ip, b).unwrap();
        assert!(matches!(load(&dir, true), Err(VectorError::Corrupt { .. })));
        let _ = fs::remove_dir_all(&dir);
    }
}
