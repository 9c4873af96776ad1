"""Settings: honed.toml, then HONED_* environment, then flags; errors name the key."""

from __future__ import annotations

import tomllib

import pytest

from honed.config import (
    Settings,
    SettingsError,
    env_overrides,
    load_settings,
    parse_assignments,
    render_commented_toml,
    update_config_file,
)
from honed.config.models import split_endpoint


def test_layers_apply_in_order_file_then_environment_then_flags(tmp_path, monkeypatch):
    (tmp_path / "honed.toml").write_text("[train]\nlr = 0.1\nbatch_size = 4\nepochs = 2\n")
    monkeypatch.setenv("HONED_TRAIN__LR", "0.2")
    monkeypatch.setenv("HONED_TRAIN__BATCH_SIZE", "8")
    settings = load_settings(tmp_path, parse_assignments(["train.lr=0.3"]))
    assert settings.train.lr == 0.3  # flag beats environment beats file
    assert settings.train.batch_size == 8  # environment beats file
    assert settings.train.epochs == 2  # file beats default


def test_environment_values_are_parsed_as_toml_and_unrelated_variables_ignored():
    env = {"HONED_LORA__TARGET_MODULES": '["q_proj", "v_proj"]', "HONED_WORKSPACE": "/x",
           "HONED_STORE__URL": "postgresql+psycopg://u@h/db", "PATH": "/bin"}
    assert env_overrides(env) == {"lora": {"target_modules": ["q_proj", "v_proj"]},
                                  "store": {"url": "postgresql+psycopg://u@h/db"}}


def test_a_wrong_value_names_key_value_origin_and_allowed(tmp_path):
    (tmp_path / "honed.toml").write_text("[ingest]\nmode = 'loose'\n")
    with pytest.raises(SettingsError) as err:
        load_settings(tmp_path)
    message = str(err.value)
    assert "honed.toml" in message and "ingest.mode = 'loose'" in message
    assert "'strict' or 'lenient'" in message


def test_out_of_range_and_unknown_keys_are_errors():
    with pytest.raises(SettingsError, match=r"command line: train.heldout_fraction = 0.7 .*less than 0.5"):
        load_settings(None, parse_assignments(["train.heldout_fraction=0.7"]))
    with pytest.raises(SettingsError, match="unknown key 'lora.rank'"):
        load_settings(None, parse_assignments(["lora.rank=8"]))


def test_engine_urls_must_be_http_base_urls_and_the_error_names_the_key(tmp_path):
    (tmp_path / "honed.toml").write_text("[deploy]\nollama_url = 'localhost:11434'\n")
    with pytest.raises(SettingsError, match=r"honed.toml: deploy.ollama_url = 'localhost:11434' .*http:// or https://"):
        load_settings(tmp_path)
    with pytest.raises(SettingsError, match=r"deploy.llama_cpp_url = 'ftp://h:8080' .*http:// or https://"):
        load_settings(None, parse_assignments(["deploy.llama_cpp_url=ftp://h:8080"]))
    with pytest.raises(SettingsError, match=r"deploy.llama_cpp_url = 'http://h:8080/v1'"):  # a path: a typo
        load_settings(None, parse_assignments(["deploy.llama_cpp_url=http://h:8080/v1"]))
    good = load_settings(None, parse_assignments(["deploy.llama_cpp_url=http://127.0.0.1:8080/",
                                                  "deploy.ollama_url=https://[::1]:11434"]))
    assert good.deploy.llama_cpp_url == "http://127.0.0.1:8080" and good.deploy.ollama_url == "https://[::1]:11434"


def test_preference_objectives_under_several_processes_refuse_sharding_and_say_what_works():
    with pytest.raises(SettingsError, match=r"objective = 'kto' with several trainer processes .*distributed = 'ddp'"):
        load_settings(None, parse_assignments(["train.objective=kto", "train.nproc=2", "train.distributed=fsdp"]))
    assert load_settings(None, parse_assignments(["train.objective=kto", "train.nproc=2"])).train.distributed == "ddp"
    with pytest.raises(SettingsError, match=r"objective = 'dpo' with several trainer processes"):
        load_settings(None, parse_assignments(["train.objective=dpo", "train.nnodes=2", "train.distributed=fsdp",
                                               "train.rdzv_endpoint=10.0.0.5:29400"]))


