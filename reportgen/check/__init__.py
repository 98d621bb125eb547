"""`reportgen check`: rules a report must meet, evaluated on its report.json (and arrays.npz where a rule needs it).

Pure evaluation: report folders in (read with `reportgen.report_folder.read`, the one reader of report.json), frozen
results out. Printing them as a table, Markdown or JSON is `reportgen.check_render`'s job.

A rule's number the report does not hold (no labels, no cam section, no baseline, no arrays) makes the rule
"not evaluated", never a pass and never a failure; `strict` turns that into a failure.

The package: `rules` (what can be asked, and reading it) and `evaluate` (the answers). Their public names are
handed on here.
"""

from reportgen.check.evaluate import (
    EXIT_FAILED,
    EXIT_PASSED,
    FAIL,
    NOT_EVALUATED,
    PASS,
    CheckResult,
    RuleResult,
    check_report,
    evaluate,
    read_baseline,
    warnings_of,
)
from reportgen.check.rules import RULES, Rule, RuleSpec, parse_rules, read_config_rules, read_rules_file, rule_list

__all__ = [
    "EXIT_FAILED",
    "EXIT_PASSED",
    "FAIL",
    "NOT_EVALUATED",
    "PASS",
    "RULES",
    "CheckResult",
    "Rule",
    "RuleResult",
    "RuleSpec",
    "check_report",
    "evaluate",
    "parse_rules",
    "read_baseline",
    "read_config_rules",
    "read_rules_file",
    "rule_list",
    "warnings_of",
]
