//! postscreen's permanent allow/deny list (`postscreen_access_list`, here `access_list`) and
//! the two address lists that go with it: `mynetworks` (what `permit_mynetworks` permits) and
//! `postscreen_allowlist_interfaces` (here `allowlist_interfaces`: the local addresses where
//! a client may earn the temporary allowlist).
//!
//! Everything is parsed once, at start-up or reload, tables included; evaluation is a pure
//! function of the client address. A value that cannot be parsed is an [`AccessError`] and
//! the daemon refuses to start with it. Rules that are skipped come back as [`LoadWarning`]s
//! to be logged, and evaluation may return [`EvalWarning`]s, worded as Postfix words them
//! (`server_acl.c`), for the integrator to log with `warning:` severity.
//!
//! Tables: `cidr:/path` ([`crate::cidr_table`]) and `static:value` (every address finds
//! `value`, which is how `static:all` in `allowlist_interfaces` matches everything). Other
//! Postfix table types are refused by name. Relative table paths are resolved by the
//! [`TableFiles`] the caller passes ([`DiskFiles`] resolves them against a base directory).
//!
//! Where smtp-screen is stricter than Postfix: an unknown command in `access_list` itself is
//! an error at start-up (Postfix logs it at every connection and treats the client as
//! `dunno`); in an address list, a pattern that is not an address, network or table is an
//! error (Postfix silently never matches it), and a network with host bits set is skipped with
//! a warning at start-up (Postfix logs it and stops searching that list at each lookup).
//! Where it is more lenient: IPv6 networks in address lists may be written without brackets.

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;

use crate::{
    address::canonical,
    cidr_table::{self, CidrError, CidrTable, CidrWarning, Pattern, PatternError, every_address},
};

/// postscreen's default `postscreen_access_list`.
pub(crate) const DEFAULT_ACCESS_LIST: &str = "permit_mynetworks";
/// postscreen's default `postscreen_allowlist_interfaces`: every local address.
pub(crate) const DEFAULT_ALLOWLIST_INTERFACES: &str = "static:all";

/// The longest list value accepted.
pub(crate) const MAX_LIST_BYTES: usize = 1 << 20;
/// The most entries in one list, `/file/name` contents included.
pub(crate) const MAX_LIST_ITEMS: usize = 10_000;
/// The most tables one list may name (each may hold up to [`cidr_table::MAX_TABLE_BYTES`]).
pub(crate) const MAX_LIST_TABLES: usize = 32;

const ACCESS_LIST: &str = "access_list";
const ALLOWLIST_INTERFACES: &str = "allowlist_interfaces";

/// A list that cannot be used; the option's name comes first in every message.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AccessError {
    #[error("{list}: the value is {len} bytes long, more than the {max} allowed")]
    TooLong {
        list: String,
        len: usize,
        max: usize,
    },
    #[error("{list}: more than {max} entries")]
    TooManyItems { list: String, max: usize },
    #[error("{list}: more than {max} tables")]
    TooManyTables { list: String, max: usize },
    #[error(
        "{list}: unknown command \"{command}\" (expected permit_mynetworks, permit, reject, \
         dunno or cidr:/file)"
    )]
    UnknownCommand { list: String, command: String },
    #[error("{list}: unsupported table \"{table}\": smtp-screen reads cidr: and static: tables")]
    UnsupportedTable { list: String, table: String },
    #[error("{list}: table \"{table}\" names no file")]
    NoTableFile { list: String, table: String },
    #[error("{list}: {source}")]
    Table {
        list: String,
        #[source]
        source: CidrError,
    },
    #[error("{list}: {source}")]
    Pattern {
        list: String,
        #[source]
        source: PatternError,
    },
    #[error("{list}: {file}, line {line}: {source}")]
    FilePattern {
        list: String,
        file: String,
        line: usize,
        #[source]
        source: PatternError,
    },
    #[error("{list}: \"{item}\": a /file/name cannot be negated; negate the patterns in it")]
    NegatedFile { list: String, item: String },
    #[error("{list}: {file}, line {line}: \"{item}\": a pattern file cannot name another file")]
    NestedFile {
        list: String,
        file: String,
        line: usize,
        item: String,
    },
}

