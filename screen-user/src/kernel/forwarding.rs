//! Interfaces that carry other hosts' traffic. The program screens every SYN to a protected
//! port that arrives on an interface it is attached to, whatever the destination address: it
//! does not know which addresses are this host's. On an MX that is exactly the traffic for
//! this host; on an interface that forwards packets (a router, a container host's uplink) or
//! is a bridge port, the SYNs to other hosts behind it are screened too, and a deny made here
//! drops their clients as well. The load sequence warns about each such interface.
//!
//! Why the program does not check the destination: it would need this host's address set in
//! a map, kept in step with addresses that come and go, for every SYN it denies; the
//! deployment it serves is the MX itself, where every frame on the attached interfaces is for
//! it. The warning says where that does not hold.

use std::path::Path;

/// Where the kernel says whether an interface forwards and whether it is a bridge port.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SysRoots<'a> {
    /// `/proc/sys/net`.
    pub(crate) net_conf: &'a Path,
    /// `/sys/class/net`.
    pub(crate) class_net: &'a Path,
}

impl SysRoots<'static> {
    pub(crate) fn host() -> Self {
        Self {
            net_conf: Path::new("/proc/sys/net"),
            class_net: Path::new("/sys/class/net"),
        }
    }
}

/// One warning per attached interface that carries other hosts' traffic, naming why.
pub(crate) fn warnings(roots: SysRoots<'_>, ifaces: &[String]) -> Vec<String> {
    let mut warnings = Vec::new();
    for iface in ifaces {
        let mut why = Vec::new();
        for family in ["ipv4", "ipv6"] {
            let path = roots
                .net_conf
                .join(family)
                .join("conf")
                .join(iface)
                .join("forwarding");
            if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() != "0") {
                why.push(format!("net.{family}.conf.{iface}.forwarding = 1"));
            }
        }
        if roots.class_net.join(iface).join("brport").exists() {
            why.push("it is a bridge port".to_string());
        }
        if !why.is_empty() {
            warnings.push(format!(
                "interface {iface} carries other hosts' traffic ({}): the XDP program screens \
                 SYNs to the protected ports of every destination behind it, not only this \
                 host's; attach it only to interfaces that face this host's own clients",
                why.join(", ")
            ));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_and_bridge_ports_are_named_and_others_pass() {
        let root = std::env::temp_dir().join(format!("smtp-screen-fwd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (net_conf, class_net) = (root.join("net"), root.join("class"));
        let set = |family: &str, iface: &str, value: &str| {
            let dir = net_conf.join(family).join("conf").join(iface);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("forwarding"), value).unwrap();
        };
        set("ipv4", "eth0", "0\n");
        set("ipv6", "eth0", "0\n");
        set("ipv4", "eth1", "1\n");
        set("ipv6", "eth1", "0\n");
        set("ipv6", "eth2", "1\n");
        std::fs::create_dir_all(class_net.join("eth3").join("brport")).unwrap();
        let roots = SysRoots {
            net_conf: &net_conf,
            class_net: &class_net,
        };
        let ifaces: Vec<String> = ["eth0", "eth1", "eth2", "eth3", "gone"]
            .map(String::from)
            .to_vec();
        let found = warnings(roots, &ifaces);
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(found[0].starts_with(
            "interface eth1 carries other hosts' traffic (net.ipv4.conf.eth1.forwarding = 1)"
        ));
        assert!(found[1].contains("(net.ipv6.conf.eth2.forwarding = 1)"));
        assert!(found[2].contains("eth3 carries other hosts' traffic (it is a bridge port)"));
    }
}
