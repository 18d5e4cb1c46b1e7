"""Plugin trainers; importing this package registers them (see recbole_bifair.registry)."""

from recbole_bifair.trainer.baselines import (
    DRORecTrainer,
    ITFRTrainer,
    MultiFRTrainer,
    PopDROTrainer,
    ReweightTrainer,
)
from recbole_bifair.trainer.bifair import BiFairTrainer, SeparateTrainer
from recbole_bifair.trainer.fair_base import PlainLearnZTrainer, PlainTrainer

__all__ = [
    "BiFairTrainer",
    "DRORecTrainer",
    "ITFRTrainer",
    "MultiFRTrainer",
    "PlainLearnZTrainer",
    "PlainTrainer",
    "PopDROTrainer",
    "ReweightTrainer",
    "SeparateTrainer",
]
