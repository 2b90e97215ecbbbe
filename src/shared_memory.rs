//! Triton's system shared-memory extension: POSIX shared-memory objects that a co-located
//! client registers by key, read for inputs and written for outputs at offsets.
//!
//! A region is read and written with pread/pwrite on the object's descriptor, never
//! mapped. A client that truncates its object after registering fails its own request
//! (the size is checked at each use, and a short read is an error), where reading a
//! shrunk mapping would raise SIGBUS and end the server. That costs one copy of an input
//! (the object into the request's buffer) that a mapping would leave to the engine. An
//! object unlinked after registering stays readable through the descriptor until it is
//! unregistered, as a mapping would.

use std::{
    collections::BTreeMap,
    fs::File,
    os::unix::fs::{FileExt, OpenOptionsExt},
    path::Path,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use bytesize::ByteSize;
use thiserror::Error;

use crate::admission::{ByteBudget, Held, OverBudget};

/// Where Linux keeps POSIX shared-memory objects (what `shm_open` opens).
const SHM_DIR: &str = "/dev/shm";
/// Regions registered at once: each holds a descriptor.
pub const MAX_REGIONS: usize = 1024;
/// Keys Triton keeps for its Python backend's own regions.
const RESERVED_PREFIX: &str = "triton_python_backend_shm_region_";

#[derive(Debug, Error)]
pub enum ShmError {
    /// Triton's words, which its clients match.
    #[error("Client shared memory is disabled. Start the server with '--allow-client-shm=true' to enable.")]
    Disabled,
    #[error("shared memory region '{0}' already in manager")]
    AlreadyExists(String),
    #[error("Unable to find shared memory region: '{0}'")]
    NotFound(String),
    /// A bad key, offset or size, or an object that no longer holds what was registered.
    #[error("{0}")]
    Invalid(String),
    /// Past `--client-shm-limit` or `MAX_REGIONS`.
    #[error("{0}")]
    Exhausted(String),
    #[error("shared memory region '{name}': {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
    /// The bytes read out of a region would pass the in-flight budget.
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
}

/// One registered region: `byte_size` bytes from `offset` of the object `key`.
#[derive(Debug)]
pub struct Region {
    pub name: String,
    pub key: String,
    pub offset: u64,
    pub byte_size: u64,
    object: File,
}

/// The registered regions, shared by both front ends.
#[derive(Debug)]
pub struct SharedMemory {
    allowed: bool,
    limit: u64,
    regions: Mutex<BTreeMap<String, Arc<Region>>>,
    /// What a request reads out of a region is held against the in-flight byte budget
    /// until its tensor is dropped, as a request's body is.
    budget: Arc<ByteBudget>,
}

impl SharedMemory {
    /// `allowed`: registering is refused unless set (`--allow-client-shm`); `limit`: the
    /// bytes all regions may span together.
    pub fn new(allowed: bool, limit: ByteSize, budget: Arc<ByteBudget>) -> SharedMemory {
        SharedMemory {
            allowed,
            limit: limit.as_u64(),
            regions: Mutex::default(),
            budget,
        }
    }

    /// Off, with no regions: requests that name one are refused.
    pub fn disabled() -> SharedMemory {
        SharedMemory::new(false, ByteSize(0), Arc::new(ByteBudget::new(0)))
    }

    /// Whether clients may register regions (`--allow-client-shm`).
    pub fn allowed(&self) -> bool {
        self.allowed
    }

    /// Opens `key` and registers `byte_size` bytes of it from `offset` as `name`.
    pub fn register(
        &self,
        name: &str,
        key: &str,
        offset: u64,
        byte_size: u64,
    ) -> Result<(), ShmError> {
        if !self.allowed {
            return Err(ShmError::Disabled);
        }
        let invalid = |why: String| {
            ShmError::Invalid(format!(
                "failed to register shared memory region '{name}': {why}"
            ))
        };
        if name.is_empty() {
            return Err(invalid("a region needs a name".into()));
        }
        let file_name = object_name(key).map_err(invalid)?;
        let end = offset
            .checked_add(byte_size)
            .filter(|_| byte_size > 0)
            .ok_or_else(|| {
                invalid(format!(
                    "invalid args: offset {offset} and byte_size {byte_size} (byte_size must be at least 1)"
                ))
            })?;
        let mut regions = self.regions.lock().expect("never poisoned");
        if regions.contains_key(name) {
            return Err(ShmError::AlreadyExists(name.to_owned()));
        }
        if regions.len() >= MAX_REGIONS {
            return Err(ShmError::Exhausted(format!(
                "cannot register shared memory region '{name}': {MAX_REGIONS} regions are registered, the most wharf holds; unregister some"
            )));
        }
        let spanned: u64 = regions.values().map(|r| r.byte_size).sum();
        if spanned.saturating_add(byte_size) > self.limit {
            return Err(ShmError::Exhausted(format!(
                "cannot register shared memory region '{name}' of {byte_size} bytes: registered regions span {spanned} of the {} bytes --client-shm-limit allows",
                self.limit
            )));
        }
        // No symlinks: /dev/shm is writable by every local user, and a link planted there
        // must not let a client read or write another file through the server.
        let object = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(Path::new(SHM_DIR).join(file_name))
            .map_err(|e| {
                invalid(format!(
                    "Unable to open shared memory region: '{key}': {e} (the server opens {SHM_DIR}/{file_name}; \
                     a client in another container needs the same IPC namespace)"
                ))
            })?;
        let size = object_size(&object, name)?;
        let is_file = object.metadata().is_ok_and(|m| m.is_file());
        if !is_file {
            return Err(invalid(format!(
                "key '{key}' is not a shared-memory object"
            )));
        }
        if end > size {
            return Err(invalid(format!(
                "invalid args: offset {offset} + byte_size {byte_size} is past the end of '{key}', which holds {size} bytes"
            )));
        }
        regions.insert(
            name.to_owned(),
            Arc::new(Region {
                name: name.to_owned(),
                key: key.to_owned(),
                offset,
                byte_size,
                object,
            }),
        );
        Ok(())
    }

    /// Unregisters `name`, or every region where it is empty. An unknown name is no
    /// error (as in Triton): cleanup may run twice. Requests already using a region
    /// finish with it.
    pub fn unregister(&self, name: &str) -> Result<(), ShmError> {
        if !self.allowed {
            return Err(ShmError::Disabled);
        }
        let mut regions = self.regions.lock().expect("never poisoned");
        if name.is_empty() {
            regions.clear();
        } else {
            regions.remove(name);
        }
        Ok(())
    }

    /// `name`'s region, or every region where it is empty.
    pub fn status(&self, name: &str) -> Result<Vec<Arc<Region>>, ShmError> {
        let regions = self.regions.lock().expect("never poisoned");
        if name.is_empty() {
            return Ok(regions.values().cloned().collect());
        }
        regions
            .get(name)
            .map(|r| vec![Arc::clone(r)])
            .ok_or_else(|| ShmError::NotFound(name.to_owned()))
    }

    /// `byte_size` bytes at `offset` within region `name`, as a request's parameters
    /// name them, checked against the region's bounds.
    pub fn window(&self, name: &str, offset: u64, byte_size: u64) -> Result<Window, ShmError> {
        let region = self
            .regions
            .lock()
            .expect("never poisoned")
            .get(name)
            .cloned()
            .ok_or_else(|| ShmError::NotFound(name.to_owned()))?;
        if offset >= region.byte_size {
            return Err(ShmError::Invalid(format!(
                "Invalid offset for shared memory region: '{name}': offset {offset} is not within its {} bytes",
                region.byte_size
            )));
        }
        if offset
            .checked_add(byte_size)
            .is_none_or(|end| end > region.byte_size)
        {
            return Err(ShmError::Invalid(format!(
                "Invalid offset + byte size for shared memory region: '{name}': offset {offset} + byte_size {byte_size} is past its {} bytes",
                region.byte_size
            )));
        }
        Ok(Window {
            region,
            offset,
            byte_size,
            budget: Arc::clone(&self.budget),
        })
    }
}

/// The file name under `SHM_DIR` of a POSIX key: one leading `/` at most, then a name
/// with no `/`, not `.` or `..`, and not Triton's reserved prefix.
fn object_name(key: &str) -> Result<&str, String> {
    let name = key.strip_prefix('/').unwrap_or(key);
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0')
        || name.len() > 255;
    if bad {
        return Err(format!(
            "invalid shm key '{key}': a POSIX shared-memory name is '/' then up to 255 bytes with no '/' (not . or ..)"
        ));
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(format!(
            "key '{key}' has the reserved prefix '{RESERVED_PREFIX}'"
        ));
    }
    Ok(name)
}

fn object_size(object: &File, name: &str) -> Result<u64, ShmError> {
    object
        .metadata()
        .map(|m| m.len())
        .map_err(|source| ShmError::Io {
            name: name.to_owned(),
            source,
        })
}

/// The outputs a request asked to have written into regions, by name.
pub type OutputWindows = Vec<(String, Window)>;

/// What a tensor's `shared_memory_region`, `_byte_size` and `_offset` parameters say.
#[derive(Debug, Clone, PartialEq)]
pub struct ShmParams {
    pub region: String,
    pub byte_size: u64,
    pub offset: u64,
}

impl ShmParams {
    /// The region and its byte size come together; the offset defaults to 0.
    pub fn new(
        tensor: &str,
        region: String,
        byte_size: Option<u64>,
        offset: Option<u64>,
    ) -> Result<ShmParams, ShmError> {
        let byte_size = byte_size.ok_or_else(|| {
            ShmError::Invalid(format!(
                "'{tensor}' names shared memory region '{region}' but no shared_memory_byte_size"
            ))
        })?;
        Ok(ShmParams {
            region,
            byte_size,
            offset: offset.unwrap_or(0),
        })
    }

    pub fn window(&self, shm: &SharedMemory) -> Result<Window, ShmError> {
        shm.window(&self.region, self.offset, self.byte_size)
    }

    /// Input `input`'s bytes, refused before reading where they pass `limit`.
    pub fn read(&self, shm: &SharedMemory, input: &str, limit: usize) -> Result<Bytes, ShmError> {
        if self.byte_size > limit as u64 {
            return Err(ShmError::Invalid(format!(
                "input '{input}': shared_memory_byte_size {} is over the limit of {limit} bytes per request",
                self.byte_size
            )));
        }
        self.window(shm)?.read()
    }
}

/// Part of a region, as one input or output of a request names it.
#[derive(Debug, Clone)]
pub struct Window {
    region: Arc<Region>,
    offset: u64,
    byte_size: u64,
    budget: Arc<ByteBudget>,
}

/// An input's bytes read from a region, and their place in the in-flight budget, given
/// back when the tensor holding them is dropped.
struct ReadOut {
    data: Vec<u8>,
    _held: Held,
}

impl AsRef<[u8]> for ReadOut {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Window {
    pub fn byte_size(&self) -> u64 {
        self.byte_size
    }

    /// Where the window starts in the object, and where it ends, checked against the
    /// object's size now: a client may have truncated it since registering.
    fn span(&self) -> Result<(u64, u64), ShmError> {
        let start = self.region.offset + self.offset;
        let end = start + self.byte_size;
        let size = object_size(&self.region.object, &self.region.name)?;
        if size < end {
            return Err(ShmError::Invalid(format!(
                "shared memory region '{}': its object '{}' now holds {size} bytes, fewer than the {end} this request uses (was it truncated after registering?)",
                self.region.name, self.region.key
            )));
        }
        Ok((start, end))
    }

    /// The window's bytes, copied out of the object, held against the in-flight byte
    /// budget for as long as they live.
    pub fn read(&self) -> Result<Bytes, ShmError> {
        let (start, _) = self.span()?;
        let held = self.budget.try_hold(self.byte_size as usize)?;
        let mut data = vec![0u8; self.byte_size as usize];
        self.region
            .object
            .read_exact_at(&mut data, start)
            .map_err(|e| {
                ShmError::Invalid(format!(
                    "shared memory region '{}': reading {} bytes at {start} of '{}': {e} (was it truncated?)",
                    self.region.name, self.byte_size, self.region.key
                ))
            })?;
        Ok(Bytes::from_owner(ReadOut { data, _held: held }))
    }

    /// Writes `data`, output `output`'s bytes, at the start of the window.
    pub fn write(&self, output: &str, data: &[u8]) -> Result<(), ShmError> {
        if data.len() as u64 > self.byte_size {
            return Err(ShmError::Invalid(format!(
                "shared memory size specified with the request for output '{output}' ({} bytes) should be at least {} bytes to hold the results",
                self.byte_size,
                data.len()
            )));
        }
        let (start, _) = self.span()?;
        self.region
            .object
            .write_all_at(data, start)
            .map_err(|source| ShmError::Io {
                name: self.region.name.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_single_names_outside_the_reserved_prefix() {
        assert_eq!(object_name("/input0"), Ok("input0"));
        assert_eq!(object_name("input0"), Ok("input0"));
        for bad in ["", "/", "/..", "/.", "/a/b", "//x", "/a\0b"] {
            assert!(object_name(bad).is_err(), "{bad:?}");
        }
        assert!(object_name("/triton_python_backend_shm_region_1")
            .unwrap_err()
            .contains("reserved prefix"));
    }

    #[test]
    fn bytes_read_from_a_region_are_held_against_the_in_flight_budget() {
        let key = format!("wharf-unit-{}", std::process::id());
        let path = Path::new(SHM_DIR).join(&key);
        std::fs::write(&path, vec![7u8; 8 * 1024]).unwrap();
        let budget = Arc::new(ByteBudget::new(12 * 1024));
        let shm = SharedMemory::new(true, ByteSize::mib(1), Arc::clone(&budget));
        shm.register("r", &format!("/{key}"), 0, 8 * 1024).unwrap();
        let window = shm.window("r", 0, 8 * 1024).unwrap();

        let first = window.read().unwrap();
        assert_eq!(first.len(), 8 * 1024);
        assert!(first.iter().all(|&b| b == 7));
        assert_eq!(budget.held(), 8 * 1024);
        let refused = window.read().unwrap_err();
        assert!(matches!(refused, ShmError::OverBudget(_)), "{refused:?}");

        drop(first);
        assert_eq!(budget.held(), 0);
        assert!(window.read().is_ok());
        std::fs::remove_file(path).unwrap();
    }
}