/// Something skipped while a list was loaded; the list is used without it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LoadWarning {
    /// A rule skipped in a CIDR table.
    Table(CidrWarning),
    /// A network with host bits set in an address list, skipped. `place` is the option,
    /// or the option and the pattern file with its line.
    HostBits { place: String, error: PatternError },
}

impl fmt::Display for LoadWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Table(warning) => warning.fmt(f),
            Self::HostBits { place, error } => write!(f, "{place}: {error}: skipping this pattern"),
        }
    }
}

/// Where table and pattern files come from: the file system in the daemon, text in tests.
pub(crate) trait TableFiles {
    /// The text of the file `path`, as written in the list. Implementations bound the size.
    fn read(&self, path: &str) -> Result<String, CidrError>;
}

/// Files on disk; relative paths are taken relative to `base` (the configuration file's
/// directory, typically).
#[derive(Clone, Debug)]
pub(crate) struct DiskFiles {
    base: PathBuf,
}

impl DiskFiles {
    pub(crate) fn new(base: impl Into<PathBuf>) -> Self {
        Self { base: base.into() }
    }
}

impl TableFiles for DiskFiles {
    fn read(&self, path: &str) -> Result<String, CidrError> {
        cidr_table::read_table_file(&self.base.join(Path::new(path)))
    }
}

/// What the access list decided for a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AccessVerdict {
    /// Log `ALLOWLISTED [addr]:port` and hand the client to the MTA at once, untested.
    Permit,
    /// Log `DENYLISTED [addr]:port` and apply `denylist_action`.
    Reject,
    /// No decision: the client goes through the tests.
    Dunno,
}

/// A problem met while a table result was evaluated, worded as Postfix's `server_acl.c`
/// words it (the daemon logs it as a warning).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EvalWarning<'a> {
    /// A table result names another table; the rest of that result is ignored and the
    /// table counts as `dunno`.
    NestedTable { table: &'a str, item: &'a str },
    /// A table result holds an unknown command; the evaluation stops as `dunno`.
    UnknownCommand { table: &'a str, command: &'a str },
}

impl fmt::Display for EvalWarning<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NestedTable { table, item } => write!(
                f,
                "table {table}: lookup result \"{item}\" is not allowed -- ignoring remainder \
                 of access list"
            ),
            Self::UnknownCommand { table, command } => write!(
                f,
                "{table}: unknown command: {command} -- ignoring the remainder of this access \
                 list"
            ),
        }
    }
}

/// The verdict for one client, and what to log about how it was reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AccessDecision<'a> {
    pub(crate) verdict: AccessVerdict,
    pub(crate) warnings: Vec<EvalWarning<'a>>,
}

/// The commands of an access list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    PermitMynetworks,
    Permit,
    Reject,
    Dunno,
}

impl Command {
    /// Commands are matched without regard to case, as Postfix does.
    fn parse(word: &str) -> Option<Self> {
        [
            ("permit_mynetworks", Self::PermitMynetworks),
            ("permit", Self::Permit),
            ("reject", Self::Reject),
            ("dunno", Self::Dunno),
        ]
        .into_iter()
        .find_map(|(name, command)| word.eq_ignore_ascii_case(name).then_some(command))
    }

    /// The networks this command may permit: a superset, for guards that must never touch a
    /// permitted address.
    fn permitted_networks(self, mynetworks: &AddressList) -> Vec<IpNet> {
        match self {
            Self::PermitMynetworks => mynetworks.networks(),
            Self::Permit => every_address(),
            Self::Reject | Self::Dunno => Vec::new(),
        }
    }

    /// What the command decides for `client`, or `None` to go on with the next one.
    fn fire(self, client: IpAddr, mynetworks: &AddressList) -> Option<Outcome> {
        match self {
            Self::PermitMynetworks => mynetworks
                .contains_canonical(client)
                .then_some(Outcome::Permit),
            Self::Permit => Some(Outcome::Permit),
            Self::Reject => Some(Outcome::Reject),
            Self::Dunno => Some(Outcome::Dunno),
        }
    }
}

/// Postfix's four results: `Error` ends the search and counts as `dunno` for postscreen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Permit,
    Reject,
    Dunno,
    Error,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ResultItem {
    Command(Command),
    Unknown(Box<str>),
}

