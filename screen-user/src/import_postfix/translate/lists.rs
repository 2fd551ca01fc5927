//! List values (`mynetworks`, the access list, DNSBL sites, reply maps): each entry is
//! expanded on its own, so that one entry with an unknown reference costs only that entry,
//! within one budget for the whole list; address lists keep the entries smtp-screen reads.

use super::{Effective, Translation, table_spec};
use crate::{
    access_list,
    cidr_table::{Pattern, PatternError},
    import_postfix::{
        expand::{ExpandProblem, Expanded, Expansion},
        lines::split_words,
        shorten,
    },
};

impl Translation {
    /// An address list (mynetworks, allowlist_interfaces): each entry expanded and checked;
    /// entries smtp-screen would refuse are left out and reported.
    pub(super) fn address_list(&mut self, value: &Effective) -> Option<String> {
        let entries = self.list_entries(value)?;
        let mut kept = Vec::new();
        for entry in entries {
            let err = match Pattern::parse(&entry) {
                Ok(_) | Err(PatternError::HostBits { .. }) => {
                    kept.push(entry);
                    continue;
                }
                Err(err) => err,
            };
            let positive = entry.trim_start_matches('!');
            if positive.starts_with('/') && !entry.starts_with('!') {
                kept.push(entry);
            } else if let Some((kind, _)) = table_spec(positive) {
                if kind == "cidr" || kind == "static" {
                    kept.push(entry);
                } else {
                    self.skip(
                        value.parameter,
                        format!("{}: {}", value.parameter, shorten(&entry)),
                        format!(
                            "smtp-screen reads cidr: and static: tables only; turn this {kind}: \
                             table into a cidr: table"
                        ),
                    );
                }
            } else {
                self.skip(
                    value.parameter,
                    format!("{}: {}", value.parameter, shorten(&entry)),
                    format!("not an address, network or table: {err}"),
                );
            }
        }
        Some(kept.join(" "))
    }

    /// The entries of a list value, each expanded on its own so that one entry with an
    /// unknown reference costs only that entry.
    /// The whole list shares one budget of expanded bytes and references.
    pub(super) fn list_entries(&mut self, value: &Effective) -> Option<Vec<String>> {
        let mut entries = Vec::new();
        let mut budget = Expanded::default();
        for word in split_words(&value.raw, true) {
            let start = budget.text.len();
            let result = self
                .context()
                .expand_into(word, Expansion::default(), 0, &mut budget);
            match result {
                Ok(()) => entries.extend(
                    split_words(&budget.text[start..], true)
                        .into_iter()
                        .map(str::to_string),
                ),
                Err(problem @ (ExpandProblem::TooLong | ExpandProblem::TooManySteps)) => {
                    self.skip(value.parameter, value.subject(), problem.to_string());
                    return None;
                }
                Err(problem) => {
                    budget.text.truncate(start);
                    self.skip(
                        value.parameter,
                        format!("{}: {}", value.parameter, shorten(word)),
                        problem.to_string(),
                    );
                }
            }
            if entries.len() > access_list::MAX_LIST_ITEMS {
                self.skip(
                    value.parameter,
                    value.subject(),
                    format!("more than {} entries", access_list::MAX_LIST_ITEMS),
                );
                return None;
            }
        }
        Some(entries)
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        config::Config,
        import_postfix::fixtures::{Files, caveat, import_text, import_with, skipped},
    };

