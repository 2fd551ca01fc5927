use std::time::Duration;

use clap::Parser as _;

use super::*;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("smtp-screen").chain(args.iter().copied()))
}

#[test]
fn load_takes_interfaces_mode_and_settings() {
    let cli = parse(&[
        "load",
        "--iface",
        "eth0",
        "--iface",
        "eth1",
        "--mode",
        "generic",
        "--port",
        "25",
        "--port",
        "587",
        "--action",
        "rst",
        "--v6-prefix",
        "56",
        "--force",
    ])
    .unwrap();
    let Command::Load(args) = cli.command else {
        panic!("not load");
    };
    assert_eq!(args.ifaces, ["eth0", "eth1"]);
    assert_eq!(args.mode, AttachMode::Generic);
    assert_eq!(args.ports, [25, 587]);
    assert_eq!(args.action, KernelAction::Rst);
    assert_eq!(args.v6_prefix, 56);
    assert!(args.force);
}

#[test]
fn load_defaults_are_native_port_25_drop() {
    let cli = parse(&["load", "--iface", "eth0"]).unwrap();
    let Command::Load(args) = cli.command else {
        panic!("not load");
    };
    assert_eq!(args.mode, AttachMode::Native);
    assert_eq!(args.ports, [25]);
    assert_eq!(args.action, KernelAction::Drop);
    assert_eq!(args.v6_prefix, 64);
    assert!(!args.force);
    assert_eq!(cli.pin_dir, PathBuf::from(paths::DEFAULT_PIN_DIR));
}

#[test]
fn load_rejects_bad_arguments() {
    assert!(parse(&["load"]).is_err(), "an interface is required");
    assert!(parse(&["load", "--iface", "eth0", "--mode", "auto"]).is_err());
    assert!(parse(&["load", "--iface", "eth0", "--port", "0"]).is_err());
    assert!(parse(&["load", "--iface", "eth0", "--port", "65536"]).is_err());
    assert!(parse(&["load", "--iface", "eth0", "--action", "reject"]).is_err());
}

#[test]
fn deny_add_parses_prefixes_and_ttls() {
    let cli = parse(&["deny", "add", "192.0.2.0/24"]).unwrap();
    let Command::Deny(DenyCommand::Add { prefix, ttl }) = cli.command else {
        panic!("not deny add");
    };
    assert_eq!(prefix, "192.0.2.0/24".parse::<IpNet>().unwrap());
    assert_eq!(ttl, None);

    let cli = parse(&["deny", "add", "2001:db8::1", "--ttl", "10m"]).unwrap();
    let Command::Deny(DenyCommand::Add { prefix, ttl }) = cli.command else {
        panic!("not deny add");
    };
    assert_eq!(prefix, "2001:db8::1/128".parse::<IpNet>().unwrap());
    assert_eq!(ttl, Some(Duration::from_secs(600)));
}

#[test]
fn deny_add_rejects_invalid_input_with_the_reason() {
    let err = parse(&["deny", "add", "192.0.2.1/24"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("host bits set"), "{err}");
    assert!(err.contains("192.0.2.0/24"), "{err}");
    let err = parse(&["deny", "add", "300.1.1.1"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid address or prefix"), "{err}");
    let err = parse(&["deny", "add", "10.0.0.1", "--ttl", "soon"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid time value"), "{err}");
    assert!(parse(&["deny", "frobnicate"]).is_err());
}

#[test]
fn list_verbs_parse() {
    assert!(matches!(
        parse(&["deny", "list"]).unwrap().command,
        Command::Deny(DenyCommand::List)
    ));
    assert!(matches!(
        parse(&["allow", "list"]).unwrap().command,
        Command::Allow(AllowCommand::List)
    ));
    assert!(matches!(
        parse(&["allow", "add", "10.0.0.0/8"]).unwrap().command,
        Command::Allow(AllowCommand::Add { .. })
    ));
    assert!(matches!(
        parse(&["deny", "del", "10.0.0.1"]).unwrap().command,
        Command::Deny(DenyCommand::Del { .. })
    ));
    let cli = parse(&["deny", "load", "/etc/drop.txt"]).unwrap();
    let Command::Deny(DenyCommand::Load { file }) = cli.command else {
        panic!("not deny load");
    };
    assert_eq!(file, PathBuf::from("/etc/drop.txt"));
    assert!(
        parse(&["allow", "add", "10.0.0.1", "--ttl", "1h"]).is_err(),
        "allow entries do not expire"
    );
}

#[test]
fn pin_dir_is_global() {
    let cli = parse(&["status", "--pin-dir", "/sys/fs/bpf/other"]).unwrap();
    assert_eq!(cli.pin_dir, PathBuf::from("/sys/fs/bpf/other"));
    let cli = parse(&["--pin-dir", "/sys/fs/bpf/x", "unload"]).unwrap();
    assert_eq!(cli.pin_dir, PathBuf::from("/sys/fs/bpf/x"));
}
