//! What `levy check` prints: the route table, and the warnings a valid config may still
//! deserve.

use super::{Access, Route, Unmatched};
use crate::routing::HostPattern;
use crate::Config;

impl Config {
    /// The route table as text, one route per line, for `levy check`.
    pub fn describe(&self) -> String {
        let mut rows = vec![[
            "#".to_owned(),
            "route".into(),
            "host".into(),
            "methods".into(),
            "path".into(),
            "upstream".into(),
            "access".into(),
        ]];
        for (i, (matcher, route)) in self.routes.iter().enumerate() {
            let methods = matcher
                .methods
                .listed()
                .map_or("*".to_owned(), |m| m.join(","));
            let access = match &route.access {
                Access::Free => "free".to_owned(),
                Access::Priced(p) => {
                    let offers: Vec<String> = p
                        .requirements
                        .iter()
                        .map(|r| format!("{} {}@{}", r.amount, r.asset_name, r.network_name))
                        .collect();
                    let shadow = match p.mode {
                        super::Mode::Shadow => " (shadow: never charged)",
                        super::Mode::Enforce => "",
                    };
                    let durability = match p.durability {
                        crate::settle::journal::Durability::Async => " (async durability)",
                        crate::settle::journal::Durability::Sync => "",
                    };
                    format!(
                        "{} = {}{shadow}{durability}",
                        p.price_text,
                        offers.join(" | ")
                    )
                }
                Access::Unpriced(u) => format!("402: no price (priced: {})", u.priced.join(", ")),
            };
            let path = if route.when_text.is_empty() {
                route.path_text.clone()
            } else {
                format!("{} if {}", route.path_text, route.when_text)
            };
            rows.push([
                i.to_string(),
                route.name.clone(),
                route.host_text.clone(),
                methods,
                path,
                route.upstream.name.clone(),
                access,
            ]);
        }
        let unmatched = match &self.unmatched {
            Unmatched::NotFound => "404".to_owned(),
            Unmatched::Pass(u) => format!("pass to {}", u.name),
        };
        let widths: Vec<usize> = (0..7)
            .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in &rows {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out.push_str(&format!("unmatched requests: {unmatched}\n"));
        if let Some(documents) = &self.discovery {
            let listed: Vec<&str> = self
                .routes
                .iter()
                .filter_map(|(_, route)| match &route.access {
                    Access::Priced(p) if p.challenge.discovery().is_some() => {
                        Some(route.name.as_str())
                    }
                    _ => None,
                })
                .collect();
            let mut served: Vec<&str> = Vec::new();
            if documents.well_known {
                served.push("/.well-known/x402");
            }
            if let Some(path) = &documents.openapi_path {
                served.push(path);
            }
            out.push_str(&format!(
                "discoverable: {} (listed at {}; their 402s carry the bazaar extension)\n",
                listed.join(", "),
                if served.is_empty() {
                    "no document".to_owned()
                } else {
                    served.join(" and ")
                }
            ));
        }
        if let Some(s) = &self.settlement {
            let amount = |v: Option<alloy_primitives::U256>| {
                v.map_or("unlimited".to_owned(), |v| format!("{v} atomic units"))
            };
            out.push_str(&format!(
                "exposure: per payer {}, in total {}; loss budget {} per {} s; funds check {}\n",
                amount(s.limits.per_payer),
                amount(s.limits.total),
                amount(s.limits.loss_budget),
                s.limits.loss_window_seconds,
                if s.funds.check && s.facilitator.is_none() {
                    "on"
                } else {
                    "off"
                },
            ));
            if s.facilitator.is_none() {
                out.push_str(&format!(
                    "chain reads for admission: at most {} at once per network; {} signature \
                     checks on chain per client address per minute\n",
                    s.funds.max_concurrent_reads, s.funds.signature_checks_per_minute,
                ));
            }
        }
        for warning in self.warnings() {
            out.push_str(&format!("warning: {warning}\n"));
        }
        out
    }

    /// What in the route table lets a request the priced routes miss reach the origin
    /// unpaid: a later free prefix route over a priced route's path, an earlier free route
    /// that takes some of its methods, or `unmatched: pass`.
    /// A request spelled in a way levy does not normalise but the origin does would fall
    /// through to it.
    pub fn warnings(&self) -> Vec<String> {
        let entries: Vec<_> = self.routes.iter().collect();
        let mut warnings = Vec::new();
        for (i, (priced, route)) in entries.iter().enumerate() {
            if !matches!(route.access, Access::Priced(_)) {
                continue;
            }
            // An MCP route's free entries take the calls it does not price: its priced
            // entries name theirs, and the rest is free by design.
            let same_mcp = |r: &Route| r.mcp && route.mcp && r.name == route.name;
            let free_cover = entries[i + 1..].iter().find(|(m, r)| {
                matches!(r.access, Access::Free)
                    && !same_mcp(r)
                    && (m.host == HostPattern::Any || m.host == priced.host)
                    && m.methods.overlaps(&priced.methods)
                    && m.path.covers(&priced.path)
            });
            if let Some((_, free)) = free_cover {
                warnings.push(format!(
                    "free route `{}` ({}) comes after priced route `{}` ({}) and covers its path: a request spelled so that `{}` misses it reaches the origin unpaid",
                    free.name, free.path_text, route.name, route.path_text, route.name
                ));
            }
            // One that takes all of it is refused when the config loads; part of it (some of
            // its methods) reaches the origin unpaid.
            // An API key's free entry takes only requests that carry a secret levy lists.
            let free_before = entries[..i].iter().find(|(m, r)| {
                matches!(r.access, Access::Free)
                    && !r.keyed
                    && !same_mcp(r)
                    && m.takes_some_of(priced)
            });
            if let Some((m, free)) = free_before {
                if m.when.is_empty() {
                    warnings.push(format!(
                        "free route `{}` ({}) comes before priced route `{}` ({}) and takes some of its requests (the methods both match): those reach the origin unpaid; put `{}` first",
                        free.name, free.path_text, route.name, route.path_text, route.name
                    ));
                } else {
                    warnings.push(format!(
                        "free route `{}` ({} if {}) comes before priced route `{}` ({}): any client that sends what it matches on reaches the origin unpaid",
                        free.name, free.path_text, free.when_text, route.name, route.path_text
                    ));
                }
            }
        }
        let priced = entries
            .iter()
            .filter(|(_, r)| matches!(r.access, Access::Priced(_)))
            .count();
        if let Some(settlement) = &self.settlement {
            let window = crate::settle::settle_window_seconds(settlement.max_delay);
            if self.policy.valid_before_margin_seconds <= window {
                warnings.push(format!(
                    "levy.payments.valid_before_margin_seconds ({}) is not above the settlement window ({window} s: max_delay_ms plus mining time): payments signed with the shortest validity settle before their response",
                    self.policy.valid_before_margin_seconds
                ));
            }
        }
        if let (Unmatched::Pass(upstream), true) = (&self.unmatched, priced > 0) {
            warnings.push(format!(
                "unmatched: pass forwards every request the {priced} priced routes miss to `{}`: a request spelled so that a priced route misses it reaches the origin unpaid; prefer `not_found`",
                upstream.name
            ));
        }
        warnings
    }
}