/// A table result, itself a small access list without tables.
#[derive(Clone, Debug, PartialEq, Eq)]
struct TableResult {
    items: Vec<ResultItem>,
    /// The first entry that named a table; it and what follows are ignored.
    nested: Option<Box<str>>,
}

impl TableResult {
    fn parse(text: &str) -> Self {
        let mut items = Vec::new();
        let mut nested = None;
        for word in words(text) {
            if word.contains(':') {
                nested = Some(word.into());
                break;
            }
            items.push(
                Command::parse(word)
                    .map_or_else(|| ResultItem::Unknown(word.into()), ResultItem::Command),
            );
        }
        Self { items, nested }
    }

    /// Whether this result may permit a client (directly or through `permit_mynetworks`).
    fn may_permit(&self) -> bool {
        self.items.iter().any(|item| {
            matches!(
                item,
                ResultItem::Command(Command::Permit | Command::PermitMynetworks)
            )
        })
    }

    fn evaluate<'a>(
        &'a self,
        table: &'a str,
        client: IpAddr,
        mynetworks: &AddressList,
        warnings: &mut Vec<EvalWarning<'a>>,
    ) -> Outcome {
        if let Some(item) = &self.nested {
            warnings.push(EvalWarning::NestedTable { table, item });
        }
        for item in &self.items {
            match item {
                ResultItem::Command(command) => {
                    if let Some(outcome) = command.fire(client, mynetworks) {
                        return outcome;
                    }
                }
                ResultItem::Unknown(command) => {
                    warnings.push(EvalWarning::UnknownCommand { table, command });
                    return Outcome::Error;
                }
            }
        }
        Outcome::Dunno
    }
}

/// A table named in a list: `V` is what a hit yields.
#[derive(Clone, Debug)]
enum Table<V> {
    Cidr(CidrTable<V>),
    /// `static:value`: every address finds `value`.
    Static(V),
}

impl<V> Table<V> {
    fn get(&self, client: IpAddr) -> Option<&V> {
        match self {
            Self::Cidr(table) => table.lookup(client),
            Self::Static(value) => Some(value),
        }
    }
}

impl<V> Table<V> {
    /// The networks where the table may yield a result `wanted` accepts (a superset).
    fn networks_yielding(&self, wanted: impl Fn(&V) -> bool) -> Vec<IpNet> {
        match self {
            Self::Cidr(table) => table.networks_yielding(wanted),
            Self::Static(value) if wanted(value) => every_address(),
            Self::Static(_) => Vec::new(),
        }
    }
}

/// Opens the table `spec` (`type:name`), turning each result text into a `V`.
fn open_table<V>(
    list: &str,
    spec: &str,
    files: &dyn TableFiles,
    warnings: &mut Vec<LoadWarning>,
    mut result: impl FnMut(&str) -> V,
) -> Result<Table<V>, AccessError> {
    let (kind, name) = spec.split_once(':').unwrap_or((spec, ""));
    match kind {
        "cidr" => {
            if name.is_empty() {
                return Err(AccessError::NoTableFile {
                    list: list.into(),
                    table: spec.into(),
                });
            }
            let loaded = files
                .read(name)
                .and_then(|text| CidrTable::parse(name, &text));
            let (table, table_warnings) = loaded.map_err(|source| AccessError::Table {
                list: list.into(),
                source,
            })?;
            warnings.extend(table_warnings.into_iter().map(LoadWarning::Table));
            Ok(Table::Cidr(table.map_results(|text| result(&text))))
        }
        "static" => {
            // In `static:{text with spaces}` the braces only group the value.
            let value = name
                .strip_prefix('{')
                .and_then(|n| n.strip_suffix('}'))
                .unwrap_or(name);
            Ok(Table::Static(result(value.trim())))
        }
        _ => Err(AccessError::UnsupportedTable {
            list: list.into(),
            table: spec.into(),
        }),
    }
}

#[derive(Clone, Debug)]
enum AccessItem {
    Command(Command),
    Table {
        /// `type:name` as written, for warnings.
        spec: Box<str>,
        table: Table<TableResult>,
    },
}

