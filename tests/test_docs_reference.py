"""The generated reference pages (docs/recipe-reference.md, docs/cli-reference.md) match the code:
regenerated in memory by docs/gen.py and compared with the committed files."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _gen():
    spec = importlib.util.spec_from_file_location("docs_gen", DOCS / "gen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _gen()


@pytest.mark.parametrize("page", sorted(gen.PAGES))
def test_committed_reference_is_current(page):
    committed = (DOCS / page).read_text(encoding="utf-8")
    assert committed == gen.PAGES[page](), f"docs/{page} is stale: run `python docs/gen.py` and commit the result"


def test_recipe_reference_covers_every_key():
    """Every key of every section (the schema walked independently of the generator) has a row with a
    description, and every section a heading."""
    from pydantic import BaseModel

    from influence_cli.recipe import schema

    text = gen.recipe_reference()
    sections = [m for m in vars(schema).values()
                if isinstance(m, type) and issubclass(m, BaseModel) and m.__module__ == schema.__name__
                and not m.__name__.startswith("_")]
    for model in sections:
        assert f'<a id="{model.__name__.lower()}"></a>' in text, model.__name__
        part = text.split(f'<a id="{model.__name__.lower()}"></a>')[1].split("<a id=")[0]
        for name, field in model.model_fields.items():
            if field.exclude:
                continue
            row = re.search(rf"^\| `{name}` \| (.+) \| (.+) \| (.+) \|$", part, re.MULTILINE)
            assert row, f"{model.__name__}.{name} has no row"
            assert row.group(3).strip(), f"{model.__name__}.{name} has no description (Field(description=...))"


def test_cli_reference_covers_every_command_and_option():
    import typer.main

    from influence_cli.cli import app

    text = gen.cli_reference()
    for name, command in typer.main.get_command(app).commands.items():
        assert f"## `influence-cli {name}`" in text
        for param in command.params:
            for opt in param.opts:
                if opt.startswith("-"):
                    assert f"{opt}" in text, f"{name} {opt}"


def test_check_mode_names_a_stale_page(tmp_path, monkeypatch, capsys):
    """`python docs/gen.py --check` (what a contributor runs) exits 1 naming each stale file; writing
    them makes it pass."""
    monkeypatch.setattr(gen, "DOCS", tmp_path)
    (tmp_path / "cli-reference.md").write_text("old\n")
    assert gen.main(["--check"]) == 1
    assert capsys.readouterr().err.splitlines() == [f"docs/{page} is stale: run `python docs/gen.py`"
                                                    for page in gen.PAGES]
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0


YAML_BLOCK = re.compile(r"^```yaml[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
MINIMAL = {"model": {"factory": "m.py:f"}, "checkpoints": [{"path": "a.pt"}],
           "data": {"train": {"format": "tensors", "path": "t.pt"}}}


def _recipe_blocks() -> list[tuple[str, str]]:
    """(``file:line``, text) of every ```yaml block of the README and docs/ that is a recipe or a
    recipe's `checks:` section (CI workflow files are not)."""
    blocks = []
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for m in YAML_BLOCK.finditer(text):
            if re.search(r"^(model|checks):", m.group(1), re.MULTILINE):
                blocks.append((f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}", m.group(1)))
    return blocks


@pytest.mark.parametrize(("where", "text"), _recipe_blocks(), ids=[where for where, _ in _recipe_blocks()])
def test_recipes_shown_in_the_docs_are_valid(where, text):
    """A recipe (or `checks:` section) a reader copies from the docs passes validation."""
    import yaml

    from influence_cli.recipe import parse_recipe

    data = yaml.safe_load(text)
    parse_recipe({**MINIMAL, **data}, base_dir=ROOT, source=where)


def test_the_docs_show_recipes():
    assert {where.split(":")[0] for where, _ in _recipe_blocks()} >= {"README.md", "docs/ci.md", "docs/recipes.md"}


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file (lower case, punctuation dropped, spaces to
    hyphens), plus explicit `<a id="...">` anchors."""
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)  # `#` in code blocks is no heading
    heads = re.findall(r"^#+ (.+)$", text, re.MULTILINE)
    slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}
    return slugs | set(re.findall(r'<a id="([^"]+)"></a>', text))


@pytest.mark.parametrize("page", [ROOT / "README.md", *sorted(DOCS.glob("*.md")), ROOT / "benchmarks" / "RESULTS.md"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page):
    """Every relative link of the README and docs/ names a file that exists, and an anchor it has."""
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL | re.MULTILINE)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # http:, file:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        assert dest.exists(), f"{page.name}: link to missing {target}"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{page.name}: no anchor #{anchor} in {dest.name}"
