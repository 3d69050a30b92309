//! Large task inputs (streamed text chunks, big matrix tiles) as files, one
//! per task, beside the database.
//!
//! SQLite in WAL mode writes every byte twice (into the WAL, then into the
//! database at checkpoint), each time behind an fsync; for a 1 GiB upload
//! that halves the speed the disk allows. A file is written once, and the
//! whole job's files are synced together before the job is sealed, so a
//! `201 Created` still means the text is on disk.

use std::fs;
use std::io;
use std::path::PathBuf;

/// Inputs larger than this go to files; smaller ones stay in their row.
pub const INLINE_MAX: usize = 256 << 10;

/// The folder of blob files, one subfolder per job.
#[derive(Clone, Debug)]
pub struct Blobs {
    root: PathBuf,
}

impl Blobs {
    /// Blobs under `root` (created when first written).
    pub fn new(root: PathBuf) -> Blobs {
        Blobs { root }
    }

    fn job_dir(&self, seq: i64) -> PathBuf {
        self.root.join(seq.to_string())
    }

    /// Writes one task's input and syncs it at once: the disk then works
    /// while the rest of the upload arrives, instead of all at the seal.
    pub fn write(&self, seq: i64, idx: i64, data: &[u8]) -> io::Result<()> {
        let dir = self.job_dir(seq);
        fs::create_dir_all(&dir)?;
        let mut f = fs::File::create(dir.join(idx.to_string()))?;
        io::Write::write_all(&mut f, data)?;
        f.sync_data()
    }

    /// The size of one task's input file (an error if it is gone).
    pub fn size(&self, seq: i64, idx: i64) -> io::Result<u64> {
        Ok(fs::metadata(self.job_dir(seq).join(idx.to_string()))?.len())
    }

    /// Reads one task's input.
    pub fn read(&self, seq: i64, idx: i64) -> io::Result<Vec<u8>> {
        fs::read(self.job_dir(seq).join(idx.to_string()))
    }

    /// Makes every file of a job durable, and the folders that name them.
    pub fn sync_job(&self, seq: i64) -> io::Result<()> {
        let dir = self.job_dir(seq);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            fs::File::open(entry?.path())?.sync_all()?;
        }
        fs::File::open(&dir)?.sync_all()?;
        fs::File::open(&self.root)?.sync_all()
    }

    /// Removes a job's files, if any.
    pub fn remove_job(&self, seq: i64) {
        match fs::remove_dir_all(self.job_dir(seq)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(seq, "cannot remove a job's input files: {e}"),
        }
    }

    /// The jobs that have files, by sequence number.
    pub fn jobs(&self) -> io::Result<Vec<i64>> {
        match fs::read_dir(&self.root) {
            Ok(entries) => Ok(entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}
