"""Sphinx configuration of the ntkfast documentation.

Build: ``pip install ".[docs]" && sphinx-build -W --keep-going -b html docs docs/_build/html``.
The examples under ``docs/examples/`` run during the build (sphinx-gallery); their figures land
in ``docs/auto_examples/`` (generated, not committed).
"""
import warnings

import matplotlib

matplotlib.use("Agg")

import ntkfast  # noqa: E402  (the installed package: the docs describe what is built)

project = "ntkfast"
author = "The ntkfast developers"
copyright = "the ntkfast developers"
release = version = ntkfast.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.doctest",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "examples", "auto_examples/*.ipynb", "auto_examples/*.py",
                    "auto_examples/*.zip", "auto_examples/*.json", "auto_examples/*.md5",
                    "auto_examples/*.pickle"]

# numpy-style docstrings, read by napoleon
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True

autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "none"
add_module_names = False

# The existing Markdown pages link to files outside docs/ (benchmark results, sources): those
# are links into the repository, not documents of this site.
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]
suppress_warnings = ["myst.xref_missing"]

sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",        # every plot_*.py example is executed
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "download_all_examples": False,
    "plot_gallery": "True",
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "matplotlib_animations": False,
}

html_theme = "alabaster"
html_static_path = []
html_theme_options = {"description": "Exact NNGP and NTK Gram matrices, fast"}

# The examples call plt.show() (for readers running them as scripts); under Agg that warns.
warnings.filterwarnings("ignore", category=UserWarning, message="(?s).*non-interactive")
warnings.filterwarnings("ignore", category=UserWarning, message="Matplotlib is currently using agg")