/// A parsed `access_list` (postscreen_access_list): `permit_mynetworks`, `permit`, `reject`,
/// `dunno` and `cidr:/file` tables, separated by commas and/or white space.
///
/// The first command that decides ends the search. A table is searched with the client
/// address; its result is a list of the same commands (no tables), so a table can permit,
/// reject, or say `dunno`, which goes on with the next entry of the outer list. `dunno` in
/// the outer list ends the search; so does its end (an implicit `dunno`).
#[derive(Clone, Debug)]
pub(crate) struct AccessList {
    items: Vec<AccessItem>,
}

impl Default for AccessList {
    /// postscreen's default, `permit_mynetworks`.
    fn default() -> Self {
        Self {
            items: vec![AccessItem::Command(Command::PermitMynetworks)],
        }
    }
}

impl AccessList {
    /// Parses the value of `access_list`, reading the tables it names through `files`.
    ///
    /// An error (an unknown command, an unsupported table type, a table that cannot be read
    /// or has a bad line) means the daemon must refuse to start with this value. The
    /// warnings name table rules that were skipped and should be logged.
    pub(crate) fn parse(
        spec: &str,
        files: &dyn TableFiles,
    ) -> Result<(Self, Vec<LoadWarning>), AccessError> {
        check_length(ACCESS_LIST, spec)?;
        let mut items = Vec::new();
        let mut warnings = Vec::new();
        let mut tables = 0;
        for word in words(spec) {
            if items.len() == MAX_LIST_ITEMS {
                return Err(AccessError::TooManyItems {
                    list: ACCESS_LIST.into(),
                    max: MAX_LIST_ITEMS,
                });
            }
            if let Some(command) = Command::parse(word) {
                items.push(AccessItem::Command(command));
            } else if word.contains(':') {
                tables += 1;
                if tables > MAX_LIST_TABLES {
                    return Err(AccessError::TooManyTables {
                        list: ACCESS_LIST.into(),
                        max: MAX_LIST_TABLES,
                    });
                }
                let table =
                    open_table(ACCESS_LIST, word, files, &mut warnings, TableResult::parse)?;
                items.push(AccessItem::Table {
                    spec: word.into(),
                    table,
                });
            } else {
                return Err(AccessError::UnknownCommand {
                    list: ACCESS_LIST.into(),
                    command: word.into(),
                });
            }
        }
        Ok((Self { items }, warnings))
    }

    /// Every network the list may permit, `mynetworks` included where `permit_mynetworks`
    /// stands: a superset (a rule behind an earlier `reject` counts all the same), for the
    /// kernel deny guard, which must never cover a permitted address.
    pub(crate) fn permitted_networks(&self, mynetworks: &AddressList) -> Vec<IpNet> {
        let mut nets = Vec::new();
        for item in &self.items {
            match item {
                AccessItem::Command(command) => {
                    nets.extend(command.permitted_networks(mynetworks));
                }
                // A table's `permit_mynetworks` permits within its rule's network.
                AccessItem::Table { table, .. } => {
                    nets.extend(table.networks_yielding(TableResult::may_permit));
                }
            }
        }
        nets
    }

    /// Decides for `client`; `permit_mynetworks` consults `mynetworks`. IPv4-mapped IPv6
    /// addresses are evaluated as IPv4.
    pub(crate) fn evaluate<'a>(
        &'a self,
        client: IpAddr,
        mynetworks: &AddressList,
    ) -> AccessDecision<'a> {
        let client = canonical(client);
        let mut warnings = Vec::new();
        let outcome = self
            .items
            .iter()
            .find_map(|item| match item {
                AccessItem::Command(command) => command.fire(client, mynetworks),
                AccessItem::Table { spec, table } => table
                    .get(client)
                    .map(|result| result.evaluate(spec, client, mynetworks, &mut warnings))
                    .filter(|&outcome| outcome != Outcome::Dunno),
            })
            .unwrap_or(Outcome::Dunno);
        let verdict = match outcome {
            Outcome::Permit => AccessVerdict::Permit,
            Outcome::Reject => AccessVerdict::Reject,
            Outcome::Dunno | Outcome::Error => AccessVerdict::Dunno,
        };
        AccessDecision { verdict, warnings }
    }
}

