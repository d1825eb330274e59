"""Options declared once (mvm/options.py): every option of mvm-ingest, mvm-train and mvm-probe is a
documented dataclass field with a range or choices, the CLIs are generated from those fields, and
the declarations decide what a resume may change and what a file may hold."""

from __future__ import annotations

import typing

import click
import pytest
from _ingest_helpers import ingest
from click.testing import CliRunner

from mvm.ingest.config import IngestConfig
from mvm.options import base_kind, click_options, leaves, value_problem
from mvm.probe.cli import ProbeOptions
from mvm.train.checkpoint import DATA_FIELDS, RUN_CONTROL_FIELDS, resumed_config
from mvm.train.config import PRESETS, TrainConfig, apply_overrides, from_dict, get_field, to_dict

OPTION_CLASSES = (TrainConfig, IngestConfig, ProbeOptions)


def numeric(kind) -> bool:
    kind = base_kind(kind)
    return kind in (int, float) or all(arg in (int, float) for arg in typing.get_args(kind) or (None,))


@pytest.mark.parametrize("cls", OPTION_CLASSES, ids=lambda cls: cls.__name__)
def test_every_field_is_declared_with_a_range_or_choices_and_generates_its_flag(cls):
    @click.command()
    @click_options(cls)
    def command(**_):
        pass

    params = {param.name: param for param in command.params}
    for item in leaves(cls):
        assert "option" in item.field.metadata, f"{item.name} is not declared with option()"
        assert item.doc, f"{item.name} has no docstring"
        if numeric(item.kind):
            assert item.spec.low is not None or item.spec.high is not None, f"{item.name} has no range"
        elif base_kind(item.kind) is str:
            assert item.spec.choices or item.spec.free_text, f"{item.name}: choices, or free_text=True"
        param = params.pop(item.name.replace(".", "__"), None)
        assert (param is not None) == item.spec.flag, item.name
        if param is not None:
            assert param.help.startswith(item.doc)
            if item.spec.choices:
                assert tuple(param.type.choices) == item.spec.choices
    assert not params  # every flag is a declared field


def test_generated_flags_enforce_the_declared_range():
    @click.command()
    @click_options(ProbeOptions)
    def command(**values):
        click.echo(repr(values["seeds"]))

    required = ["--checkpoint", "c", "--train-shards", "t", "--val-shards", "v", "--out", "o"]
    assert CliRunner().invoke(command, [*required, "--seeds", "2"]).output == "2\n"
    for value, message in (("0", "must be >= 1, got 0"), ("2.5", "'2.5' is not a valid int")):
        result = CliRunner().invoke(command, [*required, "--seeds", value])
        assert result.exit_code == 2 and message in result.output
    result = CliRunner().invoke(command, [*required, "--stopped-speed", "nan"])
    assert result.exit_code == 2 and "must be a finite number" in result.output


@pytest.mark.parametrize("name", PRESETS)
def test_presets_satisfy_every_declaration(name):
    config = PRESETS[name]()
    assert [
        item.name for item in leaves(TrainConfig) if value_problem(item, get_field(config, item.name))
    ] == []


def changed(item, value):
    """A value of `item` other than `value` that its declaration still accepts."""
    kind = base_kind(item.kind)
    if kind is bool:
        return not value
    if item.spec.choices:
        return next(choice for choice in item.spec.choices if choice != value)
    if kind is str:
        return value + "-other"
    if isinstance(value, tuple):
        return tuple(number / 2 for number in value)
    return value / 2 if kind is float else value + 1


def test_resume_takes_exactly_the_resume_may_change_fields_from_the_command_line():
    saved = apply_overrides(PRESETS["tiny"](), {"model": {"clip_len": 8, "image_size": [32, 64]}})
    saved = apply_overrides(saved, {"data": {"shards": "shards/train"}, "probe_shards": "shards/val"})
    requested = apply_overrides(
        saved,
        {"data": {"shards": "shards/train"}}
        | {
            item.name: changed(item, get_field(saved, item.name))
            for item in leaves(TrainConfig)
            if item.name not in DATA_FIELDS and "." not in item.name
        },
    )
    for section in ("model", "data", "optim"):
        requested = apply_overrides(
            requested,
            {
                section: {
                    item.name.split(".")[1]: changed(item, get_field(saved, item.name))
                    for item in leaves(TrainConfig)
                    if item.name.startswith(f"{section}.") and item.name not in DATA_FIELDS
                }
            },
        )
    resumed, ignored = resumed_config(requested, to_dict(saved))
    for item in leaves(TrainConfig):
        if item.name in DATA_FIELDS:
            continue
        source = requested if item.name in RUN_CONTROL_FIELDS else saved
        assert get_field(resumed, item.name) == get_field(source, item.name), item.name
        assert (item.name in ignored) == (item.name not in RUN_CONTROL_FIELDS), item.name
    assert {"steps", "device", "probe_clips"} <= set(RUN_CONTROL_FIELDS)
    assert not {"seed", "preset", "optim.lr", "model.depth"} & set(RUN_CONTROL_FIELDS)


def test_a_legacy_value_fills_a_field_an_old_config_lacks():
    declared = {item.name: item.spec.legacy for item in leaves(TrainConfig) if item.spec.has_legacy}
    assert declared == {"model.input_norm": False}
    saved = to_dict(TrainConfig())
    del saved["model"]["input_norm"]
    assert from_dict(saved).model.input_norm is False and TrainConfig().model.input_norm is True


def test_scene_list_file_that_is_binary_is_a_one_line_usage_error(dataroot, tmp_path):
    binary = tmp_path / "scenes.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    result = ingest(dataroot, tmp_path / "out", scenes=f"@{binary}")
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and str(binary) in error[0] and "not readable text" in error[0]
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()
