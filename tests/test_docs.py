"""The generated parts of the docs stay in sync, its links and the docs' lead somewhere, and the examples run."""
import pathlib
import re
import subprocess
import sys

import pytest

from keras_cnn.models import registry

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_models_page_table_is_the_generated_one():
    page = (ROOT / "docs" / "models.md").read_text()
    table = re.search(r"<!-- models:start -->\n(.*?)\n<!-- models:end -->", page, re.S).group(1)
    assert table == registry.markdown_table(), "regenerate with `keras-cnn list --markdown`"


def test_the_zoo_page_shows_the_shipped_results_and_commands():
    from keras_cnn.models import checkpoints

    page = (ROOT / "docs" / "zoo.md").read_text()
    table = re.search(r"<!-- results:start -->\n(.*?)\n<!-- results:end -->", page, re.S).group(1)
    assert table == checkpoints.results_table(markdown=True), "regenerate with `keras-cnn list --pretrained --markdown`"
    shipped = [c for by_dataset in checkpoints.manifest().values() for c in by_dataset.values()]
    assert shipped and all(f"`{c.command}`" in page for c in shipped)
    assert {row["checkpoint"] for row in checkpoints.results()} == {c.spec for c in shipped}


def _outside_code(text):
    """The lines of a Markdown text that are not inside ``` fences."""
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield line


def _anchors(path):
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = (line.lstrip("#").strip() for line in _outside_code(path.read_text()) if line.startswith("#"))
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def _links(path):
    """(target file, anchor) of every relative Markdown link and image in `path`."""
    for line in _outside_code(path.read_text()):
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if not re.match(r"[a-z]+:", target):  # http:, https:, mailto: lead outside
                file, _, anchor = target.partition("#")
                yield (path.parent / file).resolve() if file else path, anchor


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", DOCS, ids=[p.name for p in DOCS])
def test_every_relative_link_leads_to_a_file_and_heading(page):
    links = list(_links(page))
    missing = [f"{target}#{anchor}" for target, anchor in links
               if not target.exists() or (anchor and target.suffix == ".md" and anchor not in _anchors(target))]
    assert links and not missing, f"{page.name} links to nothing there: {missing}"


def test_the_readme_links_every_docs_page():
    linked = {target for target, _ in _links(ROOT / "README.md")}
    assert set(DOCS[1:]) <= linked


# Each example with arguments that keep it quick and what its output must say.
EXAMPLES = {
    "plain_family.py": ([], "parameters"),
    "resnet_family.py": ([], "receptive field"),
    "parameter_count.py": ([], "760 parameters (seed 004: 760)"),
    "manual_convolution.py": ([], "Keras Conv2D agrees: True"),
    "edge_detection.py": (["--out", "{tmp}/edges.png"], "Keras Conv2D equals the cross-correlation: True"),
    "train_digits.py": (["--epochs", "3", "--out", "{tmp}/run"], "accuracy per epoch"),
    "export_tflite.py": (["--epochs", "2", "--out", "{tmp}/run"], "small_int8.tflite"),
    "tuning_search.py": (["--trials", "2", "--epochs", "1", "--out", "{tmp}/tune"], "retrained best"),
    "transfer_learning.py": ([], "transferred"),
}
# About 50 s each, longer than the default suite can afford; test_transfer.py covers their mechanics.
SLOW_EXAMPLES = {"transfer_learning.py"}


def test_every_example_is_tested():
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(EXAMPLES)


@pytest.mark.parametrize("script", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_EXAMPLES else name
                                    for name in sorted(EXAMPLES)])
def test_example_runs(script, tmp_path):
    arguments, expected = EXAMPLES[script]
    command = [sys.executable, str(ROOT / "examples" / script), *(a.format(tmp=tmp_path) for a in arguments)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert expected in result.stdout
