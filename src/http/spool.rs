//! Request bodies too large to keep in memory, written to disk as they
//! arrive, as nginx does in front of Gunicorn: a slow upload is then read
//! through the ring while the app waits for nothing, and a connection costs
//! at most `MEMORY_MAX` of memory for its body (docs/architecture.md,
//! "Request bodies").

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::FromRawFd;

/// Bodies are held in memory up to this size; past it they are spooled.
pub const MEMORY_MAX: usize = 1 << 20;

/// A body being written to an unlinked temporary file in `dir`, or `$TMPDIR`
/// (or `/tmp`): it leaves no file behind, whatever becomes of the process.
pub struct Spool(File);

impl Spool {
    pub fn new(dir: Option<&std::path::Path>) -> std::io::Result<Spool> {
        let dir = dir.map_or_else(std::env::temp_dir, std::path::Path::to_path_buf);
        let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(std::io::Error::other)?;
        // SAFETY: open(2) with a valid path; the descriptor is owned below.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd >= 0 {
            // SAFETY: a descriptor just opened and owned by nothing else.
            return Ok(Spool(unsafe { File::from_raw_fd(fd) }));
        }
        // A file system without O_TMPFILE: make a file and unlink it at once.
        let mut template = dir
            .join("turbo-body-XXXXXX")
            .into_os_string()
            .into_encoded_bytes();
        template.push(0);
        // SAFETY: mkostemp fills in the NUL-terminated template it is given.
        let fd = unsafe { libc::mkostemp(template.as_mut_ptr().cast(), libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: unlinks the file just made; the descriptor keeps it.
        unsafe { libc::unlink(template.as_ptr().cast()) };
        // SAFETY: a descriptor just opened and owned by nothing else.
        Ok(Spool(unsafe { File::from_raw_fd(fd) }))
    }

    /// Appends body bytes.
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.write_all(bytes)
    }

    /// The whole body, as a file positioned at its start.
    pub fn finish(mut self) -> std::io::Result<File> {
        self.0.seek(SeekFrom::Start(0))?;
        Ok(self.0)
    }
}
