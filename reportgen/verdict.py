"""The verdict: the few findings a reviewer must read first, each with its evidence and a link to its section.

Built after every section from what they computed (and, for the checks no section owns, from techniques run
here): does the model look trained, does another preprocessing fit the labels better, which CAM method to trust,
which numbers come from too few images, and the warnings that say the model is broken. The page, summary.md and
report.json's `verdict` all show this one list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from reportgen import sample_sizes
from reportgen.analysis import Analysis
from reportgen.report import SectionResult

SEVERITIES = ("problem", "caution", "ok")  # in the order the page lists them
PROBE_IMAGES = 256  # labelled images the preprocessing probe runs on (a seeded sample of the labelled ones)
# The probe runs every candidate mode's forward pass over its images: at most this many FLOPs in all (about 10 s
# here), so VGG16 at 224 px would get 25 images, too few to decide, and is not probed.
PROBE_FLOPS = 4e12
PROBE_SAMPLE = "verdict/preprocess-probe"  # seed stream of that sample

# Existing warnings that say the model is broken, by a phrase of theirs: (phrase, severity, title), in rank order.
BROKEN = (
    ("NaN or Inf", "problem", "NaN or Inf values"),
    ("uniform output", "problem", "Outputs that prefer no class"),
    ("vanish", "caution", "Layers whose activations vanish"),
    ("dead units", "caution", "Dead channels"),
    ("dead filters", "caution", "Dead filters"),
)


@dataclass(frozen=True)
class Finding:
    check: str  # training, preprocessing, cam_trust, sample_size, broken
    severity: str  # one of SEVERITIES
    title: str
    evidence: str
    link: str | None = None  # "#section-id" on the page
    data: Mapping[str, Any] | None = None  # the numbers behind it, for report.json

    def to_manifest(self) -> dict[str, Any]:
        entry = asdict(self)
        entry["data"] = dict(self.data) if self.data else None
        return entry


def build_verdict(analysis: Analysis, results: Mapping[str, SectionResult], warnings: Sequence[str]
                  ) -> tuple[Finding, ...]:
    """Every finding, problems first."""
    weights = results.get("weights")
    known = {f"{layer}/{tensor}": distance
             for layer, tensor, distance in (weights.shared.get("initialiser_distances", ()) if weights else ())}
    untrained, training = _training(analysis, known)
    findings = [f for f in (training, _preprocessing(analysis), _cam_trust(analysis, results, untrained)) if f]
    findings += _sample_sizes(analysis, results)
    findings += _data_health(results)
    findings += _broken(warnings)
    return tuple(sorted(findings, key=lambda f: SEVERITIES.index(f.severity)))


def untrained_evidence(analysis: Analysis, known: Mapping[str, Any] | None = None) -> Any:
    """`techniques.untrained.TrainingEvidence` of the model against its fresh copy (None when it cannot be
    re-initialised), computed once per report; `known`: the weights section's distances, not measured again."""
    from reportgen.techniques.untrained import training_evidence, variable_pairs

    def compute() -> Any:
        try:
            fresh = analysis.fresh_layers
        except Exception:  # a custom layer that cannot be cloned: no comparison, and no claim
            return None
        return training_evidence(variable_pairs(analysis.layers, fresh), analysis.options.seed, known)

    return analysis.shared("training_evidence", compute)


def _confidence_text(analysis: Analysis) -> str:
    """Mean top-1 probability against chance, over the set (or the detail sample)."""
    classes = len(analysis.class_names.names)
    if analysis.dataset is not None:
        confidence = analysis.dataset.confidence[np.isfinite(analysis.dataset.confidence)]
    else:
        from reportgen.sections.predictions import PLAN_KEY

        plan = analysis.cache.get(PLAN_KEY)  # the detail sample's predictions, when a section made them
        confidence = plan.predictions.top_probabilities[:, 0] if plan is not None else np.zeros(0)
    if confidence.size == 0 or classes < 2:
        return ""
    return (f"; mean top-1 probability {float(confidence.mean()):.1%} over {confidence.size} images "
            f"(chance {1 / classes:.1%})")