#[derive(Clone, Debug)]
enum Matcher {
    Net(IpNet),
    /// A hit in the table is a match, whatever its result.
    Table(Table<()>),
}

#[derive(Clone, Debug)]
struct AddressItem {
    negated: bool,
    matcher: Matcher,
}

/// An address list in Postfix syntax (`mynetworks`, `allowlist_interfaces`): addresses and
/// networks (`192.0.2.1`, `192.0.2.0/24`, `[2001:db8::1]`, `[2001:db8::]/32`), `cidr:/file`
/// and `static:value` tables (a table matches an address it has any result for), and
/// `/file/name` files of more such patterns; separated by commas and/or white space. `!`
/// before a pattern or table excludes what it matches. The first entry that matches decides;
/// an address no entry matches is not in the list.
#[derive(Clone, Debug, Default)]
pub(crate) struct AddressList {
    items: Vec<AddressItem>,
}

impl AddressList {
    /// Parses an address list; `list` names the option in messages (`mynetworks`).
    ///
    /// An error (a pattern that is not an address, network or supported table, a file that
    /// cannot be read) means the daemon must refuse to start with this value. Networks with
    /// host bits set are skipped with a warning.
    pub(crate) fn parse(
        list: &str,
        spec: &str,
        files: &dyn TableFiles,
    ) -> Result<(Self, Vec<LoadWarning>), AccessError> {
        check_length(list, spec)?;
        let mut parser = AddressListParser {
            list,
            files,
            items: Vec::new(),
            warnings: Vec::new(),
            tables: 0,
        };
        for word in words(spec) {
            match word.strip_prefix('/') {
                Some(_) => parser.file(word)?,
                None => parser.item(word, None)?,
            }
        }
        Ok((
            Self {
                items: parser.items,
            },
            parser.warnings,
        ))
    }

    /// Every network the list may contain: its networks and its tables' rules, exclusions
    /// ignored (a superset).
    pub(crate) fn networks(&self) -> Vec<IpNet> {
        let mut nets = Vec::new();
        for item in self.items.iter().filter(|item| !item.negated) {
            match &item.matcher {
                Matcher::Net(net) => nets.push(*net),
                Matcher::Table(table) => nets.extend(table.networks_yielding(|_| true)),
            }
        }
        nets
    }

    /// Whether `addr` is in the list. IPv4-mapped IPv6 addresses are looked up as IPv4.
    pub(crate) fn contains(&self, addr: IpAddr) -> bool {
        self.contains_canonical(canonical(addr))
    }

    fn contains_canonical(&self, addr: IpAddr) -> bool {
        self.items
            .iter()
            .find(|item| match &item.matcher {
                Matcher::Net(net) => net.contains(&addr),
                Matcher::Table(table) => table.get(addr).is_some(),
            })
            .is_some_and(|item| !item.negated)
    }
}

struct AddressListParser<'a> {
    list: &'a str,
    files: &'a dyn TableFiles,
    items: Vec<AddressItem>,
    warnings: Vec<LoadWarning>,
    tables: usize,
}

