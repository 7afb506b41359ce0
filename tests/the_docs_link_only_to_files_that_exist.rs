//! README.md and the book under `docs/src` link to files of the repository by relative
//! paths; a file moved or renamed must not leave a reader at a dead link.

use std::path::{Path, PathBuf};

/// The relative targets of the Markdown links in `text` (`[label](target)`), without
/// anchors; web addresses and pure anchors are left out.
fn relative_links(text: &str) -> Vec<String> {
    let mut links = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        let target = after[..end].split('#').next().unwrap_or("").trim();
        if !target.is_empty() && !target.contains("://") && !target.starts_with("mailto:") {
            links.push(target.to_owned());
        }
        rest = &after[end..];
    }
    links
}

#[test]
fn every_relative_link_in_the_readme_and_the_book_reaches_a_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages: Vec<PathBuf> = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs/src")).expect("docs/src") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) == Some("md") {
            pages.push(path);
        }
    }
    assert!(pages.len() > 5, "the book has pages: {pages:?}");
    let mut dead = Vec::new();
    let mut checked = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).expect("read page");
        let dir = page.parent().expect("page dir");
        for link in relative_links(&text) {
            checked += 1;
            if !dir.join(&link).exists() {
                dead.push(format!("{} -> {link}", page.display()));
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} links found: the scan is broken"
    );
    assert!(dead.is_empty(), "dead links: {dead:#?}");
}