def test_several_machines_need_the_rendezvous_endpoint_as_host_and_port():
    for given in ("", "10.0.0.5", "10.0.0.5:port", ":29400", "10.0.0.5:70000"):
        with pytest.raises(SettingsError, match=r"train.nnodes = 2: train.rdzv_endpoint = .*expected HOST:PORT"):
            load_settings(None, parse_assignments(["train.nnodes=2", f"train.rdzv_endpoint={given}"]))
    train = load_settings(None, parse_assignments(["train.nnodes=3", "train.nproc=2",
                                                   "train.rdzv_endpoint=gpu-a.lan:29400"])).train
    assert train.world_size == 6
    assert split_endpoint("[fd00::5]:29400") == ("fd00::5", 29400)


def test_set_needs_key_equals_value():
    with pytest.raises(SettingsError, match="expected KEY=VALUE"):
        parse_assignments(["train.lr"])


def test_commented_toml_documents_every_key_and_loads_back_to_the_same_settings():
    settings = Settings(base="/models/x")
    text = render_commented_toml(settings)
    assert Settings.model_validate(tomllib.loads(text)) == settings
    for section in ("store", "ingest", "lora", "train"):
        model = type(getattr(settings, section))
        for key, field in model.model_fields.items():
            assert f"# {field.description}\n{key} = " in text, f"{section}.{key} undocumented"


def test_tracks_have_their_own_gates_and_eval_sets(tmp_path):
    text = render_commented_toml(Settings())
    (tmp_path / "honed.toml").write_text(text + """
[tracks.support-bot.gates]
require_approval = true
rules = [{ set = "heldout", scorer = "exact_match", min = 0.5 }]

[[tracks.support-bot.eval_sets]]
name = "tickets"
path = "evals/tickets.jsonl"
scorers = ["json"]
required_fields = ["priority"]
""")
    settings = load_settings(tmp_path)
    own = settings.gates_for("support-bot")
    assert own.require_approval and own.rules[0].min == 0.5
    assert settings.gates_for("main") == settings.gates  # the workspace's defaults
    assert [s.name for s in settings.eval_sets_for("support-bot")] == ["tickets"]
    assert settings.eval_sets_for("main") == []
    (tmp_path / "honed.toml").write_text(text + "\n[tracks.x.gates]\nrequire_aproval = true\n")
    with pytest.raises(SettingsError, match="unknown key 'tracks.x.gates.require_aproval'"):
        load_settings(tmp_path)


COMMENTED_TOML = """\
# My workspace: trained nightly.
base = "tiny"  # the shipped base

[train]
# Tuned by hand on 2026-11-02; do not raise.
lr = 0.002  # peak
epochs   = 2.0

[learn.teacher]
# The local teacher.
model = "qwen"   # served by llama.cpp
max_tokens = 128
"""


def test_editing_the_file_keeps_comments_and_untouched_lines(tmp_path):
    path = tmp_path / "honed.toml"
    path.write_text(COMMENTED_TOML)
    update_config_file(tmp_path, {"learn": {"teacher": {"max_tokens": 256}}, "train": {"lr": 0.001}})
    before, after = COMMENTED_TOML.splitlines(), path.read_text().splitlines()
    changed = {i: (a, b) for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b}
    assert changed == {5: ("lr = 0.002  # peak", "lr = 0.001  # peak"),
                       11: ("max_tokens = 128", "max_tokens = 256")}
    assert load_settings(tmp_path).learn.teacher.max_tokens == 256


def test_a_wrong_edit_names_file_key_and_allowed_and_leaves_the_file_alone(tmp_path):
    path = tmp_path / "honed.toml"
    path.write_text(COMMENTED_TOML)
    with pytest.raises(SettingsError, match=r"honed.toml: learn.teacher.max_tokens = 0 is not allowed: "
                                            r"Input should be greater than 0"):
        update_config_file(tmp_path, {"learn": {"teacher": {"max_tokens": 0}}})
    with pytest.raises(SettingsError, match=r"honed.toml: ingest.mode = 'loose' is not allowed: "
                                            r"'strict' or 'lenient'"):
        update_config_file(tmp_path, {"ingest": {"mode": "loose"}})
    with pytest.raises(SettingsError, match="honed.toml: unknown key 'train.lrr'"):
        update_config_file(tmp_path, {"train": {"lrr": 0.1}})
    assert path.read_text() == COMMENTED_TOML
