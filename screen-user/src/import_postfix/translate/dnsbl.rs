//! postscreen's DNSBL and DNSWL settings: the sites with their filters and weights, the
//! thresholds, the action, the timeout and TTLs, and the reply map read from a `texthash:`
//! table.

use std::{collections::BTreeMap, time::Duration};

use super::{Kind, Section, Translation, parameter_for, table_spec};
use crate::{
    access_list::TableFiles,
    config::Config,
    dnsbl, duration,
    import_postfix::{render::toml_string, shorten, texthash::parse_texthash},
};

impl Translation {
    pub(super) fn dnsbl_settings(&mut self, files: &dyn TableFiles) {
        self.dnsbl_sites();
        for (key, kind) in [
            ("dnsbl_threshold", Kind::Score),
            ("dnsbl_action", Kind::Action),
            ("dnsbl_allowlist_threshold", Kind::Score),
            ("dnsbl_timeout", Kind::Time),
            ("dnsbl_min_ttl", Kind::Time),
            ("dnsbl_max_ttl", Kind::Time),
        ] {
            self.plain(Section::Dnsbl, key, kind);
        }
        self.check_ttl_order();
        self.reply_map(files);
    }

    fn dnsbl_sites(&mut self) {
        let value = self.effective(parameter_for("dnsbl_sites"));
        if !value.explicit {
            return;
        }
        let Some(entries) = self.list_entries(&value) else {
            return;
        };
        let mut kept: Vec<String> = Vec::new();
        for entry in entries {
            let subject = format!("{}: {}", value.parameter, shorten(&entry));
            if kept.len() == dnsbl::MAX_SITES {
                self.skip(
                    value.parameter,
                    subject,
                    format!("smtp-screen takes at most {} entries", dnsbl::MAX_SITES),
                );
                continue;
            }
            match dnsbl::DnsblSite::parse(&entry) {
                Ok(_) => kept.push(entry),
                Err(err) => self.skip(value.parameter, subject, err.to_string()),
            }
        }
        self.set(
            Section::Dnsbl,
            "dnsbl_sites",
            toml_string(&kept.join(", ")),
            vec![value.origin()],
        );
    }

    /// smtp-screen refuses dnsbl_min_ttl > dnsbl_max_ttl; so does postscreen's clamp make
    /// no sense then.
    ///
    /// dnsbl_min_ttl goes first; its default may still be longer than the dnsbl_max_ttl
    /// given, and then that goes too (the defaults are in order).
    fn check_ttl_order(&mut self) {
        let defaults = Config::default();
        let time = |this: &Self, key: &str, default: Duration| {
            this.get_entry(key)
                .and_then(|e| duration::parse(e.value.trim_matches('"')).ok())
                .unwrap_or(default)
        };
        for _ in 0..2 {
            let min = time(self, "dnsbl_min_ttl", defaults.dnsbl_min_ttl);
            let max = time(self, "dnsbl_max_ttl", defaults.dnsbl_max_ttl);
            if min <= max {
                return;
            }
            let key = if self.get_entry("dnsbl_min_ttl").is_some() {
                "dnsbl_min_ttl"
            } else {
                "dnsbl_max_ttl"
            };
            let entry = self
                .get_entry(key)
                .map(|e| e.value.clone())
                .unwrap_or_default();
            self.entries.retain(|e| e.key != key);
            let parameter = parameter_for(key).name;
            self.skip(
                parameter,
                format!("{parameter} = {}", entry.trim_matches('"')),
                format!(
                    "{} ({}) is longer than {} ({}), which smtp-screen refuses",
                    parameter_for("dnsbl_min_ttl").name,
                    duration::Display(min),
                    parameter_for("dnsbl_max_ttl").name,
                    duration::Display(max)
                ),
            );
        }
    }

