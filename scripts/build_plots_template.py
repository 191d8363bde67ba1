"""Write .dvc/plots/offline.html: DVC's plots page with vega, vega-lite and vega-embed inlined, so
`dvc plots show` renders with no internet. Rebuild after upgrading the libraries:

    npm pack vega@5 vega-lite@5 vega-embed@6        # three .tgz files
    python scripts/build_plots_template.py vega-*.tgz vega-lite-*.tgz vega-embed-*.tgz
"""

from __future__ import annotations

import argparse
import json
import tarfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / ".dvc/plots/offline.html"
BUNDLES = {"vega": "package/build/vega.min.js", "vega-lite": "package/build/vega-lite.min.js",
           "vega-embed": "package/build/vega-embed.min.js"}
# DVC fills {plot_divs}; it has no {scripts} slot, where DVC would add its CDN <script src> tags.
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>EdgeML plots</title>
<!-- {versions}, inlined by scripts/build_plots_template.py: no network needed -->
{inline}
    <style>
        table { border-spacing: 15px; }
        body { font-family: sans-serif; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def bundle(archive: Path) -> tuple[str, str, str]:
    """(package name, version, minified script) from an `npm pack` tarball."""
    with tarfile.open(archive) as tar:
        meta = json.load(tar.extractfile("package/package.json"))
        if meta["name"] not in BUNDLES:
            raise SystemExit(f"{archive}: package {meta['name']!r} is not one of {sorted(BUNDLES)}")
        script = tar.extractfile(BUNDLES[meta["name"]]).read().decode()
    if "</script" in script.lower() or any(f"{{{slot}}}" in script for slot in ("scripts", "plot_divs", "refresh_tag")):
        raise SystemExit(f"{archive}: the script contains text the page template cannot inline")
    return meta["name"], meta["version"], script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archives", nargs=3, type=Path, help="npm pack tarballs of vega, vega-lite, vega-embed")
    found = {name: (version, script) for name, version, script in map(bundle, parser.parse_args().archives)}
    if set(found) != set(BUNDLES):
        raise SystemExit(f"need one tarball each of {sorted(BUNDLES)}, got {sorted(found)}")
    versions = ", ".join(f"{name} {found[name][0]}" for name in BUNDLES)
    inline = "\n".join(f"<script>{found[name][1]}</script>" for name in BUNDLES)
    page = PAGE.replace("{versions}", versions).replace("{inline}", inline)
    OUT.write_text(page)
    print(f"{OUT}: {versions}, {OUT.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
