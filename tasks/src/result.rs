//! An aggregated job result, kept encoded by the coordinator and rendered on
//! request as JSON (every kernel), TSV (word count) or NPY (matmul).

use serde::{Deserialize, Serialize};

use crate::{factorial, fibonacci, matmul, wasm, wordcount};

/// A rendering that the job's kernel does not offer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("format {format:?} is not available for {kernel} results: use {offered}")]
pub struct FormatError {
    /// The format asked for.
    pub format: String,
    /// The job's kernel.
    pub kernel: &'static str,
    /// The formats this kernel offers.
    pub offered: &'static str,
}

/// A finished job's result.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum JobResult {
    /// See [`fibonacci::FibonacciResult`].
    Fibonacci(fibonacci::FibonacciResult),
    /// See [`factorial::FactorialResult`].
    Factorial(factorial::FactorialResult),
    /// See [`matmul::MatmulResult`].
    Matmul(matmul::MatmulResult),
    /// See [`wordcount::WordcountResult`].
    Wordcount(wordcount::WordcountResult),
    /// See [`wasm::WasmResult`].
    Wasm(wasm::WasmResult),
}

impl JobResult {
    /// The compact encoding the coordinator stores.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("results always encode")
    }

    /// Decodes [`JobResult::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<JobResult, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// Renders the result in `format` (`json`, `tsv`, `npy`), with the
    /// content type to serve it under.
    pub fn render(&self, format: &str) -> Result<(Vec<u8>, &'static str), FormatError> {
        let mut out = Vec::new();
        let content_type = match (format, self) {
            ("json", JobResult::Fibonacci(r)) => r.write_json(&mut out),
            ("json", JobResult::Factorial(r)) => r.write_json(&mut out),
            ("json", JobResult::Matmul(r)) => r.write_json(&mut out),
            ("json", JobResult::Wordcount(r)) => r.write_json(&mut out),
            ("json", JobResult::Wasm(r)) => r.write_json(&mut out),
            ("npy", JobResult::Matmul(r)) => r.write_npy(&mut out),
            ("tsv", JobResult::Wordcount(r)) => r.write_tsv(&mut out),
            _ => {
                return Err(FormatError {
                    format: format.to_string(),
                    kernel: self.kind().name(),
                    offered: self.kind().result_formats(),
                })
            }
        };
        Ok((out, content_type))
    }
}

/// JSON's content type, which every kernel offers.
const JSON: &str = "application/json";

/// Appends `s` as a JSON string, escaped as serde_json escapes it.
fn json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

impl fibonacci::FibonacciResult {
    /// Writes `{"values":["55","6765",...]}`.
    pub fn write_json(&self, out: &mut Vec<u8>) -> &'static str {
        out.reserve(self.values.digits.len() + 3 * self.values.ends.len() + 16);
        out.extend_from_slice(b"{\"values\":[");
        for (i, v) in self.values.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // Decimal digits need no escaping.
            out.push(b'"');
            out.extend_from_slice(v.as_bytes());
            out.push(b'"');
        }
        out.extend_from_slice(b"]}");
        JSON
    }
}

impl factorial::FactorialResult {
    /// Writes `{"n":20000,"digits":77338,"value":"..."}`.
    pub fn write_json(&self, out: &mut Vec<u8>) -> &'static str {
        let mut buf = itoa::Buffer::new();
        out.reserve(self.value.len() + 64);
        out.extend_from_slice(b"{\"n\":");
        out.extend_from_slice(buf.format(self.n).as_bytes());
        out.extend_from_slice(b",\"digits\":");
        out.extend_from_slice(buf.format(self.value.len()).as_bytes());
        out.extend_from_slice(b",\"value\":\"");
        out.extend_from_slice(self.value.as_bytes());
        out.extend_from_slice(b"\"}");
        JSON
    }
}

impl matmul::MatmulResult {
    /// Writes `{"c":[[...],[...]]}`; each value in the shortest form that
    /// reads back to the same f64 (non-finite values, which JSON lacks, as `null`).
    pub fn write_json(&self, out: &mut Vec<u8>) -> &'static str {
        out.reserve(self.c.len() * 20 + 16);
        out.extend_from_slice(b"{\"c\":[");
        let n = (self.n as usize).max(1);
        for (i, row) in self.c.chunks(n).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'[');
            for (j, x) in row.iter().enumerate() {
                if j > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, x).expect("writing to a Vec cannot fail");
            }
            out.push(b']');
        }
        out.extend_from_slice(b"]}");
        JSON
    }

    /// Writes C as a NumPy `.npy` file (format 1.0, little-endian f64, C order).
    pub fn write_npy(&self, out: &mut Vec<u8>) -> &'static str {
        let dict = format!(
            "{{'descr': '<f8', 'fortran_order': False, 'shape': ({}, {}), }}",
            self.m, self.n
        );
        // Magic (6) + version (2) + header length (2), then the dict padded
        // with spaces and ended by a newline so the data is 64-byte aligned.
        let unpadded = 10 + dict.len() + 1;
        let header_len = dict.len() + 1 + (64 - unpadded % 64) % 64;
        out.reserve(10 + header_len + self.c.len() * 8);
        out.extend_from_slice(b"\x93NUMPY\x01\x00");
        out.extend_from_slice(&(header_len as u16).to_le_bytes());
        out.extend_from_slice(dict.as_bytes());
        out.resize(out.len() + header_len - dict.len() - 1, b' ');
        out.push(b'\n');
        for x in &self.c {
            out.extend_from_slice(&x.to_le_bytes());
        }
        "application/octet-stream"
    }
}

impl wordcount::WordcountResult {
    /// Writes `{"total_words":N,"distinct":M,"top":[["would",12],...]}`,
    /// listing the first `top` words.
    pub fn write_json(&self, out: &mut Vec<u8>) -> &'static str {
        let mut buf = itoa::Buffer::new();
        out.extend_from_slice(b"{\"total_words\":");
        out.extend_from_slice(buf.format(self.total_words).as_bytes());
        out.extend_from_slice(b",\"distinct\":");
        out.extend_from_slice(buf.format(self.counts.len()).as_bytes());
        out.extend_from_slice(b",\"top\":[");
        for (i, (w, c)) in self.counts.iter().take(self.top).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'[');
            json_str(out, w);
            out.push(b',');
            out.extend_from_slice(buf.format(*c).as_bytes());
            out.push(b']');
        }
        out.extend_from_slice(b"]}");
        JSON
    }

    /// Writes every word as a `word<TAB>count` line, in result order. Words
    /// never hold tabs or line breaks: both rules split on white space.
    pub fn write_tsv(&self, out: &mut Vec<u8>) -> &'static str {
        let mut buf = itoa::Buffer::new();
        out.reserve(self.counts.iter().map(|(w, _)| w.len() + 8).sum());
        for (w, c) in &self.counts {
            out.extend_from_slice(w.as_bytes());
            out.push(b'\t');
            out.extend_from_slice(buf.format(*c).as_bytes());
            out.push(b'\n');
        }
        "text/tab-separated-values; charset=utf-8"
    }
}
