//! Loading the program with pinned maps, attaching it through pinned XDP links, and removing
//! it all again.
//!
//! Maps are pinned as `<pin_dir>/<map name>` (the program's global data, its configuration and
//! its counters, in the BTF maps `scr_config` and `scr_stats`) and each attachment as
//! `<pin_dir>/link_<iface>`.
//! Loading again reuses the pinned maps when their layout matches and refuses otherwise, but
//! for counters of an earlier layout, which are replaced, and the previous layout's copy of the
//! configuration (`scr_config_live`), whose record the load takes and which goes once no
//! interface runs that layout's program. An interface that already has a pinned link gets the
//! new program swapped into that link, so an upgrade or restart leaves no moment without the
//! filter.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, Map, MapData, MapError, MapInfo, MapType},
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        xdp::XdpLink,
    },
};
use screen_common::{
    DYN_V4_MAX_ENTRIES, DYN_V6_MAX_ENTRIES, DenyEntry, DynKeyV4, DynKeyV6, PROGRAM_NAME,
    PrefixEntry, STATIC_MAX_ENTRIES, STATS_MAX_CPUS, ScreenConfig, StatsRecord, map_name, v4_table,
};

use super::{
    OBJECT,
    bpffs::{self, BpffsError},
    netlink::{self, NetlinkError, XdpAttachMode},
    stats::StatsMap,
};

/// How to attach: chosen by the operator, never guessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// In the driver, before an skb exists: the fast path.
    Native,
    /// In the stack after skb allocation: works on every interface, costs more.
    Generic,
}

impl AttachMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
        }
    }

    const fn xdp_mode(self) -> XdpMode {
        match self {
            Self::Native => XdpMode::Driver,
            Self::Generic => XdpMode::Skb,
        }
    }

    const fn netlink_mode(self) -> XdpAttachMode {
        match self {
            Self::Native => XdpAttachMode::Native,
            Self::Generic => XdpAttachMode::Generic,
        }
    }
}

/// An error loading, attaching or removing the program.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
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
    #[error(
        "pinned map {path} does not match this version ({what}); \
         run `smtp-screen unload` to remove the old maps (their entries are lost)"
    )]
    IncompatiblePin { path: PathBuf, what: String },
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
    #[error(
        "{iface} already has XDP program id {prog_id} attached in {mode} mode by another owner \
         (not this pin directory); refusing to replace it (--force replaces a program attached \
         through netlink)"
    )]
    ForeignProgram {
        iface: String,
        prog_id: u32,
        mode: &'static str,
    },
    #[error(
        "{iface}: XDP program id {prog_id} is held by a BPF link (another smtp-screen pin \
         directory, libxdp or bpftool); the kernel does not detach links through netlink, so \
         remove it with its owner (e.g. `smtp-screen --pin-dir DIR unload`)"
    )]
    HeldByLink { iface: String, prog_id: u32 },
    #[error(
        "{iface} is attached in {current} mode; `smtp-screen unload` first (or --force) to \
         attach in {wanted} mode"
    )]
    ModeMismatch {
        iface: String,
        current: &'static str,
        wanted: &'static str,
    },
    #[error("attaching to {iface} in {mode} mode: {source}")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error(
        "the kernel attached {iface} without a BPF link (older than 5.9?), which cannot be pinned"
    )]
    NoLink { iface: String },
    #[error("pinned link {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("pinning link {path}: {source}")]
    PinLink {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("cannot read pin directory {path}: {source}")]
    ReadPinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("removing {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One interface the program is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub iface: String,
    /// `None` when the interface is gone.
    pub ifindex: Option<u32>,
    /// How the kernel reports the attachment now (`None`: nothing attached).
    pub mode: Option<XdpAttachMode>,
    pub link_id: u32,
    pub prog_id: u32,
}

const LINK_PREFIX: &str = "link_";

