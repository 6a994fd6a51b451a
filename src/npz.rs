//! Reading NumPy `.npz` archives (zips of `.npy` arrays), such as big_vision's
//! `vae-oid.npz`.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use burn::tensor::{Tensor, TensorData, backend::Backend};

use crate::error::{Error, Result};

/// One array from an `.npz` file, as f32.
pub(crate) struct NpyArray {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl NpyArray {
    pub fn tensor<B: Backend, const D: usize>(&self, device: &B::Device) -> Tensor<B, D> {
        Tensor::from_data(
            TensorData::new(self.data.clone(), self.shape.clone()),
            device,
        )
    }
}

/// The most bytes one `.npy` entry may hold (`vae-oid.npz`'s largest is a few MB).
const MAX_NPY_BYTES: u64 = 1 << 30;

/// The arrays of an `.npz` archive (a file or bytes in memory) whose names (without
/// `.npy`) pass `wanted`; errors name the archive `name` as a mask-decoder error.
pub(crate) fn read_npz_from(
    reader: impl std::io::Read + std::io::Seek,
    name: &str,
    wanted: impl Fn(&str) -> bool,
) -> Result<HashMap<String, NpyArray>> {
    let bad = |reason: String| Error::MaskDecoder(format!("{name}: {reason}"));
    let mut zip =
        zip::ZipArchive::new(reader).map_err(|e| bad(format!("not an npz archive: {e}")))?;
    let mut arrays = HashMap::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
        let name = entry.name().trim_end_matches(".npy").to_string();
        if !wanted(&name) {
            continue;
        }
        // The declared size is the archive's word: bound it before allocating, and
        // never read past the bound whatever the entry really inflates to.
        if entry.size() > MAX_NPY_BYTES {
            return Err(bad(format!(
                "{name} declares {} bytes, more than the {MAX_NPY_BYTES} an array may have",
                entry.size()
            )));
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        std::io::Read::by_ref(&mut entry)
            .take(MAX_NPY_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        if bytes.len() as u64 > MAX_NPY_BYTES {
            return Err(bad(format!(
                "{name} holds more than the {MAX_NPY_BYTES} bytes an array may have"
            )));
        }
        let array = parse_npy(&bytes).map_err(|e| bad(format!("{name}: {e}")))?;
        arrays.insert(name, array);
    }
    Ok(arrays)
}

/// Write arrays as an uncompressed `.npz` (little-endian f4 `.npy` entries, C order),
/// into a temporary file renamed over `path` once complete.
pub(crate) fn write_npz(path: &Path, arrays: &[(String, NpyArray)]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("npz.partial");
    let written = (|| -> std::result::Result<(), String> {
        let file = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
        let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(file));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, array) in arrays {
            zip.start_file(format!("{name}.npy"), options)
                .map_err(|e| e.to_string())?;
            let dims: Vec<String> = array.shape.iter().map(usize::to_string).collect();
            let shape = match dims.len() {
                1 => format!("({},)", dims[0]),
                _ => format!("({})", dims.join(", ")),
            };
            let mut header =
                format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
            // Magic, version and length take 10 bytes; the header ends with a newline
            // and pads the whole preamble to a multiple of 64.
            let padded = (10 + header.len() + 1).div_ceil(64) * 64;
            header.push_str(&" ".repeat(padded - 10 - header.len() - 1));
            header.push('\n');
            zip.write_all(b"\x93NUMPY\x01\x00")
                .map_err(|e| e.to_string())?;
            zip.write_all(&(header.len() as u16).to_le_bytes())
                .map_err(|e| e.to_string())?;
            zip.write_all(header.as_bytes())
                .map_err(|e| e.to_string())?;
            let bytes: Vec<u8> = array.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            zip.write_all(&bytes).map_err(|e| e.to_string())?;
        }
        let mut out = zip.finish().map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())
    })();
    let done = written
        .map_err(|reason| Error::MaskDecoder(format!("{}: {reason}", tmp.display())))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

