"""Type and range of every value the plugin reads and of RecBole's common training keys.

One table, :data:`RULES`, maps a key to what it accepts; :func:`check_config_values` runs once
after the Config is built (``BiFairConfig.__init__``), before any data is read or any model is
built. A bad value raises :class:`~recbole_bifair.errors.ConfigKeyError` with one line naming
the key, the value, where it came from and what is allowed, e.g.::

    epochs = -1 (on the command line) is not allowed: epochs must be an integer >= 1

Without this, ``--epochs=-1`` trains nothing and reports an untrained model, and
``--learning_rate=abc`` or ``--topk=0`` end in a traceback deep inside torch or RecBole.
Keys missing from the config (e.g. a trainer's keys for another trainer) are not checked;
``None`` (``~``) is allowed only where the rule says so. The defaults themselves live in
``properties/*.yaml``, each documented beside its value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from recbole_bifair.errors import ConfigKeyError


@dataclass(frozen=True)
class Rule:
    """What a key accepts: ``accepts(value)`` and the words that say it (``allowed``)."""

    accepts: Callable[[object], bool]
    allowed: str


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(minimum: int) -> Rule:
    return Rule(lambda v: _is_integer(v) and v >= minimum, f"an integer >= {minimum}")


def number(minimum: float | None = None, above: float | None = None, maximum: float | None = None) -> Rule:
    """A finite real number, ``>= minimum`` or ``> above``, and ``<= maximum`` when given."""

    def accepts(value) -> bool:
        return (
            _is_number(value)
            and (minimum is None or value >= minimum)
            and (above is None or value > above)
            and (maximum is None or value <= maximum)
        )

    if minimum is not None and maximum is not None:
        words = f"a number in [{minimum}, {maximum}]"
    elif above is not None and maximum is not None:
        words = f"a number in ({above}, {maximum}]"
    elif above is not None:
        words = f"a number > {above}"
    elif minimum is not None:
        words = f"a number >= {minimum}"
    else:
        words = "a finite number"
    return Rule(accepts, words)


def fraction_open() -> Rule:
    return Rule(lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)")


def choice(*values: str, case_sensitive: bool = True) -> Rule:
    folded = {v if case_sensitive else v.lower() for v in values}

    def accepts(value) -> bool:
        return isinstance(value, str) and (value if case_sensitive else value.lower()) in folded

    return Rule(accepts, "one of " + ", ".join(values))


def boolean() -> Rule:
    return Rule(lambda v: isinstance(v, bool), "True or False")


def text() -> Rule:
    return Rule(lambda v: isinstance(v, str) and v != "", "a non-empty string")


def either(*rules: Rule) -> Rule:
    return Rule(lambda v: any(rule.accepts(v) for rule in rules), " or ".join(r.allowed for r in rules))


def optional(rule: Rule) -> Rule:
    return Rule(lambda v: v is None or rule.accepts(v), f"{rule.allowed} or ~ (None)")


def integer_list(minimum: int) -> Rule:
    """An integer or a non-empty list of integers, each >= ``minimum`` (RecBole's ``topk``)."""

    def accepts(value) -> bool:
        values = value if isinstance(value, list) else [value]
        return bool(values) and all(_is_integer(v) and v >= minimum for v in values)

    return Rule(accepts, f"an integer >= {minimum} or a list of them")


# key -> what it accepts. RecBole's common training/evaluation keys first, then the plugin's
# (properties/overall.yaml, model/*.yaml, trainer/*.yaml), grouped by the yaml that sets them.
RULES: dict[str, Rule] = {
    # --- RecBole: training and evaluation
    "epochs": integer(1),
    "train_batch_size": integer(1),
    "eval_batch_size": integer(1),
    "learning_rate": number(minimum=0),
    "weight_decay": number(minimum=0),
    "learner": choice("adam", "adamw", "sgd", "adagrad", "rmsprop", "sparse_adam", case_sensitive=False),
    "eval_step": integer(0),          # 0: no validation (RecBole saves every epoch)
    "stopping_step": integer(0),
    "topk": integer_list(1),
    "seed": integer(0),
    "reproducibility": boolean(),
    "use_gpu": boolean(),
    "show_progress": optional(boolean()),   # ~ = a bar when stderr is a terminal, else log lines
    "progress_log_steps": integer(0),
    "progress_log_seconds": number(minimum=0),
    "metric_decimal_place": integer(0),
    "loss_decimal_place": integer(0),
    "valid_metric": text(),
    "checkpoint_dir": text(),
    "data_path": Rule(lambda v: isinstance(v, str), "a folder path"),
    "worker": integer(0),
    "enable_amp": boolean(),
    "enable_scaler": boolean(),
    # --- plugin: evaluation (properties/overall.yaml)
    "fair_normaliser": choice("all", "group"),
    "pop_top_fraction": fraction_open(),
    "genre_rule": choice("first"),
    "fair_selection": optional(text()),
    "fair_selection_tolerance": number(minimum=0),
    # --- plugin: models (properties/model/*.yaml)
    "embedding_size": integer(1),
    "num_negatives": integer(1),
    "tau": number(above=0),
    "train_sampling": choice("user", "interaction"),
    "negative_scores": choice("auto", "dense", "sampled", "gather"),
    "precision": choice("fp32", "bf16"),
    "hidden_multiplier": either(choice("auto"), number(above=0)),
    "n_layers": integer(0),
    "llm_model": text(),
    "item_embedding_file": optional(text()),
    "title_template": text(),
    "eps": number(minimum=0),
    "lambda": number(minimum=0),
    "cl_tau": number(above=0),
    "layer_cl": integer(1),
    "reg_weight": either(number(minimum=0), Rule(
        lambda v: isinstance(v, list) and all(_is_number(x) and x >= 0 for x in v), "a list of them"
    )),  # a list in some RecBole models (HGN, SHAN)
    # --- plugin: trainers (properties/trainer/*.yaml)
    "fair_group": choice("pop", "genre"),
    "lr_schedule": choice("poly", "none"),
    "lr_power": number(minimum=0),
    "z_learning_rate": number(minimum=0),
    "z_weight_decay": number(minimum=0),
    "xi": either(choice("lr"), number(minimum=0)),
    "outer_batch": choice("same", "next"),
    "outer_every": integer(1),
    "fd_epsilon": number(above=0),
    "balance_entropy": boolean(),
    "min_group_share": number(minimum=0, maximum=1),
    "balance_norm": choice("none", "l2", "loss", "loss+"),
    "fw_max_iter": integer(1),
    "fw_tol": number(above=0),
    "group_grad_method": choice("auto", "batched", "loop"),
    "balance_space": choice("params", "embeddings"),
    "multifr_balance_norm": choice("none", "l2", "loss", "loss+"),
    "multifr_min_group_weight": number(minimum=0, maximum=1),
    "dro_eta": number(minimum=0),
    "dro_beta": number(minimum=0, maximum=1),
    "popdro_stages": integer(1),
    "popdro_strength": number(minimum=0),
    "popdro_trend": number(minimum=0, maximum=1),
    "popdro_alignment": number(minimum=0, maximum=1),
    "popdro_step_size": number(minimum=0),
    "itfr_rho": number(minimum=0),
    "itfr_eta": number(minimum=0),
    "itfr_gamma": number(minimum=0),
}


def describe_source(key: str, sources: dict[str, dict]) -> str:
    """Where the value of ``key`` came from: the first user layer that sets it, else a default."""
    for where, values in sources.items():
        if key in values:
            return where
    return "a default in properties/*.yaml"


def check_config_values(config, sources: dict[str, dict] | None = None) -> None:
    """Raise :class:`ConfigKeyError` for the first key in :data:`RULES` whose value is refused.

    ``sources`` maps a description ("on the command line", "in my.yaml") to the values that
    layer set, highest priority first; it only words the message.
    """
    final = config.final_config_dict
    for key, rule in RULES.items():
        if key not in final:
            continue
        value = final[key]
        if not rule.accepts(value):
            where = describe_source(key, sources or {})
            raise ConfigKeyError(
                f"{key} = {value!r} ({where}) is not allowed: {key} must be {rule.allowed}"
            )
