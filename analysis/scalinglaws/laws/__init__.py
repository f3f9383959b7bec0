"""Scaling-law forms. Each is a `Law` with fit / predict / params."""

from scalinglaws.laws.base import Law
from scalinglaws.laws.broken import BrokenPowerLaw
from scalinglaws.laws.power import ChinchillaLaw, PowerLaw
from scalinglaws.laws.sigmoid import SigmoidOfLoss

FORMS: dict[str, type[Law]] = {
    cls.name: cls for cls in (PowerLaw, ChinchillaLaw, SigmoidOfLoss, BrokenPowerLaw)
}

__all__ = ["FORMS", "BrokenPowerLaw", "ChinchillaLaw", "Law", "PowerLaw", "SigmoidOfLoss"]
