"""The notebook front end: the panel (ipywidgets), live charts (Plotly) and the bridge that
feeds them from a run's events. Imported only by the magics or by hand, never by the core."""

from nbaccel.ui.audit_view import AuditView as AuditView
from nbaccel.ui.comparison import ComparisonPanel as ComparisonPanel
from nbaccel.ui.interpretation import InterpretationView as InterpretationView
from nbaccel.ui.panel import Panel as Panel
from nbaccel.ui.panel import panel_for as panel_for

__all__ = ["AuditView", "ComparisonPanel", "InterpretationView", "Panel", "panel_for"]
