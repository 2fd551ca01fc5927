//! The XDP program loaded into the kernel from the object embedded in the binary, with its maps
//! pinned as `<pin_dir>/<map name>`: the maps of the program's global data (its configuration
//! and its counters, the BTF maps `scr_config` and `scr_stats`) and every other map.
//!
//! Loading again reuses the pinned maps when their layout matches and refuses otherwise
//! ([`layout`]), but for counters of an earlier layout, which are replaced, and
//! the previous layout's copy of the configuration (`scr_config_live`), whose record the load
//! takes and which goes once no interface runs that layout's program.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, Map, MapData, MapError},
    programs::{ProgramError, Xdp},
};
use screen_common::{PROGRAM_NAME, STATS_MAX_CPUS, ScreenConfig, StatsRecord, map_name};

use super::{
    bpffs::{self, BpffsError},
    layout::{self, LayoutError},
    link::{self, LinkError},
    stats::StatsMap,
};
use crate::paths::POSSIBLE_CPUS;

/// The XDP object built by `build.rs`, embedded so that the binary is all an operator installs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/screen-ebpf.o"));

/// An error loading the program or handling its pins.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("loading the XDP object: {0}")]
    Load(#[source] EbpfError),
    #[error("the XDP object has no program {PROGRAM_NAME}")]
    NoProgram,
    #[error("loading program {PROGRAM_NAME} into the kernel: {0}")]
    Verify(#[source] ProgramError),
    #[error(
        "the kernel refused program {PROGRAM_NAME} for misaligned access: this build needs an \
         architecture with efficient unaligned memory access (x86-64, arm64): {0}"
    )]
    Misaligned(#[source] ProgramError),
    #[error(
        "this machine's possible CPUs take {cpus} numbers; the program has counters for \
         {STATS_MAX_CPUS} and would pass every frame on the others (raise STATS_MAX_CPUS in \
         screen-common, up to 32768)"
    )]
    TooManyCpus { cpus: usize },
    #[error(
        "creating the BTF maps scr_config and scr_stats under {dir}, which back the program's \
         global data: {source}"
    )]
    PinGlobalData {
        dir: PathBuf,
        #[source]
        source: Box<EbpfError>,
    },
    #[error("cannot count the possible CPUs ({path}): {source}")]
    Cpus {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the counters in {path}: {source}")]
    ReadStats {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot inspect pinned map {path}: {source}")]
    InspectPin {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("removing {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Has `loader` create every map of the XDP program as small as the kernel allows, for a load
/// of the object that does not run that program (the relay's, and the one that pins the maps
/// behind its global data) instead of at their pinned sizes.
pub(crate) fn xdp_maps_at_their_smallest(loader: &mut EbpfLoader<'_>) {
    for name in map_name::ALL {
        loader.map_max_entries(name, 1);
    }
}

fn remove_pin(path: &Path) -> Result<(), LoadError> {
    bpffs::remove_pin(path).map_err(|source| LoadError::Remove {
        path: path.to_path_buf(),
        source,
    })
}

/// The pinned configuration record, if a program was loaded under `pin_dir` before:
/// `scr_config_live` if the previous layout left it (its program read that copy), else
/// `scr_config`.
fn pinned_config(pin_dir: &Path) -> Result<Option<ScreenConfig>, LoadError> {
    let Some(path) = [map_name::OLD_CONFIG_GLOBAL_PIN, map_name::CONFIG]
        .into_iter()
        .map(|name| pin_dir.join(name))
        .find(|path| path.exists())
    else {
        return Ok(None);
    };
    let inspect = |source| LoadError::InspectPin {
        path: path.clone(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(inspect)?;
    let config: Array<MapData, ScreenConfig> =
        Array::try_from(Map::Array(data)).map_err(inspect)?;
    config.get(&0, 0).map(Some).map_err(inspect)
}

/// The pinned counters.
fn pinned_stats(pin_dir: &Path) -> Result<Box<StatsRecord>, LoadError> {
    let path = pin_dir.join(map_name::STATS);
    let data = MapData::from_pin(&path).map_err(|source| LoadError::InspectPin {
        path: path.clone(),
        source,
    })?;
    StatsMap::new(data)
        .and_then(|stats| stats.read())
        .map_err(|source| LoadError::ReadStats { path, source })
}

/// How many CPU numbers the kernel may give out: the highest possible CPU's number plus one
/// (the possible CPUs may have gaps, and the program indexes its counters by number).
fn cpu_numbers() -> Result<usize, LoadError> {
    let text = std::fs::read_to_string(POSSIBLE_CPUS).map_err(|source| LoadError::Cpus {
        path: POSSIBLE_CPUS,
        source,
    })?;
    highest_cpu(&text)
        .map(|highest| highest + 1)
        .ok_or_else(|| LoadError::Cpus {
            path: POSSIBLE_CPUS,
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not a CPU list: {:?}", text.trim()),
            ),
        })
}

/// The highest CPU number in a kernel CPU list (`0-3,8,10-11`).
fn highest_cpu(list: &str) -> Option<usize> {
    list.trim()
        .split(',')
        .map(|range| {
            let mut ends = range.splitn(2, '-').map(|n| n.trim().parse::<usize>().ok());
            let first = ends.next().flatten()?;
            match ends.next() {
                None => Some(first),
                Some(last) => last.filter(|&last| last >= first),
            }
        })
        .try_fold(None, |highest: Option<usize>, last| {
            Some(highest.max(Some(last?)))
        })
        .flatten()
}

/// Creates the maps that back the program's global data (configuration and counters) from
/// their BTF definitions, pinned, before the load that backs the global data with them. Within
/// one load the maps are created in no fixed order, and the global data's own maps, which have
/// no BTF, could take the pins first. The object's other maps are created too, at their
/// smallest, and closed again.
fn pin_global_data_maps(pin_dir: &Path) -> Result<(), LoadError> {
    let mut loader = EbpfLoader::new();
    xdp_maps_at_their_smallest(&mut loader);
    for name in [map_name::STATS, map_name::CONFIG] {
        loader.map_pin_path(name, pin_dir.join(name));
    }
    loader
        .load(OBJECT)
        .map_err(|source| LoadError::PinGlobalData {
            dir: pin_dir.to_path_buf(),
            source: Box::new(source),
        })?;
    Ok(())
}

/// The program loaded into the kernel, with its maps pinned.
pub struct ScreenProgram {
    ebpf: Ebpf,
    pin_dir: PathBuf,
}

impl ScreenProgram {
    /// Loads the program, reusing compatible maps pinned under `pin_dir` and pinning new ones.
    /// The caller holds the pin directory's lock ([`bpffs::PinDirLock`]): the configuration is
    /// read here and written back by the load.
    pub fn load(pin_dir: &Path) -> Result<Self, LoadError> {
        bpffs::prepare_pin_dir(pin_dir)?;
        let cpus = cpu_numbers()?;
        if cpus > STATS_MAX_CPUS {
            return Err(LoadError::TooManyCpus { cpus });
        }
        // Counters hold no state: an older layout's are replaced, not refused (once every
        // other pin has passed).
        if let Some(old_stats) = layout::check_pin_dir(pin_dir)? {
            tracing::warn!(
                pin = %old_stats.path.display(),
                what = old_stats.what,
                "counters of an older layout replaced; they restart at zero"
            );
            remove_pin(&old_stats.path)?;
        }
        if [map_name::STATS, map_name::CONFIG]
            .iter()
            .any(|name| !pin_dir.join(name).exists())
        {
            pin_global_data_maps(pin_dir)?;
        }
        let mut loader = EbpfLoader::new();
        for name in map_name::ALL {
            loader.map_pin_path(name, pin_dir.join(name));
        }
        // The program's global data, backed by the pinned BTF maps. The loader writes the
        // object's initial data into them, so it starts from the pinned records: a reload
        // changes nothing the program sees, and the counters carry over (but for what the
        // previous program counts between this read and the write). The pin directory lock
        // keeps the configuration from changing meanwhile.
        loader.map_pin_path(map_name::CONFIG_GLOBAL, pin_dir.join(map_name::CONFIG));
        let config = pinned_config(pin_dir)?;
        if let Some(config) = &config {
            loader.override_global(map_name::CONFIG_SYMBOL, config, true);
        }
        loader.map_pin_path(map_name::STATS_GLOBAL, pin_dir.join(map_name::STATS));
        let stats = pinned_stats(pin_dir)?;
        loader.override_global(map_name::STATS_SYMBOL, &*stats, true);
        let ebpf = loader.load(OBJECT).map_err(LoadError::Load)?;
        let mut program = Self {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
        };
        program.xdp()?.load().map_err(|e| {
            if format!("{e:?}").contains("misaligned") {
                LoadError::Misaligned(e)
            } else {
                LoadError::Verify(e)
            }
        })?;
        Ok(program)
    }

    /// Removes the previous layout's copy of the configuration (`scr_config_live`) once no
    /// interface runs that layout's program any more: every pinned link runs this program.
    /// Until then the maps keep writing the copy too ([`SettingsRecord`]), so a program still
    /// attached elsewhere goes on following list changes. Call after attaching.
    ///
    /// [`SettingsRecord`]: super::settings::SettingsRecord
    pub fn retire_old_layout(&mut self) -> Result<(), LoadError> {
        let old = self.pin_dir.join(map_name::OLD_CONFIG_GLOBAL_PIN);
        if !old.exists() {
            return Ok(());
        }
        let prog_id = self.program_id()?;
        let behind: Vec<String> = link::attachments(&self.pin_dir)?
            .into_iter()
            .filter(|attachment| attachment.prog_id != prog_id)
            .map(|attachment| attachment.iface)
            .collect();
        if behind.is_empty() {
            remove_pin(&old)
        } else {
            tracing::warn!(
                interfaces = ?behind,
                pin = %old.display(),
                "the previous version's program still runs here; its configuration copy is kept \
                 and written until it is replaced"
            );
            Ok(())
        }
    }

    /// The loaded program's kernel id.
    pub fn program_id(&mut self) -> Result<u32, LoadError> {
        Ok(self.xdp()?.info().map_err(LoadError::Verify)?.id())
    }

    /// The program, to attach.
    pub(crate) fn xdp(&mut self) -> Result<&mut Xdp, LoadError> {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(LoadError::NoProgram)?
            .try_into()
            .map_err(LoadError::Verify)
    }
}

#[cfg(test)]
mod tests {
    use super::highest_cpu;

    #[test]
    fn the_highest_cpu_number_is_read_from_any_kernel_cpu_list() {
        assert_eq!(highest_cpu("0\n"), Some(0));
        assert_eq!(highest_cpu("0-1\n"), Some(1));
        // Gaps: the count (5) is not what sizes the slots, the highest number (11) is.
        assert_eq!(highest_cpu("0-3,11\n"), Some(11));
        assert_eq!(highest_cpu("0,2-5,8-9"), Some(9));
        for bad in ["", "\n", "x", "0-", "3-1", "0,,1", "0-1-2"] {
            assert_eq!(highest_cpu(bad), None, "{bad:?}");
        }
    }
}