/// Parse a little-endian, C-order `.npy` array of f4 or f8.
fn parse_npy(bytes: &[u8]) -> std::result::Result<NpyArray, String> {
    let rest = bytes
        .strip_prefix(b"\x93NUMPY")
        .ok_or("not an .npy array")?;
    let (major, rest) = rest.split_first().ok_or("truncated header")?;
    let rest = rest.get(1..).ok_or("truncated header")?;
    let (header_len, rest) = match major {
        1 => {
            let (len, rest) = rest.split_at_checked(2).ok_or("truncated header")?;
            (usize::from(u16::from_le_bytes([len[0], len[1]])), rest)
        }
        2 | 3 => {
            let (len, rest) = rest.split_at_checked(4).ok_or("truncated header")?;
            (
                u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize,
                rest,
            )
        }
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let (header, data) = rest
        .split_at_checked(header_len)
        .ok_or("truncated header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let field = |key: &str| {
        let start = header
            .find(&format!("'{key}':"))
            .ok_or(format!("no {key} in header"))?;
        Ok::<_, String>(header[start + key.len() + 3..].trim_start())
    };
    let descr = field("descr")?;
    let elem = if descr.starts_with("'<f4'") {
        4
    } else if descr.starts_with("'<f8'") {
        8
    } else {
        return Err(format!(
            "unsupported dtype {}",
            descr.split(',').next().unwrap_or("")
        ));
    };
    if field("fortran_order")?.starts_with("True") {
        return Err("Fortran-order arrays are not supported".into());
    }
    let shape_text = field("shape")?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("malformed shape")?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("malformed shape {inner:?}"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("shape overflows")?;
    if data.len() != count * elem {
        return Err(format!(
            "{} data bytes for shape {shape:?} of {elem}-byte floats",
            data.len()
        ));
    }
    let data = if elem == 4 {
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        data.chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect()
    };
    Ok(NpyArray { shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, payload: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(payload);
        out
    }

    #[test]
    fn written_archives_read_back() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("a.npz");
        let arrays = vec![
            (
                "x.w".to_string(),
                NpyArray {
                    shape: vec![2, 3],
                    data: vec![1.0, 2.0, 3.0, 4.0, 5.0, -6.5],
                },
            ),
            (
                "b".to_string(),
                NpyArray {
                    shape: vec![1],
                    data: vec![0.25],
                },
            ),
        ];
        write_npz(&path, &arrays).unwrap_or_else(|e| panic!("{e}"));
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let back = read_npz_from(file, "a.npz", |_| true).unwrap_or_else(|e| panic!("{e}"));
        for (name, a) in &arrays {
            assert_eq!(back[name].shape, a.shape);
            assert_eq!(back[name].data, a.data);
        }
    }

    /// An entry that claims 4 GiB is refused before anything is allocated.
    #[test]
    fn oversized_entries_are_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("a.npz");
        let arrays = vec![(
            "w".to_string(),
            NpyArray {
                shape: vec![1],
                data: vec![1.0],
            },
        )];
        write_npz(&path, &arrays).unwrap_or_else(|e| panic!("{e}"));
        let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        // The uncompressed size fields of the local (offset 22) and central (offset
        // 24) headers.
        let huge = 0xFFFF_FFF0u32.to_le_bytes();
        for (signature, offset) in [(0x0403_4b50u32, 22), (0x0201_4b50, 24)] {
            let at = (0..bytes.len() - 4)
                .find(|&i| bytes[i..i + 4] == signature.to_le_bytes())
                .unwrap_or_else(|| panic!("no header {signature:x}"));
            bytes[at + offset..at + offset + 4].copy_from_slice(&huge);
        }
        let e = read_npz_from(std::io::Cursor::new(bytes), "a.npz", |_| true)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("declares") || e.contains("more than"), "{e}");
    }

    #[test]
    fn parses_npy_and_rejects_garbage() {
        let payload: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let a = parse_npy(&npy("<f4", "(2,)", &payload)).unwrap();
        assert_eq!((a.shape, a.data), (vec![2], vec![1.5, -2.0]));
        assert!(parse_npy(&npy("<f4", "(3,)", &payload)).is_err());
        assert!(parse_npy(&npy("<i8", "(2,)", &payload)).is_err());
        assert!(parse_npy(b"\x93NUMPY").is_err());
        assert!(parse_npy(b"hello").is_err());
    }
}
