"""The model keys: explicit values honoured, meaningless ones refused by name; ``precision``."""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch

from recbole_bifair.errors import ConfigKeyError
from recbole_bifair.model import precision, settings
from recbole_bifair.model.alpharec import hidden_width


@pytest.mark.parametrize(
    ("key", "value", "read"),
    [
        ("tau", 0, lambda config: settings.number(config, "tau", above=0)),
        ("tau", "abc", lambda config: settings.number(config, "tau", above=0)),
        ("num_negatives", 0, lambda config: settings.number(config, "num_negatives", int, minimum=1)),
        ("num_negatives", 2.5, lambda config: settings.number(config, "num_negatives", int, minimum=1)),
        ("num_negatives", True, lambda config: settings.number(config, "num_negatives", int, minimum=1)),
        ("train_sampling", "", lambda config: settings.choice(config, "train_sampling", ("user", "interaction"))),
        ("title_template", "", lambda config: settings.text(config, "title_template", "a template")),
        ("llm_model", None, lambda config: settings.text(config, "llm_model", "an encoder name")),
    ],
)
def test_meaningless_values_name_key_value_and_what_is_allowed(key, value, read):
    with pytest.raises(ConfigKeyError) as raised:
        read({key: value})
    message = str(raised.value)
    assert key in message and repr(value) in message and ("expected" in message)


def test_explicit_values_are_used_as_given():
    assert settings.number({"n_layers": 0}, "n_layers", int, minimum=0) == 0
    assert settings.number({"tau": 0.05}, "tau", above=0) == 0.05
    assert settings.text({"item_embedding_file": None}, "item_embedding_file", "a path", optional=True) is None
    assert hidden_width(384, 0.5) == 192
    for bad in (0, -1, 0.001, "wide", True):
        with pytest.raises(ConfigKeyError, match="hidden_multiplier"):
            hidden_width(384, bad)


def test_bf16_without_hardware_support_warns_once_and_runs_fp32(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger=precision.__name__):
        context = precision.autocast_context("bf16", torch.device("cpu"))
    assert context is contextlib.nullcontext
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "running fp32" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()
    assert precision.autocast_context("fp32", torch.device("cpu")) is contextlib.nullcontext


@pytest.mark.skipif(not precision.cpu_has_bf16(), reason="this CPU has no bf16 instructions")
def test_bf16_autocast_runs_the_projector_in_bf16_and_returns_float32():
    context = precision.autocast_context("bf16", torch.device("cpu"))
    layer = torch.nn.Linear(8, 4)
    inputs = torch.randn(3, 8)
    with context():
        output = layer(inputs)
    assert output.dtype == torch.bfloat16
    torch.testing.assert_close(output.float(), layer(inputs), rtol=2e-2, atol=2e-2)
