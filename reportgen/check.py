"""`reportgen check`: rules a report must meet, evaluated on its report.json (and arrays.npz where a rule needs it).

Pure evaluation: report folders in (read with `reportgen.report_folder.read`, the one reader of report.json), frozen
results out. Printing them as a table, Markdown or JSON is `reportgen.check_render`'s job.

A rule's number the report does not hold (no labels, no cam section, no baseline, no arrays) makes the rule
"not evaluated", never a pass and never a failure; `strict` turns that into a failure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reportgen.errors import InputError
from reportgen.report_folder import facts, read
from reportgen.report_folder.schema import Heatmap, Report

EXIT_PASSED = 0
EXIT_FAILED = 3  # a rule failed; 1 is an internal error and 2 bad input, as everywhere in reportgen

PASS, FAIL, NOT_EVALUATED = "pass", "fail", "not evaluated"


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


@dataclass(frozen=True)
class RuleResult:
    """The outcome of one rule on one source of its number."""

    rule: str
    scope: str | None
    status: str  # PASS, FAIL or NOT_EVALUATED
    value: float | int | None  # None when not evaluated
    threshold: float | int | bool
    comparison: str  # ">=", "<=" or "=="
    detail: str  # what the value is, or why it was not evaluated
    items: tuple[str, ...] = ()  # the names behind a failure: flipped images, layers over the limit, methods
    source: str | None = None  # where the number comes from when a rule has several (filter patterns, ...)

    @property
    def label(self) -> str:
        parts = [p for p in (self.scope.replace("_", " ") if self.scope else None, self.source) if p]
        return self.rule + (f" ({', '.join(parts)})" if parts else "")


@dataclass(frozen=True)
class CheckResult:
    """Every rule's result on a report, against an optional baseline."""

    report: str  # the report's label (model name and version)
    report_path: str
    baseline: str | None
    baseline_path: str | None
    results: tuple[RuleResult, ...]
    strict: bool
    warnings: tuple[str, ...] = ()  # e.g. a baseline of an unrelated model: shown above the table

    @property
    def failures(self) -> tuple[RuleResult, ...]:
        """Rules that failed; with `strict`, those not evaluated too."""
        return tuple(r for r in self.results if r.status == FAIL or (self.strict and r.status == NOT_EVALUATED))

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        return EXIT_PASSED if self.passed else EXIT_FAILED

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)


# ------------------------------------------------------------------------------------------------- the rules


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


def _result(rule: Rule, value: float | int, passed: bool, detail: str, items: Sequence[str] = (),
            source: str | None = None) -> RuleResult:
    return RuleResult(rule.name, rule.scope, PASS if passed else FAIL, value, rule.threshold,
                      ">=" if rule.spec.higher_is_better else ("==" if rule.spec.kind == "flag" else "<="),
                      detail, tuple(items), source)


def _within(rule: Rule, value: float) -> bool:
    return value >= rule.threshold if rule.spec.higher_is_better else value <= rule.threshold


def _not_evaluated(rule: Rule, why: str, source: str | None = None) -> RuleResult:
    comparison = ">=" if rule.spec.higher_is_better else ("==" if rule.spec.kind == "flag" else "<=")
    return RuleResult(rule.name, rule.scope, NOT_EVALUATED, None, rule.threshold, comparison, why, (), source)


def _no_predictions(report: Report) -> str:
    if not facts.predictions(report):
        return "the report has no predictions section"
    return "no image has a label that is one of the model's classes"


def _min_accuracy(rule: Rule, new: read.ReportFolder, old: read.ReportFolder | None) -> list[RuleResult]:
    accuracy = facts.accuracy(new.report)
    if accuracy is None:
        return [_not_evaluated(rule, _no_predictions(new.report))]
    return [_result(rule, accuracy.value, _within(rule, accuracy.value), accuracy.text())]


def _prediction_changes(new: read.ReportFolder, old: read.ReportFolder) -> list[Any] | str:
    """The images in both reports, with both top predictions; or why there are none."""
    from reportgen.diff.compare import compare_predictions

    old_p, new_p = facts.predictions(old.report), facts.predictions(new.report)
    if not old_p or not new_p:
        which = " and ".join(role for role, p in (("the baseline", old_p), ("the report", new_p)) if not p)
        return f"{which} {'have' if ' and ' in which else 'has'} no predictions section"
    changes = compare_predictions(old_p, new_p, old.report.image_names, new.report.image_names)
    return changes or "no image is in both reports (images are matched by name)"