def _training(analysis: Analysis, known: Mapping[str, Any]) -> tuple[bool, Finding | None]:
    evidence = untrained_evidence(analysis, known)
    loaded = analysis.loaded
    random_by_request = loaded.family is not None and analysis.options.weights == "none"
    if evidence is None:
        return False, None
    data = {"looks_untrained": evidence.looks_untrained, "constant_variables": evidence.constant_variables,
            "unchanged_constants": evidence.unchanged_constants, "random_tensors": evidence.random_tensors,
            "indistinguishable": evidence.indistinguishable, "changed_constants": list(evidence.changed_constants)}
    constants = (f"{evidence.unchanged_constants} of {evidence.constant_variables} biases and normalisation "
                 "constants still at their initial values" if evidence.constant_variables else
                 "the model has no bias or normalisation constant to check")
    tensors = (f"{evidence.indistinguishable} of {evidence.random_tensors} randomly initialised tensors "
               "indistinguishable from a fresh draw (two-sample Kolmogorov-Smirnov test at 0.1%)")
    if random_by_request and evidence.looks_untrained:
        return True, Finding("training", "problem", "Random weights: built with --weights none",
                             f"{loaded.name} was built without trained weights, as asked: every figure shows an "
                             f"untrained network ({constants}; {tensors}{_confidence_text(analysis)}).",
                             "#weights", data)
    if evidence.looks_untrained:
        return True, Finding("training", "problem", "The model looks untrained",
                             f"Its weights are what a fresh initialisation gives: {constants}; {tensors}"
                             f"{_confidence_text(analysis)}. Check that the file holds the trained weights.",
                             "#weights", data)
    moved = (f"{evidence.constant_variables - evidence.unchanged_constants} of {evidence.constant_variables} biases "
             "and normalisation constants moved from their initial values" if evidence.constant_variables else
             f"{evidence.random_tensors - evidence.indistinguishable} of {evidence.random_tensors} random tensors "
             "differ from a fresh draw")
    return False, Finding("training", "ok", "The weights are trained", f"{moved}.", "#weights", data)


def _preprocessing(analysis: Analysis) -> Finding | None:
    """On a sample of the labelled images: accuracy under each preprocessing mode against the one used."""
    from reportgen import seeds
    from reportgen.techniques.preprocess_probe import MIN_IMAGES, candidate_modes, finding_text, probe_preprocessing

    if analysis.loaded.family is not None and analysis.options.preprocess == "auto":
        return None  # a keras.applications model's own preprocess_input is known, not guessed
    affordable = int(PROBE_FLOPS / (len(candidate_modes()) * max(analysis.image_flops, 1.0)))
    dataset = analysis.dataset
    if dataset is not None:
        labelled = np.flatnonzero(dataset.labels >= 0)
        labels_all = dataset.labels
    else:
        labels_all = np.array([-1 if (i := analysis.class_names.index_of(s.label)) is None else i
                               for s in analysis.all_sources], np.int64)
        labelled = np.array([i for i in analysis.detail_indices if labels_all[i] >= 0], np.int64)
    count = min(PROBE_IMAGES, affordable, labelled.size)
    if count < MIN_IMAGES:
        return None  # too few labelled images (or too costly a model) to tell modes apart
    if labelled.size > count:
        labelled = np.sort(seeds.rng(analysis.options.seed, PROBE_SAMPLE).choice(labelled, count, replace=False))
    loaded = analysis.reader.load([int(i) for i in labelled]) if analysis.reader is not None else None
    if loaded is None:
        return None
    kept = [int(i) for i in labelled if int(i) not in analysis.reader.skipped]
    preprocessor = analysis.preprocessor
    probe = probe_preprocessing(analysis.model, loaded.pixels, labels_all[kept], preprocessor.mode,
                                channels=preprocessor.channels, reason=preprocessor.reason,
                                batch_size=analysis.options.batch_size or 32)
    analysis.cache["preprocess_probe"] = probe
    text = finding_text(probe)
    if text is None:
        used = probe.fit(probe.used)
        return Finding("preprocessing", "ok", f"Preprocessing '{probe.used}' fits the labels",
                       f"No other mode fits the {used.n} labelled images probed clearly better "
                       f"({used.accuracy:.0%} accuracy with '{probe.used}', the best of "
                       f"{', '.join(f.mode for f in probe.fits)}: '{probe.best}').", "#summary")
    return Finding("preprocessing", "caution", "Another preprocessing fits the labels better", text, "#summary")


