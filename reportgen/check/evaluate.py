"""Evaluating the rules on a report folder (and its baseline): frozen results, one per rule and scope. Each rule
of `rules.RULES` is evaluated by the function here named after it (`_min_accuracy` for `min_accuracy`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reportgen.check.rules import RULES, Rule, rule_list
from reportgen.errors import InputError
from reportgen.report_folder import facts, read
from reportgen.report_folder.schema import Heatmap, Report

EXIT_PASSED = 0


EXIT_FAILED = 3  # a rule failed; 1 is an internal error and 2 bad input, as everywhere in reportgen


PASS, FAIL, NOT_EVALUATED = "pass", "fail", "not evaluated"


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


def _max_label_issues(rule: Rule, new: read.ReportFolder, old: read.ReportFolder | None) -> list[RuleResult]:
    health = new.report.data_health
    if health is None or health.label_issue_share is None:
        return [_not_evaluated(rule, "the report has no data_health section with labelled images (add the "
                                     "data_health section and put images in folders named after their class)")]
    share = health.label_issue_share
    items = [str(entry.get("image")) for entry in (new.report.raw.get("data_health") or {}).get("label_issues", [])]
    return [_result(rule, share, _within(rule, share), f"{health.label_issue_count} suspected label errors of "
                    f"{health.labelled} labelled images (confident learning)", items)]


def _max_duplicates_across_classes(rule: Rule, new: read.ReportFolder, old: read.ReportFolder | None
                                   ) -> list[RuleResult]:
    health = new.report.data_health
    if health is None:
        return [_not_evaluated(rule, "the report has no data_health section")]
    pairs = [entry for entry in (new.report.raw.get("data_health") or {}).get("duplicates", [])
             if entry.get("across_classes")]
    items = [" = ".join(str(name) for name in entry.get("images", [])) for entry in pairs]
    count = health.duplicates_across_classes
    return [_result(rule, count, _within(rule, count), f"{count} near-duplicate pairs with different labels, of "
                    f"{health.duplicate_count} pairs", items)]


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


def _evaluator(name: str) -> Callable[[Rule, read.ReportFolder, read.ReportFolder | None], list[RuleResult]]:
    """The function that evaluates the rule `name` of `rules.RULES`: the one here named after it."""
    return globals()[f"_{name}"]


EVALUATORS = {name: _evaluator(name) for name in RULES}  # a rule without its function fails at import


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