def _max_accuracy_drop(rule: Rule, new: read.ReportFolder, old: read.ReportFolder | None) -> list[RuleResult]:
    assert old is not None
    changes = _prediction_changes(new, old)
    if isinstance(changes, str):
        return [_not_evaluated(rule, changes)]
    labelled = [c for c in changes if c.old.correct is not None and c.new.correct is not None]
    if not labelled:
        return [_not_evaluated(rule, "no image in both reports has a label that is a class name")]
    before = sum(c.old.correct for c in labelled) / len(labelled)
    after = sum(c.new.correct for c in labelled) / len(labelled)
    drop = before - after
    return [_result(rule, drop, _within(rule, drop),
                    f"{before:.1%} → {after:.1%} on the {len(labelled)} labelled images in both reports")]


def _max_ece(rule: Rule, new: read.ReportFolder, old: read.ReportFolder | None) -> list[RuleResult]:
    """The report's own ECE over every labelled image (`evaluation.ece`, from the dataset pass's calibration
    accumulator), else the same accumulator over the predictions the report lists: one formula, one place."""
    from reportgen.techniques.evaluation import CALIBRATION_BINS, CalibrationAccumulator

    stored = new.report.ece
    if stored is not None:
        return [_result(rule, stored, _within(rule, stored), f"the report's calibration over every labelled image, "
                        f"{CALIBRATION_BINS} bins")]
    labelled = [p for p in facts.predictions(new.report).values()
                if p.correct is not None and p.probability is not None]
    if not labelled:
        return [_not_evaluated(rule, _no_predictions(new.report))]
    confidence = np.array([p.probability for p in labelled])
    calibration = CalibrationAccumulator()
    calibration.update(confidence, np.array([p.correct for p in labelled]))
    ece = calibration.result().ece
    return [_result(rule, ece, _within(rule, ece),
                    f"top-1 probability against accuracy on {len(labelled)} labelled images, {CALIBRATION_BINS} "
                    f"bins; mean confidence {confidence.mean():.1%}")]


def _max_dead_filters(rule: Rule, new: read.ReportFolder, old: read.ReportFolder | None) -> list[RuleResult]:
    sources = (("filter patterns", facts.dead_filters(new.report), "filters"),
               ("feature maps", facts.dead_channels(new.report), "channels"))
    results = []
    for source, counts, unit in sources:
        counts = [c for c in counts if c.total]
        if not counts:
            continue
        if rule.scope == "per_layer":
            shares = [(c.count / c.total, c) for c in counts]
            worst_share, worst = max(shares, key=lambda s: s[0])
            over = [f"{c.layer}: {c.count} of {c.total}" for share, c in shares if not _within(rule, share)]
            results.append(_result(rule, worst_share, not over,
                                   f"worst layer {worst.layer}: {worst.count} of {worst.total} {unit} dead",
                                   over, source))
        else:
            dead, total = sum(c.count for c in counts), sum(c.total for c in counts)
            listed = [f"{c.layer}: {c.count} of {c.total}" for c in counts if c.count]
            results.append(_result(rule, dead / total, _within(rule, dead / total),
                                   f"{dead} of {total} {unit} dead in {len(counts)} layers", listed, source))
    return results or [_not_evaluated(rule, "the report has neither a filter_patterns nor a feature_maps section")]


def _cam_sanity(rule: Rule, new: read.ReportFolder, old: read.ReportFolder | None) -> list[RuleResult]:
    checks = facts.cam_sanity(new.report)
    if not checks:
        return [_not_evaluated(rule, "the report has no cam section with the model-randomisation check")]
    # Not passed: flagged (the maps survive re-initialisation), empty maps, or undetermined (nothing to compare).
    failed = [f"{c.method}: {c.status}" + (f" (rank correlation {c.correlation:.2f} with a randomised model)"
                                           if c.correlation is not None else "") for c in checks if not c.passed]
    detail = f"{len(checks) - len(failed)} of {len(checks)} methods pass"
    if any(c.status == "flagged" for c in checks):
        detail += "; flagged maps barely change when the weights are random"
    if any(c.status == "empty maps" for c in checks):
        detail += "; empty maps explain nothing"
    return [_result(rule, len(failed), not failed, detail, failed)]