def _cam_trust(analysis: Analysis, results: Mapping[str, SectionResult], untrained: bool) -> Finding | None:
    """The trusted CAM method (`sections.cams.trusted_methods`) with the widest faithfulness margin, or none."""
    from reportgen.registry import cam_method
    from reportgen.sections.cams import cam_bundle, layer_advice, trusted_methods
    from reportgen.techniques.cams import faithfulness

    if "cam" not in results:
        return None
    bundle = cam_bundle(analysis)
    if bundle.results is None:
        return None
    scores = faithfulness(bundle.results)
    trusted = trusted_methods(analysis, bundle)
    if trusted:
        best = max(trusted, key=lambda m: scores[m].margin)
        sanity = bundle.results.sanity.get(best)
        others = [cam_method(m).label for m in trusted if m != best]
        return Finding("cam_trust", "ok", f"Trust {cam_method(best).label} here",
                       f"Its maps beat random maps by the widest margin ({scores[best].margin:+.3f} insertion minus "
                       f"deletion AUC) and its sanity check {sanity.status if sanity else 'n/a'}"
                       + (f"; {', '.join(others)} also beat random." if others else "; no other method does."),
                       "#cam")
    labels = ", ".join(cam_method(m).label for m in bundle.results.methods)
    if untrained:
        return Finding("cam_trust", "problem", "No CAM method to trust here",
                       f"The weights look untrained, so the maps of {labels} show no learned evidence whatever their "
                       "scores against random maps; no layer choice will help.", "#cam")
    target = analysis.cam_target
    advice = layer_advice(analysis, target) if target is not None else ""
    return Finding("cam_trust", "problem", "No CAM method to trust here",
                   f"None of {labels} beats a random map on deletion and insertion while passing the sanity check: "
                   "their maps do not show what the model uses" + (f"; {advice}." if advice else "."), "#cam")


def _sample_sizes(analysis: Analysis, results: Mapping[str, SectionResult]) -> list[Finding]:
    """Statistics the page shows from fewer images than they need."""
    findings = []
    evaluation = results.get("evaluation")
    data = evaluation.sections[0].data if evaluation and evaluation.sections else {}
    labelled = data.get("labelled") or 0
    short = [m for m in (sample_sizes.ACCURACY, sample_sizes.CALIBRATION) if not sample_sizes.enough(m, labelled)]
    if labelled and short:
        findings.append(Finding(
            "sample_size", "caution", f"Only {labelled} labelled images",
            "; ".join(f"{m.statistic} needs {m.images} ({m.why})" for m in short)
            + ". Read those numbers as anecdotes; the page gives n beside each.", "#evaluation"))
    classes = results.get("class")
    if classes is not None:
        # Classes with some labelled images, but too few: with none, the page shows no rate to misread.
        small = [s.class_name for s in classes.sections
                 if s.class_name and 0 < int(s.data.get("labelled") or 0) < sample_sizes.CLASS_RATES.images]
        if small:
            shown = ", ".join(small[:5]) + (f" and {len(small) - 5} more" if len(small) > 5 else "")
            findings.append(Finding("sample_size", "caution", "Per-class numbers from few images",
                                    f"{len(small)} classes ({shown}) have fewer than {sample_sizes.CLASS_RATES.images} "
                                    "labelled images: their precision, recall and average maps carry their n.",
                                    "#classes"))
    return findings


def _data_health(results: Mapping[str, SectionResult]) -> list[Finding]:
    """What the data health section found in the images themselves."""
    section = results.get("data_health")
    health = section.manifest.get("data_health") if section is not None else None
    if not health:
        return []
    findings = []
    issues, labelled = health["label_issue_count"], health["labelled"]
    if issues:
        findings.append(Finding("data", "caution", "Suspected label errors",
                                f"{issues} of {labelled} labelled images ({issues / labelled:.1%}) have a label the "
                                "model's probabilities contradict (confident learning); look at them before "
                                "trusting the accuracy.", "#data-health-label-issues", {"count": issues}))
    across = health["duplicates_across_classes"]
    if across:
        findings.append(Finding("data", "caution", "Near-duplicates with different labels",
                                f"{across} pairs of nearly identical images carry different labels: leakage between "
                                "classes or a label error.", "#data-health-duplicates", {"count": across}))
    apart = health["outliers_standing_apart"]
    if apart:
        findings.append(Finding("data", "caution", "Images that stand apart",
                                f"{apart} images are far from every class (a group of blank, corrupt or "
                                "out-of-domain images ranks together).", "#data-health-outliers", {"count": apart}))
    if not findings:
        findings.append(Finding("data", "ok", "No data problem found",
                                f"Among {health['images']} images: no suspected label error"
                                + ("" if labelled else " (no labels)") + ", no near-duplicate across classes, no "
                                "image that stands apart.", "#data-health"))
    return findings


def _broken(warnings: Sequence[str]) -> list[Finding]:
    """The warnings that say part of the model is broken, one finding per kind, in rank order."""
    findings = []
    for phrase, severity, title in BROKEN:
        matching = [w for w in warnings if phrase in w]
        if matching:
            more = f" (and {len(matching) - 1} more like it)" if len(matching) > 1 else ""
            kind, _, text = matching[0].partition(": ")  # "feature maps: conv2 has ..." -> its section's words
            findings.append(Finding("broken", severity, title, (text or kind) + more, "#warnings"))
    return findings