impl AddressListParser<'_> {
    /// Takes the patterns of a `/file/name`, a few per line; `#` starts a comment.
    fn file(&mut self, path: &str) -> Result<(), AccessError> {
        let text = self.files.read(path).map_err(|source| AccessError::Table {
            list: self.list.into(),
            source,
        })?;
        for (index, line) in text.lines().enumerate() {
            let place = (path, index + 1);
            for word in words(line) {
                if word.starts_with('#') {
                    break;
                }
                if word.starts_with('/') {
                    return Err(AccessError::NestedFile {
                        list: self.list.into(),
                        file: path.into(),
                        line: place.1,
                        item: word.into(),
                    });
                }
                self.item(word, Some(place))?;
            }
        }
        Ok(())
    }

    /// Takes one pattern or table; `place` is the pattern file and line it came from.
    fn item(&mut self, word: &str, place: Option<(&str, usize)>) -> Result<(), AccessError> {
        if self.items.len() == MAX_LIST_ITEMS {
            return Err(AccessError::TooManyItems {
                list: self.list.into(),
                max: MAX_LIST_ITEMS,
            });
        }
        let error = match Pattern::parse(word) {
            Ok(pattern) => {
                self.items.push(AddressItem {
                    negated: pattern.negated,
                    matcher: Matcher::Net(pattern.net),
                });
                return Ok(());
            }
            Err(error) => error,
        };
        let positive = word.trim_start_matches('!');
        let negated = (word.len() - positive.len()) % 2 == 1;
        if let PatternError::HostBits { .. } = error {
            let place = match place {
                Some((file, line)) => format!("{}: {file}, line {line}", self.list),
                None => self.list.into(),
            };
            self.warnings.push(LoadWarning::HostBits { place, error });
        } else if positive.starts_with('/') {
            return Err(AccessError::NegatedFile {
                list: self.list.into(),
                item: word.into(),
            });
        } else if !positive.starts_with('[') && positive.contains(':') {
            self.tables += 1;
            if self.tables > MAX_LIST_TABLES {
                return Err(AccessError::TooManyTables {
                    list: self.list.into(),
                    max: MAX_LIST_TABLES,
                });
            }
            let table = open_table(self.list, positive, self.files, &mut self.warnings, |_| ())?;
            self.items.push(AddressItem {
                negated,
                matcher: Matcher::Table(table),
            });
        } else {
            return Err(match place {
                Some((file, line)) => AccessError::FilePattern {
                    list: self.list.into(),
                    file: file.into(),
                    line,
                    source: error,
                },
                None => AccessError::Pattern {
                    list: self.list.into(),
                    source: error,
                },
            });
        }
        Ok(())
    }
}

/// `allowlist_interfaces` (postscreen_allowlist_interfaces): the local addresses where a
/// client that is not allowlisted yet may earn the temporary allowlist. A client that
/// connects to any other address (a backup MX, say) is tested as usual but never passes
/// (postscreen logs `ALLOWLIST VETO [addr]:port`).
#[derive(Clone, Debug)]
pub(crate) struct AllowlistInterfaces {
    addresses: AddressList,
}

impl Default for AllowlistInterfaces {
    /// postscreen's default, `static:all`: every local address.
    fn default() -> Self {
        Self {
            addresses: AddressList {
                items: vec![AddressItem {
                    negated: false,
                    matcher: Matcher::Table(Table::Static(())),
                }],
            },
        }
    }
}

impl AllowlistInterfaces {
    /// Parses the option's value: an address list of local addresses, `!addr` to exclude
    /// one, IPv6 in `[]`; `static:all` for all. An empty value permits no address, as in
    /// Postfix.
    pub(crate) fn parse(
        spec: &str,
        files: &dyn TableFiles,
    ) -> Result<(Self, Vec<LoadWarning>), AccessError> {
        let (addresses, warnings) = AddressList::parse(ALLOWLIST_INTERFACES, spec, files)?;
        Ok((Self { addresses }, warnings))
    }

    /// Whether clients connected to the local address `local` may earn the allowlist.
    pub(crate) fn permits(&self, local: IpAddr) -> bool {
        self.addresses.contains(local)
    }
}

fn check_length(list: &str, spec: &str) -> Result<(), AccessError> {
    if spec.len() > MAX_LIST_BYTES {
        return Err(AccessError::TooLong {
            list: list.into(),
            len: spec.len(),
            max: MAX_LIST_BYTES,
        });
    }
    Ok(())
}

/// Splits a list at commas and white space, keeping `{…}` groups whole as Postfix does.
fn words(text: &str) -> impl Iterator<Item = &str> {
    let bytes = text.as_bytes();
    let is_separator = |b: u8| matches!(b, b',' | b' ' | b'\t' | b'\r' | b'\n');
    let mut pos = 0;
    std::iter::from_fn(move || {
        while pos < bytes.len() && is_separator(bytes[pos]) {
            pos += 1;
        }
        if pos == bytes.len() {
            return None;
        }
        let start = pos;
        let mut depth = 0usize;
        while pos < bytes.len() && (depth > 0 || !is_separator(bytes[pos])) {
            match bytes[pos] {
                b'{' => depth += 1,
                b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
            pos += 1;
        }
        // Separators are ASCII, so both ends lie on character boundaries.
        text.get(start..pos)
    })
}

#[cfg(test)]
mod tests;
