"""Studies: plan the jobs of a config, run them where the config says, summarize, report.

The driver wing: the only code (with the report) that reads the config dict. Stage
code below it takes specs.
"""

from superlens.study.run import JobsFailed, run_study
from superlens.study.summary import HEADLINE, REPRESENTATION_QUALITY, summarize

__all__ = ["HEADLINE", "REPRESENTATION_QUALITY", "JobsFailed", "run_study", "summarize"]