    fn reply_map(&mut self, files: &dyn TableFiles) {
        let value = self.effective(parameter_for("dnsbl_reply_map"));
        if !value.explicit {
            return;
        }
        let Some(entries) = self.list_entries(&value) else {
            return;
        };
        let mut map: BTreeMap<String, (String, String)> = BTreeMap::new();
        for spec in entries {
            let subject = format!("{}: {}", value.parameter, shorten(&spec));
            let Some((kind, path)) = table_spec(&spec) else {
                self.skip(value.parameter, subject, "not a type:name table");
                continue;
            };
            if kind != "texthash" {
                let mut reason = format!(
                    "{kind}: tables are not read by the importer; write dnsbl_reply_map as a TOML \
                     table (list domain = name shown)"
                );
                if matches!(kind, "hash" | "btree" | "lmdb" | "cdb" | "dbm" | "sdbm") {
                    reason.push_str(&format!(
                        ", or import its postmap source file as texthash:{path}"
                    ));
                }
                self.skip(value.parameter, subject, reason);
                continue;
            }
            let table = files
                .read(path)
                .map_err(|e| format!("cannot read it here: {e}"))
                .and_then(|text| parse_texthash(path, &text).map_err(|e| e.to_string()));
            let table = match table {
                Ok(table) => table,
                Err(reason) => {
                    self.skip(value.parameter, subject, reason);
                    continue;
                }
            };
            for entry in table {
                let subject = format!("{path}, line {}: {}", entry.line, shorten(&entry.key));
                let single =
                    std::collections::HashMap::from([(entry.key.clone(), entry.value.clone())]);
                if let Err(err) = dnsbl::ReplyMap::new(single) {
                    self.skip(value.parameter, subject, err.to_string());
                    continue;
                }
                let folded = entry.key.to_ascii_lowercase();
                if map.contains_key(&folded) {
                    self.caveat(
                        value.parameter,
                        subject,
                        "a duplicate: the first entry wins, as in Postfix",
                    );
                    continue;
                }
                if map.len() == dnsbl::MAX_REPLY_MAP {
                    self.skip(
                        value.parameter,
                        subject,
                        format!("more than {} entries", dnsbl::MAX_REPLY_MAP),
                    );
                    continue;
                }
                map.insert(folded, (entry.key, entry.value));
            }
        }
        self.reply_map = map.into_values().collect();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::import_postfix::fixtures::{Files, caveat, import_with, skipped};

    #[test]
    fn reply_map_tables() {
        let files = Files::with(&[(
            "/etc/postfix/dnsbl_reply",
            "# keyed queries\nKEY123.zen.dq.example zen.spamhaus.example\n\
             key123.ZEN.dq.example duplicate\nbl.example\n",
        )]);
        let (import, c) = import_with(
            "postscreen_dnsbl_reply_map = texthash:/etc/postfix/dnsbl_reply\n",
            None,
            &files,
        );
        // The table has a bad line: it is not used.
        assert!(c.dnsbl_reply_map.is_empty());
        assert!(
            skipped(&import, "postscreen_dnsbl_reply_map")[0]
                .reason
                .contains("/etc/postfix/dnsbl_reply, line 4: expected `key value`")
        );

        let files = Files::with(&[(
            "/etc/postfix/dnsbl_reply",
            "KEY123.zen.dq.example zen.spamhaus.example\nkey123.ZEN.dq.example duplicate\n\
             bl.example shown \u{e9}\n",
        )]);
        let (import, c) = import_with(
            "postscreen_dnsbl_reply_map = texthash:/etc/postfix/dnsbl_reply\n",
            None,
            &files,
        );
        assert_eq!(
            c.dnsbl_reply_map,
            BTreeMap::from([(
                "KEY123.zen.dq.example".into(),
                "zen.spamhaus.example".into()
            )])
        );
        assert!(
            caveat(&import, "postscreen_dnsbl_reply_map")[0]
                .reason
                .contains("first entry wins")
        );
        assert!(
            skipped(&import, "postscreen_dnsbl_reply_map")[0]
                .reason
                .contains("non-ASCII")
        );
        assert!(
            import
                .toml
                .contains("[dnsbl_reply_map]\n\"KEY123.zen.dq.example\" = ")
        );

        for (value, reason) in [
            ("texthash:/nowhere", "cannot read it here"),
            (
                "hash:/etc/postfix/dnsbl_reply",
                "texthash:/etc/postfix/dnsbl_reply",
            ),
            (
                "btree:/etc/postfix/r",
                "write dnsbl_reply_map as a TOML table",
            ),
            ("proxy:hash:/etc/postfix/r", "proxy: tables are not read"),
            ("pcre:/etc/postfix/r.pcre", "pcre: tables are not read"),
            (
                "memcache:/etc/postfix/m.cf",
                "memcache: tables are not read",
            ),
            ("/etc/postfix/plain", "not a type:name table"),
        ] {
            let (import, c) = import_with(
                &format!("postscreen_dnsbl_reply_map = {value}\n"),
                None,
                &files,
            );
            assert!(c.dnsbl_reply_map.is_empty());
            let found = skipped(&import, "postscreen_dnsbl_reply_map");
            assert_eq!(found.len(), 1, "{value}");
            assert!(found[0].reason.contains(reason), "{value}: {}", found[0]);
        }
    }
}