/// The expected layout of every pinned map: type, key size, value size, capacity.
fn expected_layout(name: &str) -> (MapType, usize, usize, u32) {
    use std::mem::size_of;
    let lpm4 = 4 + 4;
    let lpm6 = 4 + 16;
    let entry = size_of::<PrefixEntry>();
    match name {
        n if map_name::ALLOW_V4.contains(&n) || map_name::DENY_V4.contains(&n) => {
            (MapType::LpmTrie, lpm4, entry, STATIC_MAX_ENTRIES)
        }
        n if map_name::ALLOW_V6.contains(&n) || map_name::DENY_V6.contains(&n) => {
            (MapType::LpmTrie, lpm6, entry, STATIC_MAX_ENTRIES)
        }
        map_name::DYN_DENY_V4 => (
            MapType::LruHash,
            size_of::<DynKeyV4>(),
            size_of::<DenyEntry>(),
            DYN_V4_MAX_ENTRIES,
        ),
        map_name::DYN_DENY_V6 => (
            MapType::LruHash,
            size_of::<DynKeyV6>(),
            size_of::<DenyEntry>(),
            DYN_V6_MAX_ENTRIES,
        ),
        map_name::CONFIG | map_name::OLD_CONFIG_GLOBAL_PIN => {
            (MapType::Array, 4, size_of::<ScreenConfig>(), 1)
        }
        map_name::STATS => (MapType::Array, 4, size_of::<StatsRecord>(), 1),
        n if map_name::TABLE_V4.contains(&n) => (MapType::Array, 4, 8, v4_table::WORDS),
        other => unreachable!("no layout for map {other}"),
    }
}

/// Flags a pinned map must have been created with.
fn required_flags(name: &str) -> u32 {
    if map_name::TABLE_V4.contains(&name) {
        v4_table::MAP_FLAGS
    } else {
        0
    }
}

/// Compares a map's kernel description with the layout this build expects.
pub fn check_layout(name: &str, info: &MapInfo) -> Result<(), String> {
    let (map_type, key, value, max) = expected_layout(name);
    let actual_type = info.map_type().map_err(|e| e.to_string())?;
    let mut wrong = Vec::new();
    if actual_type != map_type {
        wrong.push(format!("type {actual_type:?}, expected {map_type:?}"));
    }
    if info.key_size() as usize != key {
        wrong.push(format!("key size {}, expected {key}", info.key_size()));
    }
    if info.value_size() as usize != value {
        wrong.push(format!(
            "value size {}, expected {value}",
            info.value_size()
        ));
    }
    if info.max_entries() != max {
        wrong.push(format!(
            "max entries {}, expected {max}",
            info.max_entries()
        ));
    }
    // The daemon writes the IPv4 tables through a shared mapping.
    let flags = required_flags(name);
    if info.map_flags() & flags != flags {
        wrong.push(format!(
            "flags {:#x}, expected {flags:#x} set",
            info.map_flags()
        ));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join(", "))
    }
}

