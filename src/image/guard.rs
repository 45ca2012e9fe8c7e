//! A reader that stops tar streams from making the `tar` crate allocate
//! without bound.
//!
//! The crate reads a PAX extended header (`x`, `g`) or a GNU long name or
//! link (`L`, `K`) whole into memory, whatever size its header claims: a
//! few kilobytes of zstd can claim gigabytes. [`TarGuard`] follows the
//! stream's headers as the bytes pass and fails the read at such a header
//! above [`MAX_META`]. It tracks sizes as the crate does (a PAX `size`
//! record sets the next entry's); GNU sparse entries (`S`, whose extra
//! headers it would have to follow) are refused.

use std::io::{self, Read};

/// The largest PAX or long-name entry accepted.
pub const MAX_META: u64 = 1 << 20;
const BLOCK: usize = 512;

/// Wraps a tar stream; see the module doc.
pub struct TarGuard<R> {
    inner: R,
    header: [u8; BLOCK],
    filled: usize,
    /// Bytes of the current entry's data (and padding) still to pass.
    skip: u64,
    /// The data of the PAX header now passing, to read its `size`.
    pax: Option<Vec<u8>>,
    /// The size a PAX header set for the next entry.
    next_size: Option<u64>,
}

impl<R> TarGuard<R> {
    /// Guards `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            header: [0; BLOCK],
            filled: 0,
            skip: 0,
            pax: None,
            next_size: None,
        }
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// The size field of a ustar header: octal text, or base-256.
fn header_size(header: &[u8; BLOCK]) -> io::Result<u64> {
    let field = &header[124..136];
    if field[0] & 0x80 != 0 {
        let mut size: u64 = u64::from(field[0] & 0x7f);
        for &byte in &field[1..] {
            size = size
                .checked_mul(256)
                .and_then(|s| s.checked_add(u64::from(byte)))
                .ok_or_else(|| invalid("tar entry size overflows".into()))?;
        }
        return Ok(size);
    }
    let text: Vec<u8> = field
        .iter()
        .copied()
        .filter(|b| *b != 0 && *b != b' ')
        .collect();
    if text.is_empty() {
        return Ok(0);
    }
    let text = std::str::from_utf8(&text).map_err(|_| invalid("bad tar entry size".into()))?;
    u64::from_str_radix(text, 8).map_err(|_| invalid(format!("bad tar entry size {text:?}")))
}

/// The `size` record of PAX data, if any.
fn pax_size(data: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(data).ok()?;
    text.lines()
        .filter_map(|record| record.split_once(' ').map(|(_, kv)| kv))
        .find_map(|kv| kv.strip_prefix("size="))
        .and_then(|size| size.parse().ok())
}

impl<R> TarGuard<R> {
    /// Follows the headers in `bytes` (the next bytes of the stream).
    fn follow(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = (self.skip.min(bytes.len() as u64)) as usize;
                if let Some(pax) = &mut self.pax {
                    pax.extend_from_slice(&bytes[..n]);
                }
                self.skip -= n as u64;
                bytes = &bytes[n..];
                if self.skip == 0 {
                    if let Some(pax) = self.pax.take() {
                        self.next_size = pax_size(&pax);
                    }
                }
                continue;
            }
            let n = (BLOCK - self.filled).min(bytes.len());
            self.header[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            bytes = &bytes[n..];
            if self.filled < BLOCK {
                continue;
            }
            self.filled = 0;
            if self.header.iter().all(|b| *b == 0) {
                continue;
            }
            let kind = self.header[156];
            let stated = header_size(&self.header)?;
            let size = match kind {
                b'x' | b'g' | b'L' | b'K' => {
                    if stated > MAX_META {
                        return Err(invalid(format!(
                            "a tar metadata entry of {stated} bytes (at most {MAX_META})"
                        )));
                    }
                    stated
                }
                b'S' => return Err(invalid("GNU sparse tar entries are not supported".into())),
                _ => self.next_size.take().unwrap_or(stated),
            };
            self.pax = (kind == b'x').then(Vec::new);
            self.skip = size.div_ceil(BLOCK as u64) * BLOCK as u64;
            if self.skip == 0 {
                if let Some(pax) = self.pax.take() {
                    self.next_size = pax_size(&pax);
                }
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.follow(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8], chunk: usize) -> io::Result<usize> {
        let mut guard = TarGuard::new(bytes);
        let mut total = 0;
        let mut buf = vec![0; chunk];
        loop {
            match guard.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    }

    #[test]
    fn ordinary_archives_pass_whatever_the_read_sizes() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(1000);
        header.set_mode(0o644);
        let long = format!("{}/file", "d".repeat(300));
        builder
            .append_data(&mut header, &long, &[7u8; 1000][..])
            .unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        builder.append_link(&mut header, "link", "file").unwrap();
        builder
            .append_pax_extensions([("size", &b"3"[..]), ("path", &b"paxed"[..])])
            .unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_size(3);
        builder.append_data(&mut header, "x", &b"abc"[..]).unwrap();
        let bytes = builder.into_inner().unwrap();
        for chunk in [1, 7, 512, 4096] {
            assert_eq!(read_all(&bytes, chunk).unwrap(), bytes.len());
        }
    }

    #[test]
    fn a_huge_metadata_entry_is_refused() {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::XHeader);
        header.set_size(2 << 30);
        header.set_cksum();
        let mut bytes = header.as_bytes().to_vec();
        bytes.extend_from_slice(&[0; 4096]);
        let err = read_all(&bytes, 100).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
