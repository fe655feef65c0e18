"""Experiment tracking: TensorBoard and MLflow (`run.report_to`), and the curves.png every run draws.

The tag names are in `fedit.tracking.tags` (and docs/tracking.md); `TrackingSession` is the one hook the run uses.
Importing this package imports no tracking library.
"""

from fedit.tracking.backends import BACKENDS, check_installed, check_tracking, parse_report_to
from fedit.tracking.base import Tracker
from fedit.tracking.session import TrackingSession

__all__ = ["BACKENDS", "Tracker", "TrackingSession", "check_installed", "check_tracking", "parse_report_to"]
