"""What else TF training checkpoints hold besides the model: the converter's rule for it.

TF trainers save, next to the model variables, a step counter (``global_step``), optimizer
slots (``<variable>/Momentum``, ``/Adam``, ``/RMSProp``, ...; Adam's ``beta1_power``) and the
shadows of ``tf.train.ExponentialMovingAverage`` (``<variable>/ExponentialMovingAverage``,
what ``--ema`` ports instead). ``convert`` lists these as skipped; any other variable with no
place in the table is an error.
"""
from __future__ import annotations

from models.spec import EMA_SUFFIX

NON_MODEL_NAMES = frozenset({"global_step", "beta1_power", "beta2_power"})
# Suffixes of optimizer slots and moving-average shadows that TF trainers add to model variables.
SLOT_SUFFIXES = (EMA_SUFFIX, "/RMSProp", "/RMSProp_1", "/Momentum",
                 "/Adam", "/Adam_1", "/Adagrad", "/Ftrl", "/Ftrl_1")


def non_model_reason(name: str) -> str | None:
    """Why a checkpoint variable is not a model weight, or None if it should be one."""
    if name in NON_MODEL_NAMES:
        return "training counter"
    for suffix in SLOT_SUFFIXES:
        if name.endswith(suffix):
            kind = "moving-average shadow" if suffix == EMA_SUFFIX else "optimizer slot"
            return f"{kind} ({suffix[1:]})"
    return None