/// The pinned configuration record, if a program was loaded under `pin_dir` before:
/// `scr_config_live` if the previous layout left it (its program read that copy), else
/// `scr_config`.
fn pinned_config(pin_dir: &Path) -> Result<Option<ScreenConfig>, KernelError> {
    let Some(path) = [map_name::OLD_CONFIG_GLOBAL_PIN, map_name::CONFIG]
        .into_iter()
        .map(|name| pin_dir.join(name))
        .find(|path| path.exists())
    else {
        return Ok(None);
    };
    let inspect = |source| KernelError::InspectPin {
        path: path.clone(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(inspect)?;
    let config: Array<MapData, ScreenConfig> =
        Array::try_from(Map::Array(data)).map_err(inspect)?;
    config.get(&0, 0).map(Some).map_err(inspect)
}

/// The pinned counters.
fn pinned_stats(pin_dir: &Path) -> Result<Box<StatsRecord>, KernelError> {
    let path = pin_dir.join(map_name::STATS);
    let data = MapData::from_pin(&path).map_err(|source| KernelError::InspectPin {
        path: path.clone(),
        source,
    })?;
    StatsMap::new(data)
        .and_then(|stats| stats.read())
        .map_err(|source| KernelError::ReadStats { path, source })
}

/// How many CPU numbers the kernel may give out: the highest possible CPU's number plus one
/// (the possible CPUs may have gaps, and the program indexes its counters by number).
fn cpu_numbers() -> Result<usize, KernelError> {
    const POSSIBLE: &str = "/sys/devices/system/cpu/possible";
    let text = std::fs::read_to_string(POSSIBLE).map_err(|source| KernelError::Cpus {
        path: POSSIBLE,
        source,
    })?;
    highest_cpu(&text)
        .map(|highest| highest + 1)
        .ok_or_else(|| KernelError::Cpus {
            path: POSSIBLE,
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
fn pin_global_data_maps(pin_dir: &Path) -> Result<(), KernelError> {
    let mut loader = EbpfLoader::new();
    super::xdp_maps_at_their_smallest(&mut loader);
    for name in [map_name::STATS, map_name::CONFIG] {
        loader.map_pin_path(name, pin_dir.join(name));
    }
    loader
        .load(OBJECT)
        .map_err(|source| KernelError::PinGlobalData {
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
    pub fn load(pin_dir: &Path) -> Result<Self, KernelError> {
        bpffs::prepare_pin_dir(pin_dir)?;
        let cpus = cpu_numbers()?;
        if cpus > STATS_MAX_CPUS {
            return Err(KernelError::TooManyCpus { cpus });
        }
        let mut old_stats = None;
        for name in map_name::ALL
            .into_iter()
            .chain([map_name::OLD_CONFIG_GLOBAL_PIN])
        {
            let path = pin_dir.join(name);
            if !path.exists() {
                continue;
            }
            let info = MapInfo::from_pin(&path).map_err(|source| KernelError::InspectPin {
                path: path.clone(),
                source,
            })?;
            match check_layout(name, &info) {
                Ok(()) => {}
                // Counters hold no state: an older layout's are replaced, not refused (once
                // every other pin has passed).
                Err(what) if name == map_name::STATS => old_stats = Some((path, what)),
                Err(what) => return Err(KernelError::IncompatiblePin { path, what }),
            }
        }
        if let Some((path, what)) = old_stats {
            tracing::warn!(
                pin = %path.display(),
                what,
                "counters of an older layout replaced; they restart at zero"
            );
            remove_pin(&path)?;
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
        let mut ebpf = loader.load(OBJECT).map_err(KernelError::Load)?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(KernelError::NoProgram)?
            .try_into()
            .map_err(KernelError::Verify)?;
        program.load().map_err(|e| {
            if format!("{e:?}").contains("misaligned") {
                KernelError::Misaligned(e)
            } else {
                KernelError::Verify(e)
            }
        })?;
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
        })
    }

    /// Removes the previous layout's copy of the configuration (`scr_config_live`) once no
    /// interface runs that layout's program any more: every pinned link runs this program.
    /// Until then the maps keep writing the copy too ([`Maps`](super::Maps)), so a program
    /// still attached elsewhere goes on following list changes. Call after attaching.
    pub fn retire_old_layout(&mut self) -> Result<(), KernelError> {
        let old = self.pin_dir.join(map_name::OLD_CONFIG_GLOBAL_PIN);
        if !old.exists() {
            return Ok(());
        }
        let prog_id = self.program_id()?;
        let behind: Vec<String> = attachments(&self.pin_dir)?
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
    pub fn program_id(&mut self) -> Result<u32, KernelError> {
        Ok(self.program()?.info().map_err(KernelError::Verify)?.id())
    }

    fn program(&mut self) -> Result<&mut Xdp, KernelError> {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(KernelError::NoProgram)?
            .try_into()
            .map_err(KernelError::Verify)
    }

    /// Attaches to `iface` in `mode` and pins the link. An interface this pin directory already
    /// filters gets the new program swapped into its link atomically. Another program on the
    /// interface is replaced only with `force`.
    pub fn attach(
        &mut self,
        iface: &str,
        mode: AttachMode,
        force: bool,
    ) -> Result<(), KernelError> {
        let index = netlink::if_index(iface)?;
        let link_path = link_pin_path(&self.pin_dir, iface);
        let current = netlink::xdp_attachment(index)?;

        if link_path.exists() {
            let pinned = PinnedLink::from_pin(&link_path).map_err(|source| KernelError::Link {
                path: link_path.clone(),
                source,
            })?;
            let ours = FdLink::from(pinned);
            let current_mode = current.map(|c| c.mode);
            match current_mode {
                Some(m) if m == mode.netlink_mode() => {
                    let link = XdpLink::try_from(ours).map_err(|source| KernelError::Link {
                        path: link_path.clone(),
                        source,
                    })?;
                    let program = self.program()?;
                    let id = program
                        .attach_to_link(link)
                        .map_err(|source| attach_error(iface, mode, source))?;
                    // The pin keeps the link; this process needs no descriptor for it.
                    drop(program.take_link(id));
                    tracing::info!(
                        iface,
                        mode = mode.as_str(),
                        "XDP program replaced in pinned link"
                    );
                    return Ok(());
                }
                Some(m) if !force => {
                    return Err(KernelError::ModeMismatch {
                        iface: iface.to_string(),
                        current: m.as_str(),
                        wanted: mode.as_str(),
                    });
                }
                _ => {
                    // A stale pin (interface re-created) or a forced mode change.
                    drop(ours);
                    remove_pin(&link_path)?;
                }
            }
        }

        if let Some(existing) = netlink::xdp_attachment(index)? {
            if !force {
                return Err(KernelError::ForeignProgram {
                    iface: iface.to_string(),
                    prog_id: existing.prog_id,
                    mode: existing.mode.as_str(),
                });
            }
            tracing::warn!(
                iface,
                prog_id = existing.prog_id,
                mode = existing.mode.as_str(),
                "--force: detaching the XDP program already on the interface"
            );
            match netlink::detach_xdp(index, existing.mode) {
                Err(NetlinkError::Io { source, .. })
                    if source.raw_os_error() == Some(libc::EBUSY) =>
                {
                    return Err(KernelError::HeldByLink {
                        iface: iface.to_string(),
                        prog_id: existing.prog_id,
                    });
                }
                result => result?,
            }
        }

        let program = self.program()?;
        let id = program
            .attach_to_if_index(index, mode.xdp_mode())
            .map_err(|source| attach_error(iface, mode, source))?;
        let link = program
            .take_link(id)
            .map_err(|source| attach_error(iface, mode, source))?;
        let fd_link = FdLink::try_from(link).map_err(|_| KernelError::NoLink {
            iface: iface.to_string(),
        })?;
        fd_link
            .pin(&link_path)
            .map_err(|source| KernelError::PinLink {
                path: link_path.clone(),
                source,
            })?;
        tracing::info!(iface, mode = mode.as_str(), "XDP program attached");
        Ok(())
    }
}

fn attach_error(iface: &str, mode: AttachMode, source: ProgramError) -> KernelError {
    KernelError::Attach {
        iface: iface.to_string(),
        mode: mode.as_str(),
        source,
    }
}

fn remove_pin(path: &Path) -> Result<(), KernelError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(KernelError::Remove {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Where the link for `iface` is pinned.
pub fn link_pin_path(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("{LINK_PREFIX}{iface}"))
}

/// The entries of the pin directory; none when it does not exist.
fn pin_entries(pin_dir: &Path) -> Result<Vec<std::fs::DirEntry>, KernelError> {
    match std::fs::read_dir(pin_dir) {
        Ok(entries) => Ok(entries.flatten().collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(KernelError::ReadPinDir {
            path: pin_dir.to_path_buf(),
            source,
        }),
    }
}

/// The interfaces with a pinned link, and what the kernel says about each.
pub fn attachments(pin_dir: &Path) -> Result<Vec<Attachment>, KernelError> {
    let mut out = Vec::new();
    for entry in pin_entries(pin_dir)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(iface) = name.strip_prefix(LINK_PREFIX) else {
            continue;
        };
        let path = entry.path();
        let link = PinnedLink::from_pin(&path).map_err(|source| KernelError::Link {
            path: path.clone(),
            source,
        })?;
        let info = FdLink::from(link)
            .info()
            .map_err(|source| KernelError::Link { path, source })?;
        let ifindex = netlink::if_index(iface).ok();
        let mode = match ifindex {
            Some(index) => netlink::xdp_attachment(index)?.map(|a| a.mode),
            None => None,
        };
        out.push(Attachment {
            iface: iface.to_string(),
            ifindex,
            mode,
            link_id: info.id(),
            prog_id: info.program_id(),
        });
    }
    out.sort_by(|a, b| a.iface.cmp(&b.iface));
    Ok(out)
}

/// Detaches every pinned link and removes every pin and the pin directory. Returns the
/// interfaces that were detached.
pub fn unload(pin_dir: &Path) -> Result<Vec<String>, KernelError> {
    let mut detached = Vec::new();
    for entry in pin_entries(pin_dir)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if let Some(iface) = name.strip_prefix(LINK_PREFIX) {
            // Dropping the last descriptor of an unpinned link detaches the program.
            match PinnedLink::from_pin(&path) {
                Ok(link) => {
                    drop(link.unpin().map_err(|source| KernelError::Remove {
                        path: path.clone(),
                        source,
                    })?);
                }
                Err(_) => remove_pin(&path)?,
            }
            detached.push(iface.to_string());
        } else {
            remove_pin(&path)?;
        }
    }
    match std::fs::remove_dir(pin_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(KernelError::Remove {
                path: pin_dir.to_path_buf(),
                source,
            });
        }
    }
    detached.sort();
    Ok(detached)
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