    #[test]
    fn list_entries_smtp_screen_cannot_use_are_left_out() {
        let files = Files::with(&[("/etc/postfix/bad.cidr", "not-an-address reject\n")]);
        let (import, c) = import_with(
            "mynetworks = 127.0.0.0/8 [::1]/128, hash:/etc/postfix/network_table \
             192.0.2.7/24 /etc/postfix/mynetworks.txt !192.0.2.8 $extra host.example\n\
             extra = 198.51.100.0/24 203.0.113.0/24\n\
             postscreen_access_list = permit_mynetworks, hash:/etc/postfix/ps_access, \
             cidr:/etc/postfix/bad.cidr, cidr:/etc/postfix/missing.cidr, \
             check_client_access cidr:/etc/postfix/after.cidr reject\n\
             postscreen_dnsbl_sites = zen.example*3 bad..example zen.example=127.0.0.999\n\
             postscreen_forbidden_commands = GET POST hash:/etc/postfix/cmds !CONNECT\n",
            None,
            &files,
        );
        assert_eq!(
            c.mynetworks,
            "127.0.0.0/8 [::1]/128 192.0.2.7/24 /etc/postfix/mynetworks.txt !192.0.2.8 \
             198.51.100.0/24 203.0.113.0/24"
        );
        let found = skipped(&import, "mynetworks");
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0]
                .reason
                .contains("turn this hash: table into a cidr: table")
        );
        assert!(found[1].subject.contains("host.example"));
        assert_eq!(
            c.access_list,
            "permit_mynetworks, cidr:/etc/postfix/bad.cidr, cidr:/etc/postfix/missing.cidr"
        );
        let found = skipped(&import, "postscreen_access_list");
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].subject.contains("hash:/etc/postfix/ps_access"));
        assert!(found[1].subject.contains("check_client_access"));
        assert!(found[1].reason.contains("ignores the rest of the list"));
        assert!(
            found[1]
                .reason
                .contains("cidr:/etc/postfix/after.cidr reject")
        );
        let checked = caveat(&import, "postscreen_access_list");
        assert_eq!(checked.len(), 2, "{checked:?}");
        assert!(
            checked[0].reason.contains("will refuse it"),
            "{}",
            checked[0]
        );
        assert!(
            checked[1].reason.contains("could not be checked"),
            "{}",
            checked[1]
        );
        assert_eq!(c.dnsbl_sites, "zen.example*3");
        assert_eq!(skipped(&import, "postscreen_dnsbl_sites").len(), 2);
        assert_eq!(c.forbidden_commands, ["GET", "POST"]);
        let found = skipped(&import, "postscreen_forbidden_commands");
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[1].reason.contains("negated"));
    }

    #[test]
    fn a_list_shares_one_expansion_budget() {
        // Each entry alone is within the bounds; together they are not.
        let mut input = format!("a0 = {}\n", "x".repeat(4_000));
        for i in 1..=5 {
            input.push_str(&format!("a{i} = $a{} $a{}\n", i - 1, i - 1));
        }
        input.push_str(&format!("mynetworks = {}\n", "$a5 ".repeat(10)));
        let (import, c) = import_text(&input);
        assert_eq!(c.mynetworks, Config::default().mynetworks);
        let found = skipped(&import, "mynetworks");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].reason.contains("bytes"), "{}", found[0]);
        let mut input = String::from("b0 =\n");
        for i in 1..=3 {
            input.push_str(&format!("b{i} = {}\n", format!("$b{} ", i - 1).repeat(30)));
        }
        input.push_str(&format!("postscreen_dnsbl_sites = {}\n", "$b3 ".repeat(10)));
        let (import, _) = import_text(&input);
        let found = skipped(&import, "postscreen_dnsbl_sites");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].reason.contains("references"), "{}", found[0]);
    }

    #[test]
    fn an_unknown_reference_costs_one_list_entry() {
        let (import, c) =
            import_text("postscreen_access_list = permit_mynetworks, cidr:$LAB/etc/psacl.cidr\n");
        assert_eq!(c.access_list, "permit_mynetworks");
        let found = skipped(&import, "postscreen_access_list");
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].to_string(),
            "postscreen_access_list: cidr:$LAB/etc/psacl.cidr: it refers to $LAB, which the \
             input does not set and whose value smtp-screen cannot know"
        );
        // $config_directory has Postfix's default.
        let (_, c) = import_text(
            "postscreen_access_list = permit_mynetworks cidr:$config_directory/ps.cidr\n",
        );
        assert_eq!(
            c.access_list,
            "permit_mynetworks, cidr:/etc/postfix/ps.cidr"
        );
    }
}
