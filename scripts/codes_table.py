#!/usr/bin/env python3
"""Rewrites the wire-code table in docs/protocol.md from the registry in protocol/src/codes.rs.
(The test protocol/tests/registry_doc.rs fails when they differ.)"""
import pathlib, re
root = pathlib.Path(__file__).resolve().parent.parent
src = (root / "protocol/src/codes.rs").read_text()
rows, group = [], None
for line in src.splitlines():
    m = re.match(r'\s*"(\w+)" \{', line)
    if m:
        group = m.group(1)
        continue
    m = re.match(r'\s*\w+ = "(\w+)": "(.*)";', line)
    if m and group:
        rows.append((m.group(1), group, m.group(2).replace('\\"', '"')))
table = "| code | group | meaning |\n|---|---|---|\n" + "\n".join(f"| `{c}` | {g} | {m} |" for c, g, m in rows)
doc = root / "docs/protocol.md"
text = doc.read_text()
start = text.index("### Wire and client codes")
first = text.index("| code |", start)
end = text.index("\n\n", first)
doc.write_text(text[:first] + table + text[end:])
print(f"{len(rows)} codes")
