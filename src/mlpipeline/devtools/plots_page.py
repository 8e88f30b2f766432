"""Build the page ``dvc plots show`` fills, with the Vega scripts inlined, so plots draw offline.

DVC's own page loads vega, vega-lite and vega-embed from a CDN: with no internet (an air-gapped
GPU cluster) the charts stay blank and only the image plots show. DVC fills any page named by
``plots.html_template`` in ``.dvc/config``; this one is DVC's page itself (``dvc_render``'s
``PAGE_HTML``) with the scripts carried inside instead of its ``{scripts}`` slot, the only one
DVC puts CDN tags in. The scripts come from the npm packages pinned by
``vendor/vega/package-lock.json`` (``make plots-page`` runs ``npm ci`` there, then this module),
and the page is committed: a plain ``git clone`` draws its plots with no node, npm or network.

    python -m mlpipeline.devtools.plots_page NODE_MODULES OUTPUT
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from mlpipeline.core import atomic

# Load order matters: vega-lite and vega-embed find vega (and vega-lite) as globals.
BUNDLES = {
    "vega": "build/vega.min.js",
    "vega-lite": "build/vega-lite.min.js",
    "vega-embed": "build/vega-embed.min.js",
}
SOURCE_MAP = re.compile(r"^//# sourceMappingURL=.*$", re.MULTILINE)  # no .map file beside the page
PLACEHOLDERS = ("{plot_divs}", "{refresh_tag}", "{scripts}")  # what DVC replaces in the page


def package_version(package_dir: Path) -> str:
    return json.loads((package_dir / "package.json").read_text())["version"]


def inline_script(node_modules: Path, package: str) -> str:
    """One ``<script>`` element carrying ``package``'s browser bundle, named with its version."""
    code = SOURCE_MAP.sub("", (node_modules / package / BUNDLES[package]).read_text()).strip()
    clash = [text for text in ("</script", *PLACEHOLDERS) if text in code]
    if clash:
        raise ValueError(f"{package}'s bundle contains {clash[0]!r}: it cannot be inlined as is")
    version = package_version(node_modules / package)
    return f'<script data-package="{package}@{version}">\n{code}\n</script>'


def build_page(node_modules: Path) -> str:
    """DVC's plots page with the pinned Vega bundles inside it."""
    from dvc_render.html import PAGE_HTML

    scripts = "\n".join(inline_script(node_modules, package) for package in BUNDLES)
    return PAGE_HTML.replace("{scripts}", scripts) + "\n"


def main(argv: list[str] | None = None) -> None:
    node_modules, output = map(Path, sys.argv[1:] if argv is None else argv)
    atomic.write_text(output, build_page(node_modules))


if __name__ == "__main__":
    main()
