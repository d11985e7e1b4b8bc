"""Build-time fixes that make the site self-contained and free of JavaScript errors.

Two things the default Jupyter Book 1 stack gets wrong, fixed here at build time rather than hidden in the browser:

* Badge images. Every chapter opens with the Colab badge, whose image lives on another host. The image
  node is pointed at the copy in ``book/_static/colab-badge.svg`` before Sphinx collects images, so the badge
  is copied into ``_images/`` like any local figure and the page fetches nothing from elsewhere. The link
  target (the notebook on Colab) is untouched.
* Duplicated inline scripts. Sphinx 7.4 registers an inline ``<script>`` added after the builder starts twice
  (once as ``None``, once as ``''``), so sphinx-thebe's ``const THEBE_JS_URL = ...`` is declared twice on
  every page and the browser throws ``Identifier 'THEBE_JS_URL' has already been declared``. Each page's
  script list is deduplicated so every inline script appears once.
"""
from __future__ import annotations

from pathlib import Path

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.transforms import SphinxTransform

STATIC = Path(__file__).resolve().parents[1] / "_static"

# Remote image URL -> the bundled copy that replaces it (path relative to book/_static).
BUNDLED_IMAGES = {
    "https://colab.research.google.com/assets/colab-badge.svg": "colab-badge.svg",
}


class BundleRemoteImages(SphinxTransform):
    """Point images whose URL has a bundled copy at that copy (before the image collector runs)."""

    default_priority = 400

    def apply(self, **kwargs) -> None:
        for image in self.document.findall(nodes.image):
            local = BUNDLED_IMAGES.get(image.get("uri", ""))
            if local is not None:
                # A leading "/" is relative to the source directory: Sphinx copies the file into _images/.
                image["uri"] = "/" + (STATIC / local).relative_to(Path(self.env.srcdir).resolve()).as_posix()


def _deduplicate_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Keep the first of equal scripts; ``None`` and ``''`` name the same inline script."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set = set()
    unique = []
    for script in scripts:
        key = (script.filename or "", script.priority, tuple(sorted(script.attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app: Sphinx) -> dict:
    app.add_transform(BundleRemoteImages)
    app.connect("html-page-context", _deduplicate_scripts)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
