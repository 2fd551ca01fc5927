//! The kernel relay's maps as a running process holds them: found through the process's
//! open descriptors (`/proc/PID/fdinfo`), since they are not pinned and every daemon has its
//! own.

use std::{fs, io};

use aya::maps::{HashMap, Map, MapData, MapInfo, SockHash};
use screen_common::{RelayPeer, map_name};

/// The relay maps of one process.
pub struct RelayMaps {
    socks: SockHash<MapData, u64>,
    peers: HashMap<MapData, u64, RelayPeer>,
}

impl RelayMaps {
    /// Opens the relay maps process `pid` holds; `None` when it holds none (the userspace
    /// relay runs).
    pub fn of_process(pid: u32) -> io::Result<Option<Self>> {
        let mut socks = None;
        let mut peers = None;
        for id in map_ids(pid)? {
            let Ok(info) = MapInfo::from_id(id) else {
                continue;
            };
            let name = info.name_as_str().unwrap_or_default().to_string();
            if name != map_name::RELAY_SOCKS && name != map_name::RELAY_PEERS {
                continue;
            }
            let map = MapData::from_id(id)
                .and_then(Map::from_map_data)
                .map_err(io::Error::other)?;
            if name == map_name::RELAY_SOCKS {
                socks = Some(SockHash::try_from(map).map_err(io::Error::other)?);
            } else {
                peers = Some(HashMap::try_from(map).map_err(io::Error::other)?);
            }
        }
        Ok(match (socks, peers) {
            (Some(socks), Some(peers)) => Some(Self { socks, peers }),
            _ => None,
        })
    }

    /// Sockets in the sockhash and entries in the peer map.
    pub fn entries(&self) -> (usize, usize) {
        (self.socks.keys().count(), self.peers.keys().count())
    }

    /// The largest byte count the program redirected for one socket.
    pub fn max_redirected(&self) -> u64 {
        self.peers
            .iter()
            .filter_map(Result::ok)
            .map(|(_, peer)| peer.redirected)
            .max()
            .unwrap_or(0)
    }

    /// Sockets whose input the program stopped redirecting (past their credit).
    pub fn stopped(&self) -> usize {
        self.peers
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, peer)| peer.stopped != 0)
            .count()
    }
}

/// The ids of the BPF maps among `pid`'s open descriptors.
fn map_ids(pid: u32) -> io::Result<Vec<u32>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(text) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        if let Some(id) = text
            .lines()
            .find_map(|line| line.strip_prefix("map_id:"))
            .and_then(|id| id.trim().parse().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}