def _map_entries(report: read.ReportFolder) -> dict[tuple[str, str, str], Heatmap]:
    from reportgen.diff.compare import keyed_maps

    return keyed_maps(report.report.image_names, report.report.heatmaps)


def _matched_maps(new: read.ReportFolder, old: read.ReportFolder) -> tuple[list, dict, dict] | str:
    old_e, new_e = _map_entries(old), _map_entries(new)
    if not old_e or not new_e:
        which = " and ".join(role for role, e in (("the baseline", old_e), ("the report", new_e)) if not e)
        return f"{which} {'have' if ' and ' in which else 'has'} no class activation maps (cam section)"
    both = [k for k in new_e if k in old_e]
    if not both:
        return "no map is in both reports (maps are matched by image name, class and method)"
    return both, old_e, new_e


def _max_deletion_auc_increase(rule: Rule, new: read.ReportFolder, old: read.ReportFolder | None
                               ) -> list[RuleResult]:
    assert old is not None
    matched = _matched_maps(new, old)
    if isinstance(matched, str):
        return [_not_evaluated(rule, matched)]
    both, old_e, new_e = matched
    by_method: dict[str, list[tuple[float, float]]] = {}
    for key in both:
        before, after = old_e[key].deletion_auc, new_e[key].deletion_auc
        if before is not None and after is not None:
            by_method.setdefault(key[2], []).append((before, after))
    if not by_method:
        return [_not_evaluated(rule, "no map in both reports has a deletion AUC")]
    increases = {m: float(np.mean([a for _, a in pairs]) - np.mean([b for b, _ in pairs]))
                 for m, pairs in by_method.items()}
    worst = max(increases, key=lambda m: increases[m])
    texts = [f"{m}: {np.mean([b for b, _ in by_method[m]]):.3f} → {np.mean([a for _, a in by_method[m]]):.3f} "
             f"({increases[m]:+.3f}, {len(by_method[m])} maps)" for m in increases]
    over = [t for m, t in zip(increases, texts, strict=True) if not _within(rule, increases[m])]
    return [_result(rule, increases[worst], not over,
                    f"largest for {worst}; mean deletion AUC (lower is better) over the maps in both reports",
                    over or texts)]


def _max_flipped_predictions(rule: Rule, new: read.ReportFolder, old: read.ReportFolder | None
                             ) -> list[RuleResult]:
    assert old is not None
    changes = _prediction_changes(new, old)
    if isinstance(changes, str):
        return [_not_evaluated(rule, changes)]
    flips = [c for c in changes if c.flipped]
    items = [f"{c.name}: {c.old.predicted} → {c.new.predicted}" + (f" ({c.verdict})" if c.verdict else "")
             for c in flips]
    verdicts = {v: sum(1 for c in flips if c.verdict == v) for v in ("fixed", "broken", "changed")}
    return [_result(rule, len(flips), _within(rule, len(flips)),
                    f"{len(flips)} of {len(changes)} images in both reports ({verdicts['fixed']} fixed, "
                    f"{verdicts['broken']} broken, {verdicts['changed']} changed between wrong classes)", items)]


