"""The README and the docs pages it links, as a reader runs them: every ```python block runs, in order, in one
namespace per page, offline, on tiny stand-ins (and the models the repository ships).

Pages whose blocks another test runs (it sets up what they need) are named in `RUN_ELSEWHERE`; a page with a
python block that neither list names fails `test_every_docs_page_with_python_blocks_is_run_by_a_test`, so a new
example cannot go untested. Shell commands are ```bash or ```sh blocks, output and sketches that need files a
test cannot hold are ```text: not run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The pages whose python blocks this file runs.
PAGES = ("README.md", "docs/policies.md", "docs/tail_cache.md")
#: Pages whose python blocks another test runs: the test file, which must read the page.
RUN_ELSEWHERE = {
    "docs/loading.md": "tests/test_pipeline.py",
    "docs/backbones.md": "tests/test_pipelines_stock.py",
    "docs/add-a-family.md": "tests/test_families.py",
    "docs/training.md": "tests/test_training_pipelines.py",  # needs a trained folder: it trains one first
}
#: The languages a fenced block may name; a bare fence is not allowed (it would hide code from the checks).
LANGUAGES = {"python", "bash", "sh", "text"}

pytestmark = pytest.mark.usefixtures("one_thread")


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def run_page(page: str) -> dict:
    text = (ROOT / page).read_text()
    blocks = python_blocks(text)
    assert blocks, f"{page} has no python block"
    namespace: dict = {"__name__": "__readme__"}
    for i, block in enumerate(blocks, 1):
        exec(compile(block, f"{page}, python block {i}", "exec"), namespace)
    return namespace


def test_the_readme_runs_and_prints_what_its_comments_say(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = run_page("README.md")
    out = capsys.readouterr().out
    # enable + BlockForecast(interval=2) at 6 steps: every block runs, half of them computed; then a static half depth.
    assert "blocks run        96 of 96 (depth fraction 1.000)" in out
    assert "compute fraction 0.500" in out
    assert "depth_fraction=0.500" in out
    assert namespace["out"].images.shape[0] == 10 and namespace["out"].operating_point["source"]


@pytest.mark.parametrize("page", [p for p in PAGES if p != "README.md"])
def test_every_python_block_of_a_docs_page_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where an example writes (heads.save_pretrained("heads"))
    run_page(page)


def test_every_docs_page_with_python_blocks_is_run_by_a_test():
    for path in sorted((ROOT / "docs").glob("*.md")):
        page = path.relative_to(ROOT).as_posix()
        if not python_blocks(path.read_text()):
            continue
        assert page in PAGES or page in RUN_ELSEWHERE, f"{page}: its python blocks run in no test"
        if page in RUN_ELSEWHERE:
            assert Path(page).name in (ROOT / RUN_ELSEWHERE[page]).read_text(), (page, RUN_ELSEWHERE[page])


def fence_languages(text: str) -> list[str]:
    """The language named by every opening fence, in order ('' for a bare one)."""
    languages, inside = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            if not inside:
                languages.append(line[3:].strip())
            inside = not inside
    return languages


@pytest.mark.parametrize("page", ["README.md", *sorted(p.relative_to(ROOT).as_posix()
                                                       for p in (ROOT / "docs").glob("*.md"))])
def test_every_fenced_block_names_its_language(page):
    named = set(fence_languages((ROOT / page).read_text()))
    assert named <= LANGUAGES, f"{page}: fences {sorted(named - LANGUAGES)}; name one of {sorted(LANGUAGES)}"


def test_the_readme_is_short_and_installs_from_a_clone():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    # Not on PyPI: an extra is installed from the clone, never by the package's name.
    assert 'pip install -e ".[xformers]"' in text and "pip install ee-diffusion" not in text
