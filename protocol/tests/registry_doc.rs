//! `docs/protocol.md` lists exactly the registry's codes (and the verifier's), with the same meanings.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use confidant_protocol::Code;

fn doc() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md");
    std::fs::read_to_string(path).unwrap()
}

/// Rows `| \`code\` | group | meaning |` of the table under `heading`.
fn table(doc: &str, heading: &str) -> BTreeMap<String, (String, String)> {
    let start = doc.find(heading).unwrap_or_else(|| panic!("no {heading}"));
    doc[start..]
        .lines()
        .skip(1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            let code = cells.first()?.strip_prefix('`')?.strip_suffix('`')?;
            Some((
                code.to_string(),
                (
                    cells.get(1).unwrap_or(&"").to_string(),
                    cells.get(2).unwrap_or(&"").to_string(),
                ),
            ))
        })
        .collect()
}

#[test]
fn the_document_lists_exactly_the_wire_registry() {
    let listed = table(&doc(), "### Wire and client codes");
    let registry: BTreeMap<String, (String, String)> = Code::ALL
        .iter()
        .map(|c| {
            (
                c.as_str().to_string(),
                (c.group().to_string(), c.meaning().to_string()),
            )
        })
        .collect();
    assert_eq!(listed, registry);
}

#[test]
fn the_document_lists_exactly_the_verifiers_codes() {
    let listed: Vec<String> = table(&doc(), "### Attestation rejections")
        .into_keys()
        .collect();
    let mut codes: Vec<String> = confidant_verifier::Code::ALL
        .iter()
        .map(|c| c.as_str().to_string())
        .collect();
    codes.sort();
    assert_eq!(listed, codes);
}