def _min_cam_correlation(rule: Rule, new: read.ReportFolder, old: read.ReportFolder | None) -> list[RuleResult]:
    from reportgen.diff.compare import as_map, common_size, correlation

    assert old is not None
    missing = [role for role, r in (("the baseline", old), ("the report", new))
               if not r.has_arrays]
    if missing:
        return [_not_evaluated(rule, f"{' and '.join(missing)} {'have' if len(missing) > 1 else 'has'} no "
                                     "arrays.npz (generate with --save-arrays)")]
    matched = _matched_maps(new, old)
    if isinstance(matched, str):
        return [_not_evaluated(rule, matched)]
    both, old_e, new_e = matched
    values: list[tuple[float, tuple[str, str, str]]] = []
    for key in both:
        before = as_map(read.heatmap_array(old, old_e[key]))
        after = as_map(read.heatmap_array(new, new_e[key]))
        if before is not None and after is not None:
            values.append((correlation(*common_size(before, after)), key))
    finite = [(v, k) for v, k in values if math.isfinite(v)]
    if not finite:
        return [_not_evaluated(rule, "no pair of maps has both arrays with a pattern (non-constant) to correlate")]
    mean = float(np.mean([v for v, _ in finite]))
    lowest, key = min(finite, key=lambda vk: vk[0])
    constant = len(values) - len(finite)
    class_name = new_e[key].class_name or key[1]
    detail = (f"mean over {len(finite)} maps in both reports; lowest {lowest:.3f} for {key[0]}, class {class_name} "
              f"({key[2]})" + (f"; {constant} constant in one version, not counted" if constant else ""))
    low = sorted(finite, key=lambda vk: vk[0])
    items = [f"{k[0]} / {new_e[k].class_name or k[1]} / {k[2]}: {v:.3f}" for v, k in low
             if not _within(rule, v)]
    return [_result(rule, mean, _within(rule, mean), detail, items)]


EVALUATORS: dict[str, Callable[[Rule, read.ReportFolder, read.ReportFolder | None], list[RuleResult]]] = {
    "min_accuracy": _min_accuracy,
    "max_accuracy_drop": _max_accuracy_drop,
    "max_ece": _max_ece,
    "max_dead_filters": _max_dead_filters,
    "cam_sanity": _cam_sanity,
    "max_deletion_auc_increase": _max_deletion_auc_increase,
    "max_flipped_predictions": _max_flipped_predictions,
    "min_cam_correlation": _min_cam_correlation,
}


def warnings_of(report: read.ReportFolder, baseline: read.ReportFolder | None) -> tuple[str, ...]:
    """What a reader of the rules' results must know: a baseline of an unrelated model (as `diff` says it), image
    names that do not identify images."""
    found = [facts.ambiguity_warning(report.report, "the report")]
    if baseline is not None:
        found.insert(0, facts.unrelated_models(baseline.report, report.report, ("the baseline", "the report"),
                                              "the rules that compare them"))
        found.append(facts.ambiguity_warning(baseline.report, "the baseline"))
    return tuple(w for w in found if w)


def evaluate(report: read.ReportFolder, rules: Sequence[Rule], baseline: read.ReportFolder | None = None,
             strict: bool = False) -> CheckResult:
    """Every rule on `report` (a baseline rule against `baseline`), in the order given."""
    results: list[RuleResult] = []
    for rule in rules:
        if rule.spec.baseline and baseline is None:
            results.append(_not_evaluated(rule, "needs a baseline report (--baseline OLD_REPORT)"))
        else:
            results.extend(EVALUATORS[rule.name](rule, report, baseline))
    return CheckResult(report.label, str(report.path), baseline.label if baseline else None,
                       str(baseline.path) if baseline else None, tuple(results), strict,
                       warnings_of(report, baseline))


def check_report(report: str | Path | read.ReportFolder, rules: Sequence[Rule],
                 baseline: str | Path | read.ReportFolder | None = None, strict: bool = False) -> CheckResult:
    """Open the report folders (bad input if either is not a report) and evaluate `rules`. A folder already
    opened (`read_baseline`) is used as it was read, even if its path now holds another report."""
    if not rules:
        raise InputError("no rules to check: give --rules FILE (a TOML file such as min_accuracy = 0.9) or a "
                         "[check] table in --config; the rules are:\n" + rule_list())
    new = report if isinstance(report, read.ReportFolder) else read.read_report(report, "REPORT")
    old = baseline if isinstance(baseline, read.ReportFolder) or baseline is None else read_baseline(baseline)
    return evaluate(new, rules, old, strict)


def read_baseline(path: str | Path) -> read.ReportFolder:
    """The baseline report folder (bad input when it is not one), read now: its report.json in memory and its
    arrays.npz held open, so `generate -o OUT --check --baseline OUT` compares with the report OUT held before."""
    return read.read_report(path, "--baseline")
