"""Prompt sources for teacher-made data: each kind of source, the built-in generator's
reproducibility and variety, and bad sources."""
import pytest
from PIL import Image

from bksdm_ext.errors import BadInput
from bksdm_ext.train.prompts import (DETAILS, LIGHTING, SETTINGS, STYLES, SUBJECTS, builtin_prompt,
                               builtin_prompt_count, generate_prompts, load_prompts)


def test_the_generator_is_reproducible_for_a_seed_and_differs_between_seeds():
    first = generate_prompts(300, seed=7)
    assert first == generate_prompts(300, seed=7)
    other = generate_prompts(300, seed=8)
    assert other != first and len(set(first) & set(other)) < 10
    # Asking for more keeps what a shorter list had, so growing a set keeps its images.
    assert generate_prompts(1000, seed=7)[:300] == first


def test_five_thousand_generated_prompts_are_distinct_and_varied():
    prompts = generate_prompts(5000, seed=0)
    assert len(prompts) == len(set(prompts)) == 5000
    parts = [p.split(", ") for p in prompts[:2000]]
    assert all(len(part) == 3 for part in parts)
    used = [{s for s in STYLES for head, _, _ in parts if head.startswith(s + " of ")},
            {s for s in SUBJECTS for head, _, _ in parts if " of %s " % s in head},
            {s for s in SETTINGS for head, _, _ in parts if head.endswith(" " + s)},
            {lighting for _, lighting, _ in parts}, {detail for _, _, detail in parts}]
    for words, seen in zip((STYLES, SUBJECTS, SETTINGS, LIGHTING, DETAILS), used):
        assert seen <= set(words) and len(seen) > 0.9 * len(words)


def test_the_generator_space_has_over_100k_distinct_prompts():
    assert builtin_prompt_count() >= 100_000
    numbers = range(0, builtin_prompt_count(), builtin_prompt_count() // 20_011)
    rendered = [builtin_prompt(n) for n in numbers]
    assert len(set(rendered)) == len(rendered)  # distinct slots never render alike


@pytest.mark.parametrize("source", [None, "builtin", ""])
def test_no_source_means_the_generator(source):
    prompts = load_prompts(source, 12, seed=3)
    assert prompts.prompts == generate_prompts(12, 3)
    assert "built-in" in prompts.description and not prompts.cycled(12)


def test_a_prompt_file_gives_one_prompt_a_line_and_cycles_when_short(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\ufeffa red car\n\n  a   blue\tboat  \na green tree\n", encoding="utf-8")
    prompts = load_prompts(str(path), 7, seed=0)
    assert prompts.prompts == ["a red car", "a blue boat", "a green tree"]
    assert [prompts.prompt(i) for i in range(7)] == ["a red car", "a blue boat", "a green tree"] * 2 + ["a red car"]
    assert prompts.cycled(7) and not prompts.cycled(3)
    assert "3 prompts" in prompts.description and "prompts.txt" in prompts.description
    before = prompts.digest()
    path.write_text("a red car\na blue boat\na yellow tree\n", encoding="utf-8")
    assert load_prompts(str(path), 7, seed=0).digest() != before


def test_a_folder_of_caption_files_gives_one_prompt_a_file(tmp_path):
    folder = tmp_path / "captions"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("a dog\non grass", encoding="utf-8")
    (folder / "a.txt").write_text("a cat", encoding="utf-8")
    (folder / "sub" / "c.txt").write_text("a bird", encoding="utf-8")
    (folder / "empty.txt").write_text("  ", encoding="utf-8")
    (folder / ".hidden").mkdir()
    (folder / ".hidden" / "x.txt").write_text("not me", encoding="utf-8")
    assert load_prompts(str(folder), 3, 0).prompts == ["a cat", "a dog on grass", "a bird"]


def test_a_dataset_folder_gives_its_captions(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for i, caption in enumerate(["a red square", "a blue square"]):
        Image.new("RGB", (8, 8), "red").save(folder / ("img%d.png" % i))
        (folder / ("img%d.txt" % i)).write_text(caption, encoding="utf-8")
    Image.new("RGB", (8, 8)).save(folder / "uncaptioned.png")
    prompts = load_prompts(str(folder), 5, 0)
    assert prompts.prompts == ["a red square", "a blue square"]
    assert "dataset" in prompts.description


@pytest.mark.parametrize("kind", ["missing", "empty file", "empty folder", "not text",
                                  "not utf-8", "too many"])
def test_bad_sources_say_what_to_do(tmp_path, kind):
    source = tmp_path / "source"
    count = 10
    if kind == "empty file":
        source = tmp_path / "prompts.txt"
        source.write_text("\n  \n", encoding="utf-8")
    elif kind == "empty folder":
        source.mkdir()
    elif kind == "not text":
        source = tmp_path / "model.safetensors"
        source.write_bytes(b"\0" * 10)
    elif kind == "not utf-8":
        source = tmp_path / "prompts.txt"
        source.write_bytes(b"caf\xe9\n")
    elif kind == "too many":
        source, count = "builtin", builtin_prompt_count()
    with pytest.raises(BadInput) as error:
        load_prompts(str(source), count, 0)
    message = str(error.value)
    assert "\n" not in message and ("give" in message or "save" in message
                                    or "write" in message or "ask" in message)
