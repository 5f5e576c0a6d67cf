//! OTA storage of an ESP32-C3: the `ota_0` and `ota_1` app partitions as the two slots of a
//! [`pmesh_flash::FlashSink`], and the switch of the boot partition (ESP-IDF's `otadata`, through
//! esp-bootloader-esp-idf) when an image is committed.

use embedded_storage::nor_flash::{ErrorType, MultiwriteNorFlash, NorFlash, ReadNorFlash};
use esp_bootloader_esp_idf::ota_updater::OtaUpdater;
use esp_bootloader_esp_idf::partitions::{
    self, AppPartitionSubType, PARTITION_TABLE_MAX_LEN, PartitionType,
};
use esp_storage::{FlashStorage, FlashStorageError};
use pmesh_flash::FlashSink;
use pmesh_ota::{FirmwareSink, IoError};

/// `ota_0` followed by `ota_1` (equal sizes, adjacent, as in ESP-IDF's two-OTA layouts) seen as
/// one flash whose halves are the two slots.
#[derive(Debug)]
pub struct OtaSlots {
    storage: FlashStorage<'static>,
    offset: u32,
    len: u32,
}

/// Why the partition table does not suit pmesh's two-slot sink.
#[derive(Debug)]
pub enum LayoutError {
    /// The partition table could not be read.
    Table(partitions::Error),
    /// No `ota_0` or `ota_1` partition.
    NoOtaPartitions,
    /// `ota_1` does not directly follow an `ota_0` of the same size.
    NotAdjacent,
}

impl core::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LayoutError::Table(e) => write!(f, "cannot read the partition table: {e:?}"),
            LayoutError::NoOtaPartitions => f.write_str("no ota_0 and ota_1 app partitions"),
            LayoutError::NotAdjacent => {
                f.write_str("ota_1 does not directly follow an ota_0 of the same size")
            }
        }
    }
}

impl OtaSlots {
    /// Finds the OTA partitions; returns the slots and which one the chip booted from.
    pub fn find(mut storage: FlashStorage<'static>) -> Result<(OtaSlots, u32), LayoutError> {
        let mut buf = [0u8; PARTITION_TABLE_MAX_LEN];
        let table =
            partitions::read_partition_table(&mut storage, &mut buf).map_err(LayoutError::Table)?;
        let find = |sub| {
            table
                .find_partition(PartitionType::App(sub))
                .map_err(LayoutError::Table)?
                .ok_or(LayoutError::NoOtaPartitions)
        };
        let (ota0, ota1) = (
            find(AppPartitionSubType::Ota0)?,
            find(AppPartitionSubType::Ota1)?,
        );
        if ota1.offset() != ota0.offset() + ota0.len() || ota0.len() != ota1.len() {
            return Err(LayoutError::NotAdjacent);
        }
        let booted = table.booted_partition().ok().flatten();
        let running = u32::from(booted.is_some_and(|p| p.offset() == ota1.offset()));
        let (offset, len) = (ota0.offset(), 2 * ota0.len());
        Ok((
            OtaSlots {
                storage,
                offset,
                len,
            },
            running,
        ))
    }

    fn at(&self, offset: u32, len: usize) -> Result<u32, FlashStorageError> {
        match offset.checked_add(len as u32) {
            Some(end) if end <= self.len => Ok(self.offset + offset),
            _ => Err(FlashStorageError::OutOfBounds),
        }
    }
}

impl ErrorType for OtaSlots {
    type Error = FlashStorageError;
}

impl ReadNorFlash for OtaSlots {
    const READ_SIZE: usize = FlashStorage::READ_SIZE;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        let at = self.at(offset, bytes.len())?;
        self.storage.read(at, bytes)
    }

    fn capacity(&self) -> usize {
        self.len as usize
    }
}

impl NorFlash for OtaSlots {
    const WRITE_SIZE: usize = FlashStorage::WRITE_SIZE;
    const ERASE_SIZE: usize = FlashStorage::ERASE_SIZE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        let at = self.at(from, to.saturating_sub(from) as usize)?;
        self.storage.erase(at, at + (to - from))
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        let at = self.at(offset, bytes.len())?;
        self.storage.write(at, bytes)
    }
}

/// esp-storage's flash takes repeated programming of a word that only clears bits.
impl MultiwriteNorFlash for OtaSlots {}

/// The node's firmware sink: pmesh-flash's two-slot sink, plus pointing the bootloader at the
/// new slot on commit.
#[derive(Debug)]
pub struct EspOtaSink(pub FlashSink<OtaSlots>);

impl FirmwareSink for EspOtaSink {
    fn capacity(&self) -> u64 {
        self.0.capacity()
    }
    fn begin(&mut self, len: Option<u64>) -> Result<(), IoError> {
        self.0.begin(len)
    }
    fn resume(&mut self, len: Option<u64>) -> Result<(), IoError> {
        self.0.resume(len)
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        self.0.write_at(offset, data)
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.0.read_at(offset, buf)
    }
    fn verify(&mut self, len: u64) -> Result<(), IoError> {
        // An ESP-IDF app image starts with the magic byte 0xE9; anything else would not boot.
        let mut magic = [0u8; 1];
        self.0.read_at(0, &mut magic)?;
        if magic[0] != 0xe9 {
            return Err(IoError::Device(
                "not an ESP-IDF app image (no 0xE9 magic)".into(),
            ));
        }
        self.0.verify(len)
    }
    fn commit(&mut self) -> Result<(), IoError> {
        self.0.commit()?;
        let mut buf = [0u8; PARTITION_TABLE_MAX_LEN];
        let storage = &mut self.0.flash_mut().storage;
        OtaUpdater::new(storage, &mut buf)
            .and_then(|mut ota| ota.activate_next_partition())
            .map_err(|e| IoError::Device(alloc::format!("otadata: {e:?}")))
    }
    fn abort(&mut self) {
        self.0.abort()
    }
    fn read_current(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.0.read_current(offset, buf)
    }
}
