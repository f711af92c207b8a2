"""The API reference (mkdocs.yml, docs/): it builds in strict mode, every public name of every
public module has its entry, and a broken reference, an unknown object or a page missing from
the navigation fails the build. (The docstrings' examples run as doctests on their own:
pyproject.toml's ``--doctest-modules`` over worker/millrace.)"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXTENSION = ROOT / "docs" / "extensions" / "rest_docstrings.py"
#: The public modules, each with its page.
MODULES = [
    "dataflow",
    "execution",
    "inputs",
    "outputs",
    "window",
    "recovery",
    "tracing",
    "testing",
    "parse",
    "visualize",
    "manifest",
]


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = build(ROOT / "mkdocs.yml", out)
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", MODULES)
def test_every_public_name_has_its_entry(site: Path, name: str) -> None:
    module = importlib.import_module(f"millrace.{name}")
    page = (site / "reference" / name / "index.html").read_text()
    public = getattr(module, "__all__", None)
    assert public, f"millrace.{name} has no __all__"
    missing = [item for item in public if f'id="millrace.{name}.{item}"' not in page]
    # Names a module re-exports are documented where they live (ClusterError, use_clock).
    assert missing == []
    # The docstrings' doctests are shown as code, not as Markdown quotes.
    assert "<blockquote>" not in page


@pytest.mark.timeout(300)
def test_the_overview_links_every_page(site: Path) -> None:
    overview = (site / "index.html").read_text()
    for name in MODULES:
        assert f'href="reference/{name}/"' in overview
    # Roles in docstrings became links between the pages.
    execution = (site / "reference" / "execution" / "index.html").read_text()
    assert 'href="../testing/#millrace.testing.doctest_ctx"' in execution


def copy_of_the_reference(tmp_path: Path) -> tuple[Path, dict[str, object]]:
    """A copy of docs/ and a config that builds it from ``tmp_path``."""
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    config["docs_dir"] = str(docs)
    python = config["plugins"][1]["mkdocstrings"]["handlers"]["python"]
    python["paths"] = [str(ROOT / "worker")]
    python["options"]["extensions"] = ["griffe_sphinx", f"{EXTENSION}:RestDocstrings"]
    return docs, config


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("page", "in_nav", "complaint"),
    [
        ("::: millrace.execution.no_such_function\n", True, "no_such_function"),
        ("See [run_main][millrace.execution.run_mian].\n", True, "millrace.execution.run_mian"),
        ("See [the overview](../nowhere.md).\n", True, "nowhere.md"),
        ("# A page no one can reach\n", False, "broken.md"),
    ],
)
def test_a_broken_reference_fails_the_build(tmp_path: Path, page: str, in_nav: bool, complaint: str) -> None:
    docs, config = copy_of_the_reference(tmp_path)
    (docs / "reference" / "broken.md").write_text(f"# Broken\n\n{page}")
    if in_nav:
        config["nav"][1]["API"].append({"broken": "reference/broken.md"})  # type: ignore[index]
    path = tmp_path / "mkdocs.yml"
    path.write_text(yaml.safe_dump(config))
    result = build(path, tmp_path / "site")
    assert result.returncode != 0
    assert complaint in result.stderr


@pytest.mark.timeout(300)
def test_the_copy_builds_as_the_original(tmp_path: Path) -> None:
    """The failures above come from the broken page, not from the copy."""
    _, config = copy_of_the_reference(tmp_path)
    path = tmp_path / "mkdocs.yml"
    path.write_text(yaml.safe_dump(config))
    result = build(path, tmp_path / "site")
    assert result.returncode == 0, result.stderr


def load_extension() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rest_docstrings", EXTENSION)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_extension_examples() -> None:
    assert doctest.testmod(load_extension()).failed == 0


def test_doctest_blocks_are_fenced_where_they_stand() -> None:
    to_markdown = load_extension().to_markdown
    text = "Intro.\n\n    >>> f(\n    ...     1)\n    2\n\nAfter :meth:`x.y` and :mod:`~a.b`."
    assert to_markdown(text, lambda target: None) == (
        "Intro.\n\n    ```pycon\n    >>> f(\n    ...     1)\n    2\n    ```\n\nAfter `x.y` and `b`."
    )
    # A millrace target that resolves nowhere stays a link, for the build to report.
    assert to_markdown(":func:`millrace.nope`", lambda target: None) == "[`millrace.nope`][millrace.nope]"
