"""The rules language of `reportgen check`: the rules a report can be held to (`RULES`), and reading them from a
`--rules` file or a config's `[check]` table, every mistake an exit-2 error naming the key."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reportgen.errors import InputError


@dataclass(frozen=True)
class RuleSpec:
    """What a rule name means: its threshold's kind and range, and whether it compares with a baseline."""

    name: str
    description: str
    kind: str  # "share" (0..1), "number", "count" (integer >= 0), "flag" (true/false), "correlation" (-1..1)
    baseline: bool = False
    higher_is_better: bool = False  # min_* rules: the value must be at least the threshold


RULES: dict[str, RuleSpec] = {spec.name: spec for spec in (
    RuleSpec("min_accuracy", "top-1 accuracy on the report's labelled images is at least this (0-1)", "share",
             higher_is_better=True),
    RuleSpec("max_accuracy_drop", "the baseline's accuracy minus this report's, on the labelled images in both, is "
                                  "at most this (0.05: five percentage points)", "number", baseline=True),
    RuleSpec("max_ece", "expected calibration error of the top-1 probability (15 bins) is at most this (0-1)",
             "share"),
    RuleSpec("max_dead_filters", "share of dead filters (filter patterns) and of channels zero on every image "
                                 "(feature maps) is at most this: a number for all layers together, or "
                                 "{overall = X, per_layer = Y}", "dead"),
    RuleSpec("cam_sanity", "every CAM method passes the model-randomisation check (true to require it)", "flag"),
    RuleSpec("max_deletion_auc_increase", "per CAM method, the mean deletion AUC of the maps in both reports rose "
                                          "by at most this against the baseline", "number", baseline=True),
    RuleSpec("max_flipped_predictions", "images whose top prediction changed against the baseline: at most this "
                                        "many", "count", baseline=True),
    RuleSpec("max_label_issues", "share of the labelled images that data health suspects of a wrong label "
                                 "(confident learning) is at most this (0-1)", "share"),
    RuleSpec("max_duplicates_across_classes", "near-duplicate pairs of images with different labels (leakage or "
                                              "label errors; data health) are at most this many", "count"),
    RuleSpec("min_cam_correlation", "mean correlation between the baseline's and this report's class activation "
                                    "maps (as reportgen diff computes it) is at least this (from -1 to 1; needs "
                                    "--save-arrays in both)", "correlation", baseline=True, higher_is_better=True),
)}


DEAD_SCOPES = ("overall", "per_layer")


@dataclass(frozen=True)
class Rule:
    """One rule as configured: a name from RULES and its threshold (for max_dead_filters, one per scope)."""

    name: str
    threshold: float | int | bool
    scope: str | None = None  # max_dead_filters: "overall" or "per_layer"

    @property
    def spec(self) -> RuleSpec:
        return RULES[self.name]

    @property
    def label(self) -> str:
        return self.name + (f" ({self.scope.replace('_', ' ')})" if self.scope else "")


def rule_list() -> str:
    """Every rule name with what it means, one per line, for error messages and --help."""
    return "\n".join(f"  {spec.name}: {spec.description}" for spec in RULES.values())


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_range(name: str, value: Any, low: float, high: float, where: str) -> float:
    if not _number(value) or not low <= value <= high:
        raise InputError(f"{where}: {name} must be a number from {low:g} to {high:g}, got {value!r}")
    return float(value)


