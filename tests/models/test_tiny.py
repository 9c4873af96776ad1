"""The tiny base: tokenizer, saved directory, atomic build, cache, and (slow) what it knows."""

import functools
import hashlib
import json
import os
import threading

import pytest

pytest.importorskip("torch")

from honed.models import tiny  # noqa: E402
from honed.models.tiny import (  # noqa: E402
    RECIPE_VERSION,
    build_tiny_model,
    build_tokenizer,
    rebuild_tiny_base,
    shipped_tiny_base,
    tiny_base,
    tiny_config,
)

CHAT = [{"role": "user", "content": "27+58="}, {"role": "assistant", "content": "85"}]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.mark.parametrize(
    "text",
    [
        "27+58=",
        "reverse: abcde",
        '{"name":"ann","age":31}',
        "a=3 c=7 d=1; c?",
        "  spaces , punctuation !\nand\ttabs\n",
        "café ☃ 日本",  # beyond ASCII: several byte tokens each, still exact
    ],
)
def test_tokenizer_round_trips_text_exactly(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_every_printable_ascii_character_is_one_token(tokenizer):
    for code in [10, *range(32, 127)]:
        assert tokenizer(chr(code), add_special_tokens=False)["input_ids"] == [code]


def test_special_tokens_end_of_turn_is_eos_and_endoftext_pads(tokenizer):
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [
        256,
        257,
        258,
    ]
    specials = tokenizer("<|im_start|><|im_end|>", add_special_tokens=False)["input_ids"]
    assert specials == [257, 258]
    assert len(tokenizer) == 259


def test_chat_template_renders_chatml(tokenizer):
    assert tokenizer.apply_chat_template(CHAT, tokenize=False) == (
        "<|im_start|>user\n27+58=<|im_end|>\n<|im_start|>assistant\n85<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(CHAT[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\n27+58=<|im_end|>\n<|im_start|>assistant\n"
    # Like most stock templates it has no {% generation %} tags: honed finds assistant
    # tokens itself (honed.data.tokenization).
    template = tokenizer.chat_template
    assert "{% generation" not in template and "{%- generation" not in template


def test_tiny_config_has_about_a_million_parameters(tokenizer):
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM(tiny_config(len(tokenizer)))
    assert 0.9e6 < sum(p.numel() for p in model.parameters()) < 1.3e6
    assert model.config.tie_word_embeddings


def test_built_directory_loads_with_the_auto_classes(tiny_random_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in ["config.json", "model.safetensors", "tokenizer.json", "generation_config.json"]:
        assert (tiny_random_base / name).is_file(), name
    loaded = AutoTokenizer.from_pretrained(tiny_random_base)
    expected = build_tokenizer().apply_chat_template(CHAT, tokenize=False)
    assert loaded.apply_chat_template(CHAT, tokenize=False) == expected
    assert loaded.decode(loaded("copy: abc\n")["input_ids"]) == "copy: abc\n"
    model = AutoModelForCausalLM.from_pretrained(tiny_random_base)
    assert model.config.model_type == "qwen2"
    assert model.generation_config.eos_token_id == loaded.eos_token_id == 258
    assert model.generation_config.pad_token_id == loaded.pad_token_id == 256
    manifest = json.loads((tiny_random_base / "honed_tiny.json").read_text())
    assert manifest["recipe"] == RECIPE_VERSION
    assert manifest["pretrained"] is False and manifest["steps"] == 0


def test_build_is_deterministic_for_a_seed(tmp_path):
    from safetensors.torch import load_file

    def weights(name, seed):
        return load_file(build_tiny_model(tmp_path / name, pretrain=False, seed=seed)
                         / "model.safetensors")

    first, again, other = weights("a", 1), weights("b", 1), weights("c", 2)
    assert all((first[k] == again[k]).all() for k in first)
    assert any((first[k] != other[k]).any() for k in first)


def test_build_refuses_a_non_empty_directory_and_leaves_nothing_behind(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_tiny_model(out, pretrain=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_failed_build_leaves_no_directory(tmp_path, monkeypatch):
    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    from transformers import PreTrainedTokenizerFast

    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", broken_save)
    with pytest.raises(OSError, match="disk full"):
        build_tiny_model(tmp_path / "model", pretrain=False)
    assert list(tmp_path.iterdir()) == []


def test_a_short_pretraining_records_what_it_reached(tmp_path, monkeypatch):
    from honed.models import pretrain

    # Small batches and eval sets: this checks the wiring, not what the model learns.
    short = functools.partial(pretrain.pretrain, batch_size=8, eval_n=20)
    monkeypatch.setattr(pretrain, "pretrain", short)
    out = build_tiny_model(tmp_path / "m", families=["arithmetic"], steps=2, seed=0)
    manifest = json.loads((out / "honed_tiny.json").read_text())
    assert manifest["pretrained"] is True
    assert manifest["families"] == ["arithmetic"] and manifest["steps"] == 2
    assert 0.0 <= manifest["exact_match"]["arithmetic"] <= 1.0
    assert manifest["seconds"] > 0


def test_rebuild_builds_once_under_concurrency_and_is_cached(tmp_path, monkeypatch):
    calls = []
    real_build = tiny.build_tiny_model

    def fast_build(out_dir, **kwargs):
        calls.append(out_dir)
        return real_build(out_dir, pretrain=False)

    monkeypatch.setattr(tiny, "build_tiny_model", fast_build)
    # Separate open file descriptions conflict under flock even within one process, so
    # threads exercise the same lock two processes would.
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(rebuild_tiny_base(tmp_path / "cache")))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = tmp_path / "cache" / "tiny-base" / RECIPE_VERSION
    assert results == [expected] * 3
    assert len(calls) == 1
    assert rebuild_tiny_base(tmp_path / "cache") == expected and len(calls) == 1


def test_rebuild_uses_honed_cache_and_clears_debris_of_killed_builds(tmp_path, monkeypatch):
    real_build = tiny.build_tiny_model
    monkeypatch.setattr(tiny, "build_tiny_model", lambda out, **kw: real_build(out, pretrain=False))
    monkeypatch.setenv("HONED_CACHE", str(tmp_path))
    debris = tmp_path / "tiny-base" / f".staging-{RECIPE_VERSION}-abc"
    debris.mkdir(parents=True)
    path = rebuild_tiny_base()
    assert path == tmp_path / "tiny-base" / RECIPE_VERSION
    assert (path / "honed_tiny.json").is_file() and not debris.exists()


def test_command_line_builds_a_model_directory(tmp_path, capsys):
    tiny.main([str(tmp_path / "out"), "--no-pretrain", "--seed", "3"])
    manifest = json.loads((tmp_path / "out" / "honed_tiny.json").read_text())
    assert manifest["seed"] == 3 and manifest["pretrained"] is False
    assert "tiny base written to" in capsys.readouterr().out


@pytest.mark.slow
def test_pretrained_tiny_base_knows_its_families(tmp_path_factory):
    """The cached base reaches >= 90% held-out exact match on what it was pretrained on."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from honed.data.synthetic import generate
    from honed.evaluation.exact_match import exact_match

    path = tiny_base()
    manifest = json.loads((path / "honed_tiny.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    for family in manifest["families"]:
        # The first 300 prompts of the seed are the ones pretraining held out.
        score = exact_match(model, tokenizer, generate(family, 300, seed=manifest["seed"]))
        assert score >= 0.9, (family, score)
        assert manifest["exact_match"][family] >= 0.9


def test_built_directory_is_readable_by_others_as_the_umask_allows(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    out = build_tiny_model(tmp_path / "m", pretrain=False)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask


def test_the_tiny_base_is_the_shipped_build_of_this_recipe_and_loads(tmp_path):
    """Every machine gets the same bytes: tiny_base() is the build shipped in the package,
    made by this recipe, and 'honed init --base tiny' copies exactly those bytes."""
    from transformers import AutoModelForCausalLM

    from honed.workspace import init_workspace

    def sha256_file(p):
        return hashlib.sha256(p.read_bytes()).hexdigest()

    path = tiny_base()
    assert path == shipped_tiny_base()
    manifest = json.loads((path / "honed_tiny.json").read_text())
    assert manifest["recipe"] == RECIPE_VERSION and manifest["pretrained"] is True
    model = AutoModelForCausalLM.from_pretrained(path)
    assert sum(p.numel() for p in model.parameters()) == manifest["parameters"]
    ws = init_workspace(tmp_path / "ws", base="tiny")
    copied = ws.bases_dir / "v0" / "model.safetensors"
    assert sha256_file(copied) == sha256_file(path / "model.safetensors")


@pytest.mark.slow
@pytest.mark.long  # pretrains the tiny model again: about 7 minutes on two cores, beyond CI's budget
def test_a_rebuild_from_the_recipe_still_reaches_the_shipped_skills(tmp_path):
    """The recipe stays runnable: rebuilt here it knows its families as the shipped build
    does. Not bit-identical (thread counts and library versions change the numbers, which
    is why the weights are shipped), so the bar is the shipped score less 35 points for
    arithmetic (a fresh machine once rebuilt it to 64% where the shipped build has 94%),
    and copying stays near perfect."""
    shipped = json.loads((shipped_tiny_base() / "honed_tiny.json").read_text())
    rebuilt = json.loads((build_tiny_model(tmp_path / "rebuilt") / "honed_tiny.json").read_text())
    assert rebuilt["families"] == shipped["families"] and rebuilt["steps"] == shipped["steps"]
    assert rebuilt["exact_match"]["copy"] >= 0.9, rebuilt
    assert rebuilt["exact_match"]["arithmetic"] >= shipped["exact_match"]["arithmetic"] - 0.35, rebuilt