def parse_rules(table: Mapping[str, Any], where: str = "--rules") -> tuple[Rule, ...]:
    """The rules of a `[check]` table, validated: an unknown name, a rule given twice (`min_accuracy` and
    `min-accuracy`) or a threshold of the wrong kind is bad input."""
    unknown = [str(k) for k in table if str(k).replace("-", "_") not in RULES]
    if unknown:
        raise InputError(f"{where}: unknown rule {', '.join(repr(k) for k in unknown)}; the rules are:\n"
                         + rule_list())
    _refuse_twice(table, where)
    rules: list[Rule] = []
    for key, value in table.items():
        spec = RULES[str(key).replace("-", "_")]
        name = spec.name
        if spec.kind == "share":
            rules.append(Rule(name, _check_range(name, value, 0.0, 1.0, where)))
        elif spec.kind == "correlation":
            rules.append(Rule(name, _check_range(name, value, -1.0, 1.0, where)))
        elif spec.kind == "number":
            if not _number(value):
                raise InputError(f"{where}: {name} must be a number, got {value!r}")
            rules.append(Rule(name, float(value)))
        elif spec.kind == "count":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(f"{where}: {name} must be a whole number of images (0 or more), got {value!r}")
            rules.append(Rule(name, value))
        elif spec.kind == "flag":
            if not isinstance(value, bool):
                raise InputError(f"{where}: {name} must be true or false, got {value!r}")
            if value:
                rules.append(Rule(name, True))
        else:  # max_dead_filters: a share for all layers, or a table by scope
            scopes = value if isinstance(value, Mapping) else {"overall": value}
            bad = [str(s) for s in scopes if str(s).replace("-", "_") not in DEAD_SCOPES]
            if bad or not scopes:
                raise InputError(f"{where}: {name} takes a share (0-1) or a table with the keys "
                                 f"{' and '.join(DEAD_SCOPES)}, got {value!r}")
            _refuse_twice(scopes, f"{where}: {name}")
            for scope, share in scopes.items():
                scope = str(scope).replace("-", "_")
                rules.append(Rule(name, _check_range(f"{name}.{scope}", share, 0.0, 1.0, where), scope))
    return tuple(rules)


def _refuse_twice(table: Mapping[str, Any], where: str) -> None:
    """A key given twice under its two spellings (`min_accuracy` and `min-accuracy`) is one rule set twice."""
    seen: dict[str, str] = {}
    for key in table:
        name = str(key).replace("-", "_")
        if name in seen:
            raise InputError(f"{where}: {seen[name]!r} and {str(key)!r} are the same rule set twice; keep one")
        seen[name] = str(key)


RULES_FILE = "a TOML file of rules such as min_accuracy = 0.9"


def _rules_of(table: Mapping[str, Any], where: str) -> tuple[Rule, ...]:
    """The rules of a table that must hold at least one rule that is on."""
    rules = parse_rules(table, where)
    if rules:
        return rules
    if table:  # only `cam_sanity = false`: every rule given is switched off
        off = ", ".join(f"{key} = false" for key in table)
        raise InputError(f"{where}: {off} switches off the only rule given, so there is nothing to check; set it "
                         "to true or add a rule; the rules are:\n" + rule_list())
    raise InputError(f"{where}: holds no rules, so there is nothing to check; add one such as min_accuracy = 0.9; "
                     "the rules are:\n" + rule_list())


def read_rules_file(path: Path) -> tuple[Rule, ...]:
    """--rules FILE: a TOML file of rules, at the top level or in a `[check]` table (so a config file serves).

    With a `[check]` table the rules are those in it: a rule name at the top level beside it is an error (it
    would count for nothing), and so is any top-level key that is no config option."""
    from reportgen.config import config_keys
    from reportgen.userfiles import read_toml_file

    raw = read_toml_file(path, "--rules", RULES_FILE)
    table = raw.get("check")
    if not isinstance(table, Mapping):
        return _rules_of(raw, f"--rules {path}")
    for key in raw:
        name = str(key).replace("-", "_")
        if name in RULES:
            raise InputError(f"--rules {path}: rule {str(key)!r} is outside the [check] table, where it would count "
                             "for nothing; move it into [check] (a file with a [check] table takes its rules from "
                             "there)")
        if name != "check" and name not in config_keys():
            raise InputError(f"--rules {path}: unknown key {str(key)!r} outside the [check] table; beside [check] "
                             "only config options (seed, layers, ...) may stand; the rules are:\n" + rule_list())
    return _rules_of(table, f"--rules {path} [check]")


def read_config_rules(path: Path) -> tuple[Rule, ...]:
    """The `[check]` table of a --config file (its other keys are options, checked by `config.read_config_file`)."""
    from reportgen.userfiles import read_toml_file

    raw = read_toml_file(path, "--config", "a TOML file of options, a few lines long")
    table = raw.get("check")
    if not isinstance(table, Mapping):
        raise InputError(f"--config: {path} has no [check] table of rules; add one or give --rules FILE")
    return _rules_of(table, f"--config {path} [check]")


# ---------------------------------------------------------------------------------------------- evaluation
